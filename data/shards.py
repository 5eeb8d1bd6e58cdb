"""WebDataset shards: writing them deterministically, naming them, and reading samples back.

A shard is a tar, plain or gzip-compressed (`.tar` or `.tar.gz`; `tarfile` reads both as they are); the files of
one sample share a key (`000123.png`, `000123.txt`, `000123.json`). We read our own layout (`png` + `txt` + `json`)
and the img2dataset/LAION layout (`jpg` + `txt` + `json`) alike.
"""

from __future__ import annotations

import glob
import io
import json
import os
import tarfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image

from onetok.data.images import decode_image_bytes

IMAGE_EXTENSIONS = ("png", "jpg", "jpeg", "webp")
SHARD_PATTERNS = ("*.tar", "*.tar.gz")  # what a folder of shards is globbed for


def encode_png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


class ShardWriter:
    """Write samples into `folder/000000.tar`, `000001.tar`, ... with `shard_size` samples each.

    Tar members get fixed metadata (mtime 0, root owner) so a seed gives byte-identical shards; each shard is
    written to a temporary name and renamed when complete, so no half-written shard is ever visible.
    """

    def __init__(self, folder: str | os.PathLike, shard_size: int = 5000):
        if shard_size < 1:
            raise ValueError("shard_size must be >= 1")
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.shard_size = shard_size
        self.shard_index = 0
        self.count_in_shard = 0
        self.total = 0
        self._tar: tarfile.TarFile | None = None
        self._tmp: Path | None = None

    def _open(self) -> None:
        self._tmp = self.folder / f".{self.shard_index:06d}.tar.tmp"
        self._tar = tarfile.open(self._tmp, "w", format=tarfile.USTAR_FORMAT)

    def _close(self) -> None:
        if self._tar is not None:
            self._tar.close()
            os.replace(self._tmp, self.folder / f"{self.shard_index:06d}.tar")
            self._tar, self._tmp = None, None
            self.shard_index += 1
            self.count_in_shard = 0

    def write(self, key: str, files: dict[str, bytes]) -> None:
        if "." in key or "/" in key:
            raise ValueError(f"sample key {key!r} must not contain '.' or '/'")
        if self._tar is None:
            self._open()
        for ext, data in files.items():
            info = tarfile.TarInfo(f"{key}.{ext}")
            info.size, info.mtime, info.mode, info.uname, info.gname = len(data), 0, 0o644, "root", "root"
            self._tar.addfile(info, io.BytesIO(data))
        self.count_in_shard += 1
        self.total += 1
        if self.count_in_shard >= self.shard_size:
            self._close()

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self._close()
        elif self._tar is not None:  # failed: drop the partial shard
            self._tar.close()
            self._tmp.unlink(missing_ok=True)


def expand_shards(spec: str | os.PathLike | list) -> list[str]:
    """Shard paths from a directory (its `.tar` and `.tar.gz` files), a glob, a brace pattern
    (`dir/{000000..000009}.tar`), a file or a list."""
    if isinstance(spec, (list, tuple)):
        return [p for s in spec for p in expand_shards(s)]
    spec = str(spec)
    if os.path.isdir(spec):
        return sorted(p for pattern in SHARD_PATTERNS for p in glob.glob(os.path.join(spec, pattern)))
    if "{" in spec:
        import braceexpand

        return [p for p in braceexpand.braceexpand(spec)]
    if any(c in spec for c in "*?["):
        return sorted(glob.glob(spec))
    return [spec]


def decode_image(data: bytes, size: int | None = None, name: str = "image") -> Image.Image:
    """Decode image bytes to 8-bit RGB as displayed, by the one image loader (`onetok.data.images`: EXIF orientation,
    alpha on white, 16-bit scaled), then resize the short side to `size` and centre-crop a square (if `size`)."""
    image = decode_image_bytes(data, name).image
    if size is not None and image.size != (size, size):
        image = resize_center_crop(image, size)
    return image


def resize_center_crop(image: Image.Image, size: int) -> Image.Image:
    w, h = image.size
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    image = image.resize((nw, nh), Image.Resampling.BICUBIC if scale > 1 else Image.Resampling.LANCZOS)
    left, top = (nw - size) // 2, (nh - size) // 2
    return image.crop((left, top, left + size, top + size))


def image_to_array(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.uint8)


def sample_from_files(key: str, files: dict[str, bytes], size: int | None = None) -> dict:
    """Decode one raw sample (extension -> bytes); raises on a missing or corrupt image."""
    ext = next((e for e in IMAGE_EXTENSIONS if e in files), None)
    if ext is None:
        raise ValueError(f"sample {key}: no image ({'/'.join(IMAGE_EXTENSIONS)})")
    caption = files["txt"].decode("utf-8").strip() if "txt" in files else None
    meta = json.loads(files["json"]) if "json" in files else {}
    return {"key": key, "image": decode_image(files[ext], size, f"sample {key}"), "caption": caption, "json": meta}


def iter_raw_samples(path: str) -> Iterator[tuple[str, dict[str, bytes]]]:
    """Group the members of one tar by key; a truncated or corrupt tar ends the iteration with an OSError."""
    current, files = None, {}
    with tarfile.open(path, "r") as tar:
        for member in tar:
            if not member.isfile():
                continue
            name = os.path.basename(member.name)
            if "." not in name:
                continue
            key, ext = name.split(".", 1)
            if key != current and current is not None:
                yield current, files
                files = {}
            current = key
            files[ext.lower()] = tar.extractfile(member).read()
    if current is not None:
        yield current, files


class SkipCounter:
    """Counts skipped samples; warns once per `warn_every` skips so a bad shard never floods the log."""

    def __init__(self, warn_every: int = 100):
        self.count, self.warn_every = 0, warn_every

    def __call__(self, what: str, err: Exception) -> None:
        import warnings

        self.count += 1
        if self.count == 1 or self.count % self.warn_every == 0:
            warnings.warn(f"skipped {self.count} bad sample(s) so far; latest: {what}: {err}", stacklevel=2)


def iter_samples(spec, size: int | None = None, skips: SkipCounter | None = None) -> Iterator[dict]:
    """Decoded samples (`key`, `image` PIL RGB, `caption`, `json`) of every shard in `spec`, in order.

    Corrupt samples and truncated shards are skipped and counted in `skips`, never fatal.
    """
    skips = skips if skips is not None else SkipCounter()
    for path in expand_shards(spec):
        raw = iter_raw_samples(path)
        while True:
            try:
                key, files = next(raw)
            except StopIteration:
                break
            except (OSError, tarfile.TarError, EOFError) as err:
                skips(path, err)
                break
            try:
                yield sample_from_files(key, files, size)
            except Exception as err:  # noqa: BLE001 - any undecodable sample is skipped and counted
                skips(f"{path}:{key}", err)
