"""Where commands compute: the device choice and the default number of CPU threads (onetok.scripts.devices)."""

import os
from types import SimpleNamespace

import pytest
import torch

from onetok.fileio import UserError
from onetok.scripts import devices
from onetok.scripts.train import cpu_threads


@pytest.fixture
def restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize(("cores", "parts", "expected"), [(4, 1, 4), (4, 2, 2), (4, 3, 1), (4, 8, 1), (1, 1, 1)])
def test_default_threads_are_the_cores_this_process_may_run_on(monkeypatch, cores, parts, expected):
    """Issue 26: the affinity, as torch uses it, divided among steps run side by side; never a guess from the load."""
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(cores)), raising=False)
    assert devices.own_cores() == cores and devices.share_of_cores(parts) == expected
    assert not hasattr(devices, "busy_cores") and "loadavg" not in open(devices.__file__).read()


def test_use_threads(monkeypatch, restore_threads):
    assert devices.use_threads(2) == 2 == torch.get_num_threads()
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    torch.set_num_threads(2)
    assert devices.use_threads(None) == 2  # an OMP_NUM_THREADS in the environment is torch's to apply
    monkeypatch.delenv("OMP_NUM_THREADS")
    monkeypatch.setattr(devices, "own_cores", lambda: 1)
    assert devices.use_threads(None) == 1 == torch.get_num_threads()


def test_check_threads(monkeypatch, capsys):
    monkeypatch.setattr(devices, "own_cores", lambda: 2)
    devices.check_threads(SimpleNamespace(threads=None))
    devices.check_threads(SimpleNamespace(threads=1))
    assert capsys.readouterr().err == ""
    with pytest.raises(UserError, match="--threads 0"):
        devices.check_threads(SimpleNamespace(threads=0))
    devices.check_threads(SimpleNamespace(threads=1000))  # issue 24: not silently accepted
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--threads 1000" in err and "2 core(s)" in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the answer without CUDA")
def test_choose_device_without_cuda():
    assert devices.choose_device("auto") == devices.choose_device(None) == "cpu"
    assert devices.choose_device("cpu") == "cpu"
    with pytest.raises(UserError, match="--device cuda:1"):
        devices.choose_device("cuda:1")


def test_training_threads_on_cpu(monkeypatch, restore_threads):
    from lightning.pytorch.accelerators import CPUAccelerator

    trainer = SimpleNamespace(accelerator=CPUAccelerator(), num_devices=2)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(5)), raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert cpu_threads(trainer) is None  # the user's choice stands
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert cpu_threads(trainer) == 2 == torch.get_num_threads()  # 5 cores shared by 2 processes
    assert cpu_threads(SimpleNamespace(accelerator=object(), num_devices=1)) is None  # not a CPU run
