"""AR checkpoints on another machine: they carry the model config and the tokenizer's fingerprint; export and
resume find the tokenizer by fingerprint (registry $ONETOK_HOME/tokenizers, or a given path) and refuse another."""

import shutil
import sys
from pathlib import Path

import pytest
import torch

from onetok.ar_model.system import export_checkpoint
from onetok.ar_model.tokenize import tokenize_dataset
from onetok.ar_model.unified import UnifiedModel
from onetok.data.shapes import write_shapes_dataset
from onetok.scripts.cli import main as onetok
from onetok.tokenizers import Tokenizer, preset
from onetok.tokenizers.registry import find_tokenizer, fingerprint

REPO = Path(__file__).resolve().parents[1]


def fit(tokens: Path, root: Path, *extra: str) -> int:
    from onetok.scripts.train import main

    args = ["fit", "--config", str(REPO / "configs/ar/shapes.yaml"), "--model.init_args.preset=tiny",
            "--model.init_args.model_overrides={}", "--model.init_args.eval_samples=0", f"--data.init_args.tokens={tokens}",
            "--data.init_args.batch_size=8", "--trainer.enable_progress_bar=false", "--trainer.logger=false",
            "--trainer.max_time=null", f"--trainer.default_root_dir={root}", "--trainer.max_steps=3", *extra]
    argv, sys.argv = sys.argv, ["onetok-train", *args]
    try:
        return main(args)
    finally:
        sys.argv = argv


@pytest.fixture()
def machine(tmp_path, monkeypatch):
    """A trained checkpoint whose tokenizer then "moves": its training path is gone, a copy sits in the registry."""
    write_shapes_dataset(tmp_path / "shapes", size=16, train=32, val=8, seed=2, shard_size=100)
    torch.manual_seed(0)
    Tokenizer(preset("tiny")).save_pretrained(tmp_path / "tok")
    tokenize_dataset(tmp_path / "tok", str(tmp_path / "shapes"), tmp_path / "tokens")
    assert fit(tmp_path / "tokens", tmp_path / "run") == 0
    ckpt_path = next((tmp_path / "run").rglob("last.ckpt"))
    monkeypatch.setenv("ONETOK_HOME", str(tmp_path / "home"))
    (tmp_path / "home" / "tokenizers").mkdir(parents=True)
    shutil.move(tmp_path / "tok", tmp_path / "home" / "tokenizers" / "shapes-tiny")
    return tmp_path, ckpt_path


def test_checkpoint_carries_config_and_fingerprint(machine):
    root, ckpt_path = machine
    stored = torch.load(ckpt_path, map_location="cpu", weights_only=True)["onetok_ar"]
    tokenizer = Tokenizer.from_pretrained(root / "home" / "tokenizers" / "shapes-tiny")
    assert stored["tokenizer_fingerprint"] == fingerprint(tokenizer).hex()
    assert stored["model_config"]["dim"] == 32 and stored["vocab"]["codebook_size"] == 64


def test_export_finds_the_tokenizer_by_fingerprint(machine, capsys):
    root, ckpt_path = machine
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    model = UnifiedModel.from_pretrained(export_checkpoint(ckpt, root / "unified"))
    registered = root / "home" / "tokenizers" / "shapes-tiny"
    assert fingerprint(model.tokenizer) == fingerprint(Tokenizer.from_pretrained(registered))
    assert find_tokenizer(ckpt["onetok_ar"]["tokenizer_fingerprint"]) == registered.resolve()
    # a given directory must be the same tokenizer
    torch.manual_seed(1)
    Tokenizer(preset("tiny")).save_pretrained(root / "other")
    with pytest.raises(ValueError, match="made with tokenizer"):
        export_checkpoint(ckpt, root / "x", tokenizer=root / "other")
    assert onetok(["export", str(ckpt_path), "--out", str(root / "x"), "--tokenizer", str(root / "other")]) == 2
    assert "made with tokenizer" in capsys.readouterr().err and not (root / "x").exists()
    # nowhere to be found: a clear error naming where it looked
    shutil.rmtree(root / "home")
    with pytest.raises(FileNotFoundError, match="not found .* pass its directory"):
        export_checkpoint(ckpt, root / "x")


def test_resume_on_another_machine_and_refuse_another_tokenizer(machine, capsys):
    root, ckpt_path = machine
    assert fit(root / "tokens", root / "run2", f"--ckpt_path={ckpt_path}", "--trainer.max_steps=5") == 0
    resumed = torch.load(next((root / "run2").rglob("last.ckpt")), map_location="cpu", weights_only=True)
    assert resumed["global_step"] == 5
    assert Path(resumed["onetok_ar"]["tokenizer_path"]) == (root / "home" / "tokenizers" / "shapes-tiny").resolve()
    # token shards of another tokenizer (same codebook size): resuming on them is refused
    torch.manual_seed(1)
    Tokenizer(preset("tiny")).save_pretrained(root / "other")
    tokenize_dataset(root / "other", str(root / "shapes"), root / "other_tokens")
    capsys.readouterr()
    assert fit(root / "other_tokens", root / "run3", f"--ckpt_path={ckpt_path}", "--trainer.max_steps=5") == 2
    assert "trained on the codes of tokenizer" in capsys.readouterr().err


def test_export_saves_the_runs_sampling_settings_as_the_models_recommended(machine):
    from onetok.ar_model.generate import DEFAULT_SETTINGS, SamplingSettings

    root, ckpt_path = machine
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    ckpt["hyper_parameters"] = {**ckpt["hyper_parameters"], "sample_cfg": 3.5, "sample_temperature": 0.4}
    model = UnifiedModel.from_pretrained(export_checkpoint(ckpt, root / "unified"))
    assert model.settings == SamplingSettings(temperature=0.4, cfg_scale=3.5)
    model.settings = DEFAULT_SETTINGS
    assert UnifiedModel.from_pretrained(model.save_pretrained(root / "again")).settings == DEFAULT_SETTINGS
