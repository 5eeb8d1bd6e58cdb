"""Caption templates: training captions in the phrasings people type, drawn from a sample's label.

A labelled data set (CIFAR-10's `KEY.json` has `label`) carries one fixed caption per image ("a photo of a cat"); a
model trained on it alone draws from that phrasing only. `CaptionTemplates` gives every text -> image row a caption
drawn from many templates and several names per label (car for automobile, boat for ship), with random capitals
and a final full stop, and gives image -> text rows one canonical caption (`target`), so captions stay short and
always name the class by its label. A sample whose JSON lacks the label keeps its shard caption.

In a LightningCLI config (`ARDataModule(captions=...)`; `configs/ar/cifar10.yaml`):

    captions:
      label_key: label                   # the JSON attribute holding the class
      target: "a photo of {a} {c}"       # the image -> text caption; {c} the label, {a} its article (a / an)
      templates: ["{c}", "{a} {c}", "a picture of {a} {c}", ...]
      names: {automobile: [automobile, car], ship: [ship, boat]}   # labels not listed are their own name

`onetok text-vocab train --templates CONFIG` trains the subword vocabulary on every expansion (`expand`).
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

CAPITAL_PROB = 0.3  # a t2i caption starts with a capital letter
STOP_PROB = 0.3  # a t2i caption ends with a full stop


def article(word: str) -> str:
    """'a' or 'an' by the word's first letter (a vowel sound by spelling: good enough for class names)."""
    return "an" if word[:1].lower() in "aeiou" else "a"


def fill(template: str, name: str) -> str:
    return template.format(c=name, a=article(name))


def _variants(text: str) -> list[str]:
    capital = text[:1].upper() + text[1:]
    return [text, capital, text + ".", capital + "."]


@dataclass
class CaptionTemplates:
    templates: list[str]
    target: str = "a photo of {a} {c}"
    names: dict[str, list[str]] = field(default_factory=dict)
    label_key: str = "label"

    def __post_init__(self):
        if not self.templates:
            raise ValueError("caption templates: give at least one template")
        for template in [*self.templates, self.target]:
            if "{c}" not in template:
                raise ValueError(f"caption template {template!r} has no {{c}} (the class name)")
            try:
                fill(template, "x")
            except (KeyError, IndexError, ValueError) as err:
                raise ValueError(f"caption template {template!r}: only {{c}} and {{a}} may be filled ({err})") from None
        for label, names in self.names.items():
            if not names or not all(isinstance(n, str) and n.strip() for n in names):
                raise ValueError(f"caption names of {label!r}: give a list of non-empty names")

    @classmethod
    def from_dict(cls, d: dict) -> CaptionTemplates:
        unknown = set(d) - {"templates", "target", "names", "label_key"}
        if unknown:
            raise ValueError(f"caption templates: unknown key(s) {', '.join(sorted(unknown))}")
        names = {str(k): [str(n) for n in v] for k, v in (d.get("names") or {}).items()}
        return cls([str(t) for t in d.get("templates") or []], str(d.get("target", cls.target)), names,
                   str(d.get("label_key", "label")))

    def label(self, meta: dict) -> str | None:
        value = meta.get(self.label_key) if isinstance(meta, dict) else None
        return str(value) if value not in (None, "") else None

    def names_of(self, label: str) -> list[str]:
        return self.names.get(label) or [label]

    def draw(self, meta: dict, caption: str, rng: random.Random) -> str:
        """A text -> image caption: a random template, name and variant; the shard caption without a label."""
        label = self.label(meta)
        if label is None:
            return caption
        text = fill(rng.choice(self.templates), rng.choice(self.names_of(label)))
        if rng.random() < CAPITAL_PROB:
            text = text[:1].upper() + text[1:]
        if rng.random() < STOP_PROB:
            text += "."
        return text

    def canonical(self, meta: dict, caption: str) -> str:
        """The image -> text caption: `target` with the label; the shard caption without a label."""
        label = self.label(meta)
        return caption if label is None else fill(self.target, label)

    def expand(self, labels: Iterable[str]) -> Iterator[str]:
        """Every caption `draw` and `canonical` can give for `labels` (for training a text vocabulary)."""
        for label in sorted(set(labels)):
            yield fill(self.target, label)
            for name in self.names_of(label):
                for template in self.templates:
                    yield from _variants(fill(template, name))


def templates_from_yaml(text: str, where: str = "") -> CaptionTemplates:
    """Caption templates from YAML text: the mapping itself, or a LightningCLI config whose
    `data.init_args.captions` holds it (so the AR config is the one place they are written)."""
    import yaml

    d = yaml.safe_load(text)
    if isinstance(d, dict) and "data" in d:
        d = ((d.get("data") or {}).get("init_args") or {}).get("captions")
    if not isinstance(d, dict) or not d.get("templates"):
        raise ValueError(f"{where}: no caption templates (a mapping with `templates`, or an AR config with "
                         "data.init_args.captions)")
    return CaptionTemplates.from_dict(d)


# --------------------------------------------------------------------------------------------------------------------
# The captions of shards (`onetok text-vocab train`)
# --------------------------------------------------------------------------------------------------------------------


def caption_shards(spec: str) -> list[str]:
    """The shards to read captions from: a dataset root's or token folder's train/ split, or a shard spec
    (FileNotFoundError naming `spec` when it matches none)."""
    from pathlib import Path

    from onetok.data.shards import expand_shards

    root = Path(spec)
    if root.is_dir() and (root / "train").is_dir():
        root = root / "train"
    paths = [p for p in expand_shards(str(root)) if Path(p).is_file()]
    if not paths:
        raise FileNotFoundError(2, "no shards found", spec)
    return paths


def iter_captions(paths: list[str], limit: int | None = None) -> Iterator[str]:
    """The `txt` members of the shards, in order, at most `limit`; ValueError naming an unreadable shard."""
    import tarfile

    from onetok.data.shards import iter_raw_samples

    n = 0
    for path in paths:
        try:
            for _, files in iter_raw_samples(path):
                if "txt" in files:
                    yield files["txt"].decode("utf-8", errors="replace").strip()
                    n += 1
                    if limit is not None and n >= limit:
                        return
        except (OSError, tarfile.TarError, EOFError) as err:
            raise ValueError(f"{path}: not a readable tar shard ({type(err).__name__}: "
                             f"{' '.join(str(err).split())[:200]})") from None


def template_captions(paths: list[str], templates: CaptionTemplates) -> list[str]:
    """Every caption `templates` make for the labels in the shards' `json` members."""
    import json

    from onetok.data.shards import iter_raw_samples

    labels = set()
    for path in paths:
        for _, files in iter_raw_samples(path):
            try:
                label = templates.label(json.loads(files["json"])) if "json" in files else None
            except ValueError:
                label = None
            labels.update([label] if label else [])
    return list(templates.expand(labels))
