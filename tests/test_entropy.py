"""Entropy coding of tile ids: the prior's incremental inference equals its training forward, the range-coded stream
decodes to exactly what was encoded (uniform and per-tile counts; encoded on 1 torch thread, decoded on 2), a wrong
stream is an OtokError, the cost estimate matches the stream, and whole images round trip bit-identically to the
bit-packed file. Encoding and decoding in separate processes, under other CPU kernels and thread counts:
tests/test_portable_coder.py."""

import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from onetok.tokenizers import PRESETS, Tokenizer
from onetok.tokenizers.codec import codec as C
from onetok.tokenizers.codec import entropy
from onetok.tokenizers.codec import format as otok
from onetok.tokenizers.codec.format import OtokError
from onetok.tokenizers.codec.prior import PRESETS as PRIOR_PRESETS
from onetok.tokenizers.codec.prior import WAVEFRONT_MASK, PriorConfig, TilePrior, neighbour_ids
from onetok.tokenizers.registry import fingerprint


@pytest.fixture(scope="module")
def tok():
    torch.manual_seed(0)
    return Tokenizer(PRESETS["tiny"]).eval()  # 16 px tiles, L = 8, K = 64


@pytest.fixture(scope="module")
def prior():
    torch.manual_seed(0)
    p = TilePrior(PRIOR_PRESETS["tiny"]).eval()  # K = 64, L = 8
    with torch.no_grad():  # a peaked, non-uniform model: bits differ between ids
        p.head.weight.mul_(40)
    return p


def _image(w, h, seed=0) -> Image.Image:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    smooth = np.stack([(xx * 7 + yy * 3) % 256, (yy * 5) % 256, (xx * 2) % 256], -1)
    return Image.fromarray(np.clip(smooth + rng.integers(-20, 20, (h, w, 3)), 0, 255).astype(np.uint8))


def test_incremental_inference_equals_the_training_forward(prior):
    ctx, ids = torch.randint(0, 65, (5, 8)), torch.randint(0, 64, (5, 8))
    with torch.no_grad():
        full = prior(prior.sequence(ctx, ids))  # (5, L, K)
        logits, cache = prior.prefill(ctx)
        steps = [logits] + [prior.step(ids[:, i], cache)[0] for i in range(7)]
    torch.testing.assert_close(torch.stack(steps, 1), full, atol=1e-5, rtol=1e-5)


def test_neighbour_ids_and_the_wavefront_mask():
    first = torch.arange(6).reshape(2, 3)  # ids 0..5 on a 2 x 3 grid
    ctx = neighbour_ids(first, 99)
    assert ctx[4].tolist() == [0, 1, 2, 3, 5, 99, 99, 99]  # tile (1, 1): up-left, up, up-right, left, right
    masked = neighbour_ids(first, 99, WAVEFRONT_MASK)
    assert masked[4].tolist() == [0, 1, 99, 3, 99, 99, 99, 99]  # only what a wavefront has decoded


@pytest.mark.parametrize("uniform", [False, True])
def test_stream_roundtrip_across_thread_counts(prior, uniform, monkeypatch):
    """Encoded on 1 torch thread, decoded on 2: the portable coder changes no thread count of its own."""
    rng = np.random.default_rng(0)
    rows, cols, L = 3, 5, 8
    counts = np.full(15, 4) if uniform else rng.integers(1, L + 1, 15)
    ids = rng.integers(0, 64, (15, L))
    flat = ids[np.arange(L)[None] < counts[:, None]]
    threads, set_threads = torch.get_num_threads(), torch.set_num_threads
    changes = []
    try:
        set_threads(1)
        monkeypatch.setattr(torch, "set_num_threads", lambda n: changes.append(n) or set_threads(n))
        words = entropy.encode(prior, rows, cols, counts, ids, uniform)
        set_threads(2)
        got_counts, got_ids = entropy.decode(prior, rows, cols, words, 4 if uniform else 0,
                                             otok.ids_checksum(counts, flat))
    finally:
        set_threads(threads)
    assert changes == []
    np.testing.assert_array_equal(got_counts, counts)
    np.testing.assert_array_equal(got_ids, flat)
    bits = entropy.estimate_bits(prior, rows, cols, ids)[np.arange(L)[None] < counts[:, None]].sum()
    if not uniform:
        bits += entropy.count_bits(counts, rows, cols, L)
    assert abs(32 * len(words) - bits) <= 64  # the estimate the rate control uses is the stream's size


def _stepwise_words(prior, rows, cols, counts, ids, uniform):
    """Payload 2 coded position by position (`first_pass` / `later_pass`, as the decoder reads it)."""
    import constriction

    coder = constriction.stream.queue.RangeEncoder()
    family = constriction.stream.model.Categorical(perfect=False)
    put = lambda f, s: coder.encode(s.astype(np.int32), family, f) or s  # noqa: E731
    if not uniform:
        entropy.count_pass(rows, cols, ids.shape[1], lambda t, f: int(put(f[None], counts[t:t + 1] - 1)[0]))
    model = entropy.portable(prior)
    with torch.inference_mode():
        first = entropy.first_pass(model, rows, cols, lambda tiles, i, f: put(f, ids[tiles, 0]))
        entropy.later_pass(model, first, counts, lambda tiles, i, f: put(f, ids[tiles, i]))
    return coder.get_compressed().astype(np.uint32)


@pytest.mark.parametrize("uniform", [False, True])
def test_teacher_forced_coding_writes_the_decoders_words(prior, uniform, monkeypatch):
    """The encoder runs the integer prior teacher-forced, tiles batched by count; the decoder goes position by
    position and drops finished tiles: the same frequencies, so the same words, across several CHUNKs and batches."""
    monkeypatch.setattr(entropy, "CHUNK", 4)  # several chunks of the third pass
    monkeypatch.setattr(entropy, "SCORE_TILES", 3)  # several teacher-forced batches per chunk
    rng = np.random.default_rng(3)
    rows, cols, L = 3, 5, 8
    ids = rng.integers(0, 64, (15, L))
    for _ in range(3):
        counts = np.full(15, int(rng.integers(1, L + 1))) if uniform else rng.integers(1, L + 1, 15)
        np.testing.assert_array_equal(entropy.encode(prior, rows, cols, counts, ids, uniform),
                                      _stepwise_words(prior, rows, cols, counts, ids, uniform))


def test_a_bpp_target_holds_for_the_coded_stream_when_the_estimate_runs_low(tok, prior, monkeypatch):
    """The float estimate only chooses counts; the coded stream is measured, and where it overshoots the target the
    counts are chosen again for a smaller one: the file fits even when the estimate is 40% low."""
    image, bpp = _image(45, 30), 0.8  # below the file with every id (1,336 bits)
    monkeypatch.setattr(C.rc, "decoder_measure", lambda *a: lambda tiles, counts: 1e4 / counts)  # more ids: better
    estimate, calls = entropy.estimate_bits, []
    monkeypatch.setattr(entropy, "estimate_bits", lambda *a: 0.6 * estimate(*a))
    encode = entropy.encode
    monkeypatch.setattr(entropy, "encode", lambda *a, **k: calls.append(1) or encode(*a, **k))
    enc = C.Codec(tok, prior).encode(image, C.RateControl(bpp=bpp))
    data = otok.dumps(C.Codec(tok, prior).file([enc.image]))
    assert enc.reached and 8 * len(data) <= bpp * 45 * 30 and len(calls) >= 2


def test_a_wrong_stream_is_an_error_not_a_picture(prior):
    rng = np.random.default_rng(1)
    counts, ids = rng.integers(1, 9, 6), rng.integers(0, 64, (6, 8))
    flat = ids[np.arange(8)[None] < counts[:, None]]
    words = entropy.encode(prior, 2, 3, counts, ids, False)
    checksum = otok.ids_checksum(counts, flat)
    bad = words.copy()
    bad[0] ^= np.uint32(1 << 20)
    for w, c in ((bad, checksum), (words, checksum ^ 1), (words[:-1], checksum)):
        with pytest.raises(OtokError, match="do not decode"):
            entropy.decode(prior, 2, 3, w, 0, c)


def test_prior_must_match_the_tokenizer(tok):
    with pytest.raises(ValueError, match="another tokenizer"):
        C.Codec(tok, TilePrior(PriorConfig(codebook_size=512, num_tokens=8, width=16, depth=1, heads=2)))
    other = TilePrior(PRIOR_PRESETS["tiny"])
    other.tokenizer_fingerprint = "00" * 16
    with pytest.raises(ValueError, match="another tokenizer"):
        C.Codec(tok, other)


@pytest.mark.parametrize("rate", [C.RateControl(), C.RateControl(tokens=3), C.RateControl(bpp=2.0),
                                  C.RateControl(psnr=14.0)], ids=["L", "k3", "bpp", "psnr"])
def test_entropy_coded_images_decode_like_bit_packed_ones(tok, prior, rate):
    image = _image(45, 30)
    packed, coded = C.Codec(tok), C.Codec(tok, prior)
    a, b = packed.compress([image], rate), coded.compress([image], rate)
    f = otok.loads(b, fingerprint(tok))
    assert f.payload == "entropy" and f.prior_fingerprint == fingerprint(prior)
    assert otok.dumps(f) == b
    np.testing.assert_array_equal(np.asarray(coded.decompress(b)[0]), np.asarray(packed.decompress(a)[0]))
    if rate.bpp:
        assert 8 * len(b) <= rate.bpp * 45 * 30
    with pytest.raises(OtokError, match="prior"):
        packed.decompress(b)  # no prior: cannot read the stream


def test_entropy_layout_and_reader_bounds(tok, prior):
    data = C.Codec(tok, prior).compress([_image(33, 17)], C.RateControl(tokens=5))
    assert data[5] == 2 and data[33:49] == fingerprint(prior)  # payload 2: the portable integer prior
    width, height, cw, ch, k, words = struct.unpack_from("<HHHHHI", data, 49)
    assert (width, height, cw, ch, k) == (33, 17, 33, 17, 5) and len(data) == 49 + 14 + 4 * words + 4 + 4
    huge = bytearray(data[:-4])
    struct.pack_into("<I", huge, 59, 0xFFFFFFFF)  # a word count far beyond the file
    with pytest.raises(OtokError, match="coder words cannot fit"):
        otok.loads(bytes(huge) + struct.pack("<I", zlib.crc32(bytes(huge))))


def test_prior_system_trains_and_exports(tok, tmp_path):
    from onetok.export import export
    from onetok.tokenizers.codec.prior_system import PriorSystem, TileIdsDataModule

    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(3):
        _image(40, 30, i).save(folder / f"{i}.png")
    tok.save_pretrained(tmp_path / "tok")
    import lightning

    dm = TileIdsDataModule(str(tmp_path / "tok"), str(folder), str(folder), scales=(1.0, 0.5), batch_size=8)
    system = PriorSystem("tiny")
    trainer = lightning.Trainer(max_steps=6, accelerator="cpu", logger=False, enable_progress_bar=False,
                                enable_model_summary=False, default_root_dir=tmp_path, val_check_interval=3,
                                num_sanity_val_steps=0)
    trainer.fit(system, dm)
    assert len(dm.train_set) == 3 * 2 * (6 + 2) and dm.train_set[0]["context"].shape == (8,)  # x flips, 2 scales
    assert 0 < trainer.callback_metrics["val/bits_per_id"] < 12
    ckpt = tmp_path / "prior.ckpt"
    trainer.save_checkpoint(ckpt)
    export(ckpt, tmp_path / "prior")
    loaded = TilePrior.from_pretrained(tmp_path / "prior")
    assert loaded.tokenizer_fingerprint == fingerprint(tok).hex()
    C.Codec(tok, loaded)  # accepted: same tokenizer
