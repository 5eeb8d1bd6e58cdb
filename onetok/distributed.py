"""The training strategies the systems support: one device, or DDP over devices and nodes (never sharded); and the
one lookup of this process's rank and the number of processes (`rank_world`).

FSDP / model-parallel strategies are refused with a clear error: the systems keep state that a sharded run would
break (the tokenizer's EMA copy and VQ dead-code restarts write whole parameters; validation draws images on rank 0
alone), and every preset fits one GPU with plain DDP (docs/scaling.md).
"""

from __future__ import annotations

from typing import NamedTuple

SHARDED = ("FSDPStrategy", "ModelParallelStrategy", "DeepSpeedStrategy", "XLAFSDPStrategy")


def check_strategy(trainer, system: str) -> None:
    """Raise ValueError when `trainer` runs a sharded strategy."""
    strategy = getattr(trainer, "strategy", None)
    names = {cls.__name__ for cls in type(strategy).__mro__} if strategy is not None else set()
    if names & set(SHARDED):
        raise ValueError(f"{system}: strategy {type(strategy).__name__} is not supported; use ddp (every preset fits "
                         "one GPU; see docs/scaling.md)")


class RankWorld(NamedTuple):
    rank: int  # this process's global rank, 0..world-1
    world: int  # how many processes share the data


def rank_world(trainer) -> RankWorld:
    """(global rank, world size) of the Lightning trainer a DataModule is attached to; (0, 1) without one."""
    if trainer is None:
        return RankWorld(0, 1)
    return RankWorld(int(trainer.global_rank), int(trainer.world_size))
