"""What the evaluations (`onetok eval-tokenizer`, `onetok eval-ar`) read before they measure: image batches from
shards or a folder of image files, the FID Inception and reference statistics, the LPIPS network. Errors are plain
exceptions naming the file (`NoImagesError` when nothing could be read); the CLI turns them into one line."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

from onetok.fileio import WRITTEN_BY, atomic_output


class NoImagesError(ValueError):
    """An evaluation found no image to measure (its message names the data and the files skipped in it)."""


# --------------------------------------------------------------------------------------------------------------------
# Images
# --------------------------------------------------------------------------------------------------------------------


def _folder_images(folder: Path, size: int, skipped: list[str]):
    """uint8 (3, S, S) tensors of the image files under `folder` (images by name or content, sorted); an unreadable
    one is added to `skipped` (one line naming it and why), as `onetok data images` does."""
    from onetok.data.convert import list_inputs, load_image
    from onetok.data.pixels import chw_uint8

    candidates, _ = list_inputs(folder)
    for path in candidates:
        try:
            image = load_image(path, size)
        except ValueError as err:  # ImageReadError: not an image, a corrupt one or a bomb
            skipped.append(str(err))
            continue
        yield chw_uint8(image)


def _shard_images(spec: str, size: int):
    from onetok.data.pixels import chw_uint8
    from onetok.data.shards import iter_samples

    for sample in iter_samples(spec, size=size):
        yield chw_uint8(sample["image"])


def image_batches(spec: str, size: int, batch_size: int, limit: int | None,
                  skipped: list[str] | None = None) -> Iterator:
    """(B, 3, S, S) float batches in [0, 1] from image shards (directory, glob or brace pattern) or a folder of
    image files (its unreadable files are added to `skipped`); images are resized (short side) and centre-cropped
    to S. FileNotFoundError when `spec` names neither."""
    import torch

    from onetok.data.pixels import to_float
    from onetok.data.shards import expand_shards

    shards = expand_shards(spec)
    if Path(spec).is_dir() and not shards:
        images = _folder_images(Path(spec), size, [] if skipped is None else skipped)
    elif shards and all(Path(p).is_file() for p in shards):
        images = _shard_images(spec, size)
    else:
        raise FileNotFoundError(2, "no readable shards or image folder", spec)
    batch = []
    for seen, image in enumerate(images, start=1):
        batch.append(image)
        if len(batch) == batch_size or seen == limit:
            yield to_float(torch.stack(batch))  # (B, 3, S, S)
            batch = []
        if seen == limit:
            return
    if batch:
        yield to_float(torch.stack(batch))


def no_images(data: str, skipped: list[str]) -> NoImagesError:
    """The error for data in which nothing could be evaluated, naming the files skipped in it."""
    if skipped:
        return NoImagesError(f"{data}: no images to evaluate: all {len(skipped)} image file(s) unreadable; first: "
                             f"{skipped[0]}")
    return NoImagesError(f"{data}: no images to evaluate (no readable image in it)")


# --------------------------------------------------------------------------------------------------------------------
# FID and LPIPS
# --------------------------------------------------------------------------------------------------------------------


def fid_extractor(weights: str | None, precision: str, device: str):
    """The FID Inception on `device` (FileNotFoundError / ValueError naming a missing or bad weights file)."""
    from onetok import metrics

    return metrics.load_fid_extractor(weights, precision).to(device)


def reference_stats(path: str, extractor) -> tuple:
    """(FIDStats, notes) from an .npz; ValueError when it was made with another feature extractor."""
    from onetok import metrics

    stats = metrics.load_stats(path)
    mine, theirs = metrics.extractor_protocol(extractor), stats.protocol
    notes = []
    if "weights_sha256" not in theirs and "extractor" not in theirs:
        notes.append(f"{Path(path).name} has no protocol record (a pytorch-fid or ADM file?): assumed to hold FID "
                     "Inception pool3 statistics of uint8 images")
    elif theirs.get("weights_sha256") != mine.get("weights_sha256") or theirs.get("extractor") != mine.get("extractor"):
        raise ValueError(f"{path}: statistics made with another feature extractor ({theirs.get('extractor')}, "
                         f"sha256 {str(theirs.get('weights_sha256'))[:12]}); FIDs across extractors mean nothing")
    return stats, notes


def set_reference(meter, stats, path: str) -> None:
    """`meter`'s real set from the statistics read from `path` (ValueError naming it when they do not fit)."""
    try:
        meter.set_reference(stats)
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None


def write_stats(path: str | os.PathLike, stats, force: bool, inputs=()) -> None:
    """FID statistics as an .npz whose protocol says onetok wrote it (so --force may replace it later)."""
    from onetok import metrics

    stats = stats._replace(protocol={**stats.protocol, "written_by": WRITTEN_BY})
    with atomic_output(path, force, inputs) as tmp, open(tmp, "wb") as f:
        metrics.save_stats(f, stats)


def lpips_network(net: str, weights: str | None, device: str, image_size: int):
    """(LPIPS network or None, note): skipped with a note when its weights are not on this machine and were not
    named (`weights`), or when the images are too small for the backbone."""
    import torch

    from onetok import metrics

    if net == "none":
        return None, "LPIPS off (--lpips-net none)"
    try:
        network = metrics.load_lpips(weights, net).to(device)
    except FileNotFoundError as err:
        if weights:  # named explicitly: a user error
            raise
        return None, f"LPIPS skipped ({err})"
    probe = torch.zeros(1, 3, image_size, image_size, device=device)
    try:
        metrics.lpips_distance(network, probe, probe)
    except RuntimeError:
        return None, f"LPIPS skipped: {image_size} px images are too small for the {net} backbone"
    return network, None
