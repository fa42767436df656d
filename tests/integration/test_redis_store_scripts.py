"""The Redis store's scripts write only what a saga's change moves: a one-step saga costs at
most 36 commands on the server (counted by a server of the test's own, ``INFO
commandstats``), and through every change of status, owner and name the saga is in exactly
the indexes of its state (the store's listings, recovery and purges read those)."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

import pytest
import redis.asyncio as aioredis

from sagaz.clock import utcnow
from sagaz.records import ClaimOutcome, SagaRecord, StepRecord
from sagaz.storage.redis import RedisSagaStore
from sagaz.types import SagaStatus, StepStatus
from tests.engine_support import complete_a_burst, define_burst_saga
from tests.private_servers import PrivateRedis

pytestmark = pytest.mark.redis


async def _commands_run(url: str) -> int:
    """Commands the server ran since its statistics were reset, scripts' own included."""
    client = aioredis.Redis.from_url(url, decode_responses=True)
    try:
        stats = await client.info("commandstats")
    finally:
        await client.aclose()
    counted = [s for name, s in stats.items() if "info" not in name and "config" not in name]
    return sum(s["calls"] for s in counted)


async def test_a_one_step_saga_costs_at_most_36_commands_on_the_server(
    private_redis: PrivateRedis,
) -> None:
    """The three scripts of a one-step saga (claim, start, finish) and their own commands."""
    events = 300

    define_burst_saga("redis-script-burst")

    store = RedisSagaStore(private_redis.url)
    async with store:  # the layout is written before counting
        pass
    client = aioredis.Redis.from_url(private_redis.url)
    try:
        await client.config_resetstat()
    finally:
        await client.aclose()
    await complete_a_burst(store, events)
    commands = await _commands_run(private_redis.url)
    # 3 scripts and 31 commands in them; the count includes the engine's own start and stop,
    # and its first cleanup, which reads each inbox row still pending then (timing: up to one
    # a saga; 34.2 a saga in all when it saw every row). The scripts wrote every index entry
    # again at each write before: 44 commands a saga
    assert commands / events <= 36, f"{commands} commands for {events} sagas"


async def _indexes_of(client: Any, prefix: str, saga_id: str) -> set[str]:
    """The index keys (sorted sets and sets under ``prefix``) that list ``saga_id``."""
    found = set()
    async for key in client.scan_iter(match=f"{prefix}:*"):
        name = key.removeprefix(f"{prefix}:")
        kind = await client.type(key)
        if kind == "zset":
            listed = await client.zscore(key, saga_id) is not None
        else:
            listed = kind == "set" and bool(await client.sismember(key, saga_id))
        if listed:
            found.add(name)
    return found


async def test_a_saga_is_in_the_indexes_of_its_state_through_every_change(redis_url: str) -> None:
    prefix = f"test-{uuid.uuid4().hex[:8]}"
    store = RedisSagaStore(redis_url, prefix=prefix)
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    saga_id = str(uuid.uuid4())
    lease = utcnow() + timedelta(minutes=1)

    def record(status: SagaStatus, **changes: Any) -> SagaRecord:
        fields: dict[str, Any] = {
            "saga_name": "orders",
            "context": {"n": 1},
            "trigger_id": "orders.on_event",
            "owner": "w1",
            "lease_expires_at": lease,
            **changes,
        }
        return SagaRecord(saga_id, status=status, **fields)

    async def indexes() -> set[str]:
        return await _indexes_of(client, prefix, saga_id)

    try:
        async with store:
            claim = await store.claim_event(
                "orders.on_event", "k1", record(SagaStatus.PENDING, event={"id": 1})
            )
            assert claim.outcome is ClaimOutcome.CLAIMED
            active_w1 = {"sagas", "sagas-active", "sagas-name:orders", "owner-sagas:w1"}
            assert await indexes() == active_w1 | {"sagas-status:pending"}

            step = StepRecord(saga_id, "one", StepStatus.RUNNING)
            await store.save_checkpoint(record(SagaStatus.RUNNING), [step])
            assert await indexes() == active_w1 | {"sagas-status:running"}

            # another worker runs it, as its next attempt (else fenced), under another name
            await store.save_saga(
                record(SagaStatus.RUNNING, owner="w2", saga_name="orders2", attempt=2)
            )
            assert await indexes() == {
                "sagas",
                "sagas-active",
                "sagas-name:orders2",
                "owner-sagas:w2",
                "sagas-status:running",
            }

            await store.save_checkpoint(
                record(SagaStatus.FAILED, owner="w2", event={"id": 1}, error="boom"),
                [StepRecord(saga_id, "one", StepStatus.FAILED)],
                complete_inbox=("orders.on_event", "k1"),
            )
            finished = {"sagas", "sagas-finished", "sagas-name:orders"}
            assert await indexes() == finished | {"sagas-status:failed", "sagas-events"}

            # terminal to terminal, the event gone; then running again, then terminal again
            await store.save_saga(record(SagaStatus.COMPENSATED, owner="w2"))
            assert await indexes() == finished | {"sagas-status:compensated"}
            await store.save_saga(record(SagaStatus.RUNNING, owner="w2", event={"id": 1}))
            assert await indexes() == {
                "sagas",
                "sagas-active",
                "sagas-name:orders",
                "owner-sagas:w2",
                "sagas-status:running",
            }
            await store.save_saga(record(SagaStatus.COMPLETED, owner="w2"))
            assert await indexes() == finished | {"sagas-status:completed"}
            stored = await store.get_saga(saga_id)
            assert stored is not None and stored.status is SagaStatus.COMPLETED
            assert stored.event is None and stored.error is None
    finally:
        keys = [key async for key in client.scan_iter(match=f"{prefix}:*")]
        if keys:
            await client.delete(*keys)
        await client.aclose()
