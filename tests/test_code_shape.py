"""The project's size rules hold for every source file: no function over 60 lines, no file over 600 lines."""

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("onetok", "data", "tokenizers", "ar_model", "kernels", "scripts")
SOURCES = sorted(p for pkg in PACKAGES for p in (REPO / pkg).rglob("*.py"))
MAX_FUNCTION_LINES, MAX_FILE_LINES = 60, 600


def test_sources_are_found():
    assert len(SOURCES) > 50 and all(p.is_file() for p in SOURCES)


@pytest.mark.parametrize("path", SOURCES, ids=[str(p.relative_to(REPO)) for p in SOURCES])
def test_functions_and_files_stay_small(path):
    source = path.read_text()
    assert source.count("\n") <= MAX_FILE_LINES, f"{path.name}: {source.count(chr(10))} lines"
    long = [(node.name, node.end_lineno - node.lineno + 1) for node in ast.walk(ast.parse(source))
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
            and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES]
    assert not long, f"{path.name}: functions over {MAX_FUNCTION_LINES} lines: {long}"
