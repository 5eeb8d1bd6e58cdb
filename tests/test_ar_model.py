"""The AR transformer: shapes, causality, and KV-cache decoding equal to the full forward pass."""

from dataclasses import replace

import pytest
import torch

from onetok.ar_model.model import PRESETS, ARConfig, Transformer, config_from_preset


def tiny(**overrides) -> Transformer:
    model = Transformer(config_from_preset("tiny", vocab_size=50, **overrides))
    return model.eval()


def test_forward_shape_and_causality():
    model = tiny()
    ids = torch.randint(0, 50, (2, 9))
    logits = model(ids)
    assert logits.shape == (2, 9, 50)
    changed = ids.clone()
    changed[:, 6] = (changed[:, 6] + 1) % 50
    again = model(changed)
    torch.testing.assert_close(again[:, :6], logits[:, :6])
    assert not torch.allclose(again[:, 6:], logits[:, 6:])


@pytest.mark.parametrize("overrides", [{}, {"n_kv_heads": 4, "tie_embeddings": True}])
def test_kv_cache_prefill_then_token_by_token_equals_full_forward(overrides):
    model = tiny(**overrides)
    ids = torch.randint(0, 50, (3, 12))
    full = model(ids)
    cache = model.new_cache(batch=3, max_len=16)
    steps = [model(ids[:, :5], cache)] + [model(ids[:, t:t + 1], cache) for t in range(5, 12)]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=1e-5)
    assert cache.lengths.tolist() == [12, 12, 12]


def test_left_padded_rows_of_different_lengths():
    """Rows with different prompt lengths, left-padded into one batch, match each row decoded alone."""
    model = tiny()
    lengths = [7, 3, 5]
    seqs = [torch.randint(0, 50, (n + 4,)) for n in lengths]  # prompt n tokens, then 4 decoded tokens
    width = max(lengths)
    ids = torch.zeros(3, width, dtype=torch.long)
    for b, n in enumerate(lengths):
        ids[b, width - n:] = seqs[b][:n]
    starts = torch.tensor([width - n for n in lengths])
    cache = model.new_cache(batch=3, max_len=width + 4, starts=starts)
    prefill = model(ids, cache)
    decoded = [model(torch.stack([s[n + t] for s, n in zip(seqs, lengths)])[:, None], cache) for t in range(4)]
    for b, n in enumerate(lengths):
        alone = model(seqs[b][None])[0]  # (n+4, V)
        torch.testing.assert_close(prefill[b, width - n:], alone[:n], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(torch.cat([d[b] for d in decoded]), alone[n:], atol=1e-5, rtol=1e-5)


def test_rollback_and_per_row_lengths():
    """Writing a window, rolling rows back by different amounts, and rewriting gives the plain-sequence logits."""
    model = tiny()
    ids = torch.randint(0, 50, (2, 10))
    cache = model.new_cache(batch=2, max_len=16)
    model(ids[:, :4], cache)
    model(torch.randint(0, 50, (2, 5)), cache)  # a speculative window, to be discarded in part
    cache.rollback(torch.tensor([4, 6]))  # row 0 keeps nothing of it, row 1 keeps 2 (wrong) tokens
    cache.rollback(torch.tensor([4, 4]))
    out = model(ids[:, 4:], cache)
    torch.testing.assert_close(out, model(ids)[:, 4:], atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError):
        cache.rollback(torch.tensor([11, 11]))


def test_cache_overflow_and_vocab_size_errors():
    model = tiny()
    cache = model.new_cache(batch=1, max_len=4)
    with pytest.raises(ValueError, match="overflow"):
        model(torch.zeros(1, 5, dtype=torch.long), cache)
    with pytest.raises(ValueError, match="vocab_size"):
        Transformer(ARConfig())


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_runs_a_forward_pass(name):
    """Built on the meta device (no memory): the head layout, GQA and MLP sizes of each preset fit together."""
    config = replace(PRESETS[name], vocab_size=300)
    with torch.device("meta"):
        model = Transformer(config)
        logits = model(torch.zeros(2, 7, dtype=torch.long))
    assert logits.shape == (2, 7, 300)


def test_unchecked_cache_never_waits_and_clamps_positions_past_max_seq_len():
    """Unchecked: no host sync in a cached step; slots past max_seq_len (discarded drafts) get the last position."""
    from onetok.bench.sjd_speed import count_host_syncs

    model = tiny(max_seq_len=6)
    ids = torch.randint(0, 50, (2, 8))
    cache = model.new_cache(batch=2, max_len=8, checked=False)
    with count_host_syncs() as syncs:
        out = model(ids[:, :6], cache)
        cache.rollback(torch.tensor([4, 5]))
        more = model(ids[:, 5:8], cache)
    assert sum(syncs.values()) == 0, syncs
    torch.testing.assert_close(out, model(ids[:, :6]), atol=1e-5, rtol=1e-5)
    assert more.shape == (2, 3, 50) and cache.lengths.tolist() == [7, 8]
    with pytest.raises(ValueError, match="max_seq_len"):
        model(ids[:, :7], model.new_cache(batch=2, max_len=8))  # a checked cache refuses them


def test_bf16_weights_keep_rope_tables_and_logits_in_float32():
    model = tiny()
    ids = torch.randint(0, 50, (2, 7))
    full = model(ids)
    half = tiny().to(torch.bfloat16)
    half.load_state_dict(model.state_dict())
    assert half.rope_cos.dtype == torch.float32 and torch.equal(half.rope_sin, model.rope_sin)
    cache = half.new_cache(batch=2, max_len=8)
    assert cache.k.dtype == torch.bfloat16
    out = torch.cat([half(ids[:, :4], cache), half(ids[:, 4:], cache)], dim=1)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, full, atol=0.05, rtol=0.05)


def test_cached_decoding_step_is_one_static_graph():
    """torch.compile(fullgraph=True) traces a cached forward without a graph break (no host sync, no data-dependent
    shape), the precondition for CUDA graphs / mode="reduce-overhead"."""
    model = tiny()
    ids = torch.randint(0, 50, (2, 8))
    cache = model.new_cache(batch=2, max_len=8, checked=False)
    cache.mark_static()
    model(ids[:, :5], cache)
    step = torch.compile(model, backend="eager", fullgraph=True, dynamic=False)
    with torch.no_grad():
        out = torch.cat([step(ids[:, t : t + 1], cache) for t in range(5, 8)], dim=1)
    torch.testing.assert_close(out, model(ids)[:, 5:], atol=1e-5, rtol=1e-5)


def test_grouped_query_attention_equals_repeated_kv_heads():
    """n_kv_heads < n_heads equals full multi-head attention whose k/v projections repeat each kv head for its
    group of n_heads // n_kv_heads query heads (what SDPA's enable_gqa must compute)."""
    torch.manual_seed(0)
    gqa = tiny(n_kv_heads=2)
    full = tiny()
    H, Hkv = gqa.config.n_heads, 2
    group, dh = H // Hkv, gqa.config.dim // H
    state = gqa.state_dict()
    for key, value in list(state.items()):
        if key.endswith(("attn.wk.weight", "attn.wv.weight")):  # (Hkv * Dh, D) -> (H * Dh, D)
            state[key] = value.view(Hkv, dh, -1).repeat_interleave(group, dim=0).reshape(H * dh, -1)
    full.load_state_dict(state)
    ids = torch.randint(0, 50, (2, 10))
    torch.testing.assert_close(gqa(ids), full(ids), atol=1e-5, rtol=1e-5)
