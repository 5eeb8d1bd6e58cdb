"""Stored `.otok` files decode as they did when they were written: a change of code, of a bitstream constant
(tokenizers/codec/format.py, FORMAT CONSTANTS), of a table or of torch that breaks an existing file fails here.

tests/data/otok/ holds small files made with the built-in photo codec from crops of onetok/data/photos/coffee.jpg
(CC0; onetok/data/photos/README.md): every rate mode, bit-packed and range-coded (payload 2, the portable coder),
odd sizes, a downscaled image, a multi-image file, a grid of more than CHUNK tiles, a file of the float coder of
onetok 0.1 (payload 1) and a legacy version-1 file. manifest.json records for each the counts and ids every image
must decode to (compared exactly) and the SHA-256 of the pixels this machine decoded, with a reference PNG: the
decoder network is float, so another machine may differ by rounding, within PIXEL_TOLERANCE 8-bit levels
(tests/test_portable_coder.py measures it). `python tests/test_stored_files.py` rewrites the folder (never needed
unless the format gets a new version or payload: old files must keep decoding; existing .otok files are kept).
"""

from __future__ import annotations

import hashlib
import json
import sys
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

DATA = Path(__file__).resolve().parent / "data" / "otok"
PIXEL_TOLERANCE = 2  # 8-bit levels, as tests/test_portable_coder.py
MANIFEST = DATA / "manifest.json"
# name: (crop box of coffee.jpg or a list of them, rate control fields, entropy-coded, resize of the crop)
MADE = {
    "k4_37x23": ([(300, 150, 337, 173)], {"tokens": 4}, True, None),
    "bpp_100x61": ([(250, 120, 350, 181)], {"bpp": 0.6}, True, None),
    "psnr_64x40": ([(150, 200, 214, 240)], {"psnr": 24.0}, True, None),
    "all_tokens_scaled_90x50": ([(330, 60, 420, 110)], {"scale": 0.6}, True, None),
    "packed_bpp_100x61": ([(250, 120, 350, 181)], {"bpp": 0.8}, False, None),
    "packed_k8_37x23": ([(300, 150, 337, 173)], {"tokens": 8}, False, None),
    "batch_2_images": ([(100, 60, 171, 93), (400, 300, 448, 332)], {"bpp": 0.7}, True, None),
    "chunk_1089_tiles": ([(0, 0, 600, 400)], {"tokens": 3}, True, (1056, 1056)),  # 33 x 33 tiles > CHUNK, k > 2
}


@lru_cache(maxsize=1)
def builtin_codec():
    from onetok.tokenizers import Tokenizer
    from onetok.tokenizers.codec.codec import Codec
    from onetok.tokenizers.codec.prior import TilePrior
    from onetok.tokenizers.registry import builtin

    return Codec(Tokenizer.from_pretrained(builtin()).eval(), TilePrior.from_pretrained(builtin() / "prior"))


def pixels_sha256(image: Image.Image) -> str:
    array = np.asarray(image.convert("RGB"), dtype=np.uint8)
    return hashlib.sha256(f"{array.shape}".encode() + array.tobytes()).hexdigest()


def decode(data: bytes, ids_only: bool = False):
    """[(counts, ids)] and [decoded image] (empty with `ids_only`) of a stored file."""
    from onetok.tokenizers.codec import format as otok

    codec = builtin_codec()
    f = otok.loads(data, codec.fingerprint)
    if isinstance(f, otok.OtokFile):  # version 1: one k for every image
        ids = [(np.array([f.num_tokens]), row) for row in f.ids]
    else:
        ids = [(t.counts, t.ids) for t in (codec.ids(f, im) for im in f.images)]
    return ids, ([] if ids_only else codec.decode(f))


# --------------------------------------------------------------------------------------------------------------------
# The tests
# --------------------------------------------------------------------------------------------------------------------


def _entries() -> list[tuple[str, dict]]:
    return sorted(json.loads(MANIFEST.read_text())["files"].items()) if MANIFEST.exists() else []


@pytest.mark.parametrize("name, entry", _entries(), ids=[n for n, _ in _entries()])
def test_stored_file_decodes_to_its_ids_and_pixels(name, entry):
    from onetok.tokenizers.codec import format as otok

    data = (DATA / f"{name}.otok").read_bytes()
    f = otok.loads(data)
    assert otok.dumps(f) == data  # still canonical
    assert (f.payload if isinstance(f, otok.TiledFile) else "v1") == entry["payload"]
    try:
        ids, images = decode(data, ids_only=entry.get("ids_only", False))
    except otok.OtokError as err:  # only the float coder may fail elsewhere, and must say what to do
        assert entry["payload"] == "float" and "onetok recode" in str(err), err
        return
    assert len(ids) == len(entry["images"])
    for (counts, got), want in zip(ids, entry["images"]):
        assert counts.tolist() == want["counts"] and got.tolist() == want["ids"]
    for i, (image, want) in enumerate(zip(images, entry["images"])):
        reference = np.asarray(Image.open(DATA / f"{name}_{i}.png").convert("RGB"), dtype=np.int16)
        assert pixels_sha256(Image.fromarray(reference.astype(np.uint8))) == want["pixels_sha256"]
        assert image.size == (reference.shape[1], reference.shape[0])
        assert np.abs(np.asarray(image, dtype=np.int16) - reference).max() <= PIXEL_TOLERANCE


def test_every_rate_mode_and_payload_is_stored():
    entries = dict(_entries())
    assert len(entries) >= 10
    assert {e["payload"] for e in entries.values()} == {"packed", "float", "entropy", "v1"}
    assert {m for e in entries.values() for m in e.get("rate", {})} >= {"tokens", "bpp", "psnr", "scale"}
    assert any(len(e["images"]) > 1 for e in entries.values())


# --------------------------------------------------------------------------------------------------------------------
# Making the files (run once: python tests/test_stored_files.py [FLOAT_CODER.otok LEGACY_V1.otok])
# --------------------------------------------------------------------------------------------------------------------


def _record(name: str, data: bytes, rate: dict, payload: str, ids_only: bool = False) -> dict:
    (DATA / f"{name}.otok").write_bytes(data)
    ids, images = decode(data, ids_only)
    for i, image in enumerate(images):
        image.save(DATA / f"{name}_{i}.png")
    shas = [pixels_sha256(image) for image in images] or [None] * len(ids)
    return {"payload": payload, "rate": rate, "bytes": len(data), "ids_only": ids_only,
            "images": [{"counts": c.tolist(), "ids": i.tolist(), "pixels_sha256": s} for (c, i), s in zip(ids, shas)]}


def regenerate(float_coder: Path | None, legacy_v1: Path | None) -> None:
    from onetok.data.images import sample_photo
    from onetok.tokenizers.codec import format as otok
    from onetok.tokenizers.codec.codec import Codec, RateControl

    DATA.mkdir(parents=True, exist_ok=True)
    photo = Image.open(sample_photo()).convert("RGB")
    files = {}
    for name, (boxes, rate, coded, resize) in MADE.items():
        path = DATA / f"{name}.otok"
        if path.exists():  # a stored file is never re-encoded: only its record is rebuilt
            data = path.read_bytes()
        else:
            crops = [photo.crop(box) for box in boxes]
            crops = [c.resize(resize, Image.Resampling.BICUBIC) for c in crops] if resize else crops
            codec = builtin_codec() if coded else Codec(builtin_codec().tokenizer)
            data = codec.compress(crops, RateControl(**rate))
        files[name] = _record(name, data, rate, "entropy" if coded else "packed", ids_only=resize is not None)
    for name, source, payload in (("float_coder_2_images", float_coder, "float"), ("legacy_v1", legacy_v1, "v1")):
        if source is not None:  # made by onetok 0.1's encoders (no longer in the library)
            files[name] = _record(name, Path(source).read_bytes(), {"psnr": 24.0} if payload == "float" else {}, payload)
        elif MANIFEST.exists():
            files[name] = json.loads(MANIFEST.read_text())["files"][name]
    source = "crops of onetok/data/photos/coffee.jpg (CC0, Rachel Michetti / Pikolo Espresso Bar; see its README)"
    MANIFEST.write_text(json.dumps({"source": source, "format_version": otok.VERSION, "files": files}, indent=1) + "\n")


if __name__ == "__main__":
    regenerate(*(Path(p) for p in sys.argv[1:3])) if len(sys.argv) == 3 else regenerate(None, None)
