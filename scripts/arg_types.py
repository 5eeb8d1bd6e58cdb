"""Argument types shared by every `onetok` parser: numbers that are finite, seeds in the range every random
generator takes, lists of positive counts. A value outside them is argparse's one-line error naming the flag."""

from __future__ import annotations

import argparse
import math

MAX_SEED = 2**62 - 1  # torch, numpy and Python take it, with room for the per-prompt and per-batch offsets


def finite_float(text: str) -> float:
    """A float that is a number: `inf` and `nan` are refused like any other non-number."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


finite_float.__name__ = "float"


def seed(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if not 0 <= value <= MAX_SEED:
        raise argparse.ArgumentTypeError(f"must be in 0..{MAX_SEED} (2^62 - 1), got {text}")
    return value


seed.__name__ = "int"


def positive_ints(text: str) -> list[int]:
    """A comma-separated list of positive integers (`10000,40000`)."""
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of integers: {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"need positive integers, got {text!r}")
    return values


def positive_floats(text: str) -> list[float]:
    """A comma-separated list of positive finite numbers (`0.05,0.1`)."""
    try:
        values = [finite_float(v) for v in text.split(",") if v.strip()]
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of finite numbers: {text!r}") from None
    if not values or min(values) <= 0:
        raise argparse.ArgumentTypeError(f"need positive numbers, got {text!r}")
    return values
