"""The tokenize stage: image shards -> token shards (ids + captions), named by THE tokenizer fingerprint.

`onetok tokenize` writes a token folder, WebDataset-style tars beside a `meta.json`:

    OUT/meta.json          format "onetok-tokens" v2: tokenizer fingerprint (`onetok.tokenizers.registry.fingerprint`,
                           hex), its config and the path it was read from, L, codebook size, samples per split
                           and per shard, the caption word list
    OUT/train/000000.tar   per sample: KEY.codes.npy (L,) int16/int32, KEY.txt (caption), KEY.json (attributes)
    OUT/val/000000.tar

With `flip` the training split also holds every image mirrored left-right (sample `KEY_flip` right after `KEY`,
same caption and attributes): augmentation for a model that trains on fixed ids.

The fingerprint, not the path, names the tokenizer: a token folder (and a model trained on it) moves to another
machine and finds its tokenizer there by fingerprint (`onetok.tokenizers.registry`).
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Callable, Iterator
from functools import lru_cache
from pathlib import Path
from typing import NamedTuple

import numpy as np

from onetok.data.pixels import from_hwc
from onetok.data.shards import ShardWriter, expand_shards, iter_raw_samples, iter_samples

META_FORMAT, META_VERSION = "onetok-tokens", 2
MAX_WORDS = 50000  # larger caption vocabularies are not kept in meta.json (use text="bytes" or a sentencepiece vocab)

# --------------------------------------------------------------------------------------------------------------------
# Images -> codes
# --------------------------------------------------------------------------------------------------------------------


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


def with_flips(samples: Iterator[dict]) -> Iterator[dict]:
    """Each sample, then its left-right mirror image as `KEY_flip`."""
    from PIL import Image

    for sample in samples:
        yield sample
        yield {**sample, "key": f"{sample['key']}_flip", "image": sample["image"].transpose(Image.Transpose.FLIP_LEFT_RIGHT)}


def encode_samples(tokenizer, samples: Iterator[dict], batch_size: int) -> Iterator[tuple[dict, np.ndarray]]:
    """(decoded image sample, its (L,) codes) pairs; images are encoded `batch_size` at a time on the tokenizer's
    device."""
    device = next(tokenizer.parameters()).device
    for batch in _batches(samples, batch_size):
        codes = tokenizer.encode(from_hwc([s["image"] for s in batch], device)).cpu().numpy()  # (B, L)
        yield from zip(batch, codes)


# --------------------------------------------------------------------------------------------------------------------
# Token shards
# --------------------------------------------------------------------------------------------------------------------


def encode_codes(codes: np.ndarray) -> bytes:
    """(L,) codes -> .npy bytes (int16 when every code fits, else int32)."""
    dtype = np.int16 if codes.size == 0 or int(codes.max()) < 2**15 else np.int32
    buf = io.BytesIO()
    np.save(buf, codes.astype(dtype), allow_pickle=False)
    return buf.getvalue()


@lru_cache(maxsize=16)
def _npy_layout(header: bytes) -> tuple[np.dtype, tuple[int, ...]]:
    buf = io.BytesIO(header)
    major, _ = np.lib.format.read_magic(buf)
    read_header = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
    shape, fortran, dtype = read_header(buf)
    if fortran:
        raise ValueError("Fortran-ordered codes.npy")
    return dtype, shape


def decode_codes(data: bytes) -> np.ndarray:
    """.npy bytes of `encode_codes` -> (L,) int64 (the header of a shard's samples is parsed once)."""
    if data[6] == 1:  # magic (6), version (2), header length (2 bytes in version 1, else 4), header
        offset = 10 + int.from_bytes(data[8:10], "little")
    else:
        offset = 12 + int.from_bytes(data[8:12], "little")
    dtype, shape = _npy_layout(data[:offset])
    return np.frombuffer(data, dtype=dtype, offset=offset).reshape(shape).astype(np.int64)


def token_sample(key: str, files: dict[str, bytes], where: str = "") -> dict:
    """One raw token-shard sample -> {"key", "codes" (L,) int64, "caption", "json"}."""
    if "codes.npy" not in files:
        raise ValueError(f"{where}: sample {key} has no codes.npy (not a token shard)")
    return {
        "key": key,
        "codes": decode_codes(files["codes.npy"]),
        "caption": files["txt"].decode("utf-8").strip() if "txt" in files else "",
        "json": json.loads(files["json"]) if "json" in files else {},
    }


def iter_token_samples(spec) -> Iterator[dict]:
    """Samples `key`, `codes` (L,) int64 array, `caption` str, `json` dict of every token shard in `spec`."""
    for path in expand_shards(spec):
        for key, files in iter_raw_samples(path):
            yield token_sample(key, files, path)


class TokenizeSummary(NamedTuple):
    counts: dict[str, int]  # samples written per split
    skipped: int  # unreadable samples skipped
    meta: dict


def _shard_counts(total: int, shard_size: int) -> list[int]:
    """Samples per shard of a `ShardWriter` that wrote `total` samples."""
    return [shard_size] * (total // shard_size) + ([total % shard_size] if total % shard_size else [])


def tokenize_dataset(
    tokenizer_dir: str | os.PathLike, data: str, out: str | os.PathLike, batch_size: int = 256,
    shard_size: int = 5000, progress: Callable[[int], None] | None = None, device: str = "cpu", flip: bool = False,
) -> TokenizeSummary:
    """Encode the image shards of `data` (a dataset root with train/ and val/, or one shard spec) into token shards
    in `out` (which must not exist yet: callers build into a temporary folder and rename it); with `flip` the
    training split gets the mirrored images too."""
    from onetok.data.shards import SkipCounter
    from onetok.tokenizers import Tokenizer
    from onetok.tokenizers.registry import fingerprint

    tokenizer = Tokenizer.from_pretrained(tokenizer_dir, map_location=device)
    out = Path(out)
    counts, words = {}, set()
    skips = SkipCounter()
    for split, spec in image_splits(data).items():
        samples = iter_samples(spec, size=tokenizer.image_size, skips=skips)
        if flip and split == "train":
            samples = with_flips(samples)
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
        "version": META_VERSION,
        "tokenizer": {"fingerprint": fingerprint(tokenizer).hex(), "path": str(Path(tokenizer_dir).resolve()),
                      "config": tokenizer.config.to_dict()},
        "num_latent_tokens": tokenizer.num_latent_tokens,
        "codebook_size": tokenizer.codebook_size,
        "image_size": tokenizer.image_size,
        "counts": counts,
        "flipped": ["train"] if flip and "train" in counts else [],
        "shard_counts": {split: _shard_counts(n, shard_size) for split, n in counts.items()},
        "words": sorted(words) if len(words) <= MAX_WORDS else None,
    }
    (out / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
    return TokenizeSummary(counts, skips.count, meta)


def read_meta(token_dir: str | os.PathLike) -> dict:
    path = Path(token_dir) / "meta.json"
    meta = json.loads(path.read_text())
    if meta.get("format") != META_FORMAT:
        raise ValueError(f"{path}: not an onetok token-shard meta.json")
    if meta.get("version") != META_VERSION:
        raise ValueError(f"{path}: token folder version {meta.get('version')} (this onetok reads version "
                         f"{META_VERSION}); make it again with `onetok tokenize`")
    return meta


def is_token_dir(path: str | os.PathLike) -> bool:
    return (Path(path) / "meta.json").is_file()
