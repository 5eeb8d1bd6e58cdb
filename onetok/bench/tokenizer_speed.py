"""`onetok bench tokenizer`: encode/decode throughput of a tokenizer preset (random weights), its time per stage,
and optionally the same measurement of the reference TiTok code side by side.

Default (`onetok.bench.defaults`): the TiTok-S-128-sized preset at 256 px, CPU fp32, and GPU bf16 (autocast, the tokenizer's
default there) when CUDA is available. Throughput does not depend on the weights, so no checkpoint is needed.

`--reference DIR` points at a local checkout of bytedance/1d-tokenizer (not part of this project; nothing is
downloaded): its TiTok encoder, VQ quantizer and non-legacy decoder of the same size (`titok-s-128` -> "small",
128 tokens) are built with random weights and timed in the same rounds as ours, alternating which goes first, on
the same images and batch. The ratio is the median over rounds of (reference seconds / our seconds).
"""

from __future__ import annotations

import contextlib
import importlib.util
import statistics
import sys
import time
import types
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from onetok.bench import defaults
from onetok.fileio import UserError

if TYPE_CHECKING:  # imported where used: `onetok --help` stays torch-free
    import torch

STAGES = {  # stage -> the module whose forward call it times
    "patch embed": "encoder.patch_embed",
    "encoder": "encoder.blocks",
    "quantize": "quantizer",
    "decoder": "decoder.blocks",
    "pixel head": "decoder.head",
}
REFERENCE_SIZES = {512: "small", 768: "base", 1024: "large"}  # 1d-tokenizer's ViT sizes by width


# --------------------------------------------------------------------------------------------------------------------
# Timing
# --------------------------------------------------------------------------------------------------------------------


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}  # as `onetok.timing.Stopwatch` reads them


@contextlib.contextmanager
def stage_timer(tokenizer, clock: str = "wall"):
    """Yield a dict stage -> list of seconds, filled by forward hooks on the modules of `STAGES`."""
    now = CLOCKS[clock]
    times: dict[str, list[float]] = {name: [] for name in STAGES}
    handles = []
    for name, path in STAGES.items():
        module = tokenizer.get_submodule(path)
        started: list[float] = []
        handles.append(module.register_forward_pre_hook(lambda *_, s=started: s.append(now())))
        handles.append(module.register_forward_hook(lambda *_, s=started, n=name: times[n].append(now() - s.pop())))
    try:
        yield times
    finally:
        for handle in handles:
            handle.remove()


def bench_device(preset: str, device: str, dtype: str, batch: int, rounds: int, clock: str = "wall") -> dict:
    """Throughput (images/s, median over rounds) and median ms per batch for each stage."""
    import torch

    from onetok.timing import median_time
    from onetok.tokenizers import Tokenizer
    from onetok.tokenizers import preset as preset_config

    torch.manual_seed(0)
    tok = Tokenizer(preset_config(preset)).to(device).eval()
    tok.inference_dtype = {"auto": None, "fp32": torch.float32, "bf16": torch.bfloat16}[dtype]
    images = torch.rand(batch, 3, tok.image_size, tok.image_size, device=device)
    ids = tok.encode(images)
    tok.decode(ids)  # warm-up of both, outside the stage timers
    with stage_timer(tok, clock) as stages:
        encode = median_time(lambda: tok.encode(images), device, rounds, warmup=0, clock=clock).median_s
        decode = median_time(lambda: tok.decode(ids), device, rounds, warmup=0, clock=clock).median_s
    return {
        "preset": preset, "device": device, "dtype": str(tok.compute_dtype(images.device)).removeprefix("torch."),
        "batch": batch, "clock": clock, "image_size": tok.image_size, "tokens": tok.num_latent_tokens,
        "params_m": round(sum(p.numel() for p in tok.parameters()) / 1e6, 1),
        "encode_images_per_s": round(batch / encode, 2),
        "decode_images_per_s": round(batch / decode, 2),
        "stage_ms": {name: round(1e3 * statistics.median(t), 1) for name, t in stages.items() if t},
    }


# --------------------------------------------------------------------------------------------------------------------
# The reference implementation (bytedance/1d-tokenizer), side by side
# --------------------------------------------------------------------------------------------------------------------


class _Config(dict):
    """The attribute access + .get() that 1d-tokenizer's modules expect from their OmegaConf config."""

    def __getattr__(self, name):
        value = self[name]
        return _Config(value) if isinstance(value, dict) else value


def _load_file(name: str, path: Path) -> types.ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class ReferenceTiTok(NamedTuple):
    """1d-tokenizer's TiTok parts at our preset's size (random weights, CPU, eval mode)."""

    encoder: torch.nn.Module  # TiTokEncoder
    decoder: torch.nn.Module  # TiTokDecoder (non-legacy: direct RGB)
    quantizer: torch.nn.Module  # VectorQuantizer (l2-normalised)
    latent_tokens: torch.nn.Parameter  # (L, width), as TiTok's own parameter

    def parameters(self):
        yield from (p for m in (self.encoder, self.decoder, self.quantizer) for p in m.parameters())
        yield self.latent_tokens


def reference_modules(checkout: Path, cfg) -> ReferenceTiTok:
    """1d-tokenizer's TiTok encoder + VQ + non-legacy decoder at our preset's size, random weights. Its package
    __init__ pulls in training-only dependencies, so the two modules are loaded from their files; `accelerate` (used
    only by its clustering-VQ training) is stubbed when missing."""
    import torch

    blocks_path, quantizer_path = checkout / "modeling/modules/blocks.py", checkout / "modeling/quantizer/quantizer.py"
    if not (blocks_path.is_file() and quantizer_path.is_file()):
        raise UserError(f"{checkout}: not a bytedance/1d-tokenizer checkout (no modeling/modules/blocks.py)")
    if cfg.enc_width not in REFERENCE_SIZES or cfg.dec_width != cfg.enc_width or cfg.patch_size != 16:
        raise UserError(f"--reference: preset has no TiTok counterpart (widths {cfg.enc_width}/{cfg.dec_width})")
    if importlib.util.find_spec("accelerate") is None:
        operations = types.ModuleType("accelerate.utils.operations")
        operations.gather = lambda tensor: tensor
        sys.modules.setdefault("accelerate", types.ModuleType("accelerate"))
        sys.modules.setdefault("accelerate.utils", types.ModuleType("accelerate.utils"))
        sys.modules.setdefault("accelerate.utils.operations", operations)
    with contextlib.redirect_stdout(sys.stderr), warnings.catch_warnings():  # it prints on import, and warns
        warnings.simplefilter("ignore", FutureWarning)  # about torch.cuda.amp.autocast
        blocks = _load_file("reference_titok_blocks", blocks_path)
        quantizer_module = _load_file("reference_titok_quantizer", quantizer_path)
    size = REFERENCE_SIZES[cfg.enc_width]
    config = _Config(dataset={"preprocessing": {"crop_size": cfg.image_size}}, model={"vq_model": dict(
        codebook_size=cfg.codebook_size, token_size=cfg.code_dim, use_l2_norm=True, commitment_cost=0.25,
        vit_enc_model_size=size, vit_dec_model_size=size, vit_enc_patch_size=16, vit_dec_patch_size=16,
        num_latent_tokens=cfg.num_latent_tokens, is_legacy=False)})
    torch.manual_seed(0)
    encoder, decoder = blocks.TiTokEncoder(config).eval(), blocks.TiTokDecoder(config).eval()
    quantizer = quantizer_module.VectorQuantizer(cfg.codebook_size, cfg.code_dim, 0.25, use_l2_norm=True).eval()
    latent_tokens = torch.nn.Parameter(torch.randn(cfg.num_latent_tokens, encoder.width) * encoder.width**-0.5)
    return ReferenceTiTok(encoder, decoder, quantizer, latent_tokens)


def reference_encode(ref: ReferenceTiTok, images: torch.Tensor) -> torch.Tensor:
    """As TiTok.encode + the indices of its quantizer: (B, 3, S, S) -> (B, L)."""
    z = ref.encoder(pixel_values=images, latent_tokens=ref.latent_tokens)
    return ref.quantizer(z)[1]["min_encoding_indices"].flatten(1)


def reference_decode(ref: ReferenceTiTok, ids: torch.Tensor) -> torch.Tensor:
    """As TiTok.decode_tokens with the non-legacy (direct RGB) decoder: (B, L) -> (B, 3, S, S)."""
    B, L = ids.shape
    z = ref.quantizer.get_codebook_entry(ids.reshape(-1)).reshape(B, 1, L, -1)
    return ref.decoder(z.permute(0, 3, 1, 2).contiguous())


def reference_titok(checkout: Path, cfg):
    """`reference_modules` as two no-grad functions encode(images) -> ids (B, L), decode(ids) -> images, and the
    parameter count."""
    import torch

    ref = reference_modules(checkout, cfg)
    params = sum(p.numel() for p in ref.parameters())
    encode = torch.no_grad()(lambda images: reference_encode(ref, images))
    decode = torch.no_grad()(lambda ids: reference_decode(ref, ids))
    return encode, decode, params


def side_by_side(preset: str, checkout: Path, batch: int, rounds: int, clock: str = "wall") -> dict:
    """Ours and the reference on the same CPU images, interleaved rounds (alternating which goes first)."""
    import torch

    from onetok.timing import interleaved, median_ratio
    from onetok.tokenizers import Tokenizer
    from onetok.tokenizers import preset as preset_config

    cfg = preset_config(preset)
    ref_encode, ref_decode, ref_params = reference_titok(checkout, cfg)
    torch.manual_seed(0)
    ours = Tokenizer(cfg).eval()
    images = torch.rand(batch, 3, cfg.image_size, cfg.image_size)
    ids = ours.encode(images)
    calls = {
        "encode": (lambda: ref_encode(images), lambda: ours.encode(images)),
        "decode": (lambda: ref_decode(ids), lambda: ours.decode(ids)),
    }
    for ref, our in calls.values():  # warm-up, and the outputs agree in shape
        assert tuple(ref().shape) == tuple(our().shape)
    seconds = interleaved({f"{who}_{what}": fn for what, pair in calls.items()
                           for who, fn in zip(("reference", "ours"), pair)}, rounds, clock=clock)
    result = {"preset": preset, "batch": batch, "threads": torch.get_num_threads(), "rounds": rounds, "clock": clock,
              "params_m": {"ours": round(sum(p.numel() for p in ours.parameters()) / 1e6, 1),
                           "reference": round(ref_params / 1e6, 1)}}
    for what in calls:
        ref_s, our_s = seconds[f"reference_{what}"], seconds[f"ours_{what}"]
        result[what] = {
            "ours_images_per_s": round(batch / statistics.median(our_s), 2),
            "reference_images_per_s": round(batch / statistics.median(ref_s), 2),
            "speedup": round(median_ratio(ref_s, our_s), 3),
        }
    return result


# --------------------------------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------------------------------


def tokenizer_report(preset: str = defaults.TOKENIZER_PRESET, batch_cpu: int = defaults.TOKENIZER_BATCH["cpu"],
                     batch_gpu: int = defaults.TOKENIZER_BATCH["cuda"], rounds: int = defaults.TOKENIZER_ROUNDS,
                     dtype: str = "auto", clock: str = "wall", reference: Path | None = None,
                     gpu: bool = True) -> dict:
    """CPU (and, with `gpu` and CUDA, GPU) throughput of the preset; with `reference`, the side-by-side rounds
    against that bytedance/1d-tokenizer checkout on the CPU (a missing folder is skipped with a note on stderr)."""
    import torch

    if rounds < 1 or batch_cpu < 1 or batch_gpu < 1:
        raise UserError("--rounds, --batch-cpu and --batch-gpu must be >= 1")
    report = {"devices": [bench_device(preset, "cpu", dtype, batch_cpu, rounds, clock)]}
    if torch.cuda.is_available() and gpu:
        cuda_rounds = max(rounds, defaults.TOKENIZER_MIN_CUDA_ROUNDS)
        report["devices"].append(bench_device(preset, "cuda", dtype, batch_gpu, cuda_rounds))
    if reference is not None:
        if Path(reference).is_dir():
            report["reference"] = side_by_side(preset, Path(reference), batch_cpu, rounds, clock)
        else:
            print(f"--reference {reference}: no such folder, side-by-side comparison skipped", file=sys.stderr)
    return report


def format_report(report: dict) -> str:
    first = report["devices"][0]
    lines = [f"tokenizer throughput: preset {first['preset']} ({first['params_m']}M params, {first['image_size']} px, "
             f"{first['tokens']} tokens), random weights",
             f"{'device':>6} {'dtype':>8} {'batch':>5} {'encode img/s':>13} {'decode img/s':>13}"]
    lines += [f"{r['device']:>6} {r['dtype']:>8} {r['batch']:>5} {r['encode_images_per_s']:>13.2f} "
              f"{r['decode_images_per_s']:>13.2f}" for r in report["devices"]]
    for r in report["devices"]:
        stages = ", ".join(f"{name} {ms:.1f}" for name, ms in r["stage_ms"].items())
        lines.append(f"{r['device']} ms per batch of {r['batch']} ({r['clock']} clock): {stages}")
    ref = report.get("reference")
    if ref:
        lines.append(f"vs bytedance/1d-tokenizer TiTok ({ref['params_m']['reference']}M params; ours "
                     f"{ref['params_m']['ours']}M), CPU batch {ref['batch']}, {ref['threads']} threads, "
                     f"{ref['rounds']} interleaved rounds, {ref['clock']} clock:")
        for what in ("encode", "decode"):
            r = ref[what]
            lines.append(f"  {what}: ours {r['ours_images_per_s']:.2f} img/s, reference "
                         f"{r['reference_images_per_s']:.2f} img/s, speedup {r['speedup']:.2f}x (median of per-round "
                         f"ratios)")
    return "\n".join(lines)
