"""TokenizerSystem: the LightningModule that trains a `Tokenizer` (optimizer, schedule, EMA, losses, logging),
and `export_checkpoint`, which turns its `.ckpt` into an inference directory.

Every schedule counts batches: `warmup_steps`, `gan_start`, and Lightning's `max_steps`, `every_n_train_steps` and
`val_check_interval` (the discriminator's optimizer steps through the strategy without advancing Lightning's step
counter, so `global_step` is the number of batches with or without the GAN).

    onetok-train fit --config configs/tokenizer/shapes.yaml
    onetok export runs/.../last.ckpt --out models/tokenizer
"""

from __future__ import annotations

import copy
from pathlib import Path

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_warn

from onetok.distributed import check_strategy
from onetok.metrics import psnr
from onetok.optim import adamw_warmup_cosine
from onetok.tokenizers.codebook_stats import codebook_health, position_code_counts, token_counts
from onetok.tokenizers.losses import TokenizerLoss
from onetok.tokenizers.model import Tokenizer, TokenizerConfig
from onetok.tokenizers.model import preset as preset_config

SYSTEM_NAME = "tokenizer"
# learned tokens, position tables, the stand-in for dropped codes and the VQ codebook take no weight decay (nor do
# biases and norms, being 1-D): decay would pull them towards zero, away from the vectors the encoder emits
NO_DECAY = ("token", "pos", "drop_code", "codebook")


def resolve_config(preset: str | None, config: dict | TokenizerConfig | None) -> TokenizerConfig:
    """A preset with `config` fields replaced, or `config` alone when no preset is named."""
    if isinstance(config, TokenizerConfig):
        config = config.to_dict()
    config = dict(config or {})
    return preset_config(preset, **config) if preset else TokenizerConfig.from_dict(config)


class TokenizerSystem(pl.LightningModule):
    """Trains a Tokenizer on image batches {"image": (B, 3, S, S) in [0, 1], ...}."""

    def __init__(
        self,
        preset: str | None = "shapes",
        config: dict | None = None,
        lr: float = 1e-3,
        weight_decay: float = 1e-4,
        betas: tuple[float, float] = (0.9, 0.99),
        warmup_steps: int = 100,
        min_lr_ratio: float = 0.05,
        grad_clip: float = 1.0,
        ema_decay: float = 0.0,
        recon_loss: str = "l1",
        recon_weight: float = 1.0,
        quantizer_weight: float = 1.0,
        perceptual_weight: float = 0.0,
        perceptual_net: str | None = None,
        gan_weight: float = 0.0,
        gan_start: int = 0,
        disc_lr: float | None = None,
        grid_images: int = 8,
        matmul_precision: str | None = "high",
        init_from: str | None = None,
        train_decoder_only: bool = False,
    ):
        """`preset` names a size in `onetok.tokenizers.model.PRESETS`; `config` replaces some of its fields (or, with
        preset=None, is the whole TokenizerConfig). `perceptual_net` is a local TorchScript feature network file.
        `init_from`: a tokenizer folder whose weights start the run (a decoder part whose shape changed starts fresh);
        `train_decoder_only`: the encoder and quantizer stay frozen (eval mode, so every image keeps its ids) and
        only the decoder learns: a sharper decoder for ids a unified model was already trained on."""
        super().__init__()
        if isinstance(config, TokenizerConfig):
            config = config.to_dict()
        # every argument is a plain type, so the .ckpt loads with torch.load(weights_only=True) and resuming through
        # the CLI (which re-reads these hyper-parameters) works; the resolved config is also stored by itself
        self.save_hyperparameters()
        cfg = resolve_config(preset, config)
        self.automatic_optimization = False  # the optional GAN alternates two optimizers
        self.model = Tokenizer(cfg)
        if init_from is not None:
            load_start_weights(self.model, init_from)
        self.train_decoder_only = train_decoder_only
        if train_decoder_only:
            frozen_parts(self.model).requires_grad_(False)
        self.ema = copy.deepcopy(self.model).requires_grad_(False) if ema_decay > 0 else None
        feature_net = torch.jit.load(perceptual_net, map_location="cpu") if perceptual_net else None
        self.loss = TokenizerLoss(recon_loss, recon_weight, quantizer_weight, perceptual_weight, feature_net,
                                  gan_weight, gan_start)
        self.lr, self.weight_decay, self.betas = lr, weight_decay, tuple(betas)
        self.warmup_steps, self.min_lr_ratio, self.grad_clip = warmup_steps, min_lr_ratio, grad_clip
        self.ema_decay, self.disc_lr, self.grid_images = ema_decay, disc_lr, grid_images
        self.matmul_precision = matmul_precision
        self._val: dict[str, torch.Tensor] = {}

    @property
    def eval_model(self) -> Tokenizer:
        """The weights to evaluate and export: the EMA copy when there is one."""
        return self.ema if self.ema is not None else self.model

    def forward(self, images: torch.Tensor, keep: torch.Tensor | int | None = None):
        return self.model(images, keep)

    # ---- training ---------------------------------------------------------------------------------------------------

    def train(self, mode: bool = True):
        super().train(mode)
        if self.train_decoder_only:  # frozen statistics too (the latent BatchNorm): the ids must not move
            frozen_parts(self.model).eval()
        return self

    def setup(self, stage: str) -> None:
        check_strategy(self.trainer, "TokenizerSystem")

    def on_fit_start(self) -> None:
        if self.matmul_precision:
            torch.set_float32_matmul_precision(self.matmul_precision)
        self._check_gan_start()

    def _check_gan_start(self) -> None:
        """Warn when the GAN would never run: `gan_start` at or past the run's last batch."""
        if self.loss.discriminator is None:
            return
        total = int(self.trainer.estimated_stepping_batches)
        if self.loss.gan_start >= total:
            rank_zero_warn(f"gan_start {self.loss.gan_start} >= the run's {total} batches: the GAN never runs "
                           "(every schedule counts batches)")

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        images = batch["image"]
        optimizers = self.optimizers()
        opt_g, opt_d = optimizers if isinstance(optimizers, list) else (optimizers, None)
        step = self.global_step  # = batches (see the module docstring)
        out = self.model(images)
        last_layer = self.model.decoder.head.last_layer_weight()
        gen = self.loss.generator_loss(out.reconstruction, images, out.quantizer.loss, step, last_layer)
        opt_g.zero_grad(set_to_none=True)
        self.manual_backward(gen.total)
        self.clip_gradients(opt_g, gradient_clip_val=self.grad_clip or None, gradient_clip_algorithm="norm")
        opt_g.step()
        self.lr_schedulers().step()
        if opt_d is not None and self.loss.gan_active(step):
            opt_d.zero_grad(set_to_none=True)
            disc = self.loss.discriminator_loss(out.reconstruction, images)
            self.manual_backward(disc.total)
            self.log_dict({f"train/{k}": v for k, v in disc.parts.items()})
            # through the strategy (precision, DDP) but not `opt_d.step()`, which would count a second global step
            self.trainer.strategy.optimizer_step(opt_d.optimizer, closure=_no_closure)
        self._update_ema()
        with torch.no_grad():
            full = out.keep == self.model.num_latent_tokens
            train_psnr = psnr(out.reconstruction[full], images[full]).mean() if full.any() else None
        self.log_dict({f"train/{k}": v.detach() for k, v in gen.parts.items()})
        self.log("train/loss", gen.total.detach(), prog_bar=True)
        if train_psnr is not None:
            self.log("train/psnr_full", train_psnr, prog_bar=True)
        self.log("train/lr", opt_g.param_groups[0]["lr"])
        return gen.total.detach()

    @torch.no_grad()
    def _update_ema(self) -> None:
        if self.ema is None:
            return
        ema_params, params = list(self.ema.parameters()), list(self.model.parameters())
        torch._foreach_lerp_(ema_params, params, 1 - self.ema_decay)
        for ema_buf, buf in zip(self.ema.buffers(), self.model.buffers()):
            ema_buf.copy_(buf)

    # ---- validation -------------------------------------------------------------------------------------------------

    def on_validation_epoch_start(self) -> None:
        L = self.model.num_latent_tokens
        self._val = {
            "psnr_sum": torch.zeros(len(token_counts(L)), device=self.device, dtype=torch.float64),
            "images": torch.zeros((), device=self.device, dtype=torch.float64),
            "position_counts": torch.zeros(L, self.model.codebook_size, device=self.device, dtype=torch.float64),
        }

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        images = batch["image"]
        model = self.eval_model
        quant = model.quantizer(model.encoder(images))
        reconstructions = []
        for i, k in enumerate(token_counts(model.num_latent_tokens)):
            keep = torch.full((images.shape[0],), k, device=images.device, dtype=torch.long)
            rec = model.decoder(quant.quantized, keep).float().clamp(0, 1)
            self._val["psnr_sum"][i] += psnr(rec, images).double().sum()
            reconstructions.append(rec)
        self._val["images"] += images.shape[0]
        self._val["position_counts"] += position_code_counts(quant.indices, model.codebook_size).double()
        if batch_idx == 0 and self.grid_images > 0:
            self._log_grid(images, reconstructions)

    def on_validation_epoch_end(self) -> None:
        # sums over ranks: every number below is the one a single process gets on the same images
        totals = {k: self.trainer.strategy.reduce(v, reduce_op="sum") for k, v in self._val.items()}
        n = totals["images"].clamp(min=1)
        ks = token_counts(self.model.num_latent_tokens)
        metrics = {f"val/psnr@{k}": totals["psnr_sum"][i] / n for i, k in enumerate(ks)}
        metrics["val/psnr"] = metrics[f"val/psnr@{self.model.num_latent_tokens}"]
        health = codebook_health(totals["position_counts"].cpu())
        metrics.update({"val/codebook_usage": health.usage, "val/perplexity": health.perplexity,
                        "val/dead_codes": health.dead_codes, "val/bits_per_token": health.bits_per_token})
        metrics.update({f"val/bits@{k}": health.prefix_bits(k) for k in ks})  # per-position entropy-coded size
        self.log_dict({k: torch.as_tensor(v, dtype=torch.float32) for k, v in metrics.items()}, sync_dist=False)

    def _log_grid(self, images: torch.Tensor, reconstructions: list[torch.Tensor]) -> None:
        """Rows: the originals, then reconstructions from 1, 2, 4, ..., L tokens."""
        experiment = getattr(self.logger, "experiment", None)
        if self.global_rank != 0 or not hasattr(experiment, "add_image"):
            return
        from torchvision.utils import make_grid

        n = min(self.grid_images, images.shape[0])
        rows = torch.cat([images[:n].float()] + [r[:n] for r in reconstructions])  # ((1 + len(ks)) * n, 3, S, S)
        experiment.add_image("val/reconstructions", make_grid(rows.cpu(), nrow=n, padding=1), self.global_step)

    # ---- optimizers and checkpoints ---------------------------------------------------------------------------------

    def configure_optimizers(self):
        total = int(self.trainer.estimated_stepping_batches) if self._trainer else 1  # batches
        generator = adamw_warmup_cosine(self.model, self.lr, self.weight_decay, self.betas, self.warmup_steps, total,
                                        self.min_lr_ratio, exempt=NO_DECAY)
        if self.loss.discriminator is None:
            return generator
        opt_d = torch.optim.AdamW(self.loss.discriminator.parameters(), lr=self.disc_lr or self.lr,
                                  betas=self.betas, weight_decay=self.weight_decay)
        return [generator["optimizer"], opt_d], [generator["lr_scheduler"]]

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["onetok_system"] = SYSTEM_NAME
        checkpoint["tokenizer_config"] = self.model.config.to_dict()


def _no_closure() -> None:
    """The discriminator's loss is already backpropagated (manual optimization)."""


# --------------------------------------------------------------------------------------------------------------------
# Export
# --------------------------------------------------------------------------------------------------------------------


def tokenizer_from_checkpoint(ckpt: dict) -> Tokenizer:
    """Rebuild the Tokenizer from a TokenizerSystem checkpoint dict, preferring the EMA weights."""
    if "tokenizer_config" not in ckpt or "state_dict" not in ckpt:
        raise ValueError("not a tokenizer training checkpoint (no tokenizer_config or state_dict)")
    cfg = TokenizerConfig.from_dict(ckpt["tokenizer_config"])
    state = ckpt["state_dict"]
    prefix = "ema." if any(k.startswith("ema.") for k in state) else "model."
    weights = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    model = Tokenizer(cfg)
    model.load_state_dict(weights)
    return model.eval()


def export_checkpoint(ckpt: dict, out_dir: str | Path, force: bool = False, inputs=()) -> Path:
    """The inference folder (config.json + model.safetensors, with what it was trained on) of a tokenizer `.ckpt`
    dict, under the exporter contract (`onetok.export.export_folder`)."""
    from onetok.export import export_folder
    from onetok.tokenizers import domain

    tokenizer = tokenizer_from_checkpoint(ckpt)

    def write(folder: Path) -> None:
        tokenizer.save_pretrained(folder)
        domain.record_trained_on(folder, domain.describe_training(ckpt))  # for `compress`'s far-off-input note

    return export_folder(out_dir, write, force, inputs)


def frozen_parts(model: Tokenizer) -> torch.nn.ModuleList:
    """What `train_decoder_only` freezes: everything that decides an image's ids."""
    return torch.nn.ModuleList([model.encoder, model.quantizer])


def load_start_weights(model: Tokenizer, folder: str) -> None:
    """Copy a tokenizer folder's weights into `model`; only decoder tensors may be missing or change shape (they
    keep their fresh initialisation), so the ids of the start tokenizer are kept."""
    state = Tokenizer.from_pretrained(folder).state_dict()
    own = model.state_dict()
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    fresh = [k for k in own if k not in usable]
    if any(not k.startswith("decoder.") for k in fresh):
        raise ValueError(f"{folder}: its encoder or quantizer does not match this config "
                         f"({', '.join(k for k in fresh if not k.startswith('decoder.'))[:200]})")
    model.load_state_dict(usable, strict=False)
