"""Random photo tiles for the tiled tokenizer: crops at native scale (and downscaled), from a folder or from shards,
seeded per (epoch, index), fixed validation tiles."""

import numpy as np
import pytest
import torch
from PIL import Image

from onetok.data.shards import ShardWriter, encode_png
from onetok.data.tiles import TileDataModule, grid_tiles, random_tile, reflect_pad


def _photo(h, w, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def photo_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("photos")
    for i, (h, w) in enumerate([(50, 80), (40, 33), (20, 20)]):
        Image.fromarray(_photo(h, w, i)).save(root / f"p{i}.png")
    (root / "p0.txt").write_text("a caption beside an image is not an image\n")
    (root / "broken.jpg").write_bytes(b"\xff\xd8 not really")
    return root


def test_random_tile_is_a_native_crop_at_scale_one():
    photo = _photo(50, 80)
    rng = np.random.default_rng(0)
    for _ in range(20):
        tile = random_tile(photo, 16, rng).permute(1, 2, 0).numpy()
        windows = np.lib.stride_tricks.sliding_window_view(photo, (16, 16, 3)).reshape(-1, 16, 16, 3)
        assert (windows == tile).all(axis=(1, 2, 3)).any()  # an exact window of the photo


def test_downscaled_tiles_cover_a_larger_region():
    yy, xx = np.mgrid[0:64, 0:64]
    ramp = np.stack([xx * 4, yy * 4, xx * 0], -1).astype(np.uint8)  # a smooth ramp, 4 levels per px
    tile = random_tile(ramp, 16, np.random.default_rng(1), 0.5, 0.5).numpy().astype(int)
    assert tile.shape == (3, 16, 16)
    # 16 px at scale 1/2 cover 32 source px: ~124 levels from first to last column (a scale-1 crop spans 60)
    assert 110 <= tile[0, 0, -1] - tile[0, 0, 0] <= 130


def test_small_photos_are_padded_by_reflection():
    small = _photo(5, 7)
    padded = reflect_pad(small, 16, 16)
    assert padded.shape == (16, 16, 3)
    np.testing.assert_array_equal(padded[:5, :7], small)
    np.testing.assert_array_equal(padded[5, :7], small[4])  # symmetric: the edge row repeats first
    assert random_tile(small, 16, np.random.default_rng(0)).shape == (3, 16, 16)


def test_folder_module_batches_and_is_seeded(photo_dir):
    def batches(seed):
        dm = TileDataModule(str(photo_dir), str(photo_dir), tile_size=16, batch_size=8, epoch_samples=32,
                            min_scale=0.5, val_tiles_per_image=4, seed=seed)
        dm.setup("fit")
        return dm, [b["image"] for b in dm.train_dataloader()]

    dm, first = batches(0)
    assert len(first) == 4 and first[0].shape == (8, 3, 16, 16) and first[0].dtype == torch.float32
    assert 0 <= first[0].min() and first[0].max() <= 1
    assert all(torch.equal(a, b) for a, b in zip(first, batches(0)[1]))
    assert not all(torch.equal(a, b) for a, b in zip(first, batches(1)[1]))
    val = [b["image"] for b in dm.val_dataloader()]
    assert sum(len(v) for v in val) == 3 * 4  # 3 readable photos x 4 tiles; the .txt and the broken JPEG skipped


def test_validation_tiles_are_fixed():
    photo = _photo(40, 60)
    a, b = grid_tiles(photo, 16, 5, seed=3), grid_tiles(photo, 16, 5, seed=3)
    assert all(torch.equal(x, y) for x, y in zip(a, b))


def test_shard_module_streams_several_tiles_per_photo(tmp_path):
    with ShardWriter(tmp_path / "shards", shard_size=2) as writer:
        for i in range(3):
            writer.write(f"{i:06d}", {"png": encode_png(Image.fromarray(_photo(40 + i, 50, i))), "txt": b"x"})
    dm = TileDataModule(str(tmp_path / "shards"), tile_size=16, batch_size=4, epoch_samples=8, crops_per_image=3,
                        shuffle_buffer=10)
    dm.setup("fit")
    batches = list(dm.train_dataloader())
    assert len(batches) == 2 and batches[0]["image"].shape == (4, 3, 16, 16)


def test_bad_arguments():
    with pytest.raises(ValueError, match="min_scale"):
        TileDataModule("x", min_scale=0.8, max_scale=0.5)
    dm = TileDataModule("/nonexistent/folder")
    with pytest.raises(FileNotFoundError):
        dm.setup("fit")
