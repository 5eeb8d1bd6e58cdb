"""docs/architecture.md opens with the data path: a numbered list of stages right after the title, each naming the
one file that owns it (a path from the repository root) -- and every path named there exists. Its package table
names every module of every installed package (pyproject's package list), and no module that is gone."""

import fnmatch
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "architecture.md"
ITEM = re.compile(r"^(\d+)\. (.*)")
PATH = re.compile(r"`([\w.-]+(?:/[\w.-]+)+)`")  # `folder/file.ext`: a path from the repository root
ROW = re.compile(r"^\| `([\w.]+)` \| (.*?) \|")  # a package table row: | `onetok.data` | `images.py`, ... | what |


def data_path_stages(text: str) -> list[str]:
    """The numbered items that follow the title (continuation lines joined), up to the first other paragraph."""
    lines = text.splitlines()
    assert lines[0].startswith("# "), "the document starts with its title"
    body = lines[1:]
    while body and not body[0].strip():
        body.pop(0)
    stages: list[str] = []
    for line in body:
        match = ITEM.match(line)
        if match:
            assert int(match.group(1)) == len(stages) + 1, f"stages are numbered 1, 2, ...: {line!r}"
            stages.append(match.group(2))
        elif line.startswith("   ") and stages:
            stages[-1] += " " + line.strip()
        else:
            break
    return stages


def test_data_path_opens_the_document():
    stages = data_path_stages(DOC.read_text(encoding="utf-8"))
    assert len(stages) >= 8, stages
    owners = []
    for stage in stages:
        paths = PATH.findall(stage)
        assert paths, f"a stage names its file: {stage[:80]!r}"
        owners.append(paths[0])
        assert paths[0].endswith(".py"), f"the first path of a stage is its file: {stage[:80]!r}"
    assert len(set(owners)) == len(owners), f"one file per stage: {owners}"
    for stage in ("data/shards.py", "ar_model/tokenize.py", "ar_model/sequence.py", "tokenizers/codec/format.py"):
        assert stage in owners


def test_every_path_named_in_the_data_path_exists():
    stages = data_path_stages(DOC.read_text(encoding="utf-8"))
    named = [path for stage in stages for path in PATH.findall(stage)]
    missing = [path for path in named if not (REPO / path).exists()]
    assert not missing, missing


def test_stage_parser_reads_a_list_and_stops_after_it():
    text = "# T\n\n1. **A** -- `a/b.py`. x\n   y `c/d.py`\n2. **B** -- `e/f.py`.\n\nprose `g/h.py`\n"
    assert data_path_stages(text) == ["**A** -- `a/b.py`. x y `c/d.py`", "**B** -- `e/f.py`."]
    assert [PATH.findall(s) for s in data_path_stages(text)] == [["a/b.py", "c/d.py"], ["e/f.py"]]


def package_folders(setup: dict) -> dict[str, Path]:
    """Every installed package (pyproject's [tool.setuptools] `setup` table: packages) -> its folder in the checkout."""
    roots = setup["package-dir"]
    folders = {}
    for package in setup["packages"]:
        parts = package.split(".")
        root = max(i for i in range(1, len(parts) + 1) if ".".join(parts[:i]) in roots)  # the longest mapped prefix
        folders[package] = REPO / roots[".".join(parts[:root])] / Path(*parts[root:])
    return folders


def named_in_table(text: str) -> dict[str, list[str]]:
    """package -> the file names (or `cmd_*.py` patterns) its table rows name in their files column."""
    named: dict[str, list[str]] = {}
    for line in text.splitlines():
        match = ROW.match(line)
        if match:
            named.setdefault(match.group(1), []).extend(re.findall(r"`([^`/]+\.py)`", match.group(2)))
    return named


def test_the_package_table_names_every_module_and_no_gone_one(setuptools_config):
    named = named_in_table(DOC.read_text(encoding="utf-8"))
    unnamed, gone = [], []
    for package, folder in package_folders(setuptools_config).items():
        modules = sorted(p.name for p in folder.glob("*.py") if p.name != "__init__.py")
        patterns = named.get(package, [])
        unnamed += [f"{package}: {m}" for m in modules if not any(fnmatch.fnmatch(m, pat) for pat in patterns)]
        gone += [f"{package}: {pat}" for pat in patterns if not any(fnmatch.fnmatch(m, pat) for m in modules)]
    assert not unnamed, f"modules docs/architecture.md's package table leaves out: {unnamed}"
    assert not gone, f"names in the package table with no module: {gone}"


def test_table_reader_reads_rows_and_patterns(setuptools_config):
    text = "| `a.b` | `x.py`, `cmd_*.py` | what `y.py` does |\n| `a.b` | `z.py` | more |\nprose `w.py`\n"
    assert named_in_table(text) == {"a.b": ["x.py", "cmd_*.py", "z.py"]}
    folders = package_folders(setuptools_config)
    assert {"onetok", "onetok.data", "onetok.tokenizers.codec"} <= set(folders)
    assert folders["onetok.tokenizers.codec"] == REPO / "tokenizers" / "codec"
