"""Training data for the unified model: the datasets and `ARDataModule` (rows in `onetok.ar_model.sequence`'s format).

Four ways to feed it, chosen by `tokens`/`images` and `in_memory`:

    tokens + in_memory=True    token shards (`onetok tokenize`) loaded once, map-style: small data (the shapes)
    tokens + in_memory=False   token shards streamed, memory bounded by the shuffle buffer: the default at scale
    images + in_memory=True    image shards encoded once at setup (on the run's device), then as the first
    images + in_memory=False   image shards streamed; loader workers only decode images and the training system
                               encodes them with the tokenizer on its device (`ARSystem.on_after_batch_transfer`)

Under DDP every rank reads its own share: map-style data through `RankSampler`, streams through `stream_pieces`
(split by rank and by loader worker, equal batch counts per rank). A resumed run continues the epoch where its
checkpoint left it (`ResumableLoader`). Validation rows (every val image once per task) are split across ranks
without padding, so per-task sums over ranks equal the one-process numbers.

A fraction `t2i_ratio` of training rows is text -> image; `cond_dropout` of those replace the caption by `<null>`.
The task and dropout of a row are drawn from (seed, epoch, sample), so they do not depend on ranks or workers. With
`captions` (caption templates, `onetok.ar_model.captions`) a labelled sample's text -> image rows read a caption
drawn from the templates, its image -> text rows the canonical one (validation: the canonical one for both).
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import lightning.pytorch as pl
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset

from onetok.ar_model.captions import CaptionTemplates
from onetok.ar_model.sequence import T2I, Collate, Row, SequenceBuilder, TextEncoder, i2t_example, t2i_example
from onetok.ar_model.tokenize import (
    encode_samples,
    image_splits,
    is_token_dir,
    iter_token_samples,
    read_meta,
    token_sample,
)
from onetok.ar_model.vocab import TEXT_KINDS, Vocab, text_vocab_from_spec
from onetok.data.pixels import chw_uint8
from onetok.data.samplers import EvalSampler, RankSampler, ResumableLoader, stream_pieces, worker_skip
from onetok.data.shards import SkipCounter, expand_shards, iter_raw_samples, iter_samples, sample_from_files
from onetok.distributed import rank_world

# --------------------------------------------------------------------------------------------------------------------
# Splits held in memory
# --------------------------------------------------------------------------------------------------------------------


class TokenPairs(NamedTuple):
    """One split in memory: codes (N, L) (int16 when the codebook allows), captions, `json` attributes and keys."""

    codes: torch.Tensor
    captions: list[str]
    attributes: list[dict]
    keys: list[str]


def pairs_from_samples(samples: Iterator[tuple[dict, np.ndarray]], codebook_size: int,
                       limit: int | None = None) -> TokenPairs:
    dtype = torch.int16 if codebook_size <= 2**15 else torch.int32
    codes, captions, attributes, keys = [], [], [], []
    for sample, c in samples:
        codes.append(torch.as_tensor(np.asarray(c)).to(dtype))
        captions.append(sample["caption"] or "")
        attributes.append(sample.get("json", {}))
        keys.append(sample["key"])
        if limit is not None and len(codes) >= limit:
            break
    if not codes:
        raise ValueError("no samples")
    codes = torch.stack(codes)  # (N, L)
    if int(codes.min()) < 0 or int(codes.max()) >= codebook_size:
        raise ValueError(f"image codes outside the codebook [0, {codebook_size})")
    return TokenPairs(codes, captions, attributes, keys)


def row_rng(seed: int, epoch: int, where: object) -> random.Random:
    """The random stream of one training row (task, condition dropout): a function of seed, epoch and sample."""
    return random.Random(f"{seed}:{epoch}:{where}")


class RowText:
    """A sample's caption -> the text ids of its training row: (text -> image ids, image -> text ids or None = the
    same), through caption templates when there are any."""

    def __init__(self, text: TextEncoder, templates: CaptionTemplates | None = None):
        self.text, self.templates = text, templates

    def __call__(self, caption: str, meta: dict, rng: random.Random) -> tuple[list[int], list[int] | None]:
        if self.templates is None:
            return self.text(caption), None
        return self.text(self.templates.draw(meta, caption, rng)), self.text(self.templates.canonical(meta, caption))

    def row(self, builder: SequenceBuilder, caption: str, meta: dict, codes, rng: random.Random,
            num_codes: int | None = None):
        t2i, i2t = self(caption, meta, rng)
        return builder(t2i, codes, rng, num_codes=num_codes, i2t_text_ids=i2t)


class TrainSequences(Dataset):
    """Map-style training rows; keys are (epoch, index) from `RankSampler(with_epoch=True)` (or a plain index)."""

    def __init__(self, pairs: TokenPairs, text: TextEncoder, builder: SequenceBuilder, seed: int = 0,
                 templates: CaptionTemplates | None = None):
        self.pairs, self.text, self.builder, self.seed = pairs, RowText(text, templates), builder, seed

    def __len__(self) -> int:
        return len(self.pairs.codes)

    def __getitem__(self, key: tuple[int, int] | int) -> Row:
        epoch, i = key if isinstance(key, tuple) else (0, key)
        rng = row_rng(self.seed, epoch, i)
        example = self.text.row(self.builder, self.pairs.captions[i], self.pairs.attributes[i],
                                self.pairs.codes[i].tolist(), rng)
        return Row(example, self.pairs.keys[i])


class ValSequences(Dataset):
    """Validation rows: every image twice, once per task, no condition dropout (losses per task stay comparable);
    with caption templates both read the canonical caption."""

    def __init__(self, pairs: TokenPairs, text: TextEncoder, templates: CaptionTemplates | None = None):
        self.pairs, self.text, self.vocab, self.templates = pairs, text, text.vocab, templates

    def __len__(self) -> int:
        return 2 * len(self.pairs.codes)

    def __getitem__(self, i: int) -> Row:
        j, task = divmod(i, 2)
        caption = self.pairs.captions[j]
        if self.templates is not None:
            caption = self.templates.canonical(self.pairs.attributes[j], caption)
        text, codes = self.text(caption), self.pairs.codes[j].tolist()
        example = t2i_example(self.vocab, text, codes) if task == T2I else i2t_example(self.vocab, text, codes)
        return Row(example, self.pairs.keys[j])


# --------------------------------------------------------------------------------------------------------------------
# Streamed splits
# --------------------------------------------------------------------------------------------------------------------


def shuffled(items: Iterator, size: int, rng: random.Random) -> Iterator:
    """A shuffle buffer of `size` items (1 = no shuffling)."""
    buffer: list = []
    for item in items:
        buffer.append(item)
        if len(buffer) >= size:
            yield buffer.pop(rng.randrange(len(buffer)))
    rng.shuffle(buffer)
    yield from buffer


def count_shard_samples(urls: list[str]) -> list[int]:
    """Samples per shard: img2dataset's `NNNNN_stats.json` ("successes") when present, else the tar's keys."""
    counts = []
    for url in urls:
        stats = Path(url).with_name(Path(url).stem + "_stats.json")
        if stats.is_file():
            counts.append(int(json.loads(stats.read_text())["successes"]))
        else:
            counts.append(sum(1 for _ in iter_raw_samples(url)))
    return counts


class StreamedSequences(IterableDataset):
    """Training rows streamed from shards: token shards (`codes=True`) or image shards whose rows carry their image
    (uint8) for the training system to encode on its device.

    Each (rank, worker) reads its pieces of the epoch's shard order (`stream_pieces`) through a shuffle buffer of
    raw samples; a sample that fails to decode is replaced by the previous good one, so every rank keeps exactly its
    share (a rank with fewer batches would stall DDP). `batch_size` and `workers` are the loader's: they set the
    length and where a resumed epoch starts."""

    def __init__(self, urls: list[str], counts: list[int], text: TextEncoder, builder: SequenceBuilder,
                 codes: bool, image_size: int, num_codes: int, batch_size: int, shuffle_buffer: int = 1000,
                 seed: int = 0, rank: int = 0, world: int = 1, templates: CaptionTemplates | None = None):
        if len(urls) != len(counts):
            raise ValueError("one sample count per shard")
        self.urls, self.counts, self.text, self.builder = urls, counts, RowText(text, templates), builder
        self.codes, self.image_size, self.num_codes = codes, image_size, num_codes
        self.batch_size, self.shuffle_buffer, self.seed, self.rank, self.world = (
            batch_size, shuffle_buffer, seed, rank, world)
        self.epoch, self.skip_batches, self.workers = 0, 0, 0
        self.skips = SkipCounter()

    def set_position(self, epoch: int, skip_batches: int) -> None:
        self.epoch, self.skip_batches = epoch, skip_batches

    def __len__(self) -> int:
        """Samples this rank yields per epoch: whole batches of each worker's part."""
        workers = max(1, self.workers)
        size, extra = divmod(sum(self.counts) // self.world, workers)
        return sum((size + (1 if w < extra else 0)) // self.batch_size for w in range(workers)) * self.batch_size

    def _raw(self, pieces) -> Iterator[tuple[str, dict] | None]:
        """The raw samples of `pieces`, in order; None for each sample a truncated shard could not give."""
        for shard, begin, end in pieces:
            given = 0
            try:
                for position, (key, files) in enumerate(iter_raw_samples(self.urls[shard])):
                    if position >= end:
                        break
                    if position >= begin:
                        given += 1
                        yield key, files
            except OSError as err:
                self.skips(self.urls[shard], err)
            yield from [None] * (end - begin - given)

    def _row(self, raw: tuple[str, dict] | None, rng: random.Random) -> Row | None:
        if raw is None:
            return None
        key, files = raw
        try:
            if self.codes:
                sample = token_sample(key, files)
                return Row(self.text.row(self.builder, sample["caption"], sample["json"], sample["codes"].tolist(),
                                         rng), key)
            sample = sample_from_files(key, files, self.image_size)
            image = chw_uint8(sample["image"])
            example = self.text.row(self.builder, sample["caption"] or "", sample["json"], None, rng, self.num_codes)
            return Row(example, key, image)  # image (3, S, S)
        except Exception as err:  # noqa: BLE001 - a bad sample is replaced, never fatal
            self.skips(key, err)
            return None

    def __iter__(self) -> Iterator[Row]:
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        pieces = stream_pieces(self.counts, self.seed, self.epoch, self.rank, self.world, worker, workers)
        skip = worker_skip(self.counts, self.world, workers, worker, self.batch_size, self.skip_batches)
        buffer_rng = random.Random(f"{self.seed}:{self.epoch}:{self.rank}:{worker}")
        last, owed = None, 0
        for n, raw in enumerate(shuffled(self._raw(pieces), self.shuffle_buffer, buffer_rng)):
            if n < skip:
                continue
            row = self._row(raw, row_rng(self.seed, self.epoch, f"{self.rank}:{worker}:{n}"))
            if row is None:
                owed += 1
                if last is None:
                    continue
                row, owed = last, owed - 1
            for _ in range(owed + 1):
                yield row
            last, owed = row, 0


# --------------------------------------------------------------------------------------------------------------------
# The DataModule
# --------------------------------------------------------------------------------------------------------------------


class ARDataModule(pl.LightningDataModule):
    """Text->image and image->text rows from token shards or from raw image shards.

    Give exactly one of `tokens` (a `onetok tokenize` folder with meta.json) or `images` (an image dataset root with
    train/ and val/, or one shard spec; needs `tokenizer`, a tokenizer directory). A token folder names its tokenizer
    by fingerprint; `tokenizer` then picks a directory (it must match), else the recorded path or the registry is
    searched (`onetok.tokenizers.registry`). `text`: "words" (the captions' word list; short sequences), "bytes"
    (UTF-8, any text) or "sentencepiece" (a subword vocabulary from `onetok text-vocab train`, at `text_vocab`).
    `captions`: caption templates (`onetok.ar_model.captions.CaptionTemplates` as a mapping), or None for the
    shards' captions as they are.
    """

    def __init__(
        self,
        tokens: str | None = None,
        images: str | None = None,
        tokenizer: str | None = None,
        text: str = "words",
        text_vocab: str | None = None,
        captions: dict | None = None,
        batch_size: int = 64,
        val_batch_size: int | None = None,
        t2i_ratio: float = 0.5,
        cond_dropout: float = 0.1,
        val_samples: int | None = 256,
        max_text_tokens: int | None = None,
        in_memory: bool = True,
        encode_batch: int = 64,
        shuffle_buffer: int = 1000,
        num_workers: int = 0,
        seed: int = 0,
    ):
        super().__init__()
        if (tokens is None) == (images is None):
            raise ValueError("ARDataModule: give exactly one of `tokens` (token shards) or `images` (image shards)")
        if text not in TEXT_KINDS:
            raise ValueError(f"text must be one of {', '.join(TEXT_KINDS)}, not {text!r}")
        if (text == "sentencepiece") != (text_vocab is not None):
            raise ValueError("text='sentencepiece' needs text_vocab (from `onetok text-vocab train`), and only it does")
        if tokenizer is None and tokens is None:
            raise ValueError(f"{images}: raw image shards need `tokenizer` (a tokenizer directory)")
        self.save_hyperparameters()
        self.data = tokens if tokens is not None else images
        self.tokens, self.text, self.text_vocab = tokens is not None, text, text_vocab
        self.templates = CaptionTemplates.from_dict(captions) if captions else None
        self.batch_size, self.val_batch_size = batch_size, val_batch_size or batch_size
        self.t2i_ratio, self.cond_dropout = t2i_ratio, cond_dropout
        self.val_samples, self.max_text_tokens, self.in_memory = val_samples, max_text_tokens, in_memory
        self.encode_batch, self.shuffle_buffer, self.num_workers, self.seed = encode_batch, shuffle_buffer, num_workers, seed
        self._tokenizer_arg, self._meta = tokenizer, None  # the token folder is read at first use, not here
        self._tokenizer_dir: str | None = None
        self._vocab: Vocab | None = None
        self.train_pairs: TokenPairs | None = None
        self.val_pairs: TokenPairs | None = None

    # ---- what the system needs -------------------------------------------------------------------------------------

    @property
    def meta(self) -> dict | None:
        if self._meta is None and self.tokens:
            if not is_token_dir(self.data):
                raise FileNotFoundError(f"{self.data}: not a token folder (no meta.json; make one with `onetok tokenize`)")
            self._meta = read_meta(self.data)
        return self._meta

    @property
    def tokenizer_fingerprint(self) -> str:
        if self.tokens:
            return self.meta["tokenizer"]["fingerprint"]
        from onetok.tokenizers.registry import fingerprint_dir

        return fingerprint_dir(self._tokenizer_arg)

    @property
    def tokenizer_dir(self) -> str | None:
        """The tokenizer's directory on this machine, or None when a token folder's tokenizer is nowhere to be found
        (training still works; sampling at validation and export need it)."""
        if self._tokenizer_dir is None:
            self._tokenizer_dir = self._find_tokenizer()
        return self._tokenizer_dir or None

    def _find_tokenizer(self) -> str:
        from onetok.tokenizers.registry import resolve_tokenizer

        if not self.tokens:
            return str(Path(self._tokenizer_arg).resolve())
        try:
            return str(resolve_tokenizer(self.tokenizer_fingerprint, self._tokenizer_arg, self.meta["tokenizer"]["path"]))
        except ValueError as err:
            raise ValueError(f"{self.data}: token shards made with another tokenizer ({err})") from None
        except FileNotFoundError:
            if self._tokenizer_arg is not None:
                raise
            return ""

    @property
    def vocab(self) -> Vocab:
        if self._vocab is None:
            self._vocab = self._build_vocab()
        return self._vocab

    def _build_vocab(self) -> Vocab:
        if self.tokens:
            _ = self.tokenizer_dir  # a given tokenizer must match the shards' fingerprint
            codebook, words = self.meta["codebook_size"], self.meta["words"]
            if words is None and self.text == "words":
                raise ValueError(f"{self.data}: too many distinct caption words for text='words'; use text='bytes' "
                                 "or a sentencepiece vocabulary")
        else:
            codebook = self._tokenizer_config()["codebook_size"]
            words = self._scan_words() if self.text == "words" else []
        if self.templates is not None and self.text == "words":  # the templates' words too, for the named labels
            words = sorted(set(words) | {w for c in self.templates.expand(self.templates.names) for w in c.split()})
        return Vocab(codebook, text_vocab_from_spec(self.text, words, self.text_vocab))

    def _tokenizer_config(self) -> dict:
        return json.loads((Path(self.tokenizer_dir) / "config.json").read_text())["config"]

    def _scan_words(self) -> list[str]:
        """The word list of every caption in the raw shards (reads only the text members' bytes)."""
        from onetok.ar_model.vocab import WordText

        captions = set()
        for spec in image_splits(self.data).values():
            for path in expand_shards(spec):
                captions.update(files.get("txt", b"").decode("utf-8").strip() for _, files in iter_raw_samples(path))
        return WordText.from_captions(captions).words

    def split_spec(self, split: str) -> str | None:
        if self.tokens:
            folder = Path(self.data) / split
            return str(folder) if folder.is_dir() and expand_shards(folder) else None
        return image_splits(self.data).get(split)

    def _device(self) -> torch.device:
        trainer = self.trainer
        return trainer.strategy.root_device if trainer is not None else torch.device("cpu")

    def load_pairs(self, split: str, limit: int | None = None) -> TokenPairs | None:
        """A whole split (or its first `limit` samples) as codes + captions in memory; None if the split is absent.
        Image shards are encoded on the run's device."""
        spec = self.split_spec(split)
        if spec is None:
            return None
        if self.tokens:
            samples = ((s, s["codes"]) for s in iter_token_samples(spec))
        else:
            from onetok.tokenizers import Tokenizer

            tokenizer = Tokenizer.from_pretrained(self.tokenizer_dir, map_location=self._device())
            samples = encode_samples(tokenizer, iter_samples(spec, tokenizer.image_size), self.encode_batch)
        return pairs_from_samples(samples, self.vocab.codebook_size, limit)

    # ---- Lightning hooks -------------------------------------------------------------------------------------------

    def setup(self, stage: str | None = None) -> None:
        if stage in (None, "fit") and self.train_pairs is None and self.in_memory:
            self.train_pairs = self.load_pairs("train")
            if self.train_pairs is None:
                raise FileNotFoundError(f"{self.data}: no training shards")
        if self.val_pairs is None:
            self.val_pairs = self.load_pairs("val", self.val_samples)

    def text_encoder(self) -> TextEncoder:
        return TextEncoder(self.vocab, self.max_text_tokens)

    def _builder(self) -> SequenceBuilder:
        return SequenceBuilder(self.vocab, self.t2i_ratio, self.cond_dropout)

    def train_dataset(self) -> TrainSequences | StreamedSequences:
        if self.train_pairs is not None:
            return TrainSequences(self.train_pairs, self.text_encoder(), self._builder(), self.seed, self.templates)
        rank, world = rank_world(self.trainer)
        urls = expand_shards(self.split_spec("train") or [])
        if not urls:
            raise FileNotFoundError(f"{self.data}: no training shards")
        if self.tokens:
            counts, image_size, num_codes = self.meta["shard_counts"]["train"], 0, self.meta["num_latent_tokens"]
        else:
            config = self._tokenizer_config()
            counts, image_size, num_codes = count_shard_samples(urls), config["image_size"], config["num_latent_tokens"]
        stream = StreamedSequences(urls, counts, self.text_encoder(), self._builder(), self.tokens, image_size,
                                   num_codes, self.batch_size, self.shuffle_buffer, self.seed, rank, world,
                                   self.templates)
        stream.workers = self.num_workers
        return stream

    def train_dataloader(self) -> DataLoader:
        dataset = self.train_dataset()
        trainer = self.trainer
        collate = Collate(self.vocab.pad_id)
        if isinstance(dataset, TrainSequences):
            rank, world = rank_world(self.trainer)
            sampler = RankSampler(len(dataset), world, rank, shuffle=True, seed=self.seed, with_epoch=True)
            return ResumableLoader(dataset, trainer=trainer, batch_size=self.batch_size, sampler=sampler,
                                   drop_last=True, collate_fn=collate, num_workers=self.num_workers,
                                   persistent_workers=self.num_workers > 0)
        # a stream's workers get the epoch and resume position when they start: no persistent workers
        return ResumableLoader(dataset, trainer=trainer, batch_size=self.batch_size, drop_last=True,
                               collate_fn=collate, num_workers=self.num_workers)

    def val_dataloader(self) -> DataLoader | list:
        if self.val_pairs is None:
            return []
        rank, world = rank_world(self.trainer)
        dataset = ValSequences(self.val_pairs, self.text_encoder(), self.templates)
        return DataLoader(dataset, batch_size=self.val_batch_size, sampler=EvalSampler(len(dataset), world, rank),
                          collate_fn=Collate(self.vocab.pad_id), num_workers=self.num_workers,
                          persistent_workers=self.num_workers > 0)

