"""The judge classifier: a small residual CNN that names the class of an image and gives the feature space in which
generated images are compared with real ones (class fidelity, Fréchet distance, precision/recall, diversity:
`onetok.ar_model.judges`).

A classifier folder holds `config.json` (format `onetok-classifier` v1: the architecture, the class names with their
accepted synonyms, what it was trained on and its val accuracy) and `model.safetensors` (no pickle). The recipe
(`train_classifier`, run by `onetok judge train`) trains on image shards whose JSON carries `label`; the classes are
the labels found in the train shards, ordered by `label_id` when present.

    onetok judge train --data ../shared/data/cifar10 --out models/judge
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from onetok.data.pixels import chw_uint8, to_float

FORMAT, VERSION = "onetok-classifier", 1
BUILTIN_JUDGE = Path(__file__).resolve().parent / "pretrained" / "judge_cifar10"  # trained by `make cifar-model`


@dataclasses.dataclass(frozen=True)
class ClassifierConfig:
    """The network: a 3x3 stem at full size, then one stage per width (pool 2x, conv, optional residual pair)."""

    image_size: int = 32
    widths: tuple[int, ...] = (24, 48, 96, 192)  # stem, then each stage
    residual: tuple[bool, ...] = (True, True, False)  # one per stage after the stem
    labels: tuple[str, ...] = ()  # class names, index = class id
    synonyms: dict[str, list[str]] = dataclasses.field(default_factory=dict)  # label -> other words that name it
    mean: tuple[float, float, float] = (0.4914, 0.4822, 0.4465)  # input normalisation (CIFAR-10 train statistics)
    std: tuple[float, float, float] = (0.2470, 0.2435, 0.2616)

    def __post_init__(self):
        if len(self.residual) != len(self.widths) - 1:
            raise ValueError(f"residual needs {len(self.widths) - 1} flags (one per stage), got {len(self.residual)}")
        if len(self.labels) < 2:
            raise ValueError("a classifier needs at least 2 labels")

    @property
    def feature_dim(self) -> int:
        return self.widths[-1]


class TrainSettings(NamedTuple):
    """The recipe's knobs: SGD with Nesterov momentum, one-cycle (linear up, linear down), label smoothing."""

    epochs: int = 3
    batch_size: int = 128
    lr: float = 0.2
    weight_decay: float = 5e-4
    label_smoothing: float = 0.1
    warmup_fraction: float = 0.2
    seed: int = 0
    soften_prob: float = 0.5  # share of each batch shown low-passed (`soften`): a judge of drawn images tolerates blur


def _conv_bn(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


class _Residual(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.a, self.b = _conv_bn(channels, channels), _conv_bn(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.b(self.a(x))


class ImageClassifier(nn.Module):
    """Images (B, 3, S, S) in [0, 1] -> logits (B, C); `features` -> the (B, F) global max-pooled last stage."""

    def __init__(self, config: ClassifierConfig):
        super().__init__()
        self.config = config
        layers: list[nn.Module] = [_conv_bn(3, config.widths[0])]
        for c_in, c_out, res in zip(config.widths[:-1], config.widths[1:], config.residual):
            layers += [nn.MaxPool2d(2), _conv_bn(c_in, c_out)]
            if res:
                layers.append(_Residual(c_out))
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(config.feature_dim, len(config.labels))
        self.register_buffer("mean", torch.tensor(config.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(config.std).view(1, 3, 1, 1), persistent=False)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        x = ((images.float() - self.mean) / self.std).contiguous(memory_format=torch.channels_last)
        return self.body(x).amax(dim=(2, 3))  # (B, F)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images))

    @property
    def labels(self) -> tuple[str, ...]:
        return self.config.labels

    # ---- folder -----------------------------------------------------------------------------------------------------

    def save_pretrained(self, directory: str | os.PathLike, force: bool = False, extra: dict | None = None) -> Path:
        """`config.json` + `model.safetensors`, written beside `directory` and renamed into place."""
        from safetensors.torch import save_model

        from onetok.fileio import staged_dir

        with staged_dir(directory, force) as tmp:
            meta = {"format": FORMAT, "version": VERSION, "model": dataclasses.asdict(self.config), **(extra or {})}
            (tmp / "config.json").write_text(json.dumps(meta, indent=1) + "\n")
            save_model(self, str(tmp / "model.safetensors"), metadata={"format": FORMAT})
        return Path(directory)

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike) -> ImageClassifier:
        from safetensors.torch import load_model

        directory = Path(directory)
        meta = read_meta(directory)
        fields = meta["model"]
        config = ClassifierConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()})
        model = cls(config)
        load_model(model, str(directory / "model.safetensors"))
        return model.eval()


def read_meta(directory: str | os.PathLike) -> dict:
    """The classifier folder's `config.json`; ValueError when it is not one."""
    path = Path(directory) / "config.json"
    meta = json.loads(path.read_text())
    if meta.get("format") != FORMAT:
        raise ValueError(f"{directory}: not a classifier folder (format {meta.get('format')!r})")
    if meta.get("version", 0) > VERSION:
        raise ValueError(f"{directory}: classifier format v{meta['version']} is newer than this onetok reads (v{VERSION})")
    return meta


def is_classifier_dir(directory: str | os.PathLike) -> bool:
    try:
        read_meta(directory)
    except (OSError, ValueError):
        return False
    return (Path(directory) / "model.safetensors").is_file()


# --------------------------------------------------------------------------------------------------------------------
# Data: labelled shards -> uint8 tensors in memory
# --------------------------------------------------------------------------------------------------------------------


class LabelledImages(NamedTuple):
    images: torch.Tensor  # (N, 3, S, S) uint8
    targets: torch.Tensor  # (N,) long, index into `labels`
    labels: tuple[str, ...]


def label_order(metas: list[dict]) -> tuple[str, ...]:
    """Class names from sample JSONs: ordered by `label_id` when every label has one, else alphabetically."""
    ids: dict[str, int | None] = {}
    for meta in metas:
        ids.setdefault(str(meta["label"]), meta.get("label_id"))
    if all(isinstance(v, int) for v in ids.values()) and len(set(ids.values())) == len(ids):
        return tuple(sorted(ids, key=lambda k: ids[k]))
    return tuple(sorted(ids))


def load_labelled(spec: str, size: int, labels: tuple[str, ...] | None = None, limit: int | None = None) -> LabelledImages:
    """Every sample of `spec` with a JSON `label` (read by the shard reader; resized and centre-cropped to `size`);
    with `labels` given, samples of other labels are an error."""
    from onetok.data.shards import iter_samples

    arrays, metas = [], []
    for sample in iter_samples(spec, size=size):
        if "label" not in sample["json"]:
            continue
        arrays.append(chw_uint8(sample["image"]))
        metas.append(sample["json"])
        if limit is not None and len(arrays) >= limit:
            break
    if not arrays:
        raise ValueError(f"{spec}: no samples with a JSON label")
    labels = labels or label_order(metas)
    index = {name: i for i, name in enumerate(labels)}
    unknown = sorted({str(m["label"]) for m in metas} - set(index))
    if unknown:
        raise ValueError(f"{spec}: labels the classifier does not know: {', '.join(unknown[:5])}")
    images = torch.stack(arrays)  # (N, 3, S, S) uint8
    targets = torch.tensor([index[str(m["label"])] for m in metas], dtype=torch.long)
    return LabelledImages(images, targets, labels)


def augment(images: torch.Tensor, generator: torch.Generator, pad: int = 4) -> torch.Tensor:
    """Random horizontal flips and translations (reflect-padded random crops) of uint8 (B, 3, S, S)."""
    B, _, S, _ = images.shape
    flip = torch.rand(B, generator=generator) < 0.5
    images = torch.where(flip.view(B, 1, 1, 1), images.flip(3), images)
    padded = F.pad(images.float(), (pad, pad, pad, pad), mode="reflect")  # (B, 3, S + 2p, S + 2p)
    dy, dx = torch.randint(0, 2 * pad + 1, (2, B), generator=generator)
    rows = (dy.view(B, 1) + torch.arange(S)).view(B, 1, S, 1).expand(B, 3, S, S + 2 * pad)
    cropped = padded.gather(2, rows)  # (B, 3, S, S + 2p)
    cols = (dx.view(B, 1) + torch.arange(S)).view(B, 1, 1, S).expand(B, 3, S, S)
    return cropped.gather(3, cols)  # (B, 3, S, S), float 0..255


SOFTEN_SIZES = (12, 16, 20, 24)  # the side lengths `soften` passes an image through


def soften(images: torch.Tensor, generator: torch.Generator, prob: float) -> torch.Tensor:
    """A random `prob` share of float (B, 3, S, S) images, each shrunk (antialiased) to a random side in
    SOFTEN_SIZES and enlarged back: the low-pass look of decoded or generated pictures, so the judge names the class
    of a soft image and not only of a sharp one."""
    B, _, S, _ = images.shape
    chosen = torch.rand(B, generator=generator) < prob
    sizes = torch.randint(0, len(SOFTEN_SIZES), (B,), generator=generator)
    out = images.clone()
    for k, side in enumerate(SOFTEN_SIZES):
        index = (chosen & (sizes == k)).nonzero().flatten()
        if side >= S or not len(index):
            continue
        small = F.interpolate(images[index], size=(side, side), mode="bilinear", antialias=True, align_corners=False)
        out[index] = F.interpolate(small, size=(S, S), mode="bilinear", align_corners=False)
    return out


# --------------------------------------------------------------------------------------------------------------------
# Recipe
# --------------------------------------------------------------------------------------------------------------------


@torch.no_grad()
def accuracy(model: ImageClassifier, images: torch.Tensor, targets: torch.Tensor, batch_size: int = 500) -> float:
    """Top-1 accuracy over uint8 or [0, 1] float images (N, 3, S, S)."""
    model.eval()
    correct = 0
    for start in range(0, len(images), batch_size):
        batch = images[start : start + batch_size]
        batch = to_float(batch)
        correct += int((model(batch).argmax(1) == targets[start : start + batch_size]).sum())
    return correct / len(images)


class ReconstructionAccuracy(NamedTuple):
    accuracy: float  # top-1 on the tokenizer's reconstructions at all L tokens, saved as 8-bit
    psnr_db: float  # their mean PSNR against the originals


@torch.no_grad()
def reconstruction_accuracy(model: ImageClassifier, tokenizer, images: torch.Tensor, targets: torch.Tensor,
                            batch_size: int = 250) -> ReconstructionAccuracy:
    """The judge's accuracy on `tokenizer`'s reconstructions of uint8 images (N, 3, S, S), and their mean PSNR."""
    from onetok.data.pixels import as_saved
    from onetok.metrics import psnr

    recs, psnr_sum = [], 0.0
    for start in range(0, len(images), batch_size):
        batch = to_float(images[start : start + batch_size])
        rec = as_saved(tokenizer.decode(tokenizer.encode(batch)))  # as a saved PNG
        psnr_sum += float(psnr(rec, batch).sum())
        recs.append(rec)
    return ReconstructionAccuracy(accuracy(model, torch.cat(recs), targets), psnr_sum / len(images))


def _lr_at(step: int, total: int, settings: TrainSettings) -> float:
    warm = max(1, math.ceil(settings.warmup_fraction * total))
    if step < warm:
        return settings.lr * (step + 1) / warm
    return settings.lr * max(0.0, (total - step) / max(1, total - warm))


def train_classifier(train: LabelledImages, config: ClassifierConfig, settings: TrainSettings | None = None,
                     log: Callable[[str], None] | None = None) -> ImageClassifier:
    """The recipe: `settings.epochs` passes over `train` in shuffled batches (flips, 4 px translations, softening)."""
    settings = settings or TrainSettings()
    torch.manual_seed(settings.seed)
    generator = torch.Generator().manual_seed(settings.seed)
    model = ImageClassifier(config).to(memory_format=torch.channels_last)
    decay = [p for p in model.parameters() if p.ndim > 1]
    other = [p for p in model.parameters() if p.ndim <= 1]
    optimizer = torch.optim.SGD([{"params": decay, "weight_decay": settings.weight_decay},
                                 {"params": other, "weight_decay": 0.0}], lr=settings.lr, momentum=0.9, nesterov=True)
    per_epoch = len(train.images) // settings.batch_size
    total, step, start = per_epoch * settings.epochs, 0, time.time()
    for epoch in range(settings.epochs):
        model.train()
        order = torch.randperm(len(train.images), generator=generator)
        for b in range(per_epoch):
            index = order[b * settings.batch_size : (b + 1) * settings.batch_size]
            images = soften(augment(train.images[index], generator), generator, settings.soften_prob) / 255
            for group in optimizer.param_groups:
                group["lr"] = _lr_at(step, total, settings)
            loss = F.cross_entropy(model(images), train.targets[index], label_smoothing=settings.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            if log is not None and (step % 50 == 0 or step == total):
                log(f"epoch {epoch + 1}/{settings.epochs} step {step}/{total} loss {loss.item():.3f} "
                    f"({time.time() - start:.0f}s)")
    return model.eval()


# --------------------------------------------------------------------------------------------------------------------
# Presets
# --------------------------------------------------------------------------------------------------------------------

CIFAR10_LABELS = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
CIFAR10_SYNONYMS = {
    "airplane": ["plane", "aeroplane", "aircraft", "jet", "airliner"],
    "automobile": ["car", "auto", "sedan", "coupe"],
    "bird": [],
    "cat": ["kitten", "kitty"],
    "deer": [],
    "dog": ["puppy", "pup"],
    "frog": ["toad"],
    "horse": ["pony", "stallion", "mare", "foal"],
    "ship": ["boat", "vessel"],
    "truck": ["lorry"],
}

PRESETS: dict[str, dict] = {
    "cifar10": {"image_size": 32, "widths": (24, 48, 96, 192), "residual": (True, True, False)},
    "tiny": {"image_size": 16, "widths": (4, 8), "residual": (False,)},
}


def classifier_config(preset: str, labels: tuple[str, ...], synonyms: dict[str, list[str]] | None = None) -> ClassifierConfig:
    """A preset's network for `labels`; synonyms default to CIFAR-10's for the labels they cover."""
    if preset not in PRESETS:
        raise ValueError(f"unknown classifier preset {preset!r} (known: {', '.join(PRESETS)})")
    if synonyms is None:
        synonyms = {k: v for k, v in CIFAR10_SYNONYMS.items() if k in labels and v}
    return ClassifierConfig(labels=tuple(labels), synonyms=synonyms, **PRESETS[preset])
