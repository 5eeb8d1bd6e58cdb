"""The README's own command blocks: continuations join real continuation lines, every `onetok` line parses with the
real CLI parser, every `onetok-train` line names a shipped config whose keys LightningCLI accepts (`--print_config`,
in this process), an `onetok export` of a checkpoint points where the preceding training run writes, and the
cheap forms run (`onetok COMMAND --help`)."""

import re
import shlex
import sys
from pathlib import Path

import pytest
import yaml

from onetok.scripts.cli import build_parser, main

README = Path(__file__).resolve().parents[1] / "README.md"


def blocks() -> list[list[str]]:
    """The lines of every ```bash block."""
    found = re.findall(r"```bash\n(.*?)```", README.read_text(), flags=re.S)
    return [block.splitlines() for block in found]


def commands(lines: list[str]) -> list[str]:
    """The block's commands, continuation lines joined (a continuation line is indented, as the README writes them);
    comments dropped."""
    out: list[str] = []
    continued = False
    for line in lines:
        if continued:
            assert line.startswith("    "), f"README: a `\\` runs into a new command: {line!r}"
            out[-1] += " " + line.strip()
        elif line.strip():
            out.append(line.strip())
        continued = line.rstrip().endswith("\\")
        if continued:
            out[-1] = out[-1].rstrip("\\").rstrip()
    assert not continued, "README: a block ends in `\\`"
    for command in out:
        shlex.split(command, comments=True)  # quotes balanced
    return out


def argv_of(command: str) -> list[str]:
    return shlex.split(command, comments=True)


ALL = [c for block in blocks() for c in commands(block)]


def test_the_blocks_hold_the_commands_this_test_reads():
    assert any(c.startswith("onetok compress") for c in ALL) and any(c.startswith("onetok-train fit") for c in ALL)
    assert any(c.startswith("onetok export") for c in ALL) and any(c.startswith("make gpu-check") for c in ALL)


@pytest.mark.parametrize("command", [c for c in ALL if c.startswith("onetok ")])
def test_every_onetok_line_parses(command, capsys):
    argv = argv_of(command)[1:]
    try:
        build_parser().parse_args(argv)
    except SystemExit as exit_:
        pytest.fail(f"README: `{command}` does not parse: {capsys.readouterr().err.strip()} ({exit_.code})")


@pytest.mark.parametrize("name", sorted({argv_of(c)[1] for c in ALL if c.startswith("onetok ")}))
def test_help_of_every_command_the_readme_names(name, capsys):
    argv = ["data", "images"] if name == "data" else [name]
    assert main([*argv, "--help"]) == 0 and "usage: onetok" in capsys.readouterr().out


def _fit_lines() -> list[list[str]]:
    return [argv_of(c)[1:] for c in ALL if c.startswith("onetok-train fit")]


@pytest.mark.filterwarnings("ignore:LightningCLI's args parameter")
@pytest.mark.parametrize("argv", _fit_lines(), ids=lambda a: a[2])
def test_every_training_line_is_accepted(argv, capsys, monkeypatch, tmp_path):
    from onetok.scripts.train import main as train_main

    monkeypatch.chdir(tmp_path)
    args = [*argv, "--print_config"]
    monkeypatch.setattr(sys, "argv", ["onetok-train", *args])
    code = train_main(args)
    captured = capsys.readouterr()
    assert code == 0, f"README: `onetok-train {' '.join(argv)}`: {captured.err.strip()}"
    assert "default_root_dir" in captured.out


def test_exports_read_where_the_training_runs_write():
    """`onetok export RUNS/.../last.ckpt` after `onetok-train fit --config NAME` in the same block: the checkpoint
    lies below that config's default_root_dir (issue 24: the README said lightning_logs/ of the working folder)."""
    from onetok.train_checks import resolve_config

    checked = 0
    for block in blocks():
        root = None
        for command in commands(block):
            argv = argv_of(command)
            if command.startswith("onetok-train fit"):
                config = yaml.safe_load(Path(resolve_config(argv[argv.index("--config") + 1])).read_text())
                root = config["trainer"]["default_root_dir"]
            elif command.startswith("onetok export") and argv[2].endswith(".ckpt"):
                assert root is not None and argv[2].startswith(f"{root}/lightning_logs/"), (argv[2], root)
                checked += 1
    assert checked >= 2
