"""`onetok-train`: the Lightning CLI for every system (tokenizer and unified AR model).

One YAML per run names its system and data module by class path, e.g.

    model:
      class_path: onetok.tokenizers.system.TokenizerSystem
      init_args: {...}
    data:
      class_path: onetok.data.datamodule.ImageShardDataModule
      init_args: {...}

    onetok-train fit --config configs/tokenizer/shapes.yaml
    onetok-train validate --config configs/tokenizer/shapes.yaml --ckpt_path runs/.../last.ckpt
"""

from __future__ import annotations

import sys

from lightning.pytorch import LightningDataModule, LightningModule
from lightning.pytorch.cli import ArgsType, LightningCLI


def main(args: ArgsType = None) -> int:
    LightningCLI(
        LightningModule,
        LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        save_config_kwargs={"overwrite": True},
        seed_everything_default=0,
        args=args,
        auto_configure_optimizers=False,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
