"""The per-tile rate control of the tiled `.otok` codec.

Each tile is encoded once into all L ids; because the tokenizer decodes any prefix (nested dropout), every token
count k_t in 1..L is available from that one pass, and the rate control only chooses a prefix length per tile:

- `fixed_counts`: the same k for every tile;
- `counts_for_psnr`: per tile the smallest k whose reconstruction reaches a PSNR (over the tile's own pixels);
- `allocate_bits`: a bit budget spread over the tiles greedily by distortion drop per bit, on each tile's lower
  convex hull of (bits, squared error) points -- a flat sky stops at 1-2 tokens while foliage takes many.

The adaptive modes choose among the counts of `rate_ladder(L)` (all k up to 8, then sparser: 16 counts for L = 32),
each measured by one decoder pass over all tiles (`sse_ladder`).

Distortion is the sum of squared errors in 8-bit units over the pixels a tile covers inside the image, so the
allocation maximises the PSNR of the whole image.
"""

from __future__ import annotations

import numpy as np

from onetok.tokenizers.codec.tiling import BATCH, TileGrid, decode_tiles


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


def sse_ladder(tokenizer, tiles: np.ndarray, ids: np.ndarray, ladder: list[int], grid: TileGrid,
               batch: int = BATCH) -> np.ndarray:
    """Squared error of every tile decoded at every token count of `ladder`: (N, len(ladder)) float64."""
    mask = _valid_mask(grid)
    sse = np.empty((len(tiles), len(ladder)))
    for j, k in enumerate(ladder):
        decoded = decode_tiles(tokenizer, ids, np.full(len(tiles), k), batch)
        sse[:, j] = tile_sse(tiles, decoded, mask)
    return sse


# --------------------------------------------------------------------------------------------------------------------
# Rate control
# --------------------------------------------------------------------------------------------------------------------


def rate_ladder(num_tokens: int) -> list[int]:
    """The token counts the adaptive rate control chooses from (each costs one decoder pass to measure): every k
    up to 8, every 2nd up to 16, every 4th up to 32, every 8th beyond, and L itself."""
    dense = [*range(1, 9), *range(10, 17, 2), *range(20, 33, 4), *range(40, num_tokens + 1, 8)]
    return sorted({k for k in dense if k <= num_tokens} | {num_tokens})


def fixed_counts(grid: TileGrid, k: int) -> np.ndarray:
    return np.full(grid.count, k, dtype=np.int64)


def counts_for_psnr(sse: np.ndarray, ladder: list[int], valid: np.ndarray, target_db: float) -> np.ndarray:
    """Per tile, the smallest ladder count whose PSNR over the tile's pixels reaches `target_db` (else the largest)."""
    mse = sse / (3.0 * valid[:, None])  # (N, M)
    good = mse <= 255.0**2 / 10 ** (target_db / 10)  # (N, M)
    first = np.where(good.any(axis=1), good.argmax(axis=1), len(ladder) - 1)
    return np.asarray(ladder, dtype=np.int64)[first]


def _lower_hull(cost: np.ndarray, sse: np.ndarray) -> list[int]:
    """Indices of the lower convex hull of points (cost, sse), cost increasing, from the first point onwards."""
    hull = [0]
    for j in range(1, len(cost)):
        if sse[j] >= sse[hull[-1]]:
            continue  # more bits for no gain
        while len(hull) >= 2:
            a, b = hull[-2], hull[-1]
            # drop b when it lies on or above the segment a -> j
            if (sse[a] - sse[b]) * (cost[j] - cost[a]) <= (sse[a] - sse[j]) * (cost[b] - cost[a]):
                hull.pop()
            else:
                break
        hull.append(j)
    return hull


def allocate_bits(sse: np.ndarray, cost: np.ndarray, budget: float) -> np.ndarray:
    """Choose one ladder index per tile so the summed cost stays within `budget` bits and the summed squared error
    is (greedily) minimal. sse, cost: (N, M), cost increasing along M. Every tile gets at least index 0."""
    N = len(sse)
    choice = np.zeros(N, dtype=np.int64)
    spent = float(cost[:, 0].sum())
    segments = []  # (slope, tile, step along the hull, from, to)
    for n in range(N):
        hull = _lower_hull(cost[n], sse[n])
        for step, (a, b) in enumerate(zip(hull[:-1], hull[1:])):
            segments.append(((sse[n, a] - sse[n, b]) / (cost[n, b] - cost[n, a]), n, step, a, b))
    segments.sort(key=lambda s: (-s[0], s[2]))  # steepest first; one tile's segments in hull order
    blocked = np.zeros(N, dtype=bool)
    for _, n, _, a, b in segments:
        if blocked[n] or choice[n] != a:
            continue
        extra = cost[n, b] - cost[n, a]
        if spent + extra <= budget:
            choice[n], spent = b, spent + extra
        else:
            blocked[n] = True  # its later segments would skip this one
    return choice
