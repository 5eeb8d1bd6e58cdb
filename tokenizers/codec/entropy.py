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
same bits on every machine, thread count and torch build; the encoder, which knows every id, runs it
teacher-forced (`forced_pass`), the decoder position by position (`first_pass`, `later_pass`), and every row comes
out the same either way. Payload 1 (onetok <= 0.1, decoded for old files only) took
them from the float32 prior on one thread, which differs between CPU kernels. A CRC-32 of the counts and ids is
stored with each image: a stream that decodes differently anyway raises `OtokError`, never shows a wrong picture.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Callable, Iterator

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
    """Payload 1 (read only): the float32 prior's softmax, quantised by `quantize`; call it under `deterministic`.
    Its rows depend on the batch they run in (BLAS blocking), so the passes keep onetok 0.1's batches."""

    row_exact = False

    def __init__(self, prior: TilePrior):
        self.prior, self.config = prior, prior.config

    def prefill(self, context: torch.Tensor):
        logits, cache = self.prior.prefill(context)
        return quantize(logits), cache

    def step(self, ids: torch.Tensor, cache):
        logits, cache = self.prior.step(ids, cache)
        return quantize(logits), cache


class PortableModel:
    """Payload 2: the integer prior's frequencies (sum PROB_SCALE), as the float64 rows constriction takes. Every
    row is exact whatever else is in the batch, so the passes drop the rows of finished tiles (`select`)."""

    row_exact = True

    def __init__(self, prior: TilePrior):
        self.integer = IntegerPrior(prior)
        self.config = prior.config

    def prefill(self, context: torch.Tensor):
        freqs, cache = self.integer.prefill(context)
        return freqs.double().numpy(), cache

    def step(self, ids: torch.Tensor, cache):
        freqs, cache = self.integer.step(ids, cache)
        return freqs.double().numpy(), cache

    @staticmethod
    def select(cache, rows: torch.Tensor):
        """The cache of the tiles `rows` (indices into its batch) only."""
        return type(cache)([k[rows] for k in cache.keys], [v[rows] for v in cache.values], cache.length)


Model = FloatModel | PortableModel  # prefill(context) / step(ids, cache) -> (frequencies (n, K) float64, cache)
_PORTABLE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def portable(prior: TilePrior) -> PortableModel:
    """The integer form of `prior`, built once per prior object (its weights must not change afterwards)."""
    if prior not in _PORTABLE:
        _PORTABLE[prior] = PortableModel(prior)
    return _PORTABLE[prior]


# --------------------------------------------------------------------------------------------------------------------
# The three passes, as the decoder runs them (and the float coder's encoder)
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
    for tiles in diagonals(rows, cols):
        context = neighbour_ids(first, missing, WAVEFRONT_MASK)[torch.from_numpy(tiles)]  # (n, 8)
        freqs, _ = model.prefill(context)
        first.view(-1)[torch.from_numpy(tiles)] = torch.from_numpy(decide(tiles, 0, freqs).astype(np.int64))
    return first


def diagonals(rows: int, cols: int) -> Iterator[np.ndarray]:
    """The flat tile indices (n,) of each diagonal r + c = d of the grid, d = 0, 1, ...: the first ids' wavefront."""
    rr, cc = np.divmod(np.arange(rows * cols), cols)
    for d in range(rows + cols - 1):
        yield np.nonzero(rr + cc == d)[0]


def later_pass(model: Model, first: torch.Tensor, counts: np.ndarray, decide: Decide) -> np.ndarray:
    """All ids (N, max k): column 0 is `first`, column i of tile t is decided when k_t > i. A row-exact model runs
    only the tiles still open (the work grows with sum k, not CHUNK x max k); the float coder keeps whole chunks."""
    context = neighbour_ids(first, model.config.missing)  # (N, 8)
    N = len(counts)
    ids = np.zeros((N, int(counts.max())), dtype=np.int64)
    ids[:, 0] = first.reshape(-1).numpy()
    for start in range(0, N, CHUNK):
        chunk = slice(start, min(N, start + CHUNK))
        _, cache = model.prefill(context[chunk])
        rows = np.arange(chunk.stop - start)  # the chunk's tiles that the cache's batch holds, in order
        for i in range(1, int(counts[chunk].max())):
            if model.row_exact and (counts[start + rows] <= i).any():
                open_ = counts[start + rows] > i
                cache, rows = model.select(cache, torch.from_numpy(np.nonzero(open_)[0])), rows[open_]
            previous = torch.from_numpy(ids[start + rows, i - 1])  # (n,) finished tiles feed 0: rows not read
            freqs, cache = model.step(previous, cache)  # (n, K)
            active = np.nonzero(counts[start + rows] > i)[0]
            ids[start + rows[active], i] = decide(start + rows[active], i, freqs[active])
    return ids


# --------------------------------------------------------------------------------------------------------------------
# Encode, decode, costs
# --------------------------------------------------------------------------------------------------------------------


def _model(prior: TilePrior, float_coder: bool) -> tuple[Model, contextlib.AbstractContextManager]:
    """The frequencies of payload 1 (float, on one thread) or 2 (integer, any threads), and the context to run in."""
    if float_coder:
        return FloatModel(prior), deterministic()
    return portable(prior), torch.inference_mode()


def known_contexts(prior: TilePrior, rows: int, cols: int, ids: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """For an encoder that knows every id (N, >= 1): each tile's neighbour ids (N, 8) as the decoder sees them when
    it decodes id_0 (the wavefront: up-left, up and left only) and when it decodes the later ids (all 8)."""
    missing = prior.config.missing
    first = torch.from_numpy(np.ascontiguousarray(ids[:, 0])).view(rows, cols)
    return neighbour_ids(first, missing, WAVEFRONT_MASK), neighbour_ids(first, missing)


def forced_pass(prior: TilePrior, rows: int, cols: int, counts: np.ndarray,
                ids: np.ndarray) -> Iterator[tuple[np.ndarray, int, np.ndarray]]:
    """Payload 2's frequencies for known ids, in the order passes 2 and 3 code them (`coding_order`): (tiles (n,),
    position, frequencies (n, K) float64). The encoder knows every id, so instead of going position by position the
    integer prior runs teacher-forced (`IntegerPrior.score`: bit-identical rows) over each tile's own prefix, tiles
    of similar count batched together: the work grows with sum k."""
    integer = portable(prior).integer
    wavefront, context = known_contexts(prior, rows, cols, ids)
    with torch.inference_mode():
        first_rows = torch.cat([integer.prefill(wavefront[b:b + SCORE_TILES])[0]
                                for b in range(0, len(counts), SCORE_TILES)])  # (N, K)
        chunk_rows, chunk_start = None, -1
        for tiles, i in coding_order(rows, cols, counts):
            if i == 0:
                yield tiles, 0, first_rows[torch.from_numpy(tiles)].double().numpy()
                continue
            start = tiles[0] // CHUNK * CHUNK
            if start != chunk_start:
                chunk = np.arange(start, min(len(counts), start + CHUNK))
                chunk_rows, chunk_start = _forced_rows(integer, context, ids, counts, chunk), start
            yield tiles, i, chunk_rows[tiles - start, i].astype(np.float64)


SCORE_TILES = 64  # tiles per teacher-forced batch (any batching gives the same rows: not a format constant)


def _forced_rows(integer: IntegerPrior, context: torch.Tensor, ids: np.ndarray, counts: np.ndarray,
                 chunk: np.ndarray) -> np.ndarray:
    """(n, max k, K) uint16 frequencies of the ids of the tiles `chunk` (rows past a tile's count are not written)."""
    width = int(counts[chunk].max())
    out = np.empty((len(chunk), width, integer.config.codebook_size), dtype=np.uint16)  # each entry < 2**16
    order = np.argsort(counts[chunk], kind="stable")  # similar counts together: each batch runs to its own max
    order = order[counts[chunk[order]] > 1]  # a tile of one id has nothing after its first
    for b in range(0, len(order), SCORE_TILES):
        local = order[b:b + SCORE_TILES]
        k = int(counts[chunk[local]].max())
        tiles = torch.from_numpy(chunk[local])
        out[local, :k] = integer.score(context[tiles], torch.from_numpy(ids[chunk[local], :k])).numpy()
    return out


def encode(prior: TilePrior, rows: int, cols: int, counts: np.ndarray, ids: np.ndarray, uniform: bool,
           float_coder: bool = False) -> np.ndarray:
    """Counts (N,) and ids (N, >= max k, left-aligned) -> the range coder's words (uint32), payload 2 (the integer
    prior, teacher-forced: `forced_pass`). With `uniform` the counts are not coded (the file stores the one k).
    `float_coder` writes onetok 0.1's payload 1 instead, for tests and benchmarks of the old coder only: `Codec`
    never writes it."""
    coder = constriction.stream.queue.RangeEncoder()
    family = constriction.stream.model.Categorical(perfect=False)

    def put(freqs: np.ndarray, symbols: np.ndarray) -> np.ndarray:
        coder.encode(symbols.astype(np.int32), family, freqs)
        return symbols

    if not uniform:
        count_pass(rows, cols, prior.config.num_tokens, lambda t, f: int(put(f[None], counts[t:t + 1] - 1)[0]))
    if float_coder:
        model, context = _model(prior, float_coder=True)
        with context:
            first = first_pass(model, rows, cols, lambda tiles, i, f: put(f, ids[tiles, 0]))
            later_pass(model, first, counts, lambda tiles, i, f: put(f, ids[tiles, i]))
    else:
        for tiles, i, freqs in forced_pass(prior, rows, cols, counts, ids):
            put(freqs, ids[tiles, i])
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


def estimate_bits(prior: TilePrior, rows: int, cols: int, ids: np.ndarray) -> np.ndarray:
    """About what payload 2 spends on every id of every tile, (N, L) bits (counts not included): the float prior,
    teacher-forced over all L ids, its probabilities quantised as the integer prior's are (floor(p (PROB_SCALE - K))
    + 1). Float, so it may differ a little between machines: it only helps choose token counts (the rate control);
    the stream itself is coded from the integer prior, and a size target is checked on the coded stream."""
    N, L = ids.shape
    K = prior.config.codebook_size
    wavefront, context = known_contexts(prior, rows, cols, ids)
    bits = np.empty((N, L))
    with torch.inference_mode():
        for b in range(0, N, ESTIMATE_TILES):
            tile_ids = torch.from_numpy(ids[b:b + ESTIMATE_TILES])  # (n, L)
            logp = prior(prior.sequence(context[b:b + ESTIMATE_TILES], tile_ids)).float().log_softmax(-1)
            logp[:, 0] = prior(prior.sequence(wavefront[b:b + ESTIMATE_TILES], tile_ids[:, :1]))[:, 0].float() \
                .log_softmax(-1)  # id_0 is coded knowing only the wavefront's neighbours
            p = logp.gather(-1, tile_ids[..., None])[..., 0].double().exp()  # (n, L)
            freqs = torch.floor(p * (PROB_SCALE - K)) + 1
            bits[b:b + ESTIMATE_TILES] = (np.log2(PROB_SCALE) - torch.log2(freqs)).numpy()
    return bits


ESTIMATE_TILES = 512  # tiles per float batch of `estimate_bits`


def coding_order(rows: int, cols: int, counts: np.ndarray) -> Iterator[tuple[np.ndarray, int]]:
    """(tiles, position) of each batch of ids in the order passes 2 and 3 code them (as `first_pass` and
    `later_pass` visit them)."""
    for tiles in diagonals(rows, cols):
        yield tiles, 0
    for start in range(0, len(counts), CHUNK):
        chunk = counts[start:start + CHUNK]
        for i in range(1, int(chunk.max())):
            yield start + np.nonzero(chunk > i)[0], i


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
