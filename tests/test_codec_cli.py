"""`onetok compress / decompress / eval-compression`: round trip through files, sizes, rate control, finding the
tokenizer by fingerprint, --force, atomic writes, folder mode with bad files, and a one-line error (exit 2) for every
kind of bad single input."""

import json
import math
import os
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from onetok.data.pixels import from_hwc, to_hwc
from onetok.scripts.cli import main
from onetok.tokenizers import PRESETS, Tokenizer
from onetok.tokenizers.codec import format as otok


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """A tiny tokenizer folder, a second (different) one, and a folder of images incl. two bad files."""
    root = tmp_path_factory.mktemp("codec_cli")
    torch.manual_seed(0)
    Tokenizer(PRESETS["tiny"]).save_pretrained(root / "tok")
    torch.manual_seed(1)
    Tokenizer(PRESETS["tiny"]).save_pretrained(root / "other")
    rng = np.random.default_rng(0)
    images = root / "images"
    (images / "sub").mkdir(parents=True)
    for name, (w, h) in {"a.png": (16, 16), "b.png": (40, 20), "sub/c.jpg": (13, 31)}.items():
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(images / name)
    (root / "bad").mkdir()
    (root / "bad" / "notes.png").write_text("not an image\n")
    full = (images / "a.png").read_bytes()
    (root / "bad" / "broken.png").write_bytes(full[: len(full) // 2])  # a truncated PNG
    return root


def _run(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _one_line_error(err: str, name: str) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "error:" in lines[0] and str(name) in lines[0], err


@pytest.mark.parametrize("k", [1, 3, 8])
def test_roundtrip_matches_tokenizer(env, tmp_path, capsys, k):
    code, out, _ = _run(capsys, "compress", "--tokenizer", env / "tok", "--tokens", k, env / "images" / "a.png",
                        "-o", tmp_path / "a.otok")
    assert code == 0
    size = 33 + 9 + 2 + math.ceil(k * 6 / 8) + 4  # tiny: one 16 px tile, K = 64 -> 6 bits per id
    assert (tmp_path / "a.otok").stat().st_size == size
    assert f"{size} bytes" in out and f"{8 * size / 256:.4f} bits per original pixel" in out
    assert _run(capsys, "decompress", "--tokenizer", env / "tok", tmp_path / "a.otok", "-o", tmp_path / "a.png")[0] == 0
    tok = Tokenizer.from_pretrained(env / "tok")
    x = from_hwc([np.asarray(Image.open(env / "images" / "a.png"))])
    expected = to_hwc(tok.decode(tok.encode(x, k)))[0]
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "a.png")), expected)


@pytest.mark.parametrize("rate", [["--tokens", "2"], ["--bpp", "3"], ["--psnr", "20"], ["--scale", "0.5"]])
def test_rate_control_keeps_original_size(env, tmp_path, capsys, rate):
    code, out, _ = _run(capsys, "compress", "--tokenizer", env / "tok", *rate, env / "images" / "b.png",
                        "-o", tmp_path / "b.otok")
    assert code == 0 and "tokens per tile" in out
    f = otok.loads((tmp_path / "b.otok").read_bytes())
    assert (f.images[0].width, f.images[0].height) == (40, 20)
    if rate[0] == "--bpp":
        assert 8 * (tmp_path / "b.otok").stat().st_size <= 3 * 40 * 20
    if rate[0] == "--scale":
        assert (f.images[0].coded_width, f.images[0].coded_height) == (20, 10)
    assert _run(capsys, "decompress", tmp_path / "b.otok", "--tokenizer", env / "tok", "-o", tmp_path / "b.png")[0] == 0
    assert Image.open(tmp_path / "b.png").size == (40, 20)


@pytest.mark.parametrize("flags,message", [(["--tokens", "0"], "--tokens 0"), (["--bpp", "-1"], "--bpp -1"),
                                           (["--scale", "1.5"], "--scale 1.5"), (["--scale", "0"], "--scale 0")])
def test_bad_rate_flags(env, tmp_path, capsys, flags, message):
    code, _, err = _run(capsys, "compress", "--tokenizer", env / "tok", *flags, env / "images" / "a.png",
                        "-o", tmp_path / "a.otok")
    assert code == 2
    _one_line_error(err, message)
    assert not (tmp_path / "a.otok").exists()


def test_decompress_finds_the_tokenizer_by_fingerprint(env, tmp_path, capsys, monkeypatch):
    from onetok.tokenizers import registry

    assert _run(capsys, "compress", "--tokenizer", env / "tok", env / "images" / "b.png", "-o", tmp_path / "b.otok")[0] == 0
    monkeypatch.setenv("ONETOK_HOME", str(tmp_path / "home"))
    code, _, err = _run(capsys, "decompress", tmp_path / "b.otok", "-o", tmp_path / "b.png")
    assert code == 2 and "pass --tokenizer" in err and "registered" in err
    _one_line_error(err, tmp_path / "b.otok")
    link = registry.register(env / "tok", registry.fingerprint_dir(env / "tok"))
    assert link.parent == tmp_path / "home" / "tokenizers" and link.is_symlink()
    registry.register(env / "other", registry.fingerprint_dir(env / "other"))
    assert _run(capsys, "decompress", tmp_path / "b.otok", "-o", tmp_path / "b.png")[0] == 0
    assert Image.open(tmp_path / "b.png").size == (40, 20)


def test_folder_skips_are_counted_by_reason(env, tmp_path, capsys, monkeypatch):
    """The reason of a skipped file comes from the error's type (UnknownModel), not from its text."""
    files = tmp_path / "files"
    files.mkdir()
    assert _run(capsys, "compress", "--tokenizer", env / "tok", env / "images" / "b.png", "-o", files / "b.otok")[0] == 0
    (files / "c.otok").write_bytes(b"OTOK not really")
    monkeypatch.setenv("ONETOK_HOME", str(tmp_path / "home"))  # b.otok's tokenizer is registered nowhere
    code, _, err = _run(capsys, "decompress", files, "-o", tmp_path / "out")
    assert code == 2 and "all 2 input(s) skipped (1 unknown tokenizer, 1 unreadable)" in err


def test_force(env, tmp_path, capsys):
    target = tmp_path / "a.otok"
    args = ["compress", "--tokenizer", env / "tok", env / "images" / "a.png", "-o", target]
    assert _run(capsys, *args, "--tokens", 2)[0] == 0
    before = target.read_bytes()
    code, _, err = _run(capsys, *args, "--tokens", 8)
    assert code == 2 and "already exists" in err and target.read_bytes() == before
    _one_line_error(err, target)
    assert _run(capsys, *args, "--tokens", 8, "--force")[0] == 0
    assert len(target.read_bytes()) == len(before) + 6 - 2
    png = tmp_path / "a.png"
    assert _run(capsys, "decompress", "--tokenizer", env / "tok", target, "-o", png)[0] == 0
    assert _run(capsys, "decompress", "--tokenizer", env / "tok", target, "-o", png)[0] == 2
    assert _run(capsys, "decompress", "--tokenizer", env / "tok", target, "-o", png, "--force")[0] == 0


def test_folder_mode_skips_bad_files(env, tmp_path, capsys):
    code, out, err = _run(capsys, "compress", "--tokenizer", env / "tok", "--quiet", env / "images", env / "bad",
                          "-o", tmp_path / "otok")
    assert code == 1  # a partly failed folder run
    written = sorted(p.relative_to(tmp_path / "otok").as_posix() for p in (tmp_path / "otok").rglob("*.otok"))
    assert written == ["a.otok", "b.otok", "sub/c.otok"]
    assert "compressed 3 image(s)" in out and "skipped 2 (2 unreadable)" in out
    total = sum(p.stat().st_size for p in (tmp_path / "otok").rglob("*.otok"))
    assert total == sum(48 + 6 * tiles for tiles in (1, 6, 2)) and f"{total} bytes" in out  # L = 8 tokens of 6 bits
    assert "notes.png" in err and "broken.png" in err
    (tmp_path / "otok" / "junk.otok").write_bytes(b"OTOK\x01garbage")
    code, out, err = _run(capsys, "decompress", "--tokenizer", env / "tok", "--quiet", tmp_path / "otok",
                          "-o", tmp_path / "png")
    assert code == 1 and "into 3 PNG image(s)" in out and "skipped 1" in out and "junk.otok" in err
    sizes = {p.name: Image.open(p).size for p in (tmp_path / "png").rglob("*.png")}
    assert sizes == {"a.png": (16, 16), "b.png": (40, 20), "c.png": (13, 31)}


def test_output_folder_inside_input_is_refused(env, tmp_path, capsys):
    """Issue 24: an output is never inside an input folder (a second run would read its own outputs)."""
    images = shutil.copytree(env / "images", tmp_path / "images")
    before = sorted(p.name for p in images.rglob("*"))
    code, _, err = _run(capsys, "compress", "--tokenizer", env / "tok", "--quiet", "--force", images,
                        "-o", images / "otok")
    assert code == 2 and "inside the input folder" in err
    assert sorted(p.name for p in images.rglob("*")) == before


def test_folder_mode_refuses_before_writing(env, tmp_path, capsys):
    (tmp_path / "otok").mkdir()
    (tmp_path / "otok" / "b.otok").write_bytes(b"keep")
    code, _, err = _run(capsys, "compress", "--tokenizer", env / "tok", "--quiet", env / "images",
                        "-o", tmp_path / "otok")
    assert code == 2 and "b.otok" in err
    assert sorted(os.listdir(tmp_path / "otok")) == ["b.otok"]  # nothing written, nothing left behind


def test_batch_file(env, tmp_path, capsys):
    inputs = [env / "images" / "a.png", env / "images" / "b.png", env / "images" / "sub" / "c.jpg"]
    code, out, _ = _run(capsys, "compress", "--tokenizer", env / "tok", "--batch", "--tokens", 5, *inputs,
                        "-o", tmp_path / "all.otok")
    assert code == 0
    size = 33 + 3 * (9 + 2) + sum(math.ceil(tiles * 5 * 6 / 8) for tiles in (1, 6, 2)) + 4
    assert (tmp_path / "all.otok").stat().st_size == size and f"{size} bytes" in out
    assert _run(capsys, "decompress", "--tokenizer", env / "tok", tmp_path / "all.otok", "-o", tmp_path / "out")[0] == 0
    sizes = [Image.open(tmp_path / "out" / f"all_{i:03d}.png").size for i in range(3)]
    assert sizes == [(16, 16), (40, 20), (13, 31)]


@pytest.mark.parametrize("case", ["not-image", "corrupt-image", "missing", "bad-tokens", "bad-tokenizer"])
def test_compress_bad_single_input(env, tmp_path, capsys, case):
    src = {"not-image": env / "bad" / "notes.png", "corrupt-image": env / "bad" / "broken.png",
           "missing": tmp_path / "nope.png"}.get(case, env / "images" / "a.png")
    tok = tmp_path if case == "bad-tokenizer" else env / "tok"
    tokens = ["--tokens", 9] if case == "bad-tokens" else []
    code, _, err = _run(capsys, "compress", "--tokenizer", tok, *tokens, src, "-o", tmp_path / "x.otok")
    assert code == 2
    _one_line_error(err, {"bad-tokens": "--tokens 9", "bad-tokenizer": tmp_path}.get(case, src))
    assert not (tmp_path / "x.otok").exists()


@pytest.mark.parametrize("case", ["magic", "truncated", "crc", "other-tokenizer", "empty"])
def test_decompress_bad_single_input(env, tmp_path, capsys, case):
    assert _run(capsys, "compress", "--tokenizer", env / "tok", env / "images" / "a.png", "-o", tmp_path / "a.otok")[0] == 0
    data = (tmp_path / "a.otok").read_bytes()
    bad = tmp_path / "bad.otok"
    bad.write_bytes({"magic": b"GIF8" + data[4:], "truncated": data[:-3], "crc": data[:-1] + bytes([data[-1] ^ 4]),
                     "other-tokenizer": data, "empty": b""}[case])
    tok = env / ("other" if case == "other-tokenizer" else "tok")
    code, _, err = _run(capsys, "decompress", "--tokenizer", tok, bad, "-o", tmp_path / "bad.png")
    assert code == 2
    _one_line_error(err, bad)
    assert {"magic": "bad magic", "truncated": "truncated", "crc": "CRC", "other-tokenizer": "different tokenizer",
            "empty": "truncated"}[case] in err
    assert not (tmp_path / "bad.png").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any folder")
def test_unreadable_folder(env, tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0)
    try:
        code, _, err = _run(capsys, "compress", "--tokenizer", env / "tok", locked, "-o", tmp_path / "out")
    finally:
        locked.chmod(0o755)
    assert code == 2
    _one_line_error(err, locked)


def test_unreadable_subfolder(env, tmp_path, capsys, monkeypatch):
    """os.walk reports an unreadable subfolder through onerror (simulated: the suite may run as root)."""
    real_walk = os.walk

    def walk(top, onerror=None, **kw):
        yield from real_walk(top, **kw)
        onerror(PermissionError(13, "Permission denied", str(env / "images" / "private")))

    monkeypatch.setattr("onetok.scripts.folder_runs.os.walk", walk)
    code, _, err = _run(capsys, "compress", "--tokenizer", env / "tok", env / "images", "-o", tmp_path / "out")
    assert code == 2
    _one_line_error(err, env / "images" / "private")
    assert "unreadable folder" in err


def test_atomic_writes_leave_nothing_on_failure(env, tmp_path, capsys, monkeypatch):
    assert _run(capsys, "compress", "--tokenizer", env / "tok", env / "images" / "a.png", "-o", tmp_path / "a.otok")[0] == 0
    out = tmp_path / "png"

    def failing_save(self, fp, format=None, **params):
        with open(fp, "wb") as fh:
            fh.write(b"\x89PNG partial")
        raise OSError("disk full")

    monkeypatch.setattr(Image.Image, "save", failing_save)
    assert main(["decompress", "--tokenizer", str(env / "tok"), str(tmp_path / "a.otok"), "-o", str(out / "a.png")]) == 2
    assert "disk full" in capsys.readouterr().err  # one line from cli.main, no traceback
    assert not out.exists() or os.listdir(out) == []  # neither a.png nor its temporary file

    monkeypatch.undo()

    def interrupted_write(self, data):
        with open(self, "wb") as fh:
            fh.write(data[:10])
        raise KeyboardInterrupt

    monkeypatch.setattr("pathlib.Path.write_bytes", interrupted_write)
    assert main(["compress", "--tokenizer", str(env / "tok"), str(env / "images" / "b.png"), "-o",
                 str(tmp_path / "b.otok")]) == 130
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["a.otok"]  # no temp file, no b.otok


def test_eval_compression(env, tmp_path, capsys):
    report = tmp_path / "report"
    args = ["eval-compression", "--tokenizer", env / "tok", "--quiet", "--bpp", "1,4", "--codecs", "jpeg,webp",
            env / "images", "--out", report]
    code, out, err = _run(capsys, *args)
    assert code == 0
    lines = (report / "rd.csv").read_text().splitlines()
    assert lines[0] == "image,codec,setting,width,height,bytes,bpp,psnr,ssim"
    assert len(lines) == 1 + 3 * (4 + 2 + 16 + 13)  # images x (fixed k 1,2,4,8 + 2 targets + JPEG + WebP grids)
    for name in ("rd.png", "equal_bytes.png"):
        assert Image.open(report / name).format == "PNG"
    summary = json.loads((report / "rd.json").read_text())
    assert summary["images"] == 3 and set(summary["bd_rate_percent"]) == {"otok vs otok-fixed", "otok vs jpeg",
                                                                          "otok vs webp"}
    assert "otok" in out and "jpeg" in out and "webp" in out and "BD-rate" in out
    code, _, err = _run(capsys, *args)
    assert code == 2 and "already exists" in err
    code, _, err = _run(capsys, "eval-compression", "--tokenizer", env / "tok", "--quiet", env / "bad",
                        "--out", tmp_path / "r2")
    assert code == 2 and "nothing evaluated" in err and not (tmp_path / "r2").exists()


def test_demo_report_names_curves_without_overlap():
    """rd.json stores null for a BD-rate whose curves share no PSNR range; the demo report says so."""
    from onetok.demo_report import _photo_markdown

    ladder = [{"target_bpp": 0.1, "bytes": 3000, "bpp": 0.1, "psnr": 23.0, "png": "a.png"}]
    text = "\n".join(_photo_markdown({"ladder": ladder, "bd_rate_percent": {"otok vs jpeg": -50.0,
                                                                             "otok vs webp": None}}))
    assert "otok vs jpeg -50.0%" in text and "otok vs webp no overlap" in text
