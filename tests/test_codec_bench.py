"""The codec's benchmark library (`onetok.tokenizers.codec.bench`, behind `onetok bench codec` and `onetok bench
portable-coder`): what it times is what the commands write, and the savings are those of the real streams."""

import numpy as np
import pytest
import torch
from PIL import Image

from onetok.tokenizers import PRESETS, Tokenizer
from onetok.tokenizers.codec import bench, entropy
from onetok.tokenizers.codec.codec import Codec
from onetok.tokenizers.codec.prior import PRESETS as PRIOR_PRESETS
from onetok.tokenizers.codec.prior import TilePrior


@pytest.fixture(scope="module")
def codec():
    torch.manual_seed(0)
    prior = TilePrior(PRIOR_PRESETS["tiny"]).eval()  # K = 64, L = 8
    with torch.no_grad():
        prior.head.weight.mul_(40)  # peaked: the range coder saves over bit-packed ids
    return Codec(Tokenizer(PRESETS["tiny"]).eval(), prior)  # 16 px tiles


def test_bench_image_is_cropped_or_padded_to_the_size():
    assert bench.bench_image(None, (700, 96)).size == (700, 96)  # wider than the 600 x 400 sample: mirror-padded


def test_codec_speed_times_what_compress_writes(codec):
    image = bench.bench_image(None, (48, 32))
    rows = bench.codec_speed({"entropy": codec}, image, repeats=1)
    assert [r.codec for r in rows] == [f"entropy {name}" for name in bench.RATES] + ["webp q75 m4"]
    for row, rate in zip(rows, bench.RATES.values()):
        assert row.bytes == len(codec.compress([image], rate)) and row.compress_s > 0 and row.decompress_s > 0
    assert "x WebP" in bench.format_speed(rows, (48, 32), 1)


def test_portable_savings_are_those_of_the_real_streams(codec, tmp_path):
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        Image.fromarray(rng.integers(0, 256, (32, 48, 3), dtype=np.uint8)).save(tmp_path / f"{name}.png")
    found = bench.portable_savings(codec, tmp_path, tokens=(2, 8))
    assert set(found) == {(c, k) for c in ("float", "integer") for k in (2, 8)}
    analysis = codec.analyse(Image.open(tmp_path / "a.png"))
    g = analysis.grid
    words = entropy.encode(codec.prior, g.rows, g.cols, np.full(g.count, 8), analysis.ids, True)
    one = bench.photo_savings(codec, Image.open(tmp_path / "a.png"), (8,))
    packed = bench.file_bytes(g.count, 8, 64, None)
    assert one["integer", 8] == pytest.approx(1 - bench.file_bytes(g.count, 8, 64, len(words)) / packed)
    assert all(v < 1 for v in found.values())  # a random prior may spend more than bit-packing on noise
