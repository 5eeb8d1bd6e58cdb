"""The sequence format of the unified model: one owner for every row layout, in training and in sampling.

Ids are `Vocab` ids; `targets[t]` is the label of the prediction made at position t (-100 = no loss):

    text -> image   <bos> text <boi> codes <eoi> <eos>     loss on codes, <eoi>, <eos>
                    <bos> <null> <boi> ...                 the unconditional branch (CFG, condition dropout)
    image -> text   <bos> <boi> codes <eoi> text <eos>     loss on text, <eos>

Sampling uses the prefixes of the same rows: `image_prompt` (`<bos> text <boi>`), `unconditional_prompt`
(`<bos> <null> <boi>`) and `caption_prompt` (`<bos> <boi> codes <eoi>`). A training row can also be built without
its codes (`codes=None`, placeholders at `image_at`): the batch carries the images and the training system fills the
codes in on its device (`fill_image_codes`) after encoding them with the tokenizer there.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import NamedTuple

import torch

from onetok.ar_model.vocab import Vocab

T2I, I2T = 0, 1  # task ids per row
IGNORE = -100  # target value without loss (torch cross_entropy's ignore_index)

# --------------------------------------------------------------------------------------------------------------------
# Prompts (sampling) and rows (training)
# --------------------------------------------------------------------------------------------------------------------


def image_prompt(vocab: Vocab, text_ids: Sequence[int]) -> list[int]:
    """`<bos> text <boi>`: the prefix after which image codes are drawn."""
    return [vocab.bos_id, *text_ids, vocab.boi_id]


def unconditional_prompt(vocab: Vocab) -> list[int]:
    """`<bos> <null> <boi>`: the unconditional branch of classifier-free guidance."""
    return image_prompt(vocab, [vocab.null_id])


def caption_prompt(vocab: Vocab, codes: torch.Tensor) -> torch.Tensor:
    """`<bos> <boi> codes <eoi>` for tokenizer codes (B, k) -> ids (B, k + 3) on the codes' device."""
    B = codes.shape[0]
    head = torch.tensor([vocab.bos_id, vocab.boi_id], device=codes.device).expand(B, 2)
    tail = torch.full((B, 1), vocab.eoi_id, device=codes.device)
    return torch.cat([head, vocab.image_to_vocab(codes), tail], dim=1)  # (B, k + 3)


class Example(NamedTuple):
    ids: list[int]  # input ids (T,)
    targets: list[int]  # next-token labels (T,), IGNORE where no loss
    task: int  # T2I or I2T
    image_at: int  # index in `ids` of the first image code


def _image_ids(vocab: Vocab, codes: Sequence[int] | None, num_codes: int) -> list[int]:
    if codes is None:  # placeholders, filled by `fill_image_codes`
        return [vocab.pad_id] * num_codes
    return [vocab.image_offset + int(c) for c in codes]


def t2i_example(vocab: Vocab, text_ids: Sequence[int], codes: Sequence[int] | None, null: bool = False,
                num_codes: int | None = None) -> Example:
    """`<bos> text <boi> codes <eoi> <eos>` (text replaced by `<null>` when `null`); loss on codes, <eoi>, <eos>."""
    prompt = unconditional_prompt(vocab) if null else image_prompt(vocab, text_ids)
    image = _image_ids(vocab, codes, len(codes) if codes is not None else num_codes)
    seq = [*prompt, *image, vocab.eoi_id, vocab.eos_id]
    first = len(prompt)  # index of the first image id in `seq`
    targets = [IGNORE] * (first - 1) + seq[first:]
    return Example(seq[:-1], targets, T2I, first)


def i2t_example(vocab: Vocab, text_ids: Sequence[int], codes: Sequence[int] | None,
                num_codes: int | None = None) -> Example:
    """`<bos> <boi> codes <eoi> text <eos>`; loss on the text and <eos>."""
    image = _image_ids(vocab, codes, len(codes) if codes is not None else num_codes)
    seq = [vocab.bos_id, vocab.boi_id, *image, vocab.eoi_id, *text_ids, vocab.eos_id]
    first = len(image) + 3  # index of the first text id
    targets = [IGNORE] * (first - 1) + seq[first:]
    return Example(seq[:-1], targets, I2T, 2)


class SequenceBuilder:
    """Draws each training row's task (t2i with probability `t2i_ratio`) and condition dropout."""

    def __init__(self, vocab: Vocab, t2i_ratio: float = 0.5, cond_dropout: float = 0.1):
        if not 0.0 <= t2i_ratio <= 1.0 or not 0.0 <= cond_dropout <= 1.0:
            raise ValueError("t2i_ratio and cond_dropout must lie in [0, 1]")
        self.vocab, self.t2i_ratio, self.cond_dropout = vocab, t2i_ratio, cond_dropout

    def __call__(self, text_ids: list[int], codes: Sequence[int] | None, rng: random.Random,
                 num_codes: int | None = None, i2t_text_ids: list[int] | None = None) -> Example:
        """A row of `text_ids` and `codes`; image -> text rows read `i2t_text_ids` instead when given."""
        if rng.random() < self.t2i_ratio:
            return t2i_example(self.vocab, text_ids, codes, null=rng.random() < self.cond_dropout, num_codes=num_codes)
        return i2t_example(self.vocab, text_ids if i2t_text_ids is None else i2t_text_ids, codes, num_codes=num_codes)


class TextEncoder:
    """Caption -> text ids, cut to `max_tokens` (None = no limit)."""

    def __init__(self, vocab: Vocab, max_tokens: int | None = None):
        self.vocab, self.max_tokens = vocab, max_tokens

    def __call__(self, caption: str) -> list[int]:
        return self.vocab.encode_text(caption)[: self.max_tokens]


# --------------------------------------------------------------------------------------------------------------------
# Batches
# --------------------------------------------------------------------------------------------------------------------


def collate_examples(examples: list[Example], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad to the longest row: {"ids": (B, T), "targets": (B, T), "task": (B,), "image_at": (B,)}."""
    T = max(len(e.ids) for e in examples)
    ids = torch.full((len(examples), T), pad_id, dtype=torch.long)
    targets = torch.full((len(examples), T), IGNORE, dtype=torch.long)
    for b, e in enumerate(examples):
        ids[b, : len(e.ids)] = torch.tensor(e.ids)
        targets[b, : len(e.targets)] = torch.tensor(e.targets)
    return {"ids": ids, "targets": targets, "task": torch.tensor([e.task for e in examples], dtype=torch.long),
            "image_at": torch.tensor([e.image_at for e in examples], dtype=torch.long)}


class Row(NamedTuple):
    """One dataset item: its example, the sample's key, and (rows built without codes) its image (3, S, S) uint8."""

    example: Example
    key: str
    image: torch.Tensor | None = None


class Collate:
    """Picklable collate_fn: rows -> the padded batch plus "key" (list) and, for rows without codes, "image"."""

    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, rows: list[Row]) -> dict:
        batch = collate_examples([row.example for row in rows], self.pad_id)
        batch["key"] = [row.key for row in rows]
        if rows[0].image is not None:
            batch["image"] = torch.stack([row.image for row in rows])  # (B, 3, S, S) uint8
        return batch


def fill_image_codes(batch: dict[str, torch.Tensor], codes: torch.Tensor, vocab: Vocab) -> dict[str, torch.Tensor]:
    """Write tokenizer codes (B, k) into rows built with placeholders: the ids at `image_at`, and for text -> image
    rows also the targets one position earlier (each code is predicted from the position before it)."""
    ids, targets = batch["ids"], batch["targets"]
    k = codes.shape[1]
    columns = batch["image_at"][:, None] + torch.arange(k, device=ids.device)  # (B, k)
    image = vocab.image_to_vocab(codes).to(ids.device)  # (B, k)
    ids.scatter_(1, columns, image)
    t2i = batch["task"] == T2I  # (B,)
    targets[t2i] = targets[t2i].scatter(1, columns[t2i] - 1, image[t2i])
    return batch
