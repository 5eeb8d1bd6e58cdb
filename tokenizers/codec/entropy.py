"""Entropy coding of the tiles' token ids: the learned prior's probabilities through a range coder (constriction).

The stream of one image, in the order the decoder reads it:

1. the per-tile token counts k_t in raster order (unless every tile has the same k), each with an adaptive frequency
   table picked by the counts of the left and upper tiles -- integer counts, exact on any machine;
2. the first id of every tile, diagonal by diagonal (a wavefront): the prior (`onetok.tokenizers.codec.prior`) sees the
   first ids of the up-left, up and left tiles, all decoded on earlier diagonals;
3. the other ids, `CHUNK` tiles at a time, position by position: the prior sees the tile's earlier ids and the first
   ids of all 8 neighbours.

The encoder and the decoder must compute bit-identical probabilities or the stream decodes to garbage. So the prior
runs in float32 on the CPU with one thread, through exactly the same calls (same batch shapes, same order) on both
sides, and its probabilities are quantised to integers before they reach the coder. A CRC-32 of the counts and ids
is stored with each image: a decoder whose arithmetic differs anyway (another CPU architecture or library build)
raises `OtokError` instead of showing a wrong picture.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import constriction
import numpy as np
import torch

from onetok.tokenizers.codec.format import OtokError, ids_checksum
from onetok.tokenizers.codec.prior import WAVEFRONT_MASK, TilePrior, neighbour_ids

PROB_SCALE = 1 << 16  # probabilities become integers in 1 .. 2**16 + 1
CHUNK = 1024  # tiles per batch in the third pass
BUCKETS = 4  # the count context: quartile of the left and of the upper tile's count (or "none")

Decide = Callable[[np.ndarray, int, np.ndarray], np.ndarray]  # (tiles (n,), position, frequencies (n, K)) -> ids


@contextlib.contextmanager
def deterministic() -> Iterator[None]:
    """One CPU thread and no autograd for the block: the same float32 arithmetic on every run."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.inference_mode():
            yield
    finally:
        torch.set_num_threads(threads)


def quantize(logits: torch.Tensor) -> np.ndarray:
    """(n, K) logits -> (n, K) integer-valued float64 frequencies >= 1, the range coder's model."""
    p = torch.softmax(logits.float(), dim=-1).double().numpy()
    return np.floor(p * PROB_SCALE) + 1.0


def bits_of(freqs: np.ndarray, symbols: np.ndarray) -> np.ndarray:
    """Ideal code length in bits of each symbol (n,) under its frequency row (n, K)."""
    return -np.log2(freqs[np.arange(len(symbols)), symbols] / freqs.sum(axis=1))


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
            tables[ctx][symbol] += 32  # adapt fast: a photo has only a few hundred tiles
    return counts.reshape(-1)


def first_pass(prior: TilePrior, rows: int, cols: int, decide: Decide) -> torch.Tensor:
    """First ids (rows, cols), diagonal by diagonal; the prior sees the up-left, up and left first ids."""
    missing = prior.config.missing
    first = torch.full((rows, cols), missing, dtype=torch.long)
    rr, cc = np.divmod(np.arange(rows * cols), cols)
    for d in range(rows + cols - 1):
        tiles = np.nonzero(rr + cc == d)[0]  # (n,) flat indices on this diagonal
        context = neighbour_ids(first, missing, WAVEFRONT_MASK)[torch.from_numpy(tiles)]  # (n, 8)
        logits, _ = prior.prefill(context)
        first.view(-1)[torch.from_numpy(tiles)] = torch.from_numpy(decide(tiles, 0, quantize(logits)).astype(np.int64))
    return first


def later_pass(prior: TilePrior, first: torch.Tensor, counts: np.ndarray, decide: Decide) -> np.ndarray:
    """All ids (N, max k): column 0 is `first`, column i of tile t is decided when k_t > i."""
    context = neighbour_ids(first, prior.config.missing)  # (N, 8)
    N = len(counts)
    ids = np.zeros((N, int(counts.max())), dtype=np.int64)
    ids[:, 0] = first.reshape(-1).numpy()
    for start in range(0, N, CHUNK):
        chunk = slice(start, min(N, start + CHUNK))
        _, cache = prior.prefill(context[chunk])
        previous = torch.from_numpy(ids[chunk, 0].copy())  # (n,)
        for i in range(1, int(counts[chunk].max())):
            logits, cache = prior.step(previous, cache)  # (n, K)
            active = np.nonzero(counts[chunk] > i)[0]
            ids[start + active, i] = decide(start + active, i, quantize(logits[torch.from_numpy(active)]))
            previous = torch.from_numpy(ids[chunk, i].copy())  # finished tiles feed 0: their rows are not read
    return ids


# --------------------------------------------------------------------------------------------------------------------
# Encode, decode, costs
# --------------------------------------------------------------------------------------------------------------------


def encode(prior: TilePrior, rows: int, cols: int, counts: np.ndarray, ids: np.ndarray,
           uniform: bool) -> np.ndarray:
    """Counts (N,) and ids (N, >= max k, left-aligned) -> the range coder's words (uint32). With `uniform` the
    counts are not coded (the file stores the one k)."""
    coder = constriction.stream.queue.RangeEncoder()
    family = constriction.stream.model.Categorical(perfect=False)

    def put(freqs: np.ndarray, symbols: np.ndarray) -> np.ndarray:
        coder.encode(symbols.astype(np.int32), family, freqs)
        return symbols

    with deterministic():
        if not uniform:
            count_pass(rows, cols, prior.config.num_tokens, lambda t, f: int(put(f[None], counts[t:t + 1] - 1)[0]))
        first = first_pass(prior, rows, cols, lambda tiles, i, f: put(f, ids[tiles, 0]))
        later_pass(prior, first, counts, lambda tiles, i, f: put(f, ids[tiles, i]))
    return coder.get_compressed().astype(np.uint32)


def decode(prior: TilePrior, rows: int, cols: int, words: np.ndarray, uniform_k: int,
           checksum: int) -> tuple[np.ndarray, np.ndarray]:
    """The inverse of `encode`: (counts (N,), ids (sum counts,) tile by tile). OtokError when the stream does not
    decode to what was encoded (the stored checksum)."""
    coder = constriction.stream.queue.RangeDecoder(words)
    family = constriction.stream.model.Categorical(perfect=False)
    get = lambda freqs: coder.decode(family, freqs).astype(np.int64)  # noqa: E731
    N = rows * cols
    try:
        with deterministic():
            if uniform_k:
                counts = np.full(N, uniform_k, dtype=np.int64)
            else:
                counts = count_pass(rows, cols, prior.config.num_tokens, lambda t, f: int(get(f[None])[0]))
            first = first_pass(prior, rows, cols, lambda tiles, i, f: get(f))
            ids = later_pass(prior, first, counts, lambda tiles, i, f: get(f))
    except (ValueError, RuntimeError, AssertionError) as err:  # the coder's own complaints about a bad stream
        raise OtokError(f"the entropy-coded stream is corrupt ({err})".split("\n")[0]) from None
    flat = ids[np.arange(ids.shape[1])[None, :] < counts[:, None]]  # (sum counts,) tile by tile
    if ids_checksum(counts, flat) != checksum:
        raise OtokError("the entropy-coded ids do not decode to what was encoded (corrupt file, or a prior whose "
                        "arithmetic differs on this machine)")
    return counts, flat


def id_bits(prior: TilePrior, rows: int, cols: int, ids: np.ndarray) -> np.ndarray:
    """Code length in bits of every id of every tile, (N, L), as `encode` would spend it (counts not included)."""
    N, L = ids.shape
    costs = np.zeros((N, L))

    def cost(tiles: np.ndarray, i: int, freqs: np.ndarray) -> np.ndarray:
        costs[tiles, i] = bits_of(freqs, ids[tiles, i])
        return ids[tiles, i]

    with deterministic():
        first = first_pass(prior, rows, cols, cost)
        later_pass(prior, first, np.full(N, L), cost)
    return costs


def count_bits(counts: np.ndarray, rows: int, cols: int, L: int) -> float:
    """Code length in bits of the per-tile counts."""
    total = 0.0

    def cost(t: int, freqs: np.ndarray) -> int:
        nonlocal total
        total += float(bits_of(freqs[None], counts[t:t + 1] - 1)[0])
        return int(counts[t] - 1)

    count_pass(rows, cols, L, cost)
    return total
