"""The outbox and the dead letters.

A part of :class:`~sagaz.storage.postgres.PostgresSagaStore`.
"""

from __future__ import annotations

from collections.abc import Sequence

from sagaz.clock import utcnow
from sagaz.records import (
    DeadLetterRecord,
    OutboxMessage,
)
from sagaz.storage import postgres_rows as mapping
from sagaz.storage import postgres_schema as tables
from sagaz.storage.postgres.connection import PostgresConnection
from sagaz.storage.sql import dead_letter_params

__all__ = ["PostgresOutbox"]


class PostgresOutbox(PostgresConnection):
    """The outbox and the dead letters."""

    # -- outbox ----------------------------------------------------------------------------
    async def fetch_outbox(self, limit: int = 100) -> list[OutboxMessage]:
        rows = await self._db().fetch(
            f"SELECT {tables.OUTBOX_COLUMNS} "
            f"FROM {self._s}.outbox WHERE sent_at IS NULL ORDER BY id LIMIT $1",
            limit,
        )
        return [mapping.outbox_from_row(row) for row in rows]

    async def list_saga_outbox(self, saga_id: str, limit: int = 100) -> list[OutboxMessage]:
        rows = await self._db().fetch(
            f"SELECT {tables.OUTBOX_COLUMNS} "
            f"FROM {self._s}.outbox WHERE saga_id = $1 ORDER BY id LIMIT $2",
            saga_id,
            limit,
        )
        return [mapping.outbox_from_row(row) for row in rows]

    async def mark_outbox_sent(self, ids: Sequence[int]) -> None:
        if ids:
            await self._write_execute(
                f"UPDATE {self._s}.outbox SET sent_at = $2 WHERE id = ANY($1::bigint[])",
                [int(i) for i in ids],
                utcnow(),
            )

    # -- dead letters ----------------------------------------------------------------------
    async def add_dead_letter(self, record: DeadLetterRecord) -> int:
        dead_id = await self._write_fetchval(
            f"INSERT INTO {self._s}.dead_letters ({mapping.DEAD_LETTER_COLUMNS}, created_at) "
            "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) RETURNING id",
            *dead_letter_params(record, utcnow()),
        )
        return int(dead_id)

    async def list_dead_letters(
        self, *, trigger_id: str | None = None, limit: int = 100
    ) -> list[DeadLetterRecord]:
        select = self._select_dead_letters
        if trigger_id is None:
            rows = await self._db().fetch(f"{select} ORDER BY id LIMIT $1", limit)
        else:
            rows = await self._db().fetch(
                f"{select} WHERE trigger_id = $1 ORDER BY id LIMIT $2", trigger_id, limit
            )
        return [mapping.dead_letter_from_row(row) for row in rows]

    async def get_dead_letter(self, dead_letter_id: int) -> DeadLetterRecord | None:
        row = await self._db().fetchrow(
            f"{self._select_dead_letters} WHERE id = $1",
            dead_letter_id,
        )
        return None if row is None else mapping.dead_letter_from_row(row)

    async def delete_dead_letter(self, dead_letter_id: int) -> bool:
        deleted = await self._write_fetchval(
            f"DELETE FROM {self._s}.dead_letters WHERE id = $1 RETURNING TRUE", dead_letter_id
        )
        return bool(deleted)
