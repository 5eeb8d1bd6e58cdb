"""Speculative Jacobi Decoding samples exactly the plain-sampling distribution (and a broken rule is caught).

The model is a tiny random transformer over K = 6 image codes drawing k = 4 image tokens, so the joint law of
an image is a vector of K^k = 1296 probabilities that we compute EXACTLY by enumeration (same `process_logits`,
guidance and masks as the samplers). Plain sampling and SJD each draw N rows per prompt (two prompts of different
lengths share one left-padded batch) and each is compared with the exact law by Pearson's chi-square
goodness-of-fit test: cells with expected count >= 5 are kept, the rest pooled into one cell, and the statistic
summed over the two prompts is chi-square with df = (cells - 1) summed, under the null hypothesis that the sampler
is exact. The bound is that law's 1 - 1e-6 quantile (Wilson-Hilferty approximation, z = 4.75), so a correct
sampler fails with probability ~1e-6 (and never, given the fixed seeds). With k = 4 the window covers positions
2-4 after the prefill token, so acceptance, the residual resample, carry-over drafts (verified in a second pass)
and per-row KV rollback all take part. The same statistic for an always-accept rule and for a rule that resamples
from p instead of the residual exceeds the bound.
"""

import itertools
import json
import math

import pytest
import torch

import onetok.ar_model.sjd as sjd_module
from onetok.ar_model.generate import SamplingSettings, generate_image_tokens, guided, process_logits
from onetok.ar_model.model import ARConfig, Transformer
from onetok.ar_model.sjd import generate_image_tokens_sjd
from onetok.ar_model.vocab import Vocab, WordText
from onetok.bench.sjd_speed import count_host_syncs
from onetok.kernels import reference

K, NUM_TOKENS, N = 6, 4, 2000
VOCAB = Vocab(codebook_size=K, text=WordText(["red", "blue", "big"]))
PROMPTS = [VOCAB.encode_text("red big blue"), VOCAB.encode_text("blue")]
Z = 4.75  # one-sided normal quantile of 1 - 1e-6


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    config = ARConfig(vocab_size=VOCAB.size, dim=16, n_layers=2, n_heads=2, mlp_hidden=32, max_seq_len=32,
                      init_std=0.5)  # large init: peaked, strongly context-dependent distributions
    return Transformer(config).eval()


@torch.no_grad()
def exact_joint(model, prompt: list[int], settings: SamplingSettings) -> torch.Tensor:
    """P(codes) for all K^k code sequences, index = codes read as a base-K number."""
    prefixes = torch.tensor(list(itertools.product(range(K), repeat=NUM_TOKENS - 1)))  # (M, k-1)
    rows = [[VOCAB.bos_id, *prompt, VOCAB.boi_id], [VOCAB.bos_id, VOCAB.null_id, VOCAB.boi_id]]
    cfg = settings.cfg_scale != 1.0
    logits = []
    for row in rows[: 2 if cfg else 1]:
        ids = torch.cat([torch.tensor(row).expand(len(prefixes), -1), VOCAB.image_to_vocab(prefixes)], dim=1)
        logits.append(model(ids)[:, len(row) - 1 :])  # (M, k, V): the k image positions
    logp = process_logits(guided(torch.cat(logits), settings, cfg), settings, VOCAB.image_mask()).log_softmax(-1)
    logp = logp[..., VOCAB.image_offset :]  # (M, k, K)
    prefix_logp = logp[:, :-1].gather(-1, prefixes[..., None]).squeeze(-1).sum(-1)  # (M,)
    return (prefix_logp[:, None] + logp[:, -1]).exp().flatten()  # (K^k,)


def chi_square(codes: torch.Tensor, probs: torch.Tensor) -> tuple[float, int]:
    """Pearson's statistic and degrees of freedom; cells expecting < 5 draws are pooled."""
    index = (codes * K ** torch.arange(NUM_TOKENS - 1, -1, -1)).sum(-1)
    observed = torch.bincount(index, minlength=K**NUM_TOKENS).double()
    expected = len(codes) * probs.double()
    big = expected >= 5
    obs = torch.cat([observed[big], observed[~big].sum()[None]])
    exp = torch.cat([expected[big], expected[~big].sum()[None]])
    if exp[-1] == 0:
        if obs[-1] > 0:
            return math.inf, len(obs) - 2  # draws where the law has no mass
        obs, exp = obs[:-1], exp[:-1]
    return float(((obs - exp) ** 2 / exp).sum()), len(obs) - 1


def bound(df: int) -> float:
    """Wilson-Hilferty: the chi-square(df) quantile at the normal quantile Z."""
    return df * (1 - 2 / (9 * df) + Z * math.sqrt(2 / (9 * df))) ** 3


def statistic(model, sampler, settings: SamplingSettings, seed: int, **kwargs) -> tuple[float, float]:
    prompts = [p for p in PROMPTS for _ in range(N)]
    codes = sampler(model, VOCAB, prompts, NUM_TOKENS, settings, torch.Generator().manual_seed(seed), **kwargs).codes
    total, df = 0.0, 0
    for i, prompt in enumerate(PROMPTS):
        stat, dof = chi_square(codes[i * N : (i + 1) * N], exact_joint(model, prompt, settings))
        total, df = total + stat, df + dof
    return total, bound(df)


SETTINGS = [
    (SamplingSettings(), {}),
    (SamplingSettings(temperature=0.7, top_k=3), {"window": 2}),
    (SamplingSettings(temperature=1.3, top_p=0.8), {"init": "prev"}),
    (SamplingSettings(cfg_scale=3.0), {}),
    (SamplingSettings(temperature=1.5, top_k=4, top_p=0.9, cfg_scale=2.0), {"window": 3, "init": "prev"}),
]


@pytest.mark.slow
@pytest.mark.parametrize(("settings", "sjd_kwargs"), SETTINGS)
def test_sjd_and_plain_sampling_both_match_the_exact_law(model, settings, sjd_kwargs):
    plain, limit = statistic(model, generate_image_tokens, settings, seed=1)
    spec, limit = statistic(model, generate_image_tokens_sjd, settings, seed=2, **sjd_kwargs)
    assert plain < limit, f"plain sampling: chi-square {plain:.1f} > bound {limit:.1f}"
    assert spec < limit, f"SJD: chi-square {spec:.1f} > bound {limit:.1f}"


def always_accept(logits, draft_ids, draft_probs, u_accept, u_sample, backend="auto"):
    B, W = draft_ids.shape
    token = reference.inverse_cdf(logits[:, W].float().softmax(-1), u_sample)
    return reference.SJDVerifyResult(torch.full((B,), W, dtype=torch.long), token)


def resample_from_p(logits, draft_ids, draft_probs, u_accept, u_sample, backend="auto"):
    """Correct acceptance, but after a rejection draws from p_n instead of norm(max(0, p_n - q_n))."""
    n, _ = reference.sjd_verify(logits, draft_ids, draft_probs, u_accept, u_sample)
    p_n = logits[torch.arange(len(n)), n].float().softmax(-1)
    return reference.SJDVerifyResult(n, reference.inverse_cdf(p_n, u_sample))


@pytest.mark.slow
@pytest.mark.parametrize("broken", [always_accept, resample_from_p])
def test_a_broken_acceptance_rule_fails_the_same_test(model, monkeypatch, broken):
    monkeypatch.setattr(sjd_module, "sjd_verify", broken)
    stat, limit = statistic(model, generate_image_tokens_sjd, SamplingSettings(), seed=2)
    assert stat > limit, f"{broken.__name__}: chi-square {stat:.1f} within bound {limit:.1f}"


@pytest.mark.parametrize("cfg_scale", [1.0, 2.0])
def test_sjd_waits_on_the_device_at_most_once_per_pass(model, cfg_scale):
    """Counted on CPU: item/bool/int, nonzero, boolean masks, tolist/cpu... (where a CUDA run would wait)."""
    settings = SamplingSettings(temperature=0.8, top_k=4, cfg_scale=cfg_scale)
    prompts = [PROMPTS[0], PROMPTS[1], []]
    with count_host_syncs() as syncs:
        out = generate_image_tokens_sjd(model, VOCAB, prompts, 9, settings, torch.Generator().manual_seed(0),
                                        window=3)
    assert out.forward_passes > 1 and sum(syncs.values()) <= out.forward_passes, syncs
    with count_host_syncs() as syncs:
        generate_image_tokens(model, VOCAB, prompts, 9, settings, torch.Generator().manual_seed(0))
    assert sum(syncs.values()) <= 2, syncs  # plain sampling: only the final code-range check
    with count_host_syncs() as syncs:  # the counter sees each kind of sync
        x = torch.arange(4)
        int(x.max()), bool(x.any()), x.tolist(), x.nonzero(), x[x > 1], x.repeat_interleave(x), x.cpu()
    assert sum(syncs.values()) == 7, syncs


@pytest.mark.parametrize("cfg_scale", [1.0, 2.5])
def test_greedy_sjd_equals_greedy_plain(model, cfg_scale):
    settings = SamplingSettings(temperature=0, cfg_scale=cfg_scale)
    prompts = [PROMPTS[0], PROMPTS[1], [], PROMPTS[1]]
    plain = generate_image_tokens(model, VOCAB, prompts, 9, settings)
    spec = generate_image_tokens_sjd(model, VOCAB, prompts, 9, settings, window=3, init="prev")
    assert torch.equal(plain.codes, spec.codes) and plain.forward_passes == 9
    assert 1 < spec.forward_passes <= 9


def test_compiled_model_gets_static_windows_and_greedy_still_equals_plain(model, monkeypatch):
    """A torch.compile'd model gets the full window every pass (one input shape for CUDA graphs), drafts running
    past k and past max_seq_len (positions clamped) included; the codes are still those of greedy plain decoding."""
    widths = []
    window_targets = sjd_module.window_targets

    def recording(model, vocab, settings, layout, cache, head, drafts):
        widths.append(drafts.ids.shape[1])
        return window_targets(model, vocab, settings, layout, cache, head, drafts)

    monkeypatch.setattr(sjd_module, "window_targets", recording)
    settings = SamplingSettings(temperature=0, cfg_scale=2.0)
    compiled = torch.compile(model, backend="eager", dynamic=False)
    k = model.config.max_seq_len - len(PROMPTS[0]) - 2  # prompt + k fill max_seq_len: later drafts are clamped
    spec = generate_image_tokens_sjd(compiled, VOCAB, PROMPTS, k, settings, window=16)
    assert torch.equal(spec.codes, generate_image_tokens(model, VOCAB, PROMPTS, k, settings).codes)
    assert set(widths) == {16} and len(widths) == spec.forward_passes > 1
    widths.clear()
    generate_image_tokens_sjd(model, VOCAB, PROMPTS, k, settings, window=16)
    assert min(widths) < 16  # uncompiled: the window shrinks to what the prompts can still use


@pytest.mark.parametrize(("num_tokens", "window"), [(10, 2), (9, 2), (5, 16), (1, 4)])
def test_stops_at_k_tokens_and_counts_passes(model, monkeypatch, num_tokens, window):
    """With every draft accepted a pass yields window + 1 tokens (the first pass reads the prompt too): ceil(k / (W + 1))."""
    monkeypatch.setattr(sjd_module, "sjd_verify", always_accept)
    out = generate_image_tokens_sjd(model, VOCAB, PROMPTS, num_tokens, SamplingSettings(), window=window)
    assert out.codes.shape == (2, num_tokens) and out.codes.max() < K
    assert out.forward_passes == math.ceil(num_tokens / (window + 1))
    assert sum(out.tokens_per_pass) == 2 * num_tokens


def test_rejects_bad_window_and_init(model):
    with pytest.raises(ValueError):
        generate_image_tokens_sjd(model, VOCAB, PROMPTS, 4, SamplingSettings(), window=0)
    with pytest.raises(ValueError):
        generate_image_tokens_sjd(model, VOCAB, PROMPTS, 4, SamplingSettings(), init="zeros")


def test_bench_sjd_json(tmp_path, capsys, monkeypatch):
    """The report's counts, and its times read off a fake clock that one plain batch advances by 3 s and one SJD
    batch by 1 s: seconds per image and the plain / SJD ratio come out exact."""
    from types import SimpleNamespace

    import onetok.timing
    from onetok.ar_model.unified import UnifiedModel
    from onetok.scripts.cli import main
    from onetok.tokenizers import Tokenizer
    from onetok.tokenizers.model import PRESETS as TOKENIZER_PRESETS

    tokenizer = Tokenizer(TOKENIZER_PRESETS["tiny"])
    vocab = Vocab(codebook_size=tokenizer.codebook_size)  # bytes: the shapes captions encode
    transformer = Transformer(ARConfig(vocab_size=vocab.size, dim=16, n_layers=1, n_heads=2, max_seq_len=96))
    UnifiedModel(transformer, vocab, tokenizer).save_pretrained(tmp_path / "model")
    bench = ["bench", "sjd", "--model", str(tmp_path / "model")]
    clock, generate_images = [0.0], UnifiedModel.generate_images

    def timed_generate_images(self, *args, sjd=False, **kwargs):
        out = generate_images(self, *args, sjd=sjd, **kwargs)
        clock[0] += 1.0 if sjd else 3.0
        return out

    with monkeypatch.context() as patch:
        patch.setattr(UnifiedModel, "generate_images", timed_generate_images)
        patch.setattr(onetok.timing, "time", SimpleNamespace(perf_counter=lambda: clock[0]))
        assert main([*bench, "--prompts", "4", "--batch", "2", "--window", "4", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["plain"]["forward_passes_per_image"] == tokenizer.num_latent_tokens
    assert report["plain"]["seconds_per_image"] == 1.5 and report["sjd"]["seconds_per_image"] == 0.5  # 2 per batch
    assert report["wall_clock_ratio"] == 3.0
    assert report["forward_pass_ratio"] == tokenizer.num_latent_tokens / report["sjd"]["forward_passes_per_image"]
    assert report["sjd"]["forward_passes_per_image"] <= tokenizer.num_latent_tokens  # at least one token per pass
    hist = report["sjd"]["tokens_per_pass_histogram"]
    assert sum(int(n) * c for n, c in hist.items()) == 4 * tokenizer.num_latent_tokens  # every token of 4 images
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle\n\nblue\n")
    assert main([*bench, "--prompts-file", str(prompts), "--batch", "2"]) == 0
    assert "plain / sjd" in capsys.readouterr().out
    assert main([*bench, "--prompts", "2", "--window", "4", "--dtype", "bf16", "--profile", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["dtype"] == "bf16" and "chains" not in report
    assert report["profile"]["sjd"]["host_syncs_per_pass"] <= 1 and report["profile"]["plain"]["ops_per_pass"] > 10
    assert main(["bench", "sjd", "--model", str(tmp_path / "missing")]) == 2  # one-line error, exit 2
