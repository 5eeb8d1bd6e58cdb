"""A Lightning callback for the resume tests (importable in a subprocess with this folder on PYTHONPATH).

With $ONETOK_PROBE set it appends JSON lines to that file: at train start {"start": step, "optimizers": digest},
then per batch {"step", "epoch", "batch_idx", "batch": digest}. With $ONETOK_PROBE_SAVE_AT = K it writes
$ONETOK_PROBE.ckpt after the K-th step (as a periodic ModelCheckpoint would).
"""

import hashlib
import json
import os

import torch
from lightning.pytorch.callbacks import Callback


def tensor_digest(tensors) -> str:
    h = hashlib.sha1()
    for t in tensors:
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def optimizer_digest(states: list[dict]) -> str:
    """Digest of the per-parameter optimizer state (exp_avg, exp_avg_sq, step ...) of optimizer state dicts."""
    return tensor_digest(torch.as_tensor(v) for s in states for p in sorted(s["state"])
                         for _, v in sorted(s["state"][p].items()))


def batch_digest(batch) -> str:
    return tensor_digest([batch["ids"] if "ids" in batch else batch["image"]])


class StepProbe(Callback):
    def __init__(self):
        self.path = os.environ.get("ONETOK_PROBE")
        self.save_at = int(os.environ.get("ONETOK_PROBE_SAVE_AT", "-1"))

    def _write(self, record: dict) -> None:
        if self.path:
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")

    def on_train_start(self, trainer, pl_module):
        self._write({"start": trainer.global_step,
                     "optimizers": optimizer_digest([o.state_dict() for o in trainer.optimizers])})

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self._write({"step": trainer.global_step, "epoch": trainer.current_epoch, "batch_idx": batch_idx,
                     "batch": batch_digest(batch)})

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.save_at:
            trainer.save_checkpoint(self.path + ".ckpt")


def read_probe(path) -> tuple[list[dict], dict[int, dict]]:
    """(train-start records, batch records by step) of a probe file."""
    records = [json.loads(line) for line in open(path)]
    return [r for r in records if "start" in r], {r["step"]: r for r in records if "step" in r}
