"""`onetok eval-tokenizer` and `onetok eval-ar` with --fid / LPIPS, end to end on the shapes val set and the photo
val set, with a small stand-in feature extractor in place of the FID Inception (whose weights are not here)."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from onetok import metrics
from onetok.ar_model.data import read_meta
from onetok.ar_model.model import Transformer, config_from_preset
from onetok.ar_model.unified import UnifiedModel
from onetok.ar_model.vocab import Vocab, WordText
from onetok.data.shapes import write_shapes_dataset
from onetok.scripts.cli import main
from onetok.tokenizers import Tokenizer, preset


class StandInFeatures(nn.Module):
    """A small fixed random conv net in the FID Inception's place: uint8 (B, 3, H, W) -> 32 features, 10 logits."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.conv = nn.Conv2d(3, 8, 3)
        self.head = nn.Linear(32, 10)
        for p in self.parameters():
            p.data = torch.randn(p.shape, generator=g) * 0.5
        self.protocol = {"extractor": "stand-in conv net (tests)", "weights_sha256": "stand-in",
                         "standard_weights": False}

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> metrics.ImageFeatures:
        assert images.dtype == torch.uint8  # the protocol: features of uint8 images
        x = nn.functional.adaptive_avg_pool2d(torch.relu(self.conv(images.float() / 255)), 2).flatten(1)  # (B, 32)
        return metrics.ImageFeatures(x, self.head(x))


class StandInLpips(nn.Module):
    """LPIPS's calling convention, with a mean absolute difference as the 'distance'."""

    def forward(self, a, b, normalize=False):
        return (a - b).abs().mean(dim=(1, 2, 3)).view(-1, 1, 1, 1)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """40 shapes val images at 16 px, a tiny random tokenizer, and a tiny unified model over the captions."""
    root = tmp_path_factory.mktemp("eval_cli")
    write_shapes_dataset(root / "shapes", size=16, train=8, val=40, seed=0, shard_size=50)
    torch.manual_seed(0)
    tokenizer = Tokenizer(preset("tiny"))
    tokenizer.save_pretrained(root / "tok")
    assert main(["tokenize", "--tokenizer", str(root / "tok"), "--data", str(root / "shapes"),
                 "--out", str(root / "tokens"), "--quiet"]) == 0
    vocab = Vocab(tokenizer.codebook_size, WordText(read_meta(root / "tokens")["words"]))
    UnifiedModel(Transformer(config_from_preset("tiny", vocab.size)), vocab, tokenizer).save_pretrained(root / "model")
    return root


@pytest.fixture()
def stand_in(monkeypatch, tmp_path):
    """The stand-in extractor for --fid, and an empty torch hub cache (no LPIPS weights either)."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.setattr(metrics, "load_fid_extractor", lambda weights=None, precision="float64": StandInFeatures())


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(err: str, *needles: str) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "error:" in lines[0] and all(n in lines[0] for n in needles), err


def expected_rfid(env: Path, k: int) -> float:
    """rFID computed independently: torchmetrics' own FID with the stand-in as its custom `feature` module."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    from onetok.eval_setup import image_batches

    tokenizer = Tokenizer.from_pretrained(env / "tok")
    extractor = StandInFeatures()
    fid = FrechetInceptionDistance(feature=lambda_module(lambda x: extractor(x).pool.double()))
    for images in image_batches(str(env / "shapes" / "val"), 16, 9, None):
        fid.update((images * 255).round().byte(), real=True)
        rec = tokenizer.decode(tokenizer.encode(images)[:, :k])
        fid.update((rec.clamp(0, 1) * 255).round().byte(), real=False)
    return float(fid.compute())


def lambda_module(fn) -> nn.Module:
    class Wrapped(nn.Module):
        num_features = 32

        def forward(self, x):
            return fn(x)

    return Wrapped()


def test_eval_tokenizer_fid_on_shapes(env, stand_in, tmp_path, capsys):
    report, stats = tmp_path / "m.json", tmp_path / "ref.npz"
    code, out, err = run(capsys, "eval-tokenizer", "--tokenizer", env / "tok", "--data", env / "shapes" / "val",
                         "--fid", "--fid-tokens", "all", "--batch-size", 16, "--json", report, "--fid-stats-out", stats)
    assert code == 0, err
    r = json.loads(report.read_text())
    assert r["images"] == 40 and list(r["fid"]) == list(r["psnr"]) == ["1", "2", "4", "8"]
    for k in (2, 8):
        assert r["fid"][str(k)] == pytest.approx(expected_rfid(env, k), rel=1e-5)
    assert all(s["mean"] > 1 - 1e-5 and s["std"] is not None for s in r["inception_score"].values())
    assert all(0 <= v <= 1 for v in r["ssim"].values()) and "rFID" in out and "Inception Score" in out
    fid = r["protocol"]["fid"]
    assert fid["metric"] == "rFID" and fid["real_images"] == fid["fake_images"] == 40 and fid["image_size"] == 16
    assert any("not the FID Inception" in why for why in fid["not_comparable_because"])
    assert any("50,000" in why for why in fid["not_comparable_because"])
    assert "skipped" in r["protocol"]["lpips"] and "lpips" not in r and "alexnet-owt" in err  # no weights: a note
    book = r["codebook"]
    assert book["dead_codes"] == round((1 - book["usage"]) * 64) and len(book["entropy_bits_per_position"]) == 8
    assert 0 <= book["entropy_bits_per_token"] <= book["fixed_bits_per_token"] == 6
    saved = metrics.load_stats(stats)
    assert saved.n == 40 and saved.mu.shape == (32,) and saved.protocol["extractor"].startswith("stand-in")
    # the saved statistics replace the originals' features and give the same rFID
    code, _, err = run(capsys, "eval-tokenizer", "--tokenizer", env / "tok", "--data", env / "shapes" / "val",
                       "--fid", "--fid-ref", stats, "--json", tmp_path / "m2.json")
    assert code == 0, err
    assert json.loads((tmp_path / "m2.json").read_text())["fid"]["8"] == pytest.approx(r["fid"]["8"], rel=1e-9)
    # ... but only for the same images
    code, _, err = run(capsys, "eval-tokenizer", "--tokenizer", env / "tok", "--data", env / "shapes" / "val",
                       "--fid", "--fid-ref", stats, "--limit", 20)
    assert code == 2
    one_line_error(err, "40 images", "20")


def test_eval_tokenizer_fid_on_photos(env, stand_in, tmp_path, capsys, shared_photos):
    photos = shared_photos / "val"
    report = tmp_path / "photos.json"
    code, out, err = run(capsys, "eval-tokenizer", "--tokenizer", env / "tok", "--data", photos, "--fid",
                         "--json", report)
    assert code == 0, err
    r = json.loads(report.read_text())
    n = len([p for p in photos.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png", ".webp")])
    assert r["images"] == n and r["protocol"]["fid"]["real_images"] == n and np.isfinite(r["fid"]["8"])
    assert r["inception_score"]["8"]["std"] is None  # fewer than 2 images per split: the spread is not reported


def test_lpips_with_a_network(env, stand_in, monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(metrics, "load_lpips", lambda weights=None, net="alex": StandInLpips())
    report = tmp_path / "m.json"
    code, out, err = run(capsys, "eval-tokenizer", "--tokenizer", env / "tok", "--data", env / "shapes" / "val",
                         "--fid-tokens", "3,8", "--json", report)  # the token counts of LPIPS too, with or without FID
    assert code == 0, err
    r = json.loads(report.read_text())
    assert list(r["lpips"]) == ["3", "8"] and r["lpips"]["8"] > 0 and "LPIPS" in out and "fid" not in r
    assert list(r["psnr"]) == ["1", "2", "3", "4", "8"]  # PSNR and SSIM at the extra count too
    assert r["protocol"]["lpips"] == {"network": "StandInLpips"}


def test_missing_or_bad_weights_are_one_line_errors(env, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    base = ["eval-tokenizer", "--tokenizer", env / "tok", "--data", env / "shapes" / "val", "--json", tmp_path / "m.json"]
    code, _, err = run(capsys, *base, "--fid")
    assert code == 2
    one_line_error(err, metrics.FID_WEIGHTS_FILE, "--fid-weights", str(tmp_path / "torch_home" / "hub" / "checkpoints"))
    code, _, err = run(capsys, *base, "--fid", "--fid-weights", tmp_path / "nope.pth")
    assert code == 2
    one_line_error(err, "nope.pth: no such file")
    (tmp_path / "junk.pth").write_bytes(b"not weights")
    code, _, err = run(capsys, *base, "--fid", "--fid-weights", tmp_path / "junk.pth")
    assert code == 2
    one_line_error(err, "junk.pth: not a loadable weights file")
    code, _, err = run(capsys, *base, "--lpips-weights", tmp_path / "nope.pth")
    assert code == 2
    one_line_error(err, "nope.pth: no such file", "alexnet-owt")
    code, _, err = run(capsys, "eval-ar", "--model", env / "model", "--data", env / "shapes", "--n", 4, "--fid")
    assert code == 2
    one_line_error(err, metrics.FID_WEIGHTS_FILE)
    assert not (tmp_path / "m.json").exists()


@pytest.mark.parametrize("flags, needle", [
    (["--fid-ref", "x.npz"], "need --fid"),
    (["--fid-stats-out", "x.npz"], "need --fid"),
    (["--fid", "--fid-tokens", "0,9"], "must be in 1..8"),
    (["--fid", "--fid-tokens", "two"], "comma-separated"),
    (["--fid", "--fid-ref", "missing.npz"], "missing.npz: not a readable .npz"),
])
def test_bad_fid_flags(env, stand_in, tmp_path, capsys, monkeypatch, flags, needle):
    monkeypatch.chdir(tmp_path)
    code, _, err = run(capsys, "eval-tokenizer", "--tokenizer", env / "tok", "--data", env / "shapes" / "val", *flags)
    assert code == 2
    one_line_error(err, needle)


def test_stats_out_refuses_to_overwrite(env, stand_in, tmp_path, capsys):
    (tmp_path / "ref.npz").write_bytes(b"mine")
    code, _, err = run(capsys, "eval-tokenizer", "--tokenizer", env / "tok", "--data", env / "shapes" / "val",
                       "--fid", "--fid-stats-out", tmp_path / "ref.npz")
    assert code == 2 and (tmp_path / "ref.npz").read_bytes() == b"mine"
    one_line_error(err, "--force")


def test_eval_ar_gfid(env, stand_in, tmp_path, capsys):
    report, stats = tmp_path / "ar.json", tmp_path / "ref.npz"
    base = ["eval-ar", "--model", env / "model", "--n", 12, "--batch-size", 6]
    code, out, err = run(capsys, *base, "--data", env / "shapes", "--fid", "--json", report, "--fid-stats-out", stats)
    assert code == 0, err
    g = json.loads(report.read_text())["gfid"]
    assert g["protocol"]["metric"] == "gFID" and g["protocol"]["real_images"] == g["protocol"]["fake_images"] == 12
    assert "first 12 val images" in g["protocol"]["reference"] and np.isfinite(g["fid"]) and g["fid"] > 0
    assert g["inception_score"]["mean"] > 1 - 1e-5 and "gFID" in out
    assert any("captions" in why for why in g["protocol"]["not_comparable_because"])
    # the same reference as statistics, and from the token folder (which has no images) with those statistics
    for data in ("shapes", "tokens"):
        code, _, err = run(capsys, *base, "--data", env / data, "--fid", "--fid-ref", stats, "--json", report, "--force")
        assert code == 0, err
        assert json.loads(report.read_text())["gfid"]["fid"] == pytest.approx(g["fid"], rel=1e-9)
    # a folder of reference images
    folder = tmp_path / "ref_images"
    folder.mkdir()
    for i in range(5):
        Image.fromarray(np.random.default_rng(i).integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    code, _, err = run(capsys, *base, "--data", env / "shapes", "--fid", "--fid-ref", folder, "--json", report,
                       "--force")
    assert code == 0, err
    assert json.loads(report.read_text())["gfid"]["protocol"]["real_images"] == 5
    code, _, err = run(capsys, *base, "--data", env / "tokens", "--fid")
    assert code == 2
    one_line_error(err, "--fid-ref")
