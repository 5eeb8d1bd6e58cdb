"""Training the tile prior (`onetok.tokenizers.codec.prior`) on the ids a fixed tokenizer gives real photos.

    onetok-train fit --config configs/tokenizer/photo_prior.yaml
    onetok export <run>/checkpoints/last.ckpt --out models/photo/prior

`TileIdsDataModule` tiles every photo of a folder (and, for more data, its mirror image and downscaled copies) with
the tokenizer, once, and serves (neighbour context, ids) pairs; `PriorSystem` trains the prior with cross-entropy on
every id of every tile, masking neighbours the way the coder will (the wavefront pass for first ids, image borders)
and logs the bits per id that the range coder would spend.
"""

from __future__ import annotations

import math
from pathlib import Path

import lightning
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps
from torch.utils.data import DataLoader, Dataset

from onetok.data.samplers import EvalSampler, RankSampler, ResumableLoader
from onetok.distributed import rank_world
from onetok.optim import adamw_warmup_cosine
from onetok.tokenizers.codec.prior import PRESETS, WAVEFRONT_MASK, PriorConfig, TilePrior, neighbour_ids

SYSTEM_NAME = "prior"


# --------------------------------------------------------------------------------------------------------------------
# Data: tile ids of photos
# --------------------------------------------------------------------------------------------------------------------


def photo_ids(tokenizer, image: Image.Image, missing: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One photo -> (neighbour context (N, 8), all L ids (N, L)) of its tiles."""
    from onetok.tokenizers.codec import tiling

    tiles, grid = tiling.tile_image(np.asarray(image.convert("RGB"), dtype=np.uint8), tokenizer.image_size)
    ids = torch.from_numpy(tiling.encode_tiles(tokenizer, tiles))  # (N, L)
    context = neighbour_ids(ids[:, 0].reshape(grid.rows, grid.cols), missing)  # (N, 8)
    return context, ids


class TileIds(Dataset):
    """(context (N, 8), ids (N, L)) of tiles; item i is {"context": (8,), "ids": (L,)}."""

    def __init__(self, context: torch.Tensor, ids: torch.Tensor):
        self.context, self.ids = context, ids

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"context": self.context[i], "ids": self.ids[i]}


def tile_ids(tokenizer, folder: str, scales: tuple[float, ...], flips: bool, missing: int) -> TileIds:
    """(context, ids) of every tile of every photo in `folder`, at each scale, and mirrored when `flips`."""
    from onetok.data.images import ImageReadError, image_files, load_image

    contexts, ids = [], []
    for path in image_files(folder):
        try:
            photo = load_image(path).image
        except ImageReadError:
            continue
        for scale in scales:
            size = (max(1, round(photo.width * scale)), max(1, round(photo.height * scale)))
            scaled = photo if size == photo.size else photo.resize(size, Image.Resampling.LANCZOS)
            for image in [scaled, ImageOps.mirror(scaled)] if flips else [scaled]:
                c, i = photo_ids(tokenizer, image, missing)
                contexts.append(c)
                ids.append(i)
    if not ids:
        raise FileNotFoundError(f"no readable images in {folder}")
    return TileIds(torch.cat(contexts), torch.cat(ids))


class TileIdsDataModule(lightning.LightningDataModule):
    """{"context": (B, 8), "ids": (B, L)} batches of photo tiles coded by the tokenizer in `tokenizer` (a folder)."""

    def __init__(self, tokenizer: str, train: str, val: str | None = None,
                 scales: tuple[float, ...] = (1.0, 0.75, 0.5), flips: bool = True, batch_size: int = 256,
                 val_batch_size: int = 1024, num_workers: int = 0, seed: int = 0):
        super().__init__()
        self.save_hyperparameters()
        self.tokenizer_dir, self.train, self.val = tokenizer, train, val
        self.scales, self.flips, self.seed = tuple(scales), flips, seed
        self.batch_size, self.val_batch_size, self.num_workers = batch_size, val_batch_size, num_workers
        self.train_set: TileIds | None = None
        self.val_set: TileIds | None = None
        self.fingerprint: str | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        from onetok.tokenizers import Tokenizer, registry

        tokenizer = Tokenizer.from_pretrained(self.tokenizer_dir).eval()
        self.fingerprint = registry.fingerprint_dir(self.tokenizer_dir)
        missing = tokenizer.codebook_size
        self.train_set = tile_ids(tokenizer, self.train, self.scales, self.flips, missing)
        self.val_set = tile_ids(tokenizer, self.val, (1.0,), False, missing) if self.val else None

    def train_dataloader(self) -> DataLoader:
        rank, world = rank_world(self.trainer)
        sampler = RankSampler(len(self.train_set), world, rank, shuffle=True, seed=self.seed)
        return ResumableLoader(self.train_set, trainer=self.trainer, sampler=sampler, batch_size=self.batch_size,
                               drop_last=True, num_workers=self.num_workers)

    def val_dataloader(self) -> DataLoader | list:
        if self.val_set is None:
            return []
        rank, world = rank_world(self.trainer)
        return DataLoader(self.val_set, batch_size=self.val_batch_size, num_workers=self.num_workers,
                          sampler=EvalSampler(len(self.val_set), world, rank))


# --------------------------------------------------------------------------------------------------------------------
# The system
# --------------------------------------------------------------------------------------------------------------------


def mask_context(context: torch.Tensor, missing: int, wavefront_prob: float, drop_prob: float) -> torch.Tensor:
    """Hide neighbours as the coder will: the wavefront pattern for some rows, and single slots at random."""
    B = context.shape[0]
    wavefront = (torch.rand(B, 1, device=context.device) < wavefront_prob) & torch.tensor(WAVEFRONT_MASK,
                                                                                          device=context.device)
    dropped = torch.rand(context.shape, device=context.device) < drop_prob
    return torch.where(wavefront | dropped, torch.full_like(context, missing), context)


class PriorSystem(lightning.LightningModule):
    """Trains a `TilePrior` on (context, ids) batches: cross-entropy over all L ids of every tile."""

    def __init__(self, preset: str = "photo", config: dict | None = None, lr: float = 2e-3,
                 weight_decay: float = 0.05, betas: tuple[float, float] = (0.9, 0.95), warmup_steps: int = 100,
                 min_lr_ratio: float = 0.05, wavefront_prob: float = 0.5, drop_prob: float = 0.05):
        super().__init__()
        self.save_hyperparameters()
        if preset not in PRESETS:
            raise ValueError(f"unknown prior preset {preset!r}; choose from {sorted(PRESETS)}")
        self.config = PriorConfig(**{**PRESETS[preset].to_dict(), **(config or {})})
        self.prior = TilePrior(self.config)
        self._val: dict[str, torch.Tensor] = {}

    def _bits(self, context: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """Per-id code length in bits (B, L)."""
        logits = self.prior(self.prior.sequence(context, ids)).float()  # (B, L, K)
        return F.cross_entropy(logits.transpose(1, 2), ids, reduction="none") / math.log(2)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        context, ids = batch["context"], batch["ids"]
        masked = mask_context(context, self.config.missing, self.hparams.wavefront_prob, self.hparams.drop_prob)
        bits = self._bits(masked, ids).mean()
        self.log("train/bits_per_id", bits, prog_bar=True)
        return bits * math.log(2)  # nats: the usual cross-entropy scale

    def on_validation_epoch_start(self) -> None:
        self._val = {k: torch.zeros((), device=self.device, dtype=torch.float64)
                     for k in ("ids", "full", "first_wavefront", "first_full", "none")}

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        context, ids = batch["context"], batch["ids"]
        missing = self.config.missing
        full = self._bits(context, ids)  # (B, L)
        wavefront = self._bits(mask_context(context, missing, 1.0, 0.0), ids)
        none = self._bits(torch.full_like(context, missing), ids)
        self._val["ids"] += ids.numel()
        # what the coder spends: the first id under the wavefront context, the others under the full one
        self._val["full"] += wavefront[:, 0].sum() + full[:, 1:].sum()
        self._val["first_wavefront"] += wavefront[:, 0].sum()
        self._val["first_full"] += full[:, 0].sum()
        self._val["none"] += none.sum()

    def on_validation_epoch_end(self) -> None:
        totals = {k: self.trainer.strategy.reduce(v, reduce_op="sum") for k, v in self._val.items()}
        tiles = totals["ids"] / self.config.num_tokens
        self.log_dict({"val/bits_per_id": (totals["full"] / totals["ids"]).float(),
                       "val/bits_per_id_no_context": (totals["none"] / totals["ids"]).float(),
                       "val/bits_first_id": (totals["first_wavefront"] / tiles).float(),
                       "val/bits_first_id_all_neighbours": (totals["first_full"] / tiles).float()})

    def configure_optimizers(self):
        total = int(self.trainer.estimated_stepping_batches) if self._trainer else 1
        return adamw_warmup_cosine(self.prior, self.hparams.lr, self.hparams.weight_decay, self.hparams.betas,
                                   self.hparams.warmup_steps, total, self.hparams.min_lr_ratio,
                                   exempt=("embed", "pos"))

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["onetok_system"] = SYSTEM_NAME
        checkpoint["prior_config"] = self.config.to_dict()
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer else None
        checkpoint["tokenizer_fingerprint"] = getattr(datamodule, "fingerprint", None)


# --------------------------------------------------------------------------------------------------------------------
# Export
# --------------------------------------------------------------------------------------------------------------------


def export_checkpoint(ckpt: dict, out_dir: str | Path, force: bool = False, inputs=()) -> Path:
    """Write the prior's inference folder (config.json + model.safetensors) for a PriorSystem `.ckpt` dict, under the
    exporter contract (`onetok.export.export_folder`)."""
    from onetok.export import export_folder

    if "prior_config" not in ckpt or "state_dict" not in ckpt:
        raise ValueError("not a prior training checkpoint (no prior_config or state_dict)")
    prior = TilePrior(PriorConfig(**ckpt["prior_config"]))
    prior.load_state_dict({k[len("prior."):]: v for k, v in ckpt["state_dict"].items() if k.startswith("prior.")})
    fingerprint = ckpt.get("tokenizer_fingerprint")
    return export_folder(out_dir, lambda folder: prior.save_pretrained(folder, fingerprint), force, inputs)
