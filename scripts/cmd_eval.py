"""`onetok eval-tokenizer --tokenizer DIR --data SHARDS [--json OUT]`: reconstruction quality of a tokenizer.

Prints PSNR at 1, 2, 4, ..., L tokens over the images in SHARDS, and the codebook usage (fraction of codes used at
least once over the set, at full length) and perplexity (exp of the code entropy).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from onetok.fileio import UserError, atomic_write_bytes, check_writable


def load_tokenizer(directory: str | Path, device: str = "cpu"):
    from onetok.tokenizers import Tokenizer

    directory = Path(directory)
    if not (directory / "config.json").is_file() or not (directory / "model.safetensors").is_file():
        raise UserError(f"{directory}: not a tokenizer directory (needs config.json and model.safetensors)")
    try:
        return Tokenizer.from_pretrained(directory, map_location=device)
    except (ValueError, KeyError, RuntimeError, OSError) as err:
        raise UserError(f"{directory}: cannot load the tokenizer ({str(err).splitlines()[0][:200]})") from None


def image_batches(spec: str, size: int, batch_size: int, limit: int | None):
    """(B, 3, S, S) float batches in [0, 1] from the shards in `spec`."""
    import numpy as np
    import torch

    from onetok.data.shards import expand_shards, iter_samples

    if not expand_shards(spec) or not all(Path(p).is_file() for p in expand_shards(spec)):
        raise UserError(f"{spec}: no readable shards")
    batch, seen = [], 0
    for sample in iter_samples(spec, size=size):
        batch.append(torch.from_numpy(np.asarray(sample["image"], dtype=np.uint8)).permute(2, 0, 1))  # (3, S, S)
        seen += 1
        if len(batch) == batch_size or seen == limit:
            yield torch.stack(batch).float().div_(255)
            batch = []
        if seen == limit:
            return
    if batch:
        yield torch.stack(batch).float().div_(255)


def evaluate(tokenizer, batches, device: str = "cpu") -> dict:
    """PSNR per token count (1, 2, 4, ..., L), codebook usage and perplexity at full length."""
    import torch

    from onetok.tokenizers.metrics import code_counts, codebook_usage, perplexity, psnr
    from onetok.tokenizers.system import token_counts

    ks = token_counts(tokenizer.num_latent_tokens)
    psnr_sum = {k: 0.0 for k in ks}
    counts = torch.zeros(tokenizer.codebook_size, dtype=torch.long)
    n = 0
    for images in batches:
        images = images.to(device)
        ids = tokenizer.encode(images)  # (B, L)
        counts += code_counts(ids.cpu(), tokenizer.codebook_size)
        for k in ks:
            psnr_sum[k] += float(psnr(tokenizer.decode(ids[:, :k]), images).sum())
        n += images.shape[0]
    if n == 0:
        raise UserError("no images to evaluate")
    return {
        "images": n,
        "num_latent_tokens": tokenizer.num_latent_tokens,
        "codebook_size": tokenizer.codebook_size,
        "psnr": {str(k): psnr_sum[k] / n for k in ks},
        "codebook_usage": codebook_usage(counts),
        "perplexity": perplexity(counts),
    }


def format_table(result: dict) -> str:
    lines = [f"{'tokens':>6}  {'PSNR dB':>8}"]
    lines += [f"{k:>6}  {v:8.2f}" for k, v in result["psnr"].items()]
    lines.append(f"images {result['images']}, codebook usage {100 * result['codebook_usage']:.1f}% of "
                 f"{result['codebook_size']}, perplexity {result['perplexity']:.1f}")
    return "\n".join(lines)


def _run(args: argparse.Namespace) -> int:
    import torch

    if args.json:
        check_writable(args.json, args.force)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    tokenizer = load_tokenizer(args.tokenizer, device)
    start = time.time()
    batches = image_batches(args.data, tokenizer.image_size, args.batch_size, args.limit)
    result = evaluate(tokenizer, batches, device)
    result["seconds"] = round(time.time() - start, 2)
    print(format_table(result))
    if args.json:
        atomic_write_bytes(args.json, (json.dumps(result, indent=1) + "\n").encode(), force=args.force)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval-tokenizer", help="PSNR per token count, codebook usage and perplexity")
    p.add_argument("--tokenizer", required=True, help="a tokenizer directory (onetok export)")
    p.add_argument("--data", required=True, help="image shards: a directory, glob or brace pattern")
    p.add_argument("--json", help="also write the numbers to this JSON file")
    p.add_argument("--force", action="store_true", help="replace an existing --json file")
    p.add_argument("--batch-size", type=int, default=250)
    p.add_argument("--limit", type=int, default=None, help="evaluate at most this many images")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.set_defaults(func=_run)
