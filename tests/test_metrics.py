"""onetok.metrics and the codebook numbers: the Frechet distance against closed forms, reference statistics, the
Inception Score, the FID Inception and LPIPS wiring on random weights, weight-file look-up, SSIM against
tokenizers/codec/rd.py, and codebook health."""

import math

import numpy as np
import pytest
import torch

from onetok import metrics
from onetok.tokenizers.codebook_stats import codebook_health, entropy_bits, perplexity, position_code_counts


def exact_moment_samples(mu: torch.Tensor, sigma: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    """n samples (n, d) whose sample mean is exactly mu and unbiased sample covariance exactly sigma."""
    z = torch.randn(n, mu.shape[0], generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    z = z - z.mean(0)
    z = z @ torch.linalg.inv(torch.linalg.cholesky(z.T @ z / (n - 1))).T  # whitened: covariance exactly I
    return mu + z @ torch.linalg.cholesky(sigma).T


def meter_fid(real: torch.Tensor, fake: torch.Tensor, batch: int = 7) -> float:
    meter = metrics.FrechetMeter()
    for x, is_real in ((real, True), (fake, False)):
        for chunk in x.split(batch):  # in several updates, as an evaluation loop feeds it
            meter.update(metrics.ImageFeatures(chunk, None), real=is_real)
    return meter.compute().fid


def test_frechet_distance_closed_form_commuting_covariances():
    """Sigma1 = Q diag(a) Q^T, Sigma2 = Q diag(b) Q^T: FD = |mu1 - mu2|^2 + sum (sqrt a - sqrt b)^2."""
    d = 6
    q, _ = torch.linalg.qr(torch.randn(d, d, dtype=torch.float64))
    a, b = torch.rand(d, dtype=torch.float64) + 0.2, 3 * torch.rand(d, dtype=torch.float64) + 0.1
    mu1, mu2 = torch.randn(d, dtype=torch.float64), torch.randn(d, dtype=torch.float64)
    s1, s2 = q @ torch.diag(a) @ q.T, q @ torch.diag(b) @ q.T
    expected = float((mu1 - mu2).square().sum() + (a.sqrt() - b.sqrt()).square().sum())
    fid = meter_fid(exact_moment_samples(mu1, s1, 50, 0), exact_moment_samples(mu2, s2, 40, 1))
    assert fid == pytest.approx(expected, rel=1e-6)


def test_frechet_distance_closed_form_non_commuting_2d():
    """2 x 2: tr sqrt(S1 S2) = sqrt(tr(S1 S2) + 2 sqrt(det(S1 S2))), for covariances that do not commute."""
    s1 = torch.tensor([[2.0, 0.9], [0.9, 1.0]], dtype=torch.float64)
    s2 = torch.tensor([[0.5, -0.2], [-0.2, 3.0]], dtype=torch.float64)
    assert not torch.allclose(s1 @ s2, s2 @ s1)
    mu1, mu2 = torch.tensor([1.0, -2.0], dtype=torch.float64), torch.tensor([0.5, 0.5], dtype=torch.float64)
    prod = s1 @ s2
    tr_sqrt = math.sqrt(float(prod.trace()) + 2 * math.sqrt(float(torch.linalg.det(prod))))
    expected = float((mu1 - mu2).square().sum() + s1.trace() + s2.trace()) - 2 * tr_sqrt
    fid = meter_fid(exact_moment_samples(mu1, s1, 30, 2), exact_moment_samples(mu2, s2, 30, 3))
    assert fid == pytest.approx(expected, rel=1e-6)
    same = exact_moment_samples(mu1, s1, 30, 4)
    assert abs(meter_fid(same, exact_moment_samples(mu1, s1, 25, 5))) < 1e-6  # same Gaussian: 0


def test_reference_statistics_round_trip(tmp_path):
    real, fake = torch.randn(40, 5, dtype=torch.float64), torch.randn(30, 5, dtype=torch.float64) + 0.5
    direct = metrics.FrechetMeter()
    direct.update(metrics.ImageFeatures(real, None), real=True)
    direct.update(metrics.ImageFeatures(fake, None), real=False)
    stats = direct.real_stats({"extractor": "test"})
    assert stats.n == 40
    np.testing.assert_allclose(stats.sigma, np.cov(real.numpy(), rowvar=False), rtol=1e-10)
    with open(tmp_path / "ref.npz", "wb") as f:
        metrics.save_stats(f, stats)
    loaded = metrics.load_stats(tmp_path / "ref.npz")
    assert loaded.n == 40 and loaded.protocol == {"extractor": "test"}
    np.savez(tmp_path / "pytorch_fid.npz", mu=stats.mu, sigma=stats.sigma)  # another tool's file: no n, no protocol
    for ref in (loaded, metrics.load_stats(tmp_path / "pytorch_fid.npz")):
        reused = metrics.FrechetMeter()
        reused.set_reference(ref)
        reused.update(metrics.ImageFeatures(fake, None), real=False)
        assert reused.compute().fid == pytest.approx(direct.compute().fid, rel=1e-9)
    np.savez(tmp_path / "other.npz", x=np.zeros(3))
    with pytest.raises(ValueError, match="not FID statistics"):
        metrics.load_stats(tmp_path / "other.npz")
    (tmp_path / "junk.npz").write_bytes(b"junk")
    with pytest.raises(ValueError, match="not a readable"):
        metrics.load_stats(tmp_path / "junk.npz")
    wide = metrics.FrechetMeter()
    wide.update(metrics.ImageFeatures(torch.randn(4, 7), None), real=False)
    with pytest.raises(ValueError, match="width"):
        wide.set_reference(stats)


def test_inception_score_closed_form():
    """20 confident predictions of 20 different classes in 10 splits of 2: every split scores exp(log 2) = 2."""
    meter = metrics.FrechetMeter()
    logits = 60.0 * torch.eye(20, 30, dtype=torch.float64)  # (20, C): sample i predicts class i
    pool = torch.randn(20, 3, dtype=torch.float64)
    meter.update(metrics.ImageFeatures(pool, None), real=True)
    meter.update(metrics.ImageFeatures(pool, logits), real=False)
    result = meter.compute()
    assert result.inception_score == pytest.approx(2.0, rel=1e-6) and result.inception_score_std == pytest.approx(0)
    one_class = metrics.FrechetMeter()
    one_class.update(metrics.ImageFeatures(pool, None), real=True)
    one_class.update(metrics.ImageFeatures(pool, logits[:, :1].expand(-1, 30).contiguous()), real=False)
    assert one_class.compute().inception_score == pytest.approx(1.0)  # no diversity: 1


# --------------------------------------------------------------------------------------------------------------------
# Weight files and the real networks on random weights
# --------------------------------------------------------------------------------------------------------------------


def test_find_weights_names_the_file_and_where_it_goes(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with pytest.raises(metrics.MissingWeights) as err:
        metrics.find_weights(metrics.FID_WEIGHTS)
    message = str(err.value)
    assert "\n" not in message and metrics.FID_WEIGHTS_FILE in message and metrics.FID_WEIGHTS_URL in message
    assert "--fid-weights" in message and str(tmp_path / "torch" / "hub" / "checkpoints") in message
    with pytest.raises(metrics.MissingWeights, match="nope.pth: no such file"):
        metrics.find_weights(metrics.FID_WEIGHTS, tmp_path / "nope.pth")
    hub = tmp_path / "torch" / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    (hub / metrics.FID_WEIGHTS_ALIASES[0]).write_bytes(b"x")  # pytorch-fid's name for the same file
    assert metrics.find_weights(metrics.FID_WEIGHTS) == hub / metrics.FID_WEIGHTS_ALIASES[0]
    assert metrics.lpips_weights_spec("alex").file.startswith("alexnet-")


def random_state_like(module_factory) -> dict:
    """A random state dict with the keys and shapes of a module built on the meta device (no memory, no init)."""
    with torch.device("meta"):
        module = module_factory()
    state = {}
    for key, value in module.state_dict().items():
        if not value.is_floating_point():
            state[key] = torch.zeros(value.shape, dtype=value.dtype)
        elif key.endswith("running_var"):
            state[key] = torch.ones(value.shape)
        else:
            state[key] = 0.05 * torch.randn(value.shape)
    return state


def test_inception_features_on_random_weights(tmp_path, monkeypatch):
    """The real torch-fidelity network, loaded through our checks: 2048 pool features and 1008 logits per image."""
    import torch_fidelity.feature_extractor_inceptionv3 as tf_inception

    def build():
        with monkeypatch.context() as m:  # torch-fidelity insists on loading weights while building
            m.setattr(tf_inception.FeatureExtractorInceptionV3, "load_state_dict", lambda *a, **k: None)
            m.setattr(tf_inception.torch, "load", lambda *a, **k: {})
            return tf_inception.FeatureExtractorInceptionV3("x", ["2048"], feature_extractor_weights_path="-")

    torch.save(random_state_like(build), tmp_path / "inception.pth")
    extractor = metrics.load_fid_extractor(tmp_path / "inception.pth", precision="float32")
    features = metrics.extract(extractor, torch.rand(2, 3, 16, 16))
    assert features.pool.shape == (2, 2048) and features.logits.shape == (2, 1008)
    assert torch.isfinite(features.pool).all()
    assert extractor.protocol["standard_weights"] is False  # not the published file's hash
    assert extractor.protocol["weights_sha256"] == metrics.sha256_file(tmp_path / "inception.pth")
    torch.save({"weights": [1, 2]}, tmp_path / "junk.pth")
    with pytest.raises(ValueError, match="not a state dict"):
        metrics.load_fid_extractor(tmp_path / "junk.pth")


def test_lpips_from_a_backbone_file(tmp_path, monkeypatch):
    from torchvision.models import alexnet

    torch.save({k: v for k, v in random_state_like(alexnet).items() if k.startswith("features.")},
               tmp_path / "alex.pth")
    net = metrics.load_lpips(tmp_path / "alex.pth", "alex")
    x, y = torch.rand(3, 3, 32, 32), torch.rand(3, 3, 32, 32)
    assert torch.allclose(metrics.lpips_distance(net, x, x), torch.zeros(3), atol=1e-6)
    d = metrics.lpips_distance(net, x, y)
    assert d.shape == (3,) and (d > 0).all()
    torch.testing.assert_close(d, metrics.lpips_distance(net, y, x))
    assert net.protocol["weights_sha256"] == metrics.sha256_file(tmp_path / "alex.pth")
    with pytest.raises(ValueError, match="not the torchvision vgg"):
        metrics.load_lpips(tmp_path / "alex.pth", "vgg")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with pytest.raises(metrics.MissingWeights, match="alexnet-owt"):
        metrics.load_lpips(None, "alex")


# --------------------------------------------------------------------------------------------------------------------
# SSIM (torchmetrics) against a float64 reference written out here (the project's former hand-written SSIM)
# --------------------------------------------------------------------------------------------------------------------


def _blur_matrix(n: int, size: int, sigma: float) -> torch.Tensor:
    """(n - size + 1, n) matrix whose rows are the 1D Gaussian window at each valid position."""
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    rows = torch.arange(n - size + 1)[:, None]
    m = torch.zeros(n - size + 1, n, dtype=torch.float64)
    m[rows, rows + torch.arange(size)] = g / g.sum()
    return m


def reference_ssim(a: torch.Tensor, b: torch.Tensor, window: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Wang et al. SSIM in float64 with separable Gaussian blurs as matrix products, valid positions only."""
    _, _, H, W = a.shape
    size = min(window, H, W)
    size -= 1 - size % 2
    mh, mw = _blur_matrix(H, size, sigma * size / window), _blur_matrix(W, size, sigma * size / window)
    blur = lambda x: mh @ x @ mw.T  # noqa: E731
    a, b = a.double().clamp(0, 1), b.double().clamp(0, 1)
    c1, c2 = 0.01**2, 0.03**2
    mu_a, mu_b = blur(a), blur(b)
    var_a, var_b, cov = blur(a * a) - mu_a**2, blur(b * b) - mu_b**2, blur(a * b) - mu_a * mu_b
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return s.flatten(1).mean(dim=1).float()


@pytest.mark.parametrize("shape", [(3, 3, 32, 32), (2, 3, 17, 40), (2, 3, 8, 8), (2, 3, 5, 9), (1, 1, 1, 1)])
def test_ssim_matches_rd(shape):
    a = torch.rand(shape)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, shape[2]), torch.linspace(0, 1, shape[3]), indexing="ij")
    smooth = (0.5 + 0.4 * torch.sin(6 * xx + 3 * yy)).expand(shape)  # structured content, not only noise
    for ref, noisy in ((a, a + 0.1 * torch.randn(shape)), (smooth, smooth + 0.05 * torch.randn(shape)), (a, a)):
        noisy = noisy.clamp(0, 1)
        torch.testing.assert_close(metrics.ssim(ref, noisy), reference_ssim(ref, noisy), atol=1e-4, rtol=0)
    assert torch.allclose(metrics.ssim(a, a), torch.ones(shape[0]), atol=1e-4)


def test_ssim_matches_rd_on_photos(shared_photos):
    from PIL import Image

    for path in sorted((shared_photos / "val").glob("*.jpg"))[:2]:
        image = torch.from_numpy(np.array(Image.open(path).convert("RGB"))).permute(2, 0, 1)[None].float() / 255
        image = image[..., :192, :256]  # (1, 3, 192, 256): a crop keeps the test fast
        jpeg = (image * 255).round() / 255 + 0.03 * torch.randn_like(image)
        torch.testing.assert_close(metrics.ssim(image, jpeg.clamp(0, 1)), reference_ssim(image, jpeg.clamp(0, 1)),
                                   atol=1e-4, rtol=0)


# --------------------------------------------------------------------------------------------------------------------
# Codebook health
# --------------------------------------------------------------------------------------------------------------------


def test_codebook_health_known_distributions():
    B, K = 8, 16
    ids = torch.stack([torch.full((B,), 3),  # position 0: always code 3 -> 0 bits
                       torch.arange(B) % 4,  # position 1: codes 0..3 uniformly -> 2 bits
                       torch.arange(B) + 8], dim=1)  # position 2: codes 8..15 once each -> 3 bits
    counts = position_code_counts(ids, K)
    assert counts.shape == (3, K) and counts.sum() == 3 * B and counts[0, 3] == B
    health = codebook_health(counts)
    assert health.entropy_bits == pytest.approx([0.0, 2.0, 3.0])
    assert health.bits_per_token == pytest.approx(5 / 3) and health.prefix_bits(2) == pytest.approx(2.0)
    used = {3, 0, 1, 2} | set(range(8, 16))
    assert health.usage == len(used) / K and health.dead_codes == K - len(used)
    assert health.fixed_bits == 4.0
    pooled = counts.sum(0)
    assert health.perplexity == pytest.approx(2 ** float(entropy_bits(pooled)))
    assert perplexity(torch.tensor([5, 5, 5, 5])) == pytest.approx(4.0)
    assert entropy_bits(torch.zeros(2, 4)).tolist() == [0.0, 0.0]
    report = health.as_dict([1, 2, 3])
    assert report["prefix_bits"] == {"1": 0.0, "2": 2.0, "3": 5.0} and report["dead_codes"] == 4


def test_one_psnr_for_tensors_and_8bit_arrays():
    a = np.random.default_rng(0).integers(0, 255, size=(2, 6, 5, 3), dtype=np.uint8)
    b = a + 1  # every sample one level off: MSE 1
    assert metrics.pixel_psnr(a, b) == pytest.approx(20 * np.log10(255))
    assert metrics.pixel_psnr(a, a) == float("inf") and metrics.psnr_from_mse(0.0) == float("inf")
    from onetok.data.pixels import from_hwc

    per_image = metrics.psnr(from_hwc(b), from_hwc(a))  # (2,), floats in [0, 1]
    assert per_image.shape == (2,) and torch.allclose(per_image, torch.full((2,), 20 * math.log10(255)), atol=1e-3)
    assert torch.isinf(metrics.psnr(from_hwc(a), from_hwc(a))).all()
