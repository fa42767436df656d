"""Lists of saga rows: by status, name, trigger and age (``list_sagas``), and the sagas to
recover (``list_recoverable``).

A part of :class:`~sagaz.storage.postgres.PostgresSagaStore`.
"""

from __future__ import annotations

from datetime import datetime
from functools import cached_property
from typing import Any

from sagaz.records import SagaRecord
from sagaz.storage import postgres_rows as mapping
from sagaz.storage import postgres_schema as tables
from sagaz.storage.codec import to_utc
from sagaz.storage.postgres.connection import PostgresConnection
from sagaz.types import TERMINAL_SAGA_STATUSES, SagaStatus

__all__ = ["PostgresSagaLists"]


class PostgresSagaLists(PostgresConnection):
    """Lists of saga rows, newest first, and the sagas to recover, oldest first."""

    async def list_sagas(
        self,
        *,
        status: SagaStatus | None = None,
        saga_name: str | None = None,
        trigger_id: str | None = None,
        created_after: datetime | None = None,
        created_before: datetime | None = None,
        after: str | None = None,
        limit: int = 100,
    ) -> list[SagaRecord]:
        sql, params = self._list_sagas_sql(
            status, saga_name, trigger_id, created_after, created_before, after, limit
        )
        rows = await self._db().fetch(sql, *params)
        return [mapping.saga_from_row(row) for row in rows]

    def _list_sagas_sql(
        self,
        status: SagaStatus | None,
        saga_name: str | None,
        trigger_id: str | None,
        created_after: datetime | None,
        created_before: datetime | None,
        after: str | None,
        limit: int,
    ) -> tuple[str, list[Any]]:
        """The statement of :meth:`list_sagas` and its parameters."""
        # newest first is descending ``seq``. A status, written as a literal, walks
        # saga_executions_active (pending, running: not finished),
        # saga_executions_by_rare_status (the others but completed, by the column of those
        # only) or the seq index (completed: most rows). A name walks (saga_name, seq)
        # backwards, an index of the finished sagas only (schema 14): with a finished
        # status, the statement says they are finished; with none, it reads the active
        # sagas along saga_executions_active (a few at a time) and the finished ones along
        # the index, the newest of both. The other filters filter those walks (the
        # partial indexes' columns: schema 11)
        where: list[str] = []
        if status is not None:
            status = SagaStatus(status)
            if status not in tables.COMMON_SAGA_STATUSES:
                where.append(f"rare_status = '{status.value}'")
            else:
                if status not in TERMINAL_SAGA_STATUSES:
                    where.append("finished_at IS NULL")
                where.append(f"status = '{status.value}'")
            if saga_name is not None and status in TERMINAL_SAGA_STATUSES:
                where.append("finished_at IS NOT NULL")
        conditions = {
            "saga_name = {}": saga_name,
            "trigger_id = {}": trigger_id,
            "created_at >= {}": None if created_after is None else to_utc(created_after),
            "created_at < {}": None if created_before is None else to_utc(created_before),
            f"seq < (SELECT seq FROM {self._s}.saga_executions WHERE saga_id = {{}})": after,
        }
        params: list[Any] = []
        for condition, value in conditions.items():
            if value is not None:
                params.append(value)
                where.append(condition.format(f"${len(params)}"))
        params.append(limit)
        last = f"ORDER BY seq DESC LIMIT ${len(params)}"
        if saga_name is not None and status is None:  # the active ones, the finished ones
            table = f"{self._s}.saga_executions"
            parts = [
                f"(SELECT seq, {tables.SAGA_COLUMNS} FROM {table} WHERE finished_at IS "
                f"{which} AND {' AND '.join(where)} {last})"
                for which in ("NULL", "NOT NULL")
            ]
            both = " UNION ALL ".join(parts)
            return f"SELECT {tables.SAGA_COLUMNS} FROM ({both}) AS u {last}", params
        clause = f"WHERE {' AND '.join(where)} " if where else ""
        return f"{self._select_sagas} {clause}{last}", params

    @cached_property
    def _recoverable_sql(self) -> str:
        """:meth:`list_recoverable`'s statement: the active sagas (not finished: schema 11)
        oldest first, along saga_executions_active."""
        return (
            f"{self._select_sagas} WHERE finished_at IS NULL AND "
            "(lease_expires_at IS NULL OR lease_expires_at < $1) ORDER BY seq LIMIT $2"
        )

    async def list_recoverable(self, now: datetime, limit: int = 100) -> list[SagaRecord]:
        rows = await self._db().fetch(self._recoverable_sql, to_utc(now), limit)
        return [mapping.saga_from_row(row) for row in rows]
