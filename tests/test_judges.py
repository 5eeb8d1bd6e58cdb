"""The judges: caption class accuracy and word overlap, feature-space distribution metrics, the judge classifier
(folder round trip, recipe), and the training callback that scores samples (ARSystem holds only the losses)."""

import ast
import inspect

import lightning.pytorch as pl
import numpy as np
import pytest
import torch

from onetok.ar_model import judges
from onetok.ar_model.classifier import (
    CIFAR10_LABELS,
    ImageClassifier,
    LabelledImages,
    TrainSettings,
    accuracy,
    augment,
    classifier_config,
    label_order,
    train_classifier,
)

VOCAB = judges.CaptionVocabulary(CIFAR10_LABELS, classifier_config("cifar10", CIFAR10_LABELS).synonyms)


@pytest.mark.parametrize("caption, label, right", [
    ("a photo of a automobile", "automobile", True),
    ("A car parked on the street.", "automobile", True),
    ("two cars", "automobile", True),
    ("an aeroplane in the sky", "airplane", True),
    ("plane", "airplane", True),
    ("a boat", "ship", True),
    ("some puppies", "dog", True),
    ("a photo of a truck", "automobile", False),
    ("a cat and a dog", "cat", False),  # names another class too
    ("scattered leaves", "cat", False),  # whole words only
    ("", "cat", False),
])
def test_caption_class_accuracy_reads_words_synonyms_and_plurals(caption, label, right):
    assert VOCAB.correct(caption, label) is right


def test_caption_scores():
    predicted = ["a photo of a car", "a photo of a cat", "a red ship"]
    truths = ["a photo of a automobile", "a photo of a cat", "a photo of a ship"]
    report = judges.caption_scores(predicted, truths, ["automobile", "cat", "ship"], VOCAB)
    assert report["exact"] == pytest.approx(1 / 3) and report["class_accuracy"] == 1.0
    assert report["per_class"] == {"automobile": 1.0, "cat": 1.0, "ship": 1.0}
    assert judges.word_f1("a red ship", "a photo of a ship") == pytest.approx(2 * (2 / 3) * (2 / 5) / (2 / 3 + 2 / 5))
    assert "class_accuracy" not in judges.caption_scores(predicted, truths)  # no labels: exact and word F1 only


def test_distribution_metrics_on_known_sets():
    g = torch.Generator().manual_seed(0)
    real = torch.randn(200, 8, generator=g)
    assert judges.frechet_distance(real, real) == pytest.approx(0, abs=1e-6)
    assert judges.frechet_distance(real, real + 1) == pytest.approx(8, rel=1e-6)  # |mean shift|^2, same covariance
    same = judges.precision_recall(real, real.clone())
    far = judges.precision_recall(real, real + 100)
    assert same == {"precision": 1.0, "recall": 1.0} and far == {"precision": 0.0, "recall": 0.0}
    part = judges.precision_recall(real, real[real[:, 0] > 0.5])  # samples cover one corner of the real set
    assert part["precision"] == 1.0 and part["recall"] < 0.8
    labels = ["a"] * 100 + ["b"] * 100
    collapsed = real[:1].repeat(200, 1)
    div = judges.diversity(collapsed, labels, real, labels)
    assert div["min_ratio"] == 0.0 and judges.diversity(real, labels, real, labels)["min_ratio"] == pytest.approx(1.0)
    assert judges.balanced_subset(["a", "b", "a", "a", "b"], 2) == [0, 1, 2, 4]


def test_classifier_folder_round_trip(tmp_path):
    torch.manual_seed(0)
    model = ImageClassifier(classifier_config("tiny", ("cat", "dog", "ship"))).eval()
    model.save_pretrained(tmp_path / "j", extra={"val": {"accuracy": 0.5}})
    back = ImageClassifier.from_pretrained(tmp_path / "j")
    x = torch.rand(4, 3, 16, 16)
    assert torch.equal(model(x), back(x)) and back.labels == ("cat", "dog", "ship")
    assert back.config.synonyms == {"cat": ["kitten", "kitty"], "dog": ["puppy", "pup"], "ship": ["boat", "vessel"]}
    with pytest.raises(Exception, match="already exists"):
        model.save_pretrained(tmp_path / "j")


def test_label_order_and_augment():
    assert label_order([{"label": "ship", "label_id": 8}, {"label": "cat", "label_id": 3}]) == ("cat", "ship")
    assert label_order([{"label": "b"}, {"label": "a"}]) == ("a", "b")
    images = torch.randint(0, 256, (6, 3, 8, 8), dtype=torch.uint8)
    out = augment(images, torch.Generator().manual_seed(0), pad=0)  # flips only
    assert out.shape == images.shape
    assert all(torch.equal(o, i.float()) or torch.equal(o, i.flip(2).float()) for o, i in zip(out, images))


def colour_classes(n_per_class: int, size: int = 16, seed: int = 0) -> LabelledImages:
    """Three classes told apart by their dominant colour, with noise."""
    rng = np.random.default_rng(seed)
    images, targets = [], []
    for c in range(3):
        base = np.full((n_per_class, 3, size, size), 60.0)
        base[:, c] = 190
        images.append(np.clip(base + rng.normal(0, 40, base.shape), 0, 255))
        targets += [c] * n_per_class
    return LabelledImages(torch.from_numpy(np.concatenate(images)).to(torch.uint8), torch.tensor(targets),
                         ("cat", "dog", "ship"))


def test_recipe_learns_colour_classes():
    train, val = colour_classes(64), colour_classes(20, seed=1)
    config = classifier_config("tiny", train.labels)
    model = train_classifier(train, config, TrainSettings(epochs=6, batch_size=16, lr=0.05))
    assert accuracy(model, val.images, val.targets) >= 0.9


def test_ar_system_holds_no_judge():
    from onetok.ar_model import system

    tree = ast.parse(inspect.getsource(system))
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    imported |= {f"{node.module}.{a.name}" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
                 for a in node.names}
    assert not imported & {"onetok.data.shapes", "onetok.ar_model.judges", "onetok.ar_model.evaluate"}
    assert not {m for m in imported if m.endswith((".judges", ".evaluate", ".shapes"))}


def test_sample_logger_scores_shapes_samples(tmp_path):
    from tiny_configs import make_tiny_data

    from onetok.ar_model.callbacks import SampleLogger
    from onetok.ar_model.data import ARDataModule
    from onetok.ar_model.system import ARSystem

    data = make_tiny_data(tmp_path)
    dm = ARDataModule(tokens=str(data.tokens), text="words", batch_size=8, val_batch_size=8, num_workers=0)
    system = ARSystem(preset="tiny", model_overrides={}, tokenizer_dir=str(data.tokenizer), eval_samples=3)
    trainer = pl.Trainer(max_steps=2, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, val_check_interval=2,
                         num_sanity_val_steps=0, limit_val_batches=1)
    trainer.fit(system, datamodule=dm)
    loggers = [c for c in trainer.callbacks if isinstance(c, SampleLogger)]
    assert len(loggers) == 1 and loggers[0].samples == 3  # added by ARSystem.configure_callbacks
    assert {"val/loss", "val/caption_exact", "val/caption_word_f1", "val/t2i_exact"} <= set(trainer.callback_metrics)
    # a SampleLogger in the trainer's callbacks replaces the model's own; eval_samples 0 adds none
    for eval_samples, extra in ((3, [SampleLogger(samples=2)]), (0, [])):
        system = ARSystem(preset="tiny", model_overrides={}, tokenizer_dir=str(data.tokenizer),
                          eval_samples=eval_samples)
        trainer = pl.Trainer(max_steps=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                             enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                             num_sanity_val_steps=0, callbacks=extra)
        trainer.fit(system, datamodule=dm)
        assert [c.samples for c in trainer.callbacks if isinstance(c, SampleLogger)] == [s.samples for s in extra]


def test_soften_low_passes_the_chosen_share_only():
    """prob 0 leaves every image as it was; prob 1 shrinks and enlarges every one (less high-frequency energy)."""
    from onetok.ar_model.classifier import soften

    gen = torch.Generator().manual_seed(0)
    images = torch.rand(8, 3, 32, 32, generator=gen) * 255  # white noise: all high frequencies
    assert torch.equal(soften(images, gen, 0.0), images)
    soft = soften(images, gen, 1.0)

    def detail(x):  # mean absolute difference of horizontal neighbours, per image
        return (x[..., 1:] - x[..., :-1]).abs().mean(dim=(1, 2, 3))

    assert soft.shape == images.shape
    assert bool((detail(soft) < 0.5 * detail(images)).all())
