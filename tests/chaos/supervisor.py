"""Run :mod:`tests.chaos.app` as a subprocess, SIGKILL it at random moments, check the end.

>>> app = AppProcess(env, log_dir=tmp_path)           # doctest: +SKIP
>>> kills = await kill_repeatedly(app, side.progress, random.Random(seed), kills=5, total=2000)
>>> await app.terminate()                               # SIGTERM: graceful, exit code 0
"""

from __future__ import annotations

import asyncio
import inspect
import os
import random
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path

from sagaz import SagaStatus
from sagaz.abc import SagaStore
from tests.chaos.app import SAGA_NAME
from tests.chaos.side_effects import SideEffectTable

__all__ = [
    "ROOT",
    "AppProcess",
    "app_env",
    "assert_one_completed_saga_per_event",
    "kill_repeatedly",
    "unfinished_sagas",
    "wait_for",
    "wait_for_count",
]

ROOT = Path(__file__).resolve().parents[2]  # the repository: the app imports its src/ and tests/
SRC = ROOT / "src"


async def wait_for(
    predicate: Callable[[], object | Awaitable[object]],
    *,
    within: float,
    what: str,
    every: float = 0.05,
    alive: Callable[[], None] | None = None,
) -> None:
    """Poll ``predicate`` every ``every`` seconds until it holds; fail with ``what`` after
    ``within`` seconds. ``alive`` is called at each poll and raises if the app died."""
    deadline = time.monotonic() + within
    while True:
        if alive is not None:
            alive()
        result = predicate()
        if await result if inspect.isawaitable(result) else result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within}s waiting for {what}")
        await asyncio.sleep(every)


def app_env(
    *,
    store_url: str,
    side_effects: SideEffectTable,
    max_concurrent_sagas: int,
    lease_seconds: float = 2.0,
    **more: str,
) -> dict[str, str]:
    """The ``CHAOS_*`` variables of an app on ``store_url`` writing to ``side_effects``;
    ``more`` adds others (``CHAOS_SOURCE=...``)."""
    return {
        "CHAOS_STORE_URL": store_url,
        "CHAOS_SIDE_DSN": side_effects.dsn,
        "CHAOS_SIDE_TABLE": side_effects.name,
        "CHAOS_MAX_CONCURRENT_SAGAS": str(max_concurrent_sagas),
        "CHAOS_LEASE_SECONDS": str(lease_seconds),
        **more,
    }


async def wait_for_count(
    count: Callable[[], Awaitable[int]],
    target: int,
    *,
    what: str,
    stall: float = 20.0,
    within: float = 150.0,
    every: float = 0.5,
    alive: Callable[[], None] | None = None,
) -> None:
    """Poll ``count`` until it reaches ``target``; fail early when it has not moved for
    ``stall`` seconds (leases and redeliveries take a few seconds here, never that long), or
    after ``within`` seconds."""
    deadline = time.monotonic() + within
    last, moved = -1, time.monotonic()
    while True:
        if alive is not None:
            alive()
        current = await count()
        now = time.monotonic()
        if current >= target:
            return
        if current != last:
            last, moved = current, now
        if now - moved > stall:
            raise AssertionError(f"stuck at {current} of {target} {what} for {stall}s")
        if now > deadline:
            raise AssertionError(f"timed out after {within}s at {current} of {target} {what}")
        await asyncio.sleep(every)


class AppProcess:
    """One app, started and killed as many times as a test wants; each run logs to a file.

    The subprocess imports sagaz from this worktree's ``src`` (``PYTHONPATH``), whatever
    the interpreter's installed copy points at.
    """

    def __init__(
        self,
        env: Mapping[str, str],
        *,
        log_dir: Path,
        label: str = "app",
        module: str = "tests.chaos.app",
    ) -> None:
        self.env = dict(env)
        self.log_dir = log_dir
        self.label = label
        self.module = module  # what runs as ``python -m``
        self.process: asyncio.subprocess.Process | None = None
        self.runs = 0
        self.log_path: Path | None = None

    async def start(self, **overrides: str) -> None:
        """Start a new run (the previous one must be dead)."""
        assert self.process is None or self.process.returncode is not None
        self.runs += 1
        self.log_path = self.log_dir / f"{self.label}-{self.runs}.log"
        env = {
            **os.environ,
            **self.env,
            **overrides,
            "PYTHONPATH": os.pathsep.join([str(SRC), str(ROOT)]),
            "PYTHONUNBUFFERED": "1",
        }
        with self.log_path.open("wb") as log:
            self.process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                self.module,
                cwd=ROOT,
                env=env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )

    def check_alive(self) -> None:
        """Raise (with the end of its log) if the current run exited by itself."""
        assert self.process is not None
        if self.process.returncode is not None:
            raise AssertionError(
                f"{self.label} run {self.runs} exited with {self.process.returncode}:\n"
                f"{self.log_tail()}"
            )

    def log_tail(self, chars: int = 4000) -> str:
        if self.log_path is None or not self.log_path.exists():
            return "(no log)"
        return self.log_path.read_text(errors="replace")[-chars:]

    async def kill(self) -> None:
        """SIGKILL the current run and reap it."""
        assert self.process is not None
        self.check_alive()
        self.process.send_signal(signal.SIGKILL)
        await self.process.wait()

    async def terminate(self, timeout: float = 30.0) -> int:
        """SIGTERM (graceful stop) and wait; returns the exit code (0 when all went well)."""
        assert self.process is not None
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return await asyncio.wait_for(self.process.wait(), timeout)
        except TimeoutError:
            self.process.kill()
            await self.process.wait()
            raise AssertionError(
                f"{self.label} did not stop within {timeout}s of SIGTERM:\n{self.log_tail()}"
            ) from None

    async def close(self) -> None:
        """Kill whatever still runs (test teardown)."""
        if self.process is not None and self.process.returncode is None:
            self.process.kill()
            await self.process.wait()


async def kill_repeatedly(
    app: AppProcess,
    progress: Callable[[], Awaitable[int]],
    rng: random.Random,
    *,
    kills: int,
    total: int,
    within: float = 60.0,
    after_kill: Callable[[], Awaitable[None]] | None = None,
) -> list[int]:
    """Start ``app``, and ``kills`` times: wait until it made a random amount of progress
    since its start, SIGKILL it, (call ``after_kill``,) start it again. Returns the progress
    at each kill.

    The amount is drawn from ``total // 40 .. total // (kills + 2)`` finished sagas per run, so
    the kills land at random moments spread over the first two thirds or so of the work and
    the last run always has work left to finish.
    """
    at_kill: list[int] = []
    await app.start()
    for _ in range(kills):
        start = await progress()
        target = start + rng.randint(max(1, total // 40), total // (kills + 2))

        async def reached(target: int = target) -> bool:
            return await progress() >= target

        await wait_for(reached, within=within, what=f"progress {target}", alive=app.check_alive)
        await app.kill()
        at_kill.append(await progress())
        if after_kill is not None:
            await after_kill()
        await app.start()
    return at_kill


async def assert_one_completed_saga_per_event(store: SagaStore, total: int) -> None:
    """Every event ``n`` in ``range(total)`` has exactly one saga, completed; nothing else
    is in the store (no saga left pending or running, no dead letter)."""
    sagas = await store.list_sagas(saga_name=SAGA_NAME, limit=10 * total)
    statuses: dict[str, int] = {}
    for saga in sagas:
        statuses[saga.status.value] = statuses.get(saga.status.value, 0) + 1
    assert statuses == {SagaStatus.COMPLETED.value: total}, statuses
    numbers = sorted(saga.context["n"] for saga in sagas)
    assert numbers == list(range(total)), "some events have no saga, or more than one"
    dead = await store.list_dead_letters(limit=10)
    assert dead == [], [(d.reason, d.error) for d in dead]


async def unfinished_sagas(store: SagaStore, limit: int = 10) -> str:
    """The sagas not completed (up to ``limit``), with their owner and lease, and the dead
    letters: what a test stuck short of its count says about where it stuck."""
    sagas = await store.list_sagas(saga_name=SAGA_NAME, limit=100_000)
    left = [s for s in sagas if s.status is not SagaStatus.COMPLETED]
    lines = [
        f"{s.saga_id} {s.status.value} owner={s.owner} lease={s.lease_expires_at:%H:%M:%S.%f} "
        f"context={s.context}"
        if s.lease_expires_at is not None
        else f"{s.saga_id} {s.status.value} owner={s.owner} context={s.context}"
        for s in left[:limit]
    ]
    dead = await store.list_dead_letters(limit=limit)
    lines += [f"dead letter {d.saga_id}: {d.reason}: {d.error[:200]}" for d in dead]
    return f"{len(sagas)} sagas, {len(left)} not completed:\n" + "\n".join(lines)
