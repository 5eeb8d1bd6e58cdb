"""Judging the unified model on val data, in both directions, with the judge the data call for
(`onetok.ar_model.judges`; docs/evaluation.md).

- Image -> text, any data: greedy captions of val images against their true captions (exact match, word-overlap
  F1); with a JSON `label` and a judge classifier, class accuracy (the caption names the class or a synonym, and no
  other class).
- Text -> image, shapes data: each val caption is a prompt; the pixel parser must read back exactly the prompted
  size, color, shape, position and background. Held-out combinations (`json["holdout"]`) are also reported alone.
- Text -> image, labelled data with a classifier that knows the labels: `per_class` samples per class for each
  prompt template ("a photo of a {label}", "{label}", ...): class fidelity (the classifier names the prompted
  class), and in its feature space against the real val images: Fréchet distance, precision/recall, diversity.
  With `reconstructions`, the same figures for the tokenizer's reconstructions of val (the model's ceiling).
- Text -> image, other data: one sample per val caption; with a classifier, Fréchet distance and precision/recall
  of the samples against the val images in its feature space.

Shared by `onetok eval-ar`, the training callback (`onetok.ar_model.callbacks`) and the demo.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from onetok.ar_model import judges
from onetok.ar_model.generate import DEFAULT_SETTINGS, SamplingSettings, generate_text
from onetok.ar_model.model import Transformer
from onetok.ar_model.unified import UnifiedModel
from onetok.ar_model.vocab import Vocab
from onetok.data.pixels import chw_uint8
from onetok.timing import Stopwatch

TEMPLATES = ("a photo of a {label}", "{label}")  # the class-prompt protocol of eval-ar


class EvalItems(NamedTuple):
    """Val samples: captions, their codes (N, L) under the model's tokenizer, held-out flags, JSON labels (None where
    absent) and the images (N, 3, S, S) uint8 (None for token folders)."""

    captions: list[str]
    codes: torch.Tensor
    holdout: list[bool]
    labels: list[str | None]
    images: torch.Tensor | None = None


def val_spec(data: str | os.PathLike) -> str:
    """The val shards of a token folder or dataset root (its `val/`), or `data` itself (a shard spec)."""
    root = Path(data)
    if root.is_dir() and (root / "val").is_dir():
        return str(root / "val")
    return str(data)


class EvalDataError(ValueError):
    """Val data that cannot be evaluated; the message starts with the data as given."""


def load_eval_items(data: str | os.PathLike, n: int | None, model: UnifiedModel,
                    model_dir: str | os.PathLike | None = None, batch_size: int = 64) -> EvalItems:
    """The first `n` (None: all) val samples of `data`: token shards (made by the model's tokenizer, checked when
    `model_dir` is given) or image shards (encoded with the model's tokenizer; the images are kept). EvalDataError
    naming `data` when they cannot be read."""
    try:
        return _read_eval_items(data, n, model, model_dir, batch_size)
    except (OSError, ValueError) as err:
        raise EvalDataError(f"{data}: {err}") from None


def _read_eval_items(data: str | os.PathLike, n: int | None, model: UnifiedModel, model_dir: str | os.PathLike | None,
                     batch_size: int) -> EvalItems:
    from onetok.ar_model.tokenize import encode_samples, is_token_dir, iter_token_samples, read_meta
    from onetok.data.shards import iter_samples
    from onetok.tokenizers.registry import fingerprint

    spec = val_spec(data)
    tokens = is_token_dir(data)
    if tokens:
        expected = read_meta(data)["tokenizer"]["fingerprint"]
        if model_dir is not None and fingerprint(model.tokenizer).hex() != expected:
            raise ValueError("token shards made with another tokenizer than the model's")
        pairs = ((s, s["codes"]) for s in iter_token_samples(spec))
    else:
        samples = iter_samples(spec, model.tokenizer.image_size)
        pairs = encode_samples(model.tokenizer, samples, batch_size)
    captions, codes, holdout, labels, images = [], [], [], [], []
    for sample, c in pairs:
        meta = sample.get("json", {})
        captions.append(sample["caption"] or "")
        codes.append(torch.as_tensor(np.asarray(c), dtype=torch.long))
        holdout.append(bool(meta.get("holdout", False)))
        labels.append(str(meta["label"]) if "label" in meta else None)
        if not tokens:
            images.append(chw_uint8(sample["image"]))
        if n is not None and len(captions) >= n:
            break
    if not captions:
        raise ValueError("no val samples" + ("" if spec == str(data) else f" in {spec}"))
    pixels = torch.stack(images) if images else None  # (N, 3, S, S) uint8
    return EvalItems(captions, torch.stack(codes), holdout, labels, pixels)


# --------------------------------------------------------------------------------------------------------------------
# Shapes: attribute scores
# --------------------------------------------------------------------------------------------------------------------


def attribute_scores(prompts: list[str], images: torch.Tensor) -> list[dict[str, bool]]:
    """Per image, which of the prompted attributes the pixel parser reads back: images (B, 3, S, S) in [0, 1]."""
    return judges.ShapesJudge().score(prompts, images)


def summarize(rows: list[dict[str, bool]]) -> dict:
    """{"n", "exact", "per_attribute": {name: accuracy}} of per-row attribute scores."""
    n = len(rows)
    if n == 0:
        return {"n": 0, "exact": None, "per_attribute": {}}
    exact = sum(all(r.values()) for r in rows) / n
    names = list(rows[0])
    return {"n": n, "exact": exact, "per_attribute": {k: sum(r[k] for r in rows) / n for k in names}}


def with_holdout(rows: list[dict[str, bool]], holdout: list[bool]) -> dict:
    report = summarize(rows)
    if any(holdout):
        report["holdout"] = summarize([r for r, h in zip(rows, holdout) if h])
        report["seen"] = summarize([r for r, h in zip(rows, holdout) if not h])
    return report


# --------------------------------------------------------------------------------------------------------------------
# Drawing
# --------------------------------------------------------------------------------------------------------------------


class Drawn(NamedTuple):
    images: torch.Tensor  # (B, 3, S, S) in [0, 1]
    forward_passes: int
    seconds: float


def draw(model: UnifiedModel, prompts: list[str], settings: SamplingSettings, batch_size: int, seed: int,
         image_tokens: int | None = None, sjd: bool = False):
    """One image per prompt, `batch_size` at a time (batch b uses seed `seed + b`): yields (prompts, Drawn)."""
    for b, start in enumerate(range(0, len(prompts), batch_size)):
        chunk = prompts[start : start + batch_size]
        with Stopwatch(model.device) as watch:
            out = model.generate_images(chunk, settings=settings, image_tokens=image_tokens, seed=seed + b, sjd=sjd)
        yield chunk, Drawn(out.images, out.forward_passes, watch.seconds)


def text_to_image(model: UnifiedModel, prompts: list[str], settings: SamplingSettings = DEFAULT_SETTINGS,
                  holdout: list[bool] | None = None, batch_size: int = 100, seed: int = 0,
                  image_tokens: int | None = None, sjd: bool = False,
                  on_images: Callable[[torch.Tensor], None] | None = None) -> dict:
    """Shapes data: one image per prompt, judged by the pixel parser; `on_images` also gets each batch of samples
    (B, 3, S, S) in [0, 1] (e.g. for FID)."""
    rows, passes, seconds = [], 0, 0.0
    for chunk, out in draw(model, prompts, settings, batch_size, seed, image_tokens, sjd):
        if on_images is not None:
            on_images(out.images)
        rows += attribute_scores(chunk, out.images)
        passes, seconds = passes + out.forward_passes, seconds + out.seconds
    report = with_holdout(rows, holdout or [False] * len(prompts))
    report.update(judge=judges.ShapesJudge.name, forward_passes=passes, seconds=round(seconds, 3))
    return report


class ClassSamples(NamedTuple):
    report: dict
    grid: torch.Tensor  # (C * keep, 3, S, S): the first `keep` samples of every class, class-major


def class_text_to_image(model: UnifiedModel, judge: judges.ClassJudge, template: str, per_class: int,
                        real: judges.Judged | None, real_labels: list[str] | None,
                        settings: SamplingSettings = DEFAULT_SETTINGS, batch_size: int = 100, seed: int = 0,
                        image_tokens: int | None = None, sjd: bool = False, keep: int = 8,
                        on_images: Callable[[torch.Tensor], None] | None = None) -> ClassSamples:
    """`per_class` samples for `template` filled with every class name: class fidelity by `judge` (overall and per
    class), and against the real val features (when given) Fréchet distance, precision/recall, diversity."""
    labels = [label for label in judge.labels for _ in range(per_class)]
    prompts = [template.format(label=label) for label in labels]
    predicted, features, kept, passes, seconds = [], [], [], 0, 0.0
    for _, out in draw(model, prompts, settings, batch_size, seed, image_tokens, sjd):
        if on_images is not None:
            on_images(out.images)
        judged = judge(out.images)
        predicted.append(judged.predicted)
        features.append(judged.features)
        kept.append(out.images.cpu())
        passes, seconds = passes + out.forward_passes, seconds + out.seconds
    predicted, features = torch.cat(predicted), torch.cat(features)
    hits = predicted == torch.tensor([judge.index[label] for label in labels])
    per = {label: float(hits[i * per_class : (i + 1) * per_class].float().mean()) for i, label in enumerate(judge.labels)}
    report = {"template": template, "n": len(prompts), "fidelity": float(hits.float().mean()), "per_class": per,
              "forward_passes": passes, "seconds": round(seconds, 3)}
    if real is not None:
        report.update(judges.distribution_report(real.features, real_labels, features, labels))
    images = torch.cat(kept)
    grid = images[[i * per_class + j for i in range(len(judge.labels)) for j in range(min(keep, per_class))]]
    return ClassSamples(report, grid)


def reconstruction_report(model: UnifiedModel, judge: judges.ClassJudge, items: EvalItems, real: judges.Judged,
                          per_class: int, batch_size: int = 250) -> dict:
    """The tokenizer's reconstructions of the val images: judge accuracy on all of them, and the distribution
    metrics of `per_class` of them per class (as many as the samples of one template) against the real images."""
    recon = []
    with torch.no_grad():
        for start in range(0, len(items.codes), batch_size):
            recon.append(model.tokenizer.decode(items.codes[start : start + batch_size].to(model.device)).cpu())
    judged = judge(torch.cat(recon))
    truth = torch.tensor([judge.index[label] for label in items.labels])
    subset = judges.balanced_subset(items.labels, per_class)
    report = {"n": len(truth), "accuracy": float((judged.predicted == truth).float().mean())}
    report.update(judges.distribution_report(real.features, items.labels, judged.features[subset],
                                             [items.labels[i] for i in subset]))
    return report


# --------------------------------------------------------------------------------------------------------------------
# Captions
# --------------------------------------------------------------------------------------------------------------------


@torch.no_grad()
def caption_codes(transformer: Transformer, vocab: Vocab, codes: torch.Tensor, batch_size: int = 100,
                  max_len: int = 64) -> list[str]:
    """Greedy captions of image codes (N, L)."""
    max_len = max(1, min(max_len, transformer.config.max_seq_len - codes.shape[1] - 3))
    greedy = SamplingSettings(temperature=0.0)
    device = transformer.output.weight.device
    captions = []
    for start in range(0, len(codes), batch_size):
        result = generate_text(transformer, vocab, codes[start : start + batch_size].to(device), max_len, greedy)
        captions += [vocab.decode_text(ids) for ids in result.ids]
    return captions


def image_to_text(model: UnifiedModel, codes: torch.Tensor, truths: list[str], holdout: list[bool] | None = None,
                  batch_size: int = 100, labels: list[str | None] | None = None,
                  vocabulary: judges.CaptionVocabulary | None = None, examples: int = 8) -> dict:
    """Greedy captions against the truths: exact match and word F1; on shapes data the per-attribute accuracy of the
    parsed captions (and held-out rows alone); with labels and a vocabulary, class accuracy."""
    from onetok.data.shapes import ATTRIBUTE_NAMES, parse_caption

    predicted = caption_codes(model.transformer, model.vocab, codes, batch_size)
    report = judges.caption_scores(predicted, truths, labels, vocabulary)
    if judges.is_shapes_data(truths):
        rows = []
        for pred, truth in zip(predicted, truths):
            got, want = parse_caption(pred), parse_caption(truth)
            rows.append({"caption": pred.strip() == truth.strip(),
                         **{k: got is not None and got[k] == want[k] for k in ATTRIBUTE_NAMES}})
        report.update(with_holdout(rows, holdout or [False] * len(truths)))
    label_of = labels or [None] * len(truths)
    report["examples"] = [{"predicted": p, "truth": t, **({"label": lab} if lab else {})}
                          for p, t, lab in list(zip(predicted, truths, label_of))[:examples]]
    return report


# --------------------------------------------------------------------------------------------------------------------
# Both directions
# --------------------------------------------------------------------------------------------------------------------


class ClassProtocol(NamedTuple):
    """How labelled data are judged: samples per class, the prompt templates, and whether to also measure the
    tokenizer's reconstructions."""

    per_class: int = 100
    templates: tuple[str, ...] = TEMPLATES
    reconstructions: bool = True
    keep: int = 8  # samples per class kept for a grid


def settings_dict(settings: SamplingSettings, seed: int, image_tokens: int | None) -> dict:
    return {"temperature": settings.temperature, "top_k": settings.top_k, "top_p": settings.top_p,
            "cfg": settings.cfg_scale, "seed": seed, "image_tokens": image_tokens}


def evaluate(model: UnifiedModel, items: EvalItems, settings: SamplingSettings = DEFAULT_SETTINGS,
             batch_size: int = 100, seed: int = 0, image_tokens: int | None = None,
             on_images: Callable[[torch.Tensor], None] | None = None, judge: judges.ClassJudge | None = None,
             protocol: ClassProtocol | None = None, sjd: bool = False) -> dict:
    """Both directions on the same val items, with the judge the data call for: {"text_to_image",
    "image_to_text", "judge", "settings"} (+ "reconstructions", "grids" for labelled data)."""
    protocol = protocol or ClassProtocol()
    shapes = judges.is_shapes_data(items.captions)
    labelled = not shapes and judge is not None and judge.covers(items.labels) and all(items.labels)
    vocabulary = judge.vocabulary if labelled else None
    report = {"image_to_text": image_to_text(model, items.codes, items.captions, items.holdout, batch_size,
                                             items.labels, vocabulary),
              "settings": settings_dict(settings, seed, image_tokens)}
    if shapes:
        report["judge"] = judges.ShapesJudge.name
        report["text_to_image"] = text_to_image(model, items.captions, settings, items.holdout, batch_size, seed,
                                                image_tokens, sjd, on_images)
        return report
    real = judge(items.images) if judge is not None and items.images is not None else None
    if not labelled:
        report["judge"] = judge.name if judge is not None else None
        report["text_to_image"] = caption_prompts(model, items, judge, real, settings, batch_size, seed,
                                                  image_tokens, sjd, on_images)
        return report
    truth = torch.tensor([judge.index[label] for label in items.labels])
    report["judge"] = judge.name
    report["real"] = {"n": len(truth), "judge_accuracy": float((real.predicted == truth).float().mean())
                      } if real is not None else None
    report["text_to_image"], report["grids"] = {}, {}
    for template in protocol.templates:
        out = class_text_to_image(model, judge, template, protocol.per_class, real, items.labels if real else None,
                                  settings, batch_size, seed, image_tokens, sjd, protocol.keep, on_images)
        report["text_to_image"][template], report["grids"][template] = out.report, out.grid
    if protocol.reconstructions and real is not None:
        report["reconstructions"] = reconstruction_report(model, judge, items, real, protocol.per_class)
    return report


def caption_prompts(model: UnifiedModel, items: EvalItems, judge: judges.ClassJudge | None,
                    real: judges.Judged | None, settings: SamplingSettings, batch_size: int, seed: int,
                    image_tokens: int | None, sjd: bool, on_images: Callable[[torch.Tensor], None] | None) -> dict:
    """Unlabelled data: one sample per val caption; with a judge and the val images, Fréchet distance and
    precision/recall of the samples against those images in the judge's feature space."""
    features, passes, seconds = [], 0, 0.0
    for _, out in draw(model, items.captions, settings, batch_size, seed, image_tokens, sjd):
        if on_images is not None:
            on_images(out.images)
        if real is not None:
            features.append(judge(out.images).features)
        passes, seconds = passes + out.forward_passes, seconds + out.seconds
    report = {"n": len(items.captions), "forward_passes": passes, "seconds": round(seconds, 3)}
    if real is not None:
        fake = torch.cat(features)
        report.update(frechet=judges.frechet_distance(real.features, fake),
                      **judges.precision_recall(real.features, fake), real_images=len(real.features))
    return report


# --------------------------------------------------------------------------------------------------------------------
# The report as text
# --------------------------------------------------------------------------------------------------------------------


def _pct(x) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def _num(x, fmt: str = "{:.3f}") -> str:
    return "-" if x is None else fmt.format(x)


def format_report(report: dict) -> str:
    """The report's headline numbers (`onetok eval-ar`), one line each."""
    lines = []
    i2t, t2i = report["image_to_text"], report["text_to_image"]
    line = f"image -> text  exact {_pct(i2t['exact'])}, word F1 {_num(i2t['word_f1'])} on {i2t['n']} images"
    if "class_accuracy" in i2t:
        line += f"; class accuracy {_pct(i2t['class_accuracy'])}"
    lines.append(line)
    if report.get("judge") == "shapes pixel parser":
        lines.append(f"text -> image  exact {_pct(t2i['exact'])} on {t2i['n']} prompts  ("
                     + ", ".join(f"{k} {_pct(v)}" for k, v in t2i["per_attribute"].items()) + ")")
        if "holdout" in t2i:
            lines.append(f"held-out combos: text -> image {_pct(t2i['holdout']['exact'])} on {t2i['holdout']['n']}, "
                         f"image -> text {_pct(i2t['holdout']['exact'])} on {i2t['holdout']['n']}")
    elif "real" in report:
        if report["real"] is not None:
            lines.append(f"judge accuracy on the real val images {_pct(report['real']['judge_accuracy'])} "
                         f"({report['real']['n']} images)")
        for template, r in t2i.items():
            lines.append(f"text -> image  {template!r}: class fidelity {_pct(r['fidelity'])} on {r['n']} samples"
                         + _distribution(r))
        if "reconstructions" in report:
            r = report["reconstructions"]
            lines.append(f"reconstructions: judge accuracy {_pct(r['accuracy'])} on {r['n']} images" + _distribution(r))
    elif "frechet" in t2i:
        lines.append(f"text -> image  {t2i['n']} samples: Fréchet distance {_num(t2i['frechet'], '{:.2f}')}, "
                     f"precision {_num(t2i['precision'])}, recall {_num(t2i['recall'])} (judge feature space)")
    else:
        lines.append(f"text -> image  {t2i['n']} samples drawn (no judge for this data: --judge DIR)")
    if "gfid" in report:
        g, score = report["gfid"], report["gfid"]["inception_score"]
        lines.append(f"gFID {g['fid']:.2f} ({g['protocol']['fake_images']} samples vs {g['protocol']['reference']})"
                     + ("" if score is None else f", Inception Score {score['mean']:.2f}"))
    return "\n".join(lines)



def _distribution(r: dict) -> str:
    if "frechet" not in r:
        return ""
    text = f"; FD {r['frechet']:.2f}, precision {r['precision']:.3f}, recall {r['recall']:.3f}"
    if "diversity" in r and r["diversity"]["min_ratio"] is not None:
        text += f", diversity (min over classes, vs real) {r['diversity']['min_ratio']:.2f}"
    return text
