"""A live worker frozen past its lease (SIGSTOP: a long GC pause, a starved or suspended
process) while another one takes its partitions and its sagas over, then thawed (SIGCONT).

Two app processes in one Kafka consumer group share one PostgreSQL store. The frozen one
wakes up in the middle of sagas the other now owns: its writes of them are fenced
(``LeaseLostError``: nothing of them is written, its run stops unacked), so each event still
yields exactly one completed saga, every step of every event ran, and every offset is
committed: a fenced delivery is held until the new owner finished its saga, then acked as a
duplicate (a nack would leave its partition's commits short of it until a rebalance).
"""

from __future__ import annotations

import asyncio
import random
import signal
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
    unfinished_sagas,
    wait_for,
    wait_for_count,
)
from tests.services import unique_name

pytestmark = pytest.mark.chaos

TOTAL = 2_000
PARTITIONS = 4
MAX_CONCURRENT_SAGAS = 10
LEASE_SECONDS = 1.0
FROZEN_SECONDS = 4.0  # past the lease and the Kafka session (1.5 s): both are taken over
FENCED = "was taken over by another worker"  # the runner's warning on LeaseLostError

MakeTopic = Callable[..., Awaitable[str]]


@pytest.mark.timeout(240)
async def test_a_worker_frozen_past_its_lease_is_fenced_when_it_wakes(
    kafka_bootstrap: str,
    make_kafka_topic: MakeTopic,
    postgres_store_url: str,
    side_effects: SideEffectTable,
    chaos_rng: random.Random,
    tmp_path: Path,
) -> None:
    topic = await make_kafka_topic("chaos-frozen", partitions=PARTITIONS)
    group = unique_name("chaos-frozen")
    produced = await produce_kafka(kafka_bootstrap, topic, TOTAL, PARTITIONS)
    env = app_env(
        store_url=postgres_store_url,
        side_effects=side_effects,
        max_concurrent_sagas=MAX_CONCURRENT_SAGAS,
        lease_seconds=LEASE_SECONDS,
        CHAOS_SOURCE="kafka",
        CHAOS_NAME=topic,
        CHAOS_GROUP=group,
        CHAOS_BROKER=kafka_bootstrap,
        CHAOS_STEP_DELAY="0.02",  # sagas in flight at the freeze, in every step
    )
    apps = {
        label: AppProcess(
            {**env, "CHAOS_WORKER_ID": f"chaos-{label}"}, log_dir=tmp_path, label=label
        )
        for label in ("a", "b")
    }
    frozen = chaos_rng.choice(sorted(apps))
    (other,) = set(apps) - {frozen}  # takes the frozen one's work over
    store = store_from_url(postgres_store_url)
    try:
        async with store:

            async def completed() -> int:
                done = await store.list_sagas(
                    status=SagaStatus.COMPLETED, saga_name=SAGA_NAME, limit=2 * TOTAL
                )
                return len(done)

            def both_alive() -> None:
                for app in apps.values():
                    app.check_alive()

            for app in apps.values():
                await app.start()

            async def under_way() -> bool:
                # on both: an app that joined the group late has no partition until the
                # rebalance, and freezing it then would freeze no saga
                if await completed() <= TOTAL // 10:
                    return False
                running = await store.list_sagas(status=SagaStatus.RUNNING, saga_name=SAGA_NAME)
                owners = {row.owner for row in running}
                return all(f"chaos-{label}" in owners for label in apps)

            await wait_for(
                under_way, within=120, every=0.1, what="work under way on both", alive=both_alive
            )
            process = apps[frozen].process
            assert process is not None
            process.send_signal(signal.SIGSTOP)
            try:
                # the sagas it is in the middle of: thawed once the other owns one of them
                running = await store.list_sagas(status=SagaStatus.RUNNING, saga_name=SAGA_NAME)
                mine = [r.saga_id for r in running if r.owner == f"chaos-{frozen}"]
                assert mine, "no saga in flight at the freeze"

                async def one_taken_over() -> bool:
                    for saga_id in mine:
                        row = await store.get_saga(saga_id)
                        if row is not None and row.owner == f"chaos-{other}":
                            return True
                    return False

                await asyncio.sleep(FROZEN_SECONDS)
                await wait_for(one_taken_over, within=60, every=0.2, what="a takeover")
            finally:
                process.send_signal(signal.SIGCONT)
            at_thaw = await completed()
            print(f"froze {frozen} for {FROZEN_SECONDS}s; thawed at {at_thaw} completed")
            assert at_thaw < TOTAL - TOTAL // 10, "the freeze came too late to leave work"
            try:
                await wait_for_count(completed, TOTAL, what="completed sagas", alive=both_alive)
            except AssertionError as stuck:  # where: the sagas left and their owners
                raise AssertionError(f"{stuck}; {await unfinished_sagas(store)}") from None

            async def all_committed() -> bool:
                committed = await kafka_committed(kafka_bootstrap, group, topic, PARTITIONS)
                return committed == produced

            # while both run (a stop leaves what is not settled yet for redelivery)
            await wait_for(
                all_committed, within=60, every=0.2, what="every offset committed", alive=both_alive
            )
            for app in apps.values():
                assert await app.terminate() == 0, app.log_tail()
            await assert_one_completed_saga_per_event(store, TOTAL)
    finally:
        for app in apps.values():
            await app.close()

    runs = await side_effects.runs()
    assert (runs.numbers, runs.rows) == (TOTAL, TOTAL * len(STEPS))
    fenced = _count_in_logs(tmp_path, frozen, FENCED)
    print(f"writes fenced in {frozen} after the thaw: {fenced}; step repeats: {runs.repeats}")
    assert fenced > 0, "the thawed worker wrote no saga another one had taken over: not tested"


def _count_in_logs(log_dir: Path, label: str, text: str) -> int:
    """How many times ``text`` is in the logs of app ``label``."""
    logs = log_dir.glob(f"{label}-*.log")
    return sum(log.read_text(errors="replace").count(text) for log in logs)
