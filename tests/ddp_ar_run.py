"""Helper of test_ar_ddp.py (run as a script): one epoch of the tiny AR model on streamed image shards under DDP.

    python ddp_ar_run.py DATA TOKENIZER OUT DEVICES

Each rank writes OUT/rank{r}.json: the sample keys of every training batch it saw and the validation metrics
after the epoch; rank 0 also saves OUT/final.ckpt.
"""

import json
import sys
from pathlib import Path

import lightning as pl
from lightning.pytorch.callbacks import Callback

from onetok.ar_model.data import ARDataModule
from onetok.ar_model.system import ARSystem


def datamodule(data: str, tokenizer: str) -> ARDataModule:
    return ARDataModule(images=data, tokenizer=tokenizer, in_memory=False, num_workers=2, batch_size=4,
                        val_batch_size=3, shuffle_buffer=4, text="words", seed=1)


class KeyProbe(Callback):
    def __init__(self):
        self.keys: list[str] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.keys += batch["key"]


def main(data: str, tokenizer: str, out: str, devices: int) -> None:
    pl.seed_everything(0)
    probe = KeyProbe()
    trainer = pl.Trainer(accelerator="cpu", devices=devices, strategy="ddp" if devices > 1 else "auto", max_epochs=1,
                         logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, num_sanity_val_steps=0, callbacks=[probe])
    system = ARSystem(preset="tiny", model_overrides={}, eval_samples=4, lr=1e-2, warmup_steps=1)
    trainer.fit(system, datamodule=datamodule(data, tokenizer))
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
    Path(out, f"rank{trainer.global_rank}.json").write_text(json.dumps({"keys": probe.keys, "metrics": metrics}))
    trainer.save_checkpoint(Path(out, "final.ckpt"))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]))
