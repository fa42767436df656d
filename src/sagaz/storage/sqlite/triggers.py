"""Poll trigger schedules and executions, and cron tick claims.

A part of :class:`~sagaz.storage.sqlite.SQLiteSagaStore`.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sagaz.clock import utcnow
from sagaz.records import (
    TriggerExecutionRecord,
    TriggerScheduleRecord,
)
from sagaz.storage import sqlite_rows as mapping
from sagaz.storage.codec import to_text
from sagaz.storage.sqlite.connection import SQLiteConnection

__all__ = ["SQLiteTriggers"]


def _schedule(row: Sequence[Any]) -> TriggerScheduleRecord:
    name, saga_name, interval, concurrent, enabled, last = row
    return TriggerScheduleRecord(
        name, saga_name, interval, bool(concurrent), bool(enabled), mapping.optional_moment(last)
    )


class SQLiteTriggers(SQLiteConnection):
    """Poll trigger schedules and executions, and cron tick claims."""

    # -- poll triggers ---------------------------------------------------------------------
    async def save_trigger_schedule(self, record: TriggerScheduleRecord) -> None:
        await self._write_one(
            "INSERT INTO trigger_schedules (trigger_name, saga_name, poll_interval_ms, "
            "allow_concurrent, enabled, last_poll_at) VALUES (?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (trigger_name) DO UPDATE SET saga_name = excluded.saga_name, "
            "poll_interval_ms = excluded.poll_interval_ms, "
            "allow_concurrent = excluded.allow_concurrent, "
            "last_poll_at = COALESCE(excluded.last_poll_at, trigger_schedules.last_poll_at)",
            (
                record.trigger_name,
                record.saga_name,
                record.poll_interval_ms,
                int(record.allow_concurrent),
                int(record.enabled),
                mapping.optional_text(record.last_poll_at),
            ),
        )

    async def get_trigger_schedule(self, trigger_name: str) -> TriggerScheduleRecord | None:
        rows = await self._fetch(
            "SELECT trigger_name, saga_name, poll_interval_ms, allow_concurrent, enabled, "
            "last_poll_at FROM trigger_schedules WHERE trigger_name = ?",
            (trigger_name,),
        )
        return _schedule(rows[0]) if rows else None

    async def list_trigger_schedules(self) -> list[TriggerScheduleRecord]:
        rows = await self._fetch(
            "SELECT trigger_name, saga_name, poll_interval_ms, allow_concurrent, enabled, "
            "last_poll_at FROM trigger_schedules ORDER BY trigger_name"
        )
        return [_schedule(row) for row in rows]

    async def set_trigger_enabled(self, trigger_name: str, enabled: bool) -> bool:
        changed = await self._write_one(
            "UPDATE trigger_schedules SET enabled = ? WHERE trigger_name = ?",
            (int(enabled), trigger_name),
        )
        return changed == 1

    async def touch_trigger_schedule(self, trigger_name: str, last_poll_at: datetime) -> None:
        await self._write_one(
            "UPDATE trigger_schedules SET last_poll_at = ? WHERE trigger_name = ?",
            (to_text(last_poll_at), trigger_name),
        )

    async def start_trigger_execution(
        self, record: TriggerExecutionRecord, *, exclusive: bool
    ) -> bool:
        started = to_text(record.started_at or utcnow())
        params = (record.trigger_name, record.context_hash, record.saga_id, int(exclusive), started)
        insert = (
            "INSERT INTO trigger_executions (trigger_name, context_hash, saga_id, exclusive, "
            "started_at) "
        )
        if not exclusive:
            await self._write_one(insert + "VALUES (?, ?, ?, ?, ?)", params)
            return True
        inserted = await self._write_one(
            insert + "SELECT ?, ?, ?, ?, ? WHERE NOT EXISTS (SELECT 1 FROM "
            "trigger_executions WHERE trigger_name = ? AND context_hash = ? "
            "AND completed_at IS NULL) ON CONFLICT DO NOTHING",
            (*params, record.trigger_name, record.context_hash),
        )
        return inserted == 1

    async def complete_trigger_execution(self, trigger_name: str, saga_id: str) -> None:
        await self._write_one(
            "UPDATE trigger_executions SET completed_at = ? WHERE trigger_name = ? "
            "AND saga_id = ? AND completed_at IS NULL",
            (to_text(utcnow()), trigger_name, saga_id),
        )

    async def list_trigger_executions(self, trigger_name: str) -> list[TriggerExecutionRecord]:
        rows = await self._fetch(
            f"SELECT {mapping.EXECUTION_COLUMNS} FROM trigger_executions WHERE trigger_name = ? "
            "ORDER BY id",
            (trigger_name,),
        )
        return [mapping.execution_from_row(row) for row in rows]

    # -- cron ------------------------------------------------------------------------------
    async def claim_cron_tick(self, trigger_id: str, tick: datetime, owner: str) -> bool:
        inserted = await self._write_one(
            "INSERT INTO cron_claims (trigger_id, tick, owner, claimed_at) "
            "VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING",
            (trigger_id, to_text(tick), owner, to_text(utcnow())),
        )
        return inserted == 1

    async def last_cron_tick(self, trigger_id: str) -> datetime | None:
        rows = await self._fetch(
            "SELECT MAX(tick) FROM cron_claims WHERE trigger_id = ?", (trigger_id,)
        )
        return mapping.optional_moment(rows[0][0]) if rows else None
