"""A small world for the CLI tests (tests/test_cli_errors.py, tests/test_cli_newcomer.py): tiny random models, a
shapes dataset, good and bad images, .otok files and broken models -- everything a newcomer might hand to onetok."""

import hashlib
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from onetok.ar_model.model import Transformer, config_from_preset
from onetok.ar_model.unified import UnifiedModel
from onetok.ar_model.vocab import Vocab, WordText
from onetok.data.shapes import ATTRIBUTES, caption_of, write_shapes_dataset
from onetok.tokenizers import PRESETS, Tokenizer
from onetok.tokenizers.codec import codec as C

UNWRITABLE = Path("/proc/onetok-test")  # no file can be created below /proc, even by root


def shapes_words() -> WordText:
    values = [v * 30 for v in ATTRIBUTES.values()]  # every value of every attribute appears
    return WordText.from_captions(caption_of(dict(zip(ATTRIBUTES, combo))) for combo in zip(*values))


def bomb_png(path: Path, side: int = 20000) -> None:
    """A valid 1 x 1 PNG whose header claims side x side pixels (a decompression bomb as Pillow sees it)."""
    buf = path.with_suffix(".tmp")
    Image.new("L", (1, 1)).save(buf, format="PNG")
    data = bytearray(buf.read_bytes())
    buf.unlink()
    data[16:24] = struct.pack(">II", side, side)  # IHDR width, height
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    path.write_bytes(bytes(data))


def build(root: Path) -> Path:
    torch.manual_seed(0)
    tok = Tokenizer(PRESETS["tiny"])
    tok.save_pretrained(root / "tok")
    torch.manual_seed(1)
    Tokenizer(PRESETS["tiny"]).save_pretrained(root / "other_tok")
    write_shapes_dataset(root / "shapes", size=16, train=8, val=4, seed=0, shard_size=100)
    vocab = Vocab(tok.codebook_size, shapes_words())
    torch.manual_seed(2)
    UnifiedModel(Transformer(config_from_preset("tiny", vocab.size)), vocab, tok).save_pretrained(root / "model")
    shutil.copytree(root / "model", root / "model_truncated")
    weights = root / "model_truncated" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    shutil.copytree(root / "model", root / "model_other_tokenizer")
    for name in ("config.json", "model.safetensors"):
        shutil.copy(root / "other_tok" / name, root / "model_other_tokenizer" / "tokenizer" / name)

    rng = np.random.default_rng(0)
    (root / "images").mkdir()
    Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(root / "images" / "a.png")
    Image.fromarray(rng.integers(0, 256, (20, 40, 3), dtype=np.uint8)).save(root / "images" / "b.png")
    (root / "bad").mkdir()
    (root / "bad" / "notes.png").write_text("not an image\n")
    full = (root / "images" / "a.png").read_bytes()
    (root / "bad" / "broken.png").write_bytes(full[: len(full) // 2])
    bomb_png(root / "bad" / "bomb.png")
    tok = Tokenizer.from_pretrained(root / "tok")
    images = [Image.open(root / "images" / n).convert("RGB") for n in ("a.png", "b.png")]
    (root / "a.otok").write_bytes(C.Codec(tok).compress(images[:1]))
    (root / "batch.otok").write_bytes(C.Codec(tok).compress(images))
    (root / "garbage.ckpt").write_bytes(rng.integers(0, 256, 3000, dtype=np.uint8).tobytes())
    shutil.copy(root / "tok" / "model.safetensors", root / "weights.safetensors")
    (root / "corrupt_shards").mkdir()
    (root / "corrupt_shards" / "000000.tar").write_bytes(rng.integers(0, 256, 2000, dtype=np.uint8).tobytes())
    (root / "empty").mkdir()
    (root / "prompts.txt").write_text("a large red circle in the center on a black background\n")
    return root


def snapshot(*folders: Path) -> dict[str, str]:
    """Every file below `folders`, by path, with a hash of its bytes: equal snapshots = nothing written, nothing
    lost."""
    files = {}
    for folder in folders:
        for p in sorted(folder.rglob("*")):
            if p.is_file() or p.is_symlink():
                files[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "link"
            elif p.is_dir():
                files[str(p)] = "dir"
    return files
