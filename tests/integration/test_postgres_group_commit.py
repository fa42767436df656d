"""The PostgreSQL store's group commit: operations issued at once share one transaction, yet
each caller gets its own result or error; a lost connection fails every caller of the group
with ``StoreUnavailableError``; and a burst of one-step sagas costs at most one commit each,
counted by the server (``pg_stat_database.xact_commit`` of a database of the test's own)."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Awaitable
from datetime import timedelta
from typing import Any

import asyncpg
import pytest

from sagaz.clock import utcnow
from sagaz.exceptions import (
    LeaseLostError,
    SchemaOutdatedError,
    StoreError,
    StoreUnavailableError,
)
from sagaz.records import ClaimOutcome, OutboxMessage, SagaRecord, SchemaVersions, StepRecord
from sagaz.storage.postgres import PostgresSagaStore
from sagaz.storage.postgres_schema import SCHEMA_VERSION
from sagaz.testing import eventually
from sagaz.types import SagaStatus, StepStatus
from tests.engine_support import complete_a_burst, define_burst_saga
from tests.schema_support import rewind_schema
from tests.services import drop_postgres_schema, unique_name


@pytest.fixture
async def database(postgres_dsn: str) -> AsyncIterator[str]:
    """The DSN of a database of this test's own (its statistics count its work only)."""
    name = unique_name("sagaz_gc")
    admin = await asyncpg.connect(postgres_dsn)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    try:
        yield postgres_dsn.rsplit("/", 1)[0] + f"/{name}"
    finally:
        admin = await asyncpg.connect(postgres_dsn)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


def _running(saga_id: str) -> SagaRecord:
    return SagaRecord(saga_id, "order", SagaStatus.RUNNING, {"n": saga_id})


async def test_one_failing_operation_fails_only_its_own_caller(database: str) -> None:
    async with PostgresSagaStore(database) as store:
        before = store.commits
        broken = OutboxMessage("s-3", None, {"ok": True})  # type: ignore[arg-type]  # NOT NULL
        calls = [
            store.save_checkpoint(
                _running(f"s-{i}"),
                [StepRecord(f"s-{i}", "one", StepStatus.RUNNING)],
                [broken] if i == 3 else [OutboxMessage(f"s-{i}", "orders", {"i": i})],
            )
            for i in range(20)
        ]
        outcomes = await asyncio.gather(*calls, return_exceptions=True)
        assert store.commits - before == 1  # one group (run again an operation at a time)
        failed = {i for i, outcome in enumerate(outcomes) if outcome is not None}
        assert failed == {3}
        assert isinstance(outcomes[3], asyncpg.NotNullViolationError)
        for i in range(20):
            saved = await store.get_saga(f"s-{i}")
            assert (saved is None) == (i == 3)
            assert len(await store.get_steps(f"s-{i}")) == (0 if i == 3 else 1)
        assert sorted(m.payload["i"] for m in await store.fetch_outbox()) == [
            i for i in range(20) if i != 3
        ]


async def test_claims_and_creations_batched_in_one_group_keep_their_own_outcomes(
    database: str,
) -> None:
    later = utcnow() + timedelta(minutes=5)
    async with PostgresSagaStore(database) as store:
        await store.claim_inbox("t", "done", "s-done", "w1", later)
        await store.complete_inbox("t", "done")
        await store.claim_inbox("t", "held", "s-held", "other", later)
        await store.claim_inbox("t", "mine", "s-mine", "w1", later)
        await store.create_saga(_running("old"))
        before = store.commits
        claims = await asyncio.gather(
            store.claim_inbox("t", "done", "s-x", "w1", later),
            store.claim_inbox("t", "held", "s-x", "w1", later),
            store.claim_inbox("t", "mine", "s-x", "w1", later),
            store.claim_inbox("t", "new", "s-new", "w1", later),
            store.claim_inbox("t", "new", "s-new", "w1", later),  # the same key twice
        )
        created = await asyncio.gather(
            store.create_saga(_running("old")),
            store.create_saga(_running("n-1")),
            store.create_saga(_running("n-2")),
        )
        # one group each, and one more for "old": the group's one statement (the claims'
        # group writes "new" twice, so runs in a transaction) inserts "n-1" and "n-2" and
        # leaves "old" to a transaction of its own that reads the existing row
        assert store.commits - before == 3
        assert [(c.outcome, c.saga_id, c.owner) for c in claims] == [
            (ClaimOutcome.DUPLICATE, "s-done", "w1"),
            (ClaimOutcome.BUSY, "s-held", "other"),
            (ClaimOutcome.TAKEN_OVER, "s-mine", "w1"),
            (ClaimOutcome.CLAIMED, "s-new", "w1"),
            (ClaimOutcome.TAKEN_OVER, "s-new", "w1"),  # after the first, in the same group
        ]
        assert [(record.saga_id, made) for record, made in created] == [
            ("old", False),
            ("n-1", True),
            ("n-2", True),
        ]
        assert {r.saga_id for r in await store.list_sagas()} == {"old", "n-1", "n-2"}


async def test_a_group_of_claims_creations_and_checkpoints_is_one_statement(
    database: str,
) -> None:
    later = utcnow() + timedelta(minutes=5)
    async with PostgresSagaStore(database) as store:
        await store.claim_inbox("t", "done", "s-done", "w1", later)
        await store.complete_inbox("t", "done")
        await store.claim_inbox("t", "held", "s-held", "other", later)
        await store.claim_inbox("t", "ended", "s-ended", "w1", later)
        await store.create_saga(_running("ended"))
        before, statements = store.commits, store._committer().statements
        claims, created, _ = await asyncio.gather(
            asyncio.gather(
                store.claim_inbox("t", "done", "s-x", "w1", later),
                store.claim_inbox("t", "held", "s-x", "w1", later),
                store.claim_inbox("t", "new", "s-new", "w1", later),
            ),
            asyncio.gather(store.create_saga(_running("n-1")), store.create_saga(_running("n-2"))),
            store.save_checkpoint(
                SagaRecord("ended", "order", SagaStatus.COMPLETED, {"n": "ended"}),
                [StepRecord("ended", "one", StepStatus.COMPLETED, result={"ok": 1})],
                [OutboxMessage("ended", "orders", {"done": True})],
                complete_inbox=("t", "ended"),
            ),
        )
        assert store.commits - before == 1  # one group, one statement, nothing left over
        assert store._committer().statements - statements == 1
        assert [(c.outcome, c.saga_id, c.owner) for c in claims] == [
            (ClaimOutcome.DUPLICATE, "s-done", "w1"),
            (ClaimOutcome.BUSY, "s-held", "other"),
            (ClaimOutcome.CLAIMED, "s-new", "w1"),
        ]
        assert [(record.saga_id, made) for record, made in created] == [
            ("n-1", True),
            ("n-2", True),
        ]
        ended = await store.get_saga("ended")
        assert ended is not None and ended.status is SagaStatus.COMPLETED
        assert [s.status for s in await store.get_steps("ended")] == [StepStatus.COMPLETED]
        assert [m.payload for m in await store.fetch_outbox()] == [{"done": True}]
        again = await store.claim_inbox("t", "ended", "s-y", "w2", later)
        assert again.outcome is ClaimOutcome.DUPLICATE  # the checkpoint completed the key


async def test_a_group_writing_a_row_twice_keeps_every_write(database: str) -> None:
    # one statement's CTEs see one snapshot, so a group that writes a row twice (here the
    # inbox row of "k", claimed by one caller and completed by another; the saga "s-1",
    # created and checkpointed) must run its operations one after the other
    later = utcnow() + timedelta(minutes=5)
    async with PostgresSagaStore(database) as store:
        await store.claim_inbox("t", "k", "s-k", "w1", later)
        statements = store._committer().statements
        claim, _ = await asyncio.gather(
            store.claim_inbox("t", "k", "s-other", "w2", later),
            store.save_checkpoint(
                SagaRecord("s-1", "order", SagaStatus.COMPLETED, {"n": "s-1"}),
                complete_inbox=("t", "k"),
            ),
        )
        (record, made), _ = await asyncio.gather(
            store.create_saga(_running("s-1")),
            store.save_checkpoint(
                SagaRecord("s-1", "order", SagaStatus.COMPLETED, {"n": "s-1"}),
            ),
        )
        assert store._committer().statements == statements  # a transaction instead
        assert claim.outcome is ClaimOutcome.BUSY  # the claim ran before the completion
        assert (await store.claim_inbox("t", "k", "s-y", "w2", later)).outcome is (
            ClaimOutcome.DUPLICATE
        )
        assert not made and record.status is SagaStatus.COMPLETED  # after the checkpoint
        saved = await store.get_saga("s-1")
        assert saved is not None and saved.status is SagaStatus.COMPLETED


async def test_one_caller_writing_again_and_again_is_never_left_waiting(database: str) -> None:
    # max_size=2: one group connection, so one flusher; each write comes right after the
    # previous one's group committed (the moment the flusher finds its queue empty)
    async with PostgresSagaStore(database, max_size=2) as store:
        async with asyncio.timeout(10):  # in this task: the next write is queued at once
            for i in range(50):
                await store.save_saga(_running(f"s-{i}"))
        assert len(await store.list_sagas(limit=100)) == 50


async def test_a_pool_of_one_connection_still_reads_between_writes(database: str) -> None:
    # max_size=1: the groups may not keep the only connection (the reads need it too)
    async with PostgresSagaStore(database, max_size=1) as store:
        async with asyncio.timeout(10):
            await store.save_saga(_running("s-1"))
            assert await store.get_saga("s-1") is not None
            await store.save_saga(_running("s-2"))
            assert len(await store.list_sagas()) == 2


async def test_a_kept_connection_the_server_ended_is_replaced_for_the_next_write(
    database: str,
) -> None:
    async with PostgresSagaStore(database) as store:
        await store.save_saga(_running("s-1"))  # its group's connection is kept
        admin = await asyncpg.connect(database)
        try:
            ended = await admin.fetchval(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        finally:
            await admin.close()
        assert ended >= 1
        await asyncio.sleep(0.1)  # the client sees its connection closed
        await store.save_saga(_running("s-2"))  # on a fresh connection, not an error
        assert await store.get_saga("s-2") is not None


def _checkpoint_or_claim(store: PostgresSagaStore, i: int) -> Awaitable[Any]:
    """An operation without a wrapper of its own (translates_unavailable)."""
    if i % 2:
        return store.save_checkpoint(_running(f"s-{i}"))
    record = SagaRecord(
        f"s-{i}", "order", SagaStatus.PENDING, {}, owner="me",
        lease_expires_at=utcnow() + timedelta(seconds=30),
    )  # fmt: skip
    return store.claim_event("t", f"k-{i}", record)


@pytest.mark.parametrize("hot", [False, True], ids=["save_saga", "checkpoint_and_claim"])
async def test_a_lost_connection_fails_every_caller_of_the_group(database: str, hot: bool) -> None:
    async with PostgresSagaStore(database) as store:
        await store.save_saga(_running("held"))
        admin = await asyncpg.connect(database)
        try:
            # hold the row of "held": the group that writes it waits for the lock, mid-way
            holding = admin.transaction()
            await holding.start()
            await admin.execute(
                "SELECT 1 FROM sagaz.saga_executions WHERE saga_id = 'held' FOR UPDATE"
            )
            writes = asyncio.gather(
                store.save_saga(_running("held")),
                *(
                    _checkpoint_or_claim(store, i) if hot else store.save_saga(_running(f"s-{i}"))
                    for i in range(9)
                ),
                return_exceptions=True,
            )

            async def waiting_backend() -> int | None:
                pid: int | None = await admin.fetchval(
                    "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
                    "AND wait_event_type = 'Lock'"
                )
                return pid

            pid = await eventually(waiting_backend, what="the group waiting for the lock")
            await admin.execute("SELECT pg_terminate_backend($1)", pid)
            outcomes = await writes
            await holding.rollback()
        finally:
            await admin.close()
        assert all(isinstance(outcome, StoreUnavailableError) for outcome in outcomes), outcomes
        assert len({id(outcome) for outcome in outcomes}) == 10  # an error of its own each
        for i in range(9):  # lost with the group, none half-written
            assert await store.get_saga(f"s-{i}") is None
        await store.save_saga(_running("after"))  # the pool replaced the connection
        assert await store.get_saga("after") is not None


async def test_a_stopped_store_refuses_writes_with_a_clear_error(database: str) -> None:
    store = PostgresSagaStore(database)
    with pytest.raises(StoreError, match="not started"):
        await store.save_saga(_running("s-1"))


async def _xact_counts(dsn: str) -> tuple[int, int]:
    """The server's committed and rolled-back transaction counts of the database, once every
    other session of it has gone (a backend reports its counts when it exits)."""
    conn = await asyncpg.connect(dsn)
    try:

        async def alone() -> bool:
            others = await conn.fetchval(
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
            return int(others) == 0

        await eventually(alone, what="the store's connections to close")
        row = await conn.fetchrow(
            "SELECT xact_commit, xact_rollback FROM pg_stat_database "
            "WHERE datname = current_database()"
        )
        return int(row["xact_commit"]), int(row["xact_rollback"])
    finally:
        await conn.close()


# "$" may be part of a schema name: the group statement renumbers its own parameters ($n) when
# it joins statements, never the text of the quoted name (else every group statement fails,
# is rolled back, and its operations run again apart)
@pytest.mark.parametrize("schema", ["sagaz", "sagaz$1"])
async def test_a_burst_of_one_step_sagas_costs_at_most_one_commit_each(
    database: str, schema: str
) -> None:
    events = 300

    define_burst_saga("group-commit-burst")

    store = PostgresSagaStore(database, schema=schema, max_size=10)
    async with store:  # the schema is created before counting
        pass
    before, rolled_back = await _xact_counts(database)
    await complete_a_burst(store, events)
    after, rolled_back_after = await _xact_counts(database)
    assert after > before  # the server did count this run
    # the counts include the engine's own start and stop (leases, recovery, schedules)
    assert (after - before) / events <= 1.0, f"{after - before} commits for {events} sagas"
    assert rolled_back_after == rolled_back  # no group statement failed


async def test_moments_sent_as_microseconds_come_back_exact_in_every_path(
    postgres_dsn: str,
) -> None:
    # schema 9 sends a saga's and a step's moments as bigint microseconds; a conversion
    # computed in one double product would round them beyond 2^53 us (after the year 2285)
    from datetime import UTC, datetime

    schema = unique_name("sagaz_moments")
    moments = [
        datetime(1, 1, 1, tzinfo=UTC),
        datetime(1969, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC),
        datetime(2026, 12, 5, 13, 0, 0, 123_457, tzinfo=UTC),
        datetime(9999, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC),
    ]
    try:
        async with PostgresSagaStore(postgres_dsn, schema=schema) as store:
            for n, moment in enumerate(moments):
                record = SagaRecord(
                    f"m-{n}", "order", SagaStatus.RUNNING, {}, created_at=moment,
                    owner="me", lease_expires_at=moment,
                )  # fmt: skip
                claimed = await store.claim_event("t", f"k-{n}", record)  # a group statement
                assert claimed.created, claimed
                await store.save_checkpoint(record, [StepRecord(f"m-{n}", "one", "running")])
                await store.save_saga(dataclasses.replace(record, saga_id=f"alone-{n}"))
                await store.create_saga(dataclasses.replace(record, saga_id=f"new-{n}"))
            for n, moment in enumerate(moments):
                for saga_id in (f"m-{n}", f"alone-{n}", f"new-{n}"):
                    saga = await store.get_saga(saga_id)
                    assert saga is not None
                    assert (saga.created_at, saga.lease_expires_at) == (moment, moment), saga_id
    finally:
        await drop_postgres_schema(postgres_dsn, schema)


async def test_a_checkpoint_reuses_the_context_and_event_texts_while_unchanged(
    postgres_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sagaz.storage.postgres_rows as rows_module
    import sagaz.storage.texts as texts_module
    from sagaz.storage.codec import dumps

    encoded: list[object] = []

    def counting(value: object) -> str:
        encoded.append(value)
        return dumps(value)

    monkeypatch.setattr(rows_module, "dumps", counting)
    monkeypatch.setattr(texts_module, "dumps", counting)
    schema = unique_name("sagaz_texts")
    context = {"id": 1, "items": [1, 2]}
    event = {"id": 1}
    try:
        async with PostgresSagaStore(postgres_dsn, schema=schema) as store:
            record = SagaRecord("t-1", "order", SagaStatus.RUNNING, context, event=event)
            await store.save_checkpoint(record, [StepRecord("t-1", "one", StepStatus.RUNNING)])
            assert encoded == [context, event]
            done = dataclasses.replace(record, status=SagaStatus.COMPLETED)
            await store.save_checkpoint(done, [StepRecord("t-1", "one", StepStatus.COMPLETED)])
            assert encoded == [context, event]  # the running checkpoint's texts
            assert len(store._json) == 0  # forgotten at the terminal write

            # a value changed in place, or only in type, is encoded again
            record = dataclasses.replace(record, saga_id="t-2")
            await store.save_checkpoint(record)
            context["items"].append(3)  # type: ignore[attr-defined]
            await store.save_checkpoint(record)
            assert (await store.get_saga("t-2")).context == {"id": 1, "items": [1, 2, 3]}  # type: ignore[union-attr]
            context["id"] = True
            await store.save_saga(dataclasses.replace(record, status=SagaStatus.FAILED))
            saga = await store.get_saga("t-2")
            assert saga is not None and saga.context == {"id": True, "items": [1, 2, 3]}
            assert saga.context["id"] is True
    finally:
        await drop_postgres_schema(postgres_dsn, schema)


async def test_event_claims_of_records_naming_another_trigger_claim_their_own_key(
    database: str,
) -> None:
    # a group statement sends an event's claim as its key beside its saga row (which holds
    # the rest of the claim) only while every record names the claim's trigger: a record
    # naming another (or none) has its claim sent whole, under the claim's trigger id
    lease = utcnow() + timedelta(minutes=5)

    def record(saga_id: str, trigger_id: str | None) -> SagaRecord:
        return SagaRecord(
            saga_id, "order", SagaStatus.PENDING, {}, trigger_id=trigger_id,
            owner="w1", lease_expires_at=lease,
        )  # fmt: skip

    async with PostgresSagaStore(database) as store:
        before = store._committer().statements
        same = await asyncio.gather(
            *(store.claim_event("t", f"k{n}", record(f"s{n}", "t")) for n in range(3))
        )
        mixed = await asyncio.gather(
            store.claim_event("t", "m0", record("m0", "t")),
            store.claim_event("t", "m1", record("m1", "other")),
            store.claim_event("t", "m2", record("m2", None)),
        )
        assert store._committer().statements - before == 2  # a group statement each
        for claim in [*same, *mixed]:
            assert (claim.outcome, claim.created) == (ClaimOutcome.CLAIMED, True)
        for key, saga_id in [("k0", "s0"), ("k2", "s2"), ("m0", "m0"), ("m1", "m1"), ("m2", "m2")]:
            # the key is held under the claim's trigger: another owner finds it busy
            held = await store.claim_inbox("t", key, "x", "w2", lease)
            assert (held.outcome, held.saga_id, held.owner) == (ClaimOutcome.BUSY, saga_id, "w1")
            other = await store.claim_inbox("other", key, "y", "w2", lease)
            assert other.outcome is ClaimOutcome.CLAIMED, key  # no row under another trigger
        triggers = {s: (await store.get_saga(s)).trigger_id for s in ("s1", "m0", "m1", "m2")}  # type: ignore[union-attr]
        assert triggers == {"s1": "t", "m0": "t", "m1": "other", "m2": None}


async def test_a_group_of_new_event_claims_comes_back_as_one_row(database: str) -> None:
    # a group statement whose events' keys are all claimed afresh, each saga created, says
    # so in one row instead of one per key; a group where one is not (here a key another
    # worker holds, a key taken over, a saga that exists) answers each from its own rows
    expired, later = utcnow() - timedelta(seconds=1), utcnow() + timedelta(minutes=5)

    def record(saga_id: str) -> SagaRecord:
        return SagaRecord(
            saga_id, "order", SagaStatus.PENDING, {}, trigger_id="t", owner="w1",
            lease_expires_at=later,
        )  # fmt: skip

    async with PostgresSagaStore(database) as store:
        await store.claim_inbox("t", "held", "s-held", "w2", later)
        await store.claim_inbox("t", "expired", "s-expired", "w2", expired)
        await store.create_saga(record("s-exists"))
        committer = store._committer()
        statement = committer._statement
        assert statement is not None
        rows: list[int] = []

        class Counting:
            def __init__(self, conn: Any) -> None:
                self._conn = conn

            async def fetch(self, sql: str, *args: Any) -> list[Any]:
                found = await self._conn.fetch(sql, *args)
                rows.append(len(found))
                return list(found)

        async def counted(conn: Any, batches: Any) -> Any:
            return await statement(Counting(conn), batches)

        committer._statement = counted
        fresh = await asyncio.gather(
            *(store.claim_event("t", f"k{n}", record(f"s{n}")) for n in range(4))
        )
        assert rows == [1]
        assert [(c.outcome, c.saga_id, c.owner, c.created) for c in fresh] == [
            (ClaimOutcome.CLAIMED, f"s{n}", "w1", True) for n in range(4)
        ]
        assert [c.saga.saga_id for c in fresh if c.saga is not None] == [f"s{n}" for n in range(4)]
        mixed = await asyncio.gather(
            store.claim_event("t", "new", record("s-new")),
            store.claim_event("t", "held", record("s-x")),
            store.claim_event("t", "expired", record("s-expired")),
            store.claim_event("t", "exists", record("s-exists")),
        )
        answers = [(c.outcome, c.saga_id, c.owner, c.created) for c in mixed]
        assert answers == [
            (ClaimOutcome.CLAIMED, "s-new", "w1", True),
            (ClaimOutcome.BUSY, "s-held", "w2", False),
            (ClaimOutcome.TAKEN_OVER, "s-expired", "w1", True),
            (ClaimOutcome.CLAIMED, "s-exists", "w1", False),
        ]
        for n in range(4):
            stored = await store.get_saga(f"s{n}")
            assert stored is not None and stored.status is SagaStatus.PENDING


async def test_checkpoints_sent_as_checkpoint_rows_write_each_and_fence_a_lost_saga(
    database: str,
) -> None:
    # the usual checkpoints (a saga row, one step, maybe the inbox key: schema 10's
    # checkpoint_row, one array element each) in one group statement: each is written
    # whole, and the one whose saga another owner took over writes nothing
    expired, later = utcnow() - timedelta(seconds=1), utcnow() + timedelta(minutes=5)

    def saga(saga_id: str, status: SagaStatus, lease: Any) -> SagaRecord:
        return SagaRecord(
            saga_id, "order", status, {"n": saga_id}, trigger_id="t", owner="a",
            lease_expires_at=lease,
        )  # fmt: skip

    def step(saga_id: str, status: StepStatus) -> StepRecord:
        return StepRecord(saga_id, "one", status, result={"ok": saga_id}, attempts=1)

    async with PostgresSagaStore(database) as store:
        for saga_id, lease in (("s1", expired), ("s2", later), ("s3", later)):
            await store.claim_event("t", f"k-{saga_id}", saga(saga_id, SagaStatus.PENDING, lease))
            running = saga(saga_id, SagaStatus.RUNNING, lease)
            await store.save_checkpoint(running, [step(saga_id, StepStatus.RUNNING)])
        assert await store.claim_saga("s1", "b", later)  # a's lease on s1 had expired
        before = store._committer().statements
        done = await asyncio.gather(
            *(
                store.save_checkpoint(
                    saga(saga_id, SagaStatus.COMPLETED, later),
                    [step(saga_id, StepStatus.COMPLETED)],
                    complete_inbox=("t", f"k-{saga_id}") if saga_id != "s3" else None,
                )
                for saga_id in ("s1", "s2", "s3")
            ),
            return_exceptions=True,
        )
        assert store._committer().statements - before == 1
        assert any(shape[3] and shape[3][4] for shape in store._group_sql)  # as rows
        assert isinstance(done[0], LeaseLostError) and done[1:] == [None, None]
        for saga_id, status in (("s1", "running"), ("s2", "completed"), ("s3", "completed")):
            stored = await store.get_saga(saga_id)
            assert stored is not None and stored.status == status, saga_id
            [stored_step] = await store.get_steps(saga_id)
            assert stored_step.status == status, saga_id
            assert stored_step.result == {"ok": saga_id}
            assert stored_step.updated_at == stored.updated_at
        conn = await asyncpg.connect(database)
        try:
            inbox = dict(await conn.fetch('SELECT key, status FROM "sagaz".inbox'))
        finally:
            await conn.close()
        assert inbox == {"k-s1": "pending", "k-s2": "completed", "k-s3": "pending"}


async def test_a_version_9_schema_is_upgraded_to_send_checkpoint_rows(database: str) -> None:
    async with PostgresSagaStore(database) as store:
        await store.save_saga(_running("s1"))
    await rewind_schema(store, 9, drop=[("TYPE", "checkpoint_row")])  # as sagaz 9 left it
    with pytest.raises(SchemaOutdatedError):
        await PostgresSagaStore(database).start()
    upgraded = PostgresSagaStore(database)
    assert await upgraded.upgrade_schema() == SchemaVersions(9, SCHEMA_VERSION)
    async with upgraded:
        done = dataclasses.replace(_running("s1"), status=SagaStatus.COMPLETED)
        await upgraded.save_checkpoint(done, [StepRecord("s1", "one", StepStatus.COMPLETED)])
        stored = await upgraded.get_saga("s1")
        assert stored is not None and stored.status is SagaStatus.COMPLETED
        assert [s.status for s in await upgraded.get_steps("s1")] == [StepStatus.COMPLETED]
