"""The demo's time budget: the AR training gets what the 20 minutes leave after the steps before and after it."""

from onetok import demo


def test_the_ar_training_gets_what_the_budget_leaves(tmp_path, monkeypatch):
    d = demo.Demo(tmp_path, 10, 10, quick=False)
    now = d.started
    monkeypatch.setattr(demo.time, "time", lambda: now + 518)  # the slow run's data + tokenizer + eval + tokenize
    left = demo.BUDGET_S - 518 - demo.AFTER_AR_S
    assert d.ar_time_cap() == ["--trainer.max_time", f"00:00:{left // 60:02d}:{left % 60:02d}"]
    monkeypatch.setattr(demo.time, "time", lambda: now + demo.BUDGET_S)  # nothing left: still a minute
    assert d.ar_time_cap() == ["--trainer.max_time", "00:00:01:00"]
