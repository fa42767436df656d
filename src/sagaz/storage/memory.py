"""In-process store for tests and library use. Not durable: everything is lost on exit."""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any, ClassVar

from sagaz.abc import SagaStore
from sagaz.clock import utcnow
from sagaz.exceptions import LeaseLostError
from sagaz.records import (
    ClaimOutcome,
    DeadLetterRecord,
    EventClaim,
    InboxClaim,
    OutboxMessage,
    SagaAction,
    SagaControlRequest,
    SagaHistoryRecord,
    SagaRecord,
    StepRecord,
    TriggerExecutionRecord,
    TriggerScheduleRecord,
)
from sagaz.storage.checkpoints import check_checkpoint
from sagaz.storage.memory_coordination import MemoryCoordination
from sagaz.storage.memory_retention import InboxRow, MemoryRetention
from sagaz.storage.rows import RowCodec
from sagaz.storage.rows import clone as _clone
from sagaz.types import TERMINAL_SAGA_STATUSES, InboxStatus, SagaStatus

__all__ = ["MemorySagaStore"]

_SAGA = RowCodec(SagaRecord)
_STEP = RowCodec(StepRecord)
_S_STATUS = _SAGA.index["status"]
_S_NAME = _SAGA.index["saga_name"]
_S_TRIGGER = _SAGA.index["trigger_id"]
_S_OWNER = _SAGA.index["owner"]
_S_ATTEMPT = _SAGA.index["attempt"]
_S_LEASE = _SAGA.index["lease_expires_at"]
_S_CREATED = _SAGA.index["created_at"]
_S_UPDATED = _SAGA.index["updated_at"]
_T_NAME = _STEP.index["name"]

_InboxRow = InboxRow
_PENDING = InboxStatus.PENDING.value
_COMPLETED = InboxStatus.COMPLETED.value
# read once: on Python 3.11 ``ClaimOutcome.CLAIMED`` goes through ``EnumType.__getattr__``'s
# hook (about 0.1 µs), and a claim reads two or three of them
_CLAIMED, _TAKEN_OVER = ClaimOutcome.CLAIMED, ClaimOutcome.TAKEN_OVER
_DUPLICATE, _BUSY = ClaimOutcome.DUPLICATE, ClaimOutcome.BUSY


class MemorySagaStore(MemoryRetention, MemoryCoordination, SagaStore):
    """A :class:`~sagaz.abc.SagaStore` in dictionaries.

    Every operation runs without an ``await`` in between, so it is atomic on the event loop.
    Records are copied in and out, so callers cannot change stored state by mutation; sagas,
    steps and inbox rows are kept as tuples of plain values (see :mod:`sagaz.storage.rows`).
    """

    durable: ClassVar[bool] = False

    def __del__(self) -> None:  # holds no OS resource: nothing to warn about
        return None

    def __init__(self) -> None:
        self._sagas: dict[str, tuple[Any, ...]] = {}
        #: per saga, its step rows in the order first written: a tuple of tuples of plain
        #: values, which the garbage collector stops tracking within two passes, before it
        #: reaches the oldest generation (a dict of steps per saga it would track until a
        #: full collection, promote, and walk in every full collection)
        self._steps: dict[str, tuple[tuple[Any, ...], ...]] = {}
        #: inbox rows by trigger id, then key: no (trigger_id, key) tuple kept per event
        self._inbox: dict[str, dict[str, _InboxRow]] = {}
        self._outbox: list[OutboxMessage] = []
        self._outbox_ids = itertools.count(1)
        self._dead: dict[int, DeadLetterRecord] = {}
        self._dead_ids = itertools.count(1)
        self._schedules: dict[str, TriggerScheduleRecord] = {}
        self._executions: list[TriggerExecutionRecord] = []
        self._cron: dict[str, dict[datetime, str]] = {}
        self._leases: dict[str, tuple[str, float]] = {}  # name -> (holder, monotonic expiry)
        self._rate_limits: dict[str, float] = {}  # name -> theoretical arrival time (monotonic)
        self._history: dict[str, list[SagaHistoryRecord]] = {}
        self._history_ids = itertools.count(1)
        self._requests: dict[str, SagaControlRequest] = {}  # by saga_id, oldest first
        #: per saga, (the attempt its recovery attempts count, how many: take_over_saga)
        self._recoveries: dict[str, tuple[int, int]] = {}

    # -- sagas -----------------------------------------------------------------------------
    async def create_saga(self, record: SagaRecord) -> tuple[SagaRecord, bool]:
        existing = self._sagas.get(record.saga_id)
        if existing is not None:
            return _SAGA.unpack(existing), False
        now = datetime.now(UTC)  # utcnow() without the call: once per saga
        record.created_at = record.created_at or now
        record.updated_at = now
        self._sagas[record.saga_id] = _SAGA.pack(record)
        return record, True  # the caller's own object: the store keeps its private copy

    async def save_saga(self, record: SagaRecord, outbox: Sequence[OutboxMessage] = ()) -> None:
        now = utcnow()
        row = self._saga_row(record, now)
        messages = [_clone(m) for m in outbox]
        self._sagas[record.saga_id] = row
        self._append_outbox(messages, now)

    def _saga_row(self, record: SagaRecord, now: datetime) -> tuple[Any, ...]:
        """``record`` as its row, written ``now`` (created when first written); raises
        :class:`LeaseLostError` when another owner holds the stored row (fenced: see the
        contract)."""
        previous = self._sagas.get(record.saga_id)
        if previous is None:
            return _SAGA.stamped(record, record.created_at or now, now)
        owner, stored_owner = record.owner, previous[_S_OWNER]
        if (
            owner != stored_owner
            and owner is not None
            and stored_owner is not None
            and record.attempt <= previous[_S_ATTEMPT]
        ):
            raise LeaseLostError(record.saga_id, owner)
        return _SAGA.stamped(record, previous[_S_CREATED], now)

    async def get_saga(self, saga_id: str) -> SagaRecord | None:
        row = self._sagas.get(saga_id)
        return _SAGA.unpack(row) if row else None

    async def list_sagas(
        self,
        *,
        status: SagaStatus | None = None,
        saga_name: str | None = None,
        trigger_id: str | None = None,
        created_after: datetime | None = None,
        created_before: datetime | None = None,
        after: str | None = None,
        limit: int = 100,
    ) -> list[SagaRecord]:
        ids: Iterable[str] = reversed(self._sagas)  # a dict keeps the order of creation
        if after is not None:
            if after not in self._sagas:
                return []
            ids = itertools.dropwhile(lambda saga_id: saga_id != after, ids)
            next(ids)  # ``after`` itself
        found: list[SagaRecord] = []
        for saga_id in ids:
            if len(found) >= limit:
                break
            r = self._sagas[saga_id]
            if (
                (status is None or r[_S_STATUS] == status)
                and (saga_name is None or r[_S_NAME] == saga_name)
                and (trigger_id is None or r[_S_TRIGGER] == trigger_id)
                and (created_after is None or r[_S_CREATED] >= created_after)
                and (created_before is None or r[_S_CREATED] < created_before)
            ):
                found.append(_SAGA.unpack(r))
        return found

    async def delete_saga(self, saga_id: str) -> None:
        self._sagas.pop(saga_id, None)
        self._steps.pop(saga_id, None)
        self._recoveries.pop(saga_id, None)

    async def list_recoverable(self, now: datetime, limit: int = 100) -> list[SagaRecord]:
        rows = [
            r
            for r in self._sagas.values()
            if r[_S_STATUS] not in TERMINAL_SAGA_STATUSES
            and (r[_S_LEASE] is None or r[_S_LEASE] < now)
        ]
        return [_SAGA.unpack(r) for r in rows[:limit]]

    async def claim_saga(self, saga_id: str, owner: str, lease_until: datetime) -> bool:
        row = self._sagas.get(saga_id)
        if row is None:
            return False
        if (
            row[_S_OWNER] not in (None, owner)
            and row[_S_LEASE] is not None
            and row[_S_LEASE] >= utcnow()
        ):
            return False
        self._sagas[saga_id] = _SAGA.replace(row, owner=owner, lease_expires_at=lease_until)
        return True

    async def take_over_saga(self, saga_id: str, owner: str, lease_until: datetime) -> int | None:
        row = self._sagas.get(saga_id)
        if row is None:
            return None
        previous = row[_S_OWNER]
        if not await self.claim_saga(saga_id, owner, lease_until):  # it never suspends
            return None
        attempt, count = self._recoveries.get(saga_id, (0, 0))
        count = count if attempt == row[_S_ATTEMPT] else 0
        if previous is not None and previous != owner:  # given back: not counted
            count += 1
        self._recoveries[saga_id] = (row[_S_ATTEMPT], count)
        return count

    async def release_saga(
        self, saga_id: str, owner: str, retry_at: datetime | None = None
    ) -> bool:
        row = self._sagas.get(saga_id)
        if row is None or row[_S_OWNER] != owner:
            return False
        self._sagas[saga_id] = _SAGA.replace(row, owner=None, lease_expires_at=retry_at)
        return True

    # -- steps -----------------------------------------------------------------------------
    async def save_step(self, step: StepRecord, outbox: Sequence[OutboxMessage] = ()) -> None:
        now = datetime.now(UTC)  # utcnow() without the call: several times per saga
        if not outbox:  # the usual case: no message, no copy of none
            self._put_step(step.saga_id, _STEP.stamped(step, None, now))
            return
        messages = [_clone(m) for m in outbox]
        self._put_step(step.saga_id, _STEP.stamped(step, None, now))
        self._append_outbox(messages, now)

    def _put_step(self, saga_id: str, row: tuple[Any, ...]) -> None:
        """Store a step row in place of the saga's row of the same step (or after its last)."""
        rows = self._steps.get(saga_id)
        if rows is None:
            self._steps[saga_id] = (row,)
            return
        name = row[_T_NAME]
        if rows[-1][_T_NAME] == name:  # the usual case: its latest step (running -> completed)
            self._steps[saga_id] = (*rows[:-1], row)
            return
        for n, old in enumerate(rows):
            if old[_T_NAME] == name:
                self._steps[saga_id] = (*rows[:n], row, *rows[n + 1 :])
                return
        self._steps[saga_id] = (*rows, row)

    async def save_checkpoint(
        self,
        saga: SagaRecord | None = None,
        steps: Sequence[StepRecord] = (),
        outbox: Sequence[OutboxMessage] = (),
        *,
        complete_inbox: tuple[str, str] | None = None,
    ) -> None:
        """All or nothing: every row is copied before any is stored (see the contract)."""
        messages: Sequence[OutboxMessage] = ()
        if outbox:
            check_checkpoint(saga, steps, outbox)
            messages = [_clone(m) for m in outbox]
        now = datetime.now(UTC)  # utcnow() without the call: twice per saga
        if len(steps) == 1:  # a saga's two checkpoints: its first step's, its last step's
            step = steps[0]
            row = _STEP.stamped(step, None, now)
            saga_row = None if saga is None else self._saga_row(saga, now)
            self._put_step(step.saga_id, row)
        else:
            step_rows = [_STEP.stamped(step, None, now) for step in steps]
            saga_row = None if saga is None else self._saga_row(saga, now)
            for step, row in zip(steps, step_rows, strict=True):
                self._put_step(step.saga_id, row)
        if saga is not None and saga_row is not None:
            self._sagas[saga.saga_id] = saga_row
        if messages:
            self._append_outbox(messages, now)
        if complete_inbox is not None:
            trigger_id, key = complete_inbox  # (no star-call: once per saga)
            self._complete_inbox(trigger_id, key, now)

    def _append_outbox(self, messages: Sequence[OutboxMessage], now: datetime) -> None:
        for message in messages:
            self._outbox.append(replace(message, id=next(self._outbox_ids), created_at=now))

    async def get_steps(self, saga_id: str) -> list[StepRecord]:
        return [_STEP.unpack(row) for row in self._steps.get(saga_id, ())]

    async def reset_steps(self, saga_id: str) -> None:
        self._steps.pop(saga_id, None)

    # -- inbox -----------------------------------------------------------------------------
    async def claim_inbox(
        self, trigger_id: str, key: str, saga_id: str, owner: str, lease_until: datetime
    ) -> InboxClaim:
        return InboxClaim(*self._claim(trigger_id, key, saga_id, owner, lease_until, utcnow()))

    def _claim(
        self,
        trigger_id: str,
        key: str,
        saga_id: str,
        owner: str,
        lease_until: datetime,
        now: datetime,
    ) -> tuple[ClaimOutcome, str, str | None]:
        """The inbox claim (outcome, saga id, owner) of ``claim_inbox``, made ``now``."""
        rows = self._inbox.get(trigger_id)
        if rows is None:
            rows = self._inbox[trigger_id] = {}
        row = rows.get(key)
        if row is None:
            rows[key] = (saga_id, owner, lease_until, _PENDING, now, None)
            return _CLAIMED, saga_id, owner
        stored_id, stored_owner, stored_lease, status, created, _ = row
        if status == _COMPLETED:
            return _DUPLICATE, stored_id, stored_owner
        if stored_owner == owner or stored_lease is None or stored_lease < now:
            rows[key] = (stored_id, owner, lease_until, _PENDING, created, None)
            return _TAKEN_OVER, stored_id, owner
        return _BUSY, stored_id, stored_owner

    async def claim_event(self, trigger_id: str, key: str, record: SagaRecord) -> EventClaim:
        """The contract's claim and pending row, made at once (nothing else runs between
        them on the event loop), at one moment: admission's, once per event."""
        return self._claim_event(trigger_id, key, record, datetime.now(UTC))

    async def claim_events(
        self, trigger_id: str, claims: Sequence[tuple[str, SagaRecord]]
    ) -> list[EventClaim]:
        """:meth:`claim_event` for each, in one step at one moment (a broker poll's batch)."""
        now = utcnow()
        return [self._claim_event(trigger_id, key, record, now) for key, record in claims]

    def _claim_event(
        self, trigger_id: str, key: str, record: SagaRecord, now: datetime
    ) -> EventClaim:
        owner, lease = record.owner, record.lease_expires_at
        if owner is None or lease is None:
            raise ValueError(
                "claim_event: the record needs an owner and a lease_expires_at (the claim's)"
            )
        outcome, saga_id, claim_owner = self._claim(
            trigger_id, key, record.saga_id, owner, lease, now
        )
        if outcome is _DUPLICATE or outcome is _BUSY:
            return EventClaim(outcome, saga_id, claim_owner)
        existing = self._sagas.get(record.saga_id)
        if existing is not None:
            return EventClaim(outcome, saga_id, claim_owner, _SAGA.unpack(existing), False)
        record.created_at = record.created_at or now
        record.updated_at = now
        self._sagas[record.saga_id] = _SAGA.pack(record)
        # the caller's own object, as create_saga answers: the store keeps its private copy
        return EventClaim(outcome, saga_id, claim_owner, record, True)

    async def complete_inbox(self, trigger_id: str, key: str) -> None:
        self._complete_inbox(trigger_id, key, utcnow())

    def _complete_inbox(self, trigger_id: str, key: str, now: datetime) -> None:
        rows = self._inbox.get(trigger_id)
        row = None if rows is None else rows.get(key)
        if rows is not None and row is not None:
            saga_id, owner, lease_until, _, created, _ = row
            rows[key] = (saga_id, owner, lease_until, _COMPLETED, created, now)

    async def release_inbox(self, trigger_id: str, key: str) -> None:
        rows = self._inbox.get(trigger_id)
        if rows is not None:
            rows.pop(key, None)

    async def renew_leases(self, owner: str, lease_until: datetime) -> int:
        touched = 0
        for inbox in self._inbox.values():
            for k, (saga_id, row_owner, _, status, created, completed) in inbox.items():
                if row_owner == owner and status == _PENDING:
                    inbox[k] = (saga_id, owner, lease_until, _PENDING, created, completed)
                    touched += 1
        sagas = self._sagas
        for saga_id, record in sagas.items():
            if record[_S_OWNER] == owner and record[_S_STATUS] not in TERMINAL_SAGA_STATUSES:
                sagas[saga_id] = _SAGA.replace(record, lease_expires_at=lease_until)
                touched += 1
        return touched

    # -- outbox ----------------------------------------------------------------------------
    async def fetch_outbox(self, limit: int = 100) -> list[OutboxMessage]:
        return [_clone(m) for m in self._outbox if m.sent_at is None][:limit]

    async def list_saga_outbox(self, saga_id: str, limit: int = 100) -> list[OutboxMessage]:
        return [_clone(m) for m in self._outbox if m.saga_id == saga_id][:limit]

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

    # -- saga control ----------------------------------------------------------------------
    async def delete_steps(self, saga_id: str, names: Sequence[str]) -> None:
        rows = self._steps.get(saga_id)
        if rows is not None:
            dropped = set(names)
            self._steps[saga_id] = tuple(row for row in rows if row[_T_NAME] not in dropped)

    async def add_saga_history(self, entry: SagaHistoryRecord) -> int:
        entry_id = next(self._history_ids)
        stored = replace(_clone(entry), id=entry_id, at=entry.at or utcnow())
        self._history.setdefault(entry.saga_id, []).append(stored)
        return entry_id

    async def list_saga_history(self, saga_id: str, limit: int = 100) -> list[SagaHistoryRecord]:
        return [_clone(e) for e in self._history.get(saga_id, [])[:limit]]

    async def add_saga_request(self, request: SagaControlRequest) -> bool:
        if request.saga_id in self._requests:
            return False
        stored = replace(_clone(request), requested_at=request.requested_at or utcnow())
        self._requests[request.saga_id] = stored
        return True

    async def list_saga_requests(
        self, *, saga_id: str | None = None, limit: int = 100
    ) -> list[SagaControlRequest]:
        found = [r for r in self._requests.values() if saga_id is None or r.saga_id == saga_id]
        return [_clone(r) for r in found[:limit]]

    async def finish_saga_request(self, saga_id: str, action: SagaAction) -> bool:
        request = self._requests.get(saga_id)
        if request is None or request.action != action:
            return False
        del self._requests[saga_id]
        return True
