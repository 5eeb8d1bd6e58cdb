"""Training data for the unified model: token shards, sequence building with loss masks, and `ARDataModule`.

Token shards (written by `onetok tokenize`) are WebDataset-style tars beside a `meta.json`:

    OUT/meta.json          tokenizer fingerprint + config, L, codebook size, the caption word list
    OUT/train/000000.tar   per sample: KEY.codes.npy (L,) int16/int32, KEY.txt (caption), KEY.json (attributes)
    OUT/val/000000.tar

Sequences (ids are `Vocab` ids; `targets[t]` is the label for the prediction made at position t, -100 = no loss):

    text -> image   <bos> text <boi> codes <eoi> <eos>     loss on codes, <eoi>, <eos>
    image -> text   <bos> <boi> codes <eoi> text <eos>     loss on text, <eos>

A fraction `t2i_ratio` of training rows is text -> image; `cond_dropout` of those replace the caption by `<null>`
(the unconditional branch of classifier-free guidance). Batches are dicts `ids (B, T)`, `targets (B, T)`,
`task (B,)` (`T2I` or `I2T`), right-padded with `<pad>`.

Token shards of a small dataset (the built-in shapes: 20k x 16 codes) are loaded once into memory and served
map-style, the fastest option on a 2-core machine. Raw image shards are encoded through the tokenizer, either once
into memory (`in_memory=True`) or streamed batch by batch (`in_memory=False`, for large data).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NamedTuple

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset

from onetok.ar_model.vocab import ByteText, Vocab, WordText
from onetok.data.shards import ShardWriter, expand_shards, iter_raw_samples, iter_samples

T2I, I2T = 0, 1  # task ids per row
IGNORE = -100  # target value without loss (torch cross_entropy's ignore_index)
META_FORMAT = "onetok-tokens"
MAX_WORDS = 50000  # larger caption vocabularies are not kept in meta.json (use text="bytes")

# --------------------------------------------------------------------------------------------------------------------
# Token shards: writing, reading, meta.json
# --------------------------------------------------------------------------------------------------------------------


def tokenizer_fingerprint(tokenizer_dir: str | os.PathLike) -> str:
    """sha256 (first 16 hex digits) of a tokenizer directory's weights (names and bytes, not the file's layout)."""
    from safetensors.torch import load_file

    digest = hashlib.sha256()
    for name, tensor in sorted(load_file(str(Path(tokenizer_dir) / "model.safetensors")).items()):
        digest.update(name.encode())
        digest.update(tensor.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def encode_codes(codes: np.ndarray) -> bytes:
    """(L,) codes -> .npy bytes (int16 when every code fits, else int32)."""
    dtype = np.int16 if codes.size == 0 or int(codes.max()) < 2**15 else np.int32
    buf = io.BytesIO()
    np.save(buf, codes.astype(dtype), allow_pickle=False)
    return buf.getvalue()


def iter_token_samples(spec) -> Iterator[dict]:
    """Samples `key`, `codes` (L,) int64 array, `caption` str, `json` dict of every token shard in `spec`."""
    for path in expand_shards(spec):
        for key, files in iter_raw_samples(path):
            if "codes.npy" not in files:
                raise ValueError(f"{path}: sample {key} has no codes.npy (not a token shard)")
            yield {
                "key": key,
                "codes": np.load(io.BytesIO(files["codes.npy"]), allow_pickle=False).astype(np.int64),
                "caption": files["txt"].decode("utf-8").strip() if "txt" in files else "",
                "json": json.loads(files["json"]) if "json" in files else {},
            }


def image_splits(data: str | os.PathLike) -> dict[str, str]:
    """Split name -> shard spec: `train`/`val` sub-folders of a dataset root, or {"train": spec} for one spec."""
    root = Path(data)
    if root.is_dir() and (root / "train").is_dir():
        return {s: str(root / s) for s in ("train", "val") if (root / s).is_dir() and expand_shards(root / s)}
    paths = expand_shards(data)
    if not paths or not all(os.path.isfile(p) for p in paths):
        raise FileNotFoundError(f"{data}: no shards found")
    return {"train": str(data)}


def _batches(samples: Iterator[dict], size: int) -> Iterator[list[dict]]:
    batch = []
    for sample in samples:
        batch.append(sample)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def images_to_tensor(images: list) -> torch.Tensor:
    """PIL RGB images -> float (B, 3, S, S) in [0, 1]."""
    arrays = np.stack([np.asarray(im, dtype=np.uint8) for im in images])  # (B, S, S, 3)
    return torch.from_numpy(arrays).permute(0, 3, 1, 2).float().div_(255.0)


def encode_samples(tokenizer, samples: Iterator[dict], batch_size: int) -> Iterator[tuple[dict, np.ndarray]]:
    """(decoded image sample, its (L,) codes) pairs; images are encoded `batch_size` at a time."""
    device = next(tokenizer.parameters()).device
    for batch in _batches(samples, batch_size):
        codes = tokenizer.encode(images_to_tensor([s["image"] for s in batch]).to(device)).cpu().numpy()  # (B, L)
        yield from zip(batch, codes)


class TokenizeSummary(NamedTuple):
    counts: dict[str, int]  # samples written per split
    skipped: int  # unreadable samples skipped
    meta: dict


def tokenize_dataset(
    tokenizer_dir: str | os.PathLike, data: str, out: str | os.PathLike, batch_size: int = 256,
    shard_size: int = 5000, progress: Callable[[int], None] | None = None, device: str = "cpu",
) -> TokenizeSummary:
    """Encode the image shards of `data` (a dataset root with train/ and val/, or one shard spec) into token shards
    in `out` (which must not exist yet: callers build into a temporary folder and rename it)."""
    from onetok.data.shards import SkipCounter
    from onetok.tokenizers import Tokenizer

    tokenizer = Tokenizer.from_pretrained(tokenizer_dir, map_location=device)
    out = Path(out)
    counts, words = {}, set()
    skips = SkipCounter()
    for split, spec in image_splits(data).items():
        samples = iter_samples(spec, size=tokenizer.image_size, skips=skips)
        with ShardWriter(out / split, shard_size) as writer:
            for sample, codes in encode_samples(tokenizer, samples, batch_size):
                caption = sample["caption"] or ""
                if len(words) <= MAX_WORDS:
                    words.update(caption.split())
                writer.write(sample["key"], {
                    "codes.npy": encode_codes(codes),
                    "txt": caption.encode("utf-8"),
                    "json": json.dumps(sample["json"], sort_keys=True).encode("utf-8"),
                })
                if progress:
                    progress(1)
        counts[split] = writer.total
    meta = {
        "format": META_FORMAT,
        "version": 1,
        "tokenizer": {"path": str(Path(tokenizer_dir).resolve()), "fingerprint": tokenizer_fingerprint(tokenizer_dir),
                      "config": tokenizer.config.to_dict()},
        "num_latent_tokens": tokenizer.num_latent_tokens,
        "codebook_size": tokenizer.codebook_size,
        "image_size": tokenizer.image_size,
        "counts": counts,
        "words": sorted(words) if len(words) <= MAX_WORDS else None,
    }
    (out / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
    return TokenizeSummary(counts, skips.count, meta)


def read_meta(token_dir: str | os.PathLike) -> dict:
    path = Path(token_dir) / "meta.json"
    meta = json.loads(path.read_text())
    if meta.get("format") != META_FORMAT:
        raise ValueError(f"{path}: not an onetok token-shard meta.json")
    return meta


def is_token_dir(path: str | os.PathLike) -> bool:
    return (Path(path) / "meta.json").is_file()


# --------------------------------------------------------------------------------------------------------------------
# Sequences and batches
# --------------------------------------------------------------------------------------------------------------------


class Example(NamedTuple):
    ids: list[int]  # input ids (T,)
    targets: list[int]  # next-token labels (T,), IGNORE where no loss
    task: int  # T2I or I2T


def t2i_example(vocab: Vocab, text_ids: list[int], codes: list[int], null: bool = False) -> Example:
    """`<bos> text <boi> codes <eoi> <eos>` (text replaced by `<null>` when `null`); loss on codes, <eoi>, <eos>."""
    cond = [vocab.null_id] if null else list(text_ids)
    image = [vocab.image_offset + c for c in codes]
    seq = [vocab.bos_id, *cond, vocab.boi_id, *image, vocab.eoi_id, vocab.eos_id]
    first = len(cond) + 2  # index of the first image id in `seq`
    targets = [IGNORE] * (first - 1) + seq[first:]
    return Example(seq[:-1], targets, T2I)


def i2t_example(vocab: Vocab, text_ids: list[int], codes: list[int]) -> Example:
    """`<bos> <boi> codes <eoi> text <eos>`; loss on the text and <eos>."""
    image = [vocab.image_offset + c for c in codes]
    seq = [vocab.bos_id, vocab.boi_id, *image, vocab.eoi_id, *text_ids, vocab.eos_id]
    first = len(image) + 3  # index of the first text id
    targets = [IGNORE] * (first - 1) + seq[first:]
    return Example(seq[:-1], targets, I2T)


class SequenceBuilder:
    """Draws each training row's task (t2i with probability `t2i_ratio`) and condition dropout."""

    def __init__(self, vocab: Vocab, t2i_ratio: float = 0.5, cond_dropout: float = 0.1):
        if not 0.0 <= t2i_ratio <= 1.0 or not 0.0 <= cond_dropout <= 1.0:
            raise ValueError("t2i_ratio and cond_dropout must lie in [0, 1]")
        self.vocab, self.t2i_ratio, self.cond_dropout = vocab, t2i_ratio, cond_dropout

    def __call__(self, text_ids: list[int], codes: list[int], rng: random.Random) -> Example:
        if rng.random() < self.t2i_ratio:
            return t2i_example(self.vocab, text_ids, codes, null=rng.random() < self.cond_dropout)
        return i2t_example(self.vocab, text_ids, codes)


def collate_examples(examples: list[Example], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad to the longest row: {"ids": (B, T), "targets": (B, T), "task": (B,)}."""
    T = max(len(e.ids) for e in examples)
    ids = torch.full((len(examples), T), pad_id, dtype=torch.long)
    targets = torch.full((len(examples), T), IGNORE, dtype=torch.long)
    for b, e in enumerate(examples):
        ids[b, : len(e.ids)] = torch.tensor(e.ids)
        targets[b, : len(e.targets)] = torch.tensor(e.targets)
    return {"ids": ids, "targets": targets, "task": torch.tensor([e.task for e in examples], dtype=torch.long)}


class Collate:
    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, examples: list[Example]) -> dict[str, torch.Tensor]:
        return collate_examples(examples, self.pad_id)


# --------------------------------------------------------------------------------------------------------------------
# Datasets
# --------------------------------------------------------------------------------------------------------------------


class TokenPairs(NamedTuple):
    """One split in memory: codes (N, L) (int16 when the codebook allows), captions and their `json` attributes."""

    codes: torch.Tensor
    captions: list[str]
    attributes: list[dict]


def pairs_from_samples(samples: Iterator[tuple[dict, np.ndarray]], codebook_size: int,
                       limit: int | None = None) -> TokenPairs:
    dtype = torch.int16 if codebook_size <= 2**15 else torch.int32
    codes, captions, attributes = [], [], []
    for sample, c in samples:
        codes.append(torch.as_tensor(np.asarray(c)).to(dtype))
        captions.append(sample["caption"] or "")
        attributes.append(sample.get("json", {}))
        if limit is not None and len(codes) >= limit:
            break
    if not codes:
        raise ValueError("no samples")
    codes = torch.stack(codes)  # (N, L)
    if int(codes.min()) < 0 or int(codes.max()) >= codebook_size:
        raise ValueError(f"image codes outside the codebook [0, {codebook_size})")
    return TokenPairs(codes, captions, attributes)


class TextEncoder:
    """Caption -> text ids, cut to `max_tokens` (None = no limit)."""

    def __init__(self, vocab: Vocab, max_tokens: int | None = None):
        self.vocab, self.max_tokens = vocab, max_tokens

    def __call__(self, caption: str) -> list[int]:
        return self.vocab.encode_text(caption)[: self.max_tokens]


class TrainSequences(Dataset):
    """Map-style training rows: the task and condition dropout are drawn per item."""

    def __init__(self, pairs: TokenPairs, text: TextEncoder, builder: SequenceBuilder, seed: int = 0):
        self.pairs, self.text, self.builder, self.seed = pairs, text, builder, seed
        self.rng, self.worker = random.Random(seed), None

    def __len__(self) -> int:
        return len(self.pairs.codes)

    def __getitem__(self, i: int) -> Example:
        info = torch.utils.data.get_worker_info()
        if info is not None and info.id != self.worker:  # each loader worker draws its own stream
            self.rng, self.worker = random.Random(info.seed), info.id
        return self.builder(self.text(self.pairs.captions[i]), self.pairs.codes[i].tolist(), self.rng)


class ValSequences(Dataset):
    """Validation rows: every image twice, once per task, no condition dropout (losses per task stay comparable)."""

    def __init__(self, pairs: TokenPairs, text: TextEncoder):
        self.pairs, self.text, self.vocab = pairs, text, text.vocab

    def __len__(self) -> int:
        return 2 * len(self.pairs.codes)

    def __getitem__(self, i: int) -> Example:
        j, task = divmod(i, 2)
        text, codes = self.text(self.pairs.captions[j]), self.pairs.codes[j].tolist()
        return t2i_example(self.vocab, text, codes) if task == T2I else i2t_example(self.vocab, text, codes)


class StreamedSequences(IterableDataset):
    """Raw image shards encoded on the fly (for data too large to hold): shard order and a buffer are shuffled."""

    def __init__(self, spec: str, tokenizer_dir: str, text: TextEncoder, builder: SequenceBuilder,
                 encode_batch: int = 64, shuffle_buffer: int = 1000, seed: int = 0):
        self.urls, self.tokenizer_dir, self.text, self.builder = expand_shards(spec), tokenizer_dir, text, builder
        self.encode_batch, self.shuffle_buffer, self.seed = encode_batch, shuffle_buffer, seed
        self.epoch = 0

    def __iter__(self) -> Iterator[Example]:
        from onetok.tokenizers import Tokenizer

        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        rng = random.Random(hash((self.seed, self.epoch, worker)))
        self.epoch += 1
        urls = self.urls[worker::workers] if len(self.urls) >= workers else self.urls
        urls = rng.sample(urls, len(urls))
        tokenizer = Tokenizer.from_pretrained(self.tokenizer_dir)
        buffer: list[Example] = []
        for sample, codes in encode_samples(tokenizer, iter_samples(urls, tokenizer.image_size), self.encode_batch):
            buffer.append(self.builder(self.text(sample["caption"] or ""), codes.tolist(), rng))
            if len(buffer) >= self.shuffle_buffer:
                yield buffer.pop(rng.randrange(len(buffer)))
        rng.shuffle(buffer)
        yield from buffer


# --------------------------------------------------------------------------------------------------------------------
# The DataModule
# --------------------------------------------------------------------------------------------------------------------


class ARDataModule(L.LightningDataModule):
    """Text->image and image->text rows from token shards or from raw image shards.

    Give exactly one of `tokens` (a `onetok tokenize` folder with meta.json) or `images` (an image dataset root with
    train/ and val/, or one shard spec; needs `tokenizer`, a tokenizer directory). `text`: "words" (the captions'
    word list; short sequences) or "bytes" (UTF-8, any text).
    """

    def __init__(
        self,
        tokens: str | None = None,
        images: str | None = None,
        tokenizer: str | None = None,
        text: str = "words",
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
        if text not in ("words", "bytes"):
            raise ValueError(f"text must be 'words' or 'bytes', not {text!r}")
        self.save_hyperparameters()
        self.data = tokens if tokens is not None else images
        self.tokens, self.text = tokens is not None, text
        self.batch_size, self.val_batch_size = batch_size, val_batch_size or batch_size
        self.t2i_ratio, self.cond_dropout = t2i_ratio, cond_dropout
        self.val_samples, self.max_text_tokens, self.in_memory = val_samples, max_text_tokens, in_memory
        self.encode_batch, self.shuffle_buffer, self.num_workers, self.seed = encode_batch, shuffle_buffer, num_workers, seed
        if tokenizer is None and not self.tokens:
            raise ValueError(f"{images}: raw image shards need `tokenizer` (a tokenizer directory)")
        self._tokenizer_arg, self._meta = tokenizer, None  # the token folder is read at first use, not here
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
    def tokenizer_dir(self) -> str:
        return str(Path(self._tokenizer_arg if self._tokenizer_arg is not None else self.meta["tokenizer"]["path"]).resolve())

    @property
    def vocab(self) -> Vocab:
        if self._vocab is None:
            self._vocab = self._build_vocab()
        return self._vocab

    def _build_vocab(self) -> Vocab:
        if self.tokens:
            if (Path(self.tokenizer_dir) / "model.safetensors").is_file():
                found = tokenizer_fingerprint(self.tokenizer_dir)
                if found != self.meta["tokenizer"]["fingerprint"]:
                    raise ValueError(f"{self.data}: token shards were made by another tokenizer than "
                                     f"{self.tokenizer_dir} (fingerprint {self.meta['tokenizer']['fingerprint']} "
                                     f"!= {found})")
            codebook, words = self.meta["codebook_size"], self.meta["words"]
            if words is None and self.text == "words":
                raise ValueError(f"{self.data}: too many distinct caption words for text='words'; use text='bytes'")
        else:
            from onetok.tokenizers import Tokenizer

            codebook = Tokenizer.from_pretrained(self.tokenizer_dir).codebook_size
            words = self._scan_words() if self.text == "words" else []
        return Vocab(codebook, WordText(words) if self.text == "words" else ByteText())

    def _scan_words(self) -> list[str]:
        """The word list of every caption in the raw shards (reads only the text members' bytes)."""
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

    def load_pairs(self, split: str, limit: int | None = None) -> TokenPairs | None:
        """A whole split (or its first `limit` samples) as codes + text ids in memory; None if the split is absent."""
        spec = self.split_spec(split)
        if spec is None:
            return None
        if self.tokens:
            samples = ((s, s["codes"]) for s in iter_token_samples(spec))
        else:
            from onetok.tokenizers import Tokenizer

            tokenizer = Tokenizer.from_pretrained(self.tokenizer_dir)
            samples = encode_samples(tokenizer, iter_samples(spec, tokenizer.image_size), self.encode_batch)
        return pairs_from_samples(samples, self.vocab.codebook_size, limit)

    # ---- Lightning hooks -------------------------------------------------------------------------------------------

    def setup(self, stage: str | None = None) -> None:
        if stage in (None, "fit") and self.train_pairs is None and (self.tokens or self.in_memory):
            self.train_pairs = self.load_pairs("train")
            if self.train_pairs is None:
                raise FileNotFoundError(f"{self.data}: no training shards")
        if self.val_pairs is None:
            self.val_pairs = self.load_pairs("val", self.val_samples)

    def text_encoder(self) -> TextEncoder:
        return TextEncoder(self.vocab, self.max_text_tokens)

    def _builder(self) -> SequenceBuilder:
        return SequenceBuilder(self.vocab, self.t2i_ratio, self.cond_dropout)

    def _loader_kwargs(self) -> dict:
        return {"num_workers": self.num_workers, "persistent_workers": self.num_workers > 0,
                "collate_fn": Collate(self.vocab.pad_id)}

    def train_dataloader(self) -> DataLoader:
        if self.train_pairs is not None:
            dataset = TrainSequences(self.train_pairs, self.text_encoder(), self._builder(), self.seed)
            generator = torch.Generator().manual_seed(self.seed)
            return DataLoader(dataset, batch_size=self.batch_size, shuffle=True, drop_last=True, generator=generator,
                              **self._loader_kwargs())
        dataset = StreamedSequences(self.split_spec("train"), self.tokenizer_dir, self.text_encoder(), self._builder(),
                                    self.encode_batch, self.shuffle_buffer, self.seed)
        return DataLoader(dataset, batch_size=self.batch_size, drop_last=True, **self._loader_kwargs())

    def val_dataloader(self) -> DataLoader | list:
        if self.val_pairs is None:
            return []
        return DataLoader(ValSequences(self.val_pairs, self.text_encoder()), batch_size=self.val_batch_size, shuffle=False,
                          **self._loader_kwargs())
