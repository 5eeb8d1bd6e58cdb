"""Who reads what under DDP, and where a resumed run picks up: samplers, stream partitions, a resumable loader.

- `RankSampler` (map-style data): each epoch a seeded permutation of the dataset, cut into `world` equal shares
  (the `size % world` last indices of the permutation sit the epoch out, different ones each epoch).
- `EvalSampler` (validation): every index exactly once over all ranks, no padding, no shuffle, so metrics summed
  over ranks equal the one-process numbers.
- `stream_pieces` (streamed shards): each epoch a seeded shard order, the sample stream cut into `world` equal
  contiguous shares and each share into one piece per loader worker: ranks and workers read disjoint samples, and
  every rank gets the same number of batches (DDP would hang otherwise).
- `ResumableLoader`: a DataLoader that Lightning saves in checkpoints (`state_dict` / `load_state_dict`): the epoch
  and how many of its batches were trained on; a resumed run continues the same epoch after those batches.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any, NamedTuple

import torch
from torch.utils.data import DataLoader
from torch.utils.data.distributed import DistributedSampler

# --------------------------------------------------------------------------------------------------------------------
# Map-style data
# --------------------------------------------------------------------------------------------------------------------


class RankSampler(DistributedSampler):
    """This rank's share of a seeded permutation of range(size); `size // world` indices per rank and epoch.

    A DistributedSampler (so Lightning does not wrap it) that is built from a size instead of a dataset. With
    `with_epoch`, it yields (epoch, index) keys so a dataset can draw per-item randomness that survives resuming.
    """

    def __init__(self, size: int, num_replicas: int = 1, rank: int = 0, shuffle: bool = True, seed: int = 0,
                 with_epoch: bool = False):
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} outside 0..{num_replicas - 1}")
        self.size, self.num_replicas, self.rank, self.shuffle, self.seed = size, num_replicas, rank, shuffle, seed
        self.with_epoch, self.epoch, self.start = with_epoch, 0, 0
        self.num_samples = size // num_replicas
        self.total_size = self.num_samples * num_replicas

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def set_position(self, epoch: int, start: int) -> None:
        """Iterate epoch `epoch` from its `start`-th index of this rank on (a resumed epoch)."""
        self.epoch, self.start = epoch, start

    def __iter__(self) -> Iterator:
        if self.shuffle:
            order = torch.randperm(self.size, generator=torch.Generator().manual_seed(self.seed + self.epoch))
        else:
            order = torch.arange(self.size)
        mine = order[self.rank : self.total_size : self.num_replicas][self.start :].tolist()
        self.start = 0
        return iter([(self.epoch, i) for i in mine] if self.with_epoch else mine)

    def __len__(self) -> int:
        return self.num_samples


class EvalSampler(DistributedSampler):
    """Indices rank, rank + world, ... of range(size): every index once over all ranks (shares may differ by one)."""

    def __init__(self, size: int, num_replicas: int = 1, rank: int = 0):
        self.size, self.num_replicas, self.rank, self.epoch, self.shuffle = size, num_replicas, rank, 0, False
        self.num_samples = len(range(rank, size, num_replicas))
        self.total_size = size

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.size, self.num_replicas))

    def __len__(self) -> int:
        return self.num_samples


# --------------------------------------------------------------------------------------------------------------------
# Streamed shards
# --------------------------------------------------------------------------------------------------------------------


class Piece(NamedTuple):
    shard: int  # index into the shard list
    begin: int  # first sample (position inside the shard)
    end: int  # one past the last


def shard_order(num_shards: int, seed: int, epoch: int) -> list[int]:
    """The epoch's shard order, the same on every rank and worker."""
    order = list(range(num_shards))
    random.Random(f"{seed}:{epoch}").shuffle(order)
    return order


def stream_pieces(counts: list[int], seed: int, epoch: int, rank: int, world: int, worker: int,
                  workers: int) -> list[Piece]:
    """The pieces of shards one (rank, worker) reads in `epoch`, given the samples per shard.

    The shards, in the epoch's order, form one stream of N samples; rank r reads samples [r n, (r + 1) n) of it with
    n = N // world, and its worker w the w-th of `workers` near-equal contiguous parts of that share."""
    per_rank = sum(counts) // world
    size, extra = divmod(per_rank, workers)
    lo = rank * per_rank + worker * size + min(worker, extra)
    hi = lo + size + (1 if worker < extra else 0)
    pieces, position = [], 0
    for shard in shard_order(len(counts), seed, epoch):
        begin, end = max(lo, position), min(hi, position + counts[shard])
        if begin < end:
            pieces.append(Piece(shard, begin - position, end - position))
        position += counts[shard]
    return pieces


def worker_batches(counts: list[int], batches: int) -> list[int]:
    """How many of the first `batches` batches of a DataLoader came from each worker, given each worker's batch
    count: the loader takes batches from its workers in turn and skips exhausted ones."""
    taken = [0] * len(counts)
    rounds = min(min(counts), batches // len(counts))
    taken = [rounds] * len(counts)
    left = batches - rounds * len(counts)
    while left > 0:
        active = [w for w in range(len(counts)) if taken[w] < counts[w]]
        if not active:
            break
        for w in active[:left]:
            taken[w] += 1
        left -= min(left, len(active))
    return taken


def worker_skip(counts: list[int], world: int, workers: int, worker: int, batch_size: int, skip_batches: int) -> int:
    """Samples worker `worker` of a rank must pass over to resume after `skip_batches` batches (drop_last batches)."""
    per_rank = sum(counts) // world
    size, extra = divmod(per_rank, workers)
    batches = [(size + (1 if w < extra else 0)) // batch_size for w in range(workers)]
    return worker_batches(batches, skip_batches)[worker] * batch_size


# --------------------------------------------------------------------------------------------------------------------
# The loader
# --------------------------------------------------------------------------------------------------------------------


class ResumableLoader(DataLoader):
    """A DataLoader whose position Lightning checkpoints; `iter()` hands the epoch and the batches to skip to the
    sampler (`RankSampler`) or, for an iterable dataset, to the dataset's `set_position(epoch, skip_batches)`.

    The epoch and the number of batches trained on come from `trainer` (Lightning's own progress counters, which
    know nothing of prefetched batches); without a trainer the loader counts its own epochs.
    """

    def __init__(self, dataset, *args: Any, trainer=None, **kwargs: Any):
        super().__init__(dataset, *args, **kwargs)
        self.trainer, self._resume, self._epochs = trainer, None, 0

    def _epoch(self) -> int:
        if self.trainer is None:
            return self._epochs
        return self.trainer.fit_loop.epoch_progress.current.processed

    def state_dict(self) -> dict[str, int]:
        done = self.trainer.fit_loop.epoch_loop.batch_progress.current.processed if self.trainer is not None else 0
        return {"epoch": self._epoch(), "batches": done}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self._resume = (int(state["epoch"]), int(state["batches"]))

    def __iter__(self):
        epoch, skip = self._epoch(), 0
        if self._resume is not None and self._resume[0] == epoch:
            skip = self._resume[1]
        self._resume = None
        self._epochs += 1
        if isinstance(self.sampler, RankSampler):
            self.sampler.set_position(epoch, skip * self.batch_size)
        elif hasattr(self.dataset, "set_position"):
            self.dataset.set_position(epoch, skip)
        return super().__iter__()
