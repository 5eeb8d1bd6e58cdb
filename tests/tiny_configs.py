"""Every shipped config shrunk to tiny CPU sizes, by the system and data module it names: the overrides the config,
resume and fast_dev_run tests add to `onetok-train`. `TinyData` builds the small data they all point at."""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import yaml
from PIL import Image

from onetok.ar_model.tokenize import tokenize_dataset
from onetok.data.shapes import write_shapes_dataset
from onetok.tokenizers import Tokenizer, preset


class TinyData(NamedTuple):
    shapes: Path  # 16 px shapes shards (train/ val/)
    tokenizer: Path  # a tiny random tokenizer folder (16 px tiles, L = 8)
    tokens: Path  # the shapes tokenized with it
    photos: Path  # a few small photo-like images of different sizes


def make_tiny_data(root: Path) -> TinyData:
    write_shapes_dataset(root / "shapes", size=16, train=96, val=20, seed=0, shard_size=50)
    torch.manual_seed(0)
    Tokenizer(preset("tiny")).save_pretrained(root / "tok")
    tokenize_dataset(root / "tok", str(root / "shapes"), root / "tokens", shard_size=40)
    rng = np.random.default_rng(0)
    (root / "photos").mkdir()
    for i, (h, w) in enumerate([(40, 56), (33, 48), (64, 36)]):
        yy, xx = np.mgrid[0:h, 0:w]
        smooth = np.stack([(xx * 5 + i * 40) % 256, (yy * 4) % 256, (xx + yy) % 256], -1)
        Image.fromarray(np.clip(smooth + rng.integers(-15, 15, (h, w, 3)), 0, 255).astype(np.uint8)).save(
            root / "photos" / f"{i}.png")
    return TinyData(root / "shapes", root / "tok", root / "tokens", root / "photos")


def classes(config: Path) -> tuple[str, str]:
    cfg = yaml.safe_load(config.read_text())
    return cfg["model"]["class_path"].rsplit(".", 1)[1], cfg["data"]["class_path"].rsplit(".", 1)[1]


def tiny_overrides(config: Path, data: TinyData, gan: bool = False) -> list[str]:
    """Model and data arguments that make `config` tiny (no trainer arguments)."""
    system, datamodule = classes(config)
    photos = [f"--data.init_args.train={data.photos}", f"--data.init_args.val={data.photos}"]
    if system == "TokenizerSystem" and datamodule == "TileDataModule":
        return ["--model.init_args.preset=tiny", "--model.init_args.config={}", *photos,
                "--data.init_args.tile_size=16", "--data.init_args.batch_size=8", "--data.init_args.val_batch_size=20",
                "--data.init_args.epoch_samples=96", "--data.init_args.val_tiles_per_image=4"]
    if system == "TokenizerSystem":
        size = 32 if gan else 16  # the PatchGAN needs 32 px
        return ["--model.init_args.preset=tiny", f'--model.init_args.config={{"image_size": {size}}}',
                "--model.init_args.init_from=null",  # a start tokenizer of the config's own size is not tiny
                f"--data.init_args.train_shards={data.shapes / 'train'}",
                f"--data.init_args.val_shards={data.shapes / 'val'}", f"--data.init_args.image_size={size}",
                "--data.init_args.batch_size=8", "--data.init_args.val_batch_size=20", "--data.init_args.num_workers=0",
                "--data.init_args.in_memory=true", "--data.init_args.epoch_samples=96"]
    if system == "PostFilterSystem":
        return [f"--model.init_args.tokenizer={data.tokenizer}", "--model.init_args.channels=4",
                "--model.init_args.layers=2", *photos, "--data.init_args.tile_size=32", "--data.init_args.batch_size=4",
                "--data.init_args.val_batch_size=8", "--data.init_args.epoch_samples=48",
                "--data.init_args.val_tiles_per_image=2"]
    if system == "PriorSystem":
        return ["--model.init_args.preset=tiny", "--model.init_args.config={}",
                f"--data.init_args.tokenizer={data.tokenizer}", *photos, "--data.init_args.scales=[1.0, 0.5]",
                "--data.init_args.batch_size=8", "--data.init_args.val_batch_size=16"]
    if system == "ARSystem":
        return ["--model.init_args.preset=tiny", "--model.init_args.model_overrides={}",
                "--model.init_args.eval_samples=2", f"--data.init_args.tokens={data.tokens}",
                "--data.init_args.text=words", "--data.init_args.text_vocab=null", "--data.init_args.batch_size=8",
                "--data.init_args.val_batch_size=8",
                "--data.init_args.num_workers=0", "--data.init_args.shuffle_buffer=10",
                f"--model.init_args.tokenizer_dir={data.tokenizer}"]
    raise AssertionError(f"{config}: no tiny overrides for {system} + {datamodule}")
