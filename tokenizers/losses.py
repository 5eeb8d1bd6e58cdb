"""Tokenizer training losses: pixel reconstruction, quantizer terms, optional PatchGAN hinge and perceptual loss.

`TokenizerLoss.generator_loss` and `.discriminator_loss` return a `LossBreakdown` (total + named parts).
The PatchGAN is pix2pix's NLayerDiscriminator (arXiv:1611.07004) with the hinge loss and VQGAN's adaptive weight
(arXiv:2012.09841, eq. 7): lambda = ||grad_rec|| / (||grad_gan|| + 1e-4) at the decoder's last layer. The
perceptual loss compares features of a user-supplied local network (no weights are downloaded; off by default).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn


class LossBreakdown(NamedTuple):
    total: torch.Tensor
    parts: dict[str, torch.Tensor]  # named, weighted terms (detached copies are fine for logging)


# --------------------------------------------------------------------------------------------------------------------
# Discriminator
# --------------------------------------------------------------------------------------------------------------------


class PatchDiscriminator(nn.Module):
    """PatchGAN: image (B, 3, H, W) in [0, 1] -> real/fake logits (B, 1, h, w)."""

    def __init__(self, channels: int = 64, layers: int = 3):
        super().__init__()
        blocks: list[nn.Module] = [nn.Conv2d(3, channels, 4, 2, 1), nn.LeakyReLU(0.2)]
        width = channels
        for i in range(1, layers + 1):
            out = channels * min(2**i, 8)
            stride = 2 if i < layers else 1
            blocks += [nn.Conv2d(width, out, 4, stride, 1, bias=False), nn.GroupNorm(1, out), nn.LeakyReLU(0.2)]
            width = out
        blocks.append(nn.Conv2d(width, 1, 4, 1, 1))
        self.net = nn.Sequential(*blocks)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images * 2 - 1)


# --------------------------------------------------------------------------------------------------------------------
# The loss
# --------------------------------------------------------------------------------------------------------------------


class TokenizerLoss(nn.Module):
    """reconstruction (L1 or L2) + quantizer loss [+ perceptual] [+ adaptive-weighted hinge GAN after gan_start]."""

    def __init__(
        self,
        recon: str = "l1",
        recon_weight: float = 1.0,
        quantizer_weight: float = 1.0,
        perceptual_weight: float = 0.0,
        perceptual_net: nn.Module | None = None,
        gan_weight: float = 0.0,
        gan_start: int = 0,
        disc_channels: int = 64,
        disc_layers: int = 3,
    ):
        super().__init__()
        if recon not in ("l1", "l2"):
            raise ValueError(f"recon must be l1 or l2, not {recon!r}")
        if perceptual_weight > 0 and perceptual_net is None:
            raise ValueError("perceptual_weight > 0 needs a perceptual_net (a local feature network)")
        self.recon, self.recon_weight, self.quantizer_weight = recon, recon_weight, quantizer_weight
        self.perceptual_weight, self.gan_weight, self.gan_start = perceptual_weight, gan_weight, gan_start
        self.perceptual_net = perceptual_net
        if perceptual_net is not None:
            perceptual_net.requires_grad_(False).eval()
        self.discriminator = PatchDiscriminator(disc_channels, disc_layers) if gan_weight > 0 else None

    def gan_active(self, step: int) -> bool:
        return self.discriminator is not None and step >= self.gan_start

    def reconstruction_loss(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.recon == "l1":
            return F.l1_loss(pred.float(), target.float())
        return F.mse_loss(pred.float(), target.float())

    def perceptual_loss(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        feats_pred, feats_target = _as_list(self.perceptual_net(pred)), _as_list(self.perceptual_net(target))
        return sum(F.mse_loss(a.float(), b.float().detach()) for a, b in zip(feats_pred, feats_target))

    def generator_loss(
        self, pred: torch.Tensor, target: torch.Tensor, quantizer_loss: torch.Tensor, step: int,
        last_layer: torch.Tensor | None = None,
    ) -> LossBreakdown:
        """pred/target (B, 3, H, W) on the [0, 1] scale; `last_layer` is the decoder's final weight (adaptive GAN)."""
        parts = {"recon": self.recon_weight * self.reconstruction_loss(pred, target),
                 "quantizer": self.quantizer_weight * quantizer_loss}
        if self.perceptual_weight > 0:
            parts["perceptual"] = self.perceptual_weight * self.perceptual_loss(pred, target)
        if self.gan_active(step):
            self.discriminator.requires_grad_(False)
            g_loss = -self.discriminator(pred).float().mean()
            self.discriminator.requires_grad_(True)
            weight = self.adaptive_weight(parts["recon"] + parts.get("perceptual", 0.0), g_loss, last_layer)
            parts["gan"] = self.gan_weight * weight * g_loss
            parts["gan_adaptive_weight"] = weight.detach()
        total = sum(v for k, v in parts.items() if k != "gan_adaptive_weight")
        return LossBreakdown(total, parts)

    def adaptive_weight(
        self, rec_loss: torch.Tensor, g_loss: torch.Tensor, last_layer: torch.Tensor | None
    ) -> torch.Tensor:
        if last_layer is None or not torch.is_grad_enabled():
            return g_loss.new_ones(())
        rec_grad = torch.autograd.grad(rec_loss, last_layer, retain_graph=True)[0]
        gan_grad = torch.autograd.grad(g_loss, last_layer, retain_graph=True)[0]
        return (rec_grad.norm() / (gan_grad.norm() + 1e-4)).clamp(0, 1e4).detach()

    def discriminator_loss(self, pred: torch.Tensor, target: torch.Tensor) -> LossBreakdown:
        """Hinge loss on real `target` vs detached `pred`."""
        real = self.discriminator(target.detach()).float()
        fake = self.discriminator(pred.detach()).float()
        loss_real, loss_fake = F.relu(1 - real).mean(), F.relu(1 + fake).mean()
        total = 0.5 * (loss_real + loss_fake)
        return LossBreakdown(total, {"disc_real": loss_real, "disc_fake": loss_fake,
                                     "logits_real": real.mean().detach(), "logits_fake": fake.mean().detach()})


def _as_list(features: torch.Tensor | list | tuple | dict) -> list[torch.Tensor]:
    if isinstance(features, torch.Tensor):
        return [features]
    if isinstance(features, dict):
        return list(features.values())
    return list(features)

