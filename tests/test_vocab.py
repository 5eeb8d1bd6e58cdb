"""The shared vocabulary: id layout, text and image round trips, masks, serialisation."""

import json

import pytest
import torch

from onetok.ar_model.vocab import SPECIALS, ByteText, Vocab, WordText


def test_layout_and_specials():
    vocab = Vocab(codebook_size=10)
    assert [vocab.pad_id, vocab.bos_id, vocab.eos_id, vocab.boi_id, vocab.eoi_id, vocab.null_id] == list(range(6))
    assert len(SPECIALS) == 6
    assert vocab.image_offset == 6 + 256 and vocab.size == 6 + 256 + 10 and vocab.codebook_size == 10


@pytest.mark.parametrize("text", ["a small red circle", "", "ünïcode ✓ and spaces  "])
def test_byte_text_round_trip(text):
    vocab = Vocab(codebook_size=4)
    ids = vocab.encode_text(text)
    assert all(vocab.text_offset <= i < vocab.image_offset for i in ids)
    assert vocab.decode_text(ids) == text


def test_decode_stops_at_eos_and_skips_specials_and_image_ids():
    vocab = Vocab(codebook_size=4)
    ids = [vocab.bos_id, *vocab.encode_text("ab"), vocab.image_offset, vocab.null_id, *vocab.encode_text("c"),
           vocab.eos_id, *vocab.encode_text("never")]
    assert vocab.decode_text(ids) == "abc"
    assert vocab.decode_text(torch.tensor(ids)) == "abc"


def test_word_text_round_trip_and_unknown_word():
    captions = ["a red circle", "a blue square on a white background"]
    words = WordText.from_captions(captions)
    vocab = Vocab(codebook_size=8, text=words)
    assert vocab.size == 6 + words.size + 8 and words.size == len(set(" ".join(captions).split()))
    for caption in captions:
        ids = vocab.encode_text(caption)
        assert len(ids) == len(caption.split()) and vocab.decode_text(ids) == caption
    with pytest.raises(ValueError, match="unknown word 'green'"):
        vocab.encode_text("a green circle")
    with pytest.raises(ValueError, match="duplicate"):
        WordText(["a", "a"])


def test_image_round_trip_and_range_checks():
    vocab = Vocab(codebook_size=16)
    codes = torch.randint(0, 16, (3, 5))
    ids = vocab.image_to_vocab(codes)
    assert ids.min() >= vocab.image_offset and ids.max() < vocab.size
    assert torch.equal(vocab.vocab_to_image(ids), codes)
    with pytest.raises(ValueError):
        vocab.image_to_vocab(torch.tensor([16]))
    with pytest.raises(ValueError):
        vocab.vocab_to_image(torch.tensor([vocab.eos_id]))


def test_masks():
    vocab = Vocab(codebook_size=7, text=WordText(["x", "y"]))
    image, text = vocab.image_mask(), vocab.text_mask()
    assert image.shape == text.shape == (vocab.size,)
    assert image.nonzero().flatten().tolist() == list(range(vocab.image_offset, vocab.size))
    assert text.nonzero().flatten().tolist() == [vocab.eos_id, vocab.text_offset, vocab.text_offset + 1]
    assert not (image & text).any()


@pytest.mark.parametrize("text", [ByteText(), WordText(["one", "two", "three"])])
def test_dict_round_trip_through_json(text):
    vocab = Vocab(codebook_size=32, text=text)
    back = Vocab.from_dict(json.loads(json.dumps(vocab.to_dict())))
    assert back == vocab and back.size == vocab.size and back.text.kind == text.kind
    assert back.decode_text(back.encode_text("two one")) == "two one"
