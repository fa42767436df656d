"""What :class:`~sagaz.storage.memory.MemorySagaStore` forgets with age: ``purge_expired``,
``purge_sagas`` and ``purge_dead_letters`` (see :class:`~sagaz.abc.SagaStore`), on its
dictionaries."""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any

from sagaz.clock import utcnow
from sagaz.records import (
    DeadLetterRecord,
    OutboxMessage,
    SagaControlRequest,
    SagaHistoryRecord,
    SagaRecord,
    TriggerExecutionRecord,
)
from sagaz.storage.rows import RowCodec
from sagaz.types import TERMINAL_SAGA_STATUSES, InboxStatus

__all__ = ["InboxRow", "MemoryRetention"]

_SAGA = RowCodec(SagaRecord)
_S_STATUS = _SAGA.index["status"]
_S_EVENT = _SAGA.index["event"]
_S_UPDATED = _SAGA.index["updated_at"]

InboxRow = tuple[str, str | None, datetime | None, str, datetime, datetime | None]
"""An inbox row: (saga_id, owner, lease_until, status value, created_at, completed_at)."""
_PENDING = InboxStatus.PENDING.value
_COMPLETED = InboxStatus.COMPLETED.value


class MemoryRetention:
    """The purges of the memory store (a part of it: the tables are its own)."""

    _sagas: dict[str, tuple[Any, ...]]
    _steps: dict[str, tuple[tuple[Any, ...], ...]]
    _inbox: dict[str, dict[str, InboxRow]]  # by trigger id, then key
    _outbox: list[OutboxMessage]
    _dead: dict[int, DeadLetterRecord]
    _executions: list[TriggerExecutionRecord]
    _cron: dict[str, dict[datetime, str]]
    _leases: dict[str, tuple[str, float]]  # name -> (holder, monotonic expiry)
    _rate_limits: dict[str, float]  # name -> theoretical arrival time (monotonic)
    _history: dict[str, list[SagaHistoryRecord]]
    _recoveries: dict[str, tuple[int, int]]
    _requests: dict[str, SagaControlRequest]

    async def purge_expired(self, before: datetime) -> int:
        """See :meth:`sagaz.abc.SagaStore.purge_expired`."""
        expired = 0
        for inbox in self._inbox.values():
            keys = [  # completed, or abandoned: pending with a lease that long expired
                k
                for k, (_, _, lease, status, _, completed) in inbox.items()
                if (status == _COMPLETED and completed is not None and completed < before)
                or (status == _PENDING and lease is not None and lease < before)
            ]
            for k in keys:
                del inbox[k]
            expired += len(keys)
        cleared = 0
        sagas = self._sagas
        for saga_id, record in sagas.items():
            if (
                record[_S_EVENT] is not None
                and record[_S_STATUS] in TERMINAL_SAGA_STATUSES
                and record[_S_UPDATED] is not None
                and record[_S_UPDATED] < before
            ):
                sagas[saga_id] = _SAGA.replace(record, event=None)
                cleared += 1
        kept = [e for e in self._executions if e.completed_at is None or e.completed_at >= before]
        executions = len(self._executions) - len(kept)
        self._executions = kept
        ticks_dropped = 0
        for ticks in self._cron.values():
            newest = max(ticks)
            stale = [t for t in ticks if t < before and t != newest]
            for tick in stale:
                del ticks[tick]
            ticks_dropped += len(stale)
        return expired + cleared + executions + ticks_dropped + self._purge_free_names()

    def _purge_free_names(self) -> int:
        """Drop expired leases and full token buckets: absent means the same."""
        now = time.monotonic()
        leases = [name for name, (_, expiry) in self._leases.items() if expiry <= now]
        for name in leases:
            del self._leases[name]
        buckets = [name for name, tat in self._rate_limits.items() if tat < now]
        for name in buckets:
            del self._rate_limits[name]
        return len(leases) + len(buckets)

    async def purge_sagas(self, before: datetime, *, limit: int = 500) -> int:
        """See :meth:`sagaz.abc.SagaStore.purge_sagas`. Oldest created first (the order of
        the dictionary): the scan stops at ``limit`` sagas, and the sets of sagas to keep are
        made once per call, only when a saga old enough is found."""
        keep: set[str] | None = None
        doomed: list[str] = []
        for saga_id, row in self._sagas.items():
            if len(doomed) >= limit:
                break
            if row[_S_STATUS] not in TERMINAL_SAGA_STATUSES or row[_S_UPDATED] >= before:
                continue
            if keep is None:
                keep = self._sagas_to_keep()
            if saga_id not in keep:
                doomed.append(saga_id)
        for saga_id in doomed:
            del self._sagas[saga_id]
            self._steps.pop(saga_id, None)
            self._history.pop(saga_id, None)
            self._recoveries.pop(saga_id, None)
        if doomed:
            gone = set(doomed)
            self._outbox = [m for m in self._outbox if m.saga_id not in gone]
        return len(doomed)

    def _sagas_to_keep(self) -> set[str]:
        """The sagas with a pending inbox row of a live worker (a retry is due), an open
        request or an unsent outbox message."""
        now = utcnow()
        keep = {
            saga_id
            for inbox in self._inbox.values()
            for saga_id, _, lease, status, _, _ in inbox.values()
            if status == _PENDING and lease is not None and lease >= now
        }
        keep.update(self._requests)
        keep.update(m.saga_id for m in self._outbox if m.sent_at is None)
        return keep

    async def purge_dead_letters(self, before: datetime, *, limit: int = 500) -> int:
        """See :meth:`sagaz.abc.SagaStore.purge_dead_letters`."""
        old = [
            dead_id
            for dead_id, record in self._dead.items()  # in id order: oldest first
            if record.created_at is not None and record.created_at < before
        ][: max(limit, 0)]
        for dead_id in old:
            del self._dead[dead_id]
        return len(old)
