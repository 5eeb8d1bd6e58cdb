"""The built-in natural-image unified model (ar_model/pretrained/cifar10): shipped as package data, used by `onetok
sample` and `onetok caption` when --model is left out, through the same UnifiedModel code as any other model."""

import fnmatch
import json

import numpy as np
import pytest
from PIL import Image

from onetok.ar_model.unified import UnifiedModel
from onetok.scripts.cli import main as onetok
from onetok.scripts.cmd_ar import BUILTIN_MODEL

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


@pytest.fixture(scope="module")
def model() -> UnifiedModel:
    return UnifiedModel.from_pretrained(BUILTIN_MODEL)


def test_folder_is_complete_small_and_shipped(setuptools_config):
    files = sorted(p.relative_to(BUILTIN_MODEL).as_posix() for p in BUILTIN_MODEL.rglob("*")
                   if p.is_file() and not p.name.startswith("."))
    assert files == ["README.md", "config.json", "model.safetensors", "text_vocab.model", "text_vocab.words",
                     "tokenizer/config.json", "tokenizer/model.safetensors"]
    weights = sum((BUILTIN_MODEL / f).stat().st_size for f in files if f.endswith(".safetensors"))
    assert weights <= 25 * 2**20
    globs = setuptools_config["package-data"]["onetok.ar_model"]
    for f in files:  # a wheel / non-editable install carries every file
        assert any(fnmatch.fnmatch(f"pretrained/cifar10/{f}", g) for g in globs), f
    sampling = json.loads((BUILTIN_MODEL / "config.json").read_text())["sampling"]
    assert {"cfg_scale", "temperature", "top_k"} <= set(sampling)  # the recommended settings travel with it
    card = (BUILTIN_MODEL / "README.md").read_text()
    assert "CIFAR-10" in card and "Licence" in card


def test_vocabulary_knows_the_classes_and_common_words(model):
    known = set(model.vocab.text.known_words)
    assert set(CLASSES) | {"car", "plane", "aeroplane", "boat", "picture", "image"} <= known
    assert model.vocab.unknown_words("A picture of a horse.") == []
    assert model.vocab.unknown_words("a zebra near the horse") == ["zebra", "near"]
    assert model.tokenizer.image_size == 32


def test_sample_without_model_flag(tmp_path, capsys):
    out = tmp_path / "horses"
    assert onetok(["sample", "--prompt", "a photo of a horse", "-n", "2", "--out", str(out), "--quiet",
                   "--threads", "1"]) == 0
    names = sorted(p.name for p in out.iterdir() if not p.name.startswith("."))
    assert names == ["000.png", "001.png", "grid.png", "samples.jsonl"]
    assert Image.open(out / "000.png").size == (32, 32)
    capsys.readouterr()
    assert onetok(["sample", "--prompt", "a unicorn", "-n", "1", "--out", str(tmp_path / "u"), "--quiet",
                   "--threads", "1"]) == 0
    err = capsys.readouterr().err
    assert "unicorn" in err and "not seen in training" in err  # unseen words warn, and it still draws
    assert (tmp_path / "u" / "000.png").is_file()
    assert onetok(["sample", "--prompt", "  ", "--out", str(tmp_path / "e")]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1 and not (tmp_path / "e").exists()


def test_caption_without_model_flag_any_size(tmp_path, capsys):
    rng = np.random.default_rng(0)
    path = tmp_path / "wide.jpg"
    Image.fromarray(rng.integers(0, 256, (48, 80, 3), dtype=np.uint8)).save(path)
    assert onetok(["caption", str(path), "--threads", "1"]) == 0
    line = capsys.readouterr().out.strip()
    image, caption = line.split("\t")
    assert image == str(path) and caption.strip()
