"""Saga control: its history and the open requests of operators.

A part of :class:`~sagaz.storage.sqlite.SQLiteSagaStore`.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

from sagaz.clock import utcnow
from sagaz.records import (
    SagaAction,
    SagaControlRequest,
    SagaHistoryRecord,
)
from sagaz.storage import sqlite_rows as mapping
from sagaz.storage import sqlite_schema as tables
from sagaz.storage.codec import from_text, to_text
from sagaz.storage.sqlite.connection import (
    _IN_CHUNK,
    SQLiteConnection,
    _change,
)

__all__ = ["SQLiteControl"]


class SQLiteControl(SQLiteConnection):
    """Saga control: its history and the open requests of operators."""

    # -- saga control ----------------------------------------------------------------------
    async def delete_steps(self, saga_id: str, names: Sequence[str]) -> None:
        wanted = list(names)

        def delete(conn: sqlite3.Connection) -> None:
            for start in range(0, len(wanted), _IN_CHUNK):
                chunk = wanted[start : start + _IN_CHUNK]
                _change(
                    conn,
                    f"DELETE FROM saga_steps WHERE {tables.STEPS_OF} "
                    f"AND name IN ({mapping.placeholders(len(chunk))})",
                    (saga_id, *chunk),
                )

        if wanted:
            await self._write(delete)

    async def add_saga_history(self, entry: SagaHistoryRecord) -> int:
        params = (
            entry.saga_id,
            to_text(entry.at or utcnow()),
            entry.action,
            entry.actor,
            entry.detail,
        )

        def add(conn: sqlite3.Connection) -> int:
            cursor = conn.execute(
                "INSERT INTO saga_history (saga_id, at, action, actor, detail) "
                "VALUES (?, ?, ?, ?, ?)",
                params,
            )
            return int(cursor.lastrowid or 0)

        return await self._write(add)

    async def list_saga_history(self, saga_id: str, limit: int = 100) -> list[SagaHistoryRecord]:
        rows = await self._fetch(
            "SELECT id, saga_id, at, action, actor, detail FROM saga_history "
            "WHERE saga_id = ? ORDER BY id LIMIT ?",
            (saga_id, limit),
        )
        return [
            SagaHistoryRecord(saga_id, action, actor, detail, entry_id, mapping.optional_moment(at))
            for entry_id, saga_id, at, action, actor, detail in rows
        ]

    async def add_saga_request(self, request: SagaControlRequest) -> bool:
        added = await self._write_one(
            "INSERT INTO saga_requests (saga_id, action, step, actor, reason, attempt, "
            "requested_at) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (saga_id) DO NOTHING",
            (
                request.saga_id,
                SagaAction(request.action).value,
                request.step,
                request.actor,
                request.reason,
                request.attempt,
                to_text(request.requested_at or utcnow()),
            ),
        )
        return added == 1

    async def list_saga_requests(
        self, *, saga_id: str | None = None, limit: int = 100
    ) -> list[SagaControlRequest]:
        where, params = ("WHERE saga_id = ? ", (saga_id,)) if saga_id is not None else ("", ())
        rows = await self._fetch(
            "SELECT saga_id, action, step, actor, reason, attempt, requested_at "
            f"FROM saga_requests {where}ORDER BY requested_at, saga_id LIMIT ?",
            (*params, limit),
        )
        return [
            SagaControlRequest(
                saga_id, SagaAction(action), step, actor, reason, attempt, from_text(at)
            )
            for saga_id, action, step, actor, reason, attempt, at in rows
        ]

    async def finish_saga_request(self, saga_id: str, action: SagaAction) -> bool:
        deleted = await self._write_one(
            "DELETE FROM saga_requests WHERE saga_id = ? AND action = ?",
            (saga_id, SagaAction(action).value),
        )
        return deleted == 1
