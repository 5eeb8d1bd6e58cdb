"""The 1D tokenizer model, its quantizers, losses and metrics (CPU, tiny sizes)."""

import json
import math

import pytest
import torch

from onetok.metrics import psnr
from onetok.tokenizers import PRESETS, Tokenizer, TokenizerConfig, preset
from onetok.tokenizers.codebook_stats import code_counts, codebook_usage, perplexity
from onetok.tokenizers.losses import TokenizerLoss
from onetok.tokenizers.model import Decoder, Encoder
from onetok.tokenizers.quantize import VectorQuantizer
from onetok.tokenizers.vit import Block, Blocks

QUANTIZERS = {
    "vq": dict(quantizer="vq", code_dim=8, codebook_size=64),
    "fsq": dict(quantizer="fsq", fsq_levels=(4, 4, 4)),
    "lfq": dict(quantizer="lfq", code_dim=6),
}


def tiny(kind: str = "vq", **overrides) -> Tokenizer:
    return Tokenizer(preset("tiny", **QUANTIZERS[kind], **overrides))


def images(batch: int = 3, size: int = 16) -> torch.Tensor:
    return torch.rand(batch, 3, size, size)


@pytest.mark.parametrize("kind", sorted(QUANTIZERS))
def test_public_method_shapes(kind):
    tok = tiny(kind)
    B, L, S = 3, tok.num_latent_tokens, tok.image_size
    assert (L, S, tok.codebook_size) == (8, 16, 64)
    x = images(B)
    out = tok.train()(x)
    assert out.reconstruction.shape == (B, 3, S, S)
    assert out.quantizer.quantized.shape == (B, L, tok.config.code_dim)
    assert out.quantizer.indices.shape == (B, L) and out.quantizer.indices.dtype == torch.int64
    assert out.quantizer.loss.ndim == 0 and torch.isfinite(out.quantizer.loss)
    assert out.keep.shape == (B,) and ((out.keep >= 1) & (out.keep <= L)).all()
    (out.reconstruction.square().mean() + out.quantizer.loss).backward()
    assert tok.encoder.patch_embed.weight.grad.abs().sum() > 0  # straight-through reaches the encoder
    ids = tok.encode(x)
    assert ids.shape == (B, L) and ids.dtype == torch.int64
    assert 0 <= int(ids.min()) and int(ids.max()) < tok.codebook_size
    assert tok.training  # encode restores the training flag
    assert tok.encode(x, num_tokens=3).shape == (B, 3)
    rec = tok.decode(ids)
    assert rec.shape == (B, 3, S, S) and rec.dtype == torch.float32
    assert 0 <= float(rec.min()) and float(rec.max()) <= 1
    codes = tok.quantizer.codes_from_indices(ids)
    assert codes.shape == (B, L, tok.config.code_dim)


@pytest.mark.parametrize("kind", sorted(QUANTIZERS))
def test_prefix_decoding(kind):
    tok = tiny(kind).eval()
    x = images(2)
    full = tok.encode(x)
    decoded = []
    for k in range(1, tok.num_latent_tokens + 1):
        ids = tok.encode(x, num_tokens=k)
        assert torch.equal(ids, full[:, :k])  # prefixes are prefixes of the full encoding
        rec = tok.decode(ids)
        with torch.no_grad():  # decode(k ids) == the training forward that keeps k tokens
            forward = tok(x, keep=k).reconstruction.clamp(0, 1)
        torch.testing.assert_close(rec, forward, atol=1e-5, rtol=1e-5)
        decoded.append(rec)
    assert not torch.allclose(decoded[0], decoded[-1])  # the tail tokens matter


@pytest.mark.parametrize("upsample_channels", [0, 4])
def test_shapes_recipe_options(tmp_path, upsample_channels):
    """token mixing, latent BatchNorm, a conv stem, a finer decoder grid and the conv upsampler head."""
    tok = tiny("fsq", token_mixing=True, latent_batchnorm=True, stem_channels=8, dec_patch_size=2,
               upsample_channels=upsample_channels).train()
    assert tok.decoder.grid == 8 and tok.decoder.drop_code.shape == (1, 8, 3)
    x = images(4)
    for _ in range(2):  # move the BatchNorm running statistics away from their initial values
        out = tok(x, keep=torch.tensor([1, 3, 8, 8]))
        out.reconstruction.mean().backward()
    assert tok.encoder.pool.grad is not None and tok.decoder.drop_code.grad is not None
    assert tok.decoder.drop_code.grad[0, 1:].abs().sum() > 0 and tok.decoder.drop_code.grad[0, 0].abs().sum() == 0
    tok.eval()
    z = tok.encoder(x)  # (B, L, D)
    with torch.no_grad():
        tok.train()
        z_train = tok.encoder(x)
        tok.eval()
    torch.testing.assert_close(z_train.flatten(1).mean(0), torch.zeros(8 * 3), atol=1e-5, rtol=0)  # batch-normalised
    assert not torch.allclose(z, z_train)  # eval uses the running statistics
    ids = tok.encode(x)
    for k in (1, 4, 8):
        with torch.no_grad():
            torch.testing.assert_close(tok.decode(ids[:, :k]), tok(x, keep=k).reconstruction.clamp(0, 1))
    tok.save_pretrained(tmp_path / "tok")
    loaded = Tokenizer.from_pretrained(tmp_path / "tok")
    assert torch.equal(loaded.encode(x), ids) and torch.equal(loaded.decode(ids), tok.decode(ids))


@pytest.mark.parametrize("token_mixing", [False, True])
def test_decoder_ignores_dropped_tail(token_mixing):
    tok = tiny(token_mixing=token_mixing).eval()
    codes = torch.randn(2, 8, 8)
    other = codes.clone()
    other[:, 3:] = torch.randn(2, 5, 8)
    keep = torch.tensor([3, 3])
    with torch.no_grad():
        torch.testing.assert_close(tok.decoder(codes, keep), tok.decoder(other, keep))
        assert not torch.allclose(tok.decoder(codes, keep + 1), tok.decoder(other, keep + 1))


def test_nested_dropout_distributions():
    L = 8
    uniform = tiny(token_drop="uniform").sample_keep(4000, "cpu")
    assert set(uniform.tolist()) == set(range(1, L + 1))
    pow2 = tiny(token_drop="pow2").sample_keep(4000, "cpu")
    assert set(pow2.tolist()) == {1, 2, 4, 8}
    assert tiny(token_drop="none").sample_keep(5, "cpu").tolist() == [L] * 5
    mostly_full = tiny(token_drop="uniform", full_length_prob=0.5).sample_keep(4000, "cpu")
    assert 0.5 < float((mostly_full == L).float().mean()) < 0.65


@pytest.mark.parametrize("kind", sorted(QUANTIZERS))
def test_save_load_round_trip(kind, tmp_path):
    tok = tiny(kind).eval()
    tok.save_pretrained(tmp_path / "tok")
    meta = json.loads((tmp_path / "tok" / "config.json").read_text())
    assert meta["format"] == "onetok-tokenizer" and meta["config"]["quantizer"] == kind
    loaded = Tokenizer.from_pretrained(tmp_path / "tok")
    assert loaded.config == tok.config and not loaded.training
    x = images(2)
    ids = tok.encode(x)
    assert torch.equal(loaded.encode(x), ids)
    assert torch.equal(loaded.decode(ids[:, :5]), tok.decode(ids[:, :5]))


def test_bad_inputs_raise():
    tok = tiny()
    with pytest.raises(ValueError, match="expected images"):
        tok.encode(torch.rand(1, 3, 8, 8))
    with pytest.raises(ValueError, match="num_tokens"):
        tok.encode(images(1), num_tokens=9)
    with pytest.raises(ValueError, match="tokens per image"):
        tok.decode(torch.zeros(1, 9, dtype=torch.long))
    with pytest.raises(ValueError, match="token ids"):
        tok.decode(torch.full((1, 2), 64))
    with pytest.raises(ValueError, match="quantizer"):
        TokenizerConfig(quantizer="rvq")
    with pytest.raises(ValueError, match="unknown"):
        TokenizerConfig.from_dict({"width": 3})


def test_config_round_trip_and_derived_sizes():
    cfg = preset("tiny", quantizer="fsq", fsq_levels=[8, 5, 5])
    assert cfg.code_dim == 3 and cfg.codebook_size == 200 and cfg.fsq_levels == (8, 5, 5)
    assert TokenizerConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    assert preset("tiny", quantizer="lfq", code_dim=5).codebook_size == 32


def test_presets_build_with_expected_sizes():
    def size(cfg):
        with torch.device("meta"):  # no memory, no init cost (the quantizers are built for real: they are small)
            parts = [Encoder(cfg), Decoder(cfg)]
        return sum(p.numel() for part in parts for p in part.parameters())

    sizes = {name: size(cfg) for name, cfg in PRESETS.items()}
    assert sizes["tiny"] < 100_000 < sizes["shapes"] < 5_000_000
    assert 30e6 < sizes["titok-s-128"] < sizes["titok-b-64"] < sizes["titok-l-32"] < 1e9
    assert PRESETS["titok-l-32"].num_latent_tokens == 32 and PRESETS["flextok-256"].codebook_size == 64000


# --------------------------------------------------------------------------------------------------------------------
# Our ViT block against timm's (checkpoints trained with timm's Block must load and give the same outputs)
# --------------------------------------------------------------------------------------------------------------------


class TimmBlocks(torch.nn.Sequential):
    """The previous encoder/decoder stacks: timm Blocks, all rows out, then the read-out rows."""

    def __init__(self, width, depth, heads, mlp_ratio, qk_norm, readout):
        from timm.models.vision_transformer import Block as TimmBlock

        assert readout == 1  # the plain stack

        super().__init__(*[TimmBlock(width, heads, mlp_ratio, qkv_bias=True, qk_norm=qk_norm) for _ in range(depth)])

    def forward(self, x, rows=None):
        out = super().forward(x)
        return out if rows is None else out[:, rows]


@pytest.mark.parametrize("qk_norm", [False, True])
def test_block_equals_timm_block(qk_norm):
    from timm.models.vision_transformer import Block as TimmBlock

    torch.manual_seed(0)
    ours = Block(64, 4, 4.0, qk_norm)
    torch.manual_seed(0)
    theirs = TimmBlock(64, 4, 4.0, qkv_bias=True, qk_norm=qk_norm)
    mine, timm_state = ours.state_dict(), theirs.state_dict()
    assert [(k, v.shape) for k, v in mine.items()] == [(k, v.shape) for k, v in timm_state.items()]
    assert all(torch.equal(mine[k], timm_state[k]) for k in mine)  # same initialisation from the same seed
    for p in ours.parameters():  # move every weight (norms, biases) away from its init
        p.data.add_(0.1 * torch.randn_like(p))
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(3, 20, 64)
    want = theirs(x)
    torch.testing.assert_close(ours(x), want, atol=1e-6, rtol=1e-6)  # training path: the same ops
    with torch.no_grad():  # CPU inference path: fused oneDNN linear + GELU / + residual
        torch.testing.assert_close(ours(x), want, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(ours(x, rows=slice(12, None)), want[:, 12:], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(ours(x, rows=slice(0, 5)), want[:, :5], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("readout", [1, 2, 3])
@pytest.mark.parametrize("rows", [slice(12, None), slice(0, 12)], ids=["suffix", "prefix"])
def test_readout_blocks_update_only_the_read_rows(readout, rows):
    """The last `readout` blocks: the read rows as a full block computes them, the other rows frozen at their input
    to the first read-out block (keys and values only); with grad and without, and gradients reach the frozen rows
    through the keys and values."""
    torch.manual_seed(0)
    blocks = Blocks(32, 3, 4, 4.0, False, readout)
    x = torch.randn(2, 20, 32, requires_grad=True)

    def spec(x):
        for i, block in enumerate(blocks):
            full = block(x)  # (B, N, D): every row updated ...
            if i >= len(blocks) - readout:  # ... but only the read rows are kept
                full = torch.cat([x[:, :rows.start or 0], full[:, rows], x[:, rows.stop or x.shape[1]:]], dim=1)
            x = full
        return x[:, rows]

    want = spec(x)
    got = blocks(x, rows)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    grad_want, = torch.autograd.grad(want.square().sum(), x)
    grad_got, = torch.autograd.grad(got.square().sum(), x)
    torch.testing.assert_close(grad_got, grad_want, atol=1e-4, rtol=1e-4)
    assert grad_got[:, 12:].abs().sum() > 0 and grad_got[:, :12].abs().sum() > 0  # both kinds of rows learn
    with torch.no_grad():
        torch.testing.assert_close(blocks(x, rows), want, atol=1e-5, rtol=1e-5)
    if readout > 1:  # not the plain stack: the frozen rows really are frozen
        plain = Blocks(32, 3, 4, 4.0, False, 1)
        plain.load_state_dict(blocks.state_dict())
        assert (plain(x, rows) - got).abs().max() > 1e-3


def test_readout_blocks_are_checked():
    with pytest.raises(ValueError, match="enc_readout_blocks must be in 1..enc_depth = 4"):
        TokenizerConfig(enc_depth=4, enc_readout_blocks=5)
    with pytest.raises(ValueError, match="dec_readout_blocks"):
        TokenizerConfig(dec_readout_blocks=0)
    with pytest.raises(ValueError, match="needs the rows"):  # a read-out stack has no all-rows output
        Blocks(32, 2, 4, 4.0, False, readout=2)(torch.randn(1, 5, 32))


def test_fingerprint_leaves_out_later_fields_at_their_old_values():
    """Read-out blocks at 1 build the models made before the field existed: their fingerprints (named by every .otok
    file and by the built-in prior, tests/test_builtin_codec.py) stay; another value is another tokenizer."""
    import dataclasses

    from onetok.tokenizers.registry import fingerprint

    torch.manual_seed(0)
    tok = Tokenizer(preset("tiny", enc_depth=2, dec_depth=2))
    before = fingerprint(tok)
    tok.config = dataclasses.replace(tok.config, dec_readout_blocks=2)
    assert fingerprint(tok) != before
    tok.config = dataclasses.replace(tok.config, dec_readout_blocks=1)
    assert fingerprint(tok) == before


COMPAT_CONFIGS = {
    "tiny vq": preset("tiny"),
    "shapes recipe": preset("shapes"),
    "titok-like head, qk norm, conv stem": preset("tiny", head_channels=8, refine_layers=1, qk_norm=True,
                                                  stem_channels=8, dec_patch_size=2, quantizer="lfq", code_dim=6),
    "conv upsampler, latent bn": preset("tiny", upsample_channels=4, latent_batchnorm=True, token_mixing=True),
}


@pytest.mark.parametrize("name", sorted(COMPAT_CONFIGS))
def test_tokenizer_state_dict_and_outputs_equal_the_timm_version(name, monkeypatch):
    """Same seed -> identical state dicts (keys, shapes, values); the same weights -> the same encode/decode and
    training forward within fp32 tolerance."""
    import onetok.tokenizers.model as tokenizer_model

    cfg = COMPAT_CONFIGS[name]
    torch.manual_seed(0)
    ours = Tokenizer(cfg)
    with monkeypatch.context() as m:
        m.setattr(tokenizer_model, "Blocks", TimmBlocks)
        torch.manual_seed(0)
        theirs = Tokenizer(cfg)
    mine, timm_state = ours.state_dict(), theirs.state_dict()
    assert [(k, v.shape) for k, v in mine.items()] == [(k, v.shape) for k, v in timm_state.items()]
    assert all(torch.equal(mine[k], timm_state[k]) for k in mine)
    x = images(4, cfg.image_size)
    torch.manual_seed(1)
    train_ours = ours.train()(x, keep=torch.tensor([1, 3, 8, 8]))
    torch.manual_seed(1)
    train_theirs = theirs.train()(x, keep=torch.tensor([1, 3, 8, 8]))
    torch.testing.assert_close(train_ours.reconstruction, train_theirs.reconstruction, atol=1e-5, rtol=1e-5)
    ids = theirs.encode(x)
    assert torch.equal(ours.encode(x), ids)
    for k in (2, 8):
        torch.testing.assert_close(ours.decode(ids[:, :k]), theirs.decode(ids[:, :k]), atol=1e-5, rtol=1e-5)


# --------------------------------------------------------------------------------------------------------------------
# Quantizers
# --------------------------------------------------------------------------------------------------------------------


def test_vq_indices_match_vector_quantize_pytorch():
    from vector_quantize_pytorch import VectorQuantize

    ours = VectorQuantizer(dim=8, codebook_size=64).eval()
    theirs = VectorQuantize(dim=8, codebook_size=64, use_cosine_sim=True).eval()
    with torch.no_grad():
        # vector-quantize-pytorch keeps its cosine codebook l2-normalised; ours normalises on use
        theirs._codebook.embed.copy_(ours.normalized_codebook()[None])  # (1, K, D): one head
    z = torch.randn(4, 50, 8)
    _, their_indices, _ = theirs(z)
    assert torch.equal(ours(z).indices, their_indices)


def test_vq_losses_and_straight_through():
    vq = VectorQuantizer(dim=8, codebook_size=16, commitment_weight=0.25).train()
    z = torch.randn(2, 10, 8, requires_grad=True)
    out = vq(z)
    zn = torch.nn.functional.normalize(z.detach(), dim=-1)
    zq = vq.codes_from_indices(out.indices)
    torch.testing.assert_close(out.quantized, zq)  # forward value is the code
    mse = (zn - zq).pow(2).mean()
    torch.testing.assert_close(out.breakdown["commitment"], 0.25 * mse)
    torch.testing.assert_close(out.breakdown["codebook"], mse)
    (out.quantized.sum() + out.loss).backward()  # the codebook learns through the codebook loss only
    assert z.grad.abs().sum() > 0 and vq.codebook.grad.abs().sum() > 0


def test_vq_dead_code_restart():
    torch.manual_seed(1)
    vq = VectorQuantizer(dim=4, codebook_size=32, dead_code_threshold=0.6, usage_decay=0.5).train()
    z = torch.nn.functional.normalize(torch.randn(1, 8, 4), dim=-1)
    before = vq.codebook.detach().clone()
    vq(z)
    replaced = ~(vq.codebook == before).all(dim=1)
    assert 20 <= int(replaced.sum()) <= 32  # at most 8 codes were used, the rest were dead
    new = torch.nn.functional.normalize(vq.codebook[replaced].detach(), dim=-1)
    assert (new @ z[0].T).max(dim=1).values.min() > 0.99  # restarted at batch latents


@pytest.mark.parametrize("kind", sorted(QUANTIZERS))
def test_quantizer_runs_fp32_under_autocast(kind):
    tok = tiny(kind)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = tok.quantizer(torch.randn(2, 8, tok.config.code_dim).bfloat16())
    assert out.quantized.dtype == torch.float32


# --------------------------------------------------------------------------------------------------------------------
# Losses and metrics
# --------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("recon", ["l1", "l2"])
def test_generator_loss_breakdown(recon):
    loss = TokenizerLoss(recon=recon, quantizer_weight=2.0)
    pred, target = torch.full((2, 3, 8, 8), 0.25), torch.full((2, 3, 8, 8), 0.75)
    out = loss.generator_loss(pred, target, torch.tensor(0.5), step=0)
    assert set(out.parts) == {"recon", "quantizer"}
    expected = 0.5 if recon == "l1" else 0.25
    torch.testing.assert_close(out.parts["recon"], torch.tensor(expected))
    torch.testing.assert_close(out.total, torch.tensor(expected + 1.0))


def test_gan_and_perceptual_terms():
    feature_net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU())
    loss = TokenizerLoss(perceptual_weight=0.5, perceptual_net=feature_net, gan_weight=0.1, gan_start=10,
                         disc_channels=8, disc_layers=2)
    last = torch.nn.Conv2d(3, 3, 1)
    target = torch.rand(2, 3, 32, 32)
    pred = last(torch.rand(2, 3, 32, 32))
    early = loss.generator_loss(pred, target, torch.tensor(0.0), step=9, last_layer=last.weight)
    assert set(early.parts) == {"recon", "quantizer", "perceptual"} and early.parts["perceptual"] > 0
    late = loss.generator_loss(pred, target, torch.tensor(0.0), step=10, last_layer=last.weight)
    assert {"gan", "gan_adaptive_weight"} <= set(late.parts) and late.parts["gan_adaptive_weight"] > 0
    late.total.backward()
    assert all(p.grad is None for p in loss.discriminator.parameters())  # generator step leaves D alone
    disc = loss.discriminator_loss(pred, target)
    disc.total.backward()
    assert all(p.grad is not None for p in loss.discriminator.parameters())
    assert all(p.grad is None for p in feature_net.parameters())
    with pytest.raises(ValueError, match="perceptual_net"):
        TokenizerLoss(perceptual_weight=1.0)


def test_psnr_and_codebook_metrics():
    a = torch.zeros(2, 3, 4, 4)
    b = a.clone()
    b[0] += 0.1
    b[1] += 0.01
    torch.testing.assert_close(psnr(a, b), torch.tensor([20.0, 40.0]))
    assert math.isinf(float(psnr(a, a)[0]))
    counts = code_counts(torch.tensor([[0, 1], [1, 3]]), codebook_size=8)
    assert counts.tolist() == [1, 2, 0, 1, 0, 0, 0, 0]
    assert codebook_usage(counts) == 3 / 8
    assert perplexity(torch.tensor([5, 5, 5, 5])) == pytest.approx(4.0)
    assert perplexity(torch.tensor([7, 0, 0])) == pytest.approx(1.0)


def test_bench_tokenizer_stages_and_missing_reference(tmp_path, capsys):
    from onetok.scripts.cli import main

    assert main(["bench", "tokenizer", "--preset", "tiny", "--rounds", "1", "--no-gpu", "--json",
                 "--reference", str(tmp_path / "absent")]) == 0
    out = capsys.readouterr()
    report = json.loads(out.out)
    cpu = report["devices"][0]
    assert cpu["dtype"] == "float32" and cpu["encode_images_per_s"] > 0 and cpu["decode_images_per_s"] > 0
    assert set(cpu["stage_ms"]) == {"patch embed", "encoder", "quantize", "decoder", "pixel head"}
    assert "reference" not in report and "skipped" in out.err  # no checkout: the side-by-side part is skipped
    (tmp_path / "empty").mkdir()
    assert main(["bench", "tokenizer", "--preset", "tiny", "--rounds", "1", "--no-gpu",
                 "--reference", str(tmp_path / "empty")]) == 2  # not a 1d-tokenizer checkout: one-line error


def test_bf16_inference_dtype_keeps_the_quantizer_in_fp32():
    tok = tiny()
    x = images(2)
    assert tok.compute_dtype(torch.device("cpu")) == torch.float32
    assert tok.compute_dtype(torch.device("cuda")) == torch.bfloat16  # the default on a GPU
    ids = tok.encode(x)
    tok.inference_dtype = torch.bfloat16
    half = tok.encode(x)
    assert half.dtype == torch.int64 and (half == ids).float().mean() > 0.5
    rec = tok.decode(ids)
    assert rec.dtype == torch.float32
    tok.inference_dtype = None
    torch.testing.assert_close(rec, tok.decode(ids), atol=0.05, rtol=0)
