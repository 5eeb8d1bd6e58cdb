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


@pytest.mark.parametrize(("cores", "load", "expected"), [(4, 0.0, 4), (4, 1.4, 3), (4, 2.6, 1), (4, 9.0, 1),
                                                          (2, 1.3, 1), (1, 0.0, 1)])
def test_idle_cores_are_the_affinity_less_the_load(monkeypatch, cores, load, expected):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(cores)), raising=False)
    monkeypatch.setattr(devices, "busy_cores", lambda: load)
    assert devices.idle_cores() == expected


def test_busy_cores_counts_other_runnable_threads_now(monkeypatch, tmp_path):
    """/proc/loadavg's running count less this process; without /proc, the 1-minute load average."""
    loadavg = tmp_path / "loadavg"
    loadavg.write_text("1.90 1.20 0.80 3/250 12345\n")  # a lagging 1.9 average, but 3 runnable: us and 2 others
    monkeypatch.setattr(devices, "LOADAVG", str(loadavg))
    assert devices.busy_cores(samples=3) == 2.0
    loadavg.write_text("1.90 1.20 0.80 1/250 12345\n")  # only us: the previous step's load has ended
    assert devices.busy_cores(samples=1) == 0.0
    monkeypatch.setattr(devices, "LOADAVG", str(tmp_path / "missing"))
    monkeypatch.setattr(os, "getloadavg", lambda: (1.4, 1.0, 0.5))
    assert devices.busy_cores() == 1.4


def test_use_threads(monkeypatch, restore_threads):
    assert devices.use_threads(2) == 2 == torch.get_num_threads()
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    torch.set_num_threads(2)
    assert devices.use_threads(None) == 2  # an OMP_NUM_THREADS in the environment is torch's to apply
    monkeypatch.delenv("OMP_NUM_THREADS")
    monkeypatch.setattr(devices, "idle_cores", lambda: 1)
    assert devices.use_threads(None) == 1 == torch.get_num_threads()


def test_check_threads():
    devices.check_threads(SimpleNamespace(threads=None))
    devices.check_threads(SimpleNamespace(threads=1))
    with pytest.raises(UserError, match="--threads 0"):
        devices.check_threads(SimpleNamespace(threads=0))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the answer without CUDA")
def test_choose_device_without_cuda():
    assert devices.choose_device("auto") == devices.choose_device(None) == "cpu"
    assert devices.choose_device("cpu") == "cpu"
    with pytest.raises(UserError, match="--device cuda:1"):
        devices.choose_device("cuda:1")


def test_training_threads_on_cpu(monkeypatch, restore_threads):
    from lightning.pytorch.accelerators import CPUAccelerator

    trainer = SimpleNamespace(accelerator=CPUAccelerator(), num_devices=2)
    monkeypatch.setattr("onetok.scripts.train.idle_cores", lambda: 5)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert cpu_threads(trainer) is None  # the user's choice stands
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert cpu_threads(trainer) == 2 == torch.get_num_threads()  # 5 idle cores shared by 2 processes
    assert cpu_threads(SimpleNamespace(accelerator=object(), num_devices=1)) is None  # not a CPU run
