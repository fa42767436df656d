"""``SagaStore.take_over_saga``: the claim of a saga another worker held and did not give
back (its lease expired) counted as a recovery attempt in the saga's row, on every store:
the count every worker and every restart sees, which bounds a crash loop
(:mod:`sagaz.engine.recovery_attempts`)."""

from __future__ import annotations

import dataclasses
from datetime import datetime, timedelta

from sagaz.abc import SagaStore
from sagaz.clock import utcnow
from sagaz.records import SchemaVersions
from sagaz.storage import MemorySagaStore
from sagaz.types import SagaStatus
from tests.contract.store_backends import Backend, from_now, saga_record
from tests.schema_support import rewind_schema


def _lapsed() -> datetime:
    return utcnow() - timedelta(seconds=1)


async def test_take_over_saga_counts_each_takeover_not_the_owners_own_claims(
    store: SagaStore,
) -> None:
    assert await store.take_over_saga("missing", "a", from_now()) is None
    await store.save_saga(
        saga_record(status=SagaStatus.RUNNING, owner="a", lease_expires_at=from_now())
    )

    assert await store.take_over_saga("s1", "b", from_now()) is None  # a's lease is live
    assert await store.take_over_saga("s1", "a", from_now()) == 0  # its own: not counted
    await store.claim_saga("s1", "a", _lapsed())  # a dies: its lease lapses
    assert await store.take_over_saga("s1", "b", from_now()) == 1
    assert await store.take_over_saga("s1", "b", from_now(120)) == 1  # b's own again
    stored = await store.get_saga("s1")
    assert stored is not None
    assert (stored.owner, stored.status) == ("b", SagaStatus.RUNNING)

    await store.claim_saga("s1", "b", _lapsed())  # b dies too
    assert await store.take_over_saga("s1", "c", from_now()) == 2
    await store.release_saga("s1", "c")  # given back (its resumption failed): no owner
    assert await store.take_over_saga("s1", "c", from_now()) == 2  # not a takeover: uncounted


async def test_a_saga_given_back_is_claimed_uncounted_one_left_leased_is_counted(
    store: SagaStore,
) -> None:
    # a graceful stop gives its unfinished saga back: the next worker's claim is no recovery
    await store.save_saga(
        saga_record(status=SagaStatus.RUNNING, owner="a", lease_expires_at=from_now())
    )
    assert await store.release_saga("s1", "a")
    assert await store.take_over_saga("s1", "b", from_now()) == 0
    stored = await store.get_saga("s1")
    assert stored is not None and stored.owner == "b"
    # given back with its lease ending later (a failed resumption's backoff): the same
    assert await store.release_saga("s1", "b", from_now())
    assert await store.take_over_saga("s1", "c", from_now()) == 0

    # c crashes: its name stays in the row, its lease lapses; that takeover is counted
    await store.claim_saga("s1", "c", _lapsed())
    assert await store.take_over_saga("s1", "d", from_now()) == 1
    await store.release_saga("s1", "d")
    assert await store.take_over_saga("s1", "e", from_now()) == 1  # the count is kept


async def test_the_count_survives_the_owners_writes_and_a_new_attempt_starts_it_over(
    store: SagaStore,
) -> None:
    record = saga_record(status=SagaStatus.RUNNING, owner="a", lease_expires_at=_lapsed())
    await store.save_saga(record)
    assert await store.take_over_saga("s1", "b", from_now()) == 1
    # the new owner's checkpoints keep the count (a crash loop writes one before it dies)
    mine = dataclasses.replace(record, owner="b", lease_expires_at=_lapsed(), context={"x": 1})
    await store.save_saga(mine)
    await store.save_checkpoint(dataclasses.replace(mine, context={"x": 2}))
    assert await store.take_over_saga("s1", "c", from_now()) == 2

    # a new attempt (a retry, a replayed dead letter, an operator's resume) starts over
    again = dataclasses.replace(mine, owner="c", attempt=2, lease_expires_at=_lapsed())
    await store.save_saga(again)
    assert await store.take_over_saga("s1", "d", from_now()) == 1


async def test_a_deleted_saga_created_again_starts_with_no_recovery_attempts(
    store: SagaStore,
) -> None:
    await store.save_saga(saga_record(owner="a", lease_expires_at=_lapsed()))
    assert await store.take_over_saga("s1", "b", from_now()) == 1
    await store.delete_saga("s1")
    await store.save_saga(saga_record(owner="a", lease_expires_at=_lapsed()))
    assert await store.take_over_saga("s1", "b", from_now()) == 1


class NoCount(MemorySagaStore):
    """A store without its own ``take_over_saga``: the contract's default."""

    async def take_over_saga(self, saga_id: str, owner: str, lease_until: datetime) -> int | None:
        return await SagaStore.take_over_saga(self, saga_id, owner, lease_until)


async def test_the_default_take_over_saga_claims_and_counts_nothing() -> None:
    async with NoCount() as store:
        await store.save_saga(saga_record(owner="a", lease_expires_at=_lapsed()))
        assert await store.take_over_saga("s1", "b", from_now()) == 0
        assert await store.take_over_saga("s1", "c", from_now()) is None  # b's lease is live


async def test_the_upgrade_gives_the_sagas_of_the_previous_schema_a_count_of_none(
    sql_backend: Backend,
) -> None:
    backend = sql_backend
    store = await backend.open()
    expected = (await store.schema_versions()).expected
    await store.save_saga(saga_record("old", status=SagaStatus.RUNNING, owner="a"))
    await store.claim_saga("old", "a", _lapsed())  # its worker died before the upgrade
    await store.stop()
    await rewind_schema(store, expected - 1)  # as the sagaz before this one left it: no columns

    assert await backend.make().upgrade_schema() == SchemaVersions(expected - 1, expected)
    upgraded = await backend.open()
    assert await upgraded.take_over_saga("old", "b", from_now()) == 1
    assert (await upgraded.get_saga("old")) is not None
