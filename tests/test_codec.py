"""The version-1 `.otok` format (bit packing, layout, every reader error), the tokenizer fingerprint, the exact
image round trip of legacy square files through a tiny tokenizer, and the rate-distortion helpers (SSIM, BD-rate,
rows and report). The tiled version 2 is tested in test_tiled_codec.py."""

import io
import math
import struct
import tracemalloc
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from onetok.data.pixels import from_hwc, to_hwc
from onetok.metrics import ssim
from onetok.tokenizers import PRESETS, Tokenizer
from onetok.tokenizers.codec import codec as C
from onetok.tokenizers.codec import format as otok
from onetok.tokenizers.codec import rd
from onetok.tokenizers.codec.format import OtokError, OtokFile
from onetok.tokenizers.registry import fingerprint

FP = bytes(range(16))


def _file(codebook_size=64, n=2, k=5, fit="pad", seed=0) -> OtokFile:
    rng = np.random.default_rng(seed)
    sizes = tuple((int(w), int(h)) for w, h in rng.integers(1, 500, (n, 2)))
    return OtokFile(FP, codebook_size, 16, fit, sizes, rng.integers(0, codebook_size, (n, k)))


def _with_crc(body: bytes) -> bytes:
    return body + struct.pack("<I", zlib.crc32(body))


def _patch(data: bytes, offset: int, fmt: str, value: int) -> bytes:
    """Overwrite one header field and re-compute the CRC, so only the field check can catch it."""
    buf = bytearray(data[:-4])
    struct.pack_into(fmt, buf, offset, value)
    return _with_crc(bytes(buf))


@pytest.fixture(scope="module")
def tok():
    torch.manual_seed(0)
    return Tokenizer(PRESETS["tiny"]).eval()


@pytest.fixture(scope="module")
def squares(tok):
    rng = np.random.default_rng(1)
    S = tok.image_size
    out = [rng.integers(0, 256, (S, S, 3), dtype=np.uint8) for _ in range(3)]
    out[1][:, : S // 2] = 0  # some structure, so ids differ between images
    out[2][:] = np.linspace(0, 255, S, dtype=np.uint8)[:, None, None]
    return out


# --------------------------------------------------------------------------------------------------------------------
# bit packing and layout
# --------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("codebook_size", [2, 3, 64, 1000, 4096, 2**20 + 1, 2**32 - 1])
@pytest.mark.parametrize("n,k", [(1, 1), (2, 7), (3, 33)])
def test_pack_roundtrip(codebook_size, n, k):
    bits = otok.bits_per_id(codebook_size)
    assert 2**(bits - 1) < codebook_size <= 2**bits
    ids = np.random.default_rng(0).integers(0, codebook_size, (n, k))
    ids[0, 0] = codebook_size - 1
    packed = otok.pack_ids(ids, bits)
    assert len(packed) == n * math.ceil(k * bits / 8)
    np.testing.assert_array_equal(otok.unpack_ids(packed, n, k, bits), ids)


def test_pack_is_msb_first_and_zero_padded():
    assert otok.pack_ids(np.array([[1, 2, 3]]), 2) == bytes([0b01101100])
    assert otok.pack_ids(np.array([[5, 1]]), 3) == bytes([0b10100100])
    assert otok.pack_ids(np.array([[1], [2]]), 3) == bytes([0b00100000, 0b01000000])  # byte-aligned per image


def test_layout_matches_the_spec():
    """The byte layout of docs/format.md, built by hand."""
    f = OtokFile(FP, 64, 16, "crop", ((40, 20),), np.array([[1, 2, 63, 0]]))
    body = (b"OTOK" + bytes([1, 0]) + FP + struct.pack("<IHHBI", 64, 16, 4, 6, 1) + struct.pack("<HH", 40, 20)
            + bytes([0b00000100, 0b00101111, 0b11000000]))
    assert otok.dumps(f) == _with_crc(body)
    assert otok.HEADER_BYTES == 35


@pytest.mark.parametrize("n,k,codebook_size", [(1, 1, 2), (1, 8, 64), (3, 5, 4096), (2, 16, 1000)])
def test_file_size_formula(n, k, codebook_size):
    f = _file(codebook_size, n, k)
    size = otok.file_size(n, k, codebook_size)
    bits = math.ceil(math.log2(codebook_size))
    assert len(otok.dumps(f)) == size.total == 35 + 4 * n + n * math.ceil(k * bits / 8) + 4
    assert (size.header, size.payload, size.crc) == (35 + 4 * n, n * math.ceil(k * bits / 8), 4)


def test_dumps_loads_roundtrip():
    f = _file(4096, 3, 7, fit="crop")
    g = otok.loads(otok.dumps(f), FP)
    assert (g.fingerprint, g.codebook_size, g.image_size, g.fit, g.sizes) == (FP, 4096, 16, "crop", f.sizes)
    np.testing.assert_array_equal(g.ids, f.ids)
    assert otok.loads(otok.dumps(f)).num_images == 3  # no fingerprint given: not checked


def test_select_and_concat():
    f = _file(64, 3, 4)
    parts = [f.select(slice(i, i + 1)) for i in range(3)]
    assert otok.dumps(otok.concat(parts)) == otok.dumps(f)
    with pytest.raises(OtokError, match="cannot batch"):
        otok.concat([parts[0], _file(64, 1, 5)])


# --------------------------------------------------------------------------------------------------------------------
# reader errors
# --------------------------------------------------------------------------------------------------------------------


GOOD = otok.dumps(_file(64, 2, 5))


@pytest.mark.parametrize("data,message", [
    (b"", "truncated"),
    (b"PNG\x89" + GOOD[4:], "bad magic"),
    (b"\x89PNG\r\n\x1a\n", "bad magic"),
    (GOOD[:4] + bytes([3]) + GOOD[5:], "unsupported format version 3"),
    (GOOD[:20], "truncated file"),
    (GOOD[:-1], "truncated file"),
    (GOOD + b"\0", "trailing bytes"),
    (GOOD[:-1] + bytes([GOOD[-1] ^ 1]), "CRC mismatch"),
    (GOOD[:40] + bytes([GOOD[40] ^ 0x80]) + GOOD[41:], "CRC mismatch"),
    (_patch(GOOD, 5, "<B", 7), "unknown fit mode 7"),
    (_patch(GOOD, 30, "<B", 5), "5 bits per id does not match codebook size 64"),
    (_patch(GOOD, 30, "<B", 0), "out of range 1..32"),
    (_patch(GOOD, 22, "<I", 1), "does not match codebook size 1"),
    (_patch(GOOD, 31, "<I", 0), "empty file"),
    (_patch(GOOD, 28, "<H", 0), "empty file"),
    (_patch(GOOD, 35, "<H", 0), "image size 0x"),
    (_patch(GOOD, 26, "<H", 0), "coded image size 0"),
    (_patch(GOOD, 31, "<I", 3), "truncated file"),
], ids=["empty", "magic", "png", "version", "short-header", "short-crc", "trailing", "crc", "crc-payload", "fit",
        "bits", "zero-bits", "codebook", "zero-count", "zero-tokens", "zero-width", "zero-size", "count-mismatch"])
def test_reader_rejects(data, message):
    with pytest.raises(OtokError, match=message):
        otok.loads(data, FP)


def test_reader_rejects_ids_beyond_codebook():
    f = _file(40, 1, 3)  # 6 bits per id hold 0..63, but only 0..39 are codes
    data = bytearray(otok.dumps(f)[:-4])
    data[39:42] = otok.pack_ids(np.array([[1, 45, 2]]), 6)
    with pytest.raises(OtokError, match="token id 45 out of range for codebook size 40"):
        otok.loads(_with_crc(bytes(data)), FP)


def test_reader_rejects_nonzero_padding():
    data = bytearray(GOOD[:-4])
    data[-1] |= 1  # 5 ids x 6 bits = 30 bits in 4 bytes: the last 2 bits are padding
    with pytest.raises(OtokError, match="padding"):
        otok.loads(_with_crc(bytes(data)), FP)


def test_reader_rejects_other_tokenizer():
    with pytest.raises(OtokError, match="different tokenizer"):
        otok.loads(GOOD, bytes(16))


def test_huge_length_fields_allocate_nothing():
    """Maximal count, tokens and bits with a valid CRC: rejected from the byte count alone."""
    data = _patch(_patch(_patch(_patch(GOOD, 31, "<I", 2**32 - 1), 28, "<H", 2**16 - 1), 30, "<B", 32),
                  22, "<I", 2**32 - 1)
    tracemalloc.start()
    try:
        with pytest.raises(OtokError, match="truncated file"):
            otok.loads(data, FP)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 64 * 1024


def test_writer_rejects_bad_contents():
    f = _file(64, 2, 3)
    for bad in (
        OtokFile(FP, 64, 16, "pad", f.sizes, f.ids + 64),
        OtokFile(FP, 64, 16, "pad", f.sizes, f.ids - 64),
        OtokFile(FP, 64, 16, "pad", f.sizes[:1], f.ids),
        OtokFile(FP, 64, 16, "fill", f.sizes, f.ids),
        OtokFile(FP[:8], 64, 16, "pad", f.sizes, f.ids),
        OtokFile(FP, 64, 16, "pad", ((0, 5), (5, 5)), f.ids),
        OtokFile(FP, 1, 16, "pad", f.sizes, f.ids * 0),
    ):
        with pytest.raises(OtokError):
            otok.dumps(bad)


# --------------------------------------------------------------------------------------------------------------------
# fingerprint and the image round trip
# --------------------------------------------------------------------------------------------------------------------


def test_fingerprint(tok, tmp_path):
    fp = fingerprint(tok)
    assert len(fp) == 16 and fingerprint(tok) == fp
    tok.save_pretrained(tmp_path / "tok")
    assert fingerprint(Tokenizer.from_pretrained(tmp_path / "tok")) == fp
    other = Tokenizer.from_pretrained(tmp_path / "tok")
    with torch.no_grad():
        w = next(other.parameters())
        w.view(-1)[0] = torch.nextafter(w.view(-1)[0], torch.tensor(math.inf))  # one ulp in one weight
    assert fingerprint(other) != fp
    torch.manual_seed(0)
    renamed = Tokenizer(PRESETS["tiny"])
    renamed.load_state_dict(tok.state_dict())
    renamed.config.full_length_prob = 0.5  # config only
    assert fingerprint(renamed) != fp


def test_roundtrip_equals_tokenizer_for_every_k(tok, squares):
    """A version-1 file decodes to exactly tok.decode(tok.encode(x, k)), and has the promised size."""
    images = [Image.fromarray(sq) for sq in squares]
    x = from_hwc(squares)  # (3, 3, S, S)
    fp = fingerprint(tok)
    bits = otok.bits_per_id(tok.codebook_size)
    for k in range(1, tok.num_latent_tokens + 1):
        data = otok.dumps(C.encode_squares(tok, images, k))
        assert len(data) == 35 + 3 * 4 + 3 * math.ceil(k * bits / 8) + 4
        expected = tok.decode(tok.encode(x, k))
        f = otok.loads(data, fp)
        assert f.num_tokens == k
        decoded = C.Codec(tok).decompress(data)
        np.testing.assert_array_equal(np.stack([np.asarray(im) for im in decoded]), to_hwc(expected))
        single = otok.dumps(C.encode_squares(tok, images[:1], k))
        assert len(single) == 39 + math.ceil(k * bits / 8) + 4
    assert len({otok.dumps(C.encode_squares(tok, [im])) for im in images}) > 1  # the ids depend on the image


def test_decompress_with_wrong_tokenizer(tok, squares):
    data = otok.dumps(C.encode_squares(tok, [Image.fromarray(squares[0])], 4))
    torch.manual_seed(1)
    with pytest.raises(OtokError, match="different tokenizer"):
        C.Codec(Tokenizer(PRESETS["tiny"]).eval()).decompress(data)


@pytest.mark.parametrize("fit", ["pad", "crop"])
@pytest.mark.parametrize("size", [(16, 16), (40, 20), (13, 31), (5, 1)])
def test_non_square_sizes_are_restored(tok, fit, size):
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    f = C.encode_squares(tok, [image], 3, fit)
    assert f.sizes == (size,) and f.fit == fit
    [decoded] = C.Codec(tok).decompress(otok.dumps(f))
    assert decoded.size == size and decoded.mode == "RGB"


def test_fit_geometry_is_exact_without_resampling():
    rng = np.random.default_rng(0)
    wide = rng.integers(0, 256, (8, 16, 3), dtype=np.uint8)  # H=8, W=16 into S=16
    padded = C.fit_square(Image.fromarray(wide), 16, "pad")
    np.testing.assert_array_equal(padded[4:12], wide)  # letterboxed in the middle
    np.testing.assert_array_equal(padded[:4], np.repeat(wide[:1], 4, axis=0))  # edge padding
    np.testing.assert_array_equal(np.asarray(C.restore_size(padded, 16, 8, "pad")), wide)
    tall = rng.integers(0, 256, (32, 16, 3), dtype=np.uint8)  # H=32, W=16
    cropped = C.fit_square(Image.fromarray(tall), 16, "crop")
    np.testing.assert_array_equal(cropped, tall[8:24])
    restored = np.asarray(C.restore_size(cropped, 16, 32, "crop"))
    np.testing.assert_array_equal(restored[8:24], tall[8:24])  # the coded centre, in place
    np.testing.assert_array_equal(restored[:8], np.repeat(tall[8:9], 8, axis=0))  # never coded: edge fill


# --------------------------------------------------------------------------------------------------------------------
# rate-distortion helpers
# --------------------------------------------------------------------------------------------------------------------


def _ssim_loop(a: np.ndarray, b: np.ndarray) -> float:
    """Direct per-window SSIM (11x11 Gaussian, sigma 1.5) of two (H, W) float64 images, written independently."""
    x = np.arange(11) - 5
    g = np.exp(-(x**2) / (2 * 1.5**2))
    w = np.outer(g, g) / np.outer(g, g).sum()
    c1, c2 = 0.01**2, 0.03**2
    vals = []
    for i in range(a.shape[0] - 10):
        for j in range(a.shape[1] - 10):
            pa, pb = a[i:i + 11, j:j + 11], b[i:i + 11, j:j + 11]
            ma, mb = (w * pa).sum(), (w * pb).sum()
            va, vb = (w * (pa - ma) ** 2).sum(), (w * (pb - mb) ** 2).sum()
            cov = (w * (pa - ma) * (pb - mb)).sum()
            vals.append((2 * ma * mb + c1) * (2 * cov + c2) / ((ma**2 + mb**2 + c1) * (va + vb + c2)))
    return float(np.mean(vals))


def test_ssim_matches_direct_definition():
    rng = np.random.default_rng(0)
    a = rng.random((2, 3, 16, 14))
    b = np.clip(a + 0.1 * rng.standard_normal(a.shape), 0, 1)
    got = ssim(torch.from_numpy(a), torch.from_numpy(b))
    for i in range(2):
        want = np.mean([_ssim_loop(a[i, c], b[i, c]) for c in range(3)])
        assert got[i].item() == pytest.approx(want, abs=1e-5)


def test_ssim_properties():
    rng = np.random.default_rng(0)
    a = torch.from_numpy(rng.random((2, 3, 12, 12)))
    assert torch.allclose(ssim(a, a), torch.ones(2))
    noisy = (a + 0.2 * torch.randn_like(a)).clamp(0, 1)
    assert torch.allclose(ssim(a, noisy), ssim(noisy, a))
    assert (ssim(a, noisy) < 0.9).all()
    flat_a, flat_b = torch.full((1, 3, 16, 16), 0.2), torch.full((1, 3, 16, 16), 0.6)
    c1 = 0.01**2
    # float32 (torchmetrics' fast path): the closed form holds to ~1e-4
    assert ssim(flat_a, flat_b).item() == pytest.approx((2 * 0.2 * 0.6 + c1) / (0.2**2 + 0.6**2 + c1), rel=2e-4)
    assert ssim(a[:, :, :5, :7], a[:, :, :5, :7]).shape == (2,)  # smaller than the window


def test_fixed_token_counts():
    assert rd.fixed_token_counts(8) == (1, 2, 4, 8)
    assert rd.fixed_token_counts(12) == (1, 2, 4, 8, 12)
    assert rd.fixed_token_counts(1) == (1,)


def _points(name, bpps, psnrs):
    return [rd.RDPoint(name, 0, 0, b, p, 0) for b, p in zip(bpps, psnrs)]


def test_bd_rate_closed_forms():
    """A curve that needs exactly 0.7x the rate at every PSNR is at -30%; identical curves at 0; disjoint NaN."""
    psnrs = [20.0, 22.0, 24.0, 26.0, 28.0]
    ref = _points("jpeg", [0.1 * 1.5**i for i in range(5)], psnrs)
    cheaper = _points("otok", [0.07 * 1.5**i for i in range(5)], psnrs)
    assert rd.bd_rate(ref, cheaper) == pytest.approx(-30.0, abs=1e-6)
    assert rd.bd_rate(cheaper, ref) == pytest.approx(100 / 0.7 - 100, abs=1e-6)
    assert rd.bd_rate(ref, ref) == pytest.approx(0.0, abs=1e-9)
    assert math.isnan(rd.bd_rate(ref, _points("otok", [0.1, 0.2], [40.0, 41.0])))
    shifted = _points("otok", [0.1 * 1.5**i for i in range(5)], [p + 1 for p in psnrs])  # better: fewer bits
    assert rd.bd_rate(ref, shifted) < 0


def test_evaluate_rows_and_report(tok, tmp_path):
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for w, h in [(40, 24), (17, 33)]]
    packed = C.Codec(tok)
    rows = rd.evaluate(packed, ["a", "b"], images, bpps=(0.5, 2.0), codecs=("jpeg",))
    tokens = rd.fixed_token_counts(tok.num_latent_tokens)
    assert len(rows) == 2 * (len(tokens) + 2 + len(rd.JPEG_QUALITIES))
    for row in rows:
        assert row.bpp == pytest.approx(8 * row.bytes / (row.width * row.height))
        if row.codec == "otok":
            assert row.bpp <= row.setting or row.setting == 0.5  # 0.5 bpp is below 1 token per tile here
        if row.codec == "otok-fixed":
            f = packed.file([packed.encode(images[row.image == "b"], C.RateControl(tokens=row.setting)).image])
            assert row.bytes == len(otok.dumps(f))
    jpeg = next(r for r in rows if r.codec == "jpeg" and r.image == "a" and r.setting == 50)
    size, decoded = rd.pillow_roundtrip(np.asarray(images[0]), "jpeg", 50)
    assert (jpeg.bytes, jpeg.psnr) == (size, rd.psnr(np.asarray(images[0]), decoded))
    points = rd.summarize(rows)
    assert {p.codec for p in points} == {"otok", "otok-fixed", "jpeg"}
    rd.write_csv(rows, tmp_path / "rd.csv")
    assert (tmp_path / "rd.csv").read_text().splitlines()[0] == ",".join(rd.CSV_FIELDS)
    rd.plot(points, tmp_path / "rd.png")
    assert Image.open(tmp_path / "rd.png").format == "PNG"
    assert len(rd.format_table(points).splitlines()) == 1 + len(points)
    assert set(rd.bd_rates(points)) == {"otok vs otok-fixed", "otok vs jpeg"}
    panels = rd.equal_bytes(packed, images[0], 1.0, ("jpeg",))
    assert [p[0] for p in panels] == ["original", "otok", "jpeg"]
    rd.plot_equal_bytes(panels, tmp_path / "eq.png")
    assert Image.open(tmp_path / "eq.png").format == "PNG"


def test_pillow_roundtrip_decodes():
    sq = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    for fmt in rd.pillow_codecs():
        n, decoded = rd.pillow_roundtrip(sq, fmt, 90)
        assert decoded.shape == sq.shape and n > 0
    buf = io.BytesIO()
    Image.fromarray(sq).save(buf, format="JPEG", quality=95, optimize=True)
    assert rd.pillow_roundtrip(sq, "jpeg", 95)[0] == len(buf.getvalue())


def test_avif_is_available():
    """The RD report compares against AVIF: the Pillow the project requires must write it."""
    assert "avif" in rd.pillow_codecs()


def test_evaluate_with_a_prior_adds_the_bit_packed_curve(tok):
    """With a prior, the report also codes every target bit-packed from the same encoder pass: same token budget
    rule, the same decoder, so the difference in bytes is the entropy coder's alone."""
    from onetok.tokenizers.codec.prior import PRESETS as PRIOR_PRESETS
    from onetok.tokenizers.codec.prior import TilePrior

    if tok.codebook_size != PRIOR_PRESETS["tiny"].codebook_size:
        pytest.skip("the tiny prior is for a 64-code tokenizer")
    torch.manual_seed(0)
    owner = C.Codec(tok, TilePrior(PRIOR_PRESETS["tiny"]).eval())
    image = Image.fromarray(np.random.default_rng(1).integers(0, 256, (24, 40, 3), dtype=np.uint8))
    rows = rd.evaluate(owner, ["a"], [image], bpps=(1.0, 3.0), codecs=())
    packed = [r for r in rows if r.codec == "otok-packed"]
    assert [r.setting for r in packed] == [1.0, 3.0]
    analysis = owner.analyse(image).packed()
    assert analysis.codec.prior is None and analysis.tokenizer is tok
    f = analysis.codec.file([analysis.encode(C.RateControl(bpp=3.0)).image])
    assert packed[1].bytes == len(otok.dumps(f)) and f.images[0].__class__ is otok.TiledImage
    rates = rd.bd_rates(rd.summarize(rows))
    assert {"otok vs otok-packed", "otok vs otok-fixed"} <= set(rates)
