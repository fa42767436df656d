"""The plans the PostgreSQL store's reads and purges get on a large table, and their time.

Run: ``python benchmarks/pg_plans.py [--sagas 30000]`` (from ``benchmarks/``; PostgreSQL at
its default local port, or ``--dsn``).

A fresh schema is filled with ``--sagas`` saga rows, as a store that ran for a while holds
them: 98% completed, the rest pending, running, compensating, compensated, failed and
cancelled (the active ones owned by four workers), one step and one inbox row each, the
newest two thirds of the finished ones still keeping their event (``persist_events``), each
saga finished a second after the one before. With ``--names N`` (above 3) the sagas have
N names: ``order`` on half of them, ``percent`` on 1%, ``rare`` on 10 spread over the table,
the rest spread over N - 3 others; else all are ``order`` but those of ``percent`` and
``rare``. Autovacuum is off on its tables, so the first round sees them never analyzed; the
second follows an ``ANALYZE``.

Each operation is called once through the store, and the statement and parameters it sent
are captured; then ``EXPLAIN (ANALYZE)`` of the plan the store's sessions keep for it
(``plan_cache_mode=force_generic_plan``, the store's setting), in a transaction rolled
back (the renewals and purges write). Printed: the indexes and scans of each plan and its
execution time (the median of ``--repeat`` runs).
"""

from __future__ import annotations

import argparse
import asyncio
import re
import statistics
import uuid
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any

import asyncpg
from _postgres import DEFAULT_DSN

from sagaz.clock import utcnow
from sagaz.storage import postgres_schema as tables
from sagaz.storage.postgres import PostgresSagaStore
from sagaz.types import SagaStatus

#: sagas of each status besides completed, per 30,000
OTHERS = {
    SagaStatus.PENDING: 200,
    SagaStatus.RUNNING: 200,
    SagaStatus.COMPENSATING: 50,
    SagaStatus.COMPENSATED: 50,
    SagaStatus.FAILED: 50,
    SagaStatus.CANCELLED: 50,
}
TABLES = ("saga_executions", "saga_steps", "inbox")


def literal(value: Any) -> str:
    """``value`` as an SQL literal."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, datetime):
        return f"'{value.isoformat()}'::timestamptz"
    return "'" + str(value).replace("'", "''") + "'"


def names(sagas: int, count: int) -> list[str]:
    """Each saga's name (see the module's docstring)."""
    made: list[str] = []
    spread = max(1, sagas // 10)
    for n in range(sagas):
        if n % spread == spread // 2:
            made.append("rare")
        elif n % 100 == 7:
            made.append("percent")
        elif count <= 3 or n % 2 == 0:
            made.append("order")
        else:
            made.append(f"n{n % (count - 3)}")
    return made


async def fill(conn: Any, s: str, sagas: int, now: datetime, count: int = 1) -> None:
    """The rows (see the module's docstring), in three statements; ``count`` names."""
    statuses: list[str] = []
    for status, count in OTHERS.items():
        statuses += [status.value] * (count * sagas // 30000)
    statuses = [SagaStatus.COMPLETED.value] * (sagas - len(statuses)) + statuses
    # the active sagas and the rare ones are spread over the sequence
    step = max(1, sagas // max(1, len(statuses) - statuses.count("completed")))
    order = sorted(range(sagas), key=lambda n: (n % step, n))
    status_of = [""] * sagas
    for n, status in zip(order, reversed(statuses), strict=True):
        status_of[n] = status
    keep_events = sagas // 3
    columns = (
        "saga_id, saga_name, status, context, attempt, trigger_id, event, owner, "
        "lease_expires_at, created_at, updated_at"
    )
    derived = getattr(tables, "derived_values", None)  # schema 11's columns, where they are
    if derived is not None:
        columns += f", {tables.DERIVED_COLUMNS}"
    await conn.execute(
        f"INSERT INTO {s}.saga_executions ({columns}) SELECT v.*"
        + ("" if derived is None else ", " + derived("v.status", "v.event", "v.updated_at"))
        + " FROM (SELECT 's-' || n AS saga_id, ($5::text[])[n], st AS status, '{\"n\": 1}'::jsonb, 1, "
        "'bench.on_event', CASE WHEN n >= $2 THEN '{\"id\": 1}'::jsonb END AS event, "
        "CASE WHEN st IN ('pending', 'running', 'compensating') "
        "THEN 'w' || (n % 4) END, $3::timestamptz + interval '5 minutes', "
        "$3::timestamptz - (($4 - n) * interval '1 second') - interval '1 minute', "
        "$3::timestamptz - (($4 - n) * interval '1 second') AS updated_at "
        "FROM unnest($1::text[]) WITH ORDINALITY AS u(st, n)) AS v",
        status_of,
        keep_events,
        now,
        sagas,
        names(sagas, count),
    )
    await conn.execute(
        f"INSERT INTO {s}.saga_steps (saga_id, name, status, attempts, updated_at) "
        f"SELECT saga_id, 'one', 'completed', 1, updated_at FROM {s}.saga_executions"
    )
    await conn.execute(
        f"INSERT INTO {s}.inbox (trigger_id, key, saga_id, owner, lease_until, status, "
        "created_at, completed_at) SELECT trigger_id, saga_id, saga_id, owner, "
        "lease_expires_at, CASE WHEN owner IS NULL THEN 'completed' ELSE 'pending' END, "
        "created_at, CASE WHEN owner IS NULL THEN updated_at END "
        f"FROM {s}.saga_executions"
    )


class Capture:
    """The statements asyncpg's connections run, while installed."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, tuple[Any, ...]]] = []
        self._saved: dict[str, Any] = {}

    def __enter__(self) -> Capture:
        for name in ("fetch", "fetchrow", "fetchval", "execute"):
            original = getattr(asyncpg.connection.Connection, name)
            self._saved[name] = original

            def wrapped(con: Any, sql: str, *args: Any, _o: Any = original, **kw: Any) -> Any:
                self.sent.append((sql, args))
                return _o(con, sql, *args, **kw)

            setattr(asyncpg.connection.Connection, name, wrapped)
        return self

    def __exit__(self, *exc: object) -> None:
        for name, original in self._saved.items():
            setattr(asyncpg.connection.Connection, name, original)


async def explain(conn: Any, sql: str, args: tuple[Any, ...], repeat: int) -> tuple[str, float]:
    """The kept plan's scans of ``sql`` and its median execution time (ms)."""
    await conn.execute("SET plan_cache_mode = force_generic_plan")
    await conn.execute(f"PREPARE probe AS {sql}")
    try:
        times: list[float] = []
        lines: list[str] = []
        for _ in range(repeat):
            tx = conn.transaction()
            await tx.start()
            try:
                rows = await conn.fetch(
                    "EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF, SUMMARY ON) "
                    f"EXECUTE probe({', '.join(literal(a) for a in args)})"
                )
            finally:
                await tx.rollback()
            lines = [row[0] for row in rows]
            found = next(line for line in lines if "Execution Time" in line)
            match = re.search(r"([\d.]+) ms", found)
            assert match is not None
            times.append(float(match.group(1)))
        scans = [
            line.strip().removeprefix("-> ").strip()
            for line in lines
            if "Scan" in line or "Sort" in line
        ]
        return "; ".join(scans), statistics.median(times)
    finally:
        await conn.execute("DEALLOCATE probe")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dsn", default=DEFAULT_DSN)
    parser.add_argument("--sagas", type=int, default=30000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--names", type=int, default=1, help="saga names (see above)")
    args = parser.parse_args()
    schema = f"plans_{uuid.uuid4().hex[:8]}"
    now = utcnow()
    store = PostgresSagaStore(args.dsn, schema=schema)
    s = f'"{schema}"'
    conn = await asyncpg.connect(args.dsn)
    try:
        async with store:
            for table in TABLES:
                await conn.execute(f"ALTER TABLE {s}.{table} SET (autovacuum_enabled = false)")
            await fill(conn, s, args.sagas, now, args.names)
            cutoff = now - timedelta(seconds=args.sagas // 2)  # half the sagas finished before
            calls: list[tuple[str, Callable[[], Awaitable[Any]]]] = [
                (
                    f"list_sagas(status={status.value})",
                    lambda st=status: store.list_sagas(status=st),
                )
                for status in SagaStatus
            ]
            for name in ("order", "percent", "rare"):
                for status in (None, SagaStatus.COMPLETED, SagaStatus.FAILED, SagaStatus.RUNNING):
                    label = f"saga_name={name}" + ("" if status is None else f", {status.value}")
                    calls.append(
                        (
                            f"list_sagas({label})",
                            lambda n=name, st=status: store.list_sagas(saga_name=n, status=st),
                        )
                    )
            calls += [
                ("list_recoverable", lambda: store.list_recoverable(now + timedelta(hours=1))),
                ("renew_leases", lambda: store.renew_leases("w1", now + timedelta(minutes=9))),
                ("purge_expired", lambda: store.purge_expired(now - timedelta(days=3650))),
                ("purge_sagas", lambda: store.purge_sagas(now - timedelta(days=3650))),
            ]
            captured: list[tuple[str, str, tuple[Any, ...]]] = []
            for name, call in calls:
                with Capture() as capture:
                    await call()
                # the operation's statement (the committer's BEGIN and COMMIT aside)
                sql, sent = next(c for c in reversed(capture.sent) if "FROM" in c[0])
                if name.startswith("purge"):  # the rows half the sagas are old enough for
                    sent = (cutoff, *sent[1:])
                captured.append((name, sql, sent))
            for label in ("never analyzed", "analyzed"):
                if label == "analyzed":
                    for table in TABLES:
                        await conn.execute(f"ANALYZE {s}.{table}")
                print(f"-- {args.sagas:,} sagas, kept (generic) plans, {label}")
                for name, sql, sent in captured:
                    scans, ms = await explain(conn, sql, sent, args.repeat)
                    print(f"{name:34} {ms:8.3f} ms  {scans}")
    finally:
        await conn.execute(f"DROP SCHEMA IF EXISTS {s} CASCADE")
        await conn.close()


if __name__ == "__main__":
    asyncio.run(main())
