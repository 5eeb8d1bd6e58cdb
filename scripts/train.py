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
    onetok-train validate --config configs/tokenizer/shapes.yaml --ckpt_path runs/.../last.ckpt
"""

from __future__ import annotations

import sys

from lightning.pytorch import LightningDataModule, LightningModule
from lightning.pytorch.cli import ArgsType, LightningCLI

from onetok.scripts import train_checks


class OnetokCLI(LightningCLI):
    """LightningCLI that checks the data and folders a config names before anything is built (train_checks)."""

    def before_instantiate_classes(self) -> None:
        train_checks.before_instantiate(self.config[self.subcommand] if self.subcommand else self.config)


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
