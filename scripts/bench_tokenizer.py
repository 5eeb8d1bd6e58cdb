"""`onetok bench tokenizer`: encode and decode throughput (images/s) of a tokenizer preset (random weights).

Default: the TiTok-S-128-sized preset at 256 px, CPU fp32, and GPU bf16 when CUDA is available. Throughput does not
depend on the weights, so no checkpoint is needed.
"""

from __future__ import annotations

import argparse
import json
import time


def _time_per_call(fn, warmup: int, iters: int, sync) -> float:
    for _ in range(warmup):
        fn()
    sync()
    start = time.perf_counter()
    for _ in range(iters):
        fn()
    sync()
    return (time.perf_counter() - start) / iters


def bench_device(preset: str, device: str, dtype_name: str, batch: int, warmup: int, iters: int) -> dict:
    import torch

    from onetok.tokenizers import Tokenizer
    from onetok.tokenizers import preset as preset_config

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype_name]
    torch.manual_seed(0)
    tok = Tokenizer(preset_config(preset)).to(device=device, dtype=dtype).eval()
    images = torch.rand(batch, 3, tok.image_size, tok.image_size, device=device, dtype=dtype)
    ids = tok.encode(images)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    encode_s = _time_per_call(lambda: tok.encode(images), warmup, iters, sync)
    decode_s = _time_per_call(lambda: tok.decode(ids), warmup, iters, sync)
    params = sum(p.numel() for p in tok.parameters())
    return {
        "preset": preset, "device": device, "dtype": dtype_name, "batch": batch, "image_size": tok.image_size,
        "tokens": tok.num_latent_tokens, "params_m": round(params / 1e6, 1),
        "encode_images_per_s": round(batch / encode_s, 2), "decode_images_per_s": round(batch / decode_s, 2),
    }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", default="titok-s-128", help="a preset of onetok.tokenizers.model.PRESETS")
    parser.add_argument("--batch-cpu", type=int, default=4)
    parser.add_argument("--batch-gpu", type=int, default=64)
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--no-gpu", action="store_true", help="skip the GPU measurement even if CUDA is available")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")


def run(args: argparse.Namespace) -> int:
    import torch

    results = [bench_device(args.preset, "cpu", "fp32", args.batch_cpu, args.warmup, args.iters)]
    if torch.cuda.is_available() and not args.no_gpu:
        results.append(bench_device(args.preset, "cuda", "bf16", args.batch_gpu, max(args.warmup, 3),
                                    max(args.iters, 10)))
    if args.json:
        print(json.dumps(results, indent=1))
        return 0
    print(f"tokenizer throughput: preset {args.preset} ({results[0]['params_m']}M params, "
          f"{results[0]['image_size']} px, {results[0]['tokens']} tokens), random weights")
    print(f"{'device':>6} {'dtype':>5} {'batch':>5} {'encode img/s':>13} {'decode img/s':>13}")
    for r in results:
        print(f"{r['device']:>6} {r['dtype']:>5} {r['batch']:>5} {r['encode_images_per_s']:>13.2f} "
              f"{r['decode_images_per_s']:>13.2f}")
    return 0
