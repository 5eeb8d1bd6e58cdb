"""Training the tokenizer through the Lightning CLI: configs, fast_dev_run, DDP on CPU, checkpoints and export."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tiny_configs import make_tiny_data
from tiny_configs import tiny_overrides as config_overrides

from onetok.tokenizers import Tokenizer

REPO = Path(__file__).resolve().parents[1]
ALL_CONFIGS = sorted((REPO / "configs").glob("**/*.yaml"))
TOKENIZER_CONFIGS = sorted((REPO / "configs" / "tokenizer").glob("*.yaml"))
TINY_MODEL = ["--model.init_args.preset=tiny", "--model.init_args.config={}"]


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    return make_tiny_data(tmp_path_factory.mktemp("tiny_data"))


@pytest.fixture(scope="module")
def shapes16(tmp_path_factory) -> Path:
    from onetok.data.shapes import write_shapes_dataset

    root = tmp_path_factory.mktemp("shapes16")
    write_shapes_dataset(root, size=16, train=96, val=40, seed=0, shard_size=50)
    return root


def tiny_overrides(data: Path, root: Path) -> list[str]:
    """Shrink any tokenizer config to the tiny preset on 16 px shapes, one CPU process."""
    return [
        *TINY_MODEL,
        f"--data.init_args.train_shards={data / 'train'}", f"--data.init_args.val_shards={data / 'val'}",
        "--data.init_args.image_size=16", "--data.init_args.batch_size=8", "--data.init_args.val_batch_size=20",
        "--data.init_args.num_workers=0", "--data.init_args.in_memory=true", "--data.init_args.epoch_samples=96",
        "--trainer.accelerator=cpu", "--trainer.devices=1", "--trainer.strategy=auto", "--trainer.precision=32-true",
        "--trainer.logger=false", "--trainer.enable_progress_bar=false", f"--trainer.default_root_dir={root}",
    ]


def cli(args: list[str]):
    """`onetok-train ARGS` in this process (sys.argv is set to match, as LightningCLI expects)."""
    from onetok.scripts.train import main

    argv, sys.argv = sys.argv, ["onetok-train", *args]
    try:
        code = main(args)
    finally:
        sys.argv = argv
    assert code == 0  # errors are one line and exit code 2 now, not exceptions


@pytest.mark.parametrize("config", ALL_CONFIGS, ids=[str(p.relative_to(REPO / "configs")) for p in ALL_CONFIGS])
def test_every_config_instantiates(config, tiny_data, monkeypatch):
    from lightning.pytorch import LightningDataModule, LightningModule
    from lightning.pytorch.cli import LightningCLI

    # the GPU-sized models are big and the data paths are the user's: the class paths and arguments are what is checked
    args = ["--config", str(config), *config_overrides(config, tiny_data)]
    args += ["--trainer.accelerator=cpu", "--trainer.devices=1", "--trainer.strategy=auto",
             "--trainer.precision=32-true"]  # GPU configs must still parse and build on a CPU-only machine
    monkeypatch.setattr(sys, "argv", ["onetok-train", *args])
    cli = LightningCLI(LightningModule, LightningDataModule, subclass_mode_model=True, subclass_mode_data=True,
                       args=args, run=False, auto_configure_optimizers=False)
    assert isinstance(cli.model, LightningModule) and isinstance(cli.datamodule, LightningDataModule)


@pytest.mark.parametrize("config", TOKENIZER_CONFIGS, ids=[p.stem for p in TOKENIZER_CONFIGS])
def test_fast_dev_run(config, tiny_data, tmp_path):
    # the GPU configs carry a LearningRateMonitor, which needs a logger: keep the default TensorBoard one (in tmp)
    cli(["fit", "--config", str(config), *config_overrides(config, tiny_data), "--trainer.accelerator=cpu",
         "--trainer.devices=1", "--trainer.strategy=auto", "--trainer.precision=32-true",
         "--trainer.enable_progress_bar=false", f"--trainer.default_root_dir={tmp_path}", "--trainer.logger=true",
         "--trainer.fast_dev_run=2"])


def test_checkpoint_loads_weights_only_and_exports(shapes16, tmp_path):
    from onetok.export import CheckpointError, export
    from onetok.scripts.cli import main as onetok

    root = tmp_path / "run"
    cli(["fit", "--config", str(REPO / "configs/tokenizer/shapes.yaml"), *tiny_overrides(shapes16, root),
         "--trainer.max_steps=3", "--trainer.limit_val_batches=1", "--model.init_args.ema_decay=0.9"])
    ckpt_path = next(root.rglob("last.ckpt"))
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    assert ckpt["onetok_system"] == "tokenizer" and ckpt["global_step"] == 3
    assert any(k.startswith("ema.") for k in ckpt["state_dict"])
    out = tmp_path / "tok"
    assert onetok(["export", str(ckpt_path), "--out", str(out)]) == 0
    tok = Tokenizer.from_pretrained(out)
    assert "the built-in shapes data: 16 px" in json.loads((out / "config.json").read_text())["trained_on"]
    ema = {k[4:]: v for k, v in ckpt["state_dict"].items() if k.startswith("ema.")}
    torch.testing.assert_close(tok.state_dict()["decoder.grid_pos"], ema["decoder.grid_pos"])  # EMA weights exported
    assert tok.decode(tok.encode(torch.rand(2, 3, 16, 16))).shape == (2, 3, 16, 16)
    assert onetok(["export", str(ckpt_path), "--out", str(out)]) == 2  # exists, no --force
    assert onetok(["export", str(ckpt_path), "--out", str(out), "--force"]) == 0
    assert sorted(p.name for p in out.parent.iterdir()) == ["run", "tok"]  # no temp dirs left behind
    # eval-tokenizer on the exported directory
    metrics = tmp_path / "metrics.json"
    assert onetok(["eval-tokenizer", "--tokenizer", str(out), "--data", str(shapes16 / "val"),
                   "--json", str(metrics)]) == 0
    result = json.loads(metrics.read_text())
    assert result["images"] == 40 and list(result["psnr"]) == ["1", "2", "4", "8"]
    assert 0 < result["codebook_usage"] <= 1 and result["perplexity"] >= 1
    # bad checkpoints: one-line errors
    with pytest.raises(FileNotFoundError, match="no such checkpoint"):
        export(tmp_path / "missing.ckpt", tmp_path / "x")
    (tmp_path / "junk.ckpt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not a checkpoint written by onetok-train"):
        export(tmp_path / "junk.ckpt", tmp_path / "x")
    torch.save({"onetok_system": "mystery"}, tmp_path / "other.ckpt")
    with pytest.raises(CheckpointError, match="unknown checkpoint kind"):
        export(tmp_path / "other.ckpt", tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_resume_from_checkpoint(shapes16, tmp_path):
    root = tmp_path / "run"
    base = ["fit", "--config", str(REPO / "configs/tokenizer/shapes.yaml"), *tiny_overrides(shapes16, root),
            "--trainer.limit_val_batches=0"]
    cli([*base, "--trainer.max_steps=2"])
    ckpt_path = next(root.rglob("last.ckpt"))
    cli([*base, "--trainer.max_steps=4", f"--ckpt_path={ckpt_path}"])
    assert torch.load(next(root.rglob("last.ckpt")), weights_only=True)["global_step"] == 4


def test_ddp_two_cpu_processes(shapes16, tmp_path):
    """2 processes, gloo, a few steps of the vq tokenizer (dead-code restart syncs codebooks across ranks)."""
    root = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "onetok.scripts.train", "fit", "--config", str(REPO / "configs/tokenizer/shapes.yaml"),
           *tiny_overrides(shapes16, root), "--trainer.devices=2", "--trainer.strategy=ddp", "--trainer.max_steps=3",
           "--trainer.limit_val_batches=1",  # the shapes-recipe options too: DDP fails on any parameter without a gradient
           '--model.init_args.config={"dead_code_threshold": 0.5, "token_mixing": true, "upsample_channels": 4}']
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PL_DISABLE_FORK": "1"}
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ckpt = torch.load(next(root.rglob("last.ckpt")), weights_only=True)
    assert ckpt["global_step"] == 3 and ckpt["onetok_system"] == "tokenizer"


def _validation_metrics(root: Path) -> dict[str, float]:
    import csv

    rows = list(csv.DictReader(next(root.rglob("metrics.csv")).open()))
    return {k: float(v) for row in rows for k, v in row.items() if k.startswith("val/") and v != ""}


def test_codebook_health_same_on_one_and_two_processes(shapes16, tmp_path):
    """`validate` on 2 DDP processes (gloo; each rank sees half of the 40 val images) logs exactly the codebook
    numbers of 1 process: the per-position code counts are summed over ranks before anything is computed."""
    def args(root: Path, devices: int, strategy: str) -> list[str]:
        return ["validate", "--config", str(REPO / "configs/tokenizer/shapes.yaml"), *tiny_overrides(shapes16, root),
                f"--trainer.devices={devices}", f"--trainer.strategy={strategy}",
                "--trainer.logger=lightning.pytorch.loggers.CSVLogger", f"--trainer.logger.init_args.save_dir={root}"]

    cli(args(tmp_path / "one", 1, "auto"))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PL_DISABLE_FORK": "1"}
    proc = subprocess.run([sys.executable, "-m", "onetok.scripts.train", *args(tmp_path / "two", 2, "ddp")],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    one, two = _validation_metrics(tmp_path / "one"), _validation_metrics(tmp_path / "two")
    codebook = ["val/codebook_usage", "val/perplexity", "val/dead_codes", "val/bits_per_token",
                *[f"val/bits@{k}" for k in (1, 2, 4, 8)]]
    assert 0 < one["val/codebook_usage"] < 1 and one["val/perplexity"] > 1 and one["val/bits@8"] > 0
    assert {k: two[k] for k in codebook} == {k: one[k] for k in codebook}  # exactly equal
    assert two["val/psnr"] == pytest.approx(one["val/psnr"], rel=1e-5)


@pytest.mark.parametrize("preset", ["tiny", "shapes"])  # a VQ codebook; FSQ with token mixing and dropped codes
def test_no_weight_decay_on_codebook_tokens_positions_norms(preset):
    from onetok.tokenizers.system import TokenizerSystem

    system = TokenizerSystem(preset=preset, weight_decay=0.5)
    opt = system.configure_optimizers()["optimizer"]
    decayed = {id(p) for g in opt.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    names = {name for name, p in system.model.named_parameters() if id(p) in decayed}
    assert names and all(".weight" in n or n == "encoder.pool" for n in names), sorted(names)
    assert not any(k in n for n in names for k in ("codebook", "latent_tokens", "pos", "drop_", "norm", "bias"))
    assert "encoder.blocks.0.attn.qkv.weight" in names
