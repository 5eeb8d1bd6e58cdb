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

    def leaves(parser, prefix=()):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    yield from leaves(sub, prefix + (name,))
                return
        yield " ".join(prefix), parser

    found = set()
    for command, parser in leaves(build_parser()):
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
    _refused(capsys, row.argv(workspace, out) + list(row.force), "current folder", workspace, here)


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
