"""Schedules in one unit (batches), bounded checkpoints in the shipped configs, and the strategies we support."""

import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml
from resume_probe import read_probe

from onetok.data.shapes import write_shapes_dataset
from onetok.distributed import check_strategy
from onetok.tokenizers.system import TokenizerSystem

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted((REPO / "configs").glob("*/*.yaml"))
GAN_CONFIGS = [p for p in CONFIGS if (yaml.safe_load(p.read_text())["model"]["init_args"].get("gan_weight") or 0) > 0]


def _callbacks(config: dict, name: str) -> list[dict]:
    return [c.get("init_args", {}) for c in config["trainer"].get("callbacks", []) if c["class_path"].endswith(name)]


def test_gan_runs_from_gan_start_in_batches(tmp_path, monkeypatch):
    """gan_start=3, max_steps=6: six batches, the discriminator stepped on the last three (Lightning's global_step
    counts batches, not both optimizers' steps)."""
    from onetok.scripts.train import main

    write_shapes_dataset(tmp_path / "shapes", size=32, train=48, val=8, seed=0, shard_size=100)
    monkeypatch.setenv("ONETOK_PROBE", str(tmp_path / "probe.jsonl"))
    monkeypatch.setenv("ONETOK_PROBE_SAVE_AT", "6")
    args = ["fit", "--config", str(REPO / "configs/tokenizer/shapes.yaml"), "--model.init_args.preset=tiny",
            '--model.init_args.config={"image_size": 32}', "--model.init_args.gan_weight=0.1",
            "--model.init_args.gan_start=3", f"--data.init_args.train_shards={tmp_path / 'shapes/train'}",
            f"--data.init_args.val_shards={tmp_path / 'shapes/val'}", "--data.init_args.image_size=32",
            "--data.init_args.batch_size=8", "--trainer.max_steps=6", "--trainer.logger=false",
            "--trainer.enable_progress_bar=false", f"--trainer.default_root_dir={tmp_path / 'run'}",
            "--trainer.callbacks+=resume_probe.StepProbe"]
    argv, sys.argv = sys.argv, ["onetok-train", *args]
    try:
        main(args)
    finally:
        sys.argv = argv
    _, batches = read_probe(tmp_path / "probe.jsonl")
    assert sorted(batches) == list(range(6))
    ckpt = torch.load(f"{tmp_path / 'probe.jsonl'}.ckpt", map_location="cpu", weights_only=True)
    generator, discriminator = ckpt["optimizer_states"]
    assert ckpt["global_step"] == 6
    assert {float(s["step"]) for s in discriminator["state"].values()} == {3.0}
    assert {float(s["step"]) for s in generator["state"].values()} == {6.0}


def test_gan_start_past_the_run_warns():
    system = TokenizerSystem(preset="tiny", gan_weight=0.1, gan_start=100)
    system.trainer = SimpleNamespace(estimated_stepping_batches=100)
    with pytest.warns(UserWarning, match="the GAN never runs"):
        system._check_gan_start()
    system.trainer = SimpleNamespace(estimated_stepping_batches=101)
    system._check_gan_start()  # no warning


@pytest.mark.parametrize("config", GAN_CONFIGS, ids=[p.stem for p in GAN_CONFIGS])
def test_gan_configs_start_the_gan_at_a_fifth_of_the_run(config):
    """max_steps and gan_start both count batches; TiTok's single-stage recipe starts the GAN at ~20%."""
    cfg = yaml.safe_load(config.read_text())
    max_steps, gan_start = cfg["trainer"]["max_steps"], cfg["model"]["init_args"]["gan_start"]
    assert gan_start / max_steps == pytest.approx(0.2)
    system = TokenizerSystem(preset="tiny", gan_weight=0.1, gan_start=gan_start)
    system.trainer = SimpleNamespace(estimated_stepping_batches=max_steps)
    system._check_gan_start()


@pytest.mark.parametrize("config", CONFIGS, ids=[f"{p.parent.name}-{p.stem}" for p in CONFIGS])
def test_configs_keep_a_bounded_number_of_checkpoints(config):
    cfg = yaml.safe_load(config.read_text())
    checkpoints = _callbacks(cfg, "ModelCheckpoint")
    assert checkpoints and any(c.get("save_last") for c in checkpoints)
    max_steps = cfg["trainer"]["max_steps"]
    kept = 1  # last.ckpt
    for c in checkpoints:
        top_k = c.get("save_top_k", 1)
        kept += max_steps // c["every_n_train_steps"] if top_k == -1 else top_k
        assert c.get("every_n_train_steps"), "a periodic checkpoint, so a killed run resumes near where it stopped"
    assert kept <= 10


def test_newest_k_checkpoints_are_kept(tmp_path):
    """The configs' rule (monitor "step", mode max, save_top_k 3) keeps last.ckpt and the 3 newest."""
    import lightning as pl
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.demos.boring_classes import BoringModel

    callback = ModelCheckpoint(dirpath=tmp_path, save_last=True, every_n_train_steps=2, save_top_k=3, monitor="step",
                               mode="max")
    trainer = pl.Trainer(max_steps=12, logger=False, callbacks=[callback], enable_progress_bar=False,
                         enable_model_summary=False, limit_val_batches=0)
    trainer.fit(BoringModel())
    names = sorted(p.name for p in tmp_path.glob("*.ckpt"))
    assert names == ["epoch=0-step=10.ckpt", "epoch=0-step=12.ckpt", "epoch=0-step=8.ckpt", "last.ckpt"]


def test_sharded_strategies_are_refused():
    from lightning.pytorch.strategies import DDPStrategy, FSDPStrategy

    with pytest.raises(ValueError, match="FSDPStrategy is not supported; use ddp"):
        check_strategy(SimpleNamespace(strategy=FSDPStrategy()), "TokenizerSystem")
    check_strategy(SimpleNamespace(strategy=DDPStrategy()), "TokenizerSystem")
