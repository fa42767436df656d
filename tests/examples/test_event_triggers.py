"""``examples/event_triggers``: Cloacina's three poll triggers, run as the README says
(``python -m examples.event_triggers.main``), each fed something the test controls:

* the file watcher: CSV files in a temporary inbox (one valid, one broken);
* the queue monitor: a Redis list on the real Redis (5 jobs, then 15);
* the health check: an HTTP service of the test's own that answers 503 until the recovery
  saga's restart command (a ``POST /restart`` to it, after 3 s) "restarts" it; a check that
  fails while the recovery runs fires again, and ``allow_concurrent=False`` skips it.

What the test reads: the files' directories, the Redis list, the service's restarts, and the
sagas and trigger schedules in the example's store (SQLite).
"""

from __future__ import annotations

import asyncio
import shlex
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from redis.asyncio import Redis

from sagaz import SagaStatus
from sagaz.records import SagaRecord
from sagaz.storage.sqlite import SQLiteSagaStore
from sagaz.types import TERMINAL_SAGA_STATUSES, StepStatus
from tests.services import unique_name

from .running import running_example

#: each Cloacina trigger's schedule row is kept under the id of the @trigger it feeds (the
#: id that `sagaz triggers pause` takes); its executions keep the Trigger's name
TRIGGER_IDS = {
    "file_watcher": "file-processing.on_new_file",
    "queue_monitor": "queue-draining.on_deep_queue",
    "service_health": "service-recovery.on_unhealthy",
}


class FlakyService:
    """An HTTP service answering ``GET /`` with 503 until ``POST /restart``, then 200."""

    def __init__(self) -> None:
        self.healthy = False
        self.restarts = 0
        self.checks = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            method, path, _ = (await reader.readline()).decode().split(" ", 2)
            while (await reader.readline()).strip():  # the headers
                pass
            if (method, path) == ("POST", "/restart"):
                self.healthy = True
                self.restarts += 1
            else:
                self.checks += 1
            status = "200 OK" if self.healthy else "503 Service Unavailable"
            writer.write(
                f"HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".encode()
            )
            await writer.drain()
        finally:
            writer.close()


@pytest.fixture
async def service() -> AsyncIterator[tuple[FlakyService, int]]:
    flaky = FlakyService()
    server = await asyncio.start_server(flaky.handle, "127.0.0.1", 0)
    async with server:
        yield flaky, server.sockets[0].getsockname()[1]


async def test_file_watcher_queue_monitor_and_health_check_fire_their_sagas(
    redis_url: str, tmp_path: Path, service: tuple[FlakyService, int]
) -> None:
    flaky, port = service
    data = tmp_path / "data"
    inbox = data / "inbox"
    inbox.mkdir(parents=True)
    (inbox / "orders.csv").write_text("id,amount\n1,10\n2,20\n3,30\n")
    (inbox / "broken.csv").write_text("id,amount\n1,10\n2\n")
    key = unique_name("jobs")
    restart = shlex.join(
        [
            sys.executable,
            "-c",
            # a restart that takes 3 s: the next failed check fires while the recovery runs
            "import time, urllib.request as r; time.sleep(3); "
            f"r.urlopen(r.Request('http://127.0.0.1:{port}/restart', method='POST'))",
        ]
    )
    env = {
        "SAGAZ_REDIS_URL": redis_url,
        "SAGAZ_STORE_URL": f"sqlite:///{tmp_path / 'sagaz.db'}",
        "EVENT_TRIGGERS_DATA_DIR": str(data),
        "EVENT_TRIGGERS_QUEUE_KEY": key,
        "EVENT_TRIGGERS_HEALTH_URL": f"http://127.0.0.1:{port}/",
        "EVENT_TRIGGERS_RESTART_COMMAND": restart,
    }
    store = SQLiteSagaStore(tmp_path / "sagaz.db")
    async with Redis.from_url(redis_url, decode_responses=True) as redis:
        await redis.rpush(key, *[f"job-{n}" for n in range(5)])
        try:
            async with running_example("examples.event_triggers.main", env) as example:
                await example.wait_for_line("event triggers are now active")
                async with store:

                    async def queue_polled() -> bool:
                        schedule = await store.get_trigger_schedule(TRIGGER_IDS["queue_monitor"])
                        return schedule is not None and schedule.last_poll_at is not None

                    # 5 jobs, not more than 10: the first poll does not fire
                    await example.wait_until(queue_polled, "a poll of the queue monitor")
                    assert await redis.llen(key) == 5
                    await redis.rpush(key, *[f"job-{n}" for n in range(5, 15)])

                    async def finished() -> dict[str, list[SagaRecord]]:
                        sagas: dict[str, list[SagaRecord]] = {}
                        for saga in await store.list_sagas():
                            if saga.status in TERMINAL_SAGA_STATUSES:
                                sagas.setdefault(saga.saga_name, []).append(saga)
                        done = {name: len(found) for name, found in sagas.items()}
                        expected = {
                            "file-processing": 2,
                            "queue-draining": 1,
                            "service-recovery": 1,
                        }
                        return sagas if done == expected else {}

                    await example.wait_until(finished, "the sagas of the 3 triggers", within=30)
                    sagas = await finished()
                    steps = {
                        s.context["filename"]: await store.get_steps(s.saga_id)
                        for s in sagas["file-processing"]
                    }
                    schedules = {
                        name: await store.get_trigger_schedule(trigger_id)
                        for name, trigger_id in TRIGGER_IDS.items()
                    }
                    await example.stop()
                    # settled by now (an execution is closed just after its saga ends)
                    file_runs = await store.list_trigger_executions(TRIGGER_IDS["file_watcher"])
            remaining = await redis.llen(key)
        finally:
            await redis.delete(key)

    # the intervals and overlap policies of Cloacina's triggers, as the store recorded them
    assert {
        name: (s.poll_interval_ms, s.allow_concurrent) for name, s in schedules.items() if s
    } == {
        "file_watcher": (2000, False),
        "queue_monitor": (3000, True),
        "service_health": (2000, False),
    }

    # files: the valid one processed and archived, the broken one rejected
    assert sorted(run.saga_id for run in file_runs) == sorted(
        s.saga_id for s in sagas["file-processing"]
    )
    assert all(run.completed_at is not None for run in file_runs)  # no file in progress
    files = {s.context["filename"]: s for s in sagas["file-processing"]}
    assert files["orders.csv"].status is SagaStatus.COMPLETED
    assert files["orders.csv"].context["processed"] == 3
    assert files["broken.csv"].status is SagaStatus.COMPENSATED
    assert "line 3: 1 fields, header has 2" in (files["broken.csv"].error or "")
    assert {s.name: s.status for s in steps["broken.csv"]} == {
        "claim_file": StepStatus.COMPENSATED,
        "validate_file": StepStatus.FAILED,
    }
    assert sorted(p.relative_to(data).as_posix() for p in data.rglob("*.csv")) == [
        "processed/orders.csv",
        "rejected/broken.csv",
    ]

    # the queue: drained once it held more than 10 jobs, all 15 in one batch
    [drain] = sagas["queue-draining"]
    assert drain.status is SagaStatus.COMPLETED
    assert (drain.context["depth"], drain.context["processed"]) == (15, 15)
    assert drain.context["jobs"] == [f"job-{n}" for n in range(15)]
    assert remaining == 0

    # the service: recovered after 3 failed checks in a row, restarted once
    [recovery] = sagas["service-recovery"]
    assert recovery.status is SagaStatus.COMPLETED
    assert (recovery.context["restarted"], recovery.context["recovered"]) == (True, True)
    assert flaky.restarts == 1
    logged = example.output()
    assert "web check failed (3 in a row): HTTP 503" in logged
    incident = recovery.context["incident_id"]
    assert logged.index("(3 in a row)") < logged.index(f"{incident}: web is down")
    # the 4th failed check fired during the recovery: allow_concurrent=False skipped it
    assert logged.index("(4 in a row)") < logged.index(f"{incident}: web restarted")
    skipped = "service-recovery: still running for {'service': 'web', 'health_url':"
    assert skipped in logged
