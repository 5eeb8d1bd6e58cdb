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
