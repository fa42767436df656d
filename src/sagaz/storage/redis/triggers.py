"""Poll trigger schedules and executions, and cron tick claims.

A part of :class:`~sagaz.storage.redis.RedisSagaStore`.
"""

from __future__ import annotations

from datetime import datetime

from sagaz.clock import utcnow
from sagaz.records import (
    TriggerExecutionRecord,
    TriggerScheduleRecord,
)
from sagaz.storage import redis_schema as tables
from sagaz.storage.codec import from_micros
from sagaz.storage.redis.connection import RedisConnection
from sagaz.storage.redis_schema import micros

__all__ = ["RedisTriggers"]


def _schedule(trigger_name: str, fields: dict[str, str]) -> TriggerScheduleRecord:
    return TriggerScheduleRecord(
        trigger_name=trigger_name,
        saga_name=fields["saga_name"],
        poll_interval_ms=int(fields["poll_interval_ms"]),
        allow_concurrent=fields["allow_concurrent"] == "1",
        enabled=fields.get("enabled", "1") == "1",
        last_poll_at=tables.optional_moment(fields.get("last_poll_at")),
    )


class RedisTriggers(RedisConnection):
    """Poll trigger schedules and executions, and cron tick claims."""

    # -- poll triggers ---------------------------------------------------------------------
    async def save_trigger_schedule(self, record: TriggerScheduleRecord) -> None:
        last = record.last_poll_at
        await self._script(
            "SAVE_TRIGGER_SCHEDULE",
            [self._key("schedule", record.trigger_name)],
            [
                self.prefix,
                record.trigger_name,
                record.saga_name,
                str(record.poll_interval_ms),
                "1" if record.allow_concurrent else "0",
                "1" if record.enabled else "0",
                "" if last is None else micros(last),  # "" keeps the stored time
            ],
        )

    async def get_trigger_schedule(self, trigger_name: str) -> TriggerScheduleRecord | None:
        fields = await self._db().hgetall(self._key("schedule", trigger_name))
        return _schedule(trigger_name, fields) if fields else None

    async def list_trigger_schedules(self) -> list[TriggerScheduleRecord]:
        names = sorted(await self._db().smembers(self._key("schedules")))
        pipe = self._db().pipeline(transaction=False)
        for name in names:
            pipe.hgetall(self._key("schedule", name))
        rows = await pipe.execute() if names else []
        return [_schedule(name, fields) for name, fields in zip(names, rows, strict=True) if fields]

    async def set_trigger_enabled(self, trigger_name: str, enabled: bool) -> bool:
        found = await self._script(
            "SET_TRIGGER_ENABLED",
            [self._key("schedule", trigger_name)],
            [self.prefix, trigger_name, "1" if enabled else "0"],
        )
        return bool(found)

    async def touch_trigger_schedule(self, trigger_name: str, last_poll_at: datetime) -> None:
        await self._script(
            "TOUCH_TRIGGER_SCHEDULE",
            [self._key("schedule", trigger_name)],
            [micros(last_poll_at)],
        )

    async def start_trigger_execution(
        self, record: TriggerExecutionRecord, *, exclusive: bool
    ) -> bool:
        started = await self._script(
            "START_TRIGGER_EXECUTION",
            [self._open_executions_key(record.trigger_name, record.saga_id)],
            [
                self.prefix,
                record.trigger_name,
                record.context_hash,
                record.saga_id,
                "1" if exclusive else "0",
                micros(record.started_at or utcnow()),
            ],
        )
        return bool(started)

    async def complete_trigger_execution(self, trigger_name: str, saga_id: str) -> None:
        await self._script(
            "COMPLETE_TRIGGER_EXECUTION",
            [self._open_executions_key(trigger_name, saga_id)],
            [self.prefix, trigger_name, micros(utcnow())],
        )

    async def list_trigger_executions(self, trigger_name: str) -> list[TriggerExecutionRecord]:
        db = self._db()
        ids = await db.zrange(self._key("texecs", trigger_name), 0, -1)
        async with db.pipeline(transaction=False) as pipe:
            for execution_id in ids:
                pipe.hgetall(self._key("texec", execution_id))
            rows = await pipe.execute()
        return [
            TriggerExecutionRecord(
                trigger_name=fields["trigger_name"],
                context_hash=fields["context_hash"],
                saga_id=fields["saga_id"],
                started_at=from_micros(fields["started_at"]),
                completed_at=tables.optional_moment(fields.get("completed_at")),
            )
            for fields in rows
            if fields
        ]

    # -- cron ------------------------------------------------------------------------------
    async def claim_cron_tick(self, trigger_id: str, tick: datetime, owner: str) -> bool:
        claimed = await self._script(
            "CLAIM_CRON_TICK",
            [
                self._key("cron", trigger_id),
                self._key("cron-owners", trigger_id),
                self._key("cron-triggers"),
            ],
            [micros(tick), owner, trigger_id],
        )
        return bool(claimed)

    async def last_cron_tick(self, trigger_id: str) -> datetime | None:
        latest = await self._db().zrange(self._key("cron", trigger_id), -1, -1)
        return from_micros(latest[0]) if latest else None
