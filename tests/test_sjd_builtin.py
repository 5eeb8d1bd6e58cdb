"""SJD is lossless on the built-in natural-image model too (skipped when it is not installed).

The law of the first `NUM_TOKENS` image codes of a prompt is computed EXACTLY by enumeration: with top-k `TOP_K`
every position has at most TOP_K codes, so the law lives on at most TOP_K^NUM_TOKENS sequences, each the product of
the processed conditionals (the samplers' own `process_logits` and classifier-free guidance at the model's
recommended cfg, full forward passes without a KV cache). Plain sampling and SJD each draw N sequences per prompt
(two prompts of different lengths in one left-padded batch), and Pearson's chi-square against the exact law must stay
under its 1 - 1e-6 quantile (cells expecting < 5 pooled; a draw outside the law's support fails at once), as in
tests/test_sjd.py for the tiny model. `ONETOK_SJD_TEST_MODEL=DIR` runs it on another unified model folder.
"""

import math
import os
from pathlib import Path

import pytest
import torch

import onetok.ar_model
from onetok.ar_model.generate import SamplingSettings, generate_image_tokens, guided, process_logits
from onetok.ar_model.sjd import generate_image_tokens_sjd

MODEL_DIR = Path(os.environ.get("ONETOK_SJD_TEST_MODEL") or Path(onetok.ar_model.__file__).parent / "pretrained" / "cifar10")
NUM_TOKENS, TOP_K, N = 3, 5, 3000
PROMPTS = ("a photo of a horse", "ship")
Z = 4.75  # one-sided normal quantile of 1 - 1e-6

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not (MODEL_DIR / "config.json").is_file(), reason=f"no model at {MODEL_DIR}")]


@pytest.fixture(scope="module")
def model():
    from onetok.ar_model.unified import UnifiedModel

    return UnifiedModel.from_pretrained(MODEL_DIR).eval()


@torch.no_grad()
def exact_law(model, prompt: list[int], settings: SamplingSettings) -> dict[tuple[int, ...], float]:
    """P(first NUM_TOKENS codes) on its support, by expanding the top-k tree one position at a time."""
    vocab, transformer = model.vocab, model.transformer
    heads = [[vocab.bos_id, *prompt, vocab.boi_id], [vocab.bos_id, vocab.null_id, vocab.boi_id]]
    cfg = settings.cfg_scale != 1.0
    law = {(): 0.0}  # prefix -> log probability
    for _ in range(NUM_TOKENS):
        prefixes = list(law)
        codes = torch.tensor(prefixes, dtype=torch.long).view(len(prefixes), -1)  # (M, t)
        rows = [torch.cat([torch.tensor(h).expand(len(prefixes), -1), vocab.image_to_vocab(codes)], dim=1)
                for h in heads[: 2 if cfg else 1]]
        logits = torch.cat([transformer(r)[:, -1] for r in rows])  # (M or 2M, V)
        logp = process_logits(guided(logits, settings, cfg), settings, vocab.image_mask()).log_softmax(-1)
        logp = logp[:, vocab.image_offset :]  # (M, K)
        law = {(*p, c): law[p] + float(logp[i, c]) for i, p in enumerate(prefixes)
               for c in torch.nonzero(logp[i] > -math.inf).flatten().tolist()}
    return {k: math.exp(v) for k, v in law.items()}


def chi_square(codes: torch.Tensor, law: dict[tuple[int, ...], float]) -> tuple[float, int]:
    counts: dict[tuple[int, ...], int] = {}
    for row in codes.tolist():
        counts[tuple(row)] = counts.get(tuple(row), 0) + 1
    if set(counts) - set(law):
        return math.inf, 1  # a draw the law gives no mass
    n = len(codes)
    big = [k for k, p in law.items() if n * p >= 5]
    obs = [counts.get(k, 0) for k in big] + [n - sum(counts.get(k, 0) for k in big)]
    exp = [n * law[k] for k in big] + [n * (1 - sum(law[k] for k in big))]
    if exp[-1] < 1e-9:
        obs, exp = obs[:-1], exp[:-1]
    return sum((o - e) ** 2 / e for o, e in zip(obs, exp)), len(obs) - 1


def bound(df: int) -> float:
    return df * (1 - 2 / (9 * df) + Z * math.sqrt(2 / (9 * df))) ** 3


@pytest.mark.parametrize("sampler, seed", [(generate_image_tokens, 1), (generate_image_tokens_sjd, 2)],
                         ids=["plain", "sjd"])
def test_sampler_matches_the_exact_law_on_the_builtin_model(model, sampler, seed):
    settings = SamplingSettings(temperature=1.0, top_k=TOP_K, cfg_scale=model.settings.cfg_scale)
    prompts = [model.vocab.encode_text(p) for p in PROMPTS]
    rows = [p for p in prompts for _ in range(N)]
    codes = sampler(model.transformer, model.vocab, rows, NUM_TOKENS, settings, torch.Generator().manual_seed(seed)).codes
    total, df = 0.0, 0
    for i, prompt in enumerate(prompts):
        stat, dof = chi_square(codes[i * N : (i + 1) * N], exact_law(model, prompt, settings))
        total, df = total + stat, df + dof
    assert total < bound(df), f"{sampler.__name__}: chi-square {total:.1f} > bound {bound(df):.1f} (df {df})"


def test_a_broken_acceptance_rule_fails_it(model, monkeypatch):
    """SJD that accepts every draft must fail the same test (so the test can fail on this model)."""
    import onetok.ar_model.sjd as sjd_module
    from onetok.kernels import reference

    def always_accept(logits, draft_ids, draft_probs, u_accept, u_sample, backend="auto"):
        B, W = draft_ids.shape
        return reference.SJDVerifyResult(torch.full((B,), W, dtype=torch.long),
                                         reference.inverse_cdf(logits[:, W].float().softmax(-1), u_sample))

    monkeypatch.setattr(sjd_module, "sjd_verify", always_accept)
    settings = SamplingSettings(temperature=1.0, top_k=TOP_K, cfg_scale=model.settings.cfg_scale)
    prompt = model.vocab.encode_text(PROMPTS[0])
    codes = generate_image_tokens_sjd(model.transformer, model.vocab, [prompt] * N, NUM_TOKENS, settings,
                                      torch.Generator().manual_seed(3)).codes
    stat, df = chi_square(codes, exact_law(model, prompt, settings))
    assert stat > bound(df), f"always-accept SJD: chi-square {stat:.1f} within bound {bound(df):.1f}"
