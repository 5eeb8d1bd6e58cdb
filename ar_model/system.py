"""ARSystem: trains the unified transformer on text->image and image->text rows (see `onetok.ar_model.data`).

The transformer is built once the vocabulary is known: from the `vocab` init argument (a checkpoint being loaded)
or from the data module (`ARDataModule.vocab`), with `model_config` (stored in every checkpoint) or else a size
preset plus overrides. The tokenizer is named by its fingerprint (`onetok.tokenizers.registry.fingerprint`), taken from
the data; its directory (`tokenizer_dir`, else the data's, else the registry `onetok.tokenizers.registry`) is used
to encode streamed images on the training device, to draw images at validation, and by `export_checkpoint`.

A checkpoint carries everything a run on another machine needs: `ckpt["onetok_ar"]` = the model config, the
vocabulary and the tokenizer's fingerprint. Resuming refuses a checkpoint of another model config or tokenizer.

    onetok-train fit --config configs/ar/shapes.yaml
    onetok export runs/ar/.../last.ckpt --out models/unified [--tokenizer DIR]
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_warn

from onetok.ar_model.generate import DEFAULT_SETTINGS, SamplingSettings
from onetok.ar_model.model import ARConfig, Transformer, config_from_preset
from onetok.ar_model.sequence import I2T, IGNORE, T2I, fill_image_codes
from onetok.ar_model.vocab import Vocab
from onetok.data.pixels import to_float
from onetok.distributed import check_strategy
from onetok.optim import adamw_warmup_cosine

SYSTEM_NAME = "ar"
TASKS = (("loss", None), ("t2i", T2I), ("i2t", I2T))  # validation metric name, task (None = all rows)


def build_config(preset: str, vocab: Vocab, overrides: dict[str, Any] | None,
                 model_config: dict[str, Any] | None = None) -> ARConfig:
    """The stored `model_config` when there is one, else the preset with `overrides`."""
    if model_config is not None:
        config = ARConfig(**model_config)
        if config.vocab_size != vocab.size:
            raise ValueError(f"model_config vocab_size {config.vocab_size} != vocabulary size {vocab.size}")
        return config
    return config_from_preset(preset, vocab.size, **(overrides or {}))


class _Detached:
    """Holds a module outside its owner's sub-modules: not in the state dict, not moved by `.to()`, not in DDP."""

    def __init__(self, module: torch.nn.Module | None = None):
        self.module = module


def run_sampling_settings(hparams: dict) -> SamplingSettings:
    """A run's sampling settings, from its hyperparameters (`sample_temperature`, `sample_cfg`, `sample_top_k`;
    absent: the library defaults): its validation samples use them, and its exported model recommends them."""
    return SamplingSettings(temperature=hparams.get("sample_temperature", DEFAULT_SETTINGS.temperature),
                            cfg_scale=hparams.get("sample_cfg", DEFAULT_SETTINGS.cfg_scale),
                            top_k=hparams.get("sample_top_k", DEFAULT_SETTINGS.top_k))


class ARSystem(pl.LightningModule):
    """Next-token cross-entropy on the loss-masked rows of `ARDataModule`; AdamW + warm-up/cosine."""

    def __init__(
        self,
        preset: str = "shapes",
        model_overrides: dict[str, Any] | None = None,
        tokenizer_dir: str | None = None,
        vocab: dict | None = None,
        model_config: dict[str, Any] | None = None,
        lr: float = 3e-3,
        min_lr_ratio: float = 0.1,
        warmup_steps: int = 100,
        weight_decay: float = 0.1,
        betas: tuple[float, float] = (0.9, 0.95),
        sample_prompts: int = 8,
        eval_samples: int = 64,
        sample_cfg: float = DEFAULT_SETTINGS.cfg_scale,
        sample_temperature: float = DEFAULT_SETTINGS.temperature,
        sample_top_k: int | None = DEFAULT_SETTINGS.top_k,
        i2t_weight: float = 1.0,
    ):
        """`i2t_weight` weighs each image -> text loss token against a text -> image one (a caption has a few tokens,
        an image many: > 1 keeps captioning from being drowned out)."""
        if i2t_weight <= 0:
            raise ValueError(f"i2t_weight must be > 0, got {i2t_weight}")
        super().__init__()
        self.save_hyperparameters()
        self.transformer: Transformer | None = None
        self.tokenizer_fingerprint: str | None = None  # from the data module (setup) or the checkpoint
        self.tokenizer_path: str | None = None  # the tokenizer's directory on this machine (resolved by fingerprint)
        self._tokenizer = _Detached()  # loaded on first use
        self._val_sums: torch.Tensor | None = None
        if vocab is not None:
            self._build(Vocab.from_dict(vocab))

    def _build(self, vocab: Vocab) -> None:
        self.vocab = vocab
        self.config = build_config(self.hparams.preset, vocab, self.hparams.model_overrides, self.hparams.model_config)
        self.hparams.model_config = dataclasses.asdict(self.config)
        self.transformer = Transformer(self.config)

    def setup(self, stage: str) -> None:
        """Take the vocabulary and the tokenizer from the data module when they were not given."""
        check_strategy(self.trainer, "ARSystem")
        datamodule = getattr(self.trainer, "datamodule", None)
        if self.transformer is None:
            if datamodule is None or not hasattr(datamodule, "vocab"):
                raise ValueError("ARSystem needs `vocab` or a data module with a `vocab` (ARDataModule)")
            self.hparams.vocab = datamodule.vocab.to_dict()
            self._build(datamodule.vocab)
        elif datamodule is not None and hasattr(datamodule, "vocab") and datamodule.vocab != self.vocab:
            raise ValueError(f"the data's vocabulary {datamodule.vocab} differs from the model's {self.vocab}")
        if datamodule is not None and hasattr(datamodule, "tokenizer_fingerprint"):
            self.tokenizer_fingerprint = datamodule.tokenizer_fingerprint
            self._resolve_tokenizer(datamodule.tokenizer_dir)

    def _resolve_tokenizer(self, data_tokenizer: str | None) -> None:
        """`tokenizer_dir` when it exists (it must match the data's fingerprint), else the data module's directory
        or the registry; a missing tokenizer only turns off sampling at validation."""
        from onetok.tokenizers.registry import is_tokenizer_dir, resolve_tokenizer

        given = self.hparams.tokenizer_dir
        if given is not None and not is_tokenizer_dir(given):  # e.g. a path recorded on another machine
            rank_zero_warn(f"tokenizer_dir {given} not found; looking for tokenizer {self.tokenizer_fingerprint[:12]}")
            given = None
        try:
            found = resolve_tokenizer(self.tokenizer_fingerprint, given, data_tokenizer)
        except FileNotFoundError:
            rank_zero_warn(f"tokenizer {self.tokenizer_fingerprint[:12]} not found: no sampled images at validation "
                           "(export finds it later by fingerprint, or takes --tokenizer DIR)")
            found = None
        self.tokenizer_path = str(found) if found is not None else None

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.transformer(ids)  # (B, T, V)

    # ---- streamed images: codes on this device ---------------------------------------------------------------------

    def tokenizer(self):
        """The image tokenizer on this module's device (loaded on first use; never trained or saved here)."""
        from onetok.tokenizers import Tokenizer

        if self._tokenizer.module is None:
            path = self.tokenizer_path or self.hparams.tokenizer_dir
            if path is None:
                raise ValueError("ARSystem: no tokenizer directory (needed to encode images and draw samples)")
            self._tokenizer.module = Tokenizer.from_pretrained(path).requires_grad_(False)
        return self._tokenizer.module.to(self.device)

    def on_after_batch_transfer(self, batch: dict, dataloader_idx: int) -> dict:
        """Rows streamed from image shards: encode their images here, on the training device, and fill in the codes."""
        if "image" in batch:
            with torch.no_grad():
                codes = self.tokenizer().encode(to_float(batch.pop("image")))  # (B, L)
            fill_image_codes(batch, codes, self.vocab)
        return batch

    # ---- training and validation -----------------------------------------------------------------------------------

    def _token_losses(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Cross-entropy per position (B, T) and the loss mask (B, T) as floats."""
        logits = self.transformer(batch["ids"])  # (B, T, V)
        targets = batch["targets"]
        per_token = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=IGNORE,
                                    reduction="none").view_as(targets)  # (B, T)
        return per_token, (targets != IGNORE).float()

    def _loss_sums(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """(len(TASKS), 2) float64: summed loss and loss-token count over all rows and over each task's rows."""
        per_token, counted = self._token_losses(batch)
        rows = [torch.ones_like(batch["task"], dtype=torch.bool) if task is None else batch["task"] == task
                for _, task in TASKS]
        return torch.stack([torch.stack([per_token[r].sum(), counted[r].sum()]) for r in rows]).double()

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        per_token, counted = self._token_losses(batch)
        B = batch["ids"].shape[0]
        weights = torch.where(batch["task"] == I2T, self.hparams.get("i2t_weight", 1.0), 1.0)[:, None] * counted  # (B, T)
        loss = (per_token * weights).sum() / weights.sum().clamp(min=1)
        self.log("train/loss", loss, prog_bar=True, batch_size=B)
        for name, task in TASKS[1:]:
            rows = batch["task"] == task
            if rows.any():
                self.log(f"train/{name}", per_token[rows].sum() / counted[rows].sum().clamp(min=1), batch_size=B)
        self.log("train/lr", self.optimizers().param_groups[0]["lr"], batch_size=B)
        return loss

    def on_validation_epoch_start(self) -> None:
        self._val_sums = torch.zeros(len(TASKS), 2, dtype=torch.float64, device=self.device)

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._val_sums += self._loss_sums(batch)

    def on_validation_epoch_end(self) -> None:
        """Token-weighted losses per task over the whole val set (summed over ranks: the same on any rank count).
        Sampled images and captions are the `SampleLogger` callback's (`configure_callbacks`)."""
        totals = self.trainer.strategy.reduce(self._val_sums, reduce_op="sum")
        metrics = {f"val/{name}": (totals[i, 0] / totals[i, 1]).float()
                   for i, (name, _) in enumerate(TASKS) if totals[i, 1] > 0}
        self.log_dict(metrics, prog_bar=False, sync_dist=True)

    def configure_callbacks(self) -> list[pl.Callback]:
        """A `SampleLogger` over `eval_samples` val items with a grid of `sample_prompts` (none when `eval_samples`
        is 0 or the trainer already has one, e.g. from the config's `trainer.callbacks`)."""
        from onetok.ar_model.callbacks import SampleLogger

        trainer = getattr(self, "_trainer", None)
        present = trainer is not None and any(isinstance(c, SampleLogger) for c in trainer.callbacks)
        if self.hparams.eval_samples < 1 or present:
            return []
        return [SampleLogger(self.hparams.eval_samples, self.hparams.sample_prompts)]

    def unified_model(self):
        """This transformer with its vocabulary and tokenizer as a `UnifiedModel`."""
        from onetok.ar_model.unified import UnifiedModel

        return UnifiedModel(self.transformer, self.vocab, self.tokenizer(), run_sampling_settings(self.hparams))

    # ---- checkpoints and optimizers --------------------------------------------------------------------------------

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["onetok_system"] = SYSTEM_NAME
        checkpoint["onetok_ar"] = {"model_config": dataclasses.asdict(self.config), "vocab": self.vocab.to_dict(),
                                   "tokenizer_fingerprint": self.tokenizer_fingerprint,
                                   "tokenizer_path": self.tokenizer_path}  # a hint: valid on this machine only

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Refuse to resume a checkpoint of another model or trained on another tokenizer's codes."""
        stored = checkpoint.get("onetok_ar")
        if stored is None or self.transformer is None:
            return
        if self.tokenizer_fingerprint is None:  # loaded outside a run (load_from_checkpoint)
            self.tokenizer_fingerprint = stored.get("tokenizer_fingerprint")
            self.tokenizer_path = self.tokenizer_path or stored.get("tokenizer_path")
        if stored["model_config"] != dataclasses.asdict(self.config):
            diff = {k: (v, getattr(self.config, k)) for k, v in stored["model_config"].items()
                    if getattr(self.config, k, None) != v}
            raise ValueError(f"checkpoint: its model config differs from this run's (checkpoint vs run: {diff})")
        fingerprint = stored.get("tokenizer_fingerprint")
        if fingerprint and self.tokenizer_fingerprint and fingerprint != self.tokenizer_fingerprint:
            raise ValueError(f"checkpoint: trained on the codes of tokenizer {fingerprint[:12]}, but this run's data "
                             f"come from tokenizer {self.tokenizer_fingerprint[:12]}")

    def configure_optimizers(self):
        hp = self.hparams  # no weight decay on the token embeddings (nor on biases and norms)
        return adamw_warmup_cosine(self.transformer, hp.lr, hp.weight_decay, hp.betas, hp.warmup_steps,
                                   int(self.trainer.estimated_stepping_batches), hp.min_lr_ratio,
                                   exempt=("tok_embeddings",))


# --------------------------------------------------------------------------------------------------------------------
# Export: checkpoint -> unified model directory
# --------------------------------------------------------------------------------------------------------------------


def checkpoint_contents(ckpt: dict) -> tuple[ARConfig, Vocab, str | None, str | None]:
    """(model config, vocabulary, tokenizer fingerprint, recorded tokenizer path) of an AR `.ckpt` dict."""
    hp = ckpt.get("hyper_parameters", {})
    stored = ckpt.get("onetok_ar") or {}
    vocab_dict = stored.get("vocab") or hp.get("vocab")
    if ckpt.get("onetok_system") != SYSTEM_NAME or vocab_dict is None:
        raise ValueError("not an AR model checkpoint (no onetok_system 'ar' or no vocabulary)")
    vocab = Vocab.from_dict(vocab_dict)
    config = build_config(hp.get("preset", "shapes"), vocab, hp.get("model_overrides"),
                          stored.get("model_config") or hp.get("model_config"))
    fingerprint = stored.get("tokenizer_fingerprint") or hp.get("tokenizer_fingerprint")  # older checkpoints: hparams
    return config, vocab, fingerprint, stored.get("tokenizer_path") or hp.get("tokenizer_dir")


def export_checkpoint(ckpt: dict, out_dir: str | os.PathLike, force: bool = False, inputs=(),
                      tokenizer: str | os.PathLike | None = None, sampling: dict | None = None) -> Path:
    """Write the unified model directory (weights, vocab, a copy of the tokenizer) from a loaded `.ckpt` dict, under
    the exporter contract (`onetok.export.export_folder`).

    The tokenizer is `tokenizer` when given (it must have the checkpoint's fingerprint), else the recorded directory
    or one in the registry with that fingerprint. `sampling` replaces some of the run's recommended sampling
    settings (`SamplingSettings` fields, e.g. chosen by a sweep after training)."""
    from onetok.ar_model.unified import UnifiedModel
    from onetok.tokenizers import Tokenizer
    from onetok.tokenizers.registry import is_tokenizer_dir, resolve_tokenizer

    config, vocab, fingerprint, recorded = checkpoint_contents(ckpt)
    if fingerprint is None:  # a checkpoint from before fingerprints: only its recorded directory can be used
        tokenizer = tokenizer or recorded
        if tokenizer is None or not is_tokenizer_dir(tokenizer):
            raise FileNotFoundError(f"its tokenizer directory {tokenizer} is missing")
        tokenizer_dir = Path(tokenizer)
    else:
        tokenizer_dir = resolve_tokenizer(fingerprint, tokenizer, recorded)
    transformer = Transformer(config)
    prefix = "transformer."
    state = {k[len(prefix):]: v.float() for k, v in ckpt["state_dict"].items() if k.startswith(prefix)}
    transformer.load_state_dict(state)
    settings = run_sampling_settings(ckpt.get("hyper_parameters", {}))  # the model's recommended ones
    settings = dataclasses.replace(settings, **(sampling or {}))
    model = UnifiedModel(transformer, vocab, Tokenizer.from_pretrained(tokenizer_dir), settings)
    return model.save_pretrained(out_dir, force, inputs)
