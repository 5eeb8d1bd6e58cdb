"""Prepared codebooks, computed once per parameter version instead of once per search.

A nearest-code search first turns the codebook into the form its backend multiplies with (normalised, negated,
split into TF32 parts, squared norms). That is a handful of kernel launches on every call, which at the quantizer's
small searches cost more than the search itself (docs/kernels.md). `PreparedCache.get` keeps the prepared form of
each codebook tensor and reuses it while the tensor is unchanged.

A cached entry is used only while all of these still hold for the tensor it was built from:

- it is the same live tensor object (held by a weak reference, so the cache never keeps a codebook alive);
- its version counter (``Tensor._version``) is unchanged: every in-place write through the tensor or a view of it
  bumps it (an optimizer step, ``load_state_dict``, ``codebook[dead] = …`` under ``no_grad``);
- its storage (``data_ptr``), device, dtype, shape and strides are unchanged (``module.to(…)``, ``.data = …``).

Writes made through ``tensor.data`` are the one kind torch does not count: ``.data`` is a new tensor with its own
version counter. onetok never writes a codebook that way; code that does must write through the tensor itself.
Inference tensors (created under ``torch.inference_mode``) carry no version counter, so they are never cached.
"""

from __future__ import annotations

import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any, NamedTuple

import torch

MAX_ENTRIES = 16  # prepared codebooks kept at once (least recently used dropped first)


class _Entry(NamedTuple):
    ref: weakref.ref  # the codebook tensor it was built from
    stamp: tuple  # (version, data_ptr, device, dtype, shape, strides) at build time
    value: Any


def _stamp(tensor: torch.Tensor) -> tuple:
    return (tensor._version, tensor.data_ptr(), tensor.device, tensor.dtype, tuple(tensor.shape), tensor.stride())


class PreparedCache:
    """Maps (codebook tensor, kind) -> a value built from the tensor, rebuilt whenever the tensor changes."""

    def __init__(self, max_entries: int = MAX_ENTRIES):
        self.max_entries = max_entries
        self._entries: OrderedDict[tuple[int, Hashable], _Entry] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = self.misses = 0  # counters for tests and benchmarks

    def get(self, tensor: torch.Tensor, kind: Hashable, build: Callable[[torch.Tensor], Any]) -> Any:
        """`build(tensor)`, or the value it returned before for this tensor and kind if the tensor is unchanged."""
        if tensor.is_inference():  # no version counter: never provably unchanged
            self.misses += 1
            return build(tensor)
        key, stamp = (id(tensor), kind), _stamp(tensor)
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None and entry.ref() is tensor and entry.stamp == stamp:
                self._entries.move_to_end(key)
                self.hits += 1
                return entry.value
        value = build(tensor)
        with self._lock:
            self.misses += 1
            self._entries[key] = _Entry(weakref.ref(tensor), stamp, value)
            self._entries.move_to_end(key)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)
        return value

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self.hits = self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)


PREPARED = PreparedCache()  # the one cache both nearest-code backends use
