"""One exporter contract for the four trainable systems (onetok/export.py): an existing folder is refused without
force; with force it is replaced, but only when onetok wrote it; an export that fails half-way leaves the old folder
(or nothing) and no temporary folder behind."""

import dataclasses
import importlib

import pytest
import torch

from onetok.ar_model.model import Transformer, config_from_preset
from onetok.ar_model.vocab import Vocab
from onetok.export import EXPORTERS, CheckpointError, export, export_folder
from onetok.fileio import UserError
from onetok.tokenizers import Tokenizer, preset
from onetok.tokenizers.codec.prior import PRESETS as PRIOR_PRESETS
from onetok.tokenizers.codec.prior import TilePrior
from onetok.tokenizers.registry import fingerprint


def _prefixed(module: torch.nn.Module, prefix: str) -> dict:
    return {prefix + k: v for k, v in module.state_dict().items()}


def _checkpoint(system: str, tmp_path) -> dict:
    """A checkpoint dict as that system's on_save_checkpoint writes it, of an untrained tiny model."""
    torch.manual_seed(0)
    tok = Tokenizer(preset("tiny"))
    if system == "tokenizer":
        return {"onetok_system": system, "tokenizer_config": tok.config.to_dict(), "state_dict": _prefixed(tok, "model.")}
    if system == "postfilter":
        tok.add_postfilter(channels=4, layers=2)
        return {"onetok_system": system, "tokenizer_config": tok.config.to_dict(),
                "postfilter": {"channels": 4, "layers": 2}, "state_dict": _prefixed(tok, "model.")}
    if system == "prior":
        prior = TilePrior(PRIOR_PRESETS["tiny"])
        return {"onetok_system": system, "prior_config": prior.config.to_dict(), "tokenizer_fingerprint": None,
                "state_dict": _prefixed(prior, "prior.")}
    tok.save_pretrained(tmp_path / "tok")
    vocab = Vocab(tok.codebook_size)
    transformer = Transformer(config_from_preset("tiny", vocab.size))
    return {"onetok_system": system, "hyper_parameters": {},
            "onetok_ar": {"model_config": dataclasses.asdict(transformer.config), "vocab": vocab.to_dict(),
                          "tokenizer_fingerprint": fingerprint(tok).hex(), "tokenizer_path": str(tmp_path / "tok")},
            "state_dict": _prefixed(transformer, "transformer.")}


def _exporter(system: str):
    return importlib.import_module(EXPORTERS[system]).export_checkpoint


def _leftovers(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


@pytest.mark.parametrize("system", sorted(EXPORTERS))
def test_every_exporter_keeps_the_one_contract(system, tmp_path):
    ckpt, exporter, out = _checkpoint(system, tmp_path), _exporter(system), tmp_path / "out"
    assert exporter(ckpt, out) == out and (out / "config.json").is_file() and (out / "model.safetensors").is_file()
    written = (out / "model.safetensors").stat().st_mtime_ns
    with pytest.raises(UserError, match="already exists"):  # no force: refused, untouched
        exporter(ckpt, out)
    assert (out / "model.safetensors").stat().st_mtime_ns == written
    (out / "model.safetensors").unlink()
    exporter(ckpt, out, force=True)  # force: replaced by a complete folder
    assert (out / "model.safetensors").is_file() and _leftovers(tmp_path) == []
    (out / "notes.txt").write_text("mine")  # a file onetok did not write: never replaced, even with force
    with pytest.raises(UserError, match="did not write"):
        exporter(ckpt, out, force=True)
    assert (out / "notes.txt").read_text() == "mine"
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "config.json").write_text("{}")  # a folder onetok did not write at all
    with pytest.raises(UserError, match="did not write"):
        exporter(ckpt, foreign, force=True)
    assert (foreign / "config.json").read_text() == "{}"


@pytest.mark.parametrize("system", sorted(EXPORTERS))
def test_a_failure_mid_export_leaves_nothing(system, tmp_path, monkeypatch):
    import safetensors.torch

    ckpt, exporter = _checkpoint(system, tmp_path), _exporter(system)

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(safetensors.torch, "save_file", full_disk)
    monkeypatch.setattr(safetensors.torch, "save_model", full_disk)
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(OSError, match="No space"):
        exporter(ckpt, tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no out, no temporary folder


def test_the_folder_is_staged_once_beside_its_place(tmp_path):
    seen = []
    export_folder(tmp_path / "out", lambda folder: seen.append(folder) or (folder / "a").write_text("x"))
    assert len(seen) == 1 and seen[0].parent == tmp_path and seen[0] != tmp_path / "out"
    assert (tmp_path / "out" / "a").read_text() == "x" and not seen[0].exists()


def test_export_says_which_system_wrote_the_folder(tmp_path):
    ckpt = _checkpoint("prior", tmp_path)
    torch.save(ckpt, tmp_path / "prior.ckpt")
    exported = export(tmp_path / "prior.ckpt", tmp_path / "prior")
    assert exported.system == "prior" and not exported.is_tokenizer and exported.path == tmp_path / "prior"
    torch.save({"state_dict": {}}, tmp_path / "foreign.ckpt")
    with pytest.raises(CheckpointError, match="does not say which onetok system"):
        export(tmp_path / "foreign.ckpt", tmp_path / "x")
    with pytest.raises(CheckpointError, match="applies to AR checkpoints only"):
        export(tmp_path / "prior.ckpt", tmp_path / "x", tokenizer=tmp_path / "tok")
    assert not (tmp_path / "x").exists()


def test_ar_export_records_chosen_sampling_settings(tmp_path):
    """The run's settings are the default; those given at export (chosen by a sweep) replace them, one by one."""
    import json

    ckpt = _checkpoint("ar", tmp_path)
    ckpt["hyper_parameters"] = {"sample_cfg": 3.0, "sample_temperature": 1.0}
    torch.save(ckpt, tmp_path / "ar.ckpt")
    export(tmp_path / "ar.ckpt", tmp_path / "run")
    export(tmp_path / "ar.ckpt", tmp_path / "chosen", sampling={"cfg_scale": 5.0, "top_k": 100})
    run = json.loads((tmp_path / "run" / "config.json").read_text())["sampling"]
    chosen = json.loads((tmp_path / "chosen" / "config.json").read_text())["sampling"]
    assert (run["cfg_scale"], run["top_k"]) == (3.0, None)
    assert (chosen["cfg_scale"], chosen["top_k"], chosen["temperature"]) == (5.0, 100, 1.0)
    with pytest.raises(CheckpointError, match="top_k must be >= 1"):
        export(tmp_path / "ar.ckpt", tmp_path / "bad", sampling={"top_k": 0})
    with pytest.raises(CheckpointError, match="apply to AR checkpoints only"):
        export(_prior_ckpt(tmp_path), tmp_path / "x", sampling={"top_k": 5})
    assert not (tmp_path / "bad").exists() and not (tmp_path / "x").exists()


def _prior_ckpt(tmp_path):
    torch.save(_checkpoint("prior", tmp_path), tmp_path / "prior.ckpt")
    return tmp_path / "prior.ckpt"
