"""The seam post-filter of the tiled codec: decoded tiles put side by side -> the same image with the seams between
tiles removed. Stored in the tokenizer's folder (`Tokenizer.add_postfilter`, weights `postfilter.*`), trained by
`onetok.tokenizers.codec.postfilter_system`."""

from __future__ import annotations

import torch
from torch import nn


class PostFilter(nn.Module):
    """Decoded tiles put side by side (B, 3, H, W) in [0, 1] -> the same image with the seams between tiles (and some
    of the codec's blur) removed: a small residual CNN that also sees how far each pixel is from a tile border.

    Applied after decoding, on the whole tiled image (`Tokenizer.refine`); only a tiled codec needs it. Its last
    convolution starts at zero, so an untrained filter is the identity."""

    def __init__(self, tile: int, channels: int = 16, layers: int = 3):
        super().__init__()
        self.tile, self.layers = tile, layers
        widths = [5] + [channels] * (layers - 1)
        body: list[nn.Module] = []
        for c_in, c_out in zip(widths[:-1], widths[1:]):
            body += [nn.Conv2d(c_in, c_out, 3, padding=1), nn.GELU()]
        self.body = nn.Sequential(*body, nn.Conv2d(widths[-1], 3, 3, padding=1))
        nn.init.zeros_(self.body[-1].weight)
        nn.init.zeros_(self.body[-1].bias)

    def border_map(self, length: int, offset: int, device: torch.device) -> torch.Tensor:
        """(length,) 1 on a tile's first and last pixel, falling to ~0 at its centre."""
        phase = (torch.arange(length, device=device) + offset) % self.tile
        return 1 - 2 * torch.minimum(phase, self.tile - 1 - phase).float() / (self.tile - 1)

    def forward(self, images: torch.Tensor, origin: tuple[int, int] = (0, 0)) -> torch.Tensor:
        """`origin`: where images[..., 0, 0] sits in the tile grid (the images may be strips of a larger one)."""
        B, _, H, W = images.shape
        ys = self.border_map(H, origin[0], images.device)[:, None].expand(H, W)  # (H, W)
        xs = self.border_map(W, origin[1], images.device)[None, :].expand(H, W)
        borders = torch.stack([ys, xs]).to(images.dtype).expand(B, 2, H, W)  # (B, 2, H, W)
        return images + self.body(torch.cat([images * 2 - 1, borders], dim=1))
