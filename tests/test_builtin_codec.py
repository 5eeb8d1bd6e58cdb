"""The built-in photo codec (tokenizers/pretrained/photo: tokenizer, post-filter, prior) from a fresh install: no
--tokenizer anywhere, decompress finds it by the file's fingerprint, the ids are range-coded with its prior."""

import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from onetok.data.images import sample_photo
from onetok.scripts.cli import main as onetok
from onetok.tokenizers.codec import format as otok
from onetok.tokenizers.registry import builtin, fingerprint_dir, prior_beside, prior_fingerprint_dir


def test_builtin_photo_codec_ships_whole():
    home = builtin()
    files = [home / "config.json", home / "model.safetensors", home / "prior" / "config.json",
             home / "prior" / "model.safetensors"]
    assert all(f.is_file() for f in files)
    assert sum(f.stat().st_size for f in files) <= 10 * 2**20  # the limit for the shipped weights
    assert prior_beside(home) == home / "prior"


def test_compress_and_decompress_without_tokenizer(tmp_path, capsys):
    photo = sample_photo()
    original = np.asarray(Image.open(photo).convert("RGB"), dtype=np.float64)
    H, W = original.shape[:2]
    assert onetok(["compress", str(photo), "-o", str(tmp_path / "p.otok"), "--bpp", "0.1", "--quiet"]) == 0
    data = (tmp_path / "p.otok").read_bytes()
    assert 8 * len(data) / (W * H) <= 0.1  # every byte of the file counted
    f = otok.loads(data)
    assert f.fingerprint.hex() == fingerprint_dir(builtin())
    assert f.prior_fingerprint.hex() == prior_fingerprint_dir(builtin() / "prior")  # range-coded with its prior
    assert onetok(["decompress", str(tmp_path / "p.otok"), "-o", str(tmp_path / "p.png"), "--quiet"]) == 0
    decoded = np.asarray(Image.open(tmp_path / "p.png").convert("RGB"), dtype=np.float64)
    assert decoded.shape == original.shape
    psnr = 10 * np.log10(255**2 / ((decoded - original) ** 2).mean())
    assert psnr > 20.0, psnr  # a real photo codec at 0.1 bpp (JPEG's lowest quality gives ~21 dB at ~0.1 bpp)


def test_unknown_fingerprint_says_what_to_pass(tmp_path, capsys):
    photo = sample_photo()
    assert onetok(["compress", str(photo), "-o", str(tmp_path / "p.otok"), "--tokens", "2", "--quiet"]) == 0
    data = bytearray((tmp_path / "p.otok").read_bytes())
    f = otok.loads(bytes(data))
    at = bytes(data).index(f.fingerprint)
    data[at] ^= 0xFF  # another tokenizer's file
    body = bytes(data[:-4])
    (tmp_path / "q.otok").write_bytes(body + struct.pack("<I", zlib.crc32(body)))  # a valid file, unknown fingerprint
    capsys.readouterr()
    assert onetok(["decompress", str(tmp_path / "q.otok"), "-o", str(tmp_path / "q.png")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and not (tmp_path / "q.png").exists()
    assert "--tokenizer" in err


@pytest.mark.parametrize("rate", [["--tokens", "4"], ["--psnr", "24"]])
def test_other_rate_controls(tmp_path, rate):
    out = tmp_path / "p.otok"
    assert onetok(["compress", str(sample_photo()), "-o", str(out), *rate, "--quiet"]) == 0
    assert onetok(["decompress", str(out), "-o", str(tmp_path / "p.png"), "--quiet"]) == 0
    assert Image.open(tmp_path / "p.png").size == Image.open(sample_photo()).size
