"""The built-in captioned shapes dataset: one filled shape on a plain background, and its inverse parser.

The contract (docs/data.md): a square RGB image of `size` px; background, colour, shape, size and position drawn
from fixed lists; the caption is exactly

    a {size} {color} {shape} in the {position} on a {background} background

`render` draws an image from its attributes (4x supersampled, so edges are anti-aliased), `parse_image` reads the
attributes back from pixels (used to check captions against pixels and to judge text-to-image samples), and
`write_shapes_dataset` writes deterministic WebDataset shards.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from onetok.data.shards import ShardWriter, encode_png

# --------------------------------------------------------------------------------------------------------------------
# The contract
# --------------------------------------------------------------------------------------------------------------------

BACKGROUNDS = {"black": (0, 0, 0), "white": (255, 255, 255), "gray": (128, 128, 128)}
COLORS = {
    "red": (230, 25, 25),
    "green": (30, 180, 30),
    "blue": (30, 60, 230),
    "yellow": (240, 220, 30),
    "purple": (150, 50, 200),
    "orange": (250, 140, 0),
}
SHAPES = ("circle", "square", "triangle")
SIZES = {"small": 0.30, "large": 0.50}  # bounding-box side as a fraction of the image side
POSITIONS = {  # bounding-box centre as a fraction of the image (x, y)
    "top left": (0.28, 0.28),
    "top right": (0.72, 0.28),
    "bottom left": (0.28, 0.72),
    "bottom right": (0.72, 0.72),
    "center": (0.5, 0.5),
}
JITTER = 0.03  # at most +-JITTER * size pixels on each axis
ATTRIBUTES = {
    "size": list(SIZES),
    "color": list(COLORS),
    "shape": list(SHAPES),
    "position": list(POSITIONS),
    "background": list(BACKGROUNDS),
}
ATTRIBUTE_NAMES = ("size", "color", "shape", "position", "background")
SUPERSAMPLE = 4


def caption_of(attrs: dict) -> str:
    return f"a {attrs['size']} {attrs['color']} {attrs['shape']} in the {attrs['position']} on a {attrs['background']} background"


def parse_caption(text: str) -> dict | None:
    """Inverse of `caption_of`; None if `text` is not a well-formed caption."""
    words = text.strip().split()
    if len(words) < 9 or words[0] != "a" or words[-1] != "background":
        return None
    try:
        i_in = words.index("in")
        i_on = len(words) - 1 - words[::-1].index("on")
    except ValueError:
        return None
    if i_in != 4 or words[i_in + 1] != "the" or words[i_on + 1] != "a" or i_on + 4 != len(words):
        return None
    attrs = {
        "size": words[1],
        "color": words[2],
        "shape": words[3],
        "position": " ".join(words[i_in + 2 : i_on]),
        "background": words[i_on + 2],
    }
    if any(attrs[k] not in ATTRIBUTES[k] for k in ATTRIBUTE_NAMES):
        return None
    return attrs


# --------------------------------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------------------------------


def sample_attributes(rng: np.random.Generator, combos: list[tuple[str, str, str]]) -> dict:
    """Draw one sample's attributes; (color, shape, position) comes from the allowed `combos`."""
    color, shape, position = combos[rng.integers(len(combos))]
    jx, jy = rng.uniform(-JITTER, JITTER, size=2)
    return {
        "size": ATTRIBUTES["size"][rng.integers(len(SIZES))],
        "color": color,
        "shape": shape,
        "position": position,
        "background": ATTRIBUTES["background"][rng.integers(len(BACKGROUNDS))],
        "jitter": [round(float(jx), 5), round(float(jy), 5)],
    }


def render(attrs: dict, size: int = 32) -> Image.Image:
    """Draw the image for `attrs` (keys as in ATTRIBUTES plus `jitter` = [jx, jy] in image fractions)."""
    s = size * SUPERSAMPLE
    img = Image.new("RGB", (s, s), BACKGROUNDS[attrs["background"]])
    draw = ImageDraw.Draw(img)
    fx, fy = POSITIONS[attrs["position"]]
    jx, jy = attrs.get("jitter", (0.0, 0.0))
    cx, cy = (fx + jx) * s, (fy + jy) * s
    half = SIZES[attrs["size"]] * s / 2
    box = [cx - half, cy - half, cx + half, cy + half]
    fill = COLORS[attrs["color"]]
    if attrs["shape"] == "circle":
        draw.ellipse(box, fill=fill)
    elif attrs["shape"] == "square":
        draw.rectangle(box, fill=fill)
    else:  # upright isosceles triangle, base at the bottom
        draw.polygon([(cx, cy - half), (cx - half, cy + half), (cx + half, cy + half)], fill=fill)
    return img.resize((size, size), Image.Resampling.BOX)


# --------------------------------------------------------------------------------------------------------------------
# Parsing pixels back into attributes
# --------------------------------------------------------------------------------------------------------------------


def _nearest(rgb: np.ndarray, table: dict) -> str:
    names = list(table)
    d = np.linalg.norm(np.asarray([table[n] for n in names], dtype=np.float64) - rgb[None], axis=1)
    return names[int(d.argmin())]


def _coverage(shape: str, side: float, cx: float, cy: float, n: int) -> np.ndarray:
    """Fraction of each pixel covered by `shape` (bounding-box side and centre in px), (n, n) float."""
    s = n * SUPERSAMPLE
    mask = Image.new("L", (s, s), 0)
    draw = ImageDraw.Draw(mask)
    half, cx, cy = side * SUPERSAMPLE / 2, cx * SUPERSAMPLE, cy * SUPERSAMPLE
    box = [cx - half, cy - half, cx + half, cy + half]
    if shape == "circle":
        draw.ellipse(box, fill=255)
    elif shape == "square":
        draw.rectangle(box, fill=255)
    else:
        draw.polygon([(cx, cy - half), (cx - half, cy + half), (cx + half, cy + half)], fill=255)
    return np.asarray(mask.resize((n, n), Image.Resampling.BOX), dtype=np.float64) / 255.0


def parse_image(img: np.ndarray) -> dict | None:
    """Read (size, color, shape, position, background) from an RGB uint8 image (H, W, 3); None if no shape is seen.

    Background: the median border pixel. Colour: the nearest palette colour to the median of the pixels far from
    the background. Then a soft mask (per-pixel fraction of the way from background to shape colour) is compared
    with a rendered template for every (shape, size), placed at the mask's centroid; the best match gives shape and
    size, and its bounding-box centre gives the position.
    """
    img = np.asarray(img, dtype=np.float64)
    n = img.shape[0]
    border = np.concatenate([img[0], img[-1], img[:, 0], img[:, -1]])
    background = _nearest(np.median(border, axis=0), BACKGROUNDS)
    bg = np.asarray(BACKGROUNDS[background], dtype=np.float64)
    dist = np.linalg.norm(img - bg, axis=-1)  # (H, W)
    if dist.max() < 40:
        return None
    core = dist > 0.5 * dist.max()
    color = _nearest(np.median(img[core], axis=0), COLORS)
    direction = np.asarray(COLORS[color], dtype=np.float64) - bg
    soft = np.clip(((img - bg) @ direction) / (direction @ direction), 0.0, 1.0)  # (H, W)
    soft[soft < 0.3] = 0.0  # background noise would pull the centroid towards the image centre
    if soft.sum() < 1.0:
        return None
    grid = np.arange(n) + 0.5
    mx, my = (soft.sum(0) @ grid) / soft.sum(), (soft.sum(1) @ grid) / soft.sum()  # centroid in px
    best = None
    for shape in SHAPES:
        for size_name, frac in SIZES.items():
            side = frac * n
            cy = my - side / 6 if shape == "triangle" else my  # a triangle's centroid sits below its box centre
            err = np.square(soft - _coverage(shape, side, mx, cy, n)).sum()
            if best is None or err < best[0]:
                best = (err, shape, size_name, mx / n, cy / n)
    _, shape, size, cx, cy = best
    position = min(POSITIONS, key=lambda p: (POSITIONS[p][0] - cx) ** 2 + (POSITIONS[p][1] - cy) ** 2)
    return {"size": size, "color": color, "shape": shape, "position": position, "background": background}


# --------------------------------------------------------------------------------------------------------------------
# Writing the dataset
# --------------------------------------------------------------------------------------------------------------------


def all_combos() -> list[tuple[str, str, str]]:
    return list(itertools.product(COLORS, SHAPES, POSITIONS))


def split_combos(holdout: float, seed: int) -> tuple[list, list]:
    """(train combos, held-out combos): a seeded fraction `holdout` of (color, shape, position) is held out."""
    combos = all_combos()
    if holdout <= 0:
        return combos, []
    n_hold = max(1, round(holdout * len(combos)))
    order = np.random.default_rng(seed + 7919).permutation(len(combos))
    held = sorted(combos[i] for i in order[:n_hold])
    return [c for c in combos if c not in held], held


def write_split(
    out: Path, split: str, count: int, size: int, rng: np.random.Generator, combos: list, held: set,
    shard_size: int, progress: Callable[[int], None] | None = None,
) -> None:
    with ShardWriter(out / split, shard_size) as writer:
        for i in range(count):
            attrs = sample_attributes(rng, combos)
            attrs["split"] = split
            attrs["holdout"] = (attrs["color"], attrs["shape"], attrs["position"]) in held
            image = render(attrs, size)
            writer.write(f"{split}{i:08d}", {
                "png": encode_png(image),
                "txt": caption_of(attrs).encode(),
                "json": json.dumps(attrs, sort_keys=True).encode(),
            })
            if progress:
                progress(1)


def write_shapes_dataset(
    out: Path, size: int = 32, train: int = 20000, val: int = 1000, seed: int = 0, shard_size: int = 5000,
    holdout: float = 0.0, progress: Callable[[int], None] | None = None,
) -> dict:
    """Write `out/train/*.tar` and `out/val/*.tar`; deterministic for a seed. Returns the dataset summary."""
    train_combos, held = split_combos(holdout, seed)
    val_combos = held if held else train_combos
    held_set = set(held)
    write_split(out, "train", train, size, np.random.default_rng([seed, 0]), train_combos, held_set, shard_size, progress)
    write_split(out, "val", val, size, np.random.default_rng([seed, 1]), val_combos, held_set, shard_size, progress)
    summary = {
        "dataset": "shapes", "size": size, "train": train, "val": val, "seed": seed, "shard_size": shard_size,
        "holdout_combos": [list(c) for c in held],
    }
    (out / "dataset.json").write_text(json.dumps(summary, indent=1) + "\n")
    return summary
