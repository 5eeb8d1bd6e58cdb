"""The sentencepiece text vocabulary: training from captions, round trips, the CLI, and a unified model with it."""

import json
import pickle
import sys
from pathlib import Path

import pytest
import torch

from onetok.ar_model.tokenize import tokenize_dataset
from onetok.ar_model.unified import UnifiedModel
from onetok.ar_model.vocab import (
    SPM_FILE,
    WORDS_FILE,
    SentencePieceText,
    Vocab,
    text_vocab_from_dict,
    train_sentencepiece,
)
from onetok.data.shapes import write_shapes_dataset
from onetok.scripts.cli import main as onetok
from onetok.tokenizers import Tokenizer, preset

REPO = Path(__file__).resolve().parents[1]
PROMPT = "a large red circle in the center on a black background"


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("text_vocab")
    write_shapes_dataset(root / "shapes", size=16, train=200, val=8, seed=6, shard_size=100)
    return root


def captions(root: Path) -> list[str]:
    from onetok.ar_model.captions import caption_shards, iter_captions

    return list(iter_captions(caption_shards(str(root / "shapes"))))


@pytest.mark.parametrize("model_type", ["bpe", "unigram"])
def test_round_trip_any_text(shapes, model_type):
    text = train_sentencepiece(captions(shapes), 300, model_type)
    assert 280 <= text.size <= 300
    for s in [*captions(shapes)[:20], "héllo wörld ✓ 123", "  two  spaces ", "", "UNSEEN zebra!"]:
        assert text.decode(text.encode(s)) == s
    assert len(text.encode(PROMPT)) < len(PROMPT.encode())  # merges: fewer tokens than bytes
    again = text_vocab_from_dict(json.loads(json.dumps(text.to_dict())))  # through JSON (hparams, checkpoints)
    assert again.encode(PROMPT) == text.encode(PROMPT) and again.sha256() == text.sha256()
    assert pickle.loads(pickle.dumps(text)).encode(PROMPT) == text.encode(PROMPT)  # loader workers
    vocab = Vocab(64, text)
    assert Vocab.from_dict(vocab.to_dict()) == vocab
    assert vocab.decode_text(vocab.encode_text(PROMPT) + [vocab.eos_id]) == PROMPT


def test_cli_trains_one_model_file(shapes, capsys):
    out = shapes / "vocab_cli"
    assert onetok(["text-vocab", "train", "--captions", str(shapes / "shapes"), "--size", "300", "--out", str(out),
                   "--quiet"]) == 0
    summary = capsys.readouterr().out
    assert "vocabulary of 300 pieces from 200 captions" in summary and "tokens per caption vs" in summary
    assert sorted(p.name for p in out.iterdir() if p.name[0] != ".") == [SPM_FILE, WORDS_FILE]  # model, words
    assert SentencePieceText.load(out).size == 300
    assert SentencePieceText.load(out).known_words == sorted({w for c in captions(shapes) for w in c.lower().split()})
    assert onetok(["text-vocab", "train", "--captions", str(shapes / "shapes"), "--size", "300", "--out", str(out),
                   "--quiet"]) == 2  # exists, no --force
    assert onetok(["text-vocab", "train", "--captions", str(shapes / "shapes"), "--size", "50", "--out",
                   str(shapes / "small"), "--quiet"]) == 2
    assert "needs at least" in capsys.readouterr().err and not (shapes / "small").exists()


def test_unified_model_trains_and_samples_with_sentencepiece(shapes, tmp_path):
    from onetok.scripts.train import main as train

    vocab_dir = tmp_path / "vocab"
    assert onetok(["text-vocab", "train", "--captions", str(shapes / "shapes"), "--size", "300", "--out",
                   str(vocab_dir), "--quiet"]) == 0
    torch.manual_seed(0)
    Tokenizer(preset("tiny")).save_pretrained(tmp_path / "tok")
    tokenize_dataset(tmp_path / "tok", str(shapes / "shapes"), tmp_path / "tokens")
    args = ["fit", "--config", str(REPO / "configs/ar/shapes.yaml"), "--model.init_args.preset=tiny",
            "--model.init_args.model_overrides={}", "--model.init_args.eval_samples=2",
            f"--data.init_args.tokens={tmp_path / 'tokens'}", "--data.init_args.text=sentencepiece",
            f"--data.init_args.text_vocab={vocab_dir}", "--data.init_args.batch_size=8",
            "--trainer.max_steps=4", "--trainer.val_check_interval=4", "--trainer.logger=false",
            "--trainer.enable_progress_bar=false", "--trainer.max_time=null",
            f"--trainer.default_root_dir={tmp_path / 'run'}"]
    argv, sys.argv = sys.argv, ["onetok-train", *args]
    try:
        train(args)
    finally:
        sys.argv = argv
    ckpt = next((tmp_path / "run").rglob("last.ckpt"))
    assert onetok(["export", str(ckpt), "--out", str(tmp_path / "unified")]) == 0
    assert (tmp_path / "unified" / SPM_FILE).read_bytes() == (vocab_dir / SPM_FILE).read_bytes()
    config = json.loads((tmp_path / "unified" / "config.json").read_text())
    assert config["vocab"]["text"] == {"kind": "sentencepiece", "file": SPM_FILE,
                                       "sha256": SentencePieceText.load(vocab_dir).sha256()}
    model = UnifiedModel.from_pretrained(tmp_path / "unified")
    assert isinstance(model.vocab.text, SentencePieceText) and model.vocab.text.size == 300
    result = model.generate_images([PROMPT, "an unseen prompt ✓"], n_per_prompt=1)
    assert result.images.shape == (2, 3, 16, 16)
    captions = model.caption(result.images)  # greedy: fixed by the folder's weights and sentencepiece model
    assert UnifiedModel.from_pretrained(tmp_path / "unified").caption(result.images) == captions
    assert all(model.vocab.text.decode(model.vocab.text.encode(c)) == c for c in captions)  # this vocabulary's text
