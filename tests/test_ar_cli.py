"""`onetok tokenize`, `sample`, `caption` and `eval-ar` on a tiny dataset with a tiny random model."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from onetok.ar_model.evaluate import DEFAULT_SETTINGS, attribute_scores, summarize
from onetok.ar_model.model import Transformer, config_from_preset
from onetok.ar_model.tokenize import read_meta
from onetok.ar_model.unified import UnifiedModel
from onetok.ar_model.vocab import Vocab, WordText
from onetok.data.shapes import render, write_shapes_dataset
from onetok.scripts.cli import main
from onetok.tokenizers import Tokenizer, preset

PROMPT = "a large red circle in the center on a black background"


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """Shapes shards, a tiny random tokenizer and a tiny random unified model over the captions' words."""
    root = tmp_path_factory.mktemp("ar_cli")
    write_shapes_dataset(root / "shapes", size=32, train=24, val=10, seed=2, shard_size=100)
    torch.manual_seed(0)
    tokenizer = Tokenizer(preset("tiny"))
    tokenizer.save_pretrained(root / "tok")
    assert main(["tokenize", "--tokenizer", str(root / "tok"), "--data", str(root / "shapes"),
                 "--out", str(root / "tokens"), "--quiet", "--batch-size", "5"]) == 0
    vocab = Vocab(tokenizer.codebook_size, WordText(read_meta(root / "tokens")["words"]))
    transformer = Transformer(config_from_preset("tiny", vocab.size))
    UnifiedModel(transformer, vocab, tokenizer).save_pretrained(root / "model")
    return root


def test_tokenize_layout_and_refusal(setup, capsys):
    root = setup
    assert sorted(p.name for p in (root / "tokens").iterdir()) == [".onetok-output", "meta.json", "train", "val"]
    assert read_meta(root / "tokens")["counts"] == {"train": 24, "val": 10}
    def tokenize(data, out):
        return main(["tokenize", "--tokenizer", str(root / "tok"), "--data", str(data), "--out", str(out), "--quiet"])

    assert tokenize(root / "shapes", root / "tokens") == 2 and "already exists" in capsys.readouterr().err
    # one shard spec (no split folders) -> only OUT/train
    assert tokenize(root / "shapes" / "val", root / "tokens_spec") == 0
    assert read_meta(root / "tokens_spec")["counts"] == {"train": 10}
    assert tokenize(root / "nothing", root / "x") == 2 and not (root / "x").exists()


def test_sample_outputs(setup, tmp_path):
    root = setup
    prompts = tmp_path / "prompts.txt"
    prompts.write_text(f"{PROMPT}\n\na small blue square in the top left on a white background\n")
    out = tmp_path / "s"
    assert main(["sample", "--model", str(root / "model"), "--prompts-file", str(prompts), "-n", "3",
                 "--seed", "5", "--cfg", "2", "--top-k", "10", "--out", str(out)]) == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == [".onetok-output"] + [f"{i:03d}.png" for i in range(6)] + ["grid.png", "samples.jsonl"]
    assert Image.open(out / "000.png").size == (16, 16)  # the tokenizer's native size
    lines = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert [line["file"] for line in lines] == [f"{i:03d}.png" for i in range(6)]
    assert {line["prompt"] for line in lines[3:]} == {"a small blue square in the top left on a white background"}
    assert [line["seed"] for line in lines] == [5, 5, 5, 6, 6, 6]
    first = lines[0]
    assert first["settings"] == {"temperature": DEFAULT_SETTINGS.temperature, "top_k": 10, "top_p": None, "cfg": 2.0,
                                 "image_tokens": 8, "sjd": False, "window": None}
    assert first["forward_passes"] == 8 and first["seconds"] > 0
    # same seed -> same images; --force is needed to replace
    again = tmp_path / "again"
    assert main(["sample", "--model", str(root / "model"), "--prompts-file", str(prompts), "-n", "3", "--seed", "5",
                 "--cfg", "2", "--top-k", "10", "--out", str(again)]) == 0
    assert (again / "004.png").read_bytes() == (out / "004.png").read_bytes()
    assert main(["sample", "--model", str(root / "model"), "--prompt", PROMPT, "--out", str(out)]) == 2


def test_sample_sjd_and_image_tokens(setup, tmp_path):
    root = setup
    out = tmp_path / "sjd"
    assert main(["sample", "--model", str(root / "model"), "--prompt", PROMPT, "-n", "2", "--sjd", "--window", "4",
                 "--image-tokens", "5", "--out", str(out)]) == 0
    line = json.loads((out / "samples.jsonl").read_text().splitlines()[0])
    assert line["settings"]["sjd"] and line["settings"]["window"] == 4 and line["settings"]["image_tokens"] == 5
    assert 1 <= line["forward_passes"] <= 5 and "chains" not in line["settings"]


@pytest.mark.parametrize("bad", [["--prompt", "a zebra"], ["--prompt", PROMPT, "--image-tokens", "99"],
                                 ["--prompt", PROMPT, "--top-p", "1.5"], ["--prompt", PROMPT, "--sjd", "--window", "0"], []])
def test_sample_bad_input_is_one_line_error(setup, tmp_path, capsys, bad):
    assert main(["sample", "--model", str(setup / "model"), *bad, "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("onetok sample: error:") and "\n" not in err
    assert not (tmp_path / "o").exists()


def test_caption_prints_one_line_per_image(setup, tmp_path, capsys):
    paths = []
    for i, color in enumerate(["red", "blue"]):
        attrs = {"size": "large", "color": color, "shape": "circle", "position": "center", "background": "black"}
        paths.append(tmp_path / f"img{i}.png")
        render(attrs, 48).save(paths[-1])  # not the native size: resized on the way in
    assert main(["caption", "--model", str(setup / "model"), *map(str, paths)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split("\t")[0] for line in lines] == [str(p) for p in paths]
    assert all(len(line.split("\t")) == 2 for line in lines)
    (tmp_path / "bad.png").write_bytes(b"not an image")
    assert main(["caption", "--model", str(setup / "model"), str(tmp_path / "bad.png")]) == 2


@pytest.mark.parametrize("data", ["shapes/val", "shapes", "tokens"])
def test_eval_ar_json(setup, tmp_path, data):
    out = tmp_path / "m.json"
    assert main(["eval-ar", "--model", str(setup / "model"), "--data", str(setup / data), "--n", "6",
                 "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["text_to_image"]["n"] == 6 and report["image_to_text"]["n"] == 6
    assert set(report["text_to_image"]["per_attribute"]) == {"size", "color", "shape", "position", "background"}
    assert report["settings"]["cfg"] == DEFAULT_SETTINGS.cfg_scale
    assert main(["eval-ar", "--model", str(setup / "model"), "--data", str(setup / data), "--json", str(out)]) == 2


def test_attribute_scores_judge_pixels():
    attrs = {"size": "small", "color": "green", "shape": "triangle", "position": "top right", "background": "gray"}
    image = torch.from_numpy(np.asarray(render(attrs, 32))).permute(2, 0, 1)[None].float() / 255
    right = "a small green triangle in the top right on a gray background"
    wrong = "a small green square in the top right on a white background"
    scores = attribute_scores([right, wrong], image.repeat(2, 1, 1, 1))
    assert all(scores[0].values())
    assert scores[1] == {"size": True, "color": True, "shape": False, "position": True, "background": False}
    assert summarize(scores)["exact"] == 0.5 and summarize(scores)["per_attribute"]["shape"] == 0.5


def test_eval_ar_reports_holdout(tmp_path):
    root = Path(tmp_path)
    write_shapes_dataset(root / "held", size=32, train=4, val=6, seed=0, holdout=0.1)
    torch.manual_seed(0)
    tokenizer = Tokenizer(preset("tiny"))
    words = sorted({w for p in [PROMPT] for w in p.split()} | {
        "small", "large", "red", "green", "blue", "yellow", "purple", "orange", "circle", "square", "triangle", "top",
        "bottom", "left", "right", "center", "white", "gray"})
    vocab = Vocab(tokenizer.codebook_size, WordText(words))
    UnifiedModel(Transformer(config_from_preset("tiny", vocab.size)), vocab, tokenizer).save_pretrained(root / "m")
    assert main(["eval-ar", "--model", str(root / "m"), "--data", str(root / "held"), "--n", "6", "--json",
                 str(root / "r.json")]) == 0
    report = json.loads((root / "r.json").read_text())
    assert report["text_to_image"]["holdout"]["n"] == 6 and report["image_to_text"]["holdout"]["n"] == 6


def test_no_sjd_chains_option():
    """Multi-chain SJD was removed (it lost to one chain in wall clock in every measured case: docs/sjd.md)."""
    from onetok.scripts.cli import build_parser

    for parse, args in ((build_parser().parse_args, ["bench", "sjd", "--model", "m", "--chains", "2"]),
                        (build_parser().parse_args, ["sample", "--model", "m", "--out", "o", "--chains", "2"])):
        with pytest.raises(SystemExit):
            parse(args)
