"""The SQLite store writes a group's claims and checkpoints with one statement per kind of
row (``sagaz.storage.sqlite.batches``), and gives each caller the outcome its operation would
have had alone: a claimed key, a fenced saga row, two operations on one saga."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from sagaz.clock import utcnow
from sagaz.exceptions import LeaseLostError
from sagaz.records import ClaimOutcome, EventClaim, SagaRecord, StepRecord
from sagaz.storage.sqlite import SQLiteSagaStore
from sagaz.types import SagaStatus, StepStatus

TOGETHER = "FROM (VALUES"  # in each statement that writes the rows of many operations
KNOWN = "SELECT saga_id, owner, lease_until, status FROM inbox"  # a known key's row read


def pending(n: int, owner: str = "w") -> SagaRecord:
    """A pending row as admission writes it with its claim."""
    lease = utcnow() + timedelta(minutes=1)
    return SagaRecord(
        f"s{n}", "orders", SagaStatus.PENDING, {"n": n}, 1, None, "t", {"id": n}, owner, lease
    )


class Traced:
    """A started store and the statements its connection ran."""

    def __init__(self, store: SQLiteSagaStore) -> None:
        self.store = store
        self.statements: list[str] = []
        store._committer()._conn.set_trace_callback(self.statements.append)

    def ran(self, start: str) -> list[str]:
        """The statements run since the last call that begin with ``start``."""
        found = [s for s in self.statements if s.startswith(start)]
        self.statements.clear()
        return found


@pytest.fixture
async def traced(tmp_path: Path) -> AsyncIterator[Traced]:
    async with SQLiteSagaStore(tmp_path / "sagaz.db") as store:
        yield Traced(store)


async def claim_all(store: SQLiteSagaStore, keys: list[int]) -> list[EventClaim]:
    """Claims of ``keys`` queued together (one group)."""
    return list(await asyncio.gather(*(store.claim_event("t", f"k{n}", pending(n)) for n in keys)))


async def test_a_group_of_claims_and_checkpoints_is_one_statement_per_kind(
    traced: Traced,
) -> None:
    store = traced.store
    claims = await claim_all(store, list(range(8)))
    assert [c.outcome for c in claims] == [ClaimOutcome.CLAIMED] * 8
    assert all(c.created for c in claims)
    # 8 inbox rows, then 8 saga rows: two statements, not sixteen
    assert len(traced.ran("INSERT OR IGNORE INTO inbox")) == 1
    claims = await claim_all(store, list(range(8, 16)))  # statements of 8 are reused
    assert len(traced.ran("INSERT")) == 2

    def running(claim: EventClaim) -> tuple[SagaRecord, StepRecord]:
        assert claim.saga is not None
        saga = replace(claim.saga, status=SagaStatus.RUNNING, context={"paid": True})
        step = StepRecord(saga.saga_id, "pay", StepStatus.COMPLETED, {"ok": 1}, attempts=1)
        return saga, step

    started = [running(claim) for claim in claims]
    await asyncio.gather(*(store.save_checkpoint(saga, [step]) for saga, step in started))
    together = traced.ran("INSERT")
    assert len(together) == 2 and all(TOGETHER in s for s in together)  # sagas, steps

    await asyncio.gather(
        *(
            store.save_checkpoint(
                replace(saga, status=SagaStatus.COMPLETED), complete_inbox=("t", f"k{n + 8}")
            )
            for n, (saga, _) in enumerate(started)
        )
    )
    assert len(traced.ran("UPDATE inbox")) == 1
    for n, (saga, _) in enumerate(started):
        stored = await store.get_saga(saga.saga_id)
        assert stored is not None
        assert (stored.status, stored.context, stored.saga_name) == (
            SagaStatus.COMPLETED,
            {"paid": True},
            "orders",
        )
        assert stored.created_at == saga.created_at
        steps = await store.get_steps(saga.saga_id)
        assert [(s.name, s.status, s.result) for s in steps] == [
            ("pay", StepStatus.COMPLETED, {"ok": 1})
        ]
        again = await store.claim_event("t", f"k{n + 8}", pending(n + 8))
        assert again.outcome is ClaimOutcome.DUPLICATE  # completed by the group
    first = await store.claim_event("t", "k0", pending(0))
    assert first.outcome is ClaimOutcome.TAKEN_OVER  # same owner, still pending


async def test_a_claimed_key_in_a_group_gets_its_own_outcome(traced: Traced) -> None:
    store = traced.store
    [done] = await claim_all(store, [0])
    assert done.saga is not None
    await store.save_checkpoint(
        replace(done.saga, status=SagaStatus.COMPLETED), complete_inbox=("t", "k0")
    )
    traced.ran("")
    claims = await claim_all(store, [1, 0, 2, 3])
    assert [c.outcome for c in claims] == [
        ClaimOutcome.CLAIMED,
        ClaimOutcome.DUPLICATE,
        ClaimOutcome.CLAIMED,
        ClaimOutcome.CLAIMED,
    ]
    assert [c.created for c in claims] == [True, False, True, True]
    # the new keys written together, the known one settled alone after them: not rolled
    # back and run again operation by operation
    statements = traced.statements
    assert "ROLLBACK" not in statements
    assert len([s for s in statements if s.startswith("INSERT OR IGNORE INTO inbox")]) == 1
    # k0's settled from its row alone: not claimed again one by one
    assert len([s for s in statements if s.startswith(KNOWN)]) == 1
    assert not [s for s in statements if s.startswith("INSERT INTO inbox")]
    for n in (1, 2, 3):
        assert await store.get_saga(f"s{n}") is not None


async def _known_keys(store: SQLiteSagaStore) -> SagaRecord:
    """k0 completed, k1 pending (this worker's), k2 another worker's, s3 pending (k3): the
    saga row of s3."""
    [done] = await claim_all(store, [0])
    assert done.saga is not None
    await store.save_checkpoint(
        replace(done.saga, status=SagaStatus.COMPLETED), complete_inbox=("t", "k0")
    )
    await claim_all(store, [1])
    await store.claim_event("t", "k2", pending(2, owner="other"))
    [third] = await claim_all(store, [3])
    assert third.saga is not None
    return third.saga


def _redeliveries(store: SQLiteSagaStore, third: SagaRecord) -> list[Any]:
    """New keys, redelivered ones (k0, k1, k2), a key claimed twice (k5: s5 then s6) and a
    checkpoint, as the calls to make in this order."""
    running = replace(third, status=SagaStatus.RUNNING, context={"paid": True})
    step = StepRecord("s3", "pay", StepStatus.RUNNING, attempts=1)
    return [
        functools.partial(store.claim_event, "t", "k4", pending(4)),
        functools.partial(store.claim_event, "t", "k0", pending(0)),
        functools.partial(store.save_checkpoint, running, [step]),
        functools.partial(store.claim_event, "t", "k1", pending(1)),
        functools.partial(store.claim_event, "t", "k2", pending(2)),
        functools.partial(store.claim_event, "t", "k5", pending(5)),
        functools.partial(store.claim_event, "t", "k5", pending(6)),
        functools.partial(store.claim_event, "t", "k7", pending(7)),
    ]


def _outcome(result: Any) -> Any:
    if isinstance(result, EventClaim):
        saga = result.saga
        status = None if saga is None else (saga.saga_id, saga.status, saga.owner)
        return (result.outcome, result.saga_id, result.owner, result.created, status)
    return result


async def _rows(store: SQLiteSagaStore) -> list[Any]:
    return [
        await store._fetch("SELECT trigger_id, key, saga_id, owner, status FROM inbox ORDER BY 2"),
        await store._fetch(
            "SELECT saga_id, status, owner, context FROM saga_executions ORDER BY 1"
        ),
        await store._fetch("SELECT saga_id, name, status FROM saga_steps ORDER BY 1"),
    ]


async def test_redelivered_keys_in_a_group_settle_as_one_by_one_without_a_rollback(
    tmp_path: Path,
) -> None:
    # the group of redeliveries, new claims and a checkpoint is written once, together, the
    # known keys' claims alone after it: each caller gets what it gets one call at a time,
    # and the file ends the same
    async with SQLiteSagaStore(tmp_path / "alone.db") as store:
        calls = _redeliveries(store, await _known_keys(store))
        one_by_one = [_outcome(await call()) for call in calls]
        alone_rows = await _rows(store)
    async with SQLiteSagaStore(tmp_path / "group.db") as store:
        calls = _redeliveries(store, await _known_keys(store))
        traced = Traced(store)
        together = [_outcome(result) for result in await asyncio.gather(*(c() for c in calls))]
        statements = list(traced.statements)
        assert together == one_by_one
        assert await _rows(store) == alone_rows
    assert [o[0] for o in together if isinstance(o, tuple)] == [
        ClaimOutcome.CLAIMED,
        ClaimOutcome.DUPLICATE,
        ClaimOutcome.TAKEN_OVER,
        ClaimOutcome.BUSY,
        ClaimOutcome.CLAIMED,
        ClaimOutcome.TAKEN_OVER,  # k5 again, by this worker: s6's row made with it
        ClaimOutcome.CLAIMED,
    ]
    # one transaction, each kind of row once: no rollback, no second run of the group
    assert statements.count("BEGIN IMMEDIATE") == 1 and "ROLLBACK" not in statements
    # seven claims' inbox rows in statements of 4, 2 and 1 rows; the three new ones' saga rows
    # in statements of 2 and 1
    assert len([s for s in statements if s.startswith("INSERT OR IGNORE INTO inbox")]) == 3
    assert len([s for s in statements if s.startswith("INSERT OR IGNORE INTO saga_exec")]) == 2
    # the four known keys' claims (k0, k1, k2, k5 the second time), each settled alone from
    # its key's row (the group's INSERT found it: not tried again)
    assert len([s for s in statements if s.startswith(KNOWN)]) == 4
    assert not [s for s in statements if s.startswith("INSERT INTO inbox")]


async def test_redeliveries_in_any_statement_of_a_large_group(tmp_path: Path) -> None:
    # twenty claims go in statements of 16 and 4 rows: a known key in the first, in the
    # second, in both; each claim gets what it gets alone, nothing rolled back
    for known in ([3], [18], [0, 19]):
        outcomes = []
        for name in ("alone", "group"):
            async with SQLiteSagaStore(tmp_path / f"{name}{known}.db") as store:
                await claim_all(store, [100 + n for n in known])
                keys = [100 + n if n in known else n for n in range(20)]
                if name == "alone":
                    claims = [await store.claim_event("t", f"k{n}", pending(n)) for n in keys]
                else:
                    traced = Traced(store)
                    claims = await claim_all(store, keys)
                    assert "ROLLBACK" not in traced.statements
                    assert len(traced.ran(KNOWN)) == len(known)
                outcomes.append([_outcome(c) for c in claims])
                outcomes.append(await _rows(store))
        assert outcomes[0] == outcomes[2] and outcomes[1] == outcomes[3]
        assert [o[0] for o in outcomes[2]].count(ClaimOutcome.TAKEN_OVER) == len(known)


async def test_inbox_ids_out_of_order_fall_back_to_one_by_one(traced: Traced) -> None:
    # past 2**62 the rows a statement inserted are not read back by their ids: the group is
    # rolled back and runs operation by operation, each claim still getting its own outcome
    store = traced.store
    await store._write_one(
        "INSERT INTO inbox (id, trigger_id, key, saga_id, owner, lease_until, status, "
        "created_at) VALUES (?, 't', 'k0', 's0', 'other', '9999', 'pending', '2026')",
        (2**62,),
    )
    traced.ran("")
    claims = await claim_all(store, [1, 0, 2])
    assert [c.outcome for c in claims] == [
        ClaimOutcome.CLAIMED,
        ClaimOutcome.BUSY,
        ClaimOutcome.CLAIMED,
    ]
    assert "ROLLBACK" in traced.statements


async def test_a_fenced_checkpoint_in_a_group_fails_alone(traced: Traced) -> None:
    store = traced.store
    claims = await claim_all(store, [0, 1, 2])
    sagas = [c.saga for c in claims]
    assert all(sagas)
    # saga 1's row is another worker's now (its lease ran out, it claimed the row)
    assert await store.claim_saga("s1", "other", utcnow() + timedelta(minutes=5)) is False
    await store.release_saga("s1", "w")
    assert await store.claim_saga("s1", "other", utcnow() + timedelta(minutes=5))
    traced.ran("")
    outcomes = await asyncio.gather(
        *(
            store.save_checkpoint(
                replace(saga, status=SagaStatus.RUNNING),
                [StepRecord(saga.saga_id, "pay", StepStatus.COMPLETED, attempts=1)],
            )
            for saga in sagas
            if saga is not None
        ),
        return_exceptions=True,
    )
    assert outcomes[0] is None and outcomes[2] is None
    assert isinstance(outcomes[1], LeaseLostError)
    assert any(TOGETHER in s for s in traced.statements) and "ROLLBACK" in traced.statements
    statuses = []
    for n in range(3):
        stored = await store.get_saga(f"s{n}")
        assert stored is not None
        statuses.append((stored.status, len(await store.get_steps(f"s{n}"))))
    # the fenced checkpoint wrote nothing, not even its step
    assert statuses == [(SagaStatus.RUNNING, 1), (SagaStatus.PENDING, 0), (SagaStatus.RUNNING, 1)]


async def test_two_operations_on_one_saga_run_in_their_order(traced: Traced) -> None:
    store = traced.store
    await claim_all(store, [0, 1])
    assert any(TOGETHER in s for s in traced.ran(""))  # two sagas: together
    # a checkpoint of s5 queued before the claim that creates its row: the checkpoint writes
    # the row first (a missing row is written whole), so the claim finds it
    early = replace(pending(5), status=SagaStatus.RUNNING, context={"early": True})
    checkpoint = store.save_checkpoint(early)
    claim = store.claim_event("t", "k5", pending(5))
    _, claimed = await asyncio.gather(checkpoint, claim)
    assert not any(TOGETHER in s for s in traced.ran(""))
    assert claimed.outcome is ClaimOutcome.CLAIMED and not claimed.created
    assert claimed.saga is not None and claimed.saga.context == {"early": True}


async def test_a_missing_saga_row_is_written_whole_by_its_checkpoint(traced: Traced) -> None:
    store = traced.store
    created = utcnow() - timedelta(hours=1)
    records = [replace(pending(n), status=SagaStatus.RUNNING, created_at=created) for n in (7, 8)]
    await asyncio.gather(*(store.save_checkpoint(record) for record in records))
    assert any(TOGETHER in s for s in traced.ran(""))
    for record in records:
        stored = await store.get_saga(record.saga_id)
        assert stored is not None
        assert (stored.status, stored.created_at, stored.event) == (
            SagaStatus.RUNNING,
            created,
            record.event,
        )


async def test_the_statement_journal_of_a_group_stays_in_memory(traced: Traced) -> None:
    # a statement of many rows journals the pages it changes; spilled to a temporary file
    # past 64 KiB, it cost about 10,000 writes (and 100 files) per 3,000 sagas
    conn = traced.store._committer()._conn
    assert conn.execute("PRAGMA temp_store").fetchone()[0] == 2  # MEMORY
