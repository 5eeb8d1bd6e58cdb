"""The data pipeline: shapes shards, the caption/pixel contract, the image converter, the DataModule."""

import hashlib
import io
import json
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from onetok.data.datamodule import ImageShardDataModule
from onetok.data.shapes import (
    ATTRIBUTES,
    BACKGROUNDS,
    COLORS,
    POSITIONS,
    SIZES,
    caption_of,
    parse_caption,
    parse_image,
    render,
    write_shapes_dataset,
)
from onetok.data.shards import ShardWriter, encode_png, expand_shards, iter_samples
from onetok.scripts.cli import main as cli


@pytest.fixture(scope="module")
def shapes_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("shapes") / "ds"
    assert cli(["data", "shapes", "--out", str(out), "--train", "300", "--val", "60", "--shard-size", "128",
                "--quiet"]) == 0
    return out


def _digest(folder: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*.tar")):
        h.update(p.relative_to(folder).as_posix().encode())
        h.update(p.read_bytes())
    return h.hexdigest()


# ---- shapes --------------------------------------------------------------------------------------------------------


def test_shard_layout(shapes_dir):
    assert [p.name for p in sorted((shapes_dir / "train").iterdir())] == ["000000.tar", "000001.tar", "000002.tar"]
    assert [p.name for p in sorted((shapes_dir / "val").iterdir())] == ["000000.tar"]
    with tarfile.open(shapes_dir / "train" / "000000.tar") as tar:
        names = tar.getnames()
    assert len(names) == 128 * 3
    key = names[0].split(".")[0]
    assert {f"{key}.png", f"{key}.txt", f"{key}.json"} <= set(names)
    samples = list(iter_samples(shapes_dir / "val"))
    assert len(samples) == 60
    assert samples[0]["image"].size == (32, 32) and samples[0]["image"].mode == "RGB"


def test_deterministic_for_a_seed(tmp_path, shapes_dir):
    again = tmp_path / "again"
    assert cli(["data", "shapes", "--out", str(again), "--train", "300", "--val", "60", "--shard-size", "128",
                "--quiet"]) == 0
    assert _digest(again) == _digest(shapes_dir)
    other = tmp_path / "other"
    assert cli(["data", "shapes", "--out", str(other), "--train", "300", "--val", "60", "--shard-size", "128",
                "--seed", "1", "--quiet"]) == 0
    assert _digest(other) != _digest(shapes_dir)


def test_every_caption_matches_its_pixels_and_json(shapes_dir):
    samples = list(iter_samples(shapes_dir / "train")) + list(iter_samples(shapes_dir / "val"))
    seen = {name: set() for name in ATTRIBUTES}
    for s in samples:
        attrs = parse_caption(s["caption"])
        assert attrs is not None and caption_of(attrs) == s["caption"]
        assert {k: s["json"][k] for k in attrs} == attrs
        assert parse_image(np.asarray(s["image"])) == attrs, s["caption"]
        for name in ATTRIBUTES:
            seen[name].add(attrs[name])
    assert all(seen[name] == set(values) for name, values in ATTRIBUTES.items())


def test_render_follows_the_contract():
    attrs = {"size": "large", "color": "blue", "shape": "square", "position": "top left", "background": "white",
             "jitter": [0.0, 0.0]}
    img = np.asarray(render(attrs, 64)).astype(int)
    assert tuple(img[-1, -1]) == BACKGROUNDS["white"]
    side, (fx, fy) = SIZES["large"] * 64, POSITIONS["top left"]
    inside = img[int(fy * 64), int(fx * 64)]
    assert tuple(inside) == COLORS["blue"]
    mask = (np.abs(img - np.array(COLORS["blue"])).sum(-1) < 10)
    ys, xs = np.nonzero(mask)
    assert abs((xs.max() - xs.min() + 1) - side) <= 1.0 and abs((xs.min() + xs.max() + 1) / 2 - fx * 64) <= 0.5
    tri = np.asarray(render({**attrs, "shape": "triangle"}, 64)).astype(int)
    rows = (np.abs(tri - np.array(COLORS["blue"])).sum(-1) < 10).sum(1)
    filled = rows[rows > 0]
    assert filled[0] < filled[-1]  # apex up, base at the bottom


def test_parse_caption_rejects_garbage():
    assert parse_caption("a small red circle in the top left on a black background") == {
        "size": "small", "color": "red", "shape": "circle", "position": "top left", "background": "black"}
    for bad in ["", "a small red circle", "a huge red circle in the center on a black background",
                "a small red circle in the middle on a black background",
                "a small red circle in the center on a black backdrop"]:
        assert parse_caption(bad) is None


def test_parse_image_blank_is_none():
    assert parse_image(np.full((32, 32, 3), 128, np.uint8)) is None


def test_holdout_combos(tmp_path):
    summary = write_shapes_dataset(tmp_path, size=16, train=200, val=50, seed=3, shard_size=1000, holdout=0.1)
    held = {tuple(c) for c in summary["holdout_combos"]}
    assert len(held) == 9  # 10% of 6 colours x 3 shapes x 5 positions
    for split in ("train", "val"):
        for s in iter_samples(tmp_path / split):
            combo = (s["json"]["color"], s["json"]["shape"], s["json"]["position"])
            assert (combo in held) == (split == "val") == s["json"]["holdout"]
            assert s["json"]["split"] == split


def test_refuses_to_overwrite(shapes_dir, capsys):
    assert cli(["data", "shapes", "--out", str(shapes_dir), "--train", "1", "--val", "1", "--quiet"]) == 2
    assert "already exists" in capsys.readouterr().err


def test_shapes_cli_is_fast(tmp_path):
    """The acceptance example: 2000 + 200 images in seconds (a generous bound; it takes ~1 s)."""
    import time

    start = time.time()
    out = subprocess.run([sys.executable, "-m", "onetok.scripts.cli", "data", "shapes", "--out", str(tmp_path / "s"),
                          "--train", "2000", "--val", "200", "--quiet"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert time.time() - start < 30
    assert "wrote 2000 train + 200 val" in out.stdout


# ---- converter -----------------------------------------------------------------------------------------------------


def _jpeg_bytes(size=(40, 30), color=(200, 10, 10)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def test_converter_skips_bad_files(tmp_path, capsys):
    src = tmp_path / "src"
    src.mkdir()
    (src / "good.jpg").write_bytes(_jpeg_bytes())
    (src / "good.txt").write_text("a red rectangle\n")
    Image.new("RGB", (20, 50), (0, 0, 255)).save(src / "tall.png")
    Image.new("RGB", (50, 20), (0, 255, 0)).save(src / "wide.webp")
    (src / "truncated.jpg").write_bytes(_jpeg_bytes((64, 64))[:300])
    (src / "notes.txt").write_text("not an image and not a caption")
    out = tmp_path / "out"
    assert cli(["data", "images", str(src), "--out", str(out), "--size", "16", "--quiet"]) == 1  # partly failed
    captured = capsys.readouterr()
    assert "written: 3, skipped: 1" in captured.out  # notes.txt is a sidecar, not a bad image
    assert "truncated.jpg" in captured.err and "notes.txt" not in captured.err
    samples = list(iter_samples(out / "train"))
    assert len(samples) == 3 and all(s["image"].size == (16, 16) for s in samples)
    by_source = {s["json"]["source"]: s for s in samples}
    assert by_source["good.jpg"]["caption"] == "a red rectangle"
    assert by_source["tall.png"]["caption"] is None


def test_converter_rejects_missing_folder(tmp_path, capsys):
    assert cli(["data", "images", str(tmp_path / "nope"), "--out", str(tmp_path / "o"), "--quiet"]) == 2
    assert "not a readable folder" in capsys.readouterr().err


# ---- shards and DataModule -----------------------------------------------------------------------------------------


def test_expand_shards(shapes_dir):
    train = shapes_dir / "train"
    assert len(expand_shards(train)) == 3
    assert expand_shards(str(train / "{000000..000001}.tar")) == [str(train / "000000.tar"), str(train / "000001.tar")]
    assert len(expand_shards(str(train / "*.tar"))) == 3


@pytest.mark.parametrize("in_memory", [False, True])
def test_datamodule_batches_with_two_workers(shapes_dir, in_memory):
    dm = ImageShardDataModule(str(shapes_dir / "train"), str(shapes_dir / "val"), image_size=32, batch_size=16,
                              num_workers=2, epoch_samples=96, in_memory=in_memory, shuffle_buffer=50)
    dm.setup("fit")
    batches = list(dm.train_dataloader())
    assert len(batches) == (300 // 16 if in_memory else 96 // 16)  # map-style epochs are the whole split
    for b in batches:
        assert b["image"].shape == (16, 3, 32, 32) and b["image"].dtype == torch.float32
        assert 0.0 <= b["image"].min() and b["image"].max() <= 1.0
        assert len(b["caption"]) == 16 and all(c.startswith("a ") for c in b["caption"])
    val = list(dm.val_dataloader())
    assert sum(len(b["caption"]) for b in val) == 60
    keys = [k for b in val for k in b["key"]]
    assert len(set(keys)) == 60


def _write_laion_shard(path: Path, n: int, corrupt: set[int]) -> None:
    with ShardWriter(path, shard_size=1000) as w:
        for i in range(n):
            data = _jpeg_bytes((48, 36)) if i not in corrupt else b"\xff\xd8garbage"
            w.write(f"{i:09d}", {"jpg": data, "txt": f"caption {i}".encode(),
                                 "json": json.dumps({"key": f"{i:09d}", "status": "success"}).encode()})


def test_datamodule_reads_laion_layout_and_skips_corrupt(tmp_path):
    _write_laion_shard(tmp_path / "laion", 20, corrupt={3, 7})
    shard = tmp_path / "laion" / "000000.tar"
    truncated = tmp_path / "laion" / "000001.tar"
    with tarfile.open(shard) as tar:
        cut = next(m.offset for m in tar.getmembers() if m.name.startswith("000000002."))
    truncated.write_bytes(shard.read_bytes()[: cut + 700])  # cut inside sample 2: samples 0 and 1 stay readable
    dm = ImageShardDataModule(str(tmp_path / "laion"), str(tmp_path / "laion"), image_size=24, batch_size=4,
                              num_workers=0, epoch_samples=40)
    dm.setup("fit")
    with pytest.warns(UserWarning, match="skipped"):
        val = list(dm.val_dataloader())
    captions = [c for b in val for c in b["caption"]]
    assert len(captions) == 18 + 2  # 18 good samples of the full shard + 2 before the cut
    assert val[0]["image"].shape[1:] == (3, 24, 24)
    train = list(dm.train_dataloader())
    assert len(train) == 10 and all(b["image"].shape == (4, 3, 24, 24) for b in train)


def test_png_encoding_round_trip():
    img = Image.new("RGB", (8, 8), (1, 2, 3))
    with Image.open(io.BytesIO(encode_png(img))) as back:
        assert np.array_equal(np.asarray(back), np.asarray(img))
