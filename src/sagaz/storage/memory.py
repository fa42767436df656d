"""In-process store for tests and library use. Not durable: everything is lost on exit."""

from __future__ import annotations

import copy
import dataclasses
import itertools
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import datetime
from typing import Any, ClassVar, TypeVar

from sagaz.abc import SagaStore
from sagaz.clock import utcnow
from sagaz.records import (
    ClaimOutcome,
    DeadLetterRecord,
    InboxClaim,
    OutboxMessage,
    SagaRecord,
    StepRecord,
    TriggerExecutionRecord,
    TriggerScheduleRecord,
)
from sagaz.types import TERMINAL_SAGA_STATUSES, InboxStatus, SagaStatus

__all__ = ["MemorySagaStore"]

R = TypeVar("R")
_ATOMIC = (str, int, float, bool, type(None), bytes)
_NESTED = ("context", "result", "event", "payload", "headers", "meta")


def _copy_value(value: Any) -> Any:
    """A deep copy of JSON-like data (dict/list/tuple), much cheaper than ``copy.deepcopy``."""
    if isinstance(value, _ATOMIC):
        return value
    if isinstance(value, dict):
        return {k: _copy_value(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_copy_value(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_copy_value(v) for v in value)
    return copy.deepcopy(value)


_CLONERS: dict[type, Callable[[Any], Any]] = {}


def _make_cloner(cls: type) -> Callable[[Any], Any]:
    """Compile a copy function for one record class (as ``dataclasses`` compiles ``__init__``):
    straight-line attribute copies are several times cheaper than a generic loop, and the
    memory store copies every record it takes in and gives out."""
    lines = ["def clone(r):", "    c = new(cls)"]
    for field in dataclasses.fields(cls):
        name = field.name
        if name in _NESTED:
            lines.append(f"    v = r.{name}")
            lines.append(f"    c.{name} = v if v is None or type(v) in atomic else copy_value(v)")
        else:
            lines.append(f"    c.{name} = r.{name}")
    lines.append("    return c")
    namespace: dict[str, Any] = {
        "new": object.__new__,
        "cls": cls,
        "atomic": frozenset(_ATOMIC),
        "copy_value": _copy_value,
    }
    exec("\n".join(lines), namespace)
    cloner: Callable[[Any], Any] = namespace["clone"]
    return cloner


def _clone(record: R) -> R:
    """Copy a record so callers cannot change stored state by mutation (and vice versa)."""
    cls = type(record)
    cloner = _CLONERS.get(cls)
    if cloner is None:
        cloner = _CLONERS[cls] = _make_cloner(cls)
    clone: R = cloner(record)
    return clone


class _InboxRow:
    __slots__ = ("completed_at", "created_at", "lease_until", "owner", "saga_id", "status")

    def __init__(self, saga_id: str, owner: str, lease_until: datetime) -> None:
        self.saga_id = saga_id
        self.owner: str | None = owner
        self.lease_until: datetime | None = lease_until
        self.status = InboxStatus.PENDING
        self.created_at = utcnow()
        self.completed_at: datetime | None = None


class MemorySagaStore(SagaStore):
    """A :class:`~sagaz.abc.SagaStore` in dictionaries.

    Every operation runs without an ``await`` in between, so it is atomic on the event loop.
    Records are copied in and out, so callers cannot change stored state by mutation.
    """

    durable: ClassVar[bool] = False

    def __del__(self) -> None:  # holds no OS resource: nothing to warn about
        return None

    def __init__(self) -> None:
        self._sagas: dict[str, SagaRecord] = {}
        self._steps: dict[str, dict[str, StepRecord]] = {}
        self._inbox: dict[tuple[str, str], _InboxRow] = {}
        self._outbox: list[OutboxMessage] = []
        self._outbox_ids = itertools.count(1)
        self._dead: dict[int, DeadLetterRecord] = {}
        self._dead_ids = itertools.count(1)
        self._schedules: dict[str, TriggerScheduleRecord] = {}
        self._executions: list[TriggerExecutionRecord] = []
        self._cron: dict[str, dict[datetime, str]] = {}

    # -- sagas -----------------------------------------------------------------------------
    async def create_saga(self, record: SagaRecord) -> tuple[SagaRecord, bool]:
        existing = self._sagas.get(record.saga_id)
        if existing is not None:
            return _clone(existing), False
        now = utcnow()
        stored = _clone(record)
        stored.created_at = stored.created_at or now
        stored.updated_at = now
        self._sagas[record.saga_id] = stored
        record.created_at, record.updated_at = stored.created_at, now
        return record, True  # the caller's own object: the store keeps its private copy

    async def save_saga(self, record: SagaRecord) -> None:
        stored = _clone(record)
        previous = self._sagas.get(record.saga_id)
        stored.created_at = previous.created_at if previous else (record.created_at or utcnow())
        stored.updated_at = utcnow()
        self._sagas[record.saga_id] = stored

    async def get_saga(self, saga_id: str) -> SagaRecord | None:
        record = self._sagas.get(saga_id)
        return _clone(record) if record else None

    async def list_sagas(
        self,
        *,
        status: SagaStatus | None = None,
        saga_name: str | None = None,
        limit: int = 100,
    ) -> list[SagaRecord]:
        rows = [
            r
            for r in self._sagas.values()
            if (status is None or r.status == status)
            and (saga_name is None or r.saga_name == saga_name)
        ]
        return [_clone(r) for r in rows[:limit]]

    async def delete_saga(self, saga_id: str) -> None:
        self._sagas.pop(saga_id, None)
        self._steps.pop(saga_id, None)

    async def list_recoverable(self, now: datetime, limit: int = 100) -> list[SagaRecord]:
        rows = [
            r
            for r in self._sagas.values()
            if r.status not in TERMINAL_SAGA_STATUSES
            and (r.lease_expires_at is None or r.lease_expires_at < now)
        ]
        return [_clone(r) for r in rows[:limit]]

    async def claim_saga(self, saga_id: str, owner: str, lease_until: datetime) -> bool:
        record = self._sagas.get(saga_id)
        if record is None:
            return False
        now = utcnow()
        if (
            record.owner not in (None, owner)
            and record.lease_expires_at is not None
            and record.lease_expires_at >= now
        ):
            return False
        record.owner = owner
        record.lease_expires_at = lease_until
        return True

    # -- steps -----------------------------------------------------------------------------
    async def save_step(self, step: StepRecord, outbox: Sequence[OutboxMessage] = ()) -> None:
        stored = _clone(step)
        stored.updated_at = utcnow()
        self._steps.setdefault(step.saga_id, {})[step.name] = stored
        for message in outbox:
            self._outbox.append(
                replace(_clone(message), id=next(self._outbox_ids), created_at=utcnow())
            )

    async def get_steps(self, saga_id: str) -> list[StepRecord]:
        return [_clone(s) for s in self._steps.get(saga_id, {}).values()]

    async def reset_steps(self, saga_id: str) -> None:
        self._steps.pop(saga_id, None)

    # -- inbox -----------------------------------------------------------------------------
    async def claim_inbox(
        self, trigger_id: str, key: str, saga_id: str, owner: str, lease_until: datetime
    ) -> InboxClaim:
        row = self._inbox.get((trigger_id, key))
        if row is None:
            self._inbox[(trigger_id, key)] = _InboxRow(saga_id, owner, lease_until)
            return InboxClaim(ClaimOutcome.CLAIMED, saga_id, owner)
        if row.status is InboxStatus.COMPLETED:
            return InboxClaim(ClaimOutcome.DUPLICATE, row.saga_id, row.owner)
        if row.owner == owner or row.lease_until is None or row.lease_until < utcnow():
            row.owner = owner
            row.lease_until = lease_until
            return InboxClaim(ClaimOutcome.TAKEN_OVER, row.saga_id, owner)
        return InboxClaim(ClaimOutcome.BUSY, row.saga_id, row.owner)

    async def complete_inbox(self, trigger_id: str, key: str) -> None:
        row = self._inbox.get((trigger_id, key))
        if row is not None:
            row.status = InboxStatus.COMPLETED
            row.completed_at = utcnow()

    async def release_inbox(self, trigger_id: str, key: str) -> None:
        self._inbox.pop((trigger_id, key), None)

    async def renew_leases(self, owner: str, lease_until: datetime) -> int:
        touched = 0
        for row in self._inbox.values():
            if row.owner == owner and row.status is InboxStatus.PENDING:
                row.lease_until = lease_until
                touched += 1
        for record in self._sagas.values():
            if record.owner == owner and record.status not in TERMINAL_SAGA_STATUSES:
                record.lease_expires_at = lease_until
                touched += 1
        return touched

    async def purge_expired(self, before: datetime) -> int:
        expired = [
            k
            for k, row in self._inbox.items()
            if row.status is InboxStatus.COMPLETED
            and row.completed_at is not None
            and row.completed_at < before
        ]
        for k in expired:
            del self._inbox[k]
        cleared = 0
        for record in self._sagas.values():
            if (
                record.event is not None
                and record.status in TERMINAL_SAGA_STATUSES
                and record.updated_at is not None
                and record.updated_at < before
            ):
                record.event = None
                cleared += 1
        return len(expired) + cleared

    # -- outbox ----------------------------------------------------------------------------
    async def fetch_outbox(self, limit: int = 100) -> list[OutboxMessage]:
        return [_clone(m) for m in self._outbox if m.sent_at is None][:limit]

    async def mark_outbox_sent(self, ids: Sequence[int]) -> None:
        wanted = set(ids)
        now = utcnow()
        for message in self._outbox:
            if message.id in wanted:
                message.sent_at = now

    # -- dead letters ----------------------------------------------------------------------
    async def add_dead_letter(self, record: DeadLetterRecord) -> int:
        dead_id = next(self._dead_ids)
        self._dead[dead_id] = replace(_clone(record), id=dead_id, created_at=utcnow())
        return dead_id

    async def list_dead_letters(
        self, *, trigger_id: str | None = None, limit: int = 100
    ) -> list[DeadLetterRecord]:
        rows = [r for r in self._dead.values() if trigger_id is None or r.trigger_id == trigger_id]
        return [_clone(r) for r in rows[:limit]]

    async def get_dead_letter(self, dead_letter_id: int) -> DeadLetterRecord | None:
        record = self._dead.get(dead_letter_id)
        return _clone(record) if record else None

    async def delete_dead_letter(self, dead_letter_id: int) -> bool:
        return self._dead.pop(dead_letter_id, None) is not None

    # -- poll triggers ---------------------------------------------------------------------
    async def save_trigger_schedule(self, record: TriggerScheduleRecord) -> None:
        previous = self._schedules.get(record.trigger_name)
        stored = _clone(record)
        if stored.last_poll_at is None and previous is not None:
            stored.last_poll_at = previous.last_poll_at
        self._schedules[record.trigger_name] = stored

    async def get_trigger_schedule(self, trigger_name: str) -> TriggerScheduleRecord | None:
        record = self._schedules.get(trigger_name)
        return _clone(record) if record else None

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
