"""Resuming a killed run: the same step count, optimizer state and data position, for both systems.

Every shipped config (shrunk to tiny CPU sizes) is checked in process: a run that checkpoints at step 3 and goes on to
step 6, then a second run resumed from that checkpoint must start at step 3 with the checkpoint's optimizer state and
see the same batches at steps 3, 4, 5. The shapes configs (what `make demo` runs) are also killed with SIGKILL
mid-epoch in a subprocess after their periodic `last.ckpt` and resumed with `--ckpt_path last`.
"""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from resume_probe import optimizer_digest, read_probe
from tiny_configs import TinyData, make_tiny_data, tiny_overrides

REPO = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent
CONFIGS = sorted(str(p.relative_to(REPO / "configs")) for p in (REPO / "configs").glob("*/*.yaml"))
PROBE = ["--trainer.callbacks+=resume_probe.StepProbe"]
COMMON = ["--trainer.accelerator=cpu", "--trainer.devices=1", "--trainer.strategy=auto", "--trainer.precision=32-true",
          "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false", "--trainer.max_time=null"]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> TinyData:
    return make_tiny_data(tmp_path_factory.mktemp("resume"))


def overrides(config: str, data: TinyData, root: Path) -> list[str]:
    """Any shipped config shrunk to tiny sizes, one CPU process, a logger in `root`; the GAN configs (gan_weight > 0)
    start the GAN at step 2, so both optimizers have state to restore."""
    path = REPO / "configs" / config
    gan = (yaml.safe_load(path.read_text())["model"]["init_args"].get("gan_weight") or 0) > 0
    extra = tiny_overrides(path, data, gan) + (["--model.init_args.gan_start=2"] if gan else [])
    return ["fit", "--config", str(path), *COMMON, *extra, f"--trainer.default_root_dir={root}",
            "--trainer.logger=true"]


def cli(args: list[str]) -> None:
    from onetok.scripts.train import main

    argv, sys.argv = sys.argv, ["onetok-train", *args]
    try:
        main(args)
    finally:
        sys.argv = argv


@pytest.mark.parametrize("config", CONFIGS, ids=[c.replace("/", "-")[:-5] for c in CONFIGS])
def test_resume_restores_step_optimizer_and_data_position(config, data, tmp_path, monkeypatch):
    first, second = tmp_path / "first.jsonl", tmp_path / "second.jsonl"
    monkeypatch.setenv("ONETOK_PROBE", str(first))
    monkeypatch.setenv("ONETOK_PROBE_SAVE_AT", "3")
    cli([*overrides(config, data, tmp_path / "a"), *PROBE, "--trainer.max_steps=6"])
    ckpt_path = Path(f"{first}.ckpt")
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 3
    monkeypatch.setenv("ONETOK_PROBE", str(second))
    monkeypatch.setenv("ONETOK_PROBE_SAVE_AT", "-1")
    cli([*overrides(config, data, tmp_path / "b"), *PROBE, "--trainer.max_steps=6", f"--ckpt_path={ckpt_path}"])
    _, uninterrupted = read_probe(first)
    (start,), resumed = read_probe(second)
    assert start["start"] == 3
    assert start["optimizers"] == optimizer_digest(ckpt["optimizer_states"])
    assert sorted(resumed) == [3, 4, 5]
    for step in (3, 4, 5):  # the same batches, at the same place of the same epoch
        assert resumed[step] == uninterrupted[step], step


def _train_until_killed(config: str, data: Path, root: Path, probe: Path) -> int:
    """Run a shapes config in a subprocess; SIGKILL it 3 steps after its first periodic last.ckpt."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ONETOK_PROBE": str(probe),
           "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "onetok.scripts.train", *overrides(config, data, root), *PROBE,
           "--trainer.max_steps=100000", "--trainer.logger=false"]
    log = open(probe.with_suffix(".log"), "w")  # a file, not a pipe: a full pipe would stall the run
    proc = subprocess.Popen(cmd, cwd=root.parent, env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    deadline = time.time() + 120
    try:
        while time.time() < deadline and proc.poll() is None:
            lasts = list(root.rglob("last.ckpt"))
            if lasts and probe.exists():
                saved = torch.load(lasts[0], map_location="cpu", weights_only=True)["global_step"]
                if max(read_probe(probe)[1]) >= saved + 3:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
                    return saved
            time.sleep(0.2)
        raise AssertionError(f"no periodic last.ckpt in time: {probe.with_suffix('.log').read_text()[-2000:]}")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


@pytest.mark.parametrize("config", ["tokenizer/shapes.yaml", "ar/shapes.yaml"])
def test_kill_9_mid_epoch_then_ckpt_path_last(config, data, tmp_path, monkeypatch):
    root, killed, resumed_probe = tmp_path / "run", tmp_path / "killed.jsonl", tmp_path / "resumed.jsonl"
    saved = _train_until_killed(config, data, root, killed)
    assert saved > 0
    _, before = read_probe(killed)
    assert before[saved]["batch_idx"] > 0  # killed mid-epoch
    monkeypatch.setenv("ONETOK_PROBE", str(resumed_probe))
    cli([*overrides(config, data, root), *PROBE, "--ckpt_path=last", f"--trainer.max_steps={saved + 3}",
         "--trainer.logger=false"])
    (start,), after = read_probe(resumed_probe)
    last = torch.load(next(root.rglob("last.ckpt")), map_location="cpu", weights_only=True)
    assert start["start"] == saved and last["global_step"] == saved + 3
    for step in range(saved, saved + 3):
        assert after[step] == before[step], step


def test_a_run_stopped_between_periodic_saves_ends_with_last_ckpt_at_its_final_step(data, tmp_path, caplog):
    root = tmp_path / "run"  # its ModelCheckpoint saves last.ckpt every 2 steps here; the run stops at step 5
    cli([*overrides("ar/shapes.yaml", data, root), "--trainer.max_steps=5",
         "--trainer.callbacks.init_args.every_n_train_steps=2"])
    (last,) = root.rglob("last.ckpt")
    state = torch.load(last, map_location="cpu", weights_only=True)
    assert state["global_step"] == 5 and state["optimizer_states"]  # the whole state: --ckpt_path last resumes it
    assert "weights_only" not in caplog.text  # no puzzling "`weights_only` was not set" line at the end
