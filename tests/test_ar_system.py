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
from onetok.tokenizers.registry import fingerprint_dir

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


def test_configs_exist():
    names = {Path(c).name for c in CONFIGS}
    assert {"shapes.yaml", "base_256.yaml", "large_256.yaml"} <= names


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
    # the directory alone draws images and captions them: hide the training-time tokenizer meanwhile
    tokenizer_dir = Path(stored["tokenizer_path"])
    tokenizer_dir.rename(tokenizer_dir.with_name("hidden"))
    try:
        model = UnifiedModel.from_pretrained(out)
        result = model.generate_images(["a large red circle in the center on a black background"], n_per_prompt=2)
        assert result.images.shape == (2, 3, 16, 16)
        assert all(isinstance(c, str) for c in model.caption(result.images))
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


def test_no_weight_decay_on_norms_and_embeddings(tokens):
    dm = ARDataModule(tokens=str(tokens))
    system = ARSystem(preset="tiny", vocab=dm.vocab.to_dict(), weight_decay=0.5)

    class _Trainer:
        estimated_stepping_batches = 100

    system.trainer = _Trainer()  # only read for the schedule length
    opt = system.configure_optimizers()["optimizer"]
    decayed = {id(p) for g in opt.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    for name, p in system.transformer.named_parameters():
        assert (id(p) in decayed) == (p.ndim >= 2 and "tok_embeddings" not in name), name


def test_warmup_cosine_schedule():
    def s(step):
        return warmup_cosine(step, warmup_steps=10, total_steps=110, min_ratio=0.1)

    assert s(0) == pytest.approx(0.1) and s(9) == pytest.approx(1.0)
    assert s(60) == pytest.approx(0.55) and s(110) == pytest.approx(0.1) and s(500) == pytest.approx(0.1)
    assert all(s(i) >= s(i + 1) for i in range(10, 120))
