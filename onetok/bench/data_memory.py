"""`onetok bench data`: peak memory per rank of the AR training data, token folders held in memory vs streamed.

Writes synthetic token folders (L codes + a caption per sample) of growing size, then for each size and mode runs
`--ranks` processes, each reading its rank's share of one epoch through a DataLoader (by default in its own process,
no workers), and reports each rank's peak RSS above its RSS before the data was opened.
Held in memory (`in_memory: true`, which before this change every token folder was) grows with the token set;
streamed (`in_memory: false`) stays flat at about the shuffle buffer.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from onetok.bench import defaults


def write_token_folder(out: Path, samples: int, tokens: int, codebook: int, shard_size: int = 5000) -> int:
    """A token folder of random codes and 60-100 byte captions; returns its size in bytes."""
    import numpy as np

    from onetok.ar_model.tokenize import META_FORMAT, META_VERSION, _shard_counts, encode_codes
    from onetok.data.shards import ShardWriter

    rng = np.random.default_rng(0)
    words = ["a", "photo", "of", "the", "red", "small", "large", "dog", "cat", "on", "grass", "beach", "city", "at",
             "night", "with", "blue", "sky", "in", "snow"]
    with ShardWriter(out / "train", shard_size) as writer:
        for i in range(samples):
            caption = " ".join(rng.choice(words, size=int(rng.integers(14, 22))))
            writer.write(f"{i:09d}", {"codes.npy": encode_codes(rng.integers(0, codebook, tokens)),
                                      "txt": caption.encode(), "json": b"{}"})
    meta = {"format": META_FORMAT, "version": META_VERSION, "num_latent_tokens": tokens, "codebook_size": codebook,
            "image_size": 256, "counts": {"train": samples}, "shard_counts": {"train": _shard_counts(samples, shard_size)},
            "words": None, "tokenizer": {"fingerprint": "0" * 32, "path": str(out / "no_tokenizer"), "config": {}}}
    (out / "meta.json").write_text(json.dumps(meta))
    return sum(p.stat().st_size for p in (out / "train").glob("*.tar"))


def _peak_mb() -> tuple[float, float]:
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return own, children


def read_one_epoch(folder: str, in_memory: bool, rank: int, world: int, workers: int, batch: int, buffer: int) -> dict:
    """One rank's epoch; RSS figures in MB (Linux ru_maxrss is in kB)."""
    from types import SimpleNamespace

    from torch.utils.data import DataLoader

    from onetok.ar_model.data import ARDataModule, TrainSequences
    from onetok.ar_model.sequence import Collate
    from onetok.data.samplers import RankSampler

    before = _peak_mb()[0]
    dm = ARDataModule(tokens=folder, text="bytes", in_memory=in_memory, batch_size=batch, shuffle_buffer=buffer,
                      num_workers=workers, val_samples=0, max_text_tokens=256)
    dm.trainer = SimpleNamespace(global_rank=rank, world_size=world, strategy=None)
    if in_memory:
        dm.train_pairs = dm.load_pairs("train")
    dataset = dm.train_dataset()
    sampler = RankSampler(len(dataset), world, rank, with_epoch=True) if isinstance(dataset, TrainSequences) else None
    loader = DataLoader(dataset, batch_size=batch, sampler=sampler, drop_last=True, num_workers=workers,
                        collate_fn=Collate(dm.vocab.pad_id))
    start, rows = time.perf_counter(), 0
    for b in loader:
        rows += b["ids"].shape[0]
    own, worker = _peak_mb()
    return {"rank": rank, "rows": rows, "seconds": round(time.perf_counter() - start, 2), "rss_before_mb": round(before),
            "peak_main_mb": round(own), "peak_worker_mb": round(worker), "added_main_mb": round(own - before)}


def _ranks(folder: Path, mode: str, ranks: int, workers: int, batch: int, buffer: int) -> list[dict]:
    """`ranks` processes (`python -m onetok.bench.data_memory ...`, one thread each) reading one epoch each."""
    procs = [subprocess.Popen([sys.executable, "-m", "onetok.bench.data_memory", str(folder), mode, str(r), str(ranks),
                               str(workers), str(batch), str(buffer)],
                              stdout=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
             for r in range(ranks)]
    outputs = [p.communicate()[0] for p in procs]
    if any(p.returncode for p in procs):
        raise RuntimeError(f"a rank reading {folder} ({mode}) failed (exit codes {[p.returncode for p in procs]})")
    return [json.loads(out.strip().splitlines()[-1]) for out in outputs]


def data_memory_report(sizes: list[int] = defaults.DATA_SIZES, tokens: int = defaults.DATA_TOKENS,
                       codebook: int = defaults.DATA_CODEBOOK, ranks: int = defaults.DATA_RANKS,
                       workers: int = defaults.DATA_WORKERS, batch: int = defaults.DATA_BATCH,
                       buffer: int = defaults.DATA_BUFFER, scratch: str | None = None) -> list[dict]:
    """Per token-set size and mode (memory, stream): each rank's epoch time and RSS (see the module docstring).
    The token folders are written under a temporary folder in `scratch` (default: the system's) and removed."""
    results = []
    with tempfile.TemporaryDirectory(dir=scratch) as tmp:
        for n in sizes:
            folder = Path(tmp) / f"tokens_{n}"
            disk = write_token_folder(folder, n, tokens, codebook)
            for mode in ("memory", "stream"):
                results.append({"samples": n, "disk_mb": round(disk / 2**20), "mode": mode,
                                "ranks": _ranks(folder, mode, ranks, workers, batch, buffer)})
    return results


def format_report(results: list[dict], ranks: int, workers: int, tokens: int, batch: int, buffer: int) -> str:
    lines = [f"AR data, peak RSS per rank ({ranks} ranks x {workers} workers, L={tokens}, batch {batch}, stream "
             f"buffer {buffer}); MB above each rank's RSS before opening the data",
             f"{'samples':>8} {'on disk':>8} {'mode':>7} {'+MB per rank':>13} {'peak MB per rank':>17} {'s/epoch':>8}"]
    for r in results:
        added = "/".join(str(x["added_main_mb"]) for x in r["ranks"])
        peak = "/".join(str(x["peak_main_mb"]) for x in r["ranks"])
        seconds = max(x["seconds"] for x in r["ranks"])
        lines.append(f"{r['samples']:>8} {r['disk_mb']:>6}MB {r['mode']:>7} {added:>13} {peak:>17} {seconds:>8}")
    return "\n".join(lines)


if __name__ == "__main__":  # one rank: FOLDER MODE RANK RANKS WORKERS BATCH BUFFER (see `_ranks`)
    folder_arg, mode_arg, *numbers = sys.argv[1:]
    rank_arg, ranks_arg, workers_arg, batch_arg, buffer_arg = map(int, numbers)
    print(json.dumps(read_one_epoch(folder_arg, mode_arg == "memory", rank_arg, ranks_arg, workers_arg, batch_arg,
                                    buffer_arg)))
