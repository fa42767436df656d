"""The shared token bucket of ``SagaStore.take_rate_token``, as every store computes it.

A bucket of ``rate`` tokens a second holding at most ``burst`` is kept as one number, its
*theoretical arrival time* ``tat`` (GCRA): taking a token moves it one ``interval`` (``1 /
rate``) later, and a token is free while ``tat`` is at most ``tolerance`` (``burst - 1``
intervals) ahead of now. Over any ``t`` seconds at most ``rate * t + burst`` tokens are taken.
PostgreSQL and Redis run :func:`take` as one statement or script on the server's clock;
SQLite and memory run it in Python.
"""

from __future__ import annotations

__all__ = ["MIN_RATE_WAIT", "rate_interval", "take"]

MIN_RATE_WAIT = 0.001
"""The shortest wait answered when no token is free (never 0.0, which means "taken")."""


def rate_interval(rate: float, burst: int) -> tuple[float, float]:
    """``(interval, tolerance)`` in seconds of a bucket of ``rate`` tokens a second and
    ``burst`` at most saved up."""
    if rate <= 0:
        raise ValueError(f"a rate limit must be > 0 tokens a second, got {rate}")
    if burst < 1:
        raise ValueError(f"a rate limit's burst must be >= 1, got {burst}")
    interval = 1.0 / rate
    return interval, (burst - 1) * interval


def take(tat: float | None, now: float, rate: float, burst: int) -> tuple[float, float | None]:
    """One take at ``now`` from a bucket at ``tat`` (``None``: new, full): ``(wait, new_tat)``
    where ``wait`` is ``0.0`` when taken (then ``new_tat`` is the bucket's new state) and the
    seconds until the next token otherwise (then ``new_tat`` is ``None``: unchanged)."""
    interval, tolerance = rate_interval(rate, burst)
    base = now if tat is None else max(tat, now)
    if base - now <= tolerance + 1e-9:  # float rounding must not strand a taker
        return 0.0, base + interval
    return max(base - now - tolerance, MIN_RATE_WAIT), None
