"""Issue 15, a newcomer's try-out: one test per defect found (test_NN_... is defect NN), beyond the shared table of
bad inputs in test_cli_errors.py."""

import argparse
import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_env import UNWRITABLE, build, shapes_words
from PIL import Image

from onetok.fileio import MANIFEST
from onetok.scripts.cli import main
from onetok.tokenizers.codec import format as otok
from onetok.tokenizers.registry import fingerprint

PROMPT = "a large red circle in the center on a black background"
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    return build(tmp_path_factory.mktemp("newcomer"))


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def one_line(err: str) -> str:
    """The one error line (notes such as "far outside the training data" may come before it)."""
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith("note:")]
    assert len(lines) == 1 and "error:" in lines[0] and "Traceback" not in err, err
    return lines[0]


def files(folder: Path) -> list[str]:
    """The files below `folder` but onetok's manifest of them (`.onetok-output`)."""
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST)


def photos(folder: Path, n: int, size=(24, 20)) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(n)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(folder / f"p{i:02d}.png")
    return folder


# --- 1. unwritable or full output location -------------------------------------------------------------------------


def test_01_unwritable_json_is_refused_before_the_evaluation(env, capsys, monkeypatch):
    def evaluation_started(*a, **k):
        raise AssertionError("the evaluation ran before the output location was checked")

    monkeypatch.setattr("onetok.tokenizers.reconstruction.evaluate", evaluation_started)
    code, _, err = run(capsys, "eval-tokenizer", "--tokenizer", env / "tok", "--data", env / "shapes" / "val",
                       "--json", UNWRITABLE / "m.json")
    assert code == 2 and str(UNWRITABLE) in one_line(err)


def test_01_full_disk_midway_keeps_finished_files_and_says_how_to_go_on(env, tmp_path, capsys, monkeypatch):
    src, out = photos(tmp_path / "in", 5), tmp_path / "out"
    real_replace, calls = os.replace, []

    def replace(a, b):
        calls.append(b)
        if len(calls) == 3:
            raise OSError(errno.ENOSPC, "No space left on device", str(b))
        real_replace(a, b)

    monkeypatch.setattr("onetok.fileio.os.replace", replace)
    code, _, err = run(capsys, "compress", "--tokenizer", env / "tok", "--quiet", src, "-o", out)
    line = one_line(err)
    assert code == 2 and "No space left on device" in line and "2 of 5" in line and "--resume" in line
    assert files(out) == ["p00.otok", "p01.otok"]  # finished ones only: no temp file, no half-written file
    for name in files(out):
        otok.loads((out / name).read_bytes())
    monkeypatch.undo()
    code, out_text, _ = run(capsys, "compress", "--tokenizer", env / "tok", "--quiet", "--resume", src, "-o", out)
    assert code == 0 and "2 already done earlier (--resume)" in out_text and len(files(out)) == 5


# --- 2, 3, 4 --------------------------------------------------------------------------------------------------------


def test_02_prompt_longer_than_the_context_says_the_limit(env, tmp_path, capsys):
    prompt = " ".join([PROMPT] * 12)
    code, _, err = run(capsys, "sample", "--model", env / "model", "--prompt", prompt, "--out", tmp_path / "s")
    line = one_line(err)
    assert code == 2 and "132 text tokens" in line and "at most 118" in line and "context of 128" in line
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize("command", ["caption", "sample"])
def test_03_truncated_model_is_one_line(env, tmp_path, capsys, command):
    argv = ([command, "--model", env / "model_truncated", env / "images" / "a.png"] if command == "caption" else
            [command, "--model", env / "model_truncated", "--prompt", PROMPT, "--out", tmp_path / "s"])
    code, _, err = run(capsys, *argv)
    assert code == 2 and "model_truncated" in one_line(err) and "SafetensorError" in err


def test_04_caption_of_a_decompression_bomb(env, capsys):
    code, _, err = run(capsys, "caption", "--model", env / "model", env / "bad" / "bomb.png")
    assert code == 2 and "bomb.png" in one_line(err) and "pixels" in err


# --- 5. bench arguments ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("argv,flag", [(["tokenizer", "--preset", "nope"], "--preset nope"),
                                       (["tokenizer", "--iters", "0"], "--iters"),
                                       (["tokenizer", "--batch-cpu", "0"], "--batch-cpu"),
                                       (["kernels", "--threads", "-2"], "--threads")])
def test_05_bench_arguments_are_checked(capsys, argv, flag):
    code, _, err = run(capsys, "bench", *argv)
    assert code == 2 and flag in one_line(err)


# --- 6. onetok-train -----------------------------------------------------------------------------------------------


def train(capfd, argv: list[str]) -> tuple[int, str]:
    from onetok.scripts.train import main as train_main

    saved, sys.argv = sys.argv, ["onetok-train", *argv]
    try:
        code = train_main(argv)
    finally:
        sys.argv = saved
    out, err = capfd.readouterr()
    return code, out + err


@pytest.mark.parametrize("case", ["empty-shards", "corrupt-tars", "wrong-preset", "wrong-config-key", "unknown-option"])
def test_06_train_checks_data_and_config_before_the_trainer(env, tmp_path, capfd, case):
    shards = {"empty-shards": env / "empty", "corrupt-tars": env / "corrupt_shards"}.get(case, env / "shapes" / "train")
    extra = {"wrong-preset": ["--model.init_args.preset", "nope"],
             "wrong-config-key": ["--model.init_args.config", '{"nope": 3}'],
             "unknown-option": ["--model.init_args.nope", "3"]}.get(case, [])
    os.chdir(tmp_path)  # Lightning writes lightning_logs/ below the working folder when it gets that far
    code, text = train(capfd, ["fit", "--config", "tokenizer/shapes", "--data.init_args.train_shards", str(shards),
                               "--data.init_args.val_shards", str(shards), "--trainer.default_root_dir",
                               str(tmp_path / "run"), *extra])
    lines = [line for line in text.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("onetok-train: error:"), text
    assert {"empty-shards": "no shards", "corrupt-tars": "not a readable tar", "wrong-preset": "nope",
            "wrong-config-key": "nope", "unknown-option": "nope"}[case] in lines[0]
    assert os.listdir(tmp_path) == []  # no lightning_logs/version_0, no run folder


# --- 7. sample in batches -------------------------------------------------------------------------------------------


def test_07_sample_draws_in_batches_and_caps_the_count(env, tmp_path, capsys, monkeypatch):
    from onetok.ar_model.unified import UnifiedModel

    real, batches = UnifiedModel.generate_images, []

    def spy(self, prompts, n_per_prompt=1, *args, **kwargs):
        batches.append(n_per_prompt)
        return real(self, prompts, n_per_prompt, *args, **kwargs)

    monkeypatch.setattr(UnifiedModel, "generate_images", spy)
    out = tmp_path / "s"
    code, _, _ = run(capsys, "sample", "--model", env / "model", "--prompt", PROMPT, "-n", 5, "--batch-size", 2,
                     "--seed", 3, "--out", out, "--quiet")
    assert code == 0 and batches == [2, 2, 1]  # memory: one batch at a time, whatever -n
    lines = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert [line["batch_size"] for line in lines] == [2, 2, 2, 2, 1] and [line["seed"] for line in lines] == [3, 3, 4,
                                                                                                             4, 5]
    assert files(out) == [f"{i:03d}.png" for i in range(5)] + ["grid.png", "samples.jsonl"]
    code, _, err = run(capsys, "sample", "--model", env / "model", "--prompt", PROMPT, "-n", 10**9, "--out", out / "x")
    assert code == 2 and "at most 100000" in one_line(err) and len(batches) == 3


# --- 8. never overwrite an input ------------------------------------------------------------------------------------


def test_08_compress_never_overwrites_its_input(env, tmp_path, capsys):
    photo = shutil.copy(env / "images" / "a.png", tmp_path / "x.png")
    before = Path(photo).read_bytes()
    code, _, err = run(capsys, "compress", "--tokenizer", env / "tok", "--force", photo, "-o", photo)
    assert code == 2 and "x.png" in one_line(err)
    named = shutil.copy(env / "images" / "a.png", tmp_path / "pic.otok")  # an image that happens to be named .otok
    code, _, err = run(capsys, "compress", "--tokenizer", env / "tok", "--force", named, "-o", named)
    assert code == 2 and "an output is never an input" in one_line(err)
    assert Path(photo).read_bytes() == before and Path(named).read_bytes() == before


# --- 9. 16-bit, alpha, animation ------------------------------------------------------------------------------------


def test_09_16bit_alpha_and_frames(env, tmp_path, capsys):
    rng = np.random.default_rng(9)
    gray = rng.integers(0, 256, (16, 16), dtype=np.uint8)
    Image.fromarray(gray, mode="L").save(tmp_path / "g8.png")
    Image.fromarray(gray.astype(np.uint16) * 257).save(tmp_path / "g16.png")  # mode I;16, the same picture
    assert Image.open(tmp_path / "g16.png").mode.startswith("I")
    for name in ("g8", "g16"):
        assert run(capsys, "compress", "--tokenizer", env / "tok", tmp_path / f"{name}.png", "-o",
                   tmp_path / f"{name}.otok")[0] == 0
    assert (tmp_path / "g16.otok").read_bytes() == (tmp_path / "g8.otok").read_bytes()  # not 99.7% white
    rgba = np.dstack([rng.integers(0, 256, (16, 16, 3), dtype=np.uint8), np.full((16, 16), 128, np.uint8)])
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "alpha.png")
    frames = [Image.new("RGB", (16, 16), c) for c in ("red", "blue", "green")]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
    for name, note in (("alpha.png", "alpha channel composited on white"), ("anim.gif", "first of 3 frames")):
        code, _, err = run(capsys, "compress", "--tokenizer", env / "tok", tmp_path / name, "-o", tmp_path / "o.otok",
                           "--force")
        assert code == 0 and note in err


# --- 10, 11, 12, 13 -------------------------------------------------------------------------------------------------


def test_10_negative_max_images(env, tmp_path, capsys):
    code, _, err = run(capsys, "eval-compression", "--tokenizer", env / "tok", "--max-images", -1, env / "images",
                       "--out", tmp_path / "r")
    assert code == 2 and "--max-images -1" in one_line(err) and not (tmp_path / "r").exists()


def test_11_caption_reads_images_as_displayed(env, tmp_path, capsys, monkeypatch):
    """An EXIF-rotated file and the same picture stored upright reach the model as the same pixels."""
    from onetok.ar_model.unified import UnifiedModel

    pixels = np.random.default_rng(11).integers(0, 256, (16, 24, 3), dtype=np.uint8)  # not square: rotation shows
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    Image.fromarray(pixels).save(tmp_path / "tagged.png", exif=exif)
    Image.fromarray(np.rot90(pixels, k=-1).copy()).save(tmp_path / "upright.png")
    seen = []
    monkeypatch.setattr(UnifiedModel, "caption", lambda self, images, **kw: seen.append(images) or ["x"] * len(images))
    assert run(capsys, "caption", "--model", env / "model", tmp_path / "tagged.png", tmp_path / "upright.png")[0] == 0
    torch.testing.assert_close(seen[0][0], seen[0][1], rtol=0, atol=0)


@pytest.mark.parametrize("flags,message", [(["--prompt", PROMPT, "--cfg", "-1"], "--cfg -1"),
                                           (["--prompt", "   "], "--prompt: empty"), (["--prompt", ""], "--prompt")])
def test_12_negative_cfg_and_blank_prompts(env, tmp_path, capsys, flags, message):
    code, _, err = run(capsys, "sample", "--model", env / "model", *flags, "--out", tmp_path / "s")
    assert code == 2 and message in one_line(err)


def test_13_model_checks_its_tokenizer_fingerprint(env, capsys):
    code, _, err = run(capsys, "caption", "--model", env / "model_other_tokenizer", env / "images" / "a.png")
    assert code == 2 and "not the tokenizer this model was trained with" in one_line(err)
    from onetok.tokenizers import Tokenizer

    meta = json.loads((env / "model" / "config.json").read_text())

    assert meta["tokenizer_fingerprint"] == fingerprint(Tokenizer.from_pretrained(env / "tok")).hex()


# --- 14. exit codes and summaries -----------------------------------------------------------------------------------


def test_14_partly_failed_folder_runs_exit_1_and_say_why(env, tmp_path, capsys):
    src = photos(tmp_path / "in", 2)
    shutil.copy(env / "bad" / "notes.png", src / "notes.png")
    shutil.copy(env / "bad" / "bomb.png", src / "bomb.png")
    (src / "p00.txt").write_text("a caption beside its image, not a bad image\n")
    code, out, err = run(capsys, "compress", "--tokenizer", env / "tok", "--quiet", src, "-o", tmp_path / "c")
    assert code == 1 and "skipped 2 (1 too large, 1 unreadable)" in out and "p00.txt" not in err
    assert files(tmp_path / "c") == ["p00.otok", "p01.otok"]
    code, _, err = run(capsys, "compress", "--tokenizer", env / "tok", env / "bad", "-o", tmp_path / "c_allbad")
    assert code == 2 and "nothing compressed" in one_line(err) and not (tmp_path / "c_allbad").exists()
    code, _, err = run(capsys, "data", "images", env / "bad", "--out", tmp_path / "shards", "--quiet")
    assert code == 2 and not (tmp_path / "shards").exists()  # no empty train/ left
    for argv in (["data", "shapes", "--train", "0", "--val", "0"], ["data", "images", env / "images", "--size", "0"]):
        code, _, err = run(capsys, *argv, "--out", tmp_path / "o")
        assert code == 2 and one_line(err)


def test_14_corrupt_otok_in_a_folder_is_skipped_with_exit_1(env, tmp_path, capsys):
    folder = tmp_path / "otoks"
    folder.mkdir()
    shutil.copy(env / "a.otok", folder / "a.otok")
    (folder / "junk.otok").write_bytes(b"OTOK\x02garbage")
    code, out, err = run(capsys, "decompress", "--tokenizer", env / "tok", "--quiet", folder, "-o", tmp_path / "d")
    assert code == 1 and "skipped 1 (1 unreadable)" in out and "junk.otok" in err and files(tmp_path / "d") == ["a.png"]


# --- 15. interrupted folder runs ------------------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["ctrl-c", "sigterm"])
def test_15_interrupted_folder_compress_keeps_whole_files_and_resumes(env, tmp_path, capsys, monkeypatch, how):
    from onetok.scripts import cmd_codec

    src, out = photos(tmp_path / "in", 6), tmp_path / "out"
    real, calls = cmd_codec.Encoder.__call__, []

    def interrupting(self, path):
        calls.append(path)
        if len(calls) == 4:
            if how == "sigterm":
                os.kill(os.getpid(), signal.SIGTERM)
            else:
                raise KeyboardInterrupt
        return real(self, path)

    monkeypatch.setattr(cmd_codec.Encoder, "__call__", interrupting)
    code, _, err = run(capsys, "compress", "--tokenizer", env / "tok", "--quiet", src, "-o", out)
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith("note:")]
    assert code == (143 if how == "sigterm" else 130) and len(lines) == 1 and "Traceback" not in err
    assert lines[0].startswith("onetok compress: interrupted") and "3 of 6 outputs finished" in lines[0]
    assert "--resume" in lines[0]
    assert files(out) == ["p00.otok", "p01.otok", "p02.otok"]  # whole files only, no temporary ones
    monkeypatch.undo()
    code, _, err = run(capsys, "compress", "--tokenizer", env / "tok", "--quiet", src, "-o", out)
    assert code == 2 and "already exists" in one_line(err)  # a plain re-run refuses, naming what exists
    code, text, _ = run(capsys, "compress", "--tokenizer", env / "tok", "--quiet", "--resume", src, "-o", out)
    assert code == 0 and "3 already done earlier" in text and len(files(out)) == 6


# --- 16. output names -----------------------------------------------------------------------------------------------


def test_16_names_say_what_they_hold(env, tmp_path, capsys):
    a, b = env / "images" / "a.png", env / "images" / "b.png"
    code, _, err = run(capsys, "compress", "--tokenizer", env / "tok", a, b, "-o", tmp_path / "c_two.otok")
    assert code == 2 and "folder output" in one_line(err) and not (tmp_path / "c_two.otok").exists()
    code, _, err = run(capsys, "decompress", "--tokenizer", env / "tok", env / "batch.otok", "-o", tmp_path / "x.png")
    assert code == 2 and "holds 2 images" in one_line(err) and not (tmp_path / "x.png").exists()
    assert run(capsys, "compress", "--tokenizer", env / "tok", a, "-o", tmp_path / "folder")[0] == 0
    assert files(tmp_path / "folder") == ["a.otok"]  # a name without an extension is a folder


# --- 17. messages ---------------------------------------------------------------------------------------------------


def test_17_messages_name_flags_and_give_the_way_out(env, tmp_path, capsys):
    code, _, err = run(capsys, "export", env / "garbage.ckpt", "--out", tmp_path / "x")
    assert code == 2 and "weights_only" not in err and "not a checkpoint written by onetok-train" in err
    code, _, err = run(capsys, "export", env / "weights.safetensors", "--out", tmp_path / "x")
    assert code == 2 and "None" not in err and "safetensors weights file" in one_line(err)
    code, _, err = run(capsys, "eval-ar", "--model", env / "model", "--data", "/nonexist")
    assert code == 2 and one_line(err).count("/nonexist") == 1
    code, _, err = run(capsys, "sample", "--model", env / "model", "--prompt", PROMPT, "--top-p", 2, "--out",
                       tmp_path / "s")
    assert code == 2 and "--top-p" in one_line(err) and "top_p" not in err
    code, _, err = run(capsys, "sample", "--model", env / "model", "--prompt", "a zebra", "--out", tmp_path / "s")
    assert code == 2 and "the model knows: a, background, black" in one_line(err)


def test_17_wrong_tokenizer_config_is_not_cut_off(env, tmp_path, capsys):
    bad = shutil.copytree(env / "tok", tmp_path / "tok")
    meta = json.loads((bad / "config.json").read_text())
    meta["config"]["enc_width"] = 48
    (bad / "config.json").write_text(json.dumps(meta))
    code, _, err = run(capsys, "compress", "--tokenizer", bad, env / "images" / "a.png", "-o", tmp_path / "a.otok")
    assert code == 2 and "size mismatch" in one_line(err)


def test_17_prompts_ignore_case_and_punctuation(env, tmp_path, capsys):
    out = tmp_path / "s"
    shouted = "A Large RED circle, in the center; on a black background."
    assert run(capsys, "sample", "--model", env / "model", "--prompt", shouted, "--out", out, "--quiet")[0] == 0
    assert json.loads((out / "samples.jsonl").read_text().splitlines()[0])["prompt"] == PROMPT
    assert run(capsys, "sample", "--model", env / "model", "--prompt", PROMPT, "--out", tmp_path / "t", "--quiet")[0] == 0
    assert (out / "000.png").read_bytes() == (tmp_path / "t" / "000.png").read_bytes()


# --- 18. noise ------------------------------------------------------------------------------------------------------


def test_18_eval_tokenizer_is_quiet(env, tmp_path, capsys):
    shutil.copytree(env / "images", tmp_path / "images")
    (tmp_path / "images" / "a.txt").write_text("a caption\n")
    for data in (tmp_path / "images", env / "shapes" / "val"):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            code, _, err = run(capsys, "eval-tokenizer", "--tokenizer", env / "tok", "--data", data, "--lpips-net",
                               "none")
        assert code == 0 and "Warning" not in err


def test_18_no_raw_pillow_bomb_warning(env, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 200)  # 16 x 16 = 256 pixels now warns, as a 90 MP photo would
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        code, _, err = run(capsys, "data", "images", env / "images", "--out", tmp_path / "d", "--size", 8, "--quiet")
    assert not [w for w in caught if issubclass(w.category, Image.DecompressionBombWarning)]
    assert "DecompressionBombWarning" not in err


def test_18_progress_in_a_log_file_is_whole_lines(env, tmp_path, capsys):
    src = photos(tmp_path / "in", 20, size=(8, 8))  # stderr is not a terminal under capsys, as in a log file
    code, _, err = run(capsys, "compress", "--tokenizer", env / "tok", src, "-o", tmp_path / "out")
    progress = [line for line in err.splitlines() if line.startswith("compress: ")]
    assert code == 0 and "\r" not in err and progress[0] == "compress: 2/20 img (10%)" and len(progress) == 9


def test_18_tiny_rates_are_not_printed_as_zero():
    from onetok.scripts.folder_runs import Totals, format_bpp

    assert format_bpp(0.1234) == "0.1234" and format_bpp(0.00004321) == "4.32e-05"
    totals = Totals(images=1, bytes=60, pixels=12_000_000, tokens=10, tiles=10)
    assert "0.0000 bits" not in totals.summary() and "4e-05 bits" in totals.summary()


def test_18_no_litlogger_tip(env, tmp_path, capfd):
    os.chdir(tmp_path)
    code, text = train(capfd, ["fit", "--config", "tokenizer/shapes", "--model.init_args.preset", "tiny",
                               "--model.init_args.config", "{}", "--data.init_args.train_shards",
                               str(env / "shapes" / "train"), "--data.init_args.image_size", "16",
                               "--data.init_args.val_shards", str(env / "shapes" / "val"), "--trainer.max_steps", "1",
                               "--data.init_args.batch_size", "4",  # 8 samples: a batch of 64 would train on nothing
                               "--trainer.logger", "false", "--trainer.default_root_dir", str(tmp_path / "run")])
    assert code == 0 and "pypi.org/project/litlogger" not in text and "Seed set to" not in text


# --- 19. start-up ---------------------------------------------------------------------------------------------------


def test_19_argument_and_path_errors_do_not_load_torch(env, tmp_path):
    """The mechanism behind the < 0.5 s target (measured by `onetok bench startup`): these answers come before any
    heavy import."""
    script = f"""
import sys
from onetok.scripts.cli import main
codes = [main(a) for a in (
    ["--help"], ["--version"],
    ["caption", "--model", {str(tmp_path / 'nope')!r}, {str(env / 'images' / 'a.png')!r}],
    ["caption", "--model", {str(env / 'model')!r}, {str(tmp_path / 'nope.png')!r}],
    ["compress", {str(tmp_path / 'nope.png')!r}, "-o", {str(tmp_path / 'x.otok')!r}],
    ["compress", "--tokens", "0", {str(env / 'images' / 'a.png')!r}, "-o", {str(tmp_path / 'x.otok')!r}],
    ["compress", "--tokenizer", {str(tmp_path)!r}, {str(env / 'images' / 'a.png')!r}, "-o", {str(tmp_path / 'x.otok')!r}],
    ["sample", "--model", {str(env / 'model')!r}, "--prompt", "a", "-n", "0", "--out", {str(tmp_path / 's')!r}],
    ["sample", "--model", {str(tmp_path / 'nope')!r}, "--prompt", "a", "--out", {str(tmp_path / 's')!r}],
    ["eval-tokenizer", "--tokenizer", {str(env / 'tok')!r}, "--data", {str(tmp_path / 'nope')!r}],
    ["data", "shapes", "--out", {str(tmp_path / 'd')!r}, "--size", "0"],
    ["bench", "kernels", "--threads", "0"],
)]
heavy = sorted(m for m in ("torch", "lightning", "timm", "torchvision", "matplotlib") if m in sys.modules)
print(codes, heavy)
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.stdout.strip().splitlines()[-1] == "[0, 0, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2] []", proc.stdout + proc.stderr


# --- 20. help -------------------------------------------------------------------------------------------------------


def _walk(parser, name="onetok"):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help for a in action._choices_actions}
            for sub, p in action.choices.items():
                yield f"{name} {sub}", "(sub-command)", helps.get(sub), p.description
                yield from _walk(p, f"{name} {sub}")
        elif not isinstance(action, (argparse._HelpAction, argparse._VersionAction)):
            yield name, action, action.help, None


def test_20_every_command_and_option_explains_itself(capsys):
    from onetok.scripts.cli import build_parser

    problems = []
    for name, action, help_text, description in _walk(build_parser()):
        if action == "(sub-command)":
            if not help_text or not description:
                problems.append(f"{name}: no one-line help or description")
            continue
        label = "/".join(action.option_strings) or action.dest
        if not help_text:
            problems.append(f"{name} {label}: no help")
        elif action.default not in (None, False, argparse.SUPPRESS) and "default" not in help_text:
            problems.append(f"{name} {label}: default {action.default!r} not stated")
    assert not problems, problems
    assert main(["compress", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "where L is the tokenizer's number of tokens per tile" in text


def test_20_version(capsys):
    from onetok import __version__

    assert main(["--version"]) == 0 and capsys.readouterr().out.strip() == f"onetok {__version__}"


def test_20_configs_by_name_from_any_folder(tmp_path, monkeypatch):
    from onetok.fileio import UserError
    from onetok.train_checks import CONFIG_DIR, resolve_config

    monkeypatch.chdir(tmp_path)
    assert Path(resolve_config("tokenizer/shapes")) == CONFIG_DIR / "tokenizer" / "shapes.yaml"
    assert Path(resolve_config("titok_s128")) == CONFIG_DIR / "tokenizer" / "titok_s128.yaml"
    assert Path(resolve_config("configs/ar/shapes.yaml")) == CONFIG_DIR / "ar" / "shapes.yaml"
    with pytest.raises(UserError, match="ambiguous.*ar/shapes or tokenizer/shapes"):
        resolve_config("shapes")
    text = (REPO / "pyproject.toml").read_text()
    assert '"onetok.configs" = ["*/*.yaml"]' in text and '"onetok.configs" = "configs"' in text  # shipped


# --- 21. what a tokenizer knows -------------------------------------------------------------------------------------


def test_21_compress_warns_when_an_input_is_far_outside_the_training_data(env, tmp_path, capsys):
    from onetok.tokenizers import domain

    ckpt = {"datamodule_hyper_parameters": {"train_shards": str(env / "shapes" / "train"), "image_size": 16}}
    description = domain.describe_training(ckpt)
    assert "shapes" in description and "synthetic" in description
    tok = shutil.copytree(env / "tok", tmp_path / "tok")
    domain.record_trained_on(tok, description)
    assert domain.read_trained_on(tok) == description
    from onetok.tokenizers import Tokenizer

    assert fingerprint(Tokenizer.from_pretrained(tok)) == fingerprint(Tokenizer.from_pretrained(env / "tok"))
    photo = photos(tmp_path / "in", 1, size=(64, 48)) / "p00.png"
    code, _, err = run(capsys, "compress", "--tokenizer", tok, photo, "-o", tmp_path / "p.otok")
    assert code == 0 and "trained on the built-in shapes data" in err and "dB even with all 8 tokens" in err
    assert domain.far_outside_note("x.png", domain.FAR_PSNR_DB + 0.1, 8, description) is None
    assert len(shapes_words().words) == 24


def test_19_model_commands_load_no_compiler_stack(env, tmp_path):
    """compress and caption import torch but not torch._dynamo (einx first: its torch backend registers lazily),
    nor Lightning, matplotlib or torchmetrics. (timm pulls torch._dynamo in through torchvision; where timm is still
    imported by the tokenizer the _dynamo check waits for its removal.)"""
    script = f"""
import sys
from onetok.scripts.cli import main
assert main(["compress", "--tokenizer", {str(env / 'tok')!r}, {str(env / 'images' / 'a.png')!r}, "-o",
             {str(tmp_path / 'a.otok')!r}]) == 0
assert main(["caption", "--model", {str(env / 'model')!r}, {str(env / 'images' / 'a.png')!r}]) == 0
heavy = sorted(m for m in ("lightning", "matplotlib", "torchmetrics", "scipy") if m in sys.modules)
if "timm" not in sys.modules and "torch._dynamo" in sys.modules:
    heavy.append("torch._dynamo")
print("HEAVY", heavy)
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert "HEAVY []" in proc.stdout, proc.stdout + proc.stderr[-2000:]
