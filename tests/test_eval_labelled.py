"""`onetok judge train | eval` and `onetok eval-ar` on labelled img2dataset-style shards (`.tar.gz`, JSON `label`)
and on shards without labels, with a tiny tokenizer, a tiny random unified model and a tiny judge."""

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from onetok.ar_model.model import Transformer, config_from_preset
from onetok.ar_model.unified import UnifiedModel
from onetok.ar_model.vocab import Vocab, WordText
from onetok.scripts.cli import main
from onetok.tokenizers import Tokenizer, preset

LABELS = ("cat", "dog", "ship")


def write_shard(path: Path, n_per_class: int, seed: int, labelled: bool = True) -> None:
    """An img2dataset-style gzip tar: KEY.jpg (16 px, the class's colour + noise), KEY.txt, KEY.json."""
    rng = np.random.default_rng(seed)
    with tarfile.open(path, "w:gz") as tar:
        for i in range(n_per_class * len(LABELS)):
            c = i % len(LABELS)
            array = np.full((16, 16, 3), 60.0)
            array[..., c] = 190
            array = np.clip(array + rng.normal(0, 30, array.shape), 0, 255).astype(np.uint8)
            buf = io.BytesIO()
            Image.fromarray(array).save(buf, format="JPEG", quality=95)
            meta = {"label": LABELS[c], "label_id": c} if labelled else {"source": f"img{i}"}
            for ext, data in (("jpg", buf.getvalue()), ("txt", f"a photo of a {LABELS[c]}".encode()),
                              ("json", json.dumps(meta).encode())):
                info = tarfile.TarInfo(f"{i:05d}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval_labelled")
    for split, n, seed in (("train", 40, 0), ("val", 8, 1)):
        (root / "data" / split).mkdir(parents=True)
        write_shard(root / "data" / split / "00000.tar.gz", n, seed)
    (root / "plain").mkdir()
    write_shard(root / "plain" / "00000.tar.gz", 4, 2, labelled=False)
    torch.manual_seed(0)
    tokenizer = Tokenizer(preset("tiny"))
    vocab = Vocab(tokenizer.codebook_size, WordText(["a", "photo", "of", *LABELS]))
    UnifiedModel(Transformer(config_from_preset("tiny", vocab.size)), vocab, tokenizer).save_pretrained(root / "model")
    tokenizer.save_pretrained(root / "tok")
    assert main(["judge", "train", "--data", str(root / "data"), "--out", str(root / "judge"), "--preset", "tiny",
                 "--epochs", "6", "--batch-size", "16", "--lr", "0.05", "--threads", "1", "--quiet"]) == 0
    return root


def test_judge_train_records_its_val_accuracy(env, capsys):
    meta = json.loads((env / "judge" / "config.json").read_text())
    assert meta["format"] == "onetok-classifier" and tuple(meta["model"]["labels"]) == LABELS
    assert meta["val"]["images"] == 24 and meta["val"]["accuracy"] >= 0.9  # colours: an easy task
    assert main(["judge", "eval", "--judge", str(env / "judge"), "--data", str(env / "data" / "val"),
                 "--tokenizer", str(env / "tok"), "--threads", "1"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("accuracy ") and "on 24 images" in out[0] and "reconstructions (PSNR" in out[1]


def test_eval_ar_on_labelled_shards(env, tmp_path, capsys):
    report_path, grids = tmp_path / "r.json", tmp_path / "grids"
    assert main(["eval-ar", "--model", str(env / "model"), "--data", str(env / "data"), "--judge", str(env / "judge"),
                 "--n", "24", "--per-class", "4", "--batch-size", "6", "--json", str(report_path), "--grids",
                 str(grids), "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert "class accuracy" in out and "class fidelity" in out and "reconstructions: judge accuracy" in out
    report = json.loads(report_path.read_text())
    i2t, t2i = report["image_to_text"], report["text_to_image"]
    assert i2t["n"] == 24 and i2t["labelled"] == 24 and 0 <= i2t["class_accuracy"] <= 1
    assert set(t2i) == {"a photo of a {label}", "{label}"}
    for r in t2i.values():
        assert r["n"] == 12 and r["images"] == 12 and r["pr_real_images"] == 12 and r["real_images"] == 24
        assert set(r["per_class"]) == set(LABELS) and 0 <= r["fidelity"] <= 1
        assert r["frechet"] >= 0 and 0 <= r["precision"] <= 1 and 0 <= r["recall"] <= 1
        assert set(r["diversity"]["per_class"]) == set(LABELS)
    assert report["real"]["judge_accuracy"] >= 0.9 and 0 <= report["reconstructions"]["accuracy"] <= 1
    assert report["judge"] == "classifier"
    with Image.open(grids / "grid_0.png") as grid:  # 3 classes x 4 samples of 16 px, 1 px padding
        assert grid.size == (1 + 4 * 17, 1 + 3 * 17)
    assert (grids / "grid_1.txt").read_text().strip() == "{label}"


def test_eval_ar_on_unlabelled_shards(env, tmp_path, capsys):
    report_path = tmp_path / "r.json"
    assert main(["eval-ar", "--model", str(env / "model"), "--data", str(env / "plain"), "--judge", str(env / "judge"),
                 "--n", "12", "--batch-size", "6", "--json", str(report_path), "--threads", "1"]) == 0
    report = json.loads(report_path.read_text())
    assert "class_accuracy" not in report["image_to_text"] and 0 <= report["image_to_text"]["word_f1"] <= 1
    assert report["text_to_image"]["n"] == 12 and report["text_to_image"]["frechet"] >= 0
    assert "Fréchet distance" in capsys.readouterr().out


@pytest.mark.parametrize("extra, needle", [
    (["--template", "a photo of a"], "--template"),
    (["--template", "a {label} {other}"], "--template"),
    (["--per-class", "0"], "--per-class 0"),
    (["--judge", "/nonexist"], "/nonexist"),
])
def test_eval_ar_refuses_bad_flags(env, capsys, extra, needle):
    assert main(["eval-ar", "--model", str(env / "model"), "--data", str(env / "data"), *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0]


def test_eval_ar_judge_folder_must_be_a_classifier(env, capsys):
    assert main(["eval-ar", "--model", str(env / "model"), "--data", str(env / "data"), "--judge",
                 str(env / "tok"), "--n", "3"]) == 2
    assert "not a classifier folder" in capsys.readouterr().err
