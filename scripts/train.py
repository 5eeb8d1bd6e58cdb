"""`onetok-train`: the Lightning CLI for every system (tokenizer and unified AR model).

One YAML per run names its system and data module by class path, e.g.

    model:
      class_path: onetok.tokenizers.system.TokenizerSystem
      init_args: {...}
    data:
      class_path: onetok.data.datamodule.ImageShardDataModule
      init_args: {...}

    onetok-train fit --config configs/tokenizer/shapes.yaml
    onetok-train fit --config tokenizer/shapes        # the same config, by name, from any folder
    onetok-train fit --config configs/tokenizer/shapes.yaml --ckpt_path last     # resume a killed run
    onetok-train validate --config configs/tokenizer/shapes.yaml --ckpt_path runs/.../last.ckpt

`--ckpt_path last` means the newest `last.ckpt` anywhere under the run's `default_root_dir` (every
`lightning_logs/version_N/checkpoints/`), so a new process finds the checkpoint of the run it replaces; Lightning's
own "last" looks only in the new run's version folder. The checkpoint restores the step count, the optimizers and
the data position (docs/scaling.md).

On the CPU, unless OMP_NUM_THREADS is set, each process takes an equal share of the cores this process may run on
(its affinity: `onetok.scripts.devices.share_of_cores`), so several CPU ranks do not each start one thread per core.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from lightning.pytorch import LightningDataModule, LightningModule
from lightning.pytorch.cli import ArgsType, LightningCLI
from lightning.pytorch.utilities import rank_zero_info

from onetok import train_checks
from onetok.scripts.devices import share_of_cores


def newest_last_checkpoint(root: str | Path) -> Path | None:
    """The most recently written `last.ckpt` under `root`, or None."""
    found = sorted(Path(root).rglob("last.ckpt"), key=lambda p: p.stat().st_mtime)
    return found[-1] if found else None


class OnetokCLI(LightningCLI):
    """LightningCLI that checks the data and folders a config names before anything is built (train_checks), and
    whose `--ckpt_path last` searches every version folder of the run's root."""

    def before_instantiate_classes(self) -> None:
        train_checks.before_instantiate(self.config[self.subcommand] if self.subcommand else self.config)

    def instantiate_classes(self) -> None:
        super().instantiate_classes()
        cpu_threads(self.trainer)

    def before_fit(self) -> None:
        train_checks.check_enough_samples(self.datamodule, self.trainer)
        config = self.config_init[self.subcommand]
        if config.get("ckpt_path") != "last":
            return
        last = newest_last_checkpoint(self.trainer.default_root_dir)
        config["ckpt_path"] = str(last) if last is not None else None
        rank_zero_info(f"--ckpt_path last: {'resuming from ' + str(last) if last else 'no last.ckpt yet, starting anew'}")

    def after_fit(self) -> None:
        save_final_last(self.trainer)


def save_final_last(trainer) -> Path | None:
    """`last.ckpt` at the step the fit ended on. A run stopped between the checkpoint callback's periodic saves
    (`--trainer.max_time`, the early stop of a callback) would otherwise keep an older `last.ckpt` (Lightning writes
    one at the end only when none was written before), and exporting it would drop the last steps' training."""
    callback = trainer.checkpoint_callback
    if callback is None or not callback.save_last or callback.dirpath is None:
        return None
    path = Path(callback.format_checkpoint_name({}, callback.CHECKPOINT_NAME_LAST))  # the name Lightning gives it
    trainer.save_checkpoint(path, weights_only=False)  # the whole state, to resume; every rank calls it, one writes
    return path


def cpu_threads(trainer) -> int | None:
    """A CPU run without OMP_NUM_THREADS: torch threads = this process's cores shared among the run's processes.
    Returns the number set, or None (left to torch)."""
    import torch
    from lightning.pytorch.accelerators import CPUAccelerator

    if os.environ.get("OMP_NUM_THREADS") or not isinstance(trainer.accelerator, CPUAccelerator):
        return None
    threads = share_of_cores(trainer.num_devices)
    torch.set_num_threads(threads)
    rank_zero_info(f"CPU run: {threads} torch thread(s) per process (set OMP_NUM_THREADS to choose)")
    return threads


def main(args: ArgsType = None) -> int:
    return train_checks.run(lambda: OnetokCLI(  # --config NAME resolved, errors as one line (exit 2)
        LightningModule,
        LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        save_config_kwargs={"overwrite": True},
        seed_everything_default=0,
        args=args,
        auto_configure_optimizers=False,
        parser_kwargs=train_checks.PARSER_KWARGS,
    ), args)


if __name__ == "__main__":
    sys.exit(main())
