"""The demo's pictures, `metrics.json` and `report.md`, from the exported models and the steps' JSON outputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from onetok.data.pixels import chw_uint8, from_hwc, to_float, to_hwc
from onetok.data.shapes import parse_caption, parse_image
from onetok.data.shards import iter_samples
from onetok.tokenizers.codebook_stats import token_counts

SCALE = 4  # 32 px images are shown 4x larger (nearest neighbour)
NATURAL_VAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10" / "val"  # beside the checkout


def _load_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}


def _val_images(data: Path, n: int) -> tuple[torch.Tensor, list[str]]:
    images, captions = [], []
    for sample in iter_samples(data / "val"):
        images.append(chw_uint8(sample["image"]))
        captions.append(sample["caption"])
        if len(images) == n:
            break
    return to_float(torch.stack(images)), captions  # (B, 3, S, S)


def _to_pil(images: torch.Tensor) -> list[Image.Image]:
    arr = to_hwc(images)  # (B, S, S, 3)
    return [Image.fromarray(a).resize((a.shape[1] * SCALE, a.shape[0] * SCALE), Image.Resampling.NEAREST) for a in arr]


def reconstruction_grid(tok_dir: Path, data: Path, out: Path, n: int = 8) -> list[int]:
    """Rows: val images; columns: the original, then decodes from 1, 2, 4, ..., L tokens."""
    from onetok.tokenizers import Tokenizer

    tok = Tokenizer.from_pretrained(tok_dir).eval()
    images, _ = _val_images(data, n)
    counts = token_counts(tok.num_latent_tokens)
    columns = [images] + [tok.decode(tok.encode(images, k)) for k in counts]
    tiles = [_to_pil(c) for c in columns]
    w, h = tiles[0][0].size
    grid = Image.new("RGB", (w * len(columns) + 2 * (len(columns) - 1), h * n), (255, 255, 255))
    for j, col in enumerate(tiles):
        for i, tile in enumerate(col):
            grid.paste(tile, (j * (w + 2), i * h))
    grid.save(out)
    return counts


def shapes_mark(image: np.ndarray, prompt: str) -> bool:
    """The pixel parser reads exactly the prompted attributes."""
    return parse_image(image) == parse_caption(prompt)


def t2i_figure(samples_dir: Path, out: Path, mark=shapes_mark) -> list[dict]:
    """One row per prompt with its samples, the prompt beside it, each marked ✓/✗ by `mark(image, prompt)`;
    returns the samples.jsonl records."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = [json.loads(line) for line in (samples_dir / "samples.jsonl").read_text().splitlines() if line.strip()]
    prompts = list(dict.fromkeys(r["prompt"] for r in records))
    per = max(sum(r["prompt"] == p for r in records) for p in prompts)
    fig, axes = plt.subplots(len(prompts), per, figsize=(1.4 * per + 4.2, 1.4 * len(prompts)), squeeze=False)
    for i, prompt in enumerate(prompts):
        rows = [r for r in records if r["prompt"] == prompt]
        for j in range(per):
            ax = axes[i][j]
            ax.axis("off")
            if j < len(rows):
                img = np.asarray(Image.open(samples_dir / rows[j]["file"]).convert("RGB"))
                ok = mark(img, prompt)
                ax.imshow(img, interpolation="nearest")
                if ok is not None:
                    ax.set_title("✓" if ok else "✗", fontsize=8, color="green" if ok else "red")
        axes[i][-1].text(1.1, 0.5, prompt, transform=axes[i][-1].transAxes, va="center", fontsize=8)
    fig.subplots_adjust(left=0.01, right=0.5, wspace=0.05, hspace=0.35)
    fig.savefig(out, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return records


def caption_examples(model_dir: Path, data: Path, out_dir: Path, n: int = 8) -> list[dict]:
    from onetok.ar_model import UnifiedModel

    model = UnifiedModel.from_pretrained(model_dir)
    images, truths = _val_images(data, n)
    predicted = model.caption(images)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, (tile, truth, pred) in enumerate(zip(_to_pil(images), truths, predicted)):
        tile.save(out_dir / f"{i:02d}.png")
        rows.append({"file": f"captions/{i:02d}.png", "truth": truth, "predicted": pred, "exact": pred == truth})
    return rows


def write_natural_val(spec: Path, out_dir: Path, per_class: int) -> list[Path]:
    """The first `per_class` val images of every label as PNGs (+ labels.json); none when `spec` is absent."""
    if not spec.is_dir():
        return []
    out_dir.mkdir(parents=True, exist_ok=True)
    seen: dict[str, int] = {}
    labels = {}
    for sample in iter_samples(spec):
        label = sample["json"].get("label")
        if label is None or seen.get(label, 0) >= per_class:
            continue
        seen[label] = seen.get(label, 0) + 1
        name = f"{label}_{seen[label]}.png"
        sample["image"].save(out_dir / name)
        labels[name] = label
    (out_dir / "labels.json").write_text(json.dumps(labels, indent=1) + "\n")
    return [out_dir / name for name in labels]


def natural_section(folder: Path) -> dict:
    """The natural-images pictures and numbers: the class grid (✓ = the built-in judge names the prompted class)
    and the val captions marked right or wrong (the class word or a synonym, and no other class)."""
    from onetok.ar_model.classifier import BUILTIN_JUDGE, CIFAR10_LABELS, CIFAR10_SYNONYMS, ImageClassifier, is_classifier_dir
    from onetok.ar_model.judges import CaptionVocabulary

    if not (folder / "samples" / "samples.jsonl").is_file():
        return {}
    mark = lambda image, prompt: None  # noqa: E731 - no judge installed: no marks
    if is_classifier_dir(BUILTIN_JUDGE):
        judge = ImageClassifier.from_pretrained(BUILTIN_JUDGE)

        def mark(image: np.ndarray, prompt: str) -> bool:
            x = from_hwc(image)  # (1, 3, S, S)
            with torch.no_grad():
                return judge.labels[int(judge(x).argmax())] == prompt.rsplit(" ", 1)[-1]
    records = t2i_figure(folder / "samples", folder / "grid.png", mark)
    vocabulary = CaptionVocabulary(CIFAR10_LABELS, CIFAR10_SYNONYMS)
    labels = _load_json(folder / "val" / "labels.json")
    rows = []
    if (folder / "captions.tsv").is_file():
        for line in (folder / "captions.tsv").read_text().splitlines():
            path, _, caption = line.partition("\t")
            name = Path(path).name
            _to_pil(from_hwc(Image.open(path).convert("RGB")))[0].save(folder / "val" / f"x4_{name}")
            rows.append({"file": f"natural/val/x4_{name}", "label": labels.get(name), "caption": caption,
                         "right": vocabulary.correct(caption, labels.get(name, ""))})
    return {"samples": len(records), "captions": rows,
            "caption_accuracy": sum(r["right"] for r in rows) / len(rows) if rows else None}


def photo_ladder(folder: Path) -> list[dict]:
    """The real-photo rate ladder: per `coffee_<bpp>.otok`, its size and the PSNR of its decoded PNG."""
    if not (folder / "in").is_dir():
        return []
    from onetok.metrics import pixel_psnr

    original = np.asarray(Image.open(next((folder / "in").iterdir())).convert("RGB"))
    rows = []
    for otok in sorted(folder.glob("*.otok"), key=lambda p: float(p.stem.split("_")[-1])):
        decoded = np.asarray(Image.open(otok.with_suffix(".png")).convert("RGB"))
        rows.append({"target_bpp": float(otok.stem.split("_")[-1]), "bytes": otok.stat().st_size,
                     "bpp": 8 * otok.stat().st_size / (original.shape[0] * original.shape[1]),
                     "psnr": pixel_psnr(original, decoded), "png": otok.with_suffix(".png").name})
    return rows


def _fmt(x, digits=2) -> str:
    return f"{x:.{digits}f}" if isinstance(x, (int, float)) else str(x)


def write_report(out: Path) -> dict:
    tok_metrics = _load_json(out / "tokenizer_metrics.json")
    ar_metrics = _load_json(out / "ar_metrics.json")
    sjd_metrics = _load_json(out / "sjd_metrics.json")
    counts = reconstruction_grid(out / "models" / "tokenizer", out / "data", out / "reconstructions.png")
    plain = t2i_figure(out / "samples_plain", out / "t2i_plain.png")
    sjd = t2i_figure(out / "samples_sjd", out / "t2i_sjd.png")
    captions = caption_examples(out / "models" / "unified", out / "data", out / "captions")
    otoks = sorted((out / "compressed").glob("*.otok"))
    bytes_per_image = float(np.mean([p.stat().st_size for p in otoks])) if otoks else None
    timings = {p.name: json.loads(p.read_text()).get("seconds") for p in sorted((out / ".done").glob("*"))}
    photo_rd = _load_json(out / "photo" / "rd" / "rd.json")
    metrics = {
        "tokenizer": tok_metrics,
        "text_to_image": ar_metrics.get("text_to_image", {}),
        "image_to_text": ar_metrics.get("image_to_text", {}),
        "sjd": {k: sjd_metrics.get(k) for k in ("forward_pass_ratio", "wall_clock_ratio", "window",
                                               "prompts", "plain", "sjd") if k in sjd_metrics},
        "compression": {"bytes_per_image": bytes_per_image, "files": len(otoks)},
        "photo": {"ladder": photo_ladder(out / "photo"), "bd_rate_percent": photo_rd.get("bd_rate_percent", {})},
        "demo_samples": {"plain_forward_passes": [r.get("forward_passes") for r in plain],
                         "sjd_forward_passes": [r.get("forward_passes") for r in sjd]},
        "natural_images": natural_section(out / "natural"),
        "step_seconds": timings,
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1) + "\n")
    (out / "report.md").write_text(_markdown(metrics, counts, captions))
    return metrics


def _photo_markdown(photo: dict) -> list[str]:
    """The real-photo section: the rate ladder of the built-in photo codec and the equal-bytes comparison."""
    if not photo["ladder"]:
        return []
    lines = ["## A real photo", "",
             "The built-in photo tokenizer (`onetok compress` without `--tokenizer`) on the bundled photo "
             "`data/photos/coffee.jpg` (600 × 400, CC0, see data/photos/README.md; it was one of the training "
             "photos, so these numbers are optimistic: docs/benchmarks.md has the held-out ones). Every byte of "
             "every file counted.", "", "| target bpp | bytes | bpp | PSNR (dB) | decoded |", "|---|---|---|---|---|"]
    lines += [f"| {r['target_bpp']:g} | {r['bytes']} | {r['bpp']:.3f} | {r['psnr']:.2f} | ![](photo/{r['png']}) |"
              for r in photo["ladder"]]
    rates = ", ".join(f"{k} " + ("no overlap" if v is None else f"{v:+.1f}%")  # None: no common PSNR range
                      for k, v in photo["bd_rate_percent"].items())
    return lines + ["", f"BD-rate on this photo: {rates}.", "",
                    "Roughly equal bytes (original, .otok, JPEG, WebP, AVIF; a 3x centre crop below):", "",
                    "![equal bytes](photo/rd/equal_bytes.png)", "", "![rate-distortion](photo/rd/rd.png)", ""]


def _natural_markdown(nat: dict) -> list[str]:
    """The built-in natural-image model: its class grid and val captions marked right or wrong."""
    if not nat:
        return []
    lines = ["## Natural images (the built-in CIFAR-10 model, no training)", "",
             "`onetok sample` with the built-in model, prompt \"a photo of a {class}\", 8 samples per class (✓ = the built-in "
             "judge classifier names the prompted class; docs/evaluation.md):", "", "![natural images](natural/grid.png)", ""]
    if nat["captions"]:
        lines += [f"`onetok caption` on {len(nat['captions'])} CIFAR-10 val images (✓ = the caption names the class or "
                  f"a synonym, and no other class): {100 * nat['caption_accuracy']:.0f}% right.", "",
                  "| image | class | caption | right |", "|---|---|---|---|"]
        lines += [f"| ![]({r['file']}) | {r['label']} | {r['caption']} | {'✓' if r['right'] else '✗'} |"
                  for r in nat["captions"]]
    else:
        lines.append("(No captions: the CIFAR-10 val shards were not found beside the checkout.)")
    return lines + [""]


def _markdown(m: dict, counts: list[int], captions: list[dict]) -> str:
    tok, t2i, i2t, sjd = m["tokenizer"], m["text_to_image"], m["image_to_text"], m["sjd"]
    lines = ["# onetok demo report", "", "## Tokenizer", "",
             f"Reconstructions of val images: the original, then decoded from {', '.join(map(str, counts))} tokens.",
             "", "![reconstructions](reconstructions.png)", "", "```json", json.dumps(tok, indent=1), "```", "",
             "## Text → image", "",
             "Plain sampling (✓ = the pixel parser reads exactly the prompted attributes):", "",
             "![text to image](t2i_plain.png)", "", "With speculative Jacobi decoding:", "", "![sjd](t2i_sjd.png)", "",
             "```json", json.dumps(t2i, indent=1), "```", "", "## Image → text", "",
             "| image | predicted | truth | exact |", "|---|---|---|---|"]
    lines += [f"| ![]({c['file']}) | {c['predicted']} | {c['truth']} | {'✓' if c['exact'] else '✗'} |" for c in captions]
    lines += ["", "```json", json.dumps(i2t, indent=1), "```", "", "## Speculative Jacobi decoding", "",
              f"Forward passes plain ÷ SJD **{_fmt(sjd.get('forward_pass_ratio'))}×**, wall clock plain ÷ SJD "
              f"**{_fmt(sjd.get('wall_clock_ratio'))}×** (docs/sjd.md).", "",
              "## Compression", "", f"Mean `.otok` size per image: {_fmt(m['compression']['bytes_per_image'], 1)} bytes "
              "(header and CRC included).", "", "![rate-distortion](rd/rd.png)", ""]
    lines += _photo_markdown(m["photo"])
    lines += _natural_markdown(m["natural_images"])
    lines += ["## Step times (s)", "",
              "```json", json.dumps(m["step_seconds"], indent=1), "```", ""]
    return "\n".join(lines)
