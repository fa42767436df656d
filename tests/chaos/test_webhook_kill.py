"""Issue 12, acceptance 3: webhook requests answered 202, their process SIGKILLed before
their sagas finished, are completed after a restart (SQLite store, and PostgreSQL).

The first step of each saga records its side effect and then waits until a gate file
exists, which the test creates only after the kill. With ``max_concurrent_sagas=1`` the
first request's saga is blocked in that step and the second one is accepted but never
started: the kill hits one saga mid-step and one that had not run at all. The restarted
process resumes both through its recovery loop once the dead worker's leases expire.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from pathlib import Path

import httpx
import pytest

from sagaz import SagaStatus
from sagaz.storage.url import store_from_url
from sagaz.testing.tansu import free_port
from tests.chaos.app import STEPS, WEBHOOK_PATH
from tests.chaos.side_effects import SideEffectTable
from tests.chaos.supervisor import (
    AppProcess,
    app_env,
    assert_one_completed_saga_per_event,
    wait_for,
)
from tests.services import backend_params

pytestmark = pytest.mark.chaos

REQUESTS = 2


@pytest.fixture(params=backend_params("sqlite", "postgres"))
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'sagaz.db'}"
    url: str = request.getfixturevalue("postgres_store_url")
    return url


async def test_requests_answered_202_complete_after_the_process_is_killed_and_restarted(
    store_url: str, side_effects: SideEffectTable, tmp_path: Path
) -> None:
    gate = tmp_path / "gate"
    app = AppProcess(
        app_env(
            store_url=store_url,
            side_effects=side_effects,
            max_concurrent_sagas=1,
            CHAOS_SOURCE="webhook",
            CHAOS_GATE=str(gate),
        ),
        log_dir=tmp_path,
    )
    try:
        port = free_port()
        await app.start(CHAOS_WEBHOOK_PORT=str(port))
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            await wait_for(
                lambda: answers_ready(client),
                within=30,
                what="the webhook server",
                alive=app.check_alive,
            )
            saga_ids = []
            for n in range(REQUESTS):
                response = await client.post(WEBHOOK_PATH, json={"n": n})
                assert response.status_code == 202, response.text
                assert response.json()["status"] == "accepted"
                saga_ids.append(response.json()["saga_id"])

        async def first_step_entered() -> bool:
            return await side_effects.started(STEPS[0]) == [0]

        await wait_for(first_step_entered, within=30, what="saga 0 in its first step")
        await app.kill()

        async with store_from_url(store_url) as store:
            statuses = [(await store.get_saga(saga_id)) for saga_id in saga_ids]
            assert [s.status if s else None for s in statuses] == [
                SagaStatus.RUNNING,  # killed mid-step
                SagaStatus.PENDING,  # accepted (202), never started
            ]

            gate.touch()
            await app.start(CHAOS_WEBHOOK_PORT=str(free_port()))

            async def all_completed() -> bool:
                sagas = [await store.get_saga(saga_id) for saga_id in saga_ids]
                return all(s is not None and s.status is SagaStatus.COMPLETED for s in sagas)

            await wait_for(
                all_completed,
                within=30,
                every=0.1,
                what="both sagas completed after the restart",
                alive=app.check_alive,
            )
            assert await app.terminate() == 0, app.log_tail()
            await assert_one_completed_saga_per_event(store, REQUESTS)
    finally:
        await app.close()

    runs = await side_effects.runs()
    assert (runs.numbers, runs.rows) == (REQUESTS, REQUESTS * len(STEPS))
    # the step the kill interrupted ran again; nothing else did
    assert runs.repeated == [(0, STEPS[0], 2)]


@pytest.mark.timeout(120)
async def test_every_request_answered_202_completes_when_the_process_is_killed_under_load(
    side_effects: SideEffectTable, chaos_rng: random.Random, tmp_path: Path
) -> None:
    """500 concurrent requests, SIGKILL at a random moment of the burst: every request that
    got its 202 has a completed saga after the restart (SQLite: accepted means committed)."""
    requests, max_concurrent = 500, 20
    store_url = f"sqlite:///{tmp_path / 'sagaz.db'}"
    app = AppProcess(
        app_env(
            store_url=store_url,
            side_effects=side_effects,
            max_concurrent_sagas=max_concurrent,
            CHAOS_SOURCE="webhook",
        ),
        log_dir=tmp_path,
    )
    accepted: dict[int, str] = {}  # n -> saga_id of the 202 answers
    try:
        port = free_port()
        await app.start(CHAOS_WEBHOOK_PORT=str(port))
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{port}", limits=httpx.Limits(max_connections=50)
        ) as client:
            await wait_for(
                lambda: answers_ready(client),
                within=30,
                what="the webhook server",
                alive=app.check_alive,
            )

            async def post(n: int) -> None:
                try:
                    response = await client.post(WEBHOOK_PATH, json={"n": n})
                except httpx.TransportError:
                    return  # killed before it answered: no promise was made
                if response.status_code == 202:
                    accepted[n] = response.json()["saga_id"]

            burst = [asyncio.create_task(post(n)) for n in range(requests)]
            kill_after = chaos_rng.randint(requests // 10, requests // 2)
            await wait_for(
                lambda: len(accepted) >= kill_after,
                within=60,
                every=0.002,
                what=f"{kill_after} answers 202",
                alive=app.check_alive,
            )
            await app.kill()
            await asyncio.gather(*burst)
        print(f"killed after {len(accepted)} answers 202 of {requests} requests")

        restart_port = free_port()
        await app.start(CHAOS_WEBHOOK_PORT=str(restart_port))
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{restart_port}") as client:
            # every accepted saga may have completed before the kill: the restarted app then
            # has nothing to do, and a SIGTERM during its start-up would end it with -15
            await wait_for(
                lambda: answers_ready(client),
                within=30,
                what="the restarted webhook server",
                alive=app.check_alive,
            )
        async with store_from_url(store_url) as store:

            async def all_completed() -> bool:
                # the answers 202, and the requests accepted whose answer the kill cut off:
                # the restarted app recovers those (pending rows) as their leases expire
                stored = await store.list_sagas(limit=2 * requests)
                done = {saga.saga_id for saga in stored if saga.status is SagaStatus.COMPLETED}
                return done >= set(accepted.values()) and len(done) == len(stored)

            await wait_for(
                all_completed,
                within=60,
                every=0.2,
                what="a completed saga for every answer 202 and every saga stored",
                alive=app.check_alive,
            )
            assert await app.terminate() == 0, app.log_tail()
            sagas = await store.list_sagas(limit=2 * requests)
            assert await store.list_dead_letters() == []
    finally:
        await app.close()

    # requests accepted whose answer the kill cut off completed too: nothing is left behind
    assert {saga.status for saga in sagas} == {SagaStatus.COMPLETED}
    numbers = Counter(saga.context["n"] for saga in sagas)
    assert max(numbers.values()) == 1, "a request started two sagas"
    assert {accepted[n] for n in accepted} == {
        s.saga_id for s in sagas if s.context["n"] in accepted
    }
    runs = await side_effects.runs()
    assert (runs.numbers, runs.rows) == (len(sagas), len(sagas) * len(STEPS))
    assert runs.repeats <= max_concurrent, runs.repeated


async def answers_ready(client: httpx.AsyncClient) -> bool:
    """Whether the app's webhook server answers ``/readyz`` with 200."""
    try:
        return (await client.get("/readyz")).status_code == 200
    except httpx.TransportError:
        return False
