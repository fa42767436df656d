"""A throwaway PostgreSQL database for the benchmarks that run a store on the local server.

Each run gets a database of its own, created before and dropped (``WITH (FORCE)``) after, so
``pg_stat_database`` of that database counts the run's own transactions and nothing is left
behind. ``--postgres-dsn`` of the scripts names the server (any database on it: the maintenance
connections go there).
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import AsyncIterator
from typing import Any

__all__ = [
    "DEFAULT_DSN",
    "ServerProbe",
    "pg_commits",
    "pg_database",
    "table_writes",
    "throwaway_database",
]

DEFAULT_DSN = "postgresql://postgres@127.0.0.1:5432/test"


async def pg_commits(dsn: str, database: str) -> int:
    """``xact_commit`` of ``database`` (its backends report their counts when they exit)."""
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        value = await conn.fetchval(
            "SELECT xact_commit FROM pg_stat_database WHERE datname = $1", database
        )
        return int(value or 0)
    finally:
        await conn.close()


async def pg_database(dsn: str, database: str, *, create: bool) -> None:
    """Create (or drop) the run's own database on the server of ``dsn``."""
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        if create:
            await conn.execute(f'CREATE DATABASE "{database}"')
        else:
            await conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
    finally:
        await conn.close()


@contextlib.asynccontextmanager
async def throwaway_database(dsn: str) -> AsyncIterator[str]:
    """A fresh database on the server of ``dsn``; yields its DSN, drops it on the way out."""
    database = f"sagaz_bench_{uuid.uuid4().hex[:8]}"
    await pg_database(dsn, database, create=True)
    try:
        yield dsn.rsplit("/", 1)[0] + f"/{database}"
    finally:
        await pg_database(dsn, database, create=False)


_WAL = """WITH r AS (SELECT * FROM pg_get_wal_records_info($1::text::pg_lsn, $2::text::pg_lsn)),
ours AS (SELECT * FROM r WHERE block_ref LIKE '%/' || $3::text || '/%'),
xids AS (SELECT DISTINCT xid FROM ours WHERE xid <> '0')
SELECT (SELECT coalesce(sum(record_length), 0) FROM ours)
  + (SELECT coalesce(sum(record_length), 0) FROM r
     WHERE resource_manager = 'Transaction' AND xid IN (SELECT xid FROM xids)),
  (SELECT count(*) FROM ours WHERE resource_manager = 'Btree'),
  (SELECT coalesce(sum(fpi_length), 0) FROM ours)"""


def _ticks(pid: int) -> int:
    """utime + stime of process ``pid`` in clock ticks (0 once it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0
    return int(fields[11]) + int(fields[12])


class ServerProbe:
    """What the PostgreSQL server spent on one run in the database of ``dsn``: the CPU of
    that database's backends (``/proc``: the server must run on this machine) and the WAL
    written for it (``pg_walinspect``, created in that throwaway database: records touching
    its relations, plus the commit records of their transactions). Other databases' traffic
    on the same server is left out of both."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self.cpu_seconds = 0.0
        self.wal_bytes = 0
        self.btree_records = 0
        self.fpi_bytes = 0
        self._conn: Any = None
        self._lsn = ""
        self._ticks: dict[int, int] = {}

    async def _backends(self) -> dict[int, int]:
        pids = await self._conn.fetch(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
            "AND pid <> pg_backend_pid()"
        )
        return {row[0]: _ticks(row[0]) for row in pids}

    async def start(self) -> None:
        """Read the counters at the start of the run."""
        import asyncpg

        self._conn = await asyncpg.connect(self.dsn)
        await self._conn.execute("CREATE EXTENSION IF NOT EXISTS pg_walinspect")
        self._ticks = await self._backends()
        self._lsn = str(await self._conn.fetchval("SELECT pg_current_wal_flush_lsn()::text"))

    async def stop(self) -> None:
        """Read them at the end, and keep the differences."""
        try:
            end = str(await self._conn.fetchval("SELECT pg_current_wal_flush_lsn()::text"))
            ticks = await self._backends()
            spent = sum(now - self._ticks.get(pid, 0) for pid, now in ticks.items())
            self.cpu_seconds = spent / os.sysconf("SC_CLK_TCK")
            oid = await self._conn.fetchval(
                "SELECT oid FROM pg_database WHERE datname = current_database()"
            )
            row = await self._conn.fetchrow(_WAL, self._lsn, end, str(oid))
            self.wal_bytes, self.btree_records, self.fpi_bytes = (int(v) for v in row)
        finally:
            await self._conn.close()


async def table_writes(dsn: str, schema: str, sagas: int) -> str:
    """Rows inserted and updated (of which HOT) per saga in each table of ``schema`` that
    was written, as one line (the backends report their counts as they exit)."""
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            "SELECT relname, n_tup_ins, n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables "
            "WHERE schemaname = $1 AND n_tup_ins + n_tup_upd > 0 ORDER BY relname",
            schema,
        )
    finally:
        await conn.close()
    parts = [
        f"{r[0]} +{r[1] / sagas:.2f} ~{r[2] / sagas:.2f} (HOT {r[3] / sagas:.2f})" for r in rows
    ]
    return "rows per saga (+inserted ~updated): " + ", ".join(parts)
