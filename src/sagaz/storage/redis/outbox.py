"""The outbox and the dead letters.

A part of :class:`~sagaz.storage.redis.RedisSagaStore`.
"""

from __future__ import annotations

from collections.abc import Sequence

from sagaz.clock import utcnow
from sagaz.records import (
    DeadLetterRecord,
    OutboxMessage,
)
from sagaz.storage import redis_schema as tables
from sagaz.storage.codec import dumps, from_micros, loads
from sagaz.storage.redis.connection import RedisConnection
from sagaz.storage.redis_schema import micros

__all__ = ["RedisOutbox"]


def _outbox_message(outbox_id: str, fields: dict[str, str]) -> OutboxMessage:
    """A ``p:outbox:<id>`` hash as a message."""
    return OutboxMessage(
        **loads(fields["doc"]),
        id=int(outbox_id),
        created_at=from_micros(fields["created_at"]),
        sent_at=tables.optional_moment(fields.get("sent_at")),
    )


class RedisOutbox(RedisConnection):
    """The outbox and the dead letters."""

    # -- outbox ----------------------------------------------------------------------------
    async def fetch_outbox(self, limit: int = 100) -> list[OutboxMessage]:
        db = self._db()
        ids = await db.zrange(self._key("outbox-unsent"), 0, limit - 1) if limit > 0 else []
        return [
            _outbox_message(outbox_id, fields)
            for outbox_id, fields in await self._outbox_hashes(ids)
            if fields and "sent_at" not in fields  # else sent or gone between the two reads
        ]

    async def list_saga_outbox(self, saga_id: str, limit: int = 100) -> list[OutboxMessage]:
        db = self._db()
        index = self._key("outbox-saga", saga_id)
        ids = await db.zrange(index, 0, limit - 1) if limit > 0 else []
        return [
            _outbox_message(outbox_id, fields)
            for outbox_id, fields in await self._outbox_hashes(ids)
            if fields
        ]

    async def _outbox_hashes(self, ids: list[str]) -> list[tuple[str, dict[str, str]]]:
        """Each of ``ids`` with its outbox row's hash (empty: gone), read in one round trip."""
        async with self._db().pipeline(transaction=False) as pipe:
            for outbox_id in ids:
                pipe.hgetall(self._key("outbox", outbox_id))
            rows = await pipe.execute()
        return list(zip(ids, rows, strict=True))

    async def mark_outbox_sent(self, ids: Sequence[int]) -> None:
        if ids:
            await self._script(
                "MARK_OUTBOX_SENT",
                [],
                [self.prefix, micros(utcnow()), *(int(i) for i in ids)],
            )

    # -- dead letters ----------------------------------------------------------------------
    async def add_dead_letter(self, record: DeadLetterRecord) -> int:
        document = dumps(
            {
                "trigger_id": record.trigger_id,
                "saga_name": record.saga_name,
                "payload": record.payload,
                "error": record.error,
                "reason": record.reason,
                "traceback": record.traceback,
                "attempts": record.attempts,
                "saga_id": record.saga_id,
                "source": record.source,
                "meta": record.meta,
            }
        )
        dead_id = await self._script(
            "ADD_DEAD_LETTER",
            [],
            [self.prefix, record.trigger_id, document, micros(utcnow())],
        )
        return int(dead_id)

    async def _dead_letters(self, ids: Sequence[str]) -> list[DeadLetterRecord]:
        async with self._db().pipeline(transaction=False) as pipe:
            for dead_id in ids:
                pipe.hgetall(self._key("dead", str(dead_id)))
            rows = await pipe.execute()
        return [
            DeadLetterRecord(
                **loads(fields["doc"]),
                id=int(dead_id),
                created_at=from_micros(fields["created_at"]),
            )
            for dead_id, fields in zip(ids, rows, strict=True)
            if fields
        ]

    async def list_dead_letters(
        self, *, trigger_id: str | None = None, limit: int = 100
    ) -> list[DeadLetterRecord]:
        if limit <= 0:
            return []
        index = self._key("dead-all" if trigger_id is None else f"dead-by-trigger:{trigger_id}")
        return await self._dead_letters(await self._db().zrange(index, 0, limit - 1))

    async def get_dead_letter(self, dead_letter_id: int) -> DeadLetterRecord | None:
        found = await self._dead_letters([str(int(dead_letter_id))])
        return found[0] if found else None

    async def delete_dead_letter(self, dead_letter_id: int) -> bool:
        deleted = await self._script(
            "DELETE_DEAD_LETTER", [], [self.prefix, str(int(dead_letter_id))]
        )
        return bool(deleted)
