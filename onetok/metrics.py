"""Image-quality metrics shared by the tokenizer, codec and AR evaluations: FID and Inception Score, LPIPS, PSNR, SSIM.

- FID / IS: torchmetrics' `FrechetInceptionDistance` and `InceptionScore` over the standard FID Inception v3 (the
  TensorFlow 2015-12-05 graph as ported by torch-fidelity, which torchmetrics also uses): uint8 images, resized to
  299 x 299 with TensorFlow 1.x bilinear, 2048-d pool features (FID) and 1008 logits (IS). The network runs once
  per image; both metrics read its outputs (`ImageFeatures`).
- LPIPS (Zhang et al. 2018, arXiv:1801.03924): torchmetrics' network with its bundled linear layers over a
  torchvision AlexNet or VGG16 backbone loaded from a user-supplied file.
- PSNR: the one definition (`psnr` for float tensors in [0, 1], `pixel_psnr` for 8-bit arrays).
- SSIM (Wang et al. 2004): torchmetrics, averaged over the valid window positions only.

Nothing downloads: network weights come from a local file or the torch hub cache (`find_weights`), and a missing
file is a `MissingWeights` error naming the file, its URL and where to put it. The protocol behind each number
(docs/evaluation.md) is written into every report by `fid_protocol` / `rfid_differences`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import warnings
from pathlib import Path
from typing import IO, NamedTuple

import numpy as np
import torch
from torch import nn

from onetok.data.pixels import to_uint8

FID_WEIGHTS_FILE = "weights-inception-2015-12-05-6726825d.pth"  # torch-fidelity's name for the FID Inception
FID_WEIGHTS_ALIASES = ("pt_inception-2015-12-05-6726825d.pth",)  # pytorch-fid's name for the same file
FID_WEIGHTS_URL = "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/" + FID_WEIGHTS_FILE
FID_WEIGHTS_SHA256_PREFIX = "6726825d"  # the hash prefix in the file name (torch hub convention)
IS_SPLITS = 10  # Inception Score: mean and std over 10 splits (Salimans et al. 2016; the ADM evaluator)
LPIPS_NETS = ("alex", "vgg")


class MissingWeights(FileNotFoundError):
    """A network weights file is not on this machine; the message says which file and where to put it."""


# --------------------------------------------------------------------------------------------------------------------
# Weight files
# --------------------------------------------------------------------------------------------------------------------


class WeightsSpec(NamedTuple):
    what: str  # "FID" | "LPIPS"
    file: str  # the canonical file name
    url: str
    flag: str  # the CLI flag that names a file
    aliases: tuple[str, ...] = ()


FID_WEIGHTS = WeightsSpec("FID", FID_WEIGHTS_FILE, FID_WEIGHTS_URL, "--fid-weights", FID_WEIGHTS_ALIASES)


def lpips_weights_spec(net: str) -> WeightsSpec:
    """The torchvision ImageNet backbone an LPIPS network needs (its linear layers ship with torchmetrics)."""
    from torchvision.models import AlexNet_Weights, VGG16_Weights

    if net not in LPIPS_NETS:
        raise ValueError(f"LPIPS network must be one of {LPIPS_NETS}, got {net!r}")
    url = (AlexNet_Weights if net == "alex" else VGG16_Weights).IMAGENET1K_V1.url
    return WeightsSpec("LPIPS", url.rsplit("/", 1)[-1], url, "--lpips-weights")


def hub_checkpoint_dir() -> Path:
    """Where torch hub (and so torchvision, torch-fidelity, torchmetrics) caches downloaded weights."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def find_weights(spec: WeightsSpec, path: str | os.PathLike | None = None) -> Path:
    """`path` when given (it must exist), else the file in the torch hub cache; MissingWeights otherwise."""
    if path is not None:
        if not Path(path).is_file():
            raise MissingWeights(f"{path}: no such file ({spec.what} needs {spec.file}, from {spec.url})")
        return Path(path)
    for name in (spec.file, *spec.aliases):
        if (hub_checkpoint_dir() / name).is_file():
            return hub_checkpoint_dir() / name
    raise MissingWeights(f"{spec.what} needs the weights file {spec.file} and this machine has no internet: download "
                         f"{spec.url} elsewhere, then pass {spec.flag} FILE or copy it to {hub_checkpoint_dir() / spec.file}")


def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A plain tensor state dict (torch.load with weights_only=True: no code runs); ValueError otherwise."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unreadable or non-tensor pickle is the same user error
        raise ValueError(f"{path}: not a loadable weights file ({type(err).__name__})") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path}: not a state dict of tensors")
    return state


# --------------------------------------------------------------------------------------------------------------------
# Feature extraction (FID / IS)
# --------------------------------------------------------------------------------------------------------------------


class ImageFeatures(NamedTuple):
    pool: torch.Tensor  # (B, F) the features the Frechet distance is taken over
    logits: torch.Tensor | None  # (B, C) classifier logits for the Inception Score; None if the extractor has none


@contextlib.contextmanager
def full_fp32():
    """TF32 off for cuDNN convolutions and matmuls (on by default for cuDNN): the features stay true fp32."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


class InceptionFeatures(nn.Module):
    """The FID Inception v3: uint8 (B, 3, H, W) -> 2048-d pool features and 1008 unbiased logits."""

    def __init__(self, weights: str | os.PathLike, precision: str = "float64"):
        super().__init__()
        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

        if precision not in ("float32", "float64"):
            raise ValueError(f"precision must be float32 or float64, got {precision!r}")
        load_state_dict(weights)  # refuse anything but plain tensors before torch-fidelity unpickles the file
        sha = sha256_file(weights)
        self.net = FeatureExtractorInceptionV3("inception-v3-compat", ["2048", "logits_unbiased"],
                                               feature_extractor_weights_path=str(weights),
                                               feature_extractor_internal_dtype=precision)
        self.protocol = {
            "extractor": "FID Inception v3 (TF 2015-12-05 weights, torch-fidelity port), 2048-d pool3",
            "weights_file": Path(weights).name, "weights_sha256": sha,
            "standard_weights": sha.startswith(FID_WEIGHTS_SHA256_PREFIX),
            "precision": f"{precision} (TF32 off)",
            "inception_input": "uint8, resized to 299x299 by TensorFlow-1.x bilinear (torch-fidelity), (x - 128) / 128",
        }

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> ImageFeatures:
        with full_fp32():
            pool, logits = self.net(images)
        return ImageFeatures(pool, logits)


def load_fid_extractor(weights: str | os.PathLike | None = None, precision: str = "float64") -> InceptionFeatures:
    """The FID Inception from `weights` or the torch hub cache (MissingWeights / ValueError on a bad file)."""
    return InceptionFeatures(find_weights(FID_WEIGHTS, weights), precision)


def extractor_protocol(extractor: nn.Module) -> dict:
    return dict(getattr(extractor, "protocol", None) or {"extractor": type(extractor).__name__,
                                                           "standard_weights": False})


@torch.no_grad()
def extract(extractor: nn.Module, images: torch.Tensor) -> ImageFeatures:
    """Features of images (B, 3, H, W), float in [0, 1] or uint8; an extractor may return a bare (B, F) tensor."""
    out = extractor(to_uint8(images))
    return out if isinstance(out, ImageFeatures) else ImageFeatures(out, None)


# --------------------------------------------------------------------------------------------------------------------
# FID statistics and the Frechet distance
# --------------------------------------------------------------------------------------------------------------------


class FIDStats(NamedTuple):
    """Mean (F,) and covariance (F, F) of a set's features, its size and the protocol that made them."""

    mu: np.ndarray
    sigma: np.ndarray
    n: int
    protocol: dict


def save_stats(file: str | os.PathLike | IO[bytes], stats: FIDStats) -> None:
    """An .npz with `mu`, `sigma` (the keys pytorch-fid and the ADM evaluator use), `n` and `protocol` (JSON)."""
    np.savez(file, mu=stats.mu, sigma=stats.sigma, n=np.int64(stats.n), protocol=np.array(json.dumps(stats.protocol)))


def load_stats(path: str | os.PathLike) -> FIDStats:
    """Statistics from an .npz of ours, pytorch-fid's or the ADM evaluator's (`mu`, `sigma`); ValueError if not."""
    try:
        data = dict(np.load(path, allow_pickle=False))  # every array read now: the file closes here
    except (OSError, EOFError, ValueError) as err:  # ValueError: not an .npz, or object (pickled) arrays
        raise ValueError(f"{path}: not a readable .npz ({type(err).__name__})") from None
    if "mu" not in data or "sigma" not in data:
        raise ValueError(f"{path}: no 'mu' and 'sigma' arrays (not FID statistics)")
    mu, sigma = data["mu"].astype(np.float64), data["sigma"].astype(np.float64)
    n = int(data["n"]) if "n" in data else 0
    protocol = json.loads(str(data["protocol"])) if "protocol" in data else {}
    if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
        raise ValueError(f"{path}: mu {mu.shape} and sigma {sigma.shape} do not match")
    return FIDStats(mu, sigma, n, protocol)


class _Precomputed(nn.Module):
    """Hands already-extracted features to a torchmetrics metric (so the network runs once for FID and IS)."""

    def __init__(self, num_features: int):
        super().__init__()
        self.num_features = num_features

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features


class FIDResult(NamedTuple):
    fid: float
    inception_score: float | None  # mean over IS_SPLITS splits of the fake set; None without logits
    inception_score_std: float | None
    real_images: int
    fake_images: int


class FrechetMeter:
    """Accumulates real and fake features; `compute` gives FID (torchmetrics) and the fakes' Inception Score."""

    def __init__(self):
        from torchmetrics.image.inception import InceptionScore

        self.fid = None  # torchmetrics' FrechetInceptionDistance, made once the feature width is known
        with warnings.catch_warnings():  # "InceptionScore will save all extracted features": 4 KiB per image here
            warnings.simplefilter("ignore", UserWarning)
            self.inception = InceptionScore(feature=_Precomputed(0), splits=IS_SPLITS)
        self._logits = True

    def _frechet(self, num_features: int, device: torch.device):
        from torchmetrics.image.fid import FrechetInceptionDistance

        if self.fid is None:  # on the features' device: the (F, F) sums are the costly part
            self.fid = FrechetInceptionDistance(feature=_Precomputed(num_features), reset_real_features=False)
            self.fid.to(device)
        elif self.fid.real_features_sum.shape[0] != num_features:
            raise ValueError(f"features of width {num_features} after width {self.fid.real_features_sum.shape[0]}")
        return self.fid

    def update(self, features: ImageFeatures, real: bool) -> None:
        fid = self._frechet(features.pool.shape[1], features.pool.device)
        fid.update(features.pool.to(fid.device, torch.float64), real=real)
        if not real:
            if features.logits is None:
                self._logits = False
            elif self._logits:
                self.inception.update(features.logits.float().cpu())  # float32: 50,000 images take 200 MB

    def set_reference(self, stats: FIDStats) -> None:
        """Use saved statistics as the real set (FID needs only their mean and covariance)."""
        n = max(int(stats.n), 2)
        fid = self._frechet(stats.mu.shape[0], torch.device("cpu"))
        mu, sigma = torch.from_numpy(stats.mu).to(fid.device), torch.from_numpy(stats.sigma).to(fid.device)
        fid.real_features_sum = mu * n
        fid.real_features_cov_sum = sigma * (n - 1) + n * torch.outer(mu, mu)
        fid.real_features_num_samples = torch.tensor(n, device=fid.device)

    def counts(self) -> tuple[int, int]:
        """(real, fake) images seen."""
        if self.fid is None:
            return 0, 0
        return int(self.fid.real_features_num_samples), int(self.fid.fake_features_num_samples)

    def real_stats(self, protocol: dict) -> FIDStats:
        """The mean and (unbiased) covariance of the real features seen so far."""
        n = self.counts()[0]
        if n < 2:
            raise ValueError("FID statistics need at least 2 reference images")
        mu = self.fid.real_features_sum.cpu() / n
        sigma = (self.fid.real_features_cov_sum.cpu() - n * torch.outer(mu, mu)) / (n - 1)
        return FIDStats(mu.numpy(), sigma.numpy(), n, protocol)

    def compute(self) -> FIDResult:
        n_real, n_fake = self.counts()
        if n_real < 2 or n_fake < 2:
            raise ValueError(f"FID needs at least 2 real and 2 generated images, got {n_real} and {n_fake}")
        fid = float(self.fid.compute())
        score = std = None
        if self._logits:
            with torch.random.fork_rng(devices=[]):  # IS shuffles before splitting: a fixed, local seed
                torch.manual_seed(0)
                mean, spread = self.inception.compute()
            score, std = float(mean), (float(spread) if n_fake >= 2 * IS_SPLITS else None)
        return FIDResult(fid, score, std, n_real, n_fake)


# --------------------------------------------------------------------------------------------------------------------
# Protocol records: what a number means and whether it can be set beside a paper's
# --------------------------------------------------------------------------------------------------------------------

PREPROCESSING = ("short side resized to S with PIL (Lanczos when shrinking, bicubic when enlarging), centre crop "
                 "S x S (images already S x S are untouched); generated and reconstructed images clamped to [0, 1] "
                 "and rounded to uint8")
RFID_PAPER_PROTOCOL = ("TiTok/LlamaGen-style rFID: ImageNet-1k val, all 50,000 images, 256 x 256 (torchvision "
                       "bicubic short-side resize + centre crop), FID Inception pool3 (torch-fidelity), reconstructions "
                       "vs their originals")


def fid_protocol(extractor: nn.Module, kind: str, image_size: int, n_real: int, n_fake: int, reference: str) -> dict:
    """The record of how a FID was measured, written into every JSON report."""
    return {
        "metric": kind, **extractor_protocol(extractor), "image_size": image_size, "preprocessing": PREPROCESSING,
        "real_images": n_real, "fake_images": n_fake, "reference": reference,
        "inception_score": f"fake set, {IS_SPLITS} splits (shuffled with seed 0), mean and std",
    }


def rfid_differences(protocol: dict) -> list[str]:
    """Why an rFID is NOT comparable with the published ImageNet 256 rFIDs (empty: every checkable setting matches)."""
    why = []
    if not protocol.get("standard_weights"):
        why.append(f"feature extractor is not the FID Inception ({protocol.get('extractor')})")
    if protocol.get("image_size") != 256:
        why.append(f"images are {protocol.get('image_size')} px, not 256")
    if protocol.get("real_images") != 50000 or protocol.get("fake_images") != 50000:
        why.append(f"{protocol.get('fake_images')} images, not the 50,000 of ImageNet-1k val (FID is biased upward "
                   "at small N: compare only at equal N)")
    return why


GFID_PAPER_PROTOCOL = ("ADM-evaluator gFID (LlamaGen, VAR, RAR, TiTok): 50,000 class-conditional ImageNet 256 x 256 "
                       "samples vs the ImageNet train reference batch (VIRTUAL_imagenet256_labeled.npz), FID Inception "
                       "pool3")


def gfid_differences(protocol: dict) -> list[str]:
    """Why a gFID of `onetok eval-ar` is NOT comparable with the published ImageNet 256 gFIDs (never empty)."""
    why = ["samples are drawn from captions (text to image), not ImageNet classes: only onetok runs with the same "
           "reference set, image count and sampling settings compare"]
    if not protocol.get("standard_weights"):
        why.append(f"feature extractor is not the FID Inception ({protocol.get('extractor')})")
    if protocol.get("image_size") != 256:
        why.append(f"images are {protocol.get('image_size')} px, not 256")
    if protocol.get("fake_images") != 50000:
        why.append(f"{protocol.get('fake_images')} samples, not 50,000 (FID is biased upward at small N)")
    return why


# --------------------------------------------------------------------------------------------------------------------
# LPIPS
# --------------------------------------------------------------------------------------------------------------------


def load_lpips(weights: str | os.PathLike | None = None, net: str = "alex") -> nn.Module:
    """torchmetrics' LPIPS network (its bundled linear layers) over a torchvision backbone read from `weights`
    (the torchvision ImageNet file, or just its `features.*` tensors); call it as `net(a, b, normalize=True)`."""
    import torchvision
    from torchmetrics.functional.image.lpips import _NoTrainLpips

    path = find_weights(lpips_weights_spec(net), weights)
    state = load_state_dict(path)
    with torch.device("meta"):  # the expected tensor names and shapes, without building the network
        expected = getattr(torchvision.models, "alexnet" if net == "alex" else "vgg16")().features.state_dict()
    for key, value in expected.items():
        if state.get("features." + key, torch.empty(0)).shape != value.shape:
            raise ValueError(f"{path}: not the torchvision {net} ImageNet weights (features.{key})")
    lpips = _NoTrainLpips(net=net, pretrained=True, pnet_rand=True)  # random backbone: no download; filled below
    backbone = lpips.net.state_dict()  # "slice{s}.{i}.weight" holds torchvision's "features.{i}.weight"
    lpips.net.load_state_dict({k: state["features." + k.split(".", 1)[1]] for k in backbone})
    lpips.protocol = {"network": f"LPIPS v0.1 ({net}), torchmetrics linear layers", "weights_file": path.name,
                      "weights_sha256": sha256_file(path), "input": "[0, 1] images at the tokenizer's resolution"}
    return lpips.eval()


@torch.no_grad()
def lpips_distance(net: nn.Module, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-image LPIPS of float images (B, 3, H, W) in [0, 1] -> (B,); lower is closer."""
    return net(a.float().clamp(0, 1), b.float().clamp(0, 1), normalize=True).reshape(a.shape[0])


# --------------------------------------------------------------------------------------------------------------------
# PSNR
# --------------------------------------------------------------------------------------------------------------------


def psnr_from_mse(mse, peak: float = 1.0):
    """10 log10(peak^2 / mse) in dB for a number (-> float) or a tensor (-> tensor); an MSE of 0 gives +inf."""
    if isinstance(mse, torch.Tensor):
        return 10 * torch.log10(peak**2 / mse)
    return math.inf if mse == 0 else 10 * math.log10(peak**2 / float(mse))


def psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB of float images (B, C, H, W) in [0, 1] (both clamped) -> (B,); identical images: +inf."""
    mse = (a.float().clamp(0, 1) - b.float().clamp(0, 1)).pow(2).flatten(1).mean(dim=1)  # (B,)
    return psnr_from_mse(mse)


def pixel_psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB of two 8-bit pictures (or batches) of one shape, over every pixel and channel (peak 255, MSE in
    float64); identical pictures give +inf."""
    return psnr_from_mse(float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)), 255.0)


# --------------------------------------------------------------------------------------------------------------------
# SSIM
# --------------------------------------------------------------------------------------------------------------------


def ssim(a: torch.Tensor, b: torch.Tensor, window: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Mean SSIM (Wang et al. 2004) of images (B, C, H, W) in [0, 1] -> (B,): Gaussian window 11, sigma 1.5,
    K1 0.01, K2 0.03, data range 1, averaged over the valid window positions and channels. Images smaller than the
    window use the largest odd window that fits (sigma scaled alike). Computed in float32 (float64 grouped
    convolutions are very slow on CPU); within 1e-5 of a float64 computation on the test photos."""
    from torchmetrics.functional.image import structural_similarity_index_measure

    if a.shape != b.shape or a.ndim != 4:
        raise ValueError(f"expected two (B, C, H, W) tensors of one shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    size = min(window, a.shape[-2], a.shape[-1])
    size -= 1 - size % 2  # largest odd window that fits
    s = sigma * size / window  # torchmetrics sizes its Gaussian from sigma: int(3.5 s + 0.5) * 2 + 1 == size here
    _, full = structural_similarity_index_measure(a.float().clamp(0, 1), b.float().clamp(0, 1), sigma=s,
                                                  data_range=1.0, reduction="none", return_full_image=True)
    pad = (size - 1) // 2  # torchmetrics pads by reflection; Wang et al. average the valid positions only
    valid = full[..., pad : full.shape[-2] - pad, pad : full.shape[-1] - pad]  # (B, C, H - size + 1, W - size + 1)
    return valid.flatten(1).double().mean(dim=1).float()
