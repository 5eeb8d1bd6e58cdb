"""Issue 24, the output contract, over EVERY command that writes (onetok.fileio.check_output):

- an output is never an input: not an input file or folder, nothing inside an input folder, no folder holding an
  input -- with or without --force;
- the current folder and the folders above it are never outputs;
- --force replaces only what onetok wrote (its marks, its manifest), and refuses, naming them, files it did not write.

The writing commands are read off the CLI's parser (every option that names an output), so a new one without a row
in WRITERS fails `test_every_writing_option_has_a_row`. Each refusal is one line, exit code 2, and leaves every file
as it was (the inputs' copy and the output place are compared byte for byte).
"""

import argparse
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import pytest
from cli_env import build, snapshot

from onetok.scripts.cli import build_parser, main

PROMPT = "a large red circle in the center on a black background"
OUTPUT_DESTS = {"out", "output", "json", "grids", "report"}  # plus every dest ending in "_out"


def writing_options() -> set[str]:
    """'COMMAND OPTION' for every option of every leaf command that names something the command writes."""
    found = set()
    for command, parser in _leaf_parsers():
        for action in parser._actions:
            if (type(action) is argparse._StoreAction and action.option_strings
                    and (action.dest in OUTPUT_DESTS or action.dest.endswith("_out"))):
                found.add(f"{command} {action.option_strings[-1]}")
    return found


class Row(NamedTuple):
    kind: str  # "file" or "folder"
    argv: Callable[[Path, str], list]  # (workspace W, output out) -> argv without --force
    inside: Callable[[Path], Path] | None  # an output that is, is inside, or holds an input (None: no inputs)
    user_file: str = "notes.txt"  # folder rows: the user's file put in the output folder; file rows: the suffix
    force: tuple = ("--force",)
    foreign_text: str = "onetok did not write"
    cwd_text: str = "current folder"  # or the row's own refusal of a folder as its output file


WRITERS = {
    "data shapes --out": Row("folder", lambda W, out: ["data", "shapes", "--out", out, "--train", 2, "--val", 1, "--size",
                                                     8, "--quiet"], None),
    "data images --out": Row("folder", lambda W, out: ["data", "images", W / "images", "--out", out, "--size", 8,
                                                     "--quiet"], lambda W: W / "images" / "shards"),
    "export --out": Row("folder", lambda W, out: ["export", W / "garbage.ckpt", "--out", out], lambda W: W),
    "tokenize --out": Row("folder", lambda W, out: ["tokenize", "--tokenizer", W / "tok", "--data", W / "shapes",
                                                  "--out", out, "--quiet"], lambda W: W / "shapes" / "tokens"),
    "sample --out": Row("folder", lambda W, out: ["sample", "--model", W / "model", "--prompt", PROMPT, "--out", out,
                                                "--quiet"], lambda W: W / "model" / "samples"),
    "text-vocab train --out": Row("folder", lambda W, out: ["text-vocab", "train", "--captions", W / "shapes", "--size",
                                                          300, "--out", out, "--quiet"], lambda W: W / "shapes"),
    "eval-ar --json": Row("file", lambda W, out: ["eval-ar", "--model", W / "model", "--data", W / "shapes" / "val",
                                                "--n", 2, "--json", out], lambda W: W / "model" / "config.json",
                          ".json"),
    "eval-ar --fid-stats-out": Row("file", lambda W, out: ["eval-ar", "--model", W / "model", "--data",
                                                         W / "shapes" / "val", "--n", 2, "--fid", "--fid-stats-out",
                                                         out], lambda W: W / "shapes" / "val" / "stats.npz", ".npz"),
    "eval-ar --grids": Row("folder", lambda W, out: ["eval-ar", "--model", W / "model", "--data", W / "shapes" / "val",
                                                   "--n", 2, "--grids", out], lambda W: W / "model" / "grids"),
    "eval-tokenizer --json": Row("file", lambda W, out: ["eval-tokenizer", "--tokenizer", W / "tok", "--data",
                                                       W / "shapes" / "val", "--json", out],
                                 lambda W: W / "shapes" / "val" / "000000.tar", ".json"),
    "eval-tokenizer --fid-stats-out": Row("file", lambda W, out: ["eval-tokenizer", "--tokenizer", W / "tok", "--data",
                                                                W / "shapes" / "val", "--fid", "--fid-stats-out", out],
                                          lambda W: W / "tok" / "stats.npz", ".npz"),
    "compress --out": Row("folder", lambda W, out: ["compress", "--tokenizer", W / "tok", W / "images", "-o", out,
                                                  "--quiet"], lambda W: W / "images" / "otok", "a.otok"),
    "decompress --out": Row("file", lambda W, out: ["decompress", "--tokenizer", W / "tok", W / "a.otok", "-o", out],
                            lambda W: W / "a.otok", ".png"),
    "eval-compression --out": Row("folder", lambda W, out: ["eval-compression", "--tokenizer", W / "tok", W / "images",
                                                          "--out", out, "--quiet"], lambda W: W / "images", "rd.csv"),
    "recode --out": Row("file", lambda W, out: ["recode", "--tokenizer", W / "tok", W / "a.otok", "-o", out],
                        lambda W: W / "a.otok", ".otok", cwd_text="name the output *.otok"),
    "judge train --out": Row("folder", lambda W, out: ["judge", "train", "--data", W / "shapes", "--out", out],
                             lambda W: W / "shapes"),
    "demo --out": Row("folder", lambda W, out: ["demo", "--out", out, "--quick"], None, force=("--fresh",),
                      foreign_text="not a demo folder"),
}


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    return build(tmp_path_factory.mktemp("contract"))


@pytest.fixture
def workspace(env, tmp_path) -> Path:
    """A copy of the shared inputs that a case may put its output in (the shared ones stay untouched)."""
    return Path(shutil.copytree(env, tmp_path / "w", symlinks=True))


def test_every_writing_option_has_a_row():
    """A new command (or option) that writes has to join WRITERS, and so the contract tests below."""
    options = writing_options()
    assert options - set(WRITERS) == set(), "writing options without a row in WRITERS"
    assert set(WRITERS) - options == set(), "rows for options the CLI does not have"


def _refused(capsys, argv: list, expect: str, *folders: Path) -> None:
    before = snapshot(*folders)
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and "error:" in lines[0] and expect in lines[0], err
    assert snapshot(*folders) == before  # nothing written, nothing lost


@pytest.mark.parametrize("name", [n for n, row in WRITERS.items() if row.inside is not None])
def test_an_output_is_never_an_input(name, workspace, capsys):
    row = WRITERS[name]
    _refused(capsys, row.argv(workspace, row.inside(workspace)) + list(row.force), "never an input", workspace)


@pytest.mark.parametrize("name", list(WRITERS))
def test_force_replaces_only_what_onetok_wrote(name, workspace, tmp_path, capsys):
    row = WRITERS[name]
    if row.kind == "folder":
        out = tmp_path / "user"
        out.mkdir()
        (out / row.user_file).write_text("the user's own file\n")
    else:
        out = tmp_path / f"user{row.user_file}"
        out.write_bytes(b"the user's own file\n")
    _refused(capsys, row.argv(workspace, out) + list(row.force), row.foreign_text, workspace, tmp_path / "user"
             if row.kind == "folder" else out.parent)


@pytest.mark.parametrize("where", [".", "..", "cwd"])
@pytest.mark.parametrize("name", list(WRITERS))
def test_never_the_current_folder_or_above(name, where, workspace, tmp_path, capsys, monkeypatch):
    here = tmp_path / "a" / "here"  # ".." holds no input
    here.mkdir(parents=True)
    (here / "keep.txt").write_text("mine\n")
    monkeypatch.chdir(here)
    out = {".": ".", "..": "..", "cwd": str(here)}[where]
    row = WRITERS[name]
    _refused(capsys, row.argv(workspace, out) + list(row.force), row.cwd_text, workspace, here)


# --- the cases of the issue, named by their number ------------------------------------------------------------------


def test_01_text_vocab_out_over_its_captions_folder(workspace, capsys):
    _refused(capsys, ["text-vocab", "train", "--captions", workspace / "shapes", "--size", 300, "--out",
                      workspace / "shapes", "--force", "--quiet"], "is the input", workspace)


def test_05_export_out_over_its_tokenizer(workspace, capsys):
    _refused(capsys, ["export", workspace / "garbage.ckpt", "--tokenizer", workspace / "tok", "--out",
                      workspace / "tok", "--force"], "is the input", workspace)


def test_03_force_replaces_onetok_output_folder_but_not_a_user_file_in_it(workspace, tmp_path, capsys):
    out = tmp_path / "shapes"
    args = ["data", "shapes", "--out", out, "--train", 2, "--val", 1, "--size", 8, "--quiet", "--force"]
    assert main([str(a) for a in args]) == 0 and (out / ".onetok-output").is_file()
    assert main([str(a) for a in args]) == 0  # onetok's own folder: replaced
    (out / "train" / "my_notes.txt").write_text("mine\n")
    _refused(capsys, args, "train/my_notes.txt", tmp_path)


def test_04_out_dot_leaves_nothing_behind(workspace, tmp_path, capsys, monkeypatch):
    here = tmp_path / "here"
    here.mkdir()
    (here / "photo.png").write_bytes(b"mine")
    monkeypatch.chdir(here)
    for out in (".", here):
        _refused(capsys, ["sample", "--model", workspace / "model", "--prompt", PROMPT, "--out", out, "--force"],
                 "current folder", here)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["here", "w"]  # no `..old.XXXX/` anywhere


def test_decompress_to_stdout_dash_is_refused(workspace, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _refused(capsys, ["decompress", "--tokenizer", workspace / "tok", workspace / "a.otok", "-o", "-"],
             "standard output", tmp_path)


def test_force_replaces_onetok_files(workspace, tmp_path, capsys):
    """The other half of the contract: what onetok wrote is replaced with --force (marks and manifests)."""
    W = workspace
    runs = [["compress", "--tokenizer", W / "tok", W / "images" / "a.png", "-o", tmp_path / "a.otok"],
            ["decompress", "--tokenizer", W / "tok", W / "a.otok", "-o", tmp_path / "a.png"],
            ["eval-tokenizer", "--tokenizer", W / "tok", "--data", W / "shapes" / "val", "--json", tmp_path / "t.json"],
            ["eval-compression", "--tokenizer", W / "tok", W / "images", "--out", tmp_path / "rd", "--quiet",
             "--codecs", "jpeg", "--bpp", "0.5,1"],
            ["sample", "--model", W / "model", "--prompt", PROMPT, "--out", tmp_path / "s", "--quiet"]]
    for argv in runs:
        assert main([str(a) for a in argv]) == 0, argv
        assert main([str(a) for a in argv + ["--force"]]) == 0, argv
    capsys.readouterr()


# --- folder runs finish (cases 7, 8, 11, 12) -------------------------------------------------------------------------


def _run(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _fail_on(monkeypatch, name: str) -> None:
    """Codec.decode fails for the .otok file whose ids are those of `name` (a payload the decoder rejects)."""
    from onetok.tokenizers.codec import codec as C
    from onetok.tokenizers.codec import format as otok

    real, bad = C.Codec.decode, otok.loads(Path(name).read_bytes())

    def decode(self, f):
        if repr(f) == repr(bad):
            raise otok.OtokError("range decoder: payload does not decode")
        return real(self, f)

    monkeypatch.setattr(C.Codec, "decode", decode)


def test_07_decompress_goes_on_past_an_undecodable_file(workspace, tmp_path, capsys, monkeypatch):
    src = tmp_path / "otok"
    src.mkdir()
    for name, source in (("a.otok", "a.otok"), ("b.otok", "batch.otok"), ("c.otok", "a.otok")):
        shutil.copy(workspace / source, src / name)
    (src / "notes.md").write_text("not a .otok\n")
    _fail_on(monkeypatch, src / "b.otok")
    code, out, err = _run(capsys, "decompress", "--tokenizer", workspace / "tok", src, "-o", tmp_path / "png",
                          "--quiet")
    assert code == 1 and "decompressed 2 file(s)" in out and "skipped 1" in out
    assert sorted(p.name for p in (tmp_path / "png").iterdir()) == ["a.png", "c.png"]  # the one after it too
    skipped = [line for line in err.splitlines() if line.startswith("skipped")]
    assert len(skipped) == 1 and str(src / "b.otok") in skipped[0] and "cannot decode" in skipped[0]
    assert "notes.md" in err  # the other file, in one note


def test_12_decompress_error_names_the_otok(workspace, tmp_path, capsys, monkeypatch):
    _fail_on(monkeypatch, workspace / "a.otok")
    code, _, err = _run(capsys, "decompress", "--tokenizer", workspace / "tok", workspace / "a.otok", "-o",
                        tmp_path / "a.png")
    assert code == 2 and f"{workspace / 'a.otok'}: cannot decode" in err and "a.png" not in err.replace("a.otok", "")
    assert not (tmp_path / "a.png").exists()


def _photo_folder(workspace: Path, root: Path) -> Path:
    """Images (two of them sharing a stem), one without an extension, and what sits beside photos: a README, a
    table, licence files whose names would map to one output name."""
    from PIL import Image

    root.mkdir()
    shutil.copy(workspace / "images" / "a.png", root / "a.png")
    shutil.copy(workspace / "images" / "b.png", root / "b.png")
    Image.open(workspace / "images" / "a.png").convert("RGB").save(root / "a.jpg")
    shutil.copy(workspace / "images" / "b.png", root / "scan")  # a PNG, no extension: read by its signature
    (root / "README.md").write_text("# photos\n")
    (root / "MANIFEST.tsv").write_text("file\tsource\n")
    (root / "LICENSES").mkdir()
    (root / "LICENSES" / "copyright.mate-backgrounds").write_text("licence\n")
    (root / "LICENSES" / "copyright.plasma-workspace-wallpapers").write_text("licence\n")
    return root


def test_08_compress_a_photo_folder_with_its_text_files(workspace, tmp_path, capsys):
    src = _photo_folder(workspace, tmp_path / "photos")
    code, out, err = _run(capsys, "compress", "--tokenizer", workspace / "tok", src, "-o", tmp_path / "out",
                          "--quiet", "--tokens", 2)
    assert code == 0 and "compressed 4 image(s)" in out and "skipped 0" in out, err
    names = sorted(p.relative_to(tmp_path / "out").as_posix() for p in (tmp_path / "out").rglob("*.otok"))
    assert names == ["a.jpg.otok", "a.png.otok", "b.otok", "scan.otok"]  # a.png and a.jpg both kept
    notes = [line for line in err.splitlines() if line.startswith("note: ignored")]
    assert len(notes) == 1 and "ignored 4 file(s)" in notes[0] and "README.md" in notes[0]


def test_08_an_unreadable_image_among_good_ones_is_listed_and_exit_1(workspace, tmp_path, capsys):
    src = _photo_folder(workspace, tmp_path / "photos")
    (src / "broken.jpg").write_text("not a jpeg\n")
    code, out, err = _run(capsys, "compress", "--tokenizer", workspace / "tok", src, "-o", tmp_path / "out",
                          "--quiet", "--tokens", 2)
    assert code == 1 and "compressed 4 image(s)" in out and "skipped 1" in out
    assert [line for line in err.splitlines() if line.startswith("skipped")] == [
        line for line in err.splitlines() if "broken.jpg" in line and line.startswith("skipped")]


def test_11_eval_tokenizer_lists_unreadable_files(workspace, tmp_path, capsys):
    src = _photo_folder(workspace, tmp_path / "photos")
    (src / "broken.jpg").write_text("not a jpeg\n")
    code, out, err = _run(capsys, "eval-tokenizer", "--tokenizer", workspace / "tok", "--data", src)
    assert code == 1 and "broken.jpg" in err and "README.md" in err and "1 unreadable" in err
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "x.png").write_text("no\n")
    (bad / "y.jpg").write_text("no\n")
    code, _, err = _run(capsys, "eval-tokenizer", "--tokenizer", workspace / "tok", "--data", bad)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "x.png" in err and "all 2" in err


def test_data_images_ignores_text_files(workspace, tmp_path, capsys):
    src = _photo_folder(workspace, tmp_path / "photos")
    code, out, err = _run(capsys, "data", "images", src, "--out", tmp_path / "shards", "--size", 8, "--quiet")
    assert code == 0 and "written: 4, skipped: 0" in out and "ignored 4 file(s)" in err


def test_caption_takes_a_folder_and_notes_a_far_off_photo(workspace, tmp_path, capsys):
    src = _photo_folder(workspace, tmp_path / "photos")
    code, out, err = _run(capsys, "caption", "--model", workspace / "model", src)
    assert code == 0 and len(out.splitlines()) == 4 and "ignored 4 file(s)" in err
    assert sum("far outside" in line for line in err.splitlines()) == 1  # random weights: every photo is far off


def test_not_a_regular_file_is_said_so(workspace, tmp_path, capsys):
    code, _, err = _run(capsys, "compress", "--tokenizer", workspace / "tok", "/dev/null", "-o", tmp_path / "x.otok")
    assert code == 2 and "/dev/null: not a regular file or folder" in err


# --- numbers are finite (case 9 and the small ones) ------------------------------------------------------------------


def _leaf_parsers():
    def leaves(parser, prefix=()):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    yield from leaves(sub, prefix + (name,))
                return
        yield " ".join(prefix), parser

    return list(leaves(build_parser()))


def test_every_float_flag_refuses_inf_and_nan_and_every_seed_is_ranged():
    from onetok.scripts.arg_types import finite_float, positive_floats, seed

    for command, parser in _leaf_parsers():
        for action in parser._actions:
            assert action.type is not float, f"onetok {command} {action.option_strings}: plain float takes inf/nan"
            if action.dest == "seed":
                assert action.type is seed, f"onetok {command} --seed: not range-checked"
            if action.type in (finite_float, positive_floats):
                for bad in ("inf", "-inf", "nan"):
                    with pytest.raises(argparse.ArgumentTypeError):
                        action.type(bad)


@pytest.mark.parametrize("argv", [
    ["sample", "--model", "{W}/model", "--prompt", PROMPT, "--out", "{T}/s", "--cfg", "inf"],
    ["sample", "--model", "{W}/model", "--prompt", PROMPT, "--out", "{T}/s", "--temperature", "inf"],
    ["eval-ar", "--model", "{W}/model", "--data", "{W}/shapes/val", "--cfg", "inf"],
    ["bench", "sjd", "--model", "{W}/model", "--temperature", "inf"],
    ["compress", "--tokenizer", "{W}/tok", "{W}/images/a.png", "-o", "{T}/x.otok", "--psnr", "inf"],
    ["compress", "--tokenizer", "{W}/tok", "{W}/images/a.png", "-o", "{T}/x.otok", "--bpp", "inf"],
    ["compress", "--tokenizer", "{W}/tok", "{W}/images/a.png", "-o", "{T}/x.otok", "--scale", "nan"],
    ["eval-compression", "--tokenizer", "{W}/tok", "{W}/images", "--out", "{T}/rd", "--bpp", "nan"],
    ["eval-compression", "--tokenizer", "{W}/tok", "{W}/images", "--out", "{T}/rd", "--compare-bpp", "inf"],
    ["sample", "--model", "{W}/model", "--prompt", PROMPT, "--out", "{T}/s", "--seed", str(2**63)],
    ["caption", "--model", "{W}/model", "{W}/images/a.png", "--seed", "-1"],
    ["data", "shapes", "--out", "{T}/d", "--seed", str(2**64)],
    ["bench", "data", "--sizes", "0"],
    ["bench", "data", "--sizes", "abc"],
    ["sample", "--model", "{W}/model", "--prompt", PROMPT, "--out", "{T}/s", "--window", "4"],
    ["sample", "--model", "{W}/model", "--out", "{T}/s", "--prompt", "!!! ..."],
    ["sample", "--model", "{W}/model", "--out", "{T}/s", "--prompt", "\U0001f534 \u2b55"],
], ids=lambda a: " ".join(a[:1] + a[-2:]))
def test_09_bad_numbers_are_one_line_exit_2(workspace, tmp_path, capsys, argv):
    args = [a.replace("{W}", str(workspace)).replace("{T}", str(tmp_path)) for a in argv]
    code, _, err = _run(capsys, *args)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err and args[-1].split()[0][:3] in lines[0], err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w"]  # nothing written


@pytest.mark.parametrize(("flags", "expect"), [(["--bpp", "1e9"], "more than this image can use"),
                                               (["--psnr", "200"], "needs all"),
                                               (["--scale", "1e-9"], "less than one")])
def test_unreachable_targets_get_a_note(workspace, tmp_path, capsys, flags, expect):
    code, _, err = _run(capsys, "compress", "--tokenizer", workspace / "tok", workspace / "images" / "b.png", "-o",
                        tmp_path / "x.otok", *flags)
    assert code == 0 and sum(expect in line and line.startswith("note:") for line in err.splitlines()) == 1, err


# --- training refuses what cannot train (case 10) --------------------------------------------------------------------


def test_10_fewer_samples_than_a_batch_is_refused_before_lightning_logs(workspace, tmp_path, capfd, monkeypatch):
    import sys

    from onetok.scripts.train import main as train_main

    monkeypatch.chdir(tmp_path)
    argv = ["fit", "--config", "tokenizer/shapes", "--model.init_args.preset", "tiny", "--model.init_args.config",
            "{}", "--data.init_args.train_shards", str(workspace / "shapes" / "train"), "--data.init_args.image_size",
            "16", "--data.init_args.val_shards", str(workspace / "shapes" / "val"), "--data.init_args.batch_size",
            "64", "--trainer.max_steps", "1", "--trainer.default_root_dir", str(tmp_path / "run")]
    monkeypatch.setattr(sys, "argv", ["onetok-train", *argv])
    code = train_main(argv)
    out, err = capfd.readouterr()
    lines = [line for line in (out + err).splitlines() if line.strip()]
    assert code == 2 and lines[-1].startswith("onetok-train: error:") and "8 training samples" in lines[-1], out + err
    assert not list(tmp_path.rglob("lightning_logs"))


# --- errors name the file, warnings are one line, files get the user's umask ---------------------------------------


def test_a_corrupt_shard_is_one_warning_line_and_one_error_line(workspace, capsys):
    code, _, err = _run(capsys, "eval-tokenizer", "--tokenizer", workspace / "tok", "--data",
                        workspace / "corrupt_shards")
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 2 and "warning:" in lines[0] and "000000.tar" in lines[0], err
    assert "corrupt_shards" in lines[1]
    code, _, err = _run(capsys, "text-vocab", "train", "--captions", workspace / "corrupt_shards", "--size", 300,
                        "--out", workspace / "v", "--quiet")
    assert code == 2 and "000000.tar: not a readable tar shard" in err and "Traceback" not in err


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_outputs_get_the_users_umask(env, tmp_path, umask):
    """safetensors writes 0600 and a staging folder starts 0700; a finished output has the user's umask."""
    from onetok.ar_model.unified import UnifiedModel

    old = os.umask(umask)
    try:
        UnifiedModel.from_pretrained(env / "model").save_pretrained(tmp_path / "m")
    finally:
        os.umask(old)
    modes = {p.relative_to(tmp_path).as_posix(): p.stat().st_mode & 0o777 for p in tmp_path.rglob("*")}
    assert modes["m/model.safetensors"] == modes["m/config.json"] == 0o666 & ~umask
    assert modes["m"] == modes["m/tokenizer"] == 0o777 & ~umask


def test_a_failed_replacement_leaves_the_old_output_and_nothing_else(tmp_path, monkeypatch):
    from onetok import fileio

    out = tmp_path / "out"
    with fileio.staged_dir(out) as tmp:
        (tmp / "a.txt").write_text("old\n")
    real, calls = os.replace, []

    def replace(a, b):
        calls.append(b)
        if len(calls) == 3:  # manifest, old out aside, then the new one onto out: fails
            raise OSError(28, "No space left on device", str(b))
        real(a, b)

    monkeypatch.setattr(fileio.os, "replace", replace)
    with pytest.raises(OSError), fileio.staged_dir(out, force=True) as tmp:
        (tmp / "a.txt").write_text("new\n")
    assert (out / "a.txt").read_text() == "old\n" and sorted(p.name for p in tmp_path.iterdir()) == ["out"]
