"""``ResumeFailures``: how often the recovery loop failed to resume a saga here, when it may
try again (a growing backoff), when a pending one is given up, and a bound on what it keeps."""

from __future__ import annotations

from datetime import timedelta

import pytest

from sagaz.clock import utcnow
from sagaz.engine.resume_failures import ResumeFailures
from sagaz.testing import FakeClock


def test_each_failure_waits_longer_up_to_the_maximum_and_five_give_up() -> None:
    failures = ResumeFailures(FakeClock(), interval=10.0)
    delays = []
    for n in range(1, 8):
        before = utcnow()
        retry_at = failures.failed("s", RuntimeError(f"refused {n}"))
        delays.append((retry_at - before).total_seconds())
        assert failures.count("s") == n
        assert failures.exhausted("s") == (None if n < 5 else f"RuntimeError: refused {n}")
    # equal jitter: between half the nominal delay and the nominal delay, which doubles
    for delay, nominal in zip(delays, (10, 20, 40, 80, 160, 320, 600), strict=True):
        assert nominal / 2 - 0.1 <= delay <= nominal + 0.1
    assert failures.exhausted("other") is None


def test_a_settled_saga_is_forgotten_and_starts_over() -> None:
    failures = ResumeFailures(FakeClock(), interval=1.0)
    for _ in range(5):
        failures.failed("s", "its run failed")
    failures.interrupted.add("s")
    failures.forget("s")
    assert (failures.count("s"), failures.exhausted("s"), failures.interrupted) == (0, None, set())
    assert failures.failed("s", "again") <= utcnow() + timedelta(seconds=1)


def test_a_long_interval_is_the_first_delay_even_past_the_maximum() -> None:
    failures = ResumeFailures(FakeClock(), interval=3600.0)
    retry_at = failures.failed("s", "x")
    assert retry_at >= utcnow() + timedelta(seconds=1800 - 1)


def test_it_keeps_at_most_limit_sagas_forgetting_the_oldest(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(ResumeFailures, "limit", 3)
    failures = ResumeFailures(FakeClock(), interval=1.0)
    for saga_id in ("a", "b", "c", "d"):
        failures.failed(saga_id, "x")
    failures.failed("b", "x")  # counted again: the newest now
    failures.failed("e", "x")
    assert [failures.count(s) for s in "abcde"] == [0, 2, 0, 1, 1]
