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
    argv: Callable[[Path, str], list]  # (workspace W, output) -> argv without --force
    inside: Callable[[Path], Path] | None  # an output that is, is inside, or holds an input (None: no inputs)
    user_file: str = "notes.txt"  # folder rows: the user's file put in the output folder; file rows: the suffix
    force: tuple = ("--force",)
    foreign_text: str = "onetok did not write"


WRITERS = {
    "data shapes --out": Row("folder", lambda W, O: ["data", "shapes", "--out", O, "--train", 2, "--val", 1, "--size",
                                                     8, "--quiet"], None),
    "data images --out": Row("folder", lambda W, O: ["data", "images", W / "images", "--out", O, "--size", 8,
                                                     "--quiet"], lambda W: W / "images" / "shards"),
    "export --out": Row("folder", lambda W, O: ["export", W / "garbage.ckpt", "--out", O], lambda W: W),
    "tokenize --out": Row("folder", lambda W, O: ["tokenize", "--tokenizer", W / "tok", "--data", W / "shapes",
                                                  "--out", O, "--quiet"], lambda W: W / "shapes" / "tokens"),
    "sample --out": Row("folder", lambda W, O: ["sample", "--model", W / "model", "--prompt", PROMPT, "--out", O,
                                                "--quiet"], lambda W: W / "model" / "samples"),
    "text-vocab train --out": Row("folder", lambda W, O: ["text-vocab", "train", "--captions", W / "shapes", "--size",
                                                          300, "--out", O, "--quiet"], lambda W: W / "shapes"),
    "eval-ar --json": Row("file", lambda W, O: ["eval-ar", "--model", W / "model", "--data", W / "shapes" / "val",
                                                "--n", 2, "--json", O], lambda W: W / "model" / "config.json",
                          ".json"),
    "eval-ar --fid-stats-out": Row("file", lambda W, O: ["eval-ar", "--model", W / "model", "--data",
                                                         W / "shapes" / "val", "--n", 2, "--fid", "--fid-stats-out",
                                                         O], lambda W: W / "shapes" / "val" / "stats.npz", ".npz"),
    "eval-ar --grids": Row("folder", lambda W, O: ["eval-ar", "--model", W / "model", "--data", W / "shapes" / "val",
                                                   "--n", 2, "--grids", O], lambda W: W / "model" / "grids"),
    "eval-tokenizer --json": Row("file", lambda W, O: ["eval-tokenizer", "--tokenizer", W / "tok", "--data",
                                                       W / "shapes" / "val", "--json", O],
                                 lambda W: W / "shapes" / "val" / "000000.tar", ".json"),
    "eval-tokenizer --fid-stats-out": Row("file", lambda W, O: ["eval-tokenizer", "--tokenizer", W / "tok", "--data",
                                                                W / "shapes" / "val", "--fid", "--fid-stats-out", O],
                                          lambda W: W / "tok" / "stats.npz", ".npz"),
    "compress --out": Row("folder", lambda W, O: ["compress", "--tokenizer", W / "tok", W / "images", "-o", O,
                                                  "--quiet"], lambda W: W / "images" / "otok", "a.otok"),
    "decompress --out": Row("file", lambda W, O: ["decompress", "--tokenizer", W / "tok", W / "a.otok", "-o", O],
                            lambda W: W / "a.otok", ".png"),
    "eval-compression --out": Row("folder", lambda W, O: ["eval-compression", "--tokenizer", W / "tok", W / "images",
                                                          "--out", O, "--quiet"], lambda W: W / "images", "rd.csv"),
    "judge train --out": Row("folder", lambda W, O: ["judge", "train", "--data", W / "shapes", "--out", O],
                             lambda W: W / "shapes"),
    "demo --out": Row("folder", lambda W, O: ["demo", "--out", O, "--quick"], None, force=("--fresh",),
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
