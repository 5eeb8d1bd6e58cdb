"""Every trainable system learns: a few fixed samples are overfitted through the system's own Lightning training
step and optimiser, past a stated bar. Each test also runs once with the optimiser step broken (the closure still
runs, the weights never move) and checks that the same bar is then missed, so the test can fail; a detached loss
fails on its own (backward raises: shown once, on the prior)."""

from __future__ import annotations

import contextlib
import math

import lightning.pytorch as pl
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from onetok.metrics import psnr_from_mse

pytestmark = pytest.mark.slow  # training runs: in `make test`, not in the quick `-m "not slow"`
BROKEN = [False, True]


class Repeat(Dataset):
    """The same few samples, `length` times over (one batch = all of them)."""

    def __init__(self, samples: dict[str, torch.Tensor], length: int):
        self.samples, self.length = samples, length
        self.n = len(next(iter(samples.values())))

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {k: v[i % self.n] for k, v in self.samples.items()}


@contextlib.contextmanager
def optimiser_step(broken: bool):
    """With `broken`, AdamW.step runs the closure (loss and backward) but never changes a weight."""
    if not broken:
        yield
        return
    original = torch.optim.AdamW.step
    torch.optim.AdamW.step = lambda self, closure=None: closure() if closure is not None else None
    try:
        yield
    finally:
        torch.optim.AdamW.step = original


def fit(system: pl.LightningModule, samples: dict[str, torch.Tensor], steps: int, broken: bool,
        datamodule: pl.LightningDataModule | None = None) -> None:
    torch.manual_seed(0)
    n = len(next(iter(samples.values())))
    trainer = pl.Trainer(max_steps=steps, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                         num_sanity_val_steps=0, deterministic=True)
    loader = DataLoader(Repeat(samples, n * steps), batch_size=n, shuffle=False)
    with optimiser_step(broken):
        trainer.fit(system, train_dataloaders=loader)


def smooth_images(n: int, size: int) -> torch.Tensor:
    """(n, 3, size, size) in [0, 1]: colour gradients and a bright square, different per image."""
    g = torch.Generator().manual_seed(0)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    out = []
    for _ in range(n):
        a, b, c = torch.rand(3, 3, generator=g)
        img = a[:, None, None] * xx + b[:, None, None] * yy + 0.3 * c[:, None, None]
        y, x = torch.randint(0, size // 2, (2,), generator=g)
        img[:, y:y + size // 3, x:x + size // 3] = 1.0
        out.append(img.clamp(0, 1))
    return torch.stack(out)


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR in dB of the whole batch (one MSE over every image)."""
    return psnr_from_mse(float(torch.mean((a.clamp(0, 1) - b) ** 2)))


@pytest.mark.parametrize("broken", BROKEN, ids=["trains", "broken_step"])
def test_tokenizer_learns(broken):
    from onetok.tokenizers.system import TokenizerSystem

    torch.manual_seed(0)
    images = smooth_images(8, 16)
    # token mixing: without it the tiny VQ tokenizer first collapses onto the mean image (~12 dB) for a long while
    system = TokenizerSystem(preset="tiny", config={"full_length_prob": 1.0, "token_mixing": True}, lr=3e-3,
                             warmup_steps=5, recon_loss="l2", matmul_precision=None)
    fit(system, {"image": images}, steps=150, broken=broken)
    with torch.no_grad():
        rebuilt = system.model.decode(system.model.encode(images))
    bar = 22.0  # dB at all 8 tokens; untrained ~10 dB, the mean image ~12 dB, 150 steps ~28.6 dB
    assert (psnr(rebuilt, images) >= bar) != broken, psnr(rebuilt, images)


@pytest.mark.parametrize("broken", BROKEN, ids=["trains", "broken_step"])
def test_prior_learns(broken):
    from onetok.tokenizers.codec.prior_system import PriorSystem

    torch.manual_seed(0)
    first = torch.randint(0, 64, (16,))
    ids = (first[:, None] * 7 + torch.arange(8)[None, :] * 5) % 64  # (16, 8): each id follows from the one before
    context = torch.randint(0, 64, (16, 8))
    system = PriorSystem(preset="tiny", lr=1e-2, warmup_steps=5, drop_prob=0.0)
    fit(system, {"context": context, "ids": ids}, steps=120, broken=broken)
    with torch.no_grad():
        bits = system._bits(context, ids)[:, 1:].mean()  # the ids after the first are determined by it
    bar = 1.0  # bits per id; uniform is log2(64) = 6
    assert (float(bits) <= bar) != broken, float(bits)


def test_a_detached_loss_stops_training():
    """The other way a training step breaks: a loss cut from the graph. Shown once, on the prior: backward raises."""
    from onetok.tokenizers.codec.prior_system import PriorSystem

    system = PriorSystem(preset="tiny", lr=1e-2, warmup_steps=5, drop_prob=0.0)
    step = system.training_step
    system.training_step = lambda *args, **kwargs: step(*args, **kwargs).detach()
    samples = {"context": torch.randint(0, 64, (4, 8)), "ids": torch.randint(0, 64, (4, 8))}
    with pytest.raises(RuntimeError, match="does not require grad"):
        fit(system, samples, steps=1, broken=False)


@pytest.mark.parametrize("broken", BROKEN, ids=["trains", "broken_step"])
def test_postfilter_learns(broken, tmp_path):
    from onetok.tokenizers import Tokenizer, preset
    from onetok.tokenizers.codec.postfilter_system import PostFilterSystem

    torch.manual_seed(0)
    Tokenizer(preset("tiny")).save_pretrained(tmp_path / "tok")  # untrained: its output is far from the input
    system = PostFilterSystem(str(tmp_path / "tok"), channels=8, layers=2, lr=1e-2, warmup_steps=5)
    images = smooth_images(4, 32)  # 2 x 2 tiles of 16 px each
    fit(system, {"image": images}, steps=80, broken=broken)
    torch.manual_seed(1)
    with torch.no_grad():
        coded = system.coded(images)
        gain = psnr(system.model.postfilter(coded), images) - psnr(coded, images)
    bar = 1.0  # dB the filter adds over the decoded tiles (an identity filter adds 0; 80 steps ~2 dB)
    assert (gain >= bar) != broken, gain


@pytest.mark.parametrize("broken", BROKEN, ids=["trains", "broken_step"])
def test_unified_model_learns(broken, tmp_path):
    from tiny_configs import make_tiny_data

    from onetok.ar_model.data import ARDataModule
    from onetok.ar_model.system import ARSystem

    data = make_tiny_data(tmp_path)
    dm = ARDataModule(tokens=str(data.tokens), text="words", batch_size=8, val_batch_size=8, num_workers=0,
                      shuffle_buffer=10)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    system = ARSystem(preset="tiny", model_overrides={}, tokenizer_dir=str(data.tokenizer), lr=1e-2,
                      warmup_steps=5, eval_samples=2)
    trainer = pl.Trainer(max_steps=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                         num_sanity_val_steps=0)
    trainer.fit(system, datamodule=dm)  # builds the model from the data's vocabulary
    fixed = {k: v for k, v in batch.items() if isinstance(v, torch.Tensor)}

    def loss() -> float:
        with torch.no_grad():
            total, count = system._loss_sums(fixed)[0]  # all rows
        return float(total / count)

    before = loss()
    fit(system, fixed, steps=100, broken=broken)
    after = loss()
    bar = 0.5 * before  # the loss on the 8 fixed rows halves
    assert math.isfinite(after) and (after <= bar) != broken, (before, after)
