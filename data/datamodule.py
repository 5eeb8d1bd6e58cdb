"""ImageShardDataModule: image (+ caption) batches from WebDataset shards, for any system that trains on images.

Reads our shards (`png` + `txt` + `json`) and the img2dataset/LAION layout (`jpg` + `txt` + `json`) without
conversion. Training streams resampled shards (each worker and each rank draws shards with replacement, the
WebDataset recommendation for DDP) through a shuffle buffer; validation reads every shard once, split across
ranks and workers. Truncated shards and corrupt samples are skipped and counted, never fatal.

For small datasets (the built-in shapes) `in_memory=True` decodes the training split once into a uint8 tensor and
serves it map-style, which is much faster on a 2-core machine; each rank takes its share of a seeded permutation
(`onetok.data.samplers.RankSampler`) and a resumed run continues the epoch where its checkpoint left it. A
resumed stream instead reshuffles: its seed includes the step it resumes from (it never replays the first batches).
"""

from __future__ import annotations

import random
from typing import Any

import lightning.pytorch as pl
import torch
import webdataset as wds
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from onetok.data.pixels import chw_uint8, to_float, to_pil
from onetok.data.samplers import RankSampler, ResumableLoader
from onetok.data.shards import SkipCounter, expand_shards, iter_samples, resize_center_crop, sample_from_files
from onetok.distributed import rank_world


def collate(samples: list[dict]) -> dict[str, Any]:
    """uint8 (3, S, S) images -> {"image": float (B, 3, S, S) in [0, 1], "caption": [...], "key": [...]}"""
    images = to_float(torch.stack([s["image"] for s in samples]))  # (B, 3, S, S)
    return {
        "image": images,
        "caption": [s["caption"] or "" for s in samples],
        "key": [s["key"] for s in samples],
    }


class ImageTransform:
    """PIL image -> uint8 tensor (3, S, S): resize + centre crop, then optional random crop and horizontal flip."""

    def __init__(self, size: int, random_crop: bool = False, crop_scale: float = 1.125, random_flip: bool = False):
        self.size, self.random_crop, self.crop_scale, self.random_flip = size, random_crop, crop_scale, random_flip

    def __call__(self, image: Image.Image, rng: random.Random | None = None) -> torch.Tensor:
        rng = rng or random
        if self.random_crop:
            big = max(self.size, round(self.size * self.crop_scale))
            image = resize_center_crop(image, big)
            x, y = rng.randint(0, big - self.size), rng.randint(0, big - self.size)
            image = image.crop((x, y, x + self.size, y + self.size))
        elif image.size != (self.size, self.size):
            image = resize_center_crop(image, self.size)
        if self.random_flip and rng.random() < 0.5:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        return chw_uint8(image)  # (3, S, S)


class _DecodeSample:
    """WebDataset map stage: raw sample -> decoded dict, or None (counted) when the image is bad."""

    def __init__(self, transform: ImageTransform):
        self.transform, self.skips = transform, SkipCounter()

    def __call__(self, raw: dict) -> dict | None:
        key = raw.get("__key__", "?")
        files = {k: v for k, v in raw.items() if not k.startswith("__")}
        try:
            sample = sample_from_files(key, files)
            return {"key": key, "caption": sample["caption"], "image": self.transform(sample["image"])}
        except Exception as err:  # noqa: BLE001 - a bad sample is skipped, never fatal
            self.skips(f"{raw.get('__url__', '?')}:{key}", err)
            return None


def _not_none(x) -> bool:
    return x is not None


class ShardErrorHandler:
    def __init__(self):
        self.skips = SkipCounter()

    def __call__(self, exn: Exception) -> bool:
        self.skips("shard", exn)
        return True  # keep going


class InMemoryImages(Dataset):
    """A decoded split held as one uint8 tensor (N, 3, S, S); flips/crops are applied per item, drawn from
    (seed, epoch, index) when keys are (epoch, index) pairs (`RankSampler(with_epoch=True)`): a resumed run redraws
    the same augmentations."""

    def __init__(self, images: torch.Tensor, captions: list[str], keys: list[str], transform: ImageTransform,
                 seed: int = 0):
        self.images, self.captions, self.keys, self.transform, self.seed = images, captions, keys, transform, seed

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, key: tuple[int, int] | int) -> dict:
        epoch, i = key if isinstance(key, tuple) else (None, key)
        image = self.images[i]
        if self.transform.random_flip or self.transform.random_crop:
            pil = to_pil(image[None])[0]
            image = self.transform(pil, random.Random(f"{self.seed}:{epoch}:{i}") if epoch is not None else None)
        return {"image": image, "caption": self.captions[i], "key": self.keys[i]}


def load_in_memory(spec, transform: ImageTransform, limit: int | None = None) -> InMemoryImages:
    base = ImageTransform(transform.size)
    images, captions, keys = [], [], []
    for sample in iter_samples(spec):
        images.append(base(sample["image"]))
        captions.append(sample["caption"] or "")
        keys.append(sample["key"])
        if limit is not None and len(images) >= limit:
            break
    if not images:
        raise ValueError(f"no readable samples in {spec}")
    return InMemoryImages(torch.stack(images), captions, keys, transform)


class ImageShardDataModule(pl.LightningDataModule):
    """Train/val image (+ caption) batches from WebDataset shards (a directory, glob or brace pattern each)."""

    def __init__(
        self,
        train_shards: str,
        val_shards: str | None = None,
        image_size: int = 256,
        batch_size: int = 32,
        val_batch_size: int | None = None,
        num_workers: int = 4,
        shuffle_buffer: int = 2000,
        random_flip: bool = False,
        random_crop: bool = False,
        epoch_samples: int = 10000,
        val_samples: int | None = None,
        in_memory: bool = False,
        seed: int = 0,
    ):
        super().__init__()
        self.save_hyperparameters()
        self.train_shards, self.val_shards = train_shards, val_shards
        self.image_size, self.batch_size = image_size, batch_size
        self.val_batch_size = val_batch_size or batch_size
        self.num_workers, self.shuffle_buffer = num_workers, shuffle_buffer
        self.epoch_samples, self.val_samples, self.in_memory, self.seed = epoch_samples, val_samples, in_memory, seed
        self.train_transform = ImageTransform(image_size, random_crop=random_crop, random_flip=random_flip)
        self.val_transform = ImageTransform(image_size)
        self._train_memory: InMemoryImages | None = None
        self._val_memory: InMemoryImages | None = None

    # ---- helpers ---------------------------------------------------------------------------------------------------

    def _loader_kwargs(self) -> dict:
        return {"num_workers": self.num_workers, "persistent_workers": self.num_workers > 0, "pin_memory": False}

    def _val_urls(self) -> list[str]:
        return expand_shards(self.val_shards) if self.val_shards else []

    # ---- Lightning hooks -------------------------------------------------------------------------------------------

    def setup(self, stage: str | None = None) -> None:
        if not expand_shards(self.train_shards) and stage in (None, "fit"):
            raise FileNotFoundError(f"no training shards match {self.train_shards!r}")
        if self.in_memory:
            if stage in (None, "fit") and self._train_memory is None:
                self._train_memory = load_in_memory(self.train_shards, self.train_transform)
                self._train_memory.seed = self.seed
            if self.val_shards and self._val_memory is None:
                self._val_memory = load_in_memory(self.val_shards, self.val_transform, self.val_samples)

    def train_dataloader(self) -> DataLoader:
        rank, world = rank_world(self.trainer)
        if self.in_memory:
            sampler = RankSampler(len(self._train_memory), world, rank, shuffle=True, seed=self.seed, with_epoch=True)
            return ResumableLoader(self._train_memory, trainer=self.trainer, sampler=sampler,
                                   batch_size=self.batch_size, drop_last=True, collate_fn=collate,
                                   **self._loader_kwargs())
        urls = expand_shards(self.train_shards)
        trainer = self.trainer
        seed = self.seed + 1_000_003 * (trainer.global_step if trainer is not None else 0)  # a resumed run reshuffles
        dataset = (
            wds.WebDataset(urls, resampled=True, shardshuffle=False, nodesplitter=None,
                           workersplitter=None, handler=ShardErrorHandler(), empty_check=False, seed=seed)
            .shuffle(self.shuffle_buffer, initial=min(self.shuffle_buffer, 500))
            .map(_DecodeSample(self.train_transform))
            .select(_not_none)
            .batched(self.batch_size, collation_fn=collate, partial=False)
        )
        batches = max(1, self.epoch_samples // (self.batch_size * world))
        return wds.WebLoader(dataset, batch_size=None, **self._loader_kwargs()).with_epoch(batches)

    def val_dataloader(self) -> DataLoader | list:
        if not self.val_shards:
            return []
        if self.in_memory:
            return DataLoader(self._val_memory, batch_size=self.val_batch_size, shuffle=False, collate_fn=collate,
                              **self._loader_kwargs())
        _, world = rank_world(self.trainer)
        urls = self._val_urls()
        dataset = wds.WebDataset(
            urls, resampled=False, shardshuffle=False,
            nodesplitter=wds.split_by_node if len(urls) >= world else None,
            workersplitter=wds.split_by_worker, handler=ShardErrorHandler(), empty_check=False,
        ).map(_DecodeSample(self.val_transform)).select(_not_none)
        if self.val_samples is not None:
            dataset = dataset.slice(self.val_samples)
        dataset = dataset.batched(self.val_batch_size, collation_fn=collate, partial=True)
        return wds.WebLoader(dataset, batch_size=None, **self._loader_kwargs())
