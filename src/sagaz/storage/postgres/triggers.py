"""Poll trigger schedules and executions, and cron tick claims.

A part of :class:`~sagaz.storage.postgres.PostgresSagaStore`.
"""

from __future__ import annotations

from datetime import datetime

from sagaz.clock import utcnow
from sagaz.records import (
    TriggerExecutionRecord,
    TriggerScheduleRecord,
)
from sagaz.storage.codec import to_utc
from sagaz.storage.postgres.connection import PostgresConnection

__all__ = ["PostgresTriggers"]


class PostgresTriggers(PostgresConnection):
    """Poll trigger schedules and executions, and cron tick claims."""

    # -- poll triggers ---------------------------------------------------------------------
    async def save_trigger_schedule(self, record: TriggerScheduleRecord) -> None:
        last = record.last_poll_at
        await self._db().execute(
            f"INSERT INTO {self._s}.trigger_schedules AS t (trigger_name, saga_name, "
            "poll_interval_ms, allow_concurrent, enabled, last_poll_at) "
            "VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (trigger_name) DO UPDATE SET "
            "saga_name = EXCLUDED.saga_name, poll_interval_ms = EXCLUDED.poll_interval_ms, "
            "allow_concurrent = EXCLUDED.allow_concurrent, "
            "last_poll_at = COALESCE(EXCLUDED.last_poll_at, t.last_poll_at)",
            record.trigger_name,
            record.saga_name,
            record.poll_interval_ms,
            record.allow_concurrent,
            record.enabled,
            None if last is None else to_utc(last),
        )

    async def get_trigger_schedule(self, trigger_name: str) -> TriggerScheduleRecord | None:
        row = await self._db().fetchrow(
            "SELECT trigger_name, saga_name, poll_interval_ms, allow_concurrent, enabled, "
            f"last_poll_at FROM {self._s}.trigger_schedules WHERE trigger_name = $1",
            trigger_name,
        )
        return None if row is None else TriggerScheduleRecord(*row)

    async def list_trigger_schedules(self) -> list[TriggerScheduleRecord]:
        rows = await self._db().fetch(
            "SELECT trigger_name, saga_name, poll_interval_ms, allow_concurrent, enabled, "
            f'last_poll_at FROM {self._s}.trigger_schedules ORDER BY trigger_name COLLATE "C"'
        )
        return [TriggerScheduleRecord(*row) for row in rows]

    async def set_trigger_enabled(self, trigger_name: str, enabled: bool) -> bool:
        found = await self._db().fetchval(
            f"UPDATE {self._s}.trigger_schedules SET enabled = $2 WHERE trigger_name = $1 "
            "RETURNING TRUE",
            trigger_name,
            enabled,
        )
        return bool(found)

    async def touch_trigger_schedule(self, trigger_name: str, last_poll_at: datetime) -> None:
        await self._db().execute(
            f"UPDATE {self._s}.trigger_schedules SET last_poll_at = $2 WHERE trigger_name = $1",
            trigger_name,
            to_utc(last_poll_at),
        )

    async def start_trigger_execution(
        self, record: TriggerExecutionRecord, *, exclusive: bool
    ) -> bool:
        started = to_utc(record.started_at or utcnow())
        insert = (
            f"INSERT INTO {self._s}.trigger_executions "
            "(trigger_name, context_hash, saga_id, exclusive, started_at) "
        )
        args = (record.trigger_name, record.context_hash, record.saga_id, exclusive, started)
        if not exclusive:
            await self._write_execute(insert + "VALUES ($1, $2, $3, $4, $5)", *args)
            return True
        # the NOT EXISTS sees committed open rows; the partial unique index settles two
        # exclusive inserts racing each other (the loser's ON CONFLICT does nothing)
        inserted = await self._write_fetchval(
            insert + "SELECT $1, $2, $3, $4, $5 WHERE NOT EXISTS (SELECT 1 FROM "
            f"{self._s}.trigger_executions WHERE trigger_name = $1 AND context_hash = $2 "
            "AND completed_at IS NULL) ON CONFLICT DO NOTHING RETURNING TRUE",
            *args,
        )
        return bool(inserted)

    async def complete_trigger_execution(self, trigger_name: str, saga_id: str) -> None:
        await self._write_execute(
            f"UPDATE {self._s}.trigger_executions SET completed_at = $3 "
            "WHERE trigger_name = $1 AND saga_id = $2 AND completed_at IS NULL",
            trigger_name,
            saga_id,
            utcnow(),
        )

    async def list_trigger_executions(self, trigger_name: str) -> list[TriggerExecutionRecord]:
        rows = await self._db().fetch(
            "SELECT trigger_name, context_hash, saga_id, started_at, completed_at "
            f"FROM {self._s}.trigger_executions WHERE trigger_name = $1 ORDER BY id",
            trigger_name,
        )
        return [TriggerExecutionRecord(*row) for row in rows]

    # -- cron ------------------------------------------------------------------------------
    async def claim_cron_tick(self, trigger_id: str, tick: datetime, owner: str) -> bool:
        claimed = await self._write_fetchval(
            f"INSERT INTO {self._s}.cron_claims (trigger_id, tick, owner, claimed_at) "
            "VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING RETURNING TRUE",
            trigger_id,
            to_utc(tick),
            owner,
            utcnow(),
        )
        return bool(claimed)

    async def last_cron_tick(self, trigger_id: str) -> datetime | None:
        tick: datetime | None = await self._db().fetchval(
            f"SELECT MAX(tick) FROM {self._s}.cron_claims WHERE trigger_id = $1", trigger_id
        )
        return tick
