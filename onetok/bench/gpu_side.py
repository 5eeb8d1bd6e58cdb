"""The side-by-side sections of the GPU check (`onetok.bench.gpu_check`): onetok next to what it must beat, on the
same device in the same run.

    tokenizer_reference  ours (`titok-s-128`) vs bytedance/1d-tokenizer's TiTok of the same size (random weights):
                         training steps/s (bf16 autocast, batch 32, random images) and encode/decode images/s
                         (batch 64, bf16 autocast), interleaved rounds alternating who goes first, as
                         `onetok bench tokenizer --reference` does on CPU
    otok_cuda            a `.otok` file written on the CPU (the built-in photo codec, range-coded with the portable
                         integer prior), decoded on CUDA: the same ids as on the CPU? And one written on CUDA,
                         read on the CPU.

The reference checkout is not part of the project: put a checkout of github.com/bytedance/1d-tokenizer at
`third_party/1d-tokenizer` of the onetok checkout (git-ignored; only `modeling/` is read) and carry it with the run,
or pass `--reference DIR`. Without one the section is skipped, saying where it looked.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

REFERENCE_DIR = Path("third_party") / "1d-tokenizer"  # in the checkout (`Context.checkout`)


def skip(reason: str) -> dict:
    """What a section returns when it cannot run here (`gpu_check.run_section` records it as skipped)."""
    return {"skip_reason": reason}


def interleaved_pairs(ctx, calls: dict[str, tuple[Callable, Callable]], rounds: int) -> dict:
    """Seconds of each (reference, ours) pair of calls over `rounds` rounds, the order alternating per round
    (`onetok.timing.interleaved`); per pair: the median seconds of each and the median over rounds of
    reference ÷ ours."""
    from onetok.timing import interleaved, median_ratio

    result = {}
    for what, (ref, ours) in calls.items():
        s = interleaved({"reference": ref, "ours": ours}, rounds, ctx.device)
        result[what] = {"reference_s": statistics.median(s["reference"]), "ours_s": statistics.median(s["ours"]),
                        "ours_over_reference": median_ratio(s["reference"], s["ours"])}
    return result


# ---------------------------------------------------------------------------------------------------------------
# The tokenizer against bytedance/1d-tokenizer
# ---------------------------------------------------------------------------------------------------------------


def _reference_on(ref, device: str):
    """The reference TiTok's modules on `device`, its latent tokens a leaf parameter there."""
    from onetok.bench.tokenizer_speed import ReferenceTiTok

    latent = torch.nn.Parameter(ref.latent_tokens.detach().to(device))
    return ReferenceTiTok(ref.encoder.to(device), ref.decoder.to(device), ref.quantizer.to(device), latent)


def _train_steps(parameters, loss_of: Callable[[], torch.Tensor], device: str, steps: int) -> Callable[[], None]:
    """A call running `steps` bf16-autocast training steps (forward, loss, backward, AdamW) of one model."""
    optimizer = torch.optim.AdamW(list(parameters), lr=1e-4, betas=(0.9, 0.99), weight_decay=1e-4)

    def run() -> None:
        for _ in range(steps):
            with torch.autocast(device, dtype=torch.bfloat16):
                loss = loss_of()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

    return run


def _step_calls(ref, ours, images: torch.Tensor, device: str, steps: int) -> tuple[Callable, Callable]:
    """(reference, ours) training calls: reconstruction MSE + the quantizer's loss, each model's own way."""

    def ref_loss() -> torch.Tensor:
        z = ref.encoder(pixel_values=images, latent_tokens=ref.latent_tokens)
        quantized, parts = ref.quantizer(z)
        return F.mse_loss(ref.decoder(quantized).float(), images) + parts["quantizer_loss"]

    def our_loss() -> torch.Tensor:
        out = ours(images)  # nested dropout, as in training
        return F.mse_loss(out.reconstruction.float(), images) + out.quantizer.loss

    return (_train_steps(ref.parameters(), ref_loss, device, steps),
            _train_steps(ours.parameters(), our_loss, device, steps))


def _inference_calls(ref, ours, images: torch.Tensor, device: str, repeats: int) -> dict:
    """{"encode": (ref, ours), "decode": (ref, ours)}: `repeats` no-grad calls each, bf16 autocast for both."""
    from onetok.bench.tokenizer_speed import reference_decode, reference_encode

    ours.inference_dtype = torch.bfloat16  # the CUDA default; on the CPU (dry run) too, so both run bf16
    ids = ours.encode(images)

    @torch.no_grad()
    def ref_call(fn, x):
        with torch.autocast(device, dtype=torch.bfloat16):
            for _ in range(repeats):
                fn(ref, x)

    def our_call(fn, x):
        for _ in range(repeats):
            fn(x)

    return {"encode": (lambda: ref_call(reference_encode, images), lambda: our_call(ours.encode, images)),
            "decode": (lambda: ref_call(reference_decode, ids), lambda: our_call(ours.decode, ids))}


def tokenizer_reference(ctx) -> dict:
    """Ours vs the reference TiTok at the same size, same device, same random images (see the module docstring)."""
    from onetok.bench.tokenizer_speed import reference_modules
    from onetok.tokenizers.model import Tokenizer, preset

    checkout = Path(ctx.shared.get("reference_dir") or ctx.checkout / REFERENCE_DIR)
    if not (checkout / "modeling" / "modules" / "blocks.py").is_file():
        return skip(f"no bytedance/1d-tokenizer checkout at {checkout} (put one there, git-ignored, or pass "
                    "--reference DIR)")
    dry = ctx.dry_run
    cfg = preset("titok-s-128", image_size=32, num_latent_tokens=8) if dry else preset("titok-s-128")
    train_batch, infer_batch, rounds, steps, repeats = (2, 2, 1, 1, 1) if dry else (32, 64, 5, 5, 5)
    ref = _reference_on(reference_modules(checkout, cfg), ctx.device)
    torch.manual_seed(0)
    ours = Tokenizer(cfg).to(ctx.device)
    g = torch.Generator(device=ctx.device).manual_seed(0)
    images = torch.rand(train_batch, 3, cfg.image_size, cfg.image_size, device=ctx.device, generator=g)
    for module in (ref.encoder, ref.decoder, ref.quantizer, ours):
        module.train()
    train = _step_calls(ref, ours, images, ctx.device, steps)
    for fn in train if not dry else ():  # warm-up: kernels, allocator, optimizer state
        fn()
    result = {"train": interleaved_pairs(ctx, {"train": train}, rounds)["train"]}
    for module in (ref.encoder, ref.decoder, ref.quantizer, ours):
        module.eval()
    images = torch.rand(infer_batch, 3, cfg.image_size, cfg.image_size, device=ctx.device, generator=g)
    calls = _inference_calls(ref, ours, images, ctx.device, repeats)
    for fn in [fn for pair in calls.values() for fn in pair] if not dry else ():
        fn()
    result.update(interleaved_pairs(ctx, calls, rounds))
    for what, batch, per_call in (("train", train_batch, steps), ("encode", infer_batch, repeats),
                                  ("decode", infer_batch, repeats)):
        r = result[what]
        unit = per_call if what == "train" else per_call * batch  # steps, or images
        r.update({"batch": batch, "ours_per_s": unit / r["ours_s"], "reference_per_s": unit / r["reference_s"],
                  "unit": "steps" if what == "train" else "images"})
    params = {"ours": sum(p.numel() for p in ours.parameters()), "reference": sum(p.numel() for p in ref.parameters())}
    return {"preset": "titok-s-128" + (" (dry run: 32 px, 8 tokens)" if dry else ""), "image_size": cfg.image_size,
            "tokens": cfg.num_latent_tokens, "params_m": {k: round(v / 1e6, 1) for k, v in params.items()},
            "checkout": str(checkout), "rounds": rounds, "precision": "bf16 autocast, fp32 weights", **result}


# ---------------------------------------------------------------------------------------------------------------
# The portable .otok decode on CUDA
# ---------------------------------------------------------------------------------------------------------------


def _photo(size: tuple[int, int]):
    from onetok.data.images import load_image, sample_photo

    return load_image(sample_photo()).image.crop((0, 0, *size))


def _builtin_codec():
    """The built-in photo codec on the CPU: its tokenizer and the prior shipped beside it (None when there is none)."""
    from onetok.tokenizers import Tokenizer, registry
    from onetok.tokenizers.codec.codec import Codec
    from onetok.tokenizers.codec.prior import TilePrior

    folder = registry.builtin()
    prior = registry.prior_beside(folder)
    return Codec(Tokenizer.from_pretrained(folder).eval(), None if prior is None else TilePrior.from_pretrained(prior))


def otok_cuda(ctx) -> dict:
    """Compress a crop of the bundled photo on the CPU with the built-in codec (range-coded, portable prior), then
    read the same bytes with the codec moved to the check's device: the ids must be identical; the pixels are
    compared too (the tokenizer decodes in bf16 on CUDA, fp32 on the CPU, so they may differ slightly)."""
    from onetok.metrics import psnr_from_mse
    from onetok.timing import Stopwatch
    from onetok.tokenizers.codec import format as otok
    from onetok.tokenizers.codec.codec import Codec

    cpu = _builtin_codec()
    if cpu.prior is None:
        return skip("the built-in photo codec has no prior (nothing is range-coded)")
    data = cpu.compress([_photo((64, 64) if ctx.dry_run else (256, 192))])
    (ctx.out / "otok_cuda_cpu_written.otok").write_bytes(data)
    f = otok.loads(data, cpu.fingerprint)
    want = cpu.ids(f, f.images[0])
    with Stopwatch() as cpu_watch:
        cpu_pixels = cpu.decode(f)[0]
    fresh = _builtin_codec()  # loaded again: nothing built from the CPU copy (e.g. its integer prior) is reused
    device = Codec(fresh.tokenizer.to(ctx.device), fresh.prior.to(ctx.device))
    with Stopwatch(ctx.device) as device_watch:
        got = device.ids(f, f.images[0])
        dev_pixels = device.decode(f)[0]
    a, b = (torch.tensor(list(im.getdata()), dtype=torch.float64) for im in (cpu_pixels, dev_pixels))
    mse = float(((a - b) ** 2).mean())
    written = device.compress([_photo((64, 64) if ctx.dry_run else (256, 192))])  # the other way round
    (ctx.out / "otok_cuda_device_written.otok").write_bytes(written)
    g = otok.loads(written, cpu.fingerprint)
    back, own = cpu.ids(g, g.images[0]), device.ids(g, g.images[0])
    return {"device": ctx.device, "bytes": len(data), "tiles": int(len(want.counts)), "ids": int(len(want.ids)),
            "same_counts": bool((want.counts == got.counts).all()), "same_ids": bool((want.ids == got.ids).all()),
            "device_written_bytes": len(written),
            "device_written_same_on_cpu": bool((back.counts == own.counts).all() and (back.ids == own.ids).all()),
            "fingerprint_same_on_device": device.fingerprint == cpu.fingerprint,
            "pixel_max_abs_diff": float((a - b).abs().max()),
            "pixel_psnr_db": None if mse == 0 else psnr_from_mse(mse, 255.0),
            "cpu_decode_s": cpu_watch.seconds, "device_decode_s": device_watch.seconds, "file": "otok_cuda_cpu_written.otok"}
