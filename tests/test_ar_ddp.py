"""The unified model under DDP: 2 CPU processes (gloo) x 2 loader workers on streamed image shards.

One run checks that the ranks read disjoint training samples and together all of them in the epoch, that the images
are encoded in the training system (rows carry images, not codes), and that the validation metrics of the 2-process
run equal those of one process on the same weights (each metric from its own task on every rank count).
"""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import lightning as pl
import pytest
import torch

from onetok.ar_model.system import ARSystem
from onetok.data.shapes import write_shapes_dataset
from onetok.tokenizers import Tokenizer, preset

HERE = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("ar_ddp")
    write_shapes_dataset(root / "shapes", size=16, train=48, val=7, seed=4, shard_size=16)
    torch.manual_seed(0)
    Tokenizer(preset("tiny")).save_pretrained(root / "tok")
    out = root / "out"
    out.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PL_DISABLE_FORK": "1"}
    start = time.time()
    proc = subprocess.run([sys.executable, str(HERE / "ddp_ar_run.py"), str(root / "shapes"), str(root / "tok"),
                           str(out), "2"], cwd=root, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    print(f"2-process AR DDP run: {time.time() - start:.1f}s")
    return root, [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]


def test_ranks_read_disjoint_samples_covering_the_epoch(ddp_run):
    root, ranks = ddp_run
    keys = [set(r["keys"]) for r in ranks]
    assert all(len(k) == len(r["keys"]) == 24 for k, r in zip(keys, ranks))  # 48 samples: 24 per rank, none twice
    assert not keys[0] & keys[1]
    assert len(keys[0] | keys[1]) == 48


def test_val_metrics_equal_one_process(ddp_run):
    """Per-task losses summed over ranks: t2i and i2t each from their own rows, equal to one process's numbers."""
    from ddp_ar_run import datamodule

    root, ranks = ddp_run
    two = ranks[0]["metrics"]
    assert {"val/loss", "val/t2i", "val/i2t", "val/caption_exact"} <= two.keys()
    assert two["val/t2i"] != pytest.approx(two["val/i2t"])
    losses = ("val/loss", "val/t2i", "val/i2t")
    assert [ranks[1]["metrics"][k] for k in losses] == [two[k] for k in losses]  # the same synced numbers everywhere
    system = ARSystem.load_from_checkpoint(root / "out" / "final.ckpt", map_location="cpu")
    trainer = pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                         enable_model_summary=False)
    one = trainer.validate(system, datamodule=datamodule(str(root / "shapes"), str(root / "tok")), verbose=False)[0]
    for name in ("val/loss", "val/t2i", "val/i2t", "val/caption_exact"):
        assert one[name] == pytest.approx(two[name], rel=1e-5, abs=1e-6), name
