"""Issue 12, acceptance 4: two ``OutboxRelay`` processes on one PostgreSQL store, the active
one SIGKILLed mid-publish. Every outbox message reaches the broker (a Redis stream) at least
once, each saga's messages in order, and while both relays ran only one published: the
stream holds the first relay's messages, then the second's, never the two interleaved.

Each relay tags what it publishes with its name (:mod:`tests.chaos.relay_app`).
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from sagaz.records import OutboxMessage, StepRecord
from sagaz.storage.url import store_from_url
from sagaz.types import StepStatus
from tests.chaos.relay_app import RELAY_HEADER
from tests.chaos.supervisor import AppProcess, wait_for
from tests.services import unique_name

pytestmark = pytest.mark.chaos

SAGAS = 40
MESSAGES_PER_SAGA = 15
TOTAL = SAGAS * MESSAGES_PER_SAGA
LEASE_SECONDS = 2.0
PUBLISH_DELAY = 0.01  # seconds per message: about 6 s for all of them
KILL_AT = TOTAL * 2 // 5  # stream entries when the active relay is killed
BATCH_SIZE = 100  # the relay's default: what a killed relay may leave published, unmarked


@dataclasses.dataclass(frozen=True)
class Entry:
    relay: str
    saga_id: str
    outbox_id: int
    seq: int


@pytest.fixture
async def stream(redis_url: str) -> AsyncIterator[tuple[Any, str]]:
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    name = unique_name("chaos-relay")
    try:
        yield client, name
    finally:
        await client.delete(name)
        await client.aclose()


async def fill_outbox(store_url: str, topic: str) -> None:
    """``SAGAS`` sagas emit ``MESSAGES_PER_SAGA`` messages each, interleaved: message ``k``
    of every saga before message ``k + 1`` of any (so outbox ids alone do not give a saga's
    order away)."""
    async with store_from_url(store_url) as store:
        for seq in range(MESSAGES_PER_SAGA):
            for n in range(SAGAS):
                saga_id = f"saga-{n}"
                await store.save_step(
                    StepRecord(saga_id, f"step-{seq}", StepStatus.COMPLETED, result={}),
                    [OutboxMessage(saga_id=saga_id, topic=topic, payload={"seq": seq})],
                )


async def read_stream(client: Any, name: str) -> list[Entry]:
    import json

    entries = await client.xrange(name)
    return [
        Entry(
            relay=fields[f"h:{RELAY_HEADER}"],
            saga_id=fields["saga_id"],
            outbox_id=int(fields["outbox_id"]),
            seq=json.loads(fields["data"])["seq"],
        )
        for _, fields in entries
    ]


@pytest.mark.timeout(180)
async def test_two_relays_one_publishes_and_the_other_takes_over_when_it_is_killed(
    postgres_store_url: str, redis_url: str, stream: tuple[Any, str], tmp_path: Path
) -> None:
    client, name = stream
    await fill_outbox(postgres_store_url, name)
    env = {
        "RELAY_STORE_URL": postgres_store_url,
        "RELAY_REDIS_URL": redis_url,
        "RELAY_LEASE_SECONDS": str(LEASE_SECONDS),
        "RELAY_PUBLISH_DELAY": str(PUBLISH_DELAY),
    }
    first = AppProcess(
        {**env, "RELAY_HOLDER": "relay-a"},
        log_dir=tmp_path,
        label="relay-a",
        module="tests.chaos.relay_app",
    )
    second = AppProcess(
        {**env, "RELAY_HOLDER": "relay-b"},
        log_dir=tmp_path,
        label="relay-b",
        module="tests.chaos.relay_app",
    )

    async def published() -> int:
        return int(await client.xlen(name))

    async def at_least(count: int) -> bool:
        return await published() >= count

    try:
        await first.start()
        await wait_for(lambda: at_least(1), within=30, what="relay-a publishing")
        await second.start()
        await wait_for(
            lambda: "standing by" in second.log_tail(),
            within=30,
            what="relay-b standing by",
            alive=second.check_alive,
        )
        await wait_for(lambda: at_least(KILL_AT), within=60, what=f"{KILL_AT} published")
        await first.kill()  # mid-publish: its batch is published in part and not marked
        killed_at = await published()
        assert killed_at < TOTAL, "relay-a finished before it was killed: slow it down"

        async with store_from_url(postgres_store_url) as store:

            async def all_marked() -> bool:
                return await store.fetch_outbox(1) == []

            await wait_for(all_marked, within=60, what="every message marked sent")
        assert await second.terminate() == 0, second.log_tail()
    finally:
        await first.close()
        await second.close()

    entries = await read_stream(client, name)
    relays = [entry.relay for entry in entries]
    switch = relays.index("relay-b")
    # while both ran only relay-a published; after its death only relay-b
    assert set(relays[:switch]) == {"relay-a"}
    assert set(relays[switch:]) == {"relay-b"}
    assert switch >= KILL_AT
    # every message at least once; the repeats are what relay-a published and never marked
    ids = [entry.outbox_id for entry in entries]
    assert len(set(ids)) == TOTAL
    repeats = len(ids) - TOTAL
    print(f"relay-a published {switch}, relay-b {len(ids) - switch}, {repeats} again")
    assert repeats < BATCH_SIZE
    # each saga's messages in order: by first appearance, and within each relay's run
    first_seen: dict[str, list[int]] = defaultdict(list)
    seen: set[int] = set()
    for entry in entries:
        if entry.outbox_id not in seen:
            seen.add(entry.outbox_id)
            first_seen[entry.saga_id].append(entry.seq)
    assert all(seqs == list(range(MESSAGES_PER_SAGA)) for seqs in first_seen.values())
    for part in (entries[:switch], entries[switch:]):
        per_saga: dict[str, list[int]] = defaultdict(list)
        for entry in part:
            per_saga[entry.saga_id].append(entry.seq)
        assert all(seqs == sorted(seqs) for seqs in per_saga.values())
