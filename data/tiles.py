"""Random tile crops from photographs of any size: the training data of a tiled (photo) tokenizer.

A tiled codec codes a photo at its own resolution as a grid of `tile`-sized squares, so its tokenizer must learn from
tile-sized crops at native scale, not from whole photos squeezed to the tile size. `TileDataModule` draws random
crops from a folder of images (decoded once and held in memory) or from WebDataset shards (our layout or
img2dataset/LAION; several crops per decoded image), with an optional random downscale and horizontal flips:

- scale s drawn log-uniformly in [min_scale, max_scale]: a region of tile/s px is cropped and resized (antialiased)
  to the tile, so the model also sees coarser detail (s < 1) than the photos' native resolution;
- a photo smaller than the region is padded by mirror reflection, as the codec pads its edge tiles;
- crops are drawn uniformly over pixel positions (a photo's share is proportional to its area).

Validation uses a fixed set of tiles per photo (a seeded grid of positions at scale 1), the same on every run.
"""

from __future__ import annotations

import os

import lightning
import numpy as np
import torch
import webdataset as wds
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from onetok.data.datamodule import ShardErrorHandler, collate
from onetok.data.images import ImageReadError, image_files, load_image
from onetok.data.pixels import chw_uint8
from onetok.data.samplers import EvalSampler, RankSampler, ResumableLoader
from onetok.data.shards import expand_shards, sample_from_files
from onetok.distributed import rank_world


def is_image_folder(spec: str | os.PathLike) -> bool:
    """A folder holding image files and no shards."""
    return os.path.isdir(spec) and not expand_shards(spec) and bool(image_files(spec))


def reflect_pad(array: np.ndarray, height: int, width: int) -> np.ndarray:
    """(H, W, C) -> (max(H, height), max(W, width), C), padded at the bottom/right by mirror reflection."""
    H, W = array.shape[:2]
    return np.pad(array, ((0, max(0, height - H)), (0, max(0, width - W)), (0, 0)), mode="symmetric")


def random_tile(array: np.ndarray, size: int, rng: np.random.Generator, min_scale: float = 1.0,
                max_scale: float = 1.0, flip: bool = False) -> torch.Tensor:
    """(H, W, 3) uint8 -> uint8 (3, size, size): a random crop at a random scale in [min_scale, max_scale]."""
    scale = float(np.exp(rng.uniform(np.log(min_scale), np.log(max_scale))))
    region = max(1, round(size / scale))  # side of the crop in source pixels
    array = reflect_pad(array, region, region)
    H, W = array.shape[:2]
    y, x = int(rng.integers(0, H - region + 1)), int(rng.integers(0, W - region + 1))
    crop = array[y:y + region, x:x + region]
    if region != size:
        crop = np.asarray(Image.fromarray(crop).resize((size, size), Image.Resampling.LANCZOS))
    if flip and rng.random() < 0.5:
        crop = crop[:, ::-1]
    return chw_uint8(crop)  # (3, size, size), a copy of its own


def grid_tiles(array: np.ndarray, size: int, count: int, seed: int) -> list[torch.Tensor]:
    """`count` fixed tiles of one photo at scale 1 (seeded positions): the validation tiles."""
    rng = np.random.default_rng(seed)
    return [random_tile(array, size, rng) for _ in range(count)]


class PhotoTiles(Dataset):
    """Random tiles of photos held in memory; `length` crops per epoch. Item (epoch, i) is drawn from
    (seed, epoch, i) (`RankSampler(with_epoch=True)` keys), so every epoch differs and a resumed run redraws the same
    crops; ranks get different i."""

    def __init__(self, photos: list[np.ndarray], size: int, length: int, min_scale: float = 1.0,
                 max_scale: float = 1.0, flip: bool = True, seed: int = 0):
        if not photos:
            raise ValueError("no photos to crop tiles from")
        self.photos, self.size, self.length, self.seed = photos, size, length, seed
        self.min_scale, self.max_scale, self.flip = min_scale, max_scale, flip
        areas = np.array([p.shape[0] * p.shape[1] for p in photos], dtype=np.float64)
        self.weights = areas / areas.sum()

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, key: tuple[int, int] | int) -> dict:
        epoch, i = key if isinstance(key, tuple) else (0, key)
        rng = np.random.default_rng([self.seed, epoch, i])
        index = int(rng.choice(len(self.photos), p=self.weights))
        tile = random_tile(self.photos[index], self.size, rng, self.min_scale, self.max_scale, self.flip)
        return {"image": tile, "caption": "", "key": f"{index}"}


class _ShardTiles:
    """WebDataset stage: decoded samples -> `per_image` random tiles each (bad samples are skipped, counted)."""

    def __init__(self, size: int, per_image: int, min_scale: float, max_scale: float, flip: bool, seed: int):
        self.size, self.per_image, self.seed = size, per_image, seed
        self.min_scale, self.max_scale, self.flip = min_scale, max_scale, flip
        self.errors = ShardErrorHandler()

    def __call__(self, samples):
        rng = np.random.default_rng([self.seed, int(torch.randint(2**62, ()))])
        for raw in samples:
            key = raw.get("__key__", "?")
            try:
                sample = sample_from_files(key, {k: v for k, v in raw.items() if not k.startswith("__")})
                array = np.asarray(sample["image"], dtype=np.uint8)
            except Exception as err:  # noqa: BLE001 - a bad sample is skipped, never fatal
                self.errors(err)
                continue
            for j in range(self.per_image):
                tile = random_tile(array, self.size, rng, self.min_scale, self.max_scale, self.flip)
                yield {"image": tile, "caption": "", "key": f"{key}/{j}"}


def load_photos(spec: str | os.PathLike, limit: int | None = None) -> list[np.ndarray]:
    """Decode every image of a folder (or every sample of shards) at native resolution, as (H, W, 3) uint8."""
    if is_image_folder(spec):
        photos = []
        for path in image_files(spec)[:limit]:
            try:
                photos.append(np.asarray(load_image(path).image, dtype=np.uint8))
            except ImageReadError:
                continue
        return photos
    from onetok.data.shards import iter_samples

    photos = [np.asarray(s["image"], dtype=np.uint8) for s in iter_samples(spec)]
    return photos[:limit]


def _shards_exist(spec: str) -> bool:
    """Some shard of `spec` exists (remote URLs and pipes are taken on trust)."""
    urls = expand_shards(spec)
    return any("://" in u or u.startswith("pipe:") or os.path.isfile(u) for u in urls)


class TileDataModule(lightning.LightningDataModule):
    """Batches {"image": float (B, 3, T, T) in [0, 1]} of random photo tiles; `train`/`val` are a folder of images
    or shards (a directory of tars, a glob or a brace pattern)."""

    def __init__(
        self,
        train: str,
        val: str | None = None,
        tile_size: int = 32,
        batch_size: int = 64,
        val_batch_size: int | None = None,
        epoch_samples: int = 8192,
        min_scale: float = 1.0,
        max_scale: float = 1.0,
        random_flip: bool = True,
        val_tiles_per_image: int = 16,
        crops_per_image: int = 16,
        shuffle_buffer: int = 2000,
        num_workers: int = 0,
        seed: int = 0,
    ):
        super().__init__()
        if not 0 < min_scale <= max_scale:
            raise ValueError(f"need 0 < min_scale <= max_scale, got {min_scale}, {max_scale}")
        self.save_hyperparameters()
        self.train, self.val, self.tile_size, self.batch_size = train, val, tile_size, batch_size
        self.val_batch_size = val_batch_size or batch_size
        self.epoch_samples, self.min_scale, self.max_scale = epoch_samples, min_scale, max_scale
        self.random_flip, self.val_tiles_per_image, self.crops_per_image = random_flip, val_tiles_per_image, crops_per_image
        self.shuffle_buffer, self.num_workers, self.seed = shuffle_buffer, num_workers, seed
        self._train_set: Dataset | None = None
        self._val_set: Dataset | None = None

    def _loader_kwargs(self) -> dict:
        return {"num_workers": self.num_workers, "persistent_workers": self.num_workers > 0}

    def setup(self, stage: str | None = None) -> None:
        if stage in (None, "fit") and self._train_set is None and is_image_folder(self.train):
            photos = load_photos(self.train)
            if not photos:
                raise FileNotFoundError(f"no readable images in {self.train}")
            self._train_set = PhotoTiles(photos, self.tile_size, self.epoch_samples, self.min_scale,
                                         self.max_scale, self.random_flip, self.seed)
        elif stage in (None, "fit") and self._train_set is None and not _shards_exist(self.train):  # set up twice
            raise FileNotFoundError(f"no images or shards in {self.train!r}")
        if self.val and self._val_set is None:
            tiles = [t for i, photo in enumerate(load_photos(self.val))
                     for t in grid_tiles(photo, self.tile_size, self.val_tiles_per_image, self.seed + i)]
            if not tiles:
                raise FileNotFoundError(f"no readable images in {self.val}")
            self._val_set = [{"image": t, "caption": "", "key": str(i)} for i, t in enumerate(tiles)]

    def train_dataloader(self) -> DataLoader:
        rank, world = rank_world(self.trainer)
        if self._train_set is not None:
            sampler = RankSampler(len(self._train_set), world, rank, shuffle=False, with_epoch=True)
            return ResumableLoader(self._train_set, trainer=self.trainer, sampler=sampler, batch_size=self.batch_size,
                                   drop_last=True, collate_fn=collate, **self._loader_kwargs())
        stage = _ShardTiles(self.tile_size, self.crops_per_image, self.min_scale, self.max_scale,
                            self.random_flip, self.seed)
        dataset = (
            wds.WebDataset(expand_shards(self.train), resampled=True, shardshuffle=False, nodesplitter=None,
                           workersplitter=None, handler=stage.errors, empty_check=False, seed=self.seed)
            .compose(stage)
            .shuffle(self.shuffle_buffer, initial=min(self.shuffle_buffer, 500))
            .batched(self.batch_size, collation_fn=collate, partial=False)
        )
        batches = max(1, self.epoch_samples // (self.batch_size * world))
        return wds.WebLoader(dataset, batch_size=None, **self._loader_kwargs()).with_epoch(batches)

    def val_dataloader(self) -> DataLoader | list:
        if self._val_set is None:
            return []
        rank, world = rank_world(self.trainer)
        return DataLoader(self._val_set, batch_size=self.val_batch_size, sampler=EvalSampler(len(self._val_set), world,
                          rank), collate_fn=collate, **self._loader_kwargs())
