"""A poison saga, whose step kills its own worker process (as an out-of-memory kill or a
segfault would), no longer crash-loops: each restarted worker takes it over (the recovery
loop, once the dead worker's lease expired), counted in the store, and past
``max_recovery_attempts`` it is dead-lettered (reason ``recovery_exhausted``) and written
``failed`` instead of being run again. The worker then stays up, and the healthy event sent
with it completed. SQLite store, and PostgreSQL.

The first code counted failed resumptions per process only: a worker that dies counts
nothing, so the poison saga killed every worker that took it, for ever.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
import pytest

from sagaz import SagaStatus, TriggerConfig
from sagaz.storage.url import store_from_url
from sagaz.testing.tansu import free_port
from tests.chaos.app import STEPS, WEBHOOK_PATH
from tests.chaos.side_effects import SideEffectTable
from tests.chaos.supervisor import AppProcess, app_env, wait_for
from tests.services import backend_params

pytestmark = pytest.mark.chaos

POISON, HEALTHY = 0, 1
BOUND = TriggerConfig().max_recovery_attempts
LEASE_SECONDS = 1.0


@pytest.fixture(params=backend_params("sqlite", "postgres"))
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'sagaz.db'}"
    url: str = request.getfixturevalue("postgres_store_url")
    return url


async def answers(client: httpx.AsyncClient) -> bool:
    try:
        await client.get("/healthz")
    except httpx.TransportError:
        return False
    return True


@pytest.mark.timeout(180)
async def test_a_saga_that_kills_its_worker_is_dead_lettered_and_the_crash_loop_ends(
    store_url: str, side_effects: SideEffectTable, tmp_path: Path
) -> None:
    app = AppProcess(
        app_env(
            store_url=store_url,
            side_effects=side_effects,
            max_concurrent_sagas=2,
            lease_seconds=LEASE_SECONDS,
            CHAOS_SOURCE="webhook",
            CHAOS_POISON=str(POISON),
        ),
        log_dir=tmp_path,
    )
    try:
        port = free_port()
        await app.start(CHAOS_WEBHOOK_PORT=str(port))
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            await wait_for(
                lambda: answers(client), within=30, what="the webhook server", alive=app.check_alive
            )
            saga_ids = []
            for n in (POISON, HEALTHY):
                response = await client.post(WEBHOOK_PATH, json={"n": n})
                assert response.status_code == 202, response.text
                saga_ids.append(response.json()["saga_id"])
        poison_id, healthy_id = saga_ids

        async with store_from_url(store_url) as store:
            # the supervisor: a worker that died is restarted, as systemd or Kubernetes would
            deaths = 0
            deadline = time.monotonic() + 120

            async def dead_lettered() -> bool:
                return any(d.saga_id == poison_id for d in await store.list_dead_letters())

            while not await dead_lettered():
                assert app.process is not None
                if app.process.returncode is not None:
                    deaths += 1
                    # old code: the crash loop goes on for ever
                    assert deaths <= 3 * BOUND, f"still crash-looping after {deaths} deaths"
                    await app.start(CHAOS_WEBHOOK_PORT=str(free_port()))
                assert time.monotonic() < deadline, f"no dead letter after {deaths} deaths"
                await asyncio.sleep(0.1)

            # the first run and one per takeover up to the bound; the next takeover gave up
            assert deaths == BOUND + 1, app.log_tail()
            # the loop stopped: the worker outlives several leases and recovery passes
            await asyncio.sleep(4 * LEASE_SECONDS)
            app.check_alive()

            [dead] = await store.list_dead_letters()
            assert (dead.reason, dead.saga_id, dead.attempts) == (
                "recovery_exhausted",
                poison_id,
                BOUND + 1,
            )
            # started, it kept no event (no persist_events): `sagaz sagas resume` runs it
            # again from its context and steps, which its failed row keeps
            poison = await store.get_saga(poison_id)
            assert poison is not None
            assert (poison.status, poison.context) == (SagaStatus.FAILED, {"n": POISON})
            assert poison.error == dead.error
            healthy = await store.get_saga(healthy_id)
            assert healthy is not None and healthy.status is SagaStatus.COMPLETED
            assert await app.terminate() == 0, app.log_tail()
    finally:
        await app.close()

    runs = await side_effects.runs()
    # the poison saga's "charge" ran once per worker it killed, and "ship" never; the
    # healthy saga's steps ran once each
    assert runs.numbers == 1
    attempts = {(n, step): count for n, step, count in runs.repeated}
    assert attempts.get((POISON, STEPS[1])) == BOUND + 1
    assert all(n == POISON for n, _ in attempts)
