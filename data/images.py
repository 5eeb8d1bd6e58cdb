"""The one image loader: a file on disk -> an 8-bit RGB PIL image as it is displayed, plus notes on what changed.

Every command that reads a user's image goes through `load_image`, and the shard reader (`data/shards.py`) decodes
its members through `decode_image_bytes`, so the same picture always gives the same pixels:

- EXIF orientation is applied (the picture as a viewer shows it);
- grayscale (`L`, `1`), palette (`P`), CMYK and YCbCr images are converted to RGB;
- 16-bit and 32-bit integer images (`I;16`, `I`) and float images (`F`) are scaled to 8 bits (65535 -> 255), not
  clipped; 16-bit RGB PNGs are already reduced to 8 bits by Pillow;
- an alpha channel (`RGBA`, `LA`, `PA`, palette transparency) is composited on white, and a note says so;
- an animated file (GIF, APNG, WebP) gives its first frame, and a note says how many frames were dropped;
- a truncated or corrupt file, or one with more pixels than `max_pixels` (a decompression bomb), is an
  `ImageReadError` naming the file -- never a Pillow warning or a half-decoded picture.
"""

from __future__ import annotations

import io
import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image, ImageOps

SAMPLE_PHOTO = Path(__file__).resolve().parent / "photos" / "coffee.jpg"  # CC0, see photos/README.md
MAX_PIXELS = 178_956_970  # Pillow's own hard limit (2 x MAX_IMAGE_PIXELS); a larger image is refused
ALPHA_BACKGROUND = (255, 255, 255)


class ImageReadError(ValueError):
    """A file that is not a readable image (the message names the file and the reason)."""


class LoadedImage(NamedTuple):
    image: Image.Image  # mode "RGB", 8 bits per channel, EXIF orientation applied
    notes: tuple[str, ...]  # what was changed on the way (alpha composited, frames dropped, bits reduced)


def _to_8bit(image: Image.Image) -> tuple[Image.Image, str | None]:
    """High-bit-depth single-channel modes -> mode "L" by scaling, not clipping."""
    if image.mode.startswith("I;16"):
        values = np.asarray(image, dtype=np.float64) / 257.0
        note = "16-bit image reduced to 8 bits"
    elif image.mode == "I":
        values = np.asarray(image, dtype=np.float64)
        top = values.max(initial=0)
        if top > 255:  # 16- or 32-bit samples stored as int32: scale the format's range
            values = values / (257.0 if top <= 65535 else 16843009.0)
        note = "high-bit-depth image reduced to 8 bits"
    elif image.mode == "F":
        values = np.asarray(image, dtype=np.float64)
        values = values * 255.0 if values.max(initial=0) <= 1.0 else values
        note = "floating-point image reduced to 8 bits"
    else:
        return image, None
    return Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8), mode="L"), note


def _has_alpha(image: Image.Image) -> bool:
    return image.mode in ("RGBA", "LA", "PA", "La", "RGBa") or (image.mode == "P" and "transparency" in image.info)


def to_rgb(image: Image.Image) -> LoadedImage:
    """Any PIL image (already loaded, orientation applied) -> 8-bit RGB with notes, by the rules above."""
    notes = []
    image, note = _to_8bit(image)
    if note:
        notes.append(note)
    if _has_alpha(image):
        rgba = image.convert("RGBA")
        if rgba.getextrema()[3][0] < 255:  # some pixel is not opaque
            notes.append("alpha channel composited on white")
        background = Image.new("RGBA", rgba.size, ALPHA_BACKGROUND + (255,))
        image = Image.alpha_composite(background, rgba)
    rgb = image if image.mode == "RGB" else image.convert("RGB")  # CMYK, YCbCr, L, 1, P -> RGB
    return LoadedImage(rgb, tuple(notes))


def load_image(path: str | Path, max_pixels: int = MAX_PIXELS) -> LoadedImage:
    """Read `path` fully into an 8-bit RGB image (see the module docstring); `ImageReadError` otherwise."""
    return _read(Path(path), str(path), max_pixels)


def decode_image_bytes(data: bytes, name: str, max_pixels: int = MAX_PIXELS) -> LoadedImage:
    """The same for an image file's bytes (e.g. a shard member); `name` says where they came from in errors."""
    return _read(io.BytesIO(data), name, max_pixels)


def _read(source: Path | io.BytesIO, name: str, max_pixels: int) -> LoadedImage:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(source) as im:
                width, height = im.size
                if width * height > max_pixels:
                    raise ImageReadError(f"{name}: {width}x{height} px is more than the {max_pixels:,} pixels "
                                         f"allowed (a decompression bomb?)")
                frames = getattr(im, "n_frames", 1)
                im.seek(0)
                im.load()  # a truncated file fails here, not later
                ImageOps.exif_transpose(im, in_place=True)  # no copy when there is nothing to turn
                loaded = to_rgb(im)
    except ImageReadError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise ImageReadError(f"{name}: too many pixels ({err})".split("\n")[0]) from None
    except Exception as err:  # noqa: BLE001 - Pillow plugins raise many types for corrupt data
        raise ImageReadError(f"{name}: not a readable image ({type(err).__name__}: {err})".split("\n")[0]) from None
    if frames > 1:
        loaded = LoadedImage(loaded.image, loaded.notes + (f"first of {frames} frames coded, the others dropped",))
    return loaded


_SIGNATURES = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF87a", b"GIF89a", b"BM", b"II*\x00", b"MM\x00*",
               b"\x00\x00\x01\x00", b"\xff\x0a", b"\x00\x00\x00\x0cjP  ")  # JPEG PNG GIF BMP TIFF ICO JPEG-XL JP2


def image_suffixes() -> frozenset[str]:
    """The file extensions Pillow reads (lower case, with the dot)."""
    Image.init()
    return frozenset(ext.lower() for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN)


def looks_like_image(path: str | Path) -> bool:
    """Whether `path` is an image by its name (an extension Pillow reads) or by its first bytes (JPEG, PNG, GIF, WebP,
    BMP, TIFF, AVIF/HEIF, ...): what folder runs consider; a README or a licence file is neither."""
    path = Path(path)
    if path.suffix.lower() in image_suffixes():
        return True
    try:
        with open(path, "rb") as f:
            head = f.read(16)
    except OSError:
        return False
    return (head.startswith(_SIGNATURES) or (head[:4] == b"RIFF" and head[8:12] == b"WEBP")
            or (head[4:8] == b"ftyp" and head[8:12] in (b"avif", b"avis", b"heic", b"heix", b"mif1")))


def _raise(err: OSError) -> None:
    raise err


def files_below(folder: str | Path, on_error: Callable[[OSError], None] = _raise) -> list[Path]:
    """Every file below `folder` (recursive), hidden files and folders skipped, sorted: the one folder walker.
    `on_error` gets the OSError of a folder that cannot be listed (by default it is raised)."""
    files = []
    for root, dirs, names in os.walk(folder, onerror=on_error):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        files += [Path(root, n) for n in names if not n.startswith(".")]
    return sorted(files)


def image_files(folder: str | Path) -> list[Path]:
    """The images below `folder` (`looks_like_image`: by name or first bytes), sorted, hidden ones skipped."""
    return [p for p in files_below(folder) if looks_like_image(p)]


def sample_photo() -> Path:
    """The photo bundled with the package (600 x 400, CC0; attribution in `onetok/data/photos/README.md`)."""
    return SAMPLE_PHOTO
