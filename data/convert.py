"""Turn a folder of your own images (JPEG/PNG/WebP, optional same-named .txt captions) into shards.

Every image is read by the one image loader (`onetok.data.images.load_image`: EXIF orientation, 16-bit scaled,
alpha on white, first frame), resized (short side) and centre-cropped to a square of `size` px and stored as PNG (or
JPEG) in the same layout as the shapes data (`OUT/train/*.tar`, and `OUT/val/*.tar` when a validation fraction is
asked for). `.txt` and `.json` files are captions and metadata (our layout, img2dataset's), never images; a file that
is not a readable image is skipped and counted, never fatal.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

from PIL import Image

from onetok.data.shards import ShardWriter, encode_png, resize_center_crop

CAPTION_SUFFIX = ".txt"
SIDECARS = (".txt", ".json")  # captions and metadata beside the images: not candidates


class ConvertSummary(NamedTuple):
    written: int
    skipped: int
    skipped_files: list[str]  # one line each: the file and why it was skipped


def list_inputs(src: Path) -> tuple[list[Path], dict[str, Path]]:
    """(candidate image files: images by name or content, captions by stem); a .txt is a caption when an image
    shares its stem."""
    from onetok.data.images import files_below, looks_like_image

    files = files_below(src)
    stems = {p.with_suffix("") for p in files if p.suffix.lower() != CAPTION_SUFFIX}
    captions = {str(p.with_suffix("")): p for p in files if p.suffix.lower() == CAPTION_SUFFIX and p.with_suffix("") in stems}
    candidates = [p for p in files if p.suffix.lower() not in SIDECARS and looks_like_image(p)]
    return candidates, captions


def not_images(src: Path) -> list[Path]:
    """The files below `src` that are neither images (by name or content) nor .txt/.json sidecars: a README, a
    licence, a table -- noted by the commands that read the folder, never counted as unreadable images."""
    from onetok.data.images import files_below, looks_like_image

    return [p for p in files_below(src) if p.suffix.lower() not in SIDECARS and not looks_like_image(p)]


def load_image(path: Path, size: int) -> Image.Image:
    """The image as displayed (`onetok.data.images.load_image`), resized and centre-cropped to `size`;
    `ImageReadError` for a file that is not a readable image."""
    from onetok.data.images import load_image as load_displayed

    return resize_center_crop(load_displayed(path).image, size)


def _is_val(path: Path, val_fraction: float) -> bool:
    if val_fraction <= 0:
        return False
    h = int.from_bytes(hashlib.sha1(str(path.name).encode()).digest()[:4], "big")
    return h / 2**32 < val_fraction


def encode(image: Image.Image, fmt: str) -> tuple[str, bytes]:
    if fmt == "png":
        return "png", encode_png(image)
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=95)
    return "jpg", buf.getvalue()


def convert_images(
    src: Path, out: Path, size: int = 256, shard_size: int = 5000, val_fraction: float = 0.0, fmt: str = "png",
    progress: Callable[[int], None] | None = None,
) -> ConvertSummary:
    candidates, captions = list_inputs(src)
    written, skipped = 0, []
    writers = {"train": ShardWriter(out / "train", shard_size)}
    if val_fraction > 0:
        writers["val"] = ShardWriter(out / "val", shard_size)
    with writers["train"], writers.get("val", writers["train"]):
        for path in candidates:
            if progress:
                progress(1)
            try:
                image = load_image(path, size)
            except ValueError as err:  # ImageReadError: not an image, a corrupt one or a bomb: skip and count
                skipped.append(str(err))
                continue
            files = dict([encode(image, fmt)])
            caption_path = captions.get(str(path.with_suffix("")))
            if caption_path is not None:
                files["txt"] = caption_path.read_text(encoding="utf-8", errors="replace").strip().encode()
            rel = str(path.relative_to(src))
            files["json"] = json.dumps({"source": rel, "width": image.width, "height": image.height}).encode()
            split = "val" if _is_val(path, val_fraction) else "train"
            writers[split].write(f"{written:08d}", files)
            written += 1
    return ConvertSummary(written, len(skipped), skipped)
