"""Issue 12, acceptance 3: webhook requests answered 202, their process SIGKILLed before
their sagas finished, are completed after a restart (SQLite store, and PostgreSQL).

The first step of each saga records its side effect and then waits until a gate file
exists, which the test creates only after the kill. With ``max_concurrent_sagas=1`` the
first request's saga is blocked in that step and the second one is accepted but never
started: the kill hits one saga mid-step and one that had not run at all. The restarted
process resumes both through its recovery loop once the dead worker's leases expire.
"""

from __future__ import annotations

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

pytestmark = [pytest.mark.chaos, pytest.mark.integration]

REQUESTS = 2


@pytest.fixture(params=["sqlite", "postgres"])
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

            async def ready() -> bool:
                try:
                    return (await client.get("/readyz")).status_code == 200
                except httpx.TransportError:
                    return False

            await wait_for(ready, within=30, what="the webhook server", alive=app.check_alive)
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
