"""Shared test set-up: seeding, the Triton interpreter on CPU, the `gpu` marker, the shared photo set, and
pyproject's [tool.setuptools] table."""

import os
import random
from pathlib import Path

# Must happen before any Triton kernel module is imported: @triton.jit reads it at decoration time.
try:
    import torch

    _HAS_CUDA = torch.cuda.is_available()
except ImportError:  # pragma: no cover
    _HAS_CUDA = False
if not _HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")

import numpy as np
import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: pytest's own dependency reads TOML there
    import tomli as tomllib


def pytest_collection_modifyitems(config, items):
    if _HAS_CUDA:
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


# The tests run many tiny ops: one intra-op thread avoids thread hand-off costs (5-50x on a loaded 2-core box).
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _onetok_home(tmp_path_factory, monkeypatch):
    """Tests never touch the user's ~/.onetok (the tokenizer registry that `onetok export` writes to)."""
    monkeypatch.setenv("ONETOK_HOME", str(tmp_path_factory.getbasetemp() / "onetok_home"))


@pytest.fixture(autouse=True)
def _seed():
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    yield


# The project's real photographs live beside the repository (`../shared/data/photos`, with their licences); CI has
# them, a bare checkout may not.
SHARED_PHOTOS = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "photos"


@pytest.fixture
def shared_photos() -> Path:
    if not (SHARED_PHOTOS / "val").is_dir():
        pytest.skip(f"the shared photo set ({SHARED_PHOTOS}) is not on this machine")
    return SHARED_PHOTOS


@pytest.fixture(scope="session")
def setuptools_config() -> dict:
    """pyproject.toml's [tool.setuptools] table: what an install carries (packages, package-dir, package-data)."""
    return tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())["tool"]["setuptools"]
