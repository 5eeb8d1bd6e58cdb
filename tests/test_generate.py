"""Sampling: logit processing semantics, CFG, left-padded prompt batches, seeds, captioning."""

import pytest
import torch

from onetok.ar_model.generate import (
    SamplingSettings,
    cfg_logits,
    generate_image_tokens,
    generate_text,
    image_prompts,
    left_pad,
    prefill,
    process_logits,
    sample_from_logits,
)
from onetok.ar_model.model import Transformer, config_from_preset
from onetok.ar_model.vocab import Vocab, WordText

VOCAB = Vocab(codebook_size=16, text=WordText(["a", "red", "blue", "circle", "square", "big"]))
PROMPTS = [["a", "red", "circle"], ["big", "blue", "square", "a", "red"], ["a"]]


@pytest.fixture
def model():
    torch.manual_seed(0)
    model = Transformer(config_from_preset("tiny", vocab_size=VOCAB.size, init_std=0.3)).eval()
    return model


def prompt_ids(words=PROMPTS):
    return [VOCAB.encode_text(" ".join(w)) for w in words]


def test_temperature_top_k_top_p_semantics():
    logits = torch.log(torch.tensor([[0.4, 0.3, 0.2, 0.1]]))
    probs = lambda s, m=None: process_logits(logits, s, m).softmax(-1)
    torch.testing.assert_close(probs(SamplingSettings()), torch.tensor([[0.4, 0.3, 0.2, 0.1]]))
    hot = torch.tensor([[0.4, 0.3, 0.2, 0.1]]) ** 2
    torch.testing.assert_close(probs(SamplingSettings(temperature=0.5)), hot / hot.sum())
    torch.testing.assert_close(probs(SamplingSettings(top_k=2)), torch.tensor([[4 / 7, 3 / 7, 0.0, 0.0]]))
    # top-p keeps the smallest most-likely set whose mass reaches p
    torch.testing.assert_close(probs(SamplingSettings(top_p=0.7)), torch.tensor([[4 / 7, 3 / 7, 0.0, 0.0]]))
    torch.testing.assert_close(probs(SamplingSettings(top_p=0.71)), torch.tensor([[4 / 9, 3 / 9, 2 / 9, 0.0]]))
    torch.testing.assert_close(probs(SamplingSettings(top_p=0.3)), torch.tensor([[1.0, 0.0, 0.0, 0.0]]))
    torch.testing.assert_close(probs(SamplingSettings(temperature=0)), torch.tensor([[1.0, 0.0, 0.0, 0.0]]))
    mask = torch.tensor([False, True, True, True])
    torch.testing.assert_close(probs(SamplingSettings(top_k=1), mask), torch.tensor([[0.0, 1.0, 0.0, 0.0]]))
    out = process_logits(logits.half(), SamplingSettings(top_k=3))
    assert out.dtype == torch.float32 and torch.isinf(out[0, 3])
    with pytest.raises(ValueError):
        SamplingSettings(top_p=0.0)


@pytest.mark.slow
def test_sample_from_logits_follows_the_distribution():
    processed = torch.log(torch.tensor([0.5, 0.25, 0.25, 0.0])).expand(20000, 4)
    draws = sample_from_logits(processed, torch.Generator().manual_seed(1))
    freq = torch.bincount(draws, minlength=4).float() / 20000
    torch.testing.assert_close(freq, torch.tensor([0.5, 0.25, 0.25, 0.0]), atol=0.015, rtol=0)


def test_cfg_logits():
    cond, uncond = torch.randn(3, 7), torch.randn(3, 7)
    assert torch.equal(cfg_logits(cond, uncond, 1.0), cond)
    torch.testing.assert_close(cfg_logits(cond, uncond, 0.0), uncond)
    torch.testing.assert_close(cfg_logits(cond, uncond, 3.0), 3 * cond - 2 * uncond)


def test_cfg_batch_halves_equal_separate_runs_and_scale_one_is_conditional(model):
    """The 2B-row left-padded CFG batch gives each half the logits it would get alone; scale 1 = conditional."""
    ids = prompt_ids()
    both, starts = left_pad(image_prompts(VOCAB, ids, cfg=True), VOCAB.pad_id)
    batched, _ = prefill(model, both, starts)  # (2B, V)
    alone = torch.stack([model(torch.tensor([row]))[0, -1] for row in image_prompts(VOCAB, ids, cfg=True)])
    torch.testing.assert_close(batched, alone, atol=1e-5, rtol=1e-5)
    cond, uncond = batched.chunk(2)
    mask = VOCAB.image_mask()
    for scale in (1.0, 1.0 + 1e-7):  # the exact shortcut and the arithmetic both give the conditional law
        guided = process_logits(uncond + scale * (cond - uncond), SamplingSettings(), mask).softmax(-1)
        torch.testing.assert_close(guided, process_logits(cond, SamplingSettings(), mask).softmax(-1))
    assert not torch.allclose(cond, uncond)


@pytest.mark.parametrize("cfg_scale", [1.0, 3.0])
def test_greedy_rows_do_not_depend_on_their_batch_partners(model, cfg_scale):
    settings = SamplingSettings(temperature=0, cfg_scale=cfg_scale)
    together = generate_image_tokens(model, VOCAB, prompt_ids(), 6, settings)
    assert together.codes.shape == (3, 6) and together.forward_passes == 6
    assert together.codes.min() >= 0 and together.codes.max() < VOCAB.codebook_size
    for b, words in enumerate(PROMPTS):
        alone = generate_image_tokens(model, VOCAB, prompt_ids([words]), 6, settings)
        assert torch.equal(alone.codes[0], together.codes[b])


def test_greedy_matches_a_full_forward_argmax_loop(model):
    ids = prompt_ids(PROMPTS[:1])
    out = generate_image_tokens(model, VOCAB, ids, 5, SamplingSettings(temperature=0)).codes[0]
    seq = image_prompts(VOCAB, ids, cfg=False)[0]
    mask = VOCAB.image_mask()
    for _ in range(5):
        logits = model(torch.tensor([seq]))[0, -1]
        seq.append(int(logits.masked_fill(~mask, float("-inf")).argmax()))
    assert out.tolist() == [i - VOCAB.image_offset for i in seq[-5:]]


def test_seeds_are_reproducible(model):
    settings = SamplingSettings(temperature=1.0, top_k=8, top_p=0.9, cfg_scale=2.0)
    run = lambda seed: generate_image_tokens(
        model, VOCAB, prompt_ids(), 8, settings, torch.Generator().manual_seed(seed)
    ).codes
    assert torch.equal(run(5), run(5))
    assert not torch.equal(run(5), run(6))


def test_generate_text_greedy_and_stop_at_eos(model):
    codes = torch.randint(0, VOCAB.codebook_size, (2, 4))
    result = generate_text(model, VOCAB, codes, max_len=5)
    assert result.forward_passes <= 5 and len(result.ids) == 2
    seq = [VOCAB.bos_id, VOCAB.boi_id, *VOCAB.image_to_vocab(codes[0]).tolist(), VOCAB.eoi_id]
    mask = VOCAB.text_mask()
    expected = []
    for _ in range(5):
        token = int(model(torch.tensor([seq]))[0, -1].masked_fill(~mask, float("-inf")).argmax())
        if token == VOCAB.eos_id:
            break
        expected.append(token)
        seq.append(token)
    assert result.ids[0] == expected
    assert all(VOCAB.text_offset <= i < VOCAB.image_offset for row in result.ids for i in row)
    torch.nn.init.zeros_(model.output.weight)  # all logits tie: argmax picks the lowest allowed id, <eos>
    assert generate_text(model, VOCAB, codes, max_len=5) == ([[], []], 1)


def tiny_unified(text=None):
    from onetok.ar_model.unified import UnifiedModel
    from onetok.tokenizers import Tokenizer
    from onetok.tokenizers.model import PRESETS as TOKENIZER_PRESETS

    tokenizer = Tokenizer(TOKENIZER_PRESETS["tiny"])
    vocab = Vocab(codebook_size=tokenizer.codebook_size, text=text)
    transformer = Transformer(config_from_preset("tiny", vocab_size=vocab.size, tie_embeddings=True))
    return UnifiedModel(transformer, vocab, tokenizer)


def test_unified_save_load_round_trip_generate_and_caption(tmp_path):
    from onetok.ar_model.unified import UnifiedModel
    from onetok.fileio import UserError

    model = tiny_unified(WordText(["a", "red", "circle"]))
    out = model.save_pretrained(tmp_path / "model")
    assert sorted(p.name for p in out.iterdir()) == [".onetok-output", "config.json", "model.safetensors", "tokenizer"]
    with pytest.raises(UserError, match="already exists"):
        model.save_pretrained(out)
    model.save_pretrained(out, force=True)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp or old copies left
    loaded = UnifiedModel.from_pretrained(out)
    assert loaded.vocab == model.vocab and loaded.transformer.config == model.transformer.config
    for a, b in zip(model.state_dict().values(), loaded.state_dict().values()):
        assert torch.equal(a, b)

    S, L = loaded.tokenizer.image_size, loaded.tokenizer.num_latent_tokens
    settings = SamplingSettings(temperature=1.0, top_k=16, cfg_scale=2.0)
    plain = loaded.generate_images(["a red circle", "circle"], n_per_prompt=2, settings=settings, seed=3)
    assert plain.images.shape == (4, 3, S, S) and plain.codes.shape == (4, L) and plain.forward_passes == L
    assert 0 <= plain.images.min() and plain.images.max() <= 1
    again = model.generate_images(["a red circle", "circle"], n_per_prompt=2, settings=settings, seed=3)
    assert torch.equal(again.codes, plain.codes)
    fast = loaded.generate_images(["a red circle"], settings=settings, image_tokens=3, sjd=True, window=2)
    assert fast.codes.shape == (1, 3) and fast.forward_passes <= 3 and sum(fast.tokens_per_pass) == 3
    with pytest.raises(ValueError, match="image_tokens"):
        loaded.generate_images(["a"], image_tokens=L + 1)
    with pytest.raises(ValueError, match="unknown word"):
        loaded.generate_images(["a blue circle"])
    captions = loaded.caption(plain.images, max_len=4)
    assert len(captions) == 4 and all(set(c.split()) <= {"a", "red", "circle"} for c in captions)


def test_from_pretrained_rejects_other_directories(tmp_path):
    from onetok.ar_model.unified import UnifiedModel

    with pytest.raises(FileNotFoundError, match="no config.json"):  # plain exceptions: the CLI maps them to exit 2
        UnifiedModel.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text('{"format": "something-else"}')
    with pytest.raises(ValueError, match="format"):
        UnifiedModel.from_pretrained(tmp_path)


def test_stopwatch_times_the_block():
    import time

    from onetok.timing import Stopwatch

    with Stopwatch("cpu") as watch:
        time.sleep(0.02)
    assert 0.02 <= watch.seconds < 5
