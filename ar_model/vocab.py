"""One id space shared by text and images: specials, then text tokens, then the tokenizer's image codes.

    ids 0..5                       <pad> <bos> <eos> <boi> <eoi> <null>
    ids 6 .. 6+T-1                 text tokens (T = text vocabulary size; UTF-8 bytes by default)
    ids 6+T .. 6+T+K-1             image codes 0..K-1 of the image tokenizer (K = codebook size)

Sequences (built by `onetok.ar_model.sequence`, for training and sampling):
    text -> image    <bos> text <boi> codes <eoi> <eos>        (<null> replaces the text for CFG)
    image -> text    <bos> <boi> codes <eoi> text <eos>

The text vocabulary is pluggable: `ByteText` (any string, one id per UTF-8 byte), `WordText` (a fixed word
list, e.g. every word of the training captions; short sequences, but unknown words are an error) or
`SentencePieceText` (a BPE or unigram subword vocabulary trained on the captions with sentencepiece, byte fallback
for anything unseen: short sequences and any string; `onetok text-vocab train`). A sentencepiece vocabulary also
keeps the words of the captions it was trained on (`known_words`), so a prompt's words never seen in training can be
named (`Vocab.unknown_words`) although they still encode.
"""

from __future__ import annotations

import base64
import hashlib
import io
import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch

SPECIALS = ("<pad>", "<bos>", "<eos>", "<boi>", "<eoi>", "<null>")
TEXT_KINDS = ("words", "bytes", "sentencepiece")
SPM_FILE = "text_vocab.model"  # the file of a sentencepiece text vocabulary
WORDS_FILE = "text_vocab.words"  # beside it: the training captions' words, one a line (optional)
_WORD = re.compile(r"[^\W_]+(?:'[^\W_]+)*")  # a word: letters/digits, inner apostrophes ("don't")


def caption_words(text: str) -> list[str]:
    """The words of `text` as `known_words` keeps them: lower case, without punctuation."""
    return _WORD.findall(text.lower())

# --------------------------------------------------------------------------------------------------------------------
# Text vocabularies: local ids 0..size-1, offset into the shared id space by `Vocab`.
# --------------------------------------------------------------------------------------------------------------------


class ByteText:
    """UTF-8 bytes: 256 text ids, every string encodes."""

    kind = "bytes"
    size = 256

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: Sequence[int]) -> str:
        return bytes(ids).decode("utf-8", errors="replace")

    def to_dict(self) -> dict:
        return {"kind": self.kind}


class WordText:
    """A fixed list of space-separated words; encoding an unknown word raises ValueError."""

    kind = "words"

    def __init__(self, words: Iterable[str]):
        self.words = list(words)
        if len(set(self.words)) != len(self.words):
            raise ValueError("WordText: duplicate words in the word list")
        if any(not w or any(c.isspace() for c in w) for w in self.words):
            raise ValueError("WordText: words must be non-empty and contain no whitespace")
        self.index = {w: i for i, w in enumerate(self.words)}
        self.size = len(self.words)

    @classmethod
    def from_captions(cls, captions: Iterable[str]) -> WordText:
        """Every distinct whitespace-separated word of `captions`, sorted."""
        return cls(sorted({w for c in captions for w in c.split()}))

    def encode(self, text: str) -> list[int]:
        ids = []
        for word in text.split():
            if word not in self.index:
                raise ValueError(f"unknown word {word!r} (not in the model's {self.size}-word vocabulary)")
            ids.append(self.index[word])
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        return " ".join(self.words[i] for i in ids)

    def to_dict(self) -> dict:
        return {"kind": self.kind, "words": self.words}


class SentencePieceText:
    """A sentencepiece model (BPE or unigram, byte fallback); its serialized proto travels in `to_dict`."""

    kind = "sentencepiece"

    def __init__(self, model_proto: bytes, known_words: Iterable[str] | None = None):
        import sentencepiece as spm

        self.proto = bytes(model_proto)
        self.processor = spm.SentencePieceProcessor(model_proto=self.proto)
        self.size = self.processor.get_piece_size()
        self.known_words = sorted(set(known_words)) if known_words is not None else None

    @classmethod
    def load(cls, path: str | os.PathLike) -> SentencePieceText:
        """From a model file, or a folder holding `text_vocab.model`; `text_vocab.words` beside it, when there."""
        path = Path(path)
        model = path / SPM_FILE if path.is_dir() else path
        words_file = model.with_name(WORDS_FILE)
        words = words_file.read_text(encoding="utf-8").split() if words_file.is_file() else None
        return cls(model.read_bytes(), words)

    def save(self, path: str | os.PathLike) -> None:
        """The model file at `path`, and its known words beside it (`text_vocab.words`) when it has them."""
        Path(path).write_bytes(self.proto)
        if self.known_words is not None:
            Path(path).with_name(WORDS_FILE).write_text("".join(w + "\n" for w in self.known_words), encoding="utf-8")

    def unknown_words(self, text: str) -> list[str]:
        """The words of `text` not in the training captions, in order (none when the words were not recorded)."""
        if self.known_words is None:
            return []
        known = set(self.known_words)
        return list(dict.fromkeys(w for w in caption_words(text) if w not in known))

    def encode(self, text: str) -> list[int]:
        return self.processor.encode(text)

    def decode(self, ids: Sequence[int]) -> str:
        return self.processor.decode([int(i) for i in ids])

    def sha256(self) -> str:
        return hashlib.sha256(self.proto).hexdigest()

    def to_dict(self) -> dict:
        d = {"kind": self.kind, "sha256": self.sha256(), "model": base64.b64encode(self.proto).decode("ascii")}
        if self.known_words is not None:
            d["known_words"] = self.known_words
        return d

    def __getstate__(self) -> dict:  # loader workers get the proto, not the C++ processor
        return {"proto": self.proto, "known_words": self.known_words}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["proto"], state.get("known_words"))


def train_sentencepiece(captions: Iterable[str], size: int, model_type: str = "bpe") -> SentencePieceText:
    """Train a subword vocabulary of `size` pieces on `captions` (offline; byte fallback, identity normalisation so
    decode(encode(text)) gives the text back); it keeps the captions' words as its `known_words`."""
    import sentencepiece as spm

    if model_type not in ("bpe", "unigram"):
        raise ValueError(f"model_type must be bpe or unigram, not {model_type!r}")
    captions = [c for c in captions if c]
    proto = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(captions), model_writer=proto, vocab_size=size, model_type=model_type,
        byte_fallback=True, character_coverage=1.0, normalization_rule_name="identity",
        remove_extra_whitespaces=False, split_digits=True, bos_id=-1, eos_id=-1, pad_id=-1, unk_id=0,
        hard_vocab_limit=False, minloglevel=2, num_threads=1)
    return SentencePieceText(proto.getvalue(), {w for c in captions for w in caption_words(c)})


def text_vocab_from_dict(d: dict) -> ByteText | WordText | SentencePieceText:
    if d["kind"] == "bytes":
        return ByteText()
    if d["kind"] == "words":
        return WordText(d["words"])
    if d["kind"] == "sentencepiece":
        return SentencePieceText(base64.b64decode(d["model"]), d.get("known_words"))
    raise ValueError(f"unknown text vocabulary kind {d['kind']!r}")


def text_vocab_from_spec(kind: str, words: Iterable[str] = (), model: str | os.PathLike | None = None
                         ) -> ByteText | WordText | SentencePieceText:
    """The text vocabulary a data config names: "bytes", "words" (from `words`) or "sentencepiece" (from `model`)."""
    if kind == "bytes":
        return ByteText()
    if kind == "words":
        return WordText(words)
    if kind == "sentencepiece":
        if model is None:
            raise ValueError("text='sentencepiece' needs the model file (onetok text-vocab train)")
        return SentencePieceText.load(model)
    raise ValueError(f"text must be one of {', '.join(TEXT_KINDS)}, not {kind!r}")


# --------------------------------------------------------------------------------------------------------------------
# The shared vocabulary
# --------------------------------------------------------------------------------------------------------------------


class Vocab:
    """Specials, then text ids, then image codes at `image_offset`; `size` ids in all."""

    pad_id, bos_id, eos_id, boi_id, eoi_id, null_id = range(len(SPECIALS))
    text_offset = len(SPECIALS)

    def __init__(self, codebook_size: int, text: ByteText | WordText | SentencePieceText | None = None):
        if codebook_size < 1:
            raise ValueError(f"codebook_size must be >= 1, got {codebook_size}")
        self.codebook_size = codebook_size
        self.text = text if text is not None else ByteText()
        self.image_offset = self.text_offset + self.text.size
        self.size = self.image_offset + codebook_size

    def __repr__(self) -> str:
        return f"Vocab(size={self.size}, text={self.text.kind}:{self.text.size}, codebook_size={self.codebook_size})"

    # --- text ---------------------------------------------------------------------------------------------------

    def encode_text(self, text: str) -> list[int]:
        return [self.text_offset + i for i in self.text.encode(text)]

    def unknown_words(self, text: str) -> list[str]:
        """Words of `text` the text vocabulary never saw in training (sentencepiece vocabularies that recorded their
        training words; others: none). They still encode (byte fallback), but the model knows nothing about them."""
        unknown = getattr(self.text, "unknown_words", None)
        return unknown(text) if unknown is not None else []

    def decode_text(self, ids: Iterable[int]) -> str:
        """Text ids to a string: stops at <eos> or <eoi>, skips other specials and image ids."""
        local = []
        for i in ids:
            i = int(i)
            if i in (self.eos_id, self.eoi_id):
                break
            if self.text_offset <= i < self.image_offset:
                local.append(i - self.text_offset)
        return self.text.decode(local)

    # --- images -------------------------------------------------------------------------------------------------

    def image_to_vocab(self, codes: torch.Tensor) -> torch.Tensor:
        """Tokenizer codes (any shape, 0..K-1) to shared ids."""
        if codes.numel() and (codes.min() < 0 or codes.max() >= self.codebook_size):
            raise ValueError(f"image codes must lie in [0, {self.codebook_size})")
        return codes.long() + self.image_offset

    def vocab_to_image(self, ids: torch.Tensor) -> torch.Tensor:
        """Shared ids (any shape, all image ids) back to tokenizer codes."""
        codes = ids.long() - self.image_offset
        if codes.numel() and (codes.min() < 0 or codes.max() >= self.codebook_size):
            raise ValueError("vocab_to_image: ids outside the image-code range")
        return codes

    # --- masks over the vocabulary: True = allowed ----------------------------------------------------------------

    def image_mask(self) -> torch.Tensor:
        mask = torch.zeros(self.size, dtype=torch.bool)
        mask[self.image_offset:] = True
        return mask  # (V,)

    def text_mask(self) -> torch.Tensor:
        mask = torch.zeros(self.size, dtype=torch.bool)
        mask[self.text_offset:self.image_offset] = True
        mask[self.eos_id] = True
        return mask  # (V,)

    # --- serialisation ------------------------------------------------------------------------------------------

    def to_dict(self) -> dict:
        return {"specials": list(SPECIALS), "text": self.text.to_dict(), "codebook_size": self.codebook_size}

    @classmethod
    def from_dict(cls, d: dict) -> Vocab:
        if list(d.get("specials", SPECIALS)) != list(SPECIALS):
            raise ValueError(f"vocab specials {d['specials']} differ from this version's {list(SPECIALS)}")
        return cls(int(d["codebook_size"]), text_vocab_from_dict(d["text"]))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vocab) and self.to_dict() == other.to_dict()
