"""Entropy coding of the tiles' token ids: the learned prior's probabilities through a range coder (constriction).

The stream of one image, in the order the decoder reads it:

1. the per-tile token counts k_t in raster order (unless every tile has the same k), each with an adaptive frequency
   table picked by the counts of the left and upper tiles -- integer counts, exact on any machine;
2. the first id of every tile, diagonal by diagonal (a wavefront): the prior (`onetok.tokenizers.codec.prior`) sees the
   first ids of the up-left, up and left tiles, all decoded on earlier diagonals;
3. the other ids, `CHUNK` tiles at a time, position by position: the prior sees the tile's earlier ids and the first
   ids of all 8 neighbours.

The encoder and the decoder must compute bit-identical frequencies or the stream decodes to garbage. Payload 2 (what
`encode` writes) takes them from the prior run in integer arithmetic (`onetok.tokenizers.codec.fixedpoint`): the
same bits on every machine, thread count and torch build. Payload 1 (onetok <= 0.1, decoded for old files only) took
them from the float32 prior on one thread, which differs between CPU kernels. A CRC-32 of the counts and ids is
stored with each image: a stream that decodes differently anyway raises `OtokError`, never shows a wrong picture.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Callable, Iterator
from typing import NamedTuple

import constriction
import numpy as np
import torch

from onetok.tokenizers.codec.fixedpoint import IntegerPrior
from onetok.tokenizers.codec.format import (
    BUCKETS,
    CHUNK,
    COUNT_STEP,
    PROB_SCALE,
    CodedImage,
    OtokError,
    TiledImage,
    ids_checksum,
)
from onetok.tokenizers.codec.prior import WAVEFRONT_MASK, TilePrior, neighbour_ids

Decide = Callable[[np.ndarray, int, np.ndarray], np.ndarray]  # (tiles (n,), position, frequencies (n, K)) -> ids

FLOAT_CODER_ERROR = ("written by the float coder of onetok <= 0.1, whose probabilities depend on the machine, and "
                     "this machine decodes it differently: run `onetok recode FILE -o NEW.otok` on the kind of "
                     "machine that wrote it (same ids, portable coder)")


@contextlib.contextmanager
def deterministic() -> Iterator[None]:
    """One CPU thread and no autograd for the block: the float coder's (payload 1) fixed float32 arithmetic."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.inference_mode():
            yield
    finally:
        torch.set_num_threads(threads)


def quantize(logits: torch.Tensor) -> np.ndarray:
    """Payload 1: (n, K) logits -> (n, K) integer-valued float64 frequencies >= 1, the range coder's model."""
    p = torch.softmax(logits.float(), dim=-1).double().numpy()
    return np.floor(p * PROB_SCALE) + 1.0


def bits_of(freqs: np.ndarray, symbols: np.ndarray) -> np.ndarray:
    """Ideal code length in bits of each symbol (n,) under its frequency row (n, K)."""
    return -np.log2(freqs[np.arange(len(symbols)), symbols] / freqs.sum(axis=1))


class FloatModel:
    """Payload 1 (read only): the float32 prior's softmax, quantised by `quantize`; call it under `deterministic`."""

    def __init__(self, prior: TilePrior):
        self.prior, self.config = prior, prior.config

    def prefill(self, context: torch.Tensor):
        logits, cache = self.prior.prefill(context)
        return quantize(logits), cache

    def step(self, ids: torch.Tensor, cache):
        logits, cache = self.prior.step(ids, cache)
        return quantize(logits), cache


class PortableModel:
    """Payload 2: the integer prior's frequencies (sum PROB_SCALE), as the float64 rows constriction takes."""

    def __init__(self, prior: TilePrior):
        self.integer = IntegerPrior(prior)
        self.config = prior.config

    def prefill(self, context: torch.Tensor):
        freqs, cache = self.integer.prefill(context)
        return freqs.double().numpy(), cache

    def step(self, ids: torch.Tensor, cache):
        freqs, cache = self.integer.step(ids, cache)
        return freqs.double().numpy(), cache


TABLE_BYTES = 1 << 27  # `price` keeps the frequency rows up to this size (4,096 tiles of L = 32, K = 512)
Model = FloatModel | PortableModel  # prefill(context) / step(ids, cache) -> (frequencies (n, K) float64, cache)
_PORTABLE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def portable(prior: TilePrior) -> PortableModel:
    """The integer form of `prior`, built once per prior object (its weights must not change afterwards)."""
    if prior not in _PORTABLE:
        _PORTABLE[prior] = PortableModel(prior)
    return _PORTABLE[prior]


# --------------------------------------------------------------------------------------------------------------------
# The three passes, shared by the encoder, the decoder and the cost estimate
# --------------------------------------------------------------------------------------------------------------------


def _count_context(counts: np.ndarray, r: int, c: int, L: int) -> tuple[int, int]:
    """(bucket of the left count, bucket of the upper count); BUCKETS when there is no such tile."""
    bucket = lambda k: (int(k) - 1) * BUCKETS // L  # noqa: E731
    return (bucket(counts[r, c - 1]) if c else BUCKETS), (bucket(counts[r - 1, c]) if r else BUCKETS)


def count_pass(rows: int, cols: int, L: int, decide: Callable[[int, np.ndarray], int]) -> np.ndarray:
    """Token counts (rows * cols,) in raster order; `decide(tile, frequencies (L,))` gives k_t - 1."""
    tables = np.ones((BUCKETS + 1, BUCKETS + 1, L))
    counts = np.zeros((rows, cols), dtype=np.int64)
    for r in range(rows):
        for c in range(cols):
            ctx = _count_context(counts, r, c, L)
            symbol = decide(r * cols + c, tables[ctx].copy())
            counts[r, c] = symbol + 1
            tables[ctx][symbol] += COUNT_STEP  # adapt fast: a photo has only a few hundred tiles
    return counts.reshape(-1)


def first_pass(model: Model, rows: int, cols: int, decide: Decide) -> torch.Tensor:
    """First ids (rows, cols), diagonal by diagonal; the prior sees the up-left, up and left first ids."""
    missing = model.config.missing
    first = torch.full((rows, cols), missing, dtype=torch.long)
    rr, cc = np.divmod(np.arange(rows * cols), cols)
    for d in range(rows + cols - 1):
        tiles = np.nonzero(rr + cc == d)[0]  # (n,) flat indices on this diagonal
        context = neighbour_ids(first, missing, WAVEFRONT_MASK)[torch.from_numpy(tiles)]  # (n, 8)
        freqs, _ = model.prefill(context)
        first.view(-1)[torch.from_numpy(tiles)] = torch.from_numpy(decide(tiles, 0, freqs).astype(np.int64))
    return first


def later_pass(model: Model, first: torch.Tensor, counts: np.ndarray, decide: Decide) -> np.ndarray:
    """All ids (N, max k): column 0 is `first`, column i of tile t is decided when k_t > i."""
    context = neighbour_ids(first, model.config.missing)  # (N, 8)
    N = len(counts)
    ids = np.zeros((N, int(counts.max())), dtype=np.int64)
    ids[:, 0] = first.reshape(-1).numpy()
    for start in range(0, N, CHUNK):
        chunk = slice(start, min(N, start + CHUNK))
        _, cache = model.prefill(context[chunk])
        previous = torch.from_numpy(ids[chunk, 0].copy())  # (n,)
        for i in range(1, int(counts[chunk].max())):
            freqs, cache = model.step(previous, cache)  # (n, K)
            active = np.nonzero(counts[chunk] > i)[0]
            ids[start + active, i] = decide(start + active, i, freqs[active])
            previous = torch.from_numpy(ids[chunk, i].copy())  # finished tiles feed 0: their rows are not read
    return ids


# --------------------------------------------------------------------------------------------------------------------
# Encode, decode, costs
# --------------------------------------------------------------------------------------------------------------------


def _model(prior: TilePrior, float_coder: bool) -> tuple[Model, contextlib.AbstractContextManager]:
    """The frequencies of payload 1 (float, on one thread) or 2 (integer, any threads), and the context to run in."""
    if float_coder:
        return FloatModel(prior), deterministic()
    return portable(prior), torch.inference_mode()


def encode(prior: TilePrior, rows: int, cols: int, counts: np.ndarray, ids: np.ndarray, uniform: bool,
           float_coder: bool = False) -> np.ndarray:
    """Counts (N,) and ids (N, >= max k, left-aligned) -> the range coder's words (uint32), payload 2 (the integer
    prior). With `uniform` the counts are not coded (the file stores the one k). `float_coder` writes onetok 0.1's
    payload 1 instead, for tests and benchmarks of the old coder only: `Codec` never writes it."""
    coder = constriction.stream.queue.RangeEncoder()
    family = constriction.stream.model.Categorical(perfect=False)
    model, context = _model(prior, float_coder)

    def put(freqs: np.ndarray, symbols: np.ndarray) -> np.ndarray:
        coder.encode(symbols.astype(np.int32), family, freqs)
        return symbols

    with context:
        if not uniform:
            count_pass(rows, cols, prior.config.num_tokens, lambda t, f: int(put(f[None], counts[t:t + 1] - 1)[0]))
        first = first_pass(model, rows, cols, lambda tiles, i, f: put(f, ids[tiles, 0]))
        later_pass(model, first, counts, lambda tiles, i, f: put(f, ids[tiles, i]))
    return coder.get_compressed().astype(np.uint32)


def decode(prior: TilePrior, rows: int, cols: int, words: np.ndarray, uniform_k: int, checksum: int,
           float_coder: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """The inverse of `encode` (or, with `float_coder`, of onetok 0.1's payload 1): (counts (N,), ids (sum counts,)
    tile by tile). OtokError when the stream does not decode to what was encoded (the stored checksum)."""
    coder = constriction.stream.queue.RangeDecoder(words)
    family = constriction.stream.model.Categorical(perfect=False)
    get = lambda freqs: coder.decode(family, freqs).astype(np.int64)  # noqa: E731
    model, context = _model(prior, float_coder)
    N = rows * cols
    try:
        with context:
            if uniform_k:
                counts = np.full(N, uniform_k, dtype=np.int64)
            else:
                counts = count_pass(rows, cols, prior.config.num_tokens, lambda t, f: int(get(f[None])[0]))
            first = first_pass(model, rows, cols, lambda tiles, i, f: get(f))
            ids = later_pass(model, first, counts, lambda tiles, i, f: get(f))
    except (ValueError, RuntimeError, AssertionError) as err:  # the coder's own complaints about a bad stream
        if float_coder:
            raise OtokError(f"the entropy-coded stream does not decode: {FLOAT_CODER_ERROR}") from None
        raise OtokError(f"the entropy-coded stream is corrupt ({err})".split("\n")[0]) from None
    flat = ids[np.arange(ids.shape[1])[None, :] < counts[:, None]]  # (sum counts,) tile by tile
    if ids_checksum(counts, flat) != checksum:
        if float_coder:
            raise OtokError(f"the entropy-coded ids do not decode to what was encoded: {FLOAT_CODER_ERROR}")
        raise OtokError("the entropy-coded ids do not decode to what was encoded (the file is corrupt)")
    return counts, flat


class Pricing(NamedTuple):
    """What the portable coder spends on every id of every tile, and (when it fits `TABLE_BYTES`) the frequency rows
    it saw: the prior is causal, so one pass over all L ids of each tile gives the rows for coding any prefix."""

    bits: np.ndarray  # (N, L) code length of each id
    table: np.ndarray | None  # (N, L, K) uint16 frequencies (each row sums to PROB_SCALE), or None: too large


def price(prior: TilePrior, rows: int, cols: int, ids: np.ndarray, keep: bool = True) -> Pricing:
    """Code length in bits of every id of every tile, (N, L), as `encode` would spend it (counts not included), and
    with `keep` the frequency table for `encode_from_table` (if N * L * K * 2 bytes <= TABLE_BYTES)."""
    N, L = ids.shape
    costs = np.zeros((N, L))
    table = None
    if keep and N * L * prior.config.codebook_size * 2 <= TABLE_BYTES:
        table = np.empty((N, L, prior.config.codebook_size), dtype=np.uint16)  # every row is written below
    model, context = _model(prior, False)

    def cost(tiles: np.ndarray, i: int, freqs: np.ndarray) -> np.ndarray:
        costs[tiles, i] = bits_of(freqs, ids[tiles, i])
        if table is not None:
            table[tiles, i] = freqs  # integers in 1 .. PROB_SCALE - K + 1 < 2**16: exact
        return ids[tiles, i]

    with context:
        first = first_pass(model, rows, cols, cost)
        later_pass(model, first, np.full(N, L), cost)
    return Pricing(costs, table)


def id_bits(prior: TilePrior, rows: int, cols: int, ids: np.ndarray) -> np.ndarray:
    """Code length in bits of every id of every tile, (N, L), as `encode` would spend it (counts not included)."""
    return price(prior, rows, cols, ids, keep=False).bits


def coding_order(rows: int, cols: int, counts: np.ndarray) -> Iterator[tuple[np.ndarray, int]]:
    """(tiles, position) of each batch of ids in the order passes 2 and 3 code them (as `first_pass` and
    `later_pass` visit them)."""
    rr, cc = np.divmod(np.arange(rows * cols), cols)
    for d in range(rows + cols - 1):
        yield np.nonzero(rr + cc == d)[0], 0
    for start in range(0, len(counts), CHUNK):
        chunk = counts[start:start + CHUNK]
        for i in range(1, int(chunk.max())):
            yield start + np.nonzero(chunk > i)[0], i


def encode_from_table(table: np.ndarray, rows: int, cols: int, counts: np.ndarray, ids: np.ndarray,
                      uniform: bool) -> np.ndarray:
    """`encode` (payload 2) with the frequency rows of `price` instead of running the prior again: the same words."""
    coder = constriction.stream.queue.RangeEncoder()
    family = constriction.stream.model.Categorical(perfect=False)

    def put(freqs: np.ndarray, symbols: np.ndarray) -> np.ndarray:
        coder.encode(symbols.astype(np.int32), family, freqs.astype(np.float64))
        return symbols

    if not uniform:
        count_pass(rows, cols, table.shape[1], lambda t, f: int(put(f[None], counts[t:t + 1] - 1)[0]))
    for tiles, i in coding_order(rows, cols, counts):
        put(table[tiles, i], ids[tiles, i])
    return coder.get_compressed().astype(np.uint32)


def count_bits(counts: np.ndarray, rows: int, cols: int, L: int) -> float:
    """Code length in bits of the per-tile counts."""
    total = 0.0

    def cost(t: int, freqs: np.ndarray) -> int:
        nonlocal total
        total += float(bits_of(freqs[None], counts[t:t + 1] - 1)[0])
        return int(counts[t] - 1)

    count_pass(rows, cols, L, cost)
    return total


def code_image(prior: TilePrior, image: TiledImage, tile_size: int) -> CodedImage:
    """The ids of one decoded image, range-coded with the portable coder (payload 2): what `onetok recode` writes."""
    rows, cols = image.grid(tile_size)
    counts = np.asarray(image.counts, dtype=np.int64)
    padded = np.zeros((len(counts), int(counts.max())), dtype=np.int64)  # (N, max k), ids left-aligned
    padded[np.arange(padded.shape[1])[None, :] < counts[:, None]] = image.ids
    uniform = bool((counts == counts[0]).all())
    words = encode(prior, rows, cols, counts, padded, uniform)
    return CodedImage(image.width, image.height, image.coded_width, image.coded_height,
                      int(counts[0]) if uniform else 0, words, ids_checksum(counts, image.ids))
