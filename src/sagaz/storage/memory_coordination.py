"""What :class:`~sagaz.storage.memory.MemorySagaStore` keeps to coordinate workers and
schedules: poll trigger schedules and executions, cron tick claims, named leases and shared
rate limits (see :class:`~sagaz.abc.SagaStore`), on its dictionaries."""

from __future__ import annotations

import time
from datetime import datetime

from sagaz.clock import utcnow
from sagaz.records import TriggerExecutionRecord, TriggerScheduleRecord
from sagaz.storage.rate_limits import take as take_token
from sagaz.storage.rows import clone as _clone

__all__ = ["MemoryCoordination"]


class MemoryCoordination:
    """The schedules, cron claims, leases and rate limits of the memory store (a part of it:
    the dictionaries are its own)."""

    _schedules: dict[str, TriggerScheduleRecord]
    _executions: list[TriggerExecutionRecord]
    _cron: dict[str, dict[datetime, str]]
    _leases: dict[str, tuple[str, float]]  # name -> (holder, monotonic expiry)
    _rate_limits: dict[str, float]  # name -> theoretical arrival time (monotonic)

    # -- poll triggers ---------------------------------------------------------------------
    async def save_trigger_schedule(self, record: TriggerScheduleRecord) -> None:
        previous = self._schedules.get(record.trigger_name)
        stored = _clone(record)
        if previous is not None:
            stored.enabled = previous.enabled
            if stored.last_poll_at is None:
                stored.last_poll_at = previous.last_poll_at
        self._schedules[record.trigger_name] = stored

    async def get_trigger_schedule(self, trigger_name: str) -> TriggerScheduleRecord | None:
        record = self._schedules.get(trigger_name)
        return _clone(record) if record else None

    async def list_trigger_schedules(self) -> list[TriggerScheduleRecord]:
        return [_clone(self._schedules[name]) for name in sorted(self._schedules)]

    async def set_trigger_enabled(self, trigger_name: str, enabled: bool) -> bool:
        record = self._schedules.get(trigger_name)
        if record is None:
            return False
        record.enabled = enabled
        return True

    async def touch_trigger_schedule(self, trigger_name: str, last_poll_at: datetime) -> None:
        record = self._schedules.get(trigger_name)
        if record is not None:
            record.last_poll_at = last_poll_at

    async def start_trigger_execution(
        self, record: TriggerExecutionRecord, *, exclusive: bool
    ) -> bool:
        if exclusive and any(
            e.trigger_name == record.trigger_name
            and e.context_hash == record.context_hash
            and e.completed_at is None
            for e in self._executions
        ):
            return False
        stored = _clone(record)
        stored.started_at = stored.started_at or utcnow()
        self._executions.append(stored)
        return True

    async def complete_trigger_execution(self, trigger_name: str, saga_id: str) -> None:
        now = utcnow()
        for e in self._executions:
            if e.trigger_name == trigger_name and e.saga_id == saga_id and e.completed_at is None:
                e.completed_at = now

    async def list_trigger_executions(self, trigger_name: str) -> list[TriggerExecutionRecord]:
        return [_clone(e) for e in self._executions if e.trigger_name == trigger_name]

    # -- cron ------------------------------------------------------------------------------
    async def claim_cron_tick(self, trigger_id: str, tick: datetime, owner: str) -> bool:
        ticks = self._cron.setdefault(trigger_id, {})
        if tick in ticks:
            return False
        ticks[tick] = owner
        return True

    async def last_cron_tick(self, trigger_id: str) -> datetime | None:
        ticks = self._cron.get(trigger_id)
        return max(ticks) if ticks else None

    # -- leases ----------------------------------------------------------------------------
    def _lease_holder(self, name: str) -> str | None:
        held = self._leases.get(name)
        if held is None or held[1] <= time.monotonic():
            return None
        return held[0]

    async def acquire_lease(self, name: str, holder: str, ttl: float) -> bool:
        if self._lease_holder(name) not in (None, holder):
            return False
        self._leases[name] = (holder, time.monotonic() + ttl)
        return True

    async def renew_lease(self, name: str, holder: str, ttl: float) -> bool:
        if self._lease_holder(name) != holder:
            return False
        self._leases[name] = (holder, time.monotonic() + ttl)
        return True

    async def release_lease(self, name: str, holder: str) -> bool:
        if self._lease_holder(name) != holder:
            return False
        del self._leases[name]
        return True

    # -- shared rate limits ----------------------------------------------------------------
    async def take_rate_token(self, name: str, rate: float, burst: int) -> float:
        wait, tat = take_token(self._rate_limits.get(name), time.monotonic(), rate, burst)
        if tat is not None:
            self._rate_limits[name] = tat
        return wait
