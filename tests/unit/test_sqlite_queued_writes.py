"""What a write of the SQLite store costs while it waits for its group: its stamp is the
group's, and it holds no closure (the store's frequent writes queue a module-level function
and its argument: a closure and its cells outlive the collector's young collections while
their write waits, and made the store's run collect twice as often)."""

from __future__ import annotations

import asyncio
import gc
import types
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from sagaz.clock import utcnow
from sagaz.exceptions import StoreError
from sagaz.records import SagaRecord, StepRecord
from sagaz.storage.sqlite import SQLiteSagaStore
from sagaz.types import SagaStatus, StepStatus

WRITES = 200


def pending(n: int) -> SagaRecord:
    """A pending row as admission writes it with its claim."""
    lease = utcnow() + timedelta(minutes=1)
    return SagaRecord(
        f"s{n}", "orders", SagaStatus.PENDING, {}, 1, None, "t", {"id": n}, "w", lease
    )


def closures() -> int:
    """Functions and cells alive now."""
    gc.collect()
    return sum(isinstance(o, types.FunctionType | types.CellType) for o in gc.get_objects())


async def test_queued_claims_and_checkpoints_hold_no_closure(tmp_path: Path) -> None:
    async with SQLiteSagaStore(tmp_path / "sagaz.db") as store:
        before = closures()
        claims = [
            asyncio.ensure_future(store.claim_event("t", f"k{n}", pending(n)))
            for n in range(WRITES)
        ]
        await asyncio.sleep(0)  # each claim ran up to its queued write; none committed yet
        assert not any(claim.done() for claim in claims)
        waiting = closures() - before
        await asyncio.gather(*claims)

        before = closures()
        checkpoints = [
            asyncio.ensure_future(
                store.save_checkpoint(
                    claim.result().saga,
                    [StepRecord(f"s{n}", "pay", StepStatus.COMPLETED, attempts=1)],
                    complete_inbox=("t", f"k{n}"),
                )
            )
            for n, claim in enumerate(claims)
        ]
        await asyncio.sleep(0)
        assert not any(checkpoint.done() for checkpoint in checkpoints)
        waiting_checkpoints = closures() - before
        await asyncio.gather(*checkpoints)
    # one closure per write held its function and four or five cells until its group ran
    assert waiting < WRITES // 2
    assert waiting_checkpoints < WRITES // 2


async def test_the_writes_of_one_group_share_their_stamp(tmp_path: Path) -> None:
    async with SQLiteSagaStore(tmp_path / "sagaz.db") as store:
        claims = await asyncio.gather(
            *(store.claim_event("t", f"k{n}", pending(n)) for n in range(20))
        )
        created = {claim.saga.created_at for claim in claims if claim.saga is not None}
        assert len(created) == 1  # one reading of the clock for the group
        stored = await store.get_saga("s0")
        assert stored is not None and stored.created_at == created.pop()
        assert stored.updated_at == stored.created_at
        assert claims[0].saga == stored  # every field of the record returned is the stored one
        later = await store.claim_event("t", "k-later", pending(99))
        assert later.saga is not None and later.saga.created_at is not None
        assert later.saga.created_at > stored.created_at  # the next group reads it again


async def test_a_write_refused_before_it_was_queued_leaves_no_stamp_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = [datetime(2026, 12, 5, 12, 0, tzinfo=utcnow().tzinfo)]
    monkeypatch.setattr("sagaz.storage.sqlite_groups.utcnow", lambda: clock[0])
    async with SQLiteSagaStore(tmp_path / "sagaz.db") as store:
        unstorable = pending(1)
        unstorable.event = {"when": {1, 2}}  # a set: refused while its row is built
        with pytest.raises(StoreError):
            await store.claim_event("t", "k1", unstorable)
        clock[0] += timedelta(hours=1)
        claim = await store.claim_event("t", "k2", pending(2))
        assert claim.saga is not None and claim.saga.created_at == clock[0]
