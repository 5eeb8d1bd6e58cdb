"""Help texts never copy a default: a flag's default is formatted into its help (argparse's %(default)s, or a
constant from the torch-free onetok.sampling_defaults), so the help cannot drift from what the command does."""

import argparse
import inspect
import re

import pytest

from onetok import sampling_defaults
from onetok.scripts.cli import build_parser, main

COPIED = re.compile(r"\bdefault\b[^;()]*?(?<![\w.%])(-?\d+(?:\.\d+)?)(?![\w])")  # "(default 250)", "default: 0 = all"


def _parsers(parser: argparse.ArgumentParser, name: str = "onetok"):
    yield name, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub_name, sub in action.choices.items():
                yield from _parsers(sub, f"{name} {sub_name}")


def _copied_defaults() -> list[str]:
    """'onetok CMD --flag: help' for every help whose raw text holds its flag's numeric default as a literal."""
    found = []
    for name, parser in _parsers(build_parser()):
        for action in parser._actions:
            default = action.default
            if not action.help or isinstance(default, bool) or not isinstance(default, (int, float)):
                continue
            if any(float(n) == float(default) for n in COPIED.findall(action.help)):
                found.append(f"{name} {'/'.join(action.option_strings) or action.dest}: {action.help}")
    return found


def test_no_help_text_copies_its_default():
    assert _copied_defaults() == []


def test_the_rule_catches_a_copied_default(monkeypatch):
    real = argparse.ArgumentParser.add_argument

    def copying(self, *args, **kwargs):  # what a help text that copies its default looks like
        if args == ("--seed",):
            kwargs["help"] = f"random seed (default {kwargs.get('default')})"
        return real(self, *args, **kwargs)

    monkeypatch.setattr(argparse.ArgumentParser, "add_argument", copying)
    assert any("--seed" in line for line in _copied_defaults())


def test_the_sampling_defaults_have_one_owner(capsys):
    from onetok.ar_model.generate import DEFAULT_SETTINGS
    from onetok.ar_model.sjd import generate_image_tokens_sjd
    from onetok.ar_model.unified import UnifiedModel

    assert (DEFAULT_SETTINGS.cfg_scale, DEFAULT_SETTINGS.temperature) == (sampling_defaults.CFG_SCALE,
                                                                          sampling_defaults.TEMPERATURE)
    for fn in (generate_image_tokens_sjd, UnifiedModel.generate_images):
        assert inspect.signature(fn).parameters["window"].default == sampling_defaults.SJD_WINDOW
    assert main(["sample", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert f"else {sampling_defaults.CFG_SCALE:g}; 1 = off" in text
    assert f"else {sampling_defaults.TEMPERATURE:g}; 0 = greedy" in text
    assert f"SJD draft window (default {sampling_defaults.SJD_WINDOW})" in text


@pytest.mark.parametrize("command", [["sample"], ["eval-tokenizer"], ["data", "shapes"], ["judge", "train"]])
def test_formatted_defaults_show_their_value(command, capsys):
    assert main([*command, "--help"]) == 0
    text = capsys.readouterr().out
    assert "%(default)" not in text and "(default " in text
