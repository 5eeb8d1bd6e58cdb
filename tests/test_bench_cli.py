"""`onetok bench ...`: the help texts state defaults read from `onetok.bench.defaults` (never copied numbers), and
the `bench data` ranks run as `python -m onetok.bench.data_memory` processes."""

import argparse
import re

import pytest

from onetok.bench import defaults
from onetok.scripts import cmd_bench
from onetok.scripts.cli import build_parser

OURS = ("tokenizer", "kernels", "sjd", "data", "startup")  # not `codec`, `portable-coder`: scripts/bench_*.py


def bench_parsers() -> dict[str, argparse.ArgumentParser]:
    bench = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices["bench"]
    return next(a for a in bench._actions if isinstance(a, argparse._SubParsersAction)).choices


def help_of(parser: argparse.ArgumentParser) -> str:
    return " ".join(parser.format_help().split())


def test_every_default_is_stated_and_none_is_copied_into_a_help_text():
    for name in OURS:
        for action in bench_parsers()[name]._actions:
            if not action.option_strings or isinstance(action, argparse._HelpAction):
                continue
            assert action.help, f"bench {name} {action.option_strings[0]}: no help"
            if isinstance(action.default, int) and not isinstance(action.default, bool) and action.default > 1:
                copied = re.search(rf"(?<![\w.]){action.default}(?![\w.])", action.help)
                assert not copied, f"bench {name} {action.option_strings[0]}: the default is copied into {action.help!r}"
            if action.default not in (None, False):
                assert "default" in action.help, f"bench {name} {action.option_strings[0]}: default not stated"


def test_help_texts_follow_the_defaults_module(monkeypatch):
    monkeypatch.setattr(defaults, "SJD_PROMPTS", 7)
    monkeypatch.setattr(defaults, "KERNEL_REPEATS", {"cuda": 17, "cpu": 13})
    monkeypatch.setattr(defaults, "DATA_SIZES", [11, 22])
    monkeypatch.setattr(defaults, "TOKENIZER_MIN_CUDA_ROUNDS", 19)
    monkeypatch.setattr(defaults, "STARTUP_RUNS", 23)
    parsers = bench_parsers()
    assert "number of prompts (default 7)" in help_of(parsers["sjd"])
    assert "(default 17 on CUDA, 13 on CPU)" in help_of(parsers["kernels"])
    assert "(default [11, 22])" in help_of(parsers["data"])
    assert "on CUDA at least 19)" in help_of(parsers["tokenizer"])
    assert "(default 23)" in help_of(parsers["startup"])
    assert parsers["sjd"].parse_args(["--model", "m"]).prompts == 7


@pytest.mark.parametrize("argv", [["kernels", "--dtypes", "fp8"], ["kernels", "--metrics", "hamming"]])
def test_bad_kernel_names_are_one_line_errors(capsys, argv):
    from onetok.scripts.cli import main

    assert main(["bench", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "takes" in err


def test_bench_data_reads_through_rank_processes(tmp_path, capsys):
    from onetok.scripts.cli import main

    assert main(["bench", "data", "--sizes", "40", "--ranks", "2", "--tokens", "8", "--codebook", "16",
                 "--batch", "4", "--buffer", "8", "--dir", str(tmp_path), "--json"]) == 0
    import json

    results = json.loads(capsys.readouterr().out)
    assert [(r["samples"], r["mode"]) for r in results] == [(40, "memory"), (40, "stream")]
    for r in results:
        assert [x["rank"] for x in r["ranks"]] == [0, 1]
        assert sum(x["rows"] for x in r["ranks"]) == 40  # each rank its share of one epoch, in batches of 4
    assert list(tmp_path.iterdir()) == []  # the token folders are removed


def test_every_bench_is_registered():
    assert set(cmd_bench.benches()) == {*OURS, "codec", "portable-coder"}


def test_bench_startup_times_each_case_as_a_process(monkeypatch):
    """The report's plumbing on cheap stand-in processes (the real cases start torch: `onetok bench startup`)."""
    from onetok.bench import startup

    table = {"python (baseline)": (["-c", "pass"], None), "import torch (baseline)": (["-c", "import json"], None),
             "ok": (["-c", "import json"], 60.0), "fails": (["-c", "import sys; sys.exit(3)"], 60.0)}
    monkeypatch.setattr(startup, "_models", lambda model, tokenizer, root: ("m", "t"))
    monkeypatch.setattr(startup, "cases", lambda model, tokenizer, photo, out: table)
    report = startup.startup_report(runs=2)
    rows = {r["case"]: r for r in report["rows"]}
    assert list(rows) == list(table) and report["runs"] == 2
    assert rows["fails"]["exit_code"] == 3 and rows["ok"]["exit_code"] == 0 and rows["ok"]["meets_target"]
    assert rows["python (baseline)"]["target_s"] is None and rows["ok"]["heavy_imports"] == []
    assert all(0 < r["min_s"] <= r["median_s"] for r in rows.values())
    assert "fails" in startup.format_report(report)
