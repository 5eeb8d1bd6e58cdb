"""Fuzz the `.otok` reader: 10,000 mutated, truncated or re-checksummed files per format version must each end in
`OtokError` or in a valid parse that re-serialises to the very same bytes; never another exception, a hang or a
large allocation."""

import time
import tracemalloc
import zlib

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from onetok.tokenizers.codec.format import (
    CRC_BYTES,
    HEADER_BYTES,
    CodedImage,
    OtokError,
    OtokFile,
    TiledFile,
    TiledImage,
    dumps,
    loads,
)

FP = bytes(range(16))
OTHER_FP = bytes(range(1, 17))


def _base_files() -> list[bytes]:
    rng = np.random.default_rng(0)
    files = []
    for codebook_size, n, k in [(64, 1, 8), (4096, 2, 5), (2, 3, 3), (1000, 1, 16), (5, 2, 1)]:
        ids = rng.integers(0, codebook_size, (n, k))
        sizes = tuple((int(w), int(h)) for w, h in rng.integers(1, 300, (n, 2)))
        files.append(dumps(OtokFile(FP, codebook_size, 16, ["crop", "pad"][k % 2], sizes, ids)))
    return files


def _tiled_files() -> list[bytes]:
    """Version-2 files: uniform and per-tile counts, several images, odd grids, L = 1."""
    rng = np.random.default_rng(1)
    files = []
    for codebook_size, tile, L, sizes in [(512, 32, 32, [(70, 40)]), (64, 16, 8, [(16, 16), (33, 5)]),
                                          (2, 8, 1, [(9, 9)]), (1000, 4, 16, [(7, 13)]), (4096, 16, 3, [(40, 70)])]:
        images = []
        for i, (w, h) in enumerate(sizes):
            n = -(-w // tile) * -(-h // tile)
            counts = np.full(n, L) if (i + codebook_size) % 2 else rng.integers(1, L + 1, n)
            images.append(TiledImage(w, h, w, h, counts, rng.integers(0, codebook_size, int(counts.sum()))))
        files.append(dumps(TiledFile(FP, codebook_size, tile, L, tuple(images))))
    for k, words in [(0, 5), (3, 1), (0, 0)]:  # entropy-coded payloads: the reader only checks their structure
        coded = CodedImage(70, 40, 35, 20, k, rng.integers(0, 2**32, words, dtype=np.uint64).astype(np.uint32),
                           int(rng.integers(0, 2**32)))
        files.append(dumps(TiledFile(FP, 512, 32, 32, (coded, coded), prior_fingerprint=OTHER_FP)))
    return files


BASES = _base_files()
TILED_BASES = _tiled_files()
FIELDS = {  # header field offsets and widths of version 1 (see docs/format.md)
    "version": (4, 1), "fit": (5, 1), "codebook_size": (22, 4), "image_size": (26, 2), "tokens": (28, 2),
    "bits": (30, 1), "count": (31, 4), "width0": (35, 2), "height0": (37, 2),
}
TILED_FIELDS = {  # and of version 2
    "version": (4, 1), "payload": (5, 1), "codebook_size": (22, 4), "tile": (26, 2), "max_tokens": (28, 2),
    "bits": (30, 1), "count": (31, 2), "width0": (33, 2), "height0": (35, 2), "coded_width0": (37, 2),
    "coded_height0": (39, 2), "count_mode0": (41, 1), "k0": (42, 2),
}
MAX_WORDS = {1: 0xFF, 2: 0xFFFF, 4: 0xFFFFFFFF}


def _mutation(fields: dict):
    position = st.integers(0, 255)
    past_magic = st.integers(0, 255)  # wrapped into bytes 4.. so most mutations get past the magic check
    return st.one_of(
        st.tuples(st.just("truncate"), position),
        st.tuples(st.just("overwrite"), st.lists(st.tuples(past_magic, st.integers(0, 255)), min_size=1, max_size=6)),
        st.tuples(st.just("flip"), st.lists(st.tuples(past_magic, st.integers(0, 7)), min_size=1, max_size=4)),
        st.tuples(st.just("insert"), past_magic, st.binary(min_size=1, max_size=8)),
        st.tuples(st.just("delete"), past_magic, st.integers(1, 8)),
        st.tuples(st.just("field"), st.sampled_from(sorted(fields)),
                  st.one_of(st.integers(0, 3), st.sampled_from([0xFF, 0xFFFF, 0xFFFFFFFF]), st.integers(0, 2**32))),
        st.tuples(st.just("random"), st.binary(max_size=120)),
    )


def _apply(data: bytes, mutation, fields: dict) -> bytes:
    kind, *args = mutation
    buf = bytearray(data)
    inner = (lambda pos: 4 + pos % (len(buf) - 4)) if len(buf) > 4 else (lambda pos: pos % len(buf))
    if kind == "truncate":
        return bytes(buf[: args[0] % (len(buf) + 1)])
    if kind == "overwrite":
        for pos, value in args[0]:
            buf[inner(pos)] = value
    elif kind == "flip":
        for pos, bit in args[0]:
            buf[inner(pos)] ^= 1 << bit
    elif kind == "insert":
        pos = inner(args[0]) + 1 if args[0] % 5 else 0  # sometimes in front of the magic
        buf[pos:pos] = args[1]
    elif kind == "delete":
        del buf[inner(args[0]): inner(args[0]) + args[1]]
    elif kind == "field":
        offset, width = fields[args[0]]
        buf[offset: offset + width] = (args[1] & MAX_WORDS[width]).to_bytes(width, "little")
    else:
        return args[0]
    return bytes(buf)


def _fix_crc(data: bytes) -> bytes:
    """Recompute the trailing CRC so the mutation reaches the checks behind it."""
    if len(data) < CRC_BYTES + 1:
        return data
    return data[:-CRC_BYTES] + zlib.crc32(data[:-CRC_BYTES]).to_bytes(CRC_BYTES, "little")


def _check_reader(original: bytes, mutations, fields: dict, fix_crc: bool, expect) -> None:
    data = original
    for mutation in mutations:
        data = _apply(data, mutation, fields) if data else data
    if fix_crc:
        data = _fix_crc(data)
    tracemalloc.start()
    start = time.perf_counter()
    try:
        f = loads(data, expect)
    except OtokError as err:
        assert str(err) and "\n" not in str(err)
        f = None
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    assert time.perf_counter() - start < 1.0
    assert peak < 100 * len(data) + 64 * 1024, f"reader allocated {peak} bytes for a {len(data)}-byte file"
    if f is None:
        return
    # accepted: must be a canonical, self-consistent file for the expected tokenizer
    assert expect in (None, FP) or f.fingerprint == expect
    assert dumps(f) == data
    if isinstance(f, TiledFile) and f.payload != "packed":  # range-coded (payload 1 or 2)
        assert all(isinstance(im, CodedImage) and im.words.dtype == np.uint32 for im in f.images)
    elif isinstance(f, TiledFile):
        for im in f.images:
            assert 1 <= im.counts.min() and im.counts.max() <= f.max_tokens and len(im.ids) == im.counts.sum()
            assert len(im.ids) == 0 or (im.ids.min() >= 0 and im.ids.max() < f.codebook_size)
    else:
        assert f.ids.min() >= 0 and f.ids.max() < f.codebook_size
    if not fix_crc:  # without a re-computed CRC only a no-op mutation can pass
        assert data == original


SETTINGS = settings(max_examples=10_000, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(base=st.sampled_from(range(len(BASES))), mutations=st.lists(_mutation(FIELDS), min_size=1, max_size=3),
       fix_crc=st.booleans(), expect=st.sampled_from([FP, OTHER_FP, None]))
def test_reader_survives_mutations(base, mutations, fix_crc, expect):
    _check_reader(BASES[base], mutations, FIELDS, fix_crc, expect)


@SETTINGS
@given(base=st.sampled_from(range(len(TILED_BASES))),
       mutations=st.lists(_mutation(TILED_FIELDS), min_size=1, max_size=3),
       fix_crc=st.booleans(), expect=st.sampled_from([FP, OTHER_FP, None]))
def test_reader_survives_mutations_of_tiled_files(base, mutations, fix_crc, expect):
    _check_reader(TILED_BASES[base], mutations, TILED_FIELDS, fix_crc, expect)


def test_every_header_field_is_crc_guarded():
    """Single-byte corruption anywhere is always caught (CRC32 detects every burst up to 32 bits)."""
    for data in BASES + TILED_BASES:
        for pos in range(len(data)):
            for value in (0x00, 0xFF, data[pos] ^ 0x10):
                if value == data[pos]:
                    continue
                bad = bytearray(data)
                bad[pos] = value
                try:
                    loads(bytes(bad), FP)
                except OtokError:
                    continue
                raise AssertionError(f"corruption at byte {pos} of {len(data)} went unnoticed")
    assert len(BASES[0]) == HEADER_BYTES + 4 + 6 + CRC_BYTES
