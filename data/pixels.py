"""The one place where 8-bit pixels become model tensors and back.

Two layouts meet here: pictures as PIL and numpy hold them, uint8 (H, W, 3) or a batch (B, H, W, 3) with values
0..255; and what the tokenizer reads and writes, float (B, 3, H, W) with values in [0, 1]. The float -> uint8 way
clamps to [0, 1] and rounds to the nearest level, as saving a PNG does. The uint8 -> float way is exact (x / 255 in
float32), so the same file gives the same tensor everywhere (the `.otok` codec's bits depend on it).

`data/images.py` reads files into 8-bit RGB; this module only converts (it is the torch side, kept apart so the image
loader imports without torch).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 images, any layout (e.g. (B, 3, H, W)) -> float32 in [0, 1], same layout; float passes through."""
    return images.float().div_(255.0) if images.dtype == torch.uint8 else images


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """Float images in [0, 1], any layout -> uint8, clamped and rounded (as a saved PNG); uint8 passes through."""
    if images.dtype == torch.uint8:
        return images
    return images.float().clamp(0, 1).mul_(255.0).round_().to(torch.uint8)


def chw_uint8(image: Image.Image | np.ndarray) -> torch.Tensor:
    """One RGB picture (PIL, or uint8 (H, W, 3)) -> uint8 tensor (3, H, W), a contiguous copy of its own."""
    return torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1).contiguous()  # (H, W, 3) -> (3, H, W)


def _stack_hwc(pixels) -> np.ndarray:
    """PIL image, (H, W, 3) or (B, H, W, 3) uint8, or a sequence of pictures -> contiguous, writable uint8 (B, H, W,
    3)."""
    if isinstance(pixels, Image.Image):
        pixels = [pixels]
    if isinstance(pixels, np.ndarray):
        array = pixels[None] if pixels.ndim == 3 else pixels
    elif isinstance(pixels, Sequence) and len(pixels) > 0:
        array = np.stack([np.asarray(p, dtype=np.uint8) for p in pixels])  # (B, H, W, 3)
    else:
        raise ValueError("no pictures to convert")
    if array.dtype != np.uint8 or array.ndim != 4 or array.shape[-1] != 3:
        raise ValueError(f"expected uint8 pictures (H, W, 3), got {array.dtype} {array.shape[1:]}")
    if not array.flags.writeable:  # np.asarray(PIL image) is read-only: torch.from_numpy would warn
        return array.copy()
    return np.ascontiguousarray(array)


def from_hwc(pixels, device: torch.device | str | None = None) -> torch.Tensor:
    """8-bit pictures (a PIL image, a uint8 (H, W, 3) or (B, H, W, 3) array, or a sequence of PIL images / arrays)
    -> float (B, 3, H, W) in [0, 1] on `device` (the uint8 array is moved first: a quarter of the bytes)."""
    batch = torch.from_numpy(_stack_hwc(pixels))
    if device is not None:
        batch = batch.to(device)
    return to_float(batch.permute(0, 3, 1, 2))  # (B, H, W, 3) -> (B, 3, H, W)


def to_hwc(images: torch.Tensor) -> np.ndarray:
    """Float images (B, 3, H, W) in [0, 1] (or uint8) -> uint8 numpy (B, H, W, 3) on the CPU, clamped and rounded."""
    return to_uint8(images).permute(0, 2, 3, 1).cpu().numpy()  # (B, 3, H, W) -> (B, H, W, 3)


def to_pil(images: torch.Tensor) -> list[Image.Image]:
    """Float images (B, 3, H, W) in [0, 1] (or uint8) -> RGB PIL images, rounded as saving a PNG does."""
    return [Image.fromarray(array) for array in to_hwc(images)]


def as_saved(images: torch.Tensor) -> torch.Tensor:
    """Float images in [0, 1] -> the float values an 8-bit PNG of them reads back as (uint8 -> [0, 1])."""
    return to_float(to_uint8(images))
