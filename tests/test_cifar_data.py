"""Labelled natural-image data (CIFAR-10's layout): gzip-compressed shards, caption templates, flipped token copies,
and a text vocabulary that names a prompt's unseen words."""

import gzip
import json
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from onetok.ar_model.captions import CaptionTemplates, article, templates_from_yaml
from onetok.ar_model.data import ARDataModule, RowText, TrainSequences, ValSequences
from onetok.ar_model.sequence import I2T, T2I, SequenceBuilder, TextEncoder
from onetok.ar_model.tokenize import iter_token_samples, tokenize_dataset
from onetok.ar_model.vocab import SentencePieceText, Vocab, train_sentencepiece
from onetok.data.shards import ShardWriter, encode_png, expand_shards, iter_samples
from onetok.scripts.cli import main as onetok
from onetok.tokenizers import Tokenizer, preset

REPO = Path(__file__).resolve().parents[1]
LABELS = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def _write_cifar_like(folder: Path, n: int, seed: int, gz: bool = True) -> None:
    """img2dataset-style shards of n random 16 px images labelled like CIFAR-10 (`KEY.jpg`, `.txt`, `.json`)."""
    rng = np.random.default_rng(seed)
    with ShardWriter(folder, shard_size=max(1, n // 2)) as writer:
        for i in range(n):
            label = LABELS[i % len(LABELS)]
            image = Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8))
            writer.write(f"{folder.name}_{i:04d}", {
                "jpg": encode_png(image), "txt": f"a photo of a {label}".encode(),
                "json": json.dumps({"label": label, "label_id": i % len(LABELS)}).encode()})
    if gz:  # as CIFAR-10 ships: NNNNN.tar.gz
        for tar in sorted(folder.glob("*.tar")):
            with open(tar, "rb") as src, gzip.open(tar.with_name(tar.name + ".gz"), "wb") as dst:
                shutil.copyfileobj(src, dst)
            tar.unlink()


@pytest.fixture(scope="module")
def cifar(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cifar_like")
    _write_cifar_like(root / "data" / "train", 20, seed=0)
    _write_cifar_like(root / "data" / "val", 10, seed=1)
    return root


TEMPLATES = CaptionTemplates(["{c}", "a picture of {a} {c}", "an image of the {c}"],
                             names={"automobile": ["automobile", "car"], "ship": ["ship", "boat"]})


def test_gz_shards_are_globbed_and_read(cifar):
    train = cifar / "data" / "train"
    assert [Path(p).name for p in expand_shards(train)] == ["000000.tar.gz", "000001.tar.gz"]
    samples = list(iter_samples(train))
    assert len(samples) == 20 and samples[3]["json"]["label"] == "cat" and samples[3]["caption"] == "a photo of a cat"
    assert samples[0]["image"].size == (16, 16)


def test_templates_draw_names_and_variants():
    rng = random.Random(0)
    drawn = [TEMPLATES.draw({"label": "automobile"}, "ignored", rng) for _ in range(200)]
    plain = {d.lower().rstrip(".") for d in drawn}
    assert plain == {"automobile", "car", "a picture of an automobile", "a picture of a car",
                     "an image of the automobile", "an image of the car"}
    assert any(d[0].isupper() for d in drawn) and any(d.endswith(".") for d in drawn)
    assert drawn == [TEMPLATES.draw({"label": "automobile"}, "x", r) for r in [random.Random(0)] for _ in range(200)]
    assert TEMPLATES.canonical({"label": "airplane"}, "x") == "a photo of an airplane"
    assert TEMPLATES.draw({}, "a red circle", rng) == "a red circle"  # no label: the shard caption as it is
    assert TEMPLATES.canonical({"colour": "red"}, "a red circle") == "a red circle"
    assert article("horse") == "a" and article("owl") == "an"


def test_templates_refuse_bad_input():
    with pytest.raises(ValueError, match="no {c}"):
        CaptionTemplates(["a photo"])
    with pytest.raises(ValueError, match="only {c} and {a}"):
        CaptionTemplates(["{c} {colour}"])
    with pytest.raises(ValueError, match="at least one template"):
        CaptionTemplates([])
    with pytest.raises(ValueError, match="unknown key"):
        CaptionTemplates.from_dict({"templates": ["{c}"], "synonyms": {}})
    with pytest.raises(ValueError, match="no caption templates"):
        templates_from_yaml("trainer: {max_steps: 3}\n")


def test_cifar_config_templates_cover_every_class_and_common_words():
    templates = templates_from_yaml((REPO / "configs" / "ar" / "cifar10.yaml").read_text())
    assert set(templates.names) == set(LABELS)
    texts = {t.lower() for t in templates.expand(LABELS)}
    for text in ("horse", "a horse", "a picture of a horse.", "an image of the horse", "a car", "a plane",
                 "an aeroplane", "a boat", "a photo of an automobile"):
        assert text in texts, text


def test_rows_draw_templates_for_t2i_and_the_canonical_caption_for_i2t():
    vocab = Vocab(16)  # byte text
    text = RowText(TextEncoder(vocab), TEMPLATES)
    seen = {T2I: set(), I2T: set()}
    codes = torch.zeros(4, 3, dtype=torch.int16)
    from onetok.ar_model.data import TokenPairs

    pairs = TokenPairs(codes, ["a photo of a ship"] * 4, [{"label": "ship"}] * 4, ["k0", "k1", "k2", "k3"])
    dataset = TrainSequences(pairs, TextEncoder(vocab), SequenceBuilder(vocab, 0.5, 0.0), seed=0, templates=TEMPLATES)
    for epoch in range(40):
        for i in range(4):
            example = dataset[(epoch, i)].example
            ids = example.ids[1:example.image_at - 1] if example.task == T2I else example.ids[6:]
            seen[example.task].add(vocab.decode_text(ids))
    assert seen[I2T] == {"a photo of a ship"}
    assert len(seen[T2I]) > 4 and {s.lower().rstrip(".") for s in seen[T2I]} <= {
        "ship", "boat", "a picture of a ship", "a picture of a boat", "an image of the ship", "an image of the boat"}
    val = ValSequences(pairs, TextEncoder(vocab), TEMPLATES)
    assert vocab.decode_text(val[0].example.ids[1:val[0].example.image_at - 1]) == "a photo of a ship"
    assert text("x", {"label": "ship"}, random.Random(1))[1] == vocab.encode_text("a photo of a ship")


def test_tokenize_flip_adds_mirrored_training_copies(cifar, tmp_path):
    torch.manual_seed(0)
    Tokenizer(preset("tiny")).save_pretrained(tmp_path / "tok")
    summary = tokenize_dataset(tmp_path / "tok", str(cifar / "data"), tmp_path / "tokens", flip=True)
    assert summary.counts == {"train": 40, "val": 10} and summary.meta["flipped"] == ["train"]
    train = list(iter_token_samples(tmp_path / "tokens" / "train"))
    assert [s["key"] for s in train[:2]] == ["train_0000", "train_0000_flip"]
    assert train[1]["json"] == train[0]["json"] and train[1]["caption"] == train[0]["caption"]
    tokenizer = Tokenizer.from_pretrained(tmp_path / "tok")
    image = next(iter(iter_samples(cifar / "data" / "train")))["image"]
    mirrored = torch.from_numpy(np.array(image.transpose(Image.Transpose.FLIP_LEFT_RIGHT))).permute(2, 0, 1)
    assert torch.equal(tokenizer.encode(mirrored[None].float() / 255)[0], torch.from_numpy(train[1]["codes"]))
    assert all(not s["key"].endswith("_flip") for s in iter_token_samples(tmp_path / "tokens" / "val"))


def test_sentencepiece_names_unseen_words(tmp_path):
    text = train_sentencepiece(["a photo of a horse", "A picture of a car.", "an image of the boat"] * 20, 300)
    assert text.known_words == sorted({"a", "photo", "of", "horse", "picture", "car", "an", "image", "the", "boat"})
    assert text.unknown_words("A photo of a Zebra, zebra and a unicorn!") == ["zebra", "and", "unicorn"]
    assert text.unknown_words("a horse.") == []
    text.save(tmp_path / "text_vocab.model")
    again = SentencePieceText.load(tmp_path)
    assert again.known_words == text.known_words and again.sha256() == text.sha256()
    assert Vocab(8, again).unknown_words("a cow") == ["cow"] and Vocab(8).unknown_words("a cow") == []


def test_text_vocab_cli_learns_the_template_captions(cifar, tmp_path):
    config = tmp_path / "captions.yaml"
    config.write_text("data:\n  init_args:\n    captions:\n      templates: ['{c}', 'a picture of {a} {c}']\n"
                      "      names: {automobile: [automobile, car]}\n")
    out = tmp_path / "vocab"
    assert onetok(["text-vocab", "train", "--captions", str(cifar / "data"), "--templates", str(config),
                   "--size", "300", "--out", str(out), "--quiet"]) == 0
    known = SentencePieceText.load(out).known_words
    assert {"car", "picture", "automobile", "horse"} <= set(known)
    bad = tmp_path / "bad.yaml"
    bad.write_text("templates: ['a photo']\n")
    assert onetok(["text-vocab", "train", "--captions", str(cifar / "data"), "--templates", str(bad), "--size", "300",
                   "--out", str(tmp_path / "vocab2"), "--quiet"]) == 2
    assert not (tmp_path / "vocab2").exists()


def test_datamodule_with_templates_and_word_text(cifar, tmp_path):
    torch.manual_seed(0)
    Tokenizer(preset("tiny")).save_pretrained(tmp_path / "tok")
    tokenize_dataset(tmp_path / "tok", str(cifar / "data"), tmp_path / "tokens")
    captions = {"templates": ["{c}", "a picture of {a} {c}"], "names": {label: [label] for label in LABELS}}
    dm = ARDataModule(tokens=str(tmp_path / "tokens"), text="words", captions=captions, batch_size=4)
    dm.setup("fit")
    assert {"picture", "A", "horse."} <= set(dm.vocab.text.words)  # template words and variants are in the list
    batch = next(iter(dm.train_dataloader()))
    assert batch["ids"].shape[0] == 4


def test_i2t_weight_must_be_positive():
    from onetok.ar_model.system import ARSystem

    with pytest.raises(ValueError, match="i2t_weight"):
        ARSystem(preset="tiny", i2t_weight=0.0)
