"""`onetok.timing`: the one median timer and interleaved rounds every benchmark uses (a fake clock: exact)."""

import pytest

from onetok import timing


@pytest.fixture
def clock(monkeypatch):
    """A fake wall clock; each call made through `takes(seconds)` advances it by that much."""
    now = [0.0]
    monkeypatch.setattr(timing.time, "perf_counter", lambda: now[0])

    def takes(seconds, log=None, name=None):
        def call():
            if log is not None:
                log.append(name)
            now[0] += seconds
            return seconds

        return call

    return takes


def test_median_time_skips_the_warm_up_and_takes_the_median(clock):
    durations = iter([100.0, 3.0, 1.0, 2.0])  # the first (warm-up) call is slow: not counted
    calls = []

    def fn():
        seconds = next(durations)
        calls.append(seconds)
        return clock(seconds)()

    result = timing.median_time(fn, repeats=3, warmup=1)
    assert calls == [100.0, 3.0, 1.0, 2.0]
    assert result.seconds == [3.0, 1.0, 2.0] and result.median_s == 2.0
    assert result.result == 2.0 and result.peak_extra_bytes is None  # the last call's value; no CUDA memory on CPU
    assert timing.median_time(clock(1.0), repeats=1, warmup=0).seconds == [1.0]
    with pytest.raises(ValueError):
        timing.median_time(clock(1.0), repeats=0)


def test_interleaved_alternates_the_order_and_the_median_ratio(clock):
    log = []
    seconds = timing.interleaved({"a": clock(3.0, log, "a"), "b": clock(1.0, log, "b")}, rounds=3)
    assert log == ["a", "b", "b", "a", "a", "b"]
    assert seconds == {"a": [3.0, 3.0, 3.0], "b": [1.0, 1.0, 1.0]}
    assert timing.median_ratio([3.0, 9.0, 4.0], [1.0, 1.0, 2.0]) == 3.0
    with pytest.raises(ValueError):
        timing.interleaved({"a": clock(1.0)}, rounds=0)


def test_the_cpu_clock_is_process_time(monkeypatch):
    monkeypatch.setattr(timing.time, "process_time", iter([5.0, 7.5]).__next__)
    with timing.Stopwatch(clock="cpu") as watch:
        pass
    assert watch.seconds == 2.5
    with pytest.raises(ValueError):
        timing.Stopwatch(clock="gpu")
