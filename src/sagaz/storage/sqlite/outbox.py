"""The outbox and the dead letters.

A part of :class:`~sagaz.storage.sqlite.SQLiteSagaStore`.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import Any

from sagaz.clock import utcnow
from sagaz.exceptions import StoreError
from sagaz.records import (
    DeadLetterRecord,
    OutboxMessage,
)
from sagaz.storage import sqlite_rows as mapping
from sagaz.storage import sqlite_schema as tables
from sagaz.storage.codec import to_text
from sagaz.storage.sql import dead_letter_params
from sagaz.storage.sqlite.connection import (
    _IN_CHUNK,
    SQLiteConnection,
)

__all__ = ["SQLiteOutbox"]

_INSERT_DEAD_LETTER = (
    f"INSERT INTO dead_letters ({mapping.DEAD_LETTER_COLUMNS.removeprefix('id, ')}) "
    f"VALUES ({mapping.placeholders(11)})"
)


class SQLiteOutbox(SQLiteConnection):
    """The outbox and the dead letters."""

    # -- outbox ----------------------------------------------------------------------------
    async def fetch_outbox(self, limit: int = 100) -> list[OutboxMessage]:
        rows = await self._fetch(
            f"SELECT {tables.OUTBOX_COLUMNS} FROM outbox WHERE sent_at IS NULL ORDER BY id LIMIT ?",
            (limit,),
        )
        return [mapping.outbox_from_row(row) for row in rows]

    async def list_saga_outbox(self, saga_id: str, limit: int = 100) -> list[OutboxMessage]:
        rows = await self._fetch(
            f"SELECT {tables.OUTBOX_COLUMNS} FROM outbox WHERE saga_id = ? ORDER BY id LIMIT ?",
            (saga_id, limit),
        )
        return [mapping.outbox_from_row(row) for row in rows]

    async def mark_outbox_sent(self, ids: Sequence[int]) -> None:
        if not ids:
            return
        now = to_text(utcnow())
        chunks = [
            [int(i) for i in ids[start : start + _IN_CHUNK]]
            for start in range(0, len(ids), _IN_CHUNK)
        ]

        def mark(conn: sqlite3.Connection) -> None:
            for chunk in chunks:
                marks = mapping.placeholders(len(chunk))
                conn.execute(f"UPDATE outbox SET sent_at = ? WHERE id IN ({marks})", (now, *chunk))

        await self._write(mark)

    # -- dead letters ----------------------------------------------------------------------
    async def add_dead_letter(self, record: DeadLetterRecord) -> int:
        params = dead_letter_params(record, to_text(utcnow()))
        dead_id = await self._write(
            lambda conn: conn.execute(_INSERT_DEAD_LETTER, params).lastrowid
        )
        if dead_id is None:  # pragma: no cover - SQLite always reports the rowid of an INSERT
            raise StoreError("SQLite did not report the id of the new dead letter")
        return dead_id

    async def list_dead_letters(
        self, *, trigger_id: str | None = None, limit: int = 100
    ) -> list[DeadLetterRecord]:
        params: list[Any]
        sql, params = "", [limit]
        if trigger_id is not None:
            sql, params = "WHERE trigger_id = ? ", [trigger_id, limit]
        rows = await self._fetch(
            f"SELECT {mapping.DEAD_LETTER_COLUMNS} FROM dead_letters {sql}ORDER BY id LIMIT ?",
            params,
        )
        return [mapping.dead_letter_from_row(row) for row in rows]

    async def get_dead_letter(self, dead_letter_id: int) -> DeadLetterRecord | None:
        rows = await self._fetch(
            f"SELECT {mapping.DEAD_LETTER_COLUMNS} FROM dead_letters WHERE id = ?",
            (dead_letter_id,),
        )
        return mapping.dead_letter_from_row(rows[0]) if rows else None

    async def delete_dead_letter(self, dead_letter_id: int) -> bool:
        deleted = await self._write_one("DELETE FROM dead_letters WHERE id = ?", (dead_letter_id,))
        return deleted == 1
