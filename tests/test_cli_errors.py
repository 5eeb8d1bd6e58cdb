"""Every `onetok` command over one shared table of bad inputs: each ends in exactly one line on stderr that names the
flag or file, exit code 2, no traceback, nothing written and nothing lost (both the inputs' folder and the output
folder are byte-for-byte as before). The per-defect tests of issue 15 are in test_cli_newcomer.py."""

import shutil
from pathlib import Path

import pytest
from cli_env import UNWRITABLE, build, snapshot

from onetok.scripts.cli import main

LONG_PROMPT = " ".join(["a large red circle in the center on a black background"] * 12)  # 132 words > context

# (id, argv with {E} = the shared inputs, {T} = this case's output folder, {U} = an unwritable place;
#  the text the one line must contain; files copied into {T} first as (source, name))
TABLE = [
    # --- the top level and argparse ------------------------------------------------------------------------------
    ("no-such-command", ["frobnicate"], "frobnicate", ()),
    ("missing-required", ["compress", "{E}/images/a.png"], "-o/--out", ()),
    ("int-flag-not-int", ["compress", "--tokens", "x", "{E}/images/a.png", "-o", "{T}/a.otok"], "--tokens", ()),
    ("resume-and-force", ["compress", "--resume", "--force", "{E}/images", "-o", "{T}/o"], "--force", ()),
    # --- compress ------------------------------------------------------------------------------------------------
    ("compress-missing", ["compress", "--tokenizer", "{E}/tok", "{E}/nope.png", "-o", "{T}/x.otok"], "nope.png", ()),
    ("compress-not-image", ["compress", "--tokenizer", "{E}/tok", "{E}/bad/notes.png", "-o", "{T}/x.otok"],
     "notes.png", ()),
    ("compress-truncated", ["compress", "--tokenizer", "{E}/tok", "{E}/bad/broken.png", "-o", "{T}/x.otok"],
     "broken.png", ()),
    ("compress-bomb", ["compress", "--tokenizer", "{E}/tok", "{E}/bad/bomb.png", "-o", "{T}/x.otok"], "bomb.png", ()),
    ("compress-tokens-0", ["compress", "--tokenizer", "{E}/tok", "--tokens", "0", "{E}/images/a.png", "-o",
                           "{T}/x.otok"], "--tokens 0", ()),
    ("compress-tokens-over-L", ["compress", "--tokenizer", "{E}/tok", "--tokens", "9", "{E}/images/a.png", "-o",
                                "{T}/x.otok"], "--tokens 9", ()),
    ("compress-bpp-negative", ["compress", "--tokenizer", "{E}/tok", "--bpp", "-1", "{E}/images/a.png", "-o",
                               "{T}/x.otok"], "--bpp -1", ()),
    ("compress-psnr-0", ["compress", "--tokenizer", "{E}/tok", "--psnr", "0", "{E}/images/a.png", "-o", "{T}/x.otok"],
     "--psnr 0", ()),
    ("compress-scale", ["compress", "--tokenizer", "{E}/tok", "--scale", "2", "{E}/images/a.png", "-o", "{T}/x.otok"],
     "--scale 2", ()),
    ("compress-threads-0", ["compress", "--tokenizer", "{E}/tok", "--threads", "0", "{E}/images/a.png", "-o",
                            "{T}/x.otok"], "--threads 0", ()),
    ("compress-bad-tokenizer", ["compress", "--tokenizer", "{E}/empty", "{E}/images/a.png", "-o", "{T}/x.otok"],
     "empty", ()),
    ("compress-png-name", ["compress", "--tokenizer", "{E}/tok", "{E}/images/a.png", "-o", "{T}/x.png"], "x.png", ()),
    ("compress-onto-itself", ["compress", "--tokenizer", "{E}/tok", "--force", "{T}/x.png", "-o", "{T}/x.png"],
     "x.png", (("{E}/images/a.png", "x.png"),)),
    ("compress-onto-input", ["compress", "--tokenizer", "{E}/tok", "--force", "{T}/pic.otok", "-o", "{T}/pic.otok"],
     "is the input", (("{E}/images/a.png", "pic.otok"),)),
    ("compress-two-into-otok", ["compress", "--tokenizer", "{E}/tok", "{E}/images/a.png", "{E}/images/b.png", "-o",
                                "{T}/two.otok"], "two.otok", ()),
    ("compress-batch-into-folder", ["compress", "--tokenizer", "{E}/tok", "--batch", "{E}/images", "-o", "{T}/d"],
     "--batch", ()),
    ("compress-exists", ["compress", "--tokenizer", "{E}/tok", "{E}/images/a.png", "-o", "{T}/x.otok"], "--force",
     (("{E}/a.otok", "x.otok"),)),
    ("compress-unwritable", ["compress", "--tokenizer", "{E}/tok", "{E}/images/a.png", "-o", "{U}/x.otok"], "{U}", ()),
    ("compress-folder-unwritable", ["compress", "--tokenizer", "{E}/tok", "{E}/images", "-o", "{U}/out"], "{U}", ()),
    ("compress-all-bad-folder", ["compress", "--tokenizer", "{E}/tok", "{E}/bad", "-o", "{T}/c_allbad"], "c_allbad",
     ()),
    # --- decompress ----------------------------------------------------------------------------------------------
    ("decompress-missing", ["decompress", "--tokenizer", "{E}/tok", "{E}/nope.otok", "-o", "{T}/x.png"], "nope.otok",
     ()),
    ("decompress-corrupt", ["decompress", "--tokenizer", "{E}/tok", "{E}/garbage.ckpt", "-o", "{T}/x.png"],
     "garbage.ckpt", ()),
    ("decompress-other-tokenizer", ["decompress", "--tokenizer", "{E}/other_tok", "{E}/a.otok", "-o", "{T}/x.png"],
     "a.otok", ()),
    ("decompress-jpg-name", ["decompress", "--tokenizer", "{E}/tok", "{E}/a.otok", "-o", "{T}/x.jpg"], "x.jpg", ()),
    ("decompress-batch-into-png", ["decompress", "--tokenizer", "{E}/tok", "{E}/batch.otok", "-o", "{T}/x.png"],
     "2 images", ()),
    ("decompress-unwritable", ["decompress", "--tokenizer", "{E}/tok", "{E}/a.otok", "-o", "{U}/x.png"], "{U}", ()),
    # --- eval-compression ----------------------------------------------------------------------------------------
    ("eval-compression-negative", ["eval-compression", "--tokenizer", "{E}/tok", "--max-images", "-1", "{E}/images",
                                   "--out", "{T}/r"], "--max-images -1", ()),
    ("eval-compression-not-folder", ["eval-compression", "--tokenizer", "{E}/tok", "{E}/images/a.png", "--out",
                                     "{T}/r"], "a.png", ()),
    ("eval-compression-codec", ["eval-compression", "--tokenizer", "{E}/tok", "--codecs", "jpeg,gif", "{E}/images",
                                "--out", "{T}/r"], "--codecs", ()),
    ("eval-compression-unwritable", ["eval-compression", "--tokenizer", "{E}/tok", "{E}/images", "--out", "{U}/r"],
     "{U}", ()),
    # --- sample --------------------------------------------------------------------------------------------------
    ("sample-long-prompt", ["sample", "--model", "{E}/model", "--prompt", LONG_PROMPT, "--out", "{T}/s"], "at most",
     ()),
    ("sample-truncated-model", ["sample", "--model", "{E}/model_truncated", "--prompt", "a red circle", "--out",
                                "{T}/s"], "model_truncated", ()),
    ("sample-cfg-negative", ["sample", "--model", "{E}/model", "--prompt", "a red circle", "--cfg", "-1", "--out",
                             "{T}/s"], "--cfg -1", ()),
    ("sample-blank-prompt", ["sample", "--model", "{E}/model", "--prompt", "   ", "--out", "{T}/s"], "--prompt", ()),
    ("sample-threads-0", ["sample", "--model", "{E}/model", "--prompt", "a red circle", "--threads", "0", "--out",
                          "{T}/s"], "--threads 0", ()),
    ("sample-top-p", ["sample", "--model", "{E}/model", "--prompt", "a red circle", "--top-p", "1.5", "--out",
                      "{T}/s"], "--top-p 1.5", ()),
    ("sample-n-0", ["sample", "--model", "{E}/model", "--prompt", "a red circle", "-n", "0", "--out", "{T}/s"], "-n 0",
     ()),
    ("sample-n-huge", ["sample", "--model", "{E}/model", "--prompt", "a red circle", "-n", "1000000000", "--out",
                       "{T}/s"], "-n 1000000000", ()),
    ("sample-unknown-word", ["sample", "--model", "{E}/model", "--prompt", "a zebra", "--out", "{T}/s"], "zebra", ()),
    ("sample-other-tokenizer", ["sample", "--model", "{E}/model_other_tokenizer", "--prompt", "a red circle",
                                "--out", "{T}/s"], "model_other_tokenizer", ()),
    ("sample-unwritable", ["sample", "--model", "{E}/model", "--prompt", "a red circle", "--out", "{U}/s"], "{U}", ()),
    ("sample-over-model", ["sample", "--model", "{T}/m", "--prompt", "a red circle", "--force", "--out", "{T}/m"],
     "is the input", (("{E}/model", "m"),)),
    # --- caption -------------------------------------------------------------------------------------------------
    ("caption-bomb", ["caption", "--model", "{E}/model", "{E}/bad/bomb.png"], "bomb.png", ()),
    ("caption-not-image", ["caption", "--model", "{E}/model", "{E}/bad/notes.png"], "notes.png", ()),
    ("caption-missing-image", ["caption", "--model", "{E}/model", "{E}/nope.png"], "nope.png", ()),
    ("caption-threads-0", ["caption", "--model", "{E}/model", "--threads", "0", "{E}/images/a.png"], "--threads 0",
     ()),
    ("caption-missing-model", ["caption", "--model", "{E}/nope", "{E}/images/a.png"], "nope", ()),
    ("caption-truncated-model", ["caption", "--model", "{E}/model_truncated", "{E}/images/a.png"], "model_truncated",
     ()),
    ("caption-other-tokenizer", ["caption", "--model", "{E}/model_other_tokenizer", "{E}/images/a.png"],
     "model_other_tokenizer", ()),
    # --- eval-ar, eval-tokenizer, tokenize -----------------------------------------------------------------------
    ("eval-ar-missing-data", ["eval-ar", "--model", "{E}/model", "--data", "{E}/nonexist"], "nonexist", ()),
    ("eval-ar-n-0", ["eval-ar", "--model", "{E}/model", "--data", "{E}/shapes", "--n", "0"], "--n 0", ()),
    ("eval-ar-unwritable", ["eval-ar", "--model", "{E}/model", "--data", "{E}/shapes", "--json", "{U}/m.json"], "{U}",
     ()),
    ("eval-tokenizer-unwritable", ["eval-tokenizer", "--tokenizer", "{E}/tok", "--data", "{E}/shapes/val", "--json",
                                   "{U}/m.json"], "{U}", ()),
    ("eval-tokenizer-missing-data", ["eval-tokenizer", "--tokenizer", "{E}/tok", "--data", "{E}/nonexist"],
     "nonexist", ()),
    ("eval-tokenizer-batch-0", ["eval-tokenizer", "--tokenizer", "{E}/tok", "--data", "{E}/shapes/val",
                                "--batch-size", "0"], "--batch-size 0", ()),
    ("tokenize-missing-data", ["tokenize", "--tokenizer", "{E}/tok", "--data", "{E}/nonexist", "--out", "{T}/t"],
     "nonexist", ()),
    ("tokenize-batch-0", ["tokenize", "--tokenizer", "{E}/tok", "--data", "{E}/shapes", "--batch-size", "0", "--out",
                          "{T}/t"], "--batch-size 0", ()),
    ("tokenize-over-data", ["tokenize", "--tokenizer", "{E}/tok", "--data", "{T}/shapes", "--out", "{T}/shapes",
                            "--force", "--quiet"], "is the input", (("{E}/shapes", "shapes"),)),
    # --- data ----------------------------------------------------------------------------------------------------
    ("data-shapes-size-0", ["data", "shapes", "--out", "{T}/d", "--size", "0"], "--size 0", ()),
    ("data-shapes-nothing", ["data", "shapes", "--out", "{T}/d", "--train", "0", "--val", "0"], "--train 0", ()),
    ("data-shapes-unwritable", ["data", "shapes", "--out", "{U}/d", "--train", "2", "--val", "0"], "{U}", ()),
    ("data-images-size-0", ["data", "images", "{E}/images", "--out", "{T}/d", "--size", "0"], "--size 0", ()),
    ("data-images-all-bad", ["data", "images", "{E}/bad", "--out", "{T}/d", "--quiet"], "bad", ()),
    ("data-images-missing", ["data", "images", "{E}/nope", "--out", "{T}/d"], "nope", ()),
    ("data-images-over-source", ["data", "images", "{T}/src", "--out", "{T}/src", "--force", "--quiet"],
     "is the input", (("{E}/images", "src"),)),
    # --- text-vocab ----------------------------------------------------------------------------------------------
    ("text-vocab-missing", ["text-vocab", "train", "--captions", "{E}/nonexist", "--size", "300", "--out", "{T}/v"],
     "nonexist", ()),
    ("text-vocab-size-0", ["text-vocab", "train", "--captions", "{E}/shapes", "--size", "0", "--out", "{T}/v"],
     "--size 0", ()),
    # --- export --------------------------------------------------------------------------------------------------
    ("export-garbage", ["export", "{E}/garbage.ckpt", "--out", "{T}/x"], "garbage.ckpt", ()),
    ("export-safetensors", ["export", "{E}/weights.safetensors", "--out", "{T}/x"], "safetensors", ()),
    ("export-missing", ["export", "{E}/nope.ckpt", "--out", "{T}/x"], "nope.ckpt", ()),
    ("export-over-checkpoint-folder", ["export", "{T}/run/last.ckpt", "--out", "{T}/run", "--force"],
     "holds the input", (("{E}/garbage.ckpt", "run/last.ckpt"),)),
    # --- bench and demo ------------------------------------------------------------------------------------------
    ("bench-tokenizer-preset", ["bench", "tokenizer", "--preset", "nope"], "--preset nope", ()),
    ("bench-tokenizer-iters", ["bench", "tokenizer", "--iters", "0"], "--iters", ()),
    ("bench-tokenizer-batch-cpu", ["bench", "tokenizer", "--batch-cpu", "0"], "--batch-cpu", ()),
    ("bench-kernels-threads", ["bench", "kernels", "--threads", "-2"], "--threads", ()),
    ("bench-codec-repeats", ["bench", "codec", "--repeats", "0"], "--repeats", ()),
    ("bench-portable-coder-photos", ["bench", "portable-coder", "--part", "savings", "--photos", "{T}/none"],
     "{T}/none", ()),
    ("bench-sjd-prompts", ["bench", "sjd", "--model", "{E}/model", "--prompts", "0"], "--prompts", ()),
    ("bench-startup-runs", ["bench", "startup", "--runs", "0"], "--runs", ()),
    ("bench-data-ranks", ["bench", "data", "--ranks", "0"], "--ranks", ()),
    ("demo-train-images", ["demo", "--out", "{T}/demo", "--train-images", "0"], "--train-images", ()),
    # --- recode, judge -------------------------------------------------------------------------------------------
    ("recode-missing", ["recode", "{E}/nope.otok", "-o", "{T}/x.otok"], "nope.otok", ()),
    ("recode-onto-input", ["recode", "--force", "{T}/a.otok", "-o", "{T}/a.otok"], "an output is never an input",
     (("{E}/a.otok", "a.otok"),)),
    ("judge-train-no-data", ["judge", "train", "--data", "{E}/empty", "--out", "{T}/j"], "empty", ()),
    ("judge-train-lr-inf", ["judge", "train", "--data", "{E}/shapes", "--out", "{T}/j", "--lr", "inf"], "--lr", ()),
    ("judge-eval-missing", ["judge", "eval", "--judge", "{E}/nope", "--data", "{E}/shapes/val"], "nope", ()),
]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    return build(tmp_path_factory.mktemp("cli_errors"))


def _fill(text: str, env, tmp) -> str:
    return text.replace("{E}", str(env)).replace("{T}", str(tmp)).replace("{U}", str(UNWRITABLE))


@pytest.mark.parametrize("case", TABLE, ids=[c[0] for c in TABLE])
def test_one_line_exit_2_nothing_left(env, tmp_path, capsys, case):
    _, argv, expect, copies = case
    for src, name in copies:
        source = Path(_fill(src, env, tmp_path))
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (shutil.copytree if source.is_dir() else shutil.copy)(source, tmp_path / name)
    before = snapshot(env, tmp_path)
    code = main([_fill(a, env, tmp_path) for a in argv])
    out, err = capsys.readouterr()
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, (code, err)
    assert len(lines) == 1, err
    assert lines[0].startswith("onetok") and "error:" in lines[0] and "Traceback" not in err, err
    assert _fill(expect, env, tmp_path) in lines[0], lines[0]
    assert snapshot(env, tmp_path) == before  # nothing written, nothing lost


def test_every_command_is_in_the_table():
    """A new command joins the table: every sub-command (and bench/data kind) has at least one bad-input case."""
    import argparse

    from onetok.scripts.cli import build_parser

    def commands(parser, prefix=()):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    nested = list(commands(sub, prefix + (name,)))
                    yield from nested or [prefix + (name,)]

    covered = {tuple(argv[:2]) for _, argv, _, _ in TABLE} | {tuple(argv[:1]) for _, argv, _, _ in TABLE}
    missing = [" ".join(c) for c in commands(build_parser()) if c not in covered]
    assert not missing, missing
