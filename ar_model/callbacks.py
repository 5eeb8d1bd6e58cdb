"""Sample logging and scoring while the unified model trains: a Lightning callback, so `ARSystem` holds only the
losses and the judges stay out of it.

At the end of every validation (rank 0, not during the sanity check) `SampleLogger` captions the first `samples`
val images, draws one image for each of their captions, scores both with the judge the data call for
(`onetok.ar_model.judges`: exact match and word F1 of captions everywhere; the pixel parser on shapes data; on data
whose JSON carries labels the judge classifier knows, the caption's class accuracy and the drawn images' class
fidelity) and logs the numbers (`val/caption_exact`, `val/caption_word_f1`, `val/caption_class`, `val/t2i_exact`,
`val/t2i_fidelity`), a grid of the first `grid` images and a table of prompts and captions.

`ARSystem` adds one with its `eval_samples` / `sample_prompts` (0 samples: none) unless the trainer already has one,
so a config can also list it under `trainer.callbacks`, e.g. with its own judge:

    callbacks:
      - class_path: onetok.ar_model.callbacks.SampleLogger
        init_args: {samples: 64, grid: 8, judge: models/judge}
"""

from __future__ import annotations

import lightning.pytorch as pl
import torch

from onetok.ar_model import evaluate, judges


class SampleLogger(pl.Callback):
    """Captions and samples of the first `samples` val items at each validation end, scored and logged."""

    def __init__(self, samples: int = 64, grid: int = 8, judge: str | None = None):
        super().__init__()
        if samples < 0 or grid < 0:
            raise ValueError(f"samples and grid must be >= 0, got {samples} and {grid}")
        self.samples, self.grid, self.judge_dir = samples, grid, judge
        self._judge: judges.ClassJudge | None | bool = False  # False: not loaded yet

    def class_judge(self) -> judges.ClassJudge | None:
        """`judge` when given, else the built-in CIFAR-10 judge when installed, else None (loaded once)."""
        if self._judge is False:
            from onetok.ar_model.classifier import BUILTIN_JUDGE, ImageClassifier, is_classifier_dir

            path = self.judge_dir or BUILTIN_JUDGE
            if self.judge_dir is not None and not is_classifier_dir(path):
                raise FileNotFoundError(f"SampleLogger judge {path}: not a classifier folder")
            self._judge = judges.ClassJudge(ImageClassifier.from_pretrained(path)) if is_classifier_dir(path) else None
        return self._judge

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        pairs = getattr(getattr(trainer, "datamodule", None), "val_pairs", None)
        if trainer.sanity_checking or pairs is None or self.samples < 1 or not trainer.is_global_zero:
            return
        n = min(self.samples, len(pairs.captions))
        prompts, codes = pairs.captions[:n], pairs.codes[:n].long()
        labels = [a.get("label") if isinstance(a, dict) else None for a in pairs.attributes[:n]]
        captions = evaluate.caption_codes(pl_module.transformer, pl_module.vocab, codes)
        shapes = judges.is_shapes_data(prompts)
        judge = None if shapes or not all(labels) else self.class_judge()
        judge = judge if judge is not None and judge.covers(labels) else None
        scores = judges.caption_scores(captions, prompts, labels, judge.vocabulary if judge else None)
        metrics = {"val/caption_exact": scores["exact"], "val/caption_word_f1": scores["word_f1"]}
        if "class_accuracy" in scores:
            metrics["val/caption_class"] = scores["class_accuracy"]
        images = None
        if pl_module.tokenizer_path is not None:
            images = pl_module.unified_model().generate_images(prompts, seed=0).images  # (n, 3, S, S)
            if shapes:
                metrics["val/t2i_exact"] = evaluate.summarize(evaluate.attribute_scores(prompts, images))["exact"]
            elif judge is not None:
                truth = torch.tensor([judge.index[label] for label in labels])
                metrics["val/t2i_fidelity"] = float((judge(images).predicted == truth).float().mean())
        pl_module.log_dict(metrics, rank_zero_only=True)
        self._log_samples(pl_module, prompts, images, captions)

    def _log_samples(self, pl_module: pl.LightningModule, prompts: list[str], images: torch.Tensor | None,
                     captions: list[str]) -> None:
        experiment = getattr(pl_module.logger, "experiment", None)
        if not hasattr(experiment, "add_text"):
            return
        from torchvision.utils import make_grid

        k = min(self.grid, len(prompts))
        if images is not None and k > 0:
            experiment.add_image("val/samples", make_grid(images[:k].float().cpu(), nrow=k, padding=1),
                                 pl_module.global_step)
        table = "| # (grid column) | prompt = true caption of val image # | model's caption of val image # |\n|---|---|---|\n"
        table += "".join(f"| {i} | {p} | {c} |\n" for i, (p, c) in enumerate(zip(prompts[:k], captions[:k])))
        experiment.add_text("val/samples", table, pl_module.global_step)
