"""AR training data: sequence layout and loss masks, condition dropout, padding, token shards, ARDataModule."""

import io
import pickle
import random

import numpy as np
import pytest
import torch

from onetok.ar_model.data import ARDataModule
from onetok.ar_model.sequence import (
    I2T,
    IGNORE,
    T2I,
    Collate,
    SequenceBuilder,
    collate_examples,
    i2t_example,
    t2i_example,
)
from onetok.ar_model.tokenize import encode_codes, iter_token_samples, read_meta, tokenize_dataset
from onetok.ar_model.vocab import ByteText, Vocab, WordText
from onetok.data.shapes import write_shapes_dataset
from onetok.tokenizers import Tokenizer, preset
from onetok.tokenizers.registry import fingerprint_dir


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny shapes dataset, a random tiny tokenizer and the token folder made from them."""
    root = tmp_path_factory.mktemp("ar_data")
    write_shapes_dataset(root / "shapes", size=32, train=40, val=12, seed=3, shard_size=16)
    torch.manual_seed(0)
    tokenizer = Tokenizer(preset("tiny"))
    tokenizer.save_pretrained(root / "tok")
    summary = tokenize_dataset(root / "tok", str(root / "shapes"), root / "tokens", batch_size=7, shard_size=10)
    return root, summary


VOCAB = Vocab(codebook_size=10, text=WordText(["a", "red", "circle"]))


def test_t2i_layout_and_loss_mask():
    text, codes = VOCAB.encode_text("a red circle"), [3, 0, 9]
    e = t2i_example(VOCAB, text, codes)
    img = [VOCAB.image_offset + c for c in codes]
    full = [VOCAB.bos_id, *text, VOCAB.boi_id, *img, VOCAB.eoi_id, VOCAB.eos_id]
    assert e.ids == full[:-1] and e.task == T2I
    assert len(e.targets) == len(e.ids)
    # the loss covers exactly the image codes, <eoi> and <eos>, each predicted from the position before it
    labelled = [(t, e.ids[i]) for i, t in enumerate(e.targets) if t != IGNORE]
    assert [t for t, _ in labelled] == [*img, VOCAB.eoi_id, VOCAB.eos_id]
    assert labelled[0][1] == VOCAB.boi_id
    assert all(e.targets[i] == full[i + 1] for i in range(len(e.ids)) if e.targets[i] != IGNORE)


def test_i2t_layout_and_loss_mask():
    text, codes = VOCAB.encode_text("a red circle"), [1, 2, 3]
    e = i2t_example(VOCAB, text, codes)
    img = [VOCAB.image_offset + c for c in codes]
    assert e.ids == [VOCAB.bos_id, VOCAB.boi_id, *img, VOCAB.eoi_id, *text] and e.task == I2T
    labelled = [(t, e.ids[i]) for i, t in enumerate(e.targets) if t != IGNORE]
    assert [t for t, _ in labelled] == [*text, VOCAB.eos_id]  # text and <eos> only, never image codes
    assert labelled[0][1] == VOCAB.eoi_id


def test_null_condition_replaces_caption():
    e = t2i_example(VOCAB, VOCAB.encode_text("a red circle"), [4, 5], null=True)
    assert e.ids[:3] == [VOCAB.bos_id, VOCAB.null_id, VOCAB.boi_id]
    assert not set(VOCAB.encode_text("a red circle")) & set(e.ids)
    assert sum(t != IGNORE for t in e.targets) == 2 + 2


@pytest.mark.parametrize("ratio,dropout", [(0.5, 0.1), (0.8, 0.3), (1.0, 0.0), (0.0, 0.5)])
def test_task_mix_and_condition_dropout_rates(ratio, dropout):
    builder = SequenceBuilder(VOCAB, t2i_ratio=ratio, cond_dropout=dropout)
    rng = random.Random(0)
    rows = [builder(VOCAB.encode_text("a red circle"), [1, 2], rng) for _ in range(4000)]
    t2i = [r for r in rows if r.task == T2I]
    assert abs(len(t2i) / len(rows) - ratio) < 0.03
    nulls = sum(r.ids[1] == VOCAB.null_id for r in t2i)
    assert all(r.ids[1] != VOCAB.null_id for r in rows if r.task == I2T)  # only t2i rows are dropped
    if t2i:
        assert abs(nulls / len(t2i) - dropout) < 0.04


def test_collate_pads_right_with_ignored_targets():
    a = t2i_example(VOCAB, VOCAB.encode_text("a red circle"), [1, 2, 3])
    b = t2i_example(VOCAB, [], [1, 2, 3], null=True)
    batch = collate_examples([a, b], VOCAB.pad_id)
    T = len(a.ids)
    assert batch["ids"].shape == batch["targets"].shape == (2, T)
    assert batch["task"].tolist() == [T2I, T2I]
    pad = T - len(b.ids)
    assert pad == 2 and (batch["ids"][1, -pad:] == VOCAB.pad_id).all()
    assert (batch["targets"][1, -pad:] == IGNORE).all()
    assert batch["ids"][1, : len(b.ids)].tolist() == b.ids


def test_codes_npy_dtype():
    small = np.load(io.BytesIO(encode_codes(np.array([0, 5, 32767]))))
    big = np.load(io.BytesIO(encode_codes(np.array([0, 65535]))))
    assert small.dtype == np.int16 and big.dtype == np.int32 and big.tolist() == [0, 65535]


def test_decode_codes_matches_numpy():
    from onetok.ar_model.tokenize import decode_codes

    for codes in (np.array([0, 5, 32767]), np.array([0, 65535]), np.arange(200) % 4096, np.zeros(0, dtype=np.int64)):
        data = encode_codes(codes)
        assert np.array_equal(decode_codes(data), np.load(io.BytesIO(data))) and decode_codes(data).dtype == np.int64


def test_token_shards_round_trip(tiny):
    root, summary = tiny
    assert summary.counts == {"train": 40, "val": 12}
    assert sorted(p.name for p in (root / "tokens" / "train").glob("*.tar")) == ["000000.tar", "000001.tar",
                                                                                 "000002.tar", "000003.tar"]
    meta = read_meta(root / "tokens")
    tokenizer = Tokenizer.from_pretrained(root / "tok")
    assert meta["num_latent_tokens"] == tokenizer.num_latent_tokens and meta["codebook_size"] == 64
    assert meta["tokenizer"]["fingerprint"] == fingerprint_dir(root / "tok")
    tokenizer.save_pretrained(root / "tok_copy")  # a re-saved copy has the same fingerprint
    assert fingerprint_dir(root / "tok_copy") == fingerprint_dir(root / "tok")
    from onetok.data.pixels import from_hwc
    from onetok.data.shards import iter_samples

    raw = list(iter_samples(root / "shapes" / "val", size=tokenizer.image_size))
    tokens = list(iter_token_samples(root / "tokens" / "val"))
    assert [t["key"] for t in tokens] == [r["key"] for r in raw]
    assert [t["caption"] for t in tokens] == [r["caption"] for r in raw]
    assert [t["json"] for t in tokens] == [r["json"] for r in raw]
    codes = tokenizer.encode(from_hwc([r["image"] for r in raw]))
    assert torch.equal(torch.as_tensor(np.stack([t["codes"] for t in tokens])), codes)
    words = set(meta["words"])
    assert all(set(r["caption"].split()) <= words for r in raw)


def test_datamodule_from_tokens(tiny):
    root, _ = tiny
    dm = ARDataModule(tokens=str(root / "tokens"), batch_size=8, val_batch_size=5, t2i_ratio=0.5)
    dm.setup("fit")
    assert isinstance(dm.vocab.text, WordText) and dm.vocab.codebook_size == 64
    assert dm.tokenizer_dir == str((root / "tok").resolve())
    batch = next(iter(dm.train_dataloader()))
    assert batch["ids"].shape[0] == 8 and batch["ids"].shape == batch["targets"].shape
    assert len(dm.train_dataloader()) == 40 // 8
    val = list(dm.val_dataloader())
    tasks = torch.cat([b["task"] for b in val])
    assert len(tasks) == 24 and (tasks == T2I).sum() == 12  # every val image once per task
    assert all(((b["ids"] == dm.vocab.null_id).sum() == 0) for b in val)  # no dropout at validation


def test_datamodule_from_raw_images_matches_tokens(tiny):
    root, _ = tiny
    from_tokens = ARDataModule(tokens=str(root / "tokens"))
    from_images = ARDataModule(images=str(root / "shapes"), tokenizer=str(root / "tok"))
    for dm in (from_tokens, from_images):
        dm.setup("fit")
    assert from_images.vocab == from_tokens.vocab
    assert torch.equal(from_images.train_pairs.codes, from_tokens.train_pairs.codes)
    assert from_images.val_pairs.captions == from_tokens.val_pairs.captions
    streamed = ARDataModule(images=str(root / "shapes"), tokenizer=str(root / "tok"), in_memory=False,
                            batch_size=6, text="bytes", shuffle_buffer=8)
    streamed.setup("fit")
    assert isinstance(streamed.vocab.text, ByteText)
    batches = list(streamed.train_dataloader())
    assert len(batches) == 40 // 6 and all(b["ids"].shape[0] == 6 for b in batches)


def test_datamodule_rejects_other_tokenizer(tiny, tmp_path):
    root, _ = tiny
    torch.manual_seed(1)
    Tokenizer(preset("tiny")).save_pretrained(tmp_path / "other")
    dm = ARDataModule(tokens=str(root / "tokens"), tokenizer=str(tmp_path / "other"))
    with pytest.raises(ValueError, match="another tokenizer"):
        _ = dm.vocab
    with pytest.raises(ValueError, match="exactly one"):
        ARDataModule()
    missing = ARDataModule(tokens=str(tmp_path))  # configs instantiate without data; the folder is checked at use
    with pytest.raises(FileNotFoundError, match="not a token folder"):
        _ = missing.vocab


def test_collate_is_picklable_for_loader_workers():
    assert pickle.loads(pickle.dumps(Collate(3))).pad_id == 3
