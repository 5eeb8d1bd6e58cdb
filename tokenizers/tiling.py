"""Photos of any size as grids of tokenizer tiles, and the per-tile rate control of the tiled `.otok` codec.

An image W x H is cut into a grid of T x T tiles (T = the tokenizer's image size); the right and bottom edge tiles
are padded by mirror reflection, and the padding is cropped away again after decoding. Each tile is encoded once
into all L ids; because the tokenizer decodes any prefix (nested dropout), every token count k_t in 1..L is
available from that one pass, and the rate control only chooses a prefix length per tile:

- `fixed_counts`: the same k for every tile;
- `counts_for_psnr`: per tile the smallest k whose reconstruction reaches a PSNR (over the tile's own pixels);
- `allocate_bits`: a bit budget spread over the tiles greedily by distortion drop per bit, on each tile's lower
  convex hull of (bits, squared error) points -- a flat sky stops at 1-2 tokens while foliage takes many.

The adaptive modes choose among the counts of `rate_ladder(L)` (all k up to 8, then sparser: 15 counts for L = 32),
each measured by one decoder pass over all tiles.

Distortion is the sum of squared errors in 8-bit units over the pixels a tile covers inside the image, so the
allocation maximises the PSNR of the whole image. Work is done `batch` tiles at a time, so memory stays bounded
for any image size.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
from einops import rearrange

BATCH = 256  # tiles per forward pass


class TileGrid(NamedTuple):
    width: int  # the coded image, px
    height: int
    tile: int  # T

    @property
    def cols(self) -> int:
        return -(-self.width // self.tile)

    @property
    def rows(self) -> int:
        return -(-self.height // self.tile)

    @property
    def count(self) -> int:
        return self.rows * self.cols

    def valid_pixels(self) -> np.ndarray:
        """(N,) pixels of each tile (row-major) that lie inside the image."""
        T = self.tile
        heights = np.minimum(T, self.height - T * np.arange(self.rows))  # (rows,)
        widths = np.minimum(T, self.width - T * np.arange(self.cols))  # (cols,)
        return (heights[:, None] * widths[None, :]).reshape(-1)


# --------------------------------------------------------------------------------------------------------------------
# Tiles <-> images
# --------------------------------------------------------------------------------------------------------------------


def tile_image(array: np.ndarray, tile: int) -> tuple[np.ndarray, TileGrid]:
    """(H, W, 3) uint8 -> tiles (N, T, T, 3) uint8 in row-major order, edges padded by mirror reflection."""
    H, W = array.shape[:2]
    grid = TileGrid(W, H, tile)
    padded = np.pad(array, ((0, grid.rows * tile - H), (0, grid.cols * tile - W), (0, 0)), mode="symmetric")
    return rearrange(padded, "(r t1) (c t2) ch -> (r c) t1 t2 ch", t1=tile, t2=tile), grid


def untile(tiles: np.ndarray, grid: TileGrid) -> np.ndarray:
    """Tiles (N, T, T, 3) -> the image (H, W, 3), edge padding cropped."""
    canvas = rearrange(tiles, "(r c) t1 t2 ch -> (r t1) (c t2) ch", r=grid.rows, c=grid.cols)
    return np.ascontiguousarray(canvas[: grid.height, : grid.width])


def _to_float(tiles: np.ndarray, device: torch.device) -> torch.Tensor:
    """(B, T, T, 3) uint8 -> (B, 3, T, T) float in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(tiles)).to(device).permute(0, 3, 1, 2).float().div_(255.0)


def _to_uint8(images: torch.Tensor) -> np.ndarray:
    """(B, 3, T, T) float in [0, 1] -> (B, T, T, 3) uint8, rounded."""
    return images.clamp(0, 1).mul(255.0).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def _device(tokenizer) -> torch.device:
    return next(tokenizer.parameters()).device


def encode_tiles(tokenizer, tiles: np.ndarray, batch: int = BATCH) -> np.ndarray:
    """Tiles (N, T, T, 3) uint8 -> all L ids per tile (N, L) int64; any prefix is a valid coarser code."""
    device = _device(tokenizer)
    out = [tokenizer.encode(_to_float(tiles[i:i + batch], device)).cpu() for i in range(0, len(tiles), batch)]
    return torch.cat(out).numpy().astype(np.int64)


def decode_tiles(tokenizer, ids: np.ndarray, counts: np.ndarray, batch: int = BATCH) -> np.ndarray:
    """ids (N, >= max k) and per-tile token counts (N,) -> decoded tiles (N, T, T, 3) uint8."""
    device = _device(tokenizer)
    width = int(counts.max())
    out = []
    for i in range(0, len(counts), batch):
        chunk = torch.from_numpy(np.ascontiguousarray(ids[i:i + batch, :width])).to(device)
        keep = torch.from_numpy(counts[i:i + batch].astype(np.int64)).to(device)
        out.append(_to_uint8(tokenizer.decode(chunk, keep)))
    return np.concatenate(out)


def refine(tokenizer, image: np.ndarray, rows: int = 256) -> np.ndarray:
    """The tokenizer's post-filter (`Tokenizer.refine`) over a decoded image (H, W, 3) uint8, in strips of `rows` rows
    with a margin as wide as the filter's reach, so memory stays bounded; unchanged when there is no filter."""
    if tokenizer.postfilter is None:
        return image
    reach = tokenizer.postfilter.layers  # 3x3 convolutions: one pixel each
    device, H = _device(tokenizer), image.shape[0]
    out = np.empty_like(image)
    for top in range(0, H, rows):
        lo, hi = max(0, top - reach), min(H, top + rows + reach)
        strip = _to_float(image[None, lo:hi], device)  # (1, 3, h, W)
        refined = _to_uint8(tokenizer.refine(strip, origin=(lo, 0)))[0]  # (h, W, 3)
        out[top:top + rows] = refined[top - lo: top - lo + min(rows, H - top)]
    return out


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
