"""What a tokenizer was trained on, and whether an image lies far outside it.

`onetok export` records the training data in the tokenizer's `config.json` as `"trained_on": "<description>"`, beside
the config (not in `TokenizerConfig`, so fingerprints do not change). `onetok compress` measures how well the
tokenizer reproduces each input with all L tokens per tile (on a sample of tiles) and warns, naming that record, when
the PSNR is far below what a tokenizer reaches on its own kind of data -- e.g. a 32 px shapes tokenizer given a photo
turns it into coloured blobs, far below what JPEG keeps at its lowest setting.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

FAR_PSNR_DB = 16.0  # below this with all L tokens, the image is outside what the tokenizer learned
SAMPLE_TILES = 16  # tiles decoded for the check, spread evenly over the image (a coarse test)


def read_trained_on(directory: str | os.PathLike) -> str | None:
    """The `trained_on` record of a tokenizer folder, or None (older exports have none)."""
    try:
        value = json.loads((Path(directory) / "config.json").read_text()).get("trained_on")
    except (OSError, ValueError, AttributeError):
        return None
    return str(value) if value else None


def describe_training(ckpt: dict) -> str | None:
    """A one-line description of the data a Lightning checkpoint was trained on (from its data module's
    hyper-parameters), or None when the checkpoint does not say."""
    hp = ckpt.get("datamodule_hyper_parameters") or {}
    if hp.get("tile_size") and hp.get("train"):  # TileDataModule: random tiles of photos at native scale
        return (f"{hp['tile_size']} px tiles cropped at native scale (downscaled by up to {hp.get('min_scale', 1)}) "
                f"from the photos in {hp['train']}")
    shards, size = hp.get("train_shards"), hp.get("image_size")
    if not shards:
        return None
    summary = Path(str(shards)).parent / "dataset.json"
    try:
        dataset = json.loads(summary.read_text())
    except (OSError, ValueError):
        dataset = {}
    if dataset.get("dataset") == "shapes":
        return (f"the built-in shapes data: {dataset.get('size', size)} px synthetic images of one flat-coloured "
                f"shape on a plain background ({shards})")
    return f"{size} px crops of the images in {shards}" if size else f"the images in {shards}"


def record_trained_on(directory: str | os.PathLike, description: str | None) -> None:
    """Add `trained_on` to the config.json of an exported tokenizer folder (rewritten in place: the folder is still
    being built when export calls this)."""
    if not description:
        return
    path = Path(directory) / "config.json"
    meta = json.loads(path.read_text())
    meta["trained_on"] = description
    path.write_text(json.dumps(meta, indent=1) + "\n")


def full_length_psnr(tokenizer, tiles: np.ndarray, ids: np.ndarray, sample: int = SAMPLE_TILES) -> float:
    """PSNR (dB) of up to `sample` tiles (N, T, T, 3) uint8, spread evenly, decoded from all their ids (N, L)."""
    from onetok.metrics import pixel_psnr
    from onetok.tokenizers.codec import tiling

    pick = np.unique(np.linspace(0, len(tiles) - 1, min(sample, len(tiles))).round().astype(np.int64))
    decoded = tiling.decode_tiles(tokenizer, ids[pick], np.full(len(pick), ids.shape[1]))
    return pixel_psnr(tiles[pick], decoded)


def far_outside_note(path, psnr_db: float, num_tokens: int, trained_on: str | None) -> str | None:
    """The warning for `onetok compress`, or None when the image is not far outside the tokenizer's data."""
    if psnr_db >= FAR_PSNR_DB:
        return None
    what = trained_on or "other images (its config.json does not say which)"
    return (f"{path}: this tokenizer reproduces it at only {psnr_db:.1f} dB even with all {num_tokens} tokens per "
            f"tile: it was trained on {what}; an image this far outside that comes out as coloured blobs")
