"""ARSystem: losses per task, optimizer groups, schedule, fast_dev_run of every AR config, checkpoints, export."""

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from onetok.ar_model.data import ARDataModule
from onetok.ar_model.sequence import IGNORE, T2I
from onetok.ar_model.system import ARSystem, export_checkpoint
from onetok.ar_model.tokenize import tokenize_dataset
from onetok.ar_model.unified import UnifiedModel
from onetok.data.shapes import write_shapes_dataset
from onetok.optim import warmup_cosine
from onetok.scripts.train import main as train_main
from onetok.tokenizers import Tokenizer, preset
from onetok.tokenizers.registry import fingerprint, fingerprint_dir

CONFIGS = sorted(str(p) for p in (Path(__file__).resolve().parents[1] / "configs" / "ar").glob("*.yaml"))
TINY = ["--model.init_args.preset", "tiny", "--model.init_args.model_overrides", "{}",
        "--model.init_args.eval_samples", "4", "--trainer.accelerator", "cpu", "--trainer.devices", "1",
        "--trainer.precision", "32-true", "--trainer.strategy", "auto", "--trainer.enable_progress_bar", "false",
        "--data.init_args.batch_size", "8", "--data.init_args.val_batch_size", "8", "--data.init_args.num_workers", "0"]


@pytest.fixture(scope="module")
def tokens(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ar_system")
    write_shapes_dataset(root / "shapes", size=32, train=32, val=8, seed=1, shard_size=100)
    torch.manual_seed(0)
    Tokenizer(preset("tiny")).save_pretrained(root / "tok")
    tokenize_dataset(root / "tok", str(root / "shapes"), root / "tokens")
    return root / "tokens"


def _fit(config: str, tokens: Path, root: Path, *extra: str) -> None:
    assert train_main(["fit", "--config", config, *TINY, "--data.init_args.tokens", str(tokens),
                       "--data.init_args.text", "words", "--data.init_args.text_vocab", "null",
                       "--trainer.default_root_dir", str(root), *extra]) == 0


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: Path(c).stem)
def test_fast_dev_run_each_config(config, tokens, tmp_path):
    _fit(config, tokens, tmp_path, "--trainer.fast_dev_run", "true")


def test_checkpoint_loads_weights_only_and_exports(tokens, tmp_path):
    _fit(str(Path(CONFIGS[0]).with_name("shapes.yaml")), tokens, tmp_path, "--trainer.max_steps", "3",
         "--trainer.val_check_interval", "2", "--trainer.max_time", "null")
    ckpt_path = next(tmp_path.rglob("last.ckpt"))
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    assert ckpt["onetok_system"] == "ar" and ckpt["global_step"] == 3
    hp, stored = ckpt["hyper_parameters"], ckpt["onetok_ar"]
    assert hp["vocab"]["text"]["kind"] == "words" and Path(stored["tokenizer_path"]).is_dir()
    assert stored["tokenizer_fingerprint"] == fingerprint_dir(stored["tokenizer_path"])  # THE fingerprint (codec)
    assert stored["vocab"] == hp["vocab"] and stored["model_config"]["vocab_size"] == len(hp["vocab"]["text"]["words"]) + 70
    # the Lightning way back works too
    system = ARSystem.load_from_checkpoint(ckpt_path, map_location="cpu")
    assert system.vocab.size == system.transformer.config.vocab_size

    out = export_checkpoint(ckpt, tmp_path / "unified")
    model = UnifiedModel.from_pretrained(out)
    for name, value in model.transformer.state_dict().items():
        assert torch.equal(value, ckpt["state_dict"][f"transformer.{name}"])
    prompt = ["a large red circle in the center on a black background"]
    images = model.generate_images(prompt, n_per_prompt=2).images
    captions = model.caption(images)
    # the directory alone draws the same images and captions them the same: hide the training-time tokenizer
    tokenizer_dir = Path(stored["tokenizer_path"])
    tokenizer_dir.rename(tokenizer_dir.with_name("hidden"))
    try:
        model = UnifiedModel.from_pretrained(out)
        assert fingerprint(model.tokenizer).hex() == stored["tokenizer_fingerprint"]
        assert torch.equal(model.generate_images(prompt, n_per_prompt=2).images, images)
        assert images.shape == (2, 3, 16, 16) and model.caption(images) == captions
        assert set(" ".join(captions).split()) <= set(hp["vocab"]["text"]["words"])
    finally:
        tokenizer_dir.with_name("hidden").rename(tokenizer_dir)
    with pytest.raises(Exception, match="already exists"):
        export_checkpoint(ckpt, out)


def test_losses_per_task_match_cross_entropy(tokens):
    dm = ARDataModule(tokens=str(tokens), batch_size=16)
    dm.setup("fit")
    system = ARSystem(preset="tiny", vocab=dm.vocab.to_dict())
    batch = next(iter(dm.train_dataloader()))
    sums = system._loss_sums(batch)  # rows: all, t2i, i2t; columns: summed loss, loss tokens
    losses = {name: (sums[i, 0] / sums[i, 1]).float() for i, name in enumerate(("loss", "t2i", "i2t"))}
    logits = system.transformer(batch["ids"])
    rows = batch["task"] == T2I
    for name, sel in (("loss", torch.ones_like(rows)), ("t2i", rows), ("i2t", ~rows)):
        expected = F.cross_entropy(logits[sel].flatten(0, 1), batch["targets"][sel].flatten(), ignore_index=IGNORE)
        assert torch.allclose(losses[name], expected, atol=1e-5), name


def test_weight_decay_shrinks_linear_weights_only(tokens):
    """One AdamW step with all gradients zero moves nothing but the decay: every nn.Linear weight shrinks by exactly
    (1 - lr * weight_decay); the token embeddings and the RMSNorm gains stay as they were."""
    dm = ARDataModule(tokens=str(tokens))
    system = ARSystem(preset="tiny", vocab=dm.vocab.to_dict(), weight_decay=0.5)

    class _Trainer:
        estimated_stepping_batches = 100

    system.trainer = _Trainer()  # only read for the schedule length
    opt = system.configure_optimizers()["optimizer"]
    before = {name: p.detach().clone() for name, p in system.transformer.named_parameters()}
    for p in system.transformer.parameters():
        p.grad = torch.zeros_like(p)
    lr = opt.param_groups[0]["lr"]
    assert lr > 0
    opt.step()
    linear = {f"{name}.weight" for name, m in system.transformer.named_modules() if isinstance(m, torch.nn.Linear)}
    assert linear and "output.weight" in linear
    for name, p in system.transformer.named_parameters():
        expected = before[name] * (1 - lr * 0.5) if name in linear else before[name]
        torch.testing.assert_close(p.detach(), expected, rtol=1e-6, atol=0, msg=name)


def test_warmup_cosine_schedule():
    def s(step):
        return warmup_cosine(step, warmup_steps=10, total_steps=110, min_ratio=0.1)

    assert s(0) == pytest.approx(0.1) and s(9) == pytest.approx(1.0)
    assert s(60) == pytest.approx(0.55) and s(110) == pytest.approx(0.1) and s(500) == pytest.approx(0.1)
    assert all(s(i) >= s(i + 1) for i in range(10, 120))
