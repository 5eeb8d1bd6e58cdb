"""One image loader for files and shards alike (EXIF orientation, alpha), and the one image-folder walker."""

import io

import numpy as np
from PIL import Image

from onetok.data.images import files_below, image_files, load_image
from onetok.data.shards import ShardWriter, iter_samples, resize_center_crop

ORIENTATION = 0x0112  # the EXIF tag; 6 = shown rotated 90 degrees clockwise


def _gradient(width: int, height: int) -> Image.Image:
    y, x = np.mgrid[0:height, 0:width]
    array = np.stack([x * 255 // (width - 1), y * 255 // (height - 1), (x + y) % 256], axis=-1).astype(np.uint8)
    return Image.fromarray(array)  # no symmetry: a rotation or flip changes it


def _exif_jpeg(image: Image.Image, orientation: int) -> bytes:
    exif = Image.Exif()
    exif[ORIENTATION] = orientation
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=95, exif=exif.tobytes())
    return buf.getvalue()


def _png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return buf.getvalue()


def test_a_shard_and_a_file_give_the_same_pixels(tmp_path):
    rgba = np.zeros((12, 20, 4), dtype=np.uint8)
    rgba[..., 0], rgba[:, :10, 3] = 200, 255  # left half opaque red, right half fully transparent
    members = {"rotated": ("jpg", _exif_jpeg(_gradient(40, 24), 6)), "clear": ("png", _png(Image.fromarray(rgba)))}
    with ShardWriter(tmp_path / "shards") as writer:
        for key, (ext, data) in members.items():
            writer.write(key, {ext: data, "txt": key.encode()})
            (tmp_path / f"{key}.{ext}").write_bytes(data)
    samples = {s["key"]: s["image"] for s in iter_samples(tmp_path / "shards")}
    for key, (ext, _) in members.items():
        from_file = load_image(tmp_path / f"{key}.{ext}").image
        np.testing.assert_array_equal(np.asarray(samples[key]), np.asarray(from_file))
    assert samples["rotated"].size == (24, 40)  # the EXIF rotation applied: portrait, as a viewer shows it
    assert np.asarray(samples["clear"])[0, -1].tolist() == [255, 255, 255]  # transparent -> white, not black
    squares = {s["key"]: s["image"] for s in iter_samples(tmp_path / "shards", size=16)}
    want = resize_center_crop(load_image(tmp_path / "rotated.jpg").image, 16)
    np.testing.assert_array_equal(np.asarray(squares["rotated"]), np.asarray(want))


def test_the_walker_skips_hidden_files_and_folders_and_finds_images_by_content(tmp_path):
    png = _png(_gradient(8, 8))
    for name, data in {"b.png": png, "sub/a.png": png, "photo.dat": png, "README.md": b"# hello\n",
                       ".hidden.png": png, ".git/x.png": png, "sub/.cache/y.png": png}.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(data)
    names = lambda paths: [p.relative_to(tmp_path).as_posix() for p in paths]  # noqa: E731
    assert names(files_below(tmp_path)) == ["README.md", "b.png", "photo.dat", "sub/a.png"]
    assert names(image_files(tmp_path)) == ["b.png", "photo.dat", "sub/a.png"]
