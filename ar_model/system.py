"""ARSystem: trains the unified transformer on text->image and image->text rows (see `onetok.ar_model.data`).

The transformer is built from a size preset plus overrides once the vocabulary is known: from the `vocab` init
argument (a checkpoint being loaded) or from the data module (`ARDataModule.vocab`, read from the token folder's
meta.json). The tokenizer directory comes from `tokenizer_dir` or the data module; it is only used to draw images
at validation and to be copied by `export_checkpoint` into the unified model directory.

    onetok-train fit --config configs/ar/shapes.yaml
    onetok export runs/ar/.../last.ckpt --out models/unified
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_warn

from onetok.ar_model.data import I2T, IGNORE, T2I, tokenizer_fingerprint
from onetok.ar_model.evaluate import DEFAULT_SETTINGS
from onetok.ar_model.generate import SamplingSettings
from onetok.ar_model.model import ARConfig, Transformer, config_from_preset
from onetok.ar_model.vocab import Vocab


class WarmupCosine:
    """LR multiplier: linear warm-up over `warmup` steps, then cosine from 1 to `min_ratio` at step `total`."""

    def __init__(self, warmup: int, total: int, min_ratio: float):
        self.warmup, self.total, self.min_ratio = warmup, max(total, warmup + 1), min_ratio

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / self.warmup
        progress = min(1.0, (step - self.warmup) / (self.total - self.warmup))
        return self.min_ratio + (1 - self.min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def build_config(preset: str, vocab: Vocab, overrides: dict[str, Any] | None) -> ARConfig:
    return config_from_preset(preset, vocab.size, **(overrides or {}))


class ARSystem(L.LightningModule):
    """Next-token cross-entropy on the loss-masked rows of `ARDataModule`; AdamW + warm-up/cosine."""

    def __init__(
        self,
        preset: str = "shapes",
        model_overrides: dict[str, Any] | None = None,
        tokenizer_dir: str | None = None,
        vocab: dict | None = None,
        lr: float = 3e-3,
        min_lr_ratio: float = 0.1,
        warmup_steps: int = 100,
        weight_decay: float = 0.1,
        betas: tuple[float, float] = (0.9, 0.95),
        sample_prompts: int = 8,
        eval_samples: int = 64,
        sample_cfg: float = DEFAULT_SETTINGS.cfg_scale,
        sample_temperature: float = DEFAULT_SETTINGS.temperature,
    ):
        super().__init__()
        self.save_hyperparameters()
        self.transformer: Transformer | None = None
        self._tokenizer = None  # loaded lazily for validation samples; not a sub-module (not in the checkpoint)
        if vocab is not None:
            self._build(Vocab.from_dict(vocab))

    def _build(self, vocab: Vocab) -> None:
        self.vocab = vocab
        self.config = build_config(self.hparams.preset, vocab, self.hparams.model_overrides)
        self.transformer = Transformer(self.config)

    def setup(self, stage: str) -> None:
        """Take the vocabulary and tokenizer from the data module when they were not given."""
        datamodule = getattr(self.trainer, "datamodule", None)
        if self.hparams.tokenizer_dir is None and datamodule is not None:
            self.hparams.tokenizer_dir = datamodule.tokenizer_dir
        if self.hparams.tokenizer_dir is not None:
            self.hparams.tokenizer_dir = str(Path(self.hparams.tokenizer_dir).resolve())
        if self.transformer is None:
            if datamodule is None or not hasattr(datamodule, "vocab"):
                raise ValueError("ARSystem needs `vocab` or a data module with a `vocab` (ARDataModule)")
            self.hparams.vocab = datamodule.vocab.to_dict()
            self._build(datamodule.vocab)
        elif datamodule is not None and hasattr(datamodule, "vocab") and datamodule.vocab != self.vocab:
            raise ValueError(f"the data's vocabulary {datamodule.vocab} differs from the model's {self.vocab}")
        if self.hparams.tokenizer_dir is not None and not (Path(self.hparams.tokenizer_dir) / "model.safetensors").is_file():
            rank_zero_warn(f"tokenizer {self.hparams.tokenizer_dir} not found: no sampled images at validation, "
                           "and this run's checkpoints cannot be exported")
            self.hparams.tokenizer_dir = None
        if stage == "fit" and self.hparams.tokenizer_dir is not None:
            self.hparams["tokenizer_fingerprint"] = tokenizer_fingerprint(self.hparams.tokenizer_dir)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.transformer(ids)  # (B, T, V)

    # ---- training and validation -----------------------------------------------------------------------------------

    def _losses(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Mean cross-entropy over all loss tokens, and over the loss tokens of each task's rows."""
        logits = self.transformer(batch["ids"])  # (B, T, V)
        targets = batch["targets"]
        per_token = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=IGNORE,
                                    reduction="none").view_as(targets)  # (B, T)
        counted = (targets != IGNORE).float()  # (B, T)
        losses = {"loss": per_token.sum() / counted.sum().clamp(min=1)}
        for name, task in (("t2i", T2I), ("i2t", I2T)):
            rows = batch["task"] == task  # (B,)
            if rows.any():
                losses[name] = per_token[rows].sum() / counted[rows].sum().clamp(min=1)
        return losses

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        losses = self._losses(batch)
        B = batch["ids"].shape[0]
        for name, value in losses.items():
            self.log(f"train/{name}", value, prog_bar=name == "loss", batch_size=B)
        self.log("train/lr", self.optimizers().param_groups[0]["lr"], batch_size=B)
        return losses["loss"]

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        B = batch["ids"].shape[0]
        for name, value in self._losses(batch).items():
            self.log(f"val/{name}", value, prog_bar=name == "loss", batch_size=B, sync_dist=True)

    def on_validation_epoch_end(self) -> None:
        """Caption val images and (with a tokenizer) draw images for val captions; log accuracies, grid and table."""
        datamodule = getattr(self.trainer, "datamodule", None)
        pairs = getattr(datamodule, "val_pairs", None)
        if self.trainer.sanity_checking or pairs is None or self.hparams.eval_samples < 1:
            return
        if not self.trainer.is_global_zero:
            return
        from onetok.ar_model import evaluate

        n = min(self.hparams.eval_samples, len(pairs.captions))
        prompts, codes = pairs.captions[:n], pairs.codes[:n]
        captions = evaluate.caption_codes(self.transformer, self.vocab, codes)
        metrics = {"val/caption_exact": sum(c == t for c, t in zip(captions, prompts)) / n}
        images = None
        if self.hparams.tokenizer_dir is not None:
            settings = SamplingSettings(temperature=self.hparams.sample_temperature, cfg_scale=self.hparams.sample_cfg)
            images = self.unified_model().generate_images(prompts, settings=settings, seed=0).images  # (n, 3, S, S)
            if evaluate.parse_caption(prompts[0]) is not None:  # the shapes data: judge pixels
                metrics["val/t2i_exact"] = evaluate.summarize(evaluate.attribute_scores(prompts, images))["exact"]
        self.log_dict(metrics, rank_zero_only=True)
        self._log_samples(prompts, images, captions)

    def _log_samples(self, prompts: list[str], images: torch.Tensor | None, captions: list[str]) -> None:
        experiment = getattr(self.logger, "experiment", None)
        if not hasattr(experiment, "add_text"):
            return
        from torchvision.utils import make_grid

        k = min(self.hparams.sample_prompts, len(prompts))
        if images is not None:
            grid = make_grid(images[:k].float().cpu(), nrow=k, padding=1)
            experiment.add_image("val/samples", grid, self.global_step)
        table = "| # (grid column) | prompt = true caption of val image # | model's caption of val image # |\n|---|---|---|\n"
        table += "".join(f"| {p} | {i} | {c} |\n" for i, (p, c) in enumerate(zip(prompts[:k], captions[:k])))
        experiment.add_text("val/samples", table, self.global_step)

    def unified_model(self):
        """This transformer with its vocabulary and tokenizer (loaded on first use) as a `UnifiedModel`."""
        from onetok.ar_model.unified import UnifiedModel
        from onetok.tokenizers import Tokenizer

        if self._tokenizer is None:  # object.__setattr__: kept out of the sub-modules and the state dict
            object.__setattr__(self, "_tokenizer", Tokenizer.from_pretrained(self.hparams.tokenizer_dir))
        self._tokenizer.to(self.device)
        return UnifiedModel(self.transformer, self.vocab, self._tokenizer)

    # ---- checkpoints and optimizers --------------------------------------------------------------------------------

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["onetok_system"] = "ar"

    def configure_optimizers(self):
        decay, no_decay = [], []
        for name, p in self.transformer.named_parameters():
            if not p.requires_grad:
                continue
            (decay if p.ndim >= 2 and "tok_embeddings" not in name else no_decay).append(p)
        groups = [{"params": decay, "weight_decay": self.hparams.weight_decay},
                  {"params": no_decay, "weight_decay": 0.0}]
        optimizer = torch.optim.AdamW(groups, lr=self.hparams.lr, betas=tuple(self.hparams.betas))
        total = int(self.trainer.estimated_stepping_batches)
        schedule = WarmupCosine(self.hparams.warmup_steps, total, self.hparams.min_lr_ratio)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


# --------------------------------------------------------------------------------------------------------------------
# Export: checkpoint -> unified model directory
# --------------------------------------------------------------------------------------------------------------------


def export_checkpoint(ckpt: dict, out_dir: str | os.PathLike, force: bool = False) -> Path:
    """Write the unified model directory (weights, vocab, a copy of the tokenizer) from a loaded `.ckpt` dict."""
    from onetok.ar_model.unified import UnifiedModel
    from onetok.fileio import UserError
    from onetok.tokenizers import Tokenizer

    hp = ckpt.get("hyper_parameters", {})
    if ckpt.get("onetok_system") != "ar" or hp.get("vocab") is None:
        raise UserError("checkpoint: not an AR model checkpoint (no onetok_system 'ar' or no vocabulary)")
    tokenizer_dir = hp.get("tokenizer_dir")
    if tokenizer_dir is None or not (Path(tokenizer_dir) / "config.json").is_file():
        raise UserError(f"checkpoint: its tokenizer directory {tokenizer_dir} is missing")
    vocab = Vocab.from_dict(hp["vocab"])
    transformer = Transformer(build_config(hp.get("preset", "shapes"), vocab, hp.get("model_overrides")))
    prefix = "transformer."
    state = {k[len(prefix):]: v.float() for k, v in ckpt["state_dict"].items() if k.startswith(prefix)}
    transformer.load_state_dict(state)
    tokenizer = Tokenizer.from_pretrained(tokenizer_dir)
    expected = hp.get("tokenizer_fingerprint")
    if expected is not None:
        if tokenizer_fingerprint(tokenizer_dir) != expected:
            raise UserError(f"{tokenizer_dir}: this tokenizer changed since the model was trained on its codes")
    return UnifiedModel(transformer, vocab, tokenizer).save_pretrained(out_dir, force=force)

