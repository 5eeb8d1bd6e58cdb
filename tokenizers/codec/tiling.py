"""Photos of any size as grids of tokenizer tiles: an image W x H is cut into a grid of T x T tiles (T = the
tokenizer's image size), the right and bottom edge tiles padded by mirror reflection and the padding cropped away
again after decoding; tiles <-> ids through the tokenizer, `batch` tiles at a time so memory stays bounded for any
image size; the post-filter over the decoded image in strips. The rate control (how many ids each tile keeps) is
`onetok.tokenizers.codec.rate`.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
from einops import rearrange

from onetok.data.pixels import from_hwc, to_hwc

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


def _device(tokenizer) -> torch.device:
    return next(tokenizer.parameters()).device


def encode_tiles(tokenizer, tiles: np.ndarray, batch: int = BATCH) -> np.ndarray:
    """Tiles (N, T, T, 3) uint8 -> all L ids per tile (N, L) int64; any prefix is a valid coarser code."""
    device = _device(tokenizer)
    out = [tokenizer.encode(from_hwc(tiles[i:i + batch], device)).cpu() for i in range(0, len(tiles), batch)]
    return torch.cat(out).numpy().astype(np.int64)


def decode_tiles(tokenizer, ids: np.ndarray, counts: np.ndarray, batch: int = BATCH) -> np.ndarray:
    """ids (N, >= max k) and per-tile token counts (N,) -> decoded tiles (N, T, T, 3) uint8."""
    device = _device(tokenizer)
    width = int(counts.max())
    out = []
    for i in range(0, len(counts), batch):
        chunk = torch.from_numpy(np.ascontiguousarray(ids[i:i + batch, :width])).to(device)
        keep = torch.from_numpy(counts[i:i + batch].astype(np.int64)).to(device)
        out.append(to_hwc(tokenizer.decode(chunk, keep)))
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
        strip = from_hwc(image[None, lo:hi], device)  # (1, 3, h, W)
        refined = to_hwc(tokenizer.refine(strip, origin=(lo, 0)))[0]  # (h, W, 3)
        out[top:top + rows] = refined[top - lo: top - lo + min(rows, H - top)]
    return out
