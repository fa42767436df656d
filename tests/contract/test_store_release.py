"""``SagaStore.release_saga``: the recovery loop gives back a saga it claimed and could not
resume, on every store and through the contract's default (for a custom store)."""

from __future__ import annotations

from datetime import datetime, timedelta

from sagaz.abc import SagaStore
from sagaz.clock import utcnow
from sagaz.storage import MemorySagaStore
from sagaz.types import SagaStatus
from tests.contract.store_backends import from_now, saga_record


class DefaultRelease(MemorySagaStore):
    """A store without its own ``release_saga``: the contract's default."""

    async def release_saga(
        self, saga_id: str, owner: str, retry_at: datetime | None = None
    ) -> bool:
        return await SagaStore.release_saga(self, saga_id, owner, retry_at)


async def _released_until(store: SagaStore, retry_at: datetime | None) -> None:
    """A saga held by "a" (its lease renewed by the heartbeat) is given back until
    ``retry_at``: not renewed for "a" any more, listed for recovery from then, and taken at
    once by an admission's claim."""
    await store.save_saga(saga_record("held", status=SagaStatus.RUNNING))
    await store.save_saga(saga_record("other", status=SagaStatus.RUNNING))
    assert await store.claim_saga("held", "a", from_now())
    assert await store.claim_saga("other", "a", from_now())

    assert not await store.release_saga("held", "b", retry_at)  # fenced: "a" holds it
    assert not await store.release_saga("missing", "a", retry_at)
    assert await store.release_saga("held", "a", retry_at)
    held = await store.get_saga("held")
    assert held is not None
    assert (held.status, held.owner, held.lease_expires_at) == (
        SagaStatus.RUNNING,
        None,
        retry_at,
    )
    assert not await store.release_saga("held", "a", retry_at)  # "a" holds it no more

    assert await store.renew_leases("a", from_now()) == 1  # "other" only
    recoverable = [r.saga_id for r in await store.list_recoverable(utcnow())]
    assert recoverable == ([] if retry_at is not None else ["held"])
    if retry_at is not None:
        later = await store.list_recoverable(retry_at + timedelta(seconds=1))
        assert [r.saga_id for r in later] == ["held"]
    assert await store.claim_saga("held", "b", from_now())  # no owner: free to claim


async def test_release_saga_gives_a_saga_back_until_a_retry_time(store: SagaStore) -> None:
    await _released_until(store, from_now(30))


async def test_release_saga_without_a_retry_time_gives_it_back_at_once(store: SagaStore) -> None:
    await _released_until(store, None)


async def test_the_default_release_saga_reads_and_writes_the_row() -> None:
    async with DefaultRelease() as store:
        await _released_until(store, from_now(30))
