"""What the SQLite store binds on its hot path (a claim and a saga's two checkpoints): no
``None`` (Python 3.11's sqlite3 binds one through its adaptation protocol, an ``AttributeError``
formatted and cleared each time: the empty values are bound as ``NO_TEXT`` / ``NO_INTEGER``
and stored by ``NULLIF``), no text twice, and the statements of a group run on one cursor.
And what that must not change: an empty value reads back as ``None``, a value that looks like
the marker (``"0"``, ``0``, ``""``) as itself."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from sagaz.clock import utcnow
from sagaz.exceptions import LeaseLostError
from sagaz.records import SagaRecord, StepRecord
from sagaz.storage.sqlite import SQLiteSagaStore
from sagaz.types import SagaStatus, StepStatus

Bound = list[tuple[str, str, tuple[Any, ...]]]


class _Spy:
    """Delegates to the store's connection (``on="connection"``) or a cursor of it; records
    where each statement ran, and its parameters."""

    def __init__(self, real: Any, bound: Bound, on: str) -> None:
        self._real, self._bound, self._on = real, bound, on

    def execute(self, sql: str, params: Any = ()) -> Any:
        self._bound.append((self._on, sql, tuple(params)))
        return _Spy(self._real.execute(sql, params), self._bound, "cursor")

    def executemany(self, sql: str, rows: Any) -> Any:
        rows = [tuple(row) for row in rows]
        self._bound.extend((self._on, sql, row) for row in rows)
        return _Spy(self._real.executemany(sql, rows), self._bound, "cursor")

    def cursor(self) -> _Spy:
        return _Spy(self._real.cursor(), self._bound, "cursor")

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


def pending(n: int) -> SagaRecord:
    lease = utcnow() + timedelta(minutes=1)
    return SagaRecord(
        f"s{n}", "orders", SagaStatus.PENDING, {"n": n}, 1, None, "t", None, "w", lease
    )


async def test_a_saga_binds_no_none_and_a_group_shares_one_cursor(tmp_path: Path) -> None:
    async with SQLiteSagaStore(tmp_path / "sagaz.db") as store:
        groups = store._committer()
        bound: Bound = []
        groups._conn = _Spy(groups._conn, bound, "connection")  # type: ignore[assignment]
        claim = await store.claim_event("t", "k1", pending(1))
        assert claim.saga is not None
        running = StepRecord("s1", "pay", StepStatus.RUNNING, attempts=1)
        claim.saga.status = SagaStatus.RUNNING
        await store.save_checkpoint(claim.saga, [running])
        done = StepRecord("s1", "pay", StepStatus.COMPLETED, {"ok": True}, attempts=1)
        done.completed_seq = 1
        claim.saga.status = SagaStatus.COMPLETED
        await store.save_checkpoint(claim.saga, [done], complete_inbox=("t", "k1"))
        groups._conn = groups._conn._real  # type: ignore[attr-defined]

        with_params = [(on, sql, params) for on, sql, params in bound if params]
        assert len(with_params) == 7  # inbox, saga; step, saga; saga, step, inbox
        assert [(sql, params) for _, sql, params in with_params if None in params] == []
        # nor an empty text for an empty integer (SQLite copies every text bound), and a
        # saga created now binds its moment once, for created_at and updated_at
        assert [(sql, params) for _, sql, params in with_params if "" in params] == []
        [insert] = [params for _, sql, params in with_params if "INTO saga_executions" in sql]
        assert insert.count(insert[-1]) == 1
        # on the group's cursor (Connection.execute makes and frees one per statement)
        assert {on for on, _, _ in with_params} == {"cursor"}

        saga = await store.get_saga("s1")
        assert saga is not None and saga.error is None and saga.event is None
        [step] = await store.get_steps("s1")
        assert (step.result, step.error, step.compensation_error) == ({"ok": True}, None, None)
        assert step.completed_seq == 1


async def test_values_that_look_like_the_empty_marker_read_back_as_themselves(
    tmp_path: Path,
) -> None:
    async with SQLiteSagaStore(tmp_path / "sagaz.db") as store:
        for n, (error, event) in enumerate([("0", 0), ("", ""), (None, None)]):
            record = pending(n)
            record.error, record.event = error, event
            claim = await store.claim_event("t", f"k{n}", record)
            assert claim.saga is not None
            stored = await store.get_saga(f"s{n}")
            assert stored is not None
            assert (stored.error, stored.event) == (error, event)
            await store.save_checkpoint(claim.saga)  # through the UPDATE too
            stored = await store.get_saga(f"s{n}")
            assert stored is not None and (stored.error, stored.event) == (error, event)

        step = StepRecord("s0", "pay", StepStatus.FAILED, {}, "0", 0, 0, "")
        await store.save_checkpoint(None, [step])
        [read] = await store.get_steps("s0")
        assert (read.result, read.error, read.attempts, read.completed_seq) == ({}, "0", 0, 0)
        assert read.compensation_error == ""


async def test_a_checkpoint_of_a_renamed_saga_writes_its_new_name(tmp_path: Path) -> None:
    # the usual update leaves saga_name (and its index) alone; a row stored under another
    # name is written whole, created_at kept, and fenced as any other
    async with SQLiteSagaStore(tmp_path / "sagaz.db") as store:
        claim = await store.claim_event("t", "k1", pending(1))
        assert claim.saga is not None
        created = claim.saga.created_at
        claim.saga.saga_name, claim.saga.status = "invoices", SagaStatus.RUNNING
        await store.save_checkpoint(claim.saga)
        stored = await store.get_saga("s1")
        assert stored is not None
        assert (stored.saga_name, stored.status, stored.created_at) == (
            "invoices",
            SagaStatus.RUNNING,
            created,
        )
        assert [s.saga_id for s in await store.list_sagas(saga_name="invoices")] == ["s1"]
        assert await store.list_sagas(saga_name="orders") == []

        claim.saga.saga_name, claim.saga.owner = "refunds", "another worker"
        with pytest.raises(LeaseLostError):  # held by "w" until its lease runs out
            await store.save_checkpoint(claim.saga)
        stored = await store.get_saga("s1")
        assert stored is not None and (stored.saga_name, stored.owner) == ("invoices", "w")
