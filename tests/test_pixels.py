"""data/pixels.py: the one uint8 HWC <-> float BCHW conversion."""

import numpy as np
import pytest
import torch
from PIL import Image

from onetok.data import pixels


def _picture(h=5, w=7, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def test_from_hwc_layout_and_values():
    a, b = _picture(), _picture(seed=1)
    x = pixels.from_hwc([a, Image.fromarray(b)])
    assert x.shape == (2, 3, 5, 7) and x.dtype == torch.float32
    assert x[1, 2, 4, 6].item() == np.float32(b[4, 6, 2]) / np.float32(255)  # channel 2 of pixel (4, 6): exact
    assert torch.equal(pixels.from_hwc(a), x[:1]) and torch.equal(pixels.from_hwc(np.stack([a, b])), x)


def test_a_read_only_picture_is_copied_not_shared():
    a = np.asarray(Image.fromarray(_picture()))  # read-only, as np.asarray of any PIL image
    assert not a.flags.writeable
    stacked = pixels._stack_hwc(a)
    assert stacked.flags.writeable and not np.shares_memory(stacked, a)  # torch.from_numpy warns on read-only arrays
    assert torch.equal(pixels.from_hwc(a), pixels.from_hwc(a.copy()))


def test_round_trip_is_exact_for_every_level():
    levels = np.arange(256, dtype=np.uint8).repeat(3).reshape(16, 16, 3)
    np.testing.assert_array_equal(pixels.to_hwc(pixels.from_hwc(levels))[0], levels)
    assert torch.equal(pixels.to_uint8(pixels.to_float(pixels.chw_uint8(levels))), pixels.chw_uint8(levels))


def test_to_uint8_clamps_and_rounds_to_nearest():
    x = torch.tensor([0.0, 0.6 / 255, 1.49 / 255, 1.51 / 255, 1.0, 1.2, -0.1]).view(1, 1, 1, 7)
    assert pixels.to_uint8(x).flatten().tolist() == [0, 1, 1, 2, 255, 255, 0]
    want = torch.tensor([0, 1, 1, 2, 255, 255, 0], dtype=torch.float32) / 255
    assert torch.equal(pixels.as_saved(x).flatten(), want)


def test_chw_uint8_is_a_contiguous_copy():
    a = _picture()
    t = pixels.chw_uint8(a)
    assert t.shape == (3, 5, 7) and t.is_contiguous() and t.dtype == torch.uint8
    a[0, 0, 0] ^= 0xFF
    assert t[0, 0, 0].item() != a[0, 0, 0]  # not a view of the array


def test_to_pil_matches_to_hwc():
    x = torch.rand(2, 3, 4, 6)
    images = pixels.to_pil(x)
    assert [im.size for im in images] == [(6, 4), (6, 4)] and images[0].mode == "RGB"
    np.testing.assert_array_equal(np.asarray(images[1]), pixels.to_hwc(x)[1])


@pytest.mark.parametrize("bad", [[], np.zeros((4, 4, 3), dtype=np.float32), np.zeros((4, 4), dtype=np.uint8)])
def test_from_hwc_refuses_what_is_not_8bit_rgb(bad):
    with pytest.raises(ValueError):
        pixels.from_hwc(bad)
