"""The portable entropy coder (payload 2) decodes to the same ids on every kind of CPU kernel, thread count and matmul
precision; the float coder of onetok 0.1 (payload 1) does not.

A subprocess encodes a small photo with the built-in codec under torch's best CPU capability; subprocesses decode it
under ATEN_CPU_CAPABILITY=default and =avx2 (set before torch loads), each with 1 and 2 threads and float32 matmul
precision 'highest' and 'medium'. The same ids are also range-coded by the old float coder (payload 1, rebuilt
by `entropy.encode(float_coder=True)`, which only tests and benchmarks use) and decoded the same way: its frequencies
depend on the vector kernels, so some configuration fails to decode it (xfail, strict). Decoded pixels come from the
float decoder network and may differ by rounding: they must stay within PIXEL_TOLERANCE (docs/benchmarks.md).
Run as a script, this file is the worker: `python tests/test_portable_coder.py encode|decode OUT_DIR`.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

PIXEL_TOLERANCE = 2  # 8-bit levels: decoded pixels of one file on any two configurations (measured: docs/benchmarks.md)
CONFIGS = [(threads, precision) for threads in (1, 2) for precision in ("highest", "medium")]
CAPABILITIES = ("default", "avx2")


# --------------------------------------------------------------------------------------------------------------------
# The worker (runs in a subprocess)
# --------------------------------------------------------------------------------------------------------------------


def _codec():
    from onetok.tokenizers import Tokenizer
    from onetok.tokenizers.codec.codec import Codec
    from onetok.tokenizers.codec.prior import TilePrior
    from onetok.tokenizers.registry import builtin

    return Codec(Tokenizer.from_pretrained(builtin()).eval(), TilePrior.from_pretrained(builtin() / "prior"))


def encode(out: Path) -> None:
    """portable.otok (payload 2) and float.otok (payload 1) of the same ids: a 160 x 96 crop, per-tile counts."""
    from PIL import Image

    from onetok.data.images import sample_photo
    from onetok.tokenizers.codec import entropy
    from onetok.tokenizers.codec import format as otok
    from onetok.tokenizers.codec.codec import RateControl

    codec = _codec()
    image = Image.open(sample_photo()).convert("RGB").crop((220, 120, 380, 216))
    encoded = codec.encode(image, RateControl(psnr=27.0))
    (out / "portable.otok").write_bytes(otok.dumps(codec.file([encoded.image])))
    tiled = codec.ids(codec.file([encoded.image]), encoded.image)
    rows, cols = tiled.grid(codec.tokenizer.image_size)
    padded = np.zeros((len(tiled.counts), 32), dtype=np.int64)
    padded[np.arange(32)[None, :] < tiled.counts[:, None]] = tiled.ids
    words = entropy.encode(codec.prior, rows, cols, tiled.counts, padded, False, float_coder=True)
    coded = otok.CodedImage(tiled.width, tiled.height, tiled.coded_width, tiled.coded_height, 0, words,
                            otok.ids_checksum(tiled.counts, tiled.ids))
    legacy = otok.TiledFile(codec.fingerprint, 512, 32, 32, (coded,), codec.prior_fingerprint, float_coder=True)
    (out / "float.otok").write_bytes(otok.dumps(legacy))


def decode(out: Path) -> None:
    """Decode both files under every (threads, precision) of CONFIGS: results.json (ids or the error) + pixels."""
    import torch

    from onetok.tokenizers.codec import format as otok

    codec, results = _codec(), {}
    for name in ("portable", "float"):
        f = otok.loads((out.parent / "encoded" / f"{name}.otok").read_bytes())
        for threads, precision in CONFIGS:
            torch.set_num_threads(threads)
            torch.set_float32_matmul_precision(precision)
            key = f"{name} {threads} {precision}"
            try:
                ids = codec.ids(f, f.images[0])
                results[key] = ids.ids.tolist()
                if name == "portable":
                    np.save(out / f"{threads}_{precision}.npy", np.asarray(codec.decode_image(f, f.images[0])))
            except otok.OtokError as err:
                results[key] = str(err)
    results["capability"] = torch.backends.cpu.get_cpu_capability()
    (out / "results.json").write_text(json.dumps(results))


# --------------------------------------------------------------------------------------------------------------------
# The tests
# --------------------------------------------------------------------------------------------------------------------


TABLE_DIGEST = "ecc387e2bc4ae795df60347665a14d51c93d8c68ce46dbba5fc32f23fcdf3c8c"  # part of the format


def test_tables_are_the_format_s():
    from onetok.tokenizers.codec import fixedpoint as fx

    assert fx.table_digest() == TABLE_DIGEST
    exp, gelu = fx.exp_table(), fx.gelu_table()
    assert exp[0] == 65536 and exp[256] == round(65536 / 2.718281828459045) and exp[-1] == 0 and exp[-2] >= 1
    assert gelu[1024] == 0 and gelu[1024 + 256] == round(16384 * 0.8413447460685429)  # gelu(1) = Phi(1)


def test_integer_primitives_are_exact():
    import torch

    from onetok.tokenizers.codec import fixedpoint as fx

    rng = np.random.default_rng(0)
    x = rng.integers(0, 1 << 62, 2000, dtype=np.int64)
    roots = fx.isqrt(torch.from_numpy(x)).numpy()
    assert all(int(r) == math.isqrt(int(v)) for r, v in zip(roots, x))
    num = rng.integers(-(1 << 52), 1 << 52, 2000, dtype=np.int64)
    den = rng.integers(1, 1 << 26, 2000, dtype=np.int64)
    got = fx.floor_div(torch.from_numpy(num).double(), torch.from_numpy(den).double()).long().numpy()
    assert all(int(g) == int(n) // int(d) for g, n, d in zip(got, num, den))


def _tiny_prior(scale: float = 1.0):
    import torch

    from onetok.tokenizers.codec.prior import PRESETS, TilePrior

    torch.manual_seed(0)
    prior = TilePrior(PRESETS["tiny"]).eval()  # K = 64, L = 8
    with torch.no_grad():
        prior.head.weight.mul_(20 * scale)  # peaked, as a trained prior is
    return prior


def test_integer_frequencies_are_batch_and_thread_independent_and_track_the_float_prior():
    import torch

    from onetok.tokenizers.codec import fixedpoint as fx

    prior = _tiny_prior()
    integer = fx.IntegerPrior(prior)
    g = torch.Generator().manual_seed(1)
    context, ids = torch.randint(0, 65, (40, 8), generator=g), torch.randint(0, 64, (40, 8), generator=g)
    runs = []
    for threads, rows in ((1, slice(None)), (2, slice(None)), (1, slice(3, 4))):
        torch.set_num_threads(threads)
        freqs, cache = integer.prefill(context[rows])
        steps = [freqs] + [integer.step(ids[rows, i], cache)[0] for i in range(7)]
        runs.append(torch.stack(steps, 1))  # (B, L, K)
    assert torch.equal(runs[0], runs[1]) and torch.equal(runs[0][3:4], runs[2])
    freqs = runs[0]
    assert freqs.dtype == torch.int64 and freqs.min() >= 1 and (freqs.sum(-1) == 65536).all()
    with torch.no_grad():
        p = torch.softmax(prior(prior.sequence(context, ids)).double(), -1)  # (B, L, K)
    q = freqs.double() / 65536
    kl = (p * (p / q).log()).sum(-1).mean() / math.log(2)
    assert kl < 0.01  # bits per id lost to the integer arithmetic


def test_a_prior_that_does_not_fit_the_formats_is_refused():
    import torch

    from onetok.tokenizers.codec import fixedpoint as fx

    prior = _tiny_prior()
    with torch.no_grad():
        prior.blocks[0].mlp[0].weight[0, 0] = 1e6  # |w| * 2**s < 2**15 leaves no fraction bits for the output
    with pytest.raises(ValueError, match="integer prior"):
        fx.IntegerPrior(prior)


def test_recode_rewrites_a_float_coder_file_with_the_same_ids(tmp_path):
    from onetok.scripts.cli import main as onetok
    from onetok.tokenizers.codec import format as otok

    encode(tmp_path)  # float.otok: payload 1, written here, so it decodes here
    old = tmp_path / "float.otok"
    assert onetok(["recode", str(old), "-o", str(tmp_path / "new.otok")]) == 0
    codec = _codec()
    a, b = otok.loads(old.read_bytes()), otok.loads((tmp_path / "new.otok").read_bytes())
    assert (a.payload, b.payload) == ("float", "entropy")
    assert codec.ids(a, a.images[0]).ids.tolist() == codec.ids(b, b.images[0]).ids.tolist()
    assert np.array_equal(np.asarray(codec.decode(a)[0]), np.asarray(codec.decode(b)[0]))
    assert onetok(["recode", str(old), "-o", str(tmp_path / "new.otok")]) == 2  # exists: needs --force
    assert onetok(["recode", str(old), "-o", str(tmp_path / "new.otok"), "--force"]) == 0
    assert onetok(["recode", str(old), "-o", str(old), "--force"]) == 2  # never its input
    assert old.read_bytes() == otok.dumps(a)
    broken = tmp_path / "broken.otok"
    broken.write_bytes(old.read_bytes()[:-9] + bytes(9))
    assert onetok(["recode", str(broken), "-o", str(tmp_path / "x.otok")]) == 2 and not (tmp_path / "x.otok").exists()


def _run(mode: str, out: Path, capability: str | None) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("ATEN_CPU_CAPABILITY", "OMP_NUM_THREADS")}
    if capability is not None:
        env["ATEN_CPU_CAPABILITY"] = capability
    out.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, __file__, mode, str(out)], env=env, check=True, timeout=600)


@pytest.fixture(scope="module")
def decoded(tmp_path_factory):
    """{capability: results} for the files encoded under torch's best capability."""
    root = tmp_path_factory.mktemp("portable")
    _run("encode", root / "encoded", None)
    found = {}
    for capability in CAPABILITIES:
        _run("decode", root / capability, capability)
        found[capability] = json.loads((root / capability / "results.json").read_text())
    found["reference"] = (root / "encoded" / "portable.otok").read_bytes()
    found["root"] = root
    return found


def _expected_ids(decoded) -> list[int]:
    from onetok.tokenizers.codec import format as otok

    f = otok.loads(decoded["reference"])
    return _codec().ids(f, f.images[0]).ids.tolist()


def test_portable_coder_decodes_the_same_ids_everywhere(decoded):
    expected = _expected_ids(decoded)
    for capability in CAPABILITIES:
        for threads, precision in CONFIGS:
            assert decoded[capability][f"portable {threads} {precision}"] == expected, (capability, threads, precision)


def test_decoded_pixels_agree_within_the_tolerance(decoded):
    root = decoded["root"]
    pixels = [np.load(root / c / f"{t}_{p}.npy").astype(np.int16) for c in CAPABILITIES for t, p in CONFIGS]
    worst = max(int(np.abs(p - pixels[0]).max()) for p in pixels)
    assert worst <= PIXEL_TOLERANCE


@pytest.mark.xfail(strict=True, reason="the float coder's frequencies depend on the CPU kernels (why payload 2 exists)")
def test_float_coder_decodes_the_same_ids_everywhere(decoded):
    capabilities = {decoded[c]["capability"] for c in CAPABILITIES}
    if len(capabilities) < 2:  # e.g. a CPU without AVX2: nothing differs, so nothing can fail
        pytest.fail("only one CPU capability on this machine (counts as the expected failure)")
    expected = _expected_ids(decoded)
    for capability in CAPABILITIES:
        for threads, precision in CONFIGS:
            assert decoded[capability][f"float {threads} {precision}"] == expected, (capability, threads, precision)


def test_a_float_coder_file_that_does_not_decode_says_what_to_do(decoded):
    errors = [v for c in CAPABILITIES for k, v in decoded[c].items() if k.startswith("float") and isinstance(v, str)]
    for message in errors:
        assert "float coder of onetok <= 0.1" in message and "onetok recode" in message and "\n" not in message


if __name__ == "__main__":
    {"encode": encode, "decode": decode}[sys.argv[1]](Path(sys.argv[2]))
