"""The per-tile rate control of the tiled `.otok` codec.

Each tile is encoded once into all L ids; because the tokenizer decodes any prefix (nested dropout), every token
count k_t in 1..L is available from that one pass, and the rate control only chooses a prefix length per tile:

- `fixed_counts`: the same k for every tile;
- `counts_for_psnr`: per tile the smallest k whose reconstruction reaches a PSNR (over the tile's own pixels);
- `refine_allocation`: a bit budget spread over the tiles greedily by distortion drop per bit (`allocate_bits`), on
  each tile's lower convex hull of (bits, squared error) points -- a flat sky stops at 1-2 tokens while foliage
  takes many.

What costs time is the distortion: the squared error of a tile at k tokens is one decoder pass over the tile.
`Distortion` measures (tile, count) pairs only when asked, in batches that mix tiles and counts, and never twice.
The adaptive modes ask for few of the L counts of each tile: `counts_for_psnr` scans the coarse counts
(`coarse_counts`: 1, 2, 4, ..., L) and bisects between them; `refine_allocation` starts from the half-octave counts
(`allocation_counts`: 1, 2, 4, 6, 8, 12, ..., L) and measures more only around each tile's current choice,
re-allocating after each round. Every count the allocation
ends on was measured exactly, and so was every count it compared it with.

Distortion is the sum of squared errors in 8-bit units over the pixels a tile covers inside the image, so the
allocation maximises the PSNR of the whole image.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from onetok.tokenizers.codec.tiling import BATCH, TileGrid, decode_tiles

Measure = Callable[[np.ndarray, np.ndarray], np.ndarray]  # (tiles (n,), counts (n,)) -> squared errors (n,)

ROUNDS = 1  # refine_allocation: rounds of measuring around the current choice (on the half-octave counts)


def _valid_mask(grid: TileGrid) -> np.ndarray:
    """(N, T, T) bool: which pixels of each tile lie inside the image."""
    T = grid.tile
    ys = np.arange(grid.rows)[:, None, None, None] * T + np.arange(T)[None, None, :, None]  # (rows, 1, T, 1)
    xs = np.arange(grid.cols)[None, :, None, None] * T + np.arange(T)[None, None, None, :]  # (1, cols, 1, T)
    mask = (ys < grid.height) & (xs < grid.width)  # (rows, cols, T, T)
    return mask.reshape(grid.count, T, T)


def tile_sse(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Sum of squared 8-bit errors per tile over its valid pixels: (N, T, T, 3) x2, (N, T, T) -> (N,) float64."""
    diff = a.astype(np.int32) - b.astype(np.int32)
    return np.einsum("nhwc,nhw->n", diff * diff, mask.astype(np.int32)).astype(np.float64)


def decoder_measure(tokenizer, tiles: np.ndarray, ids: np.ndarray, grid: TileGrid, batch: int = BATCH) -> Measure:
    """The exact squared error of tiles (N, T, T, 3) decoded from the first k of their ids (N, L)."""
    mask = _valid_mask(grid)

    def measure(index: np.ndarray, counts: np.ndarray) -> np.ndarray:
        decoded = decode_tiles(tokenizer, ids[index], counts, batch)  # (n, T, T, 3)
        return tile_sse(tiles[index], decoded, mask[index])

    return measure


class Distortion:
    """The squared error of each tile at each token count, measured on demand: `measure` runs once per call of
    `need` over the pairs not known yet, and each pair is measured once."""

    def __init__(self, measure: Measure, tiles: int, num_tokens: int):
        self._measure = measure
        self.sse = np.full((tiles, num_tokens), np.nan)  # (N, L): column k - 1 is k tokens; nan = not measured
        self.measured = 0  # (tile, count) pairs decoded so far

    @property
    def num_tokens(self) -> int:
        return self.sse.shape[1]

    def need(self, tiles: np.ndarray, counts: np.ndarray) -> None:
        """Measure the pairs (tiles[i], counts[i]) that are not known yet."""
        tiles, counts = np.asarray(tiles, dtype=np.int64), np.asarray(counts, dtype=np.int64)
        unknown = np.isnan(self.sse[tiles, counts - 1])
        if not unknown.any():
            return
        flat = np.unique(tiles[unknown] * self.num_tokens + (counts[unknown] - 1))  # sorted, each pair once
        tiles, counts = np.divmod(flat, self.num_tokens)
        self.sse[tiles, counts] = self._measure(tiles, counts + 1)
        self.measured += len(flat)

    def need_all(self, counts: list[int]) -> None:
        """Measure every tile at each of `counts`."""
        N = len(self.sse)
        self.need(np.repeat(np.arange(N), len(counts)), np.tile(np.asarray(counts, dtype=np.int64), N))


# --------------------------------------------------------------------------------------------------------------------
# Rate control
# --------------------------------------------------------------------------------------------------------------------


def fixed_counts(grid: TileGrid, k: int) -> np.ndarray:
    return np.full(grid.count, k, dtype=np.int64)


def counts_for_psnr(dist: Distortion, valid: np.ndarray, target_db: float) -> np.ndarray:
    """Per tile, the smallest count whose PSNR over the tile's pixels reaches `target_db` (else L): the first of
    the coarse counts 1, 2, 4, ... that reaches it, then bisection down to the count after the last that misses.
    Exact where a tile's error falls with k; its curve is jagged in places, and this finds a count close to the
    first. About 2 log2(L) measured counts per tile at most, fewer for tiles that reach the target early."""
    N, L = dist.sse.shape
    limit = 3.0 * valid * 255.0**2 / 10 ** (target_db / 10)  # (N,) the largest squared error that reaches it
    lo = np.zeros(N, dtype=np.int64)  # the largest count known to miss the target (0: none)
    hi = np.full(N, L, dtype=np.int64)  # the smallest count known to reach it (L: also when none does)
    open_ = np.arange(N)  # tiles that have not reached it at any coarse count yet
    for k in coarse_counts(L):
        dist.need(open_, np.full(len(open_), k))
        reached = dist.sse[open_, k - 1] <= limit[open_]
        hi[open_[reached]], lo[open_[~reached]] = k, k
        open_ = open_[~reached]
    open_ = np.nonzero(hi - lo > 1)[0]  # tiles that never reach it have lo = hi = L
    while len(open_):
        mid = (lo[open_] + hi[open_]) // 2
        dist.need(open_, mid)
        reached = dist.sse[open_, mid - 1] <= limit[open_]
        hi[open_] = np.where(reached, mid, hi[open_])
        lo[open_] = np.where(reached, lo[open_], mid)
        open_ = open_[hi[open_] - lo[open_] > 1]
    return hi


def lower_hulls(cost: np.ndarray, sse: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The lower convex hull of each tile's points (cost, sse), cost increasing, from its first point onwards; points
    with sse nan (not measured) are left out. cost, sse: (N, M) -> (hull (N, M) point indices, the first size[n] of
    row n in order; size (N,)). All tiles at once (Andrew's monotone chain, one point column at a time)."""
    N, M = sse.shape
    rows = np.arange(N)
    hull = np.zeros((N, M), dtype=np.int64)
    top = np.zeros(N, dtype=np.int64)  # index of the last hull point in `hull`
    for j in range(1, M):
        take = sse[:, j] < sse[rows, hull[rows, top]]  # more bits for no gain (or not measured): never on the hull
        while True:
            a, b = hull[rows, np.maximum(top - 1, 0)], hull[rows, top]
            # drop b when it lies on or above the segment a -> j
            above = (sse[rows, a] - sse[rows, b]) * (cost[:, j] - cost[rows, a]) <= \
                (sse[rows, a] - sse[:, j]) * (cost[rows, b] - cost[rows, a])
            drop = take & (top >= 1) & above
            if not drop.any():
                break
            top -= drop
        top += take
        hull[take, top[take]] = j
    return hull, top + 1


def allocate_bits(sse: np.ndarray, cost: np.ndarray, budget: float) -> np.ndarray:
    """Choose one index per tile so the summed cost stays within `budget` bits and the summed squared error is
    (greedily) minimal. sse, cost: (N, M), cost increasing along M; sse nan = not a candidate. Every tile gets at
    least index 0 (which must be measured)."""
    N, M = sse.shape
    hull, size = lower_hulls(cost, sse)
    a, b = hull[:, :-1], hull[:, 1:]  # (N, M - 1): the segments a -> b along each hull
    tile, step = np.nonzero(np.arange(M - 1)[None, :] < (size - 1)[:, None])  # the real segments, tile by tile
    a, b = a[tile, step], b[tile, step]
    extra = cost[tile, b] - cost[tile, a]
    slope = (sse[tile, a] - sse[tile, b]) / extra
    order = np.lexsort((step, -slope))  # steepest first; one tile's segments in hull order
    choice = [0] * N
    spent = float(cost[:, 0].sum())
    blocked = [False] * N
    for n, start, end, bits in zip(*(v[order].tolist() for v in (tile, a, b, extra))):
        if blocked[n] or choice[n] != start:
            continue
        if spent + bits <= budget:
            choice[n], spent = end, spent + bits
        else:
            blocked[n] = True  # its later segments would skip this one
    return np.asarray(choice, dtype=np.int64)


def _between(known: np.ndarray, choice: np.ndarray) -> np.ndarray:
    """(N, 2) counts halfway between each tile's choice (an index) and its nearest measured index below and above;
    0 where the neighbour is adjacent (nothing to measure in between)."""
    N, L = known.shape
    index = np.arange(L)[None, :]  # (1, L)
    below = np.where(known & (index < choice[:, None]), index, -1).max(axis=1)  # (N,), -1: none
    above = np.where(known & (index > choice[:, None]), index, L).min(axis=1)  # (N,), L: none
    low = np.where(choice - below > 1, (below + choice) // 2 + 1, 0)  # as counts (index + 1)
    high = np.where(above - choice > 1, (choice + above) // 2 + 1, 0)
    return np.stack([low, high], axis=1)


def refine_allocation(dist: Distortion, cost: np.ndarray, budget: float, rounds: int = ROUNDS) -> np.ndarray:
    """Counts (N,) from `allocate_bits` over the measured counts of each tile, after up to `rounds` rounds of
    measuring, for every tile, the counts halfway between its choice and its nearest measured counts below and above
    (a bisection towards the point where the tile's error curve meets the budget's slope), then re-allocating.
    cost: (N, L) bits of the first k ids. The coarse counts must be measured already."""
    for _ in range(rounds):
        choice = allocate_bits(dist.sse, cost, budget)
        wanted = _between(~np.isnan(dist.sse), choice)  # (N, 2)
        tiles, side = np.nonzero(wanted)
        if not len(tiles):
            return choice + 1
        dist.need(tiles, wanted[tiles, side])
    return allocate_bits(dist.sse, cost, budget) + 1


def coarse_counts(num_tokens: int) -> list[int]:
    """The counts `counts_for_psnr` scans before it bisects: 1, 2, 4, ... and L."""
    return sorted({*(1 << i for i in range(num_tokens.bit_length()) if 1 << i <= num_tokens), num_tokens})


def allocation_counts(num_tokens: int) -> list[int]:
    """The counts every tile is measured at before `refine_allocation`: 1, 2, then every half octave (4, 6, 8, 12,
    16, 24, ...) and L. Denser than `coarse_counts` because error curves are jagged in places (window blinds: a dip
    between 4 and 8 that octaves step over): on val, 1 refinement round on these is within 0.05 dB at equal bytes of
    measuring the 16 counts of onetok 0.1's ladder on every photo, where 3 rounds on octaves lost up to 0.15 dB."""
    half = {3 << i for i in range(1, num_tokens.bit_length())}  # 6, 12, 24, ...
    return sorted({k for k in set(coarse_counts(num_tokens)) | half if k <= num_tokens} | {num_tokens})
