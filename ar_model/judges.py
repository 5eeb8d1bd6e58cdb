"""Judges for the unified model, chosen by the data (docs/evaluation.md).

- Captions (image -> text): exact match and a word-overlap F1 against the true caption on any data; where the
  sample's JSON carries a `label`, class accuracy: the caption names the class (its word or an accepted synonym)
  and no other class.
- Text -> image, shapes data (every caption parses as a shapes caption): the pixel parser reads back the prompted
  attributes (`ShapesJudge`).
- Text -> image, labelled data (JSON `label`): a classifier (`onetok.ar_model.classifier`) names the class of each
  sample (`ClassJudge`), and its feature space compares generated with real images: Fréchet distance (torchmetrics),
  improved precision/recall (Kynkäänniemi et al. 2019, k-NN radii; torch-fidelity) and diversity (mean pairwise
  feature distance).
"""

from __future__ import annotations

import re
from collections import Counter
from typing import NamedTuple

import torch

from onetok.ar_model.classifier import ImageClassifier
from onetok.data.pixels import as_saved, to_hwc
from onetok.data.shapes import ATTRIBUTE_NAMES, parse_caption, parse_image

PR_NEIGHBOURS = 3  # k of the k-NN radii (Kynkäänniemi et al. 2019 use k = 3)

# --------------------------------------------------------------------------------------------------------------------
# Captions
# --------------------------------------------------------------------------------------------------------------------


def words(text: str) -> list[str]:
    """Lower-case words (letters and digits) of a caption."""
    return re.findall(r"[a-z0-9]+", text.lower())


def _forms(word: str) -> set[str]:
    """A word and its plural (cat -> cats, bus -> buses, puppy -> puppies)."""
    if word.endswith("y") and len(word) > 2 and word[-2] not in "aeiou":
        return {word, word[:-1] + "ies"}
    return {word, word + ("es" if word.endswith(("s", "x", "ch", "sh")) else "s")}


def classes_named(caption: str, labels: tuple[str, ...], synonyms: dict[str, list[str]]) -> set[str]:
    """The labels whose word (or a synonym, or a plural of either) occurs in `caption`; multi-word names match as a
    word sequence."""
    text = " " + " ".join(words(caption)) + " "
    named = set()
    for label in labels:
        for name in (label, *synonyms.get(label, ())):
            parts = words(name)
            if not parts:
                continue
            if any(f" {' '.join(parts[:-1] + [form])} " in text for form in _forms(parts[-1])):
                named.add(label)
                break
    return named


def word_f1(predicted: str, truth: str) -> float:
    """F1 of the word multisets (SQuAD-style token overlap); 1.0 when both are empty."""
    p, t = Counter(words(predicted)), Counter(words(truth))
    if not p or not t:
        return float(p == t)
    common = sum((p & t).values())
    if common == 0:
        return 0.0
    precision, recall = common / sum(p.values()), common / sum(t.values())
    return 2 * precision * recall / (precision + recall)


class CaptionVocabulary(NamedTuple):
    """What class accuracy reads captions with: the class names and their accepted synonyms."""

    labels: tuple[str, ...]
    synonyms: dict[str, list[str]]

    def correct(self, caption: str, label: str) -> bool:
        """The caption names `label` and no other class."""
        return self.names(caption) == {label}

    def names(self, caption: str) -> set[str]:
        return classes_named(caption, self.labels, self.synonyms)


def caption_scores(predicted: list[str], truths: list[str], labels: list[str | None] | None = None,
                   vocabulary: CaptionVocabulary | None = None) -> dict:
    """{"n", "exact", "word_f1"} and, for rows with a label (and a vocabulary), "class_accuracy" and "per_class"."""
    n = len(predicted)
    report = {"n": n, "exact": sum(p.strip() == t.strip() for p, t in zip(predicted, truths)) / max(n, 1),
              "word_f1": sum(word_f1(p, t) for p, t in zip(predicted, truths)) / max(n, 1)}
    if vocabulary is None or not labels or not any(labels):
        return report
    rows = [(p, lab) for p, lab in zip(predicted, labels) if lab is not None]
    per_class = {}
    for label in vocabulary.labels:
        mine = [vocabulary.correct(p, lab) for p, lab in rows if lab == label]
        if mine:
            per_class[label] = sum(mine) / len(mine)
    report["class_accuracy"] = sum(vocabulary.correct(p, lab) for p, lab in rows) / len(rows)
    report["labelled"] = len(rows)
    report["per_class"] = per_class
    return report


# --------------------------------------------------------------------------------------------------------------------
# Image judges
# --------------------------------------------------------------------------------------------------------------------


def is_shapes_data(captions: list[str]) -> bool:
    """Every caption is a shapes caption: the pixel parser can judge what was drawn for it."""
    return bool(captions) and all(parse_caption(c) is not None for c in captions)


class ShapesJudge:
    """The shapes pixel parser: which prompted attributes (size, color, shape, position, background) it reads back."""

    name = "shapes pixel parser"

    def score(self, prompts: list[str], images: torch.Tensor) -> list[dict[str, bool]]:
        """Per image, attribute -> read back correctly; images (B, 3, S, S) in [0, 1]."""
        arrays = to_hwc(images)  # (B, S, S, 3) uint8
        scores = []
        for prompt, array in zip(prompts, arrays):
            want, got = parse_caption(prompt), parse_image(array)
            if want is None:
                raise ValueError(f"not a shapes caption: {prompt!r}")
            scores.append({k: got is not None and got[k] == want[k] for k in ATTRIBUTE_NAMES})
        return scores


class Judged(NamedTuple):
    """The classifier's reading of a batch: predicted class ids (B,) and features (B, F)."""

    predicted: torch.Tensor
    features: torch.Tensor


class ClassJudge:
    """A classifier that names the class of each image and embeds it for the distribution metrics."""

    def __init__(self, classifier: ImageClassifier):
        self.classifier = classifier.eval()
        self.labels = classifier.labels
        self.index = {name: i for i, name in enumerate(self.labels)}
        self.vocabulary = CaptionVocabulary(classifier.labels, classifier.config.synonyms)
        self.name = "classifier"

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, batch_size: int = 500) -> Judged:
        """Images (N, 3, S, S): float in [0, 1] (rounded to 8 bits first, as a saved PNG) or uint8."""
        device = next(self.classifier.parameters()).device
        predicted, features = [], []
        for start in range(0, len(images), batch_size):
            batch = images[start : start + batch_size].to(device)
            batch = as_saved(batch)
            f = self.classifier.features(batch)
            predicted.append(self.classifier.head(f).argmax(1).cpu())
            features.append(f.cpu())
        return Judged(torch.cat(predicted), torch.cat(features))

    def covers(self, labels: list[str | None]) -> bool:
        """Every given label is one of the classifier's classes."""
        present = {lab for lab in labels if lab is not None}
        return bool(present) and present <= set(self.index)


# --------------------------------------------------------------------------------------------------------------------
# Feature-space distribution metrics
# --------------------------------------------------------------------------------------------------------------------


def frechet_distance(real: torch.Tensor, fake: torch.Tensor) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (N, F) (torchmetrics, float64)."""
    from onetok.metrics import FrechetMeter, ImageFeatures

    meter = FrechetMeter()
    meter.update(ImageFeatures(real.double(), None), real=True)
    meter.update(ImageFeatures(fake.double(), None), real=False)
    return float(meter.compute().fid)


def precision_recall(real: torch.Tensor, fake: torch.Tensor, k: int = PR_NEIGHBOURS) -> dict[str, float]:
    """Improved precision (fakes inside the real k-NN balls) and recall (reals inside the fake k-NN balls)."""
    from torch_fidelity.metric_prc import prc_features_to_metric

    if min(len(real), len(fake)) <= k:
        raise ValueError(f"precision/recall need more than {k} real and generated images")
    out = prc_features_to_metric(fake.float(), real.float(), prc_neighborhood=k, prc_batch_size=10000,
                                 save_cpu_ram=False, verbose=False)
    return {"precision": out["precision"], "recall": out["recall"]}


def mean_pairwise_distance(features: torch.Tensor) -> float:
    """Mean Euclidean distance over all pairs of rows (N, F); 0 below two rows."""
    if len(features) < 2:
        return 0.0
    return float(torch.pdist(features.double()).mean())


def diversity(fake: torch.Tensor, fake_labels: list[str], real: torch.Tensor, real_labels: list[str]) -> dict:
    """Per class: mean pairwise feature distance among the samples drawn for it, among the real images of it, and
    their ratio; "min_ratio" over the classes."""
    per_class = {}
    for label in sorted(set(fake_labels), key=fake_labels.index):
        f = fake[[i for i, lab in enumerate(fake_labels) if lab == label]]
        r = real[[i for i, lab in enumerate(real_labels) if lab == label]]
        spread_f, spread_r = mean_pairwise_distance(f), mean_pairwise_distance(r)
        per_class[label] = {"samples": spread_f, "real": spread_r,
                            "ratio": spread_f / spread_r if spread_r > 0 else None}
    ratios = [v["ratio"] for v in per_class.values() if v["ratio"] is not None]
    return {"per_class": per_class, "min_ratio": min(ratios) if ratios else None}


def balanced_subset(labels: list[str], per_class: int) -> list[int]:
    """The first `per_class` indices of every label, in data order."""
    seen: Counter = Counter()
    keep = []
    for i, label in enumerate(labels):
        if seen[label] < per_class:
            keep.append(i)
            seen[label] += 1
    return keep


def distribution_report(real: torch.Tensor, real_labels: list[str], fake: torch.Tensor, fake_labels: list[str]) -> dict:
    """Fréchet distance (fakes vs every real image), precision/recall (vs an equal-size class-balanced subset of the
    reals) and diversity (per class) of fake features against real ones."""
    classes = max(1, len(set(fake_labels)))
    subset = balanced_subset(real_labels, max(1, len(fake) // classes))
    return {"frechet": frechet_distance(real, fake), **precision_recall(real[subset], fake),
            "diversity": diversity(fake, fake_labels, real, real_labels),
            "real_images": len(real), "pr_real_images": len(subset), "images": len(fake)}
