"""Training the post-filter of a tiled tokenizer (`onetok.tokenizers.codec.postfilter.PostFilter`): the tokenizer is frozen,
crops of several tiles are coded with a random token count per tile (as the adaptive rate control does), decoded,
put side by side and rounded to 8 bits exactly as the codec does, and the filter learns to bring them back towards
the original pixels -- above all across the seams between tiles.

    onetok-train fit --config configs/tokenizer/photo_postfilter.yaml
    onetok export <run>/checkpoints/last.ckpt --out models/photo      # the tokenizer with its post-filter
"""

from __future__ import annotations

from pathlib import Path

import lightning
import torch
import torch.nn.functional as F
from einops import rearrange

from onetok.data.pixels import as_saved
from onetok.metrics import psnr
from onetok.optim import adamw_warmup_cosine
from onetok.tokenizers.model import Tokenizer, TokenizerConfig

SYSTEM_NAME = "postfilter"


class PostFilterSystem(lightning.LightningModule):
    """Trains a post-filter for the frozen tokenizer in `tokenizer` (a folder) on image crops of whole tiles."""

    def __init__(self, tokenizer: str, channels: int = 16, layers: int = 3, lr: float = 2e-3,
                 weight_decay: float = 0.0, warmup_steps: int = 100, min_lr_ratio: float = 0.05):
        super().__init__()
        self.save_hyperparameters()
        self.model = Tokenizer.from_pretrained(tokenizer).eval().requires_grad_(False)
        self.model.add_postfilter(channels, layers).requires_grad_(True)

    def coded(self, images: torch.Tensor) -> torch.Tensor:
        """Crops (B, 3, rT, qT) -> the same after tiling, coding each tile with a random 1..L tokens, decoding and
        rounding to 8 bits."""
        T, L = self.model.image_size, self.model.num_latent_tokens
        rows, cols = images.shape[2] // T, images.shape[3] // T
        with torch.no_grad():
            tiles = rearrange(images, "b c (r t1) (q t2) -> (b r q) c t1 t2", t1=T, t2=T)  # (B r q, 3, T, T)
            self.model.eval()
            quant = self.model.quantizer(self.model.encoder(tiles))
            keep = torch.randint(1, L + 1, (tiles.shape[0],), device=tiles.device)
            decoded = self.model.decoder(quant.quantized, keep).float().clamp(0, 1)
            decoded = as_saved(decoded)  # what the codec's uint8 canvas holds
        return rearrange(decoded, "(b r q) c t1 t2 -> b c (r t1) (q t2)", r=rows, q=cols)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        images = batch["image"]
        coded = self.coded(images)
        out = self.model.postfilter(coded)
        loss = F.mse_loss(out, images)
        self.log("train/loss", loss, prog_bar=True)
        with torch.no_grad():
            self.log("train/psnr_gain", (psnr(out, images) - psnr(coded, images)).mean(), prog_bar=True)
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        images = batch["image"]
        coded = self.coded(images)
        out = self.model.postfilter(coded).clamp(0, 1)
        self.log_dict({"val/psnr_coded": psnr(coded, images).mean(), "val/psnr_filtered": psnr(out, images).mean()},
                      sync_dist=True, batch_size=len(images))

    def configure_optimizers(self):
        total = int(self.trainer.estimated_stepping_batches) if self._trainer else 1
        return adamw_warmup_cosine(self.model.postfilter, self.hparams.lr, self.hparams.weight_decay, (0.9, 0.99),
                                   self.hparams.warmup_steps, total, self.hparams.min_lr_ratio)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["onetok_system"] = SYSTEM_NAME
        checkpoint["tokenizer_config"] = self.model.config.to_dict()
        checkpoint["postfilter"] = {"channels": self.hparams.channels, "layers": self.hparams.layers}


def export_checkpoint(ckpt: dict, out_dir: str | Path, force: bool = False, inputs=()) -> Path:
    """The tokenizer with its trained post-filter (config.json + model.safetensors, with what it was trained on) from
    a PostFilterSystem `.ckpt`, under the exporter contract (`onetok.export.export_folder`)."""
    from onetok.export import export_folder
    from onetok.tokenizers import domain

    if "tokenizer_config" not in ckpt or "postfilter" not in ckpt or "state_dict" not in ckpt:
        raise ValueError("not a post-filter training checkpoint (no tokenizer_config, postfilter or state_dict)")
    model = Tokenizer(TokenizerConfig.from_dict(ckpt["tokenizer_config"]))
    model.add_postfilter(**ckpt["postfilter"])
    model.load_state_dict({k[len("model."):]: v for k, v in ckpt["state_dict"].items() if k.startswith("model.")})

    def write(folder: Path) -> None:
        model.save_pretrained(folder)
        domain.record_trained_on(folder, domain.describe_training(ckpt))  # for `compress`'s far-off-input note

    return export_folder(out_dir, write, force, inputs)
