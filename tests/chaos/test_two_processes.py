"""Issue 12, acceptance 2: two app processes in one Kafka consumer group share one PostgreSQL
store and 5,000 events. Both do a real share of the work (each completes more than 20%);
then one is SIGKILLed mid-way and the other takes over its partitions and its unfinished
sagas (once their leases expire) and finishes everything: exactly 5,000 completed sagas.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from sagaz import SagaStatus
from sagaz.storage.url import store_from_url
from tests.chaos.app import SAGA_NAME, STEPS
from tests.chaos.brokers import kafka_committed, produce_kafka
from tests.chaos.side_effects import SideEffectTable
from tests.chaos.supervisor import (
    AppProcess,
    app_env,
    assert_one_completed_saga_per_event,
    wait_for,
    wait_for_count,
)
from tests.services import unique_name

pytestmark = pytest.mark.chaos

TOTAL = 5_000
PARTITIONS = 6
MAX_CONCURRENT_SAGAS = 10
SHARE = TOTAL // 5  # "each process completes more than 20%"

MakeTopic = Callable[..., Awaitable[str]]


@pytest.mark.timeout(240)
async def test_two_processes_share_the_work_and_one_finishes_after_the_other_is_killed(
    kafka_bootstrap: str,
    make_kafka_topic: MakeTopic,
    postgres_dsn: str,
    postgres_store_url: str,
    side_effects: SideEffectTable,
    chaos_rng: random.Random,
    tmp_path: Path,
) -> None:
    topic = await make_kafka_topic("chaos-pair", partitions=PARTITIONS)
    group = unique_name("chaos-pair")
    produced = await produce_kafka(kafka_bootstrap, topic, TOTAL, PARTITIONS)
    env = app_env(
        store_url=postgres_store_url,
        side_effects=side_effects,
        max_concurrent_sagas=MAX_CONCURRENT_SAGAS,
        CHAOS_SOURCE="kafka",
        CHAOS_NAME=topic,
        CHAOS_GROUP=group,
        CHAOS_BROKER=kafka_bootstrap,
    )
    apps = {
        label: AppProcess(
            {
                **env,
                "CHAOS_WORKER_ID": f"chaos-{label}",
                # its connections name it on the server: see _wait_for_backends_gone
                "CHAOS_STORE_URL": f"{postgres_store_url}&application_name={group}-{label}",
            },
            log_dir=tmp_path,
            label=label,
        )
        for label in ("a", "b")
    }
    victim = chaos_rng.choice(sorted(apps))
    (survivor,) = set(apps) - {victim}
    store = store_from_url(postgres_store_url)
    try:
        async with store:

            async def completed_by() -> Counter[str]:
                """Completed sagas per worker (the saga row keeps the worker that ran it)."""
                done = await store.list_sagas(
                    status=SagaStatus.COMPLETED, saga_name=SAGA_NAME, limit=2 * TOTAL
                )
                return Counter((saga.owner or "").removeprefix("chaos-") for saga in done)

            def both_alive() -> None:
                for app in apps.values():
                    app.check_alive()

            for app in apps.values():
                await app.start()

            async def both_did_a_share() -> bool:
                counts = await completed_by()
                return all(counts[label] > SHARE for label in apps)

            await wait_for(
                both_did_a_share,
                within=120,
                every=0.2,
                what=f"more than {SHARE} completed sagas by each process",
                alive=both_alive,
            )
            assert await _backends(postgres_dsn, f"{group}-{victim}") > 0  # named, as meant
            await apps[victim].kill()
            # What the victim sent before it died may still commit: the server runs a
            # statement it already received (waiting for a lock, up to deadlock_timeout)
            # before it notices the closed connection and ends the backend. The count at
            # the kill is read once none of the victim's backends is left.
            await _wait_for_backends_gone(postgres_dsn, f"{group}-{victim}")
            at_kill = await completed_by()
            print(f"killed {victim} at {dict(at_kill)}")
            assert sum(at_kill.values()) < TOTAL - SHARE, (
                f"the kill came too late to leave work for the survivor: {dict(at_kill)}"
            )

            async def completed() -> int:
                return sum((await completed_by()).values())

            await wait_for_count(
                completed, TOTAL, what="completed sagas", alive=apps[survivor].check_alive
            )
            assert await apps[survivor].terminate() == 0, apps[survivor].log_tail()
            final = await completed_by()
            await assert_one_completed_saga_per_event(store, TOTAL)
    finally:
        for app in apps.values():
            await app.close()

    print(f"completed per process: {dict(final)}")
    assert set(final) == set(apps)
    assert final[victim] == at_kill[victim]  # a dead process completes nothing more
    assert final[survivor] == TOTAL - final[victim]
    assert all(count > SHARE for count in final.values())
    assert await kafka_committed(kafka_bootstrap, group, topic, PARTITIONS) == produced
    runs = await side_effects.runs()
    assert (runs.numbers, runs.rows) == (TOTAL, TOTAL * len(STEPS))
    print(f"step repeats: {runs.repeats} {runs.repeated}")
    assert runs.repeats <= 1 * MAX_CONCURRENT_SAGAS, runs.repeated


async def _backends(dsn: str, application_name: str) -> int:
    """How many server backends ``application_name`` has."""
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        count = await conn.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1",
            application_name,
        )
    finally:
        await conn.close()
    return int(count)


async def _wait_for_backends_gone(dsn: str, application_name: str) -> None:
    """Wait until the server has no backend of ``application_name`` left: every statement
    that process sent has committed or rolled back."""

    async def gone() -> bool:
        return await _backends(dsn, application_name) == 0

    await wait_for(gone, within=30, every=0.1, what=f"no backend of {application_name}")
