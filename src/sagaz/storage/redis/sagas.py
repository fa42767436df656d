"""Sagas, their steps and combined checkpoints.

A part of :class:`~sagaz.storage.redis.RedisSagaStore`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from sagaz.clock import utcnow
from sagaz.exceptions import LeaseLostError, StoreError
from sagaz.records import (
    ClaimOutcome,
    EventClaim,
    OutboxMessage,
    SagaRecord,
    StepRecord,
)
from sagaz.storage import redis_schema as tables
from sagaz.storage.codec import dumps, from_micros, loads
from sagaz.storage.redis.connection import RedisConnection
from sagaz.storage.redis.encoding import step_document
from sagaz.storage.redis_schema import micros
from sagaz.types import TERMINAL_SAGA_STATUSES, SagaStatus, StepStatus

__all__ = ["RedisSagas"]

_CHUNK = 200  # ids read per round trip when scanning an index
# the optional fields of SAVE_SAGA, in the order of its ``present`` flags, and where their
# values are among its arguments
_OPTIONAL_FIELDS = (("error", 12), ("trigger_id", 13), ("event", 14), ("owner", 8), ("lease", 15))


def _outbox_documents(outbox: Sequence[OutboxMessage]) -> list[str]:
    """What the store's scripts write as outbox rows: each message's saga id (the index it
    joins) and its JSON document."""
    return [
        item
        for m in outbox
        for item in (
            m.saga_id,
            dumps(
                {"saga_id": m.saga_id, "topic": m.topic, "payload": m.payload, "headers": m.headers}
            ),
        )
    ]


class RedisSagas(RedisConnection):
    """Sagas, their steps and combined checkpoints."""

    # -- sagas -----------------------------------------------------------------------------
    def _saga_args(
        self,
        mode: str,
        record: SagaRecord,
        now: datetime,
        outbox: Sequence[OutboxMessage] = (),
        updated: str | None = None,
        *,
        once: bool = False,
    ) -> list[str]:
        """The ``SAVE_SAGA`` arguments (:meth:`_saga_fields` reads back the fields written);
        ``updated`` is ``micros(now)`` when the caller has it already.

        The texts that do not change between a saga's writes (its context while unchanged,
        its event, ``created_at``, its lease) come from :attr:`_texts`; the saga's entry
        there goes at its terminal write. ``once``: the context and the event are written
        once as they are (a pending row's: the saga's start writes others), not kept."""
        saga_id, status = record.saga_id, SagaStatus(record.status)
        terminal = status in TERMINAL_SAGA_STATUSES
        texts = self._texts
        memo = texts.memo(saga_id)
        error, trigger_id, owner = record.error, record.trigger_id, record.owner
        event = record.event
        if event is not None:
            event = dumps(event) if once else texts.event(memo, event)
        lease = record.lease_expires_at
        lease_text = None if lease is None else texts.lease(memo, lease)
        if updated is None:
            updated = micros(now)
        created = updated if record.created_at is None else texts.created(memo, record.created_at)
        context = dumps(record.context) if once else texts.context(memo, record.context)
        if terminal:
            texts.forget(saga_id)
        present = "".join(
            [
                "0" if error is None else "1",
                "0" if trigger_id is None else "1",
                "0" if event is None else "1",
                "0" if owner is None else "1",
                "0" if lease_text is None else "1",
            ]
        )
        return [
            self.prefix,
            mode,
            saga_id,
            record.saga_name,
            status.value,
            "1" if terminal else "0",
            created,
            updated,
            owner or "",
            present,
            context,
            str(record.attempt),
            error or "",
            trigger_id or "",
            event or "",
            lease_text or "",
            *_outbox_documents(outbox),
        ]

    @staticmethod
    def _saga_fields(args: Sequence[str]) -> dict[str, str]:
        """The fields ``SAVE_SAGA`` with ``args`` (:meth:`_saga_args`) writes to a new saga's
        hash."""
        fields = {
            "saga_id": args[2],
            "saga_name": args[3],
            "status": args[4],
            "context": args[10],
            "attempt": args[11],
            "created_at": args[6],
            "updated_at": args[7],
        }
        present = args[9]
        for index, (name, position) in enumerate(_OPTIONAL_FIELDS):
            if present[index] == "1":
                fields[name] = args[position]
        return fields

    async def create_saga(self, record: SagaRecord) -> tuple[SagaRecord, bool]:
        now = utcnow()
        key = self._key("saga", record.saga_id)
        args = self._saga_args("create", record, now)
        for _ in range(5):
            if await self._script("SAVE_SAGA", [key], args):
                # the script wrote exactly these fields (atomically): no need to read them back
                return tables.saga_from_hash(self._saga_fields(args)), True
            stored = await self.get_saga(record.saga_id)
            if stored is not None:
                return stored, False
        raise StoreError(f"saga {record.saga_id!r} kept appearing and disappearing; retry")

    async def claim_event(self, trigger_id: str, key: str, record: SagaRecord) -> EventClaim:
        owner, lease = record.owner, record.lease_expires_at
        if owner is None or lease is None:
            return await super().claim_event(trigger_id, key, record)  # says what is missing
        now = utcnow()
        updated = micros(now)
        claim_args = [self.prefix, record.saga_id, owner, micros(lease), updated]
        saga_args = self._saga_args("create", record, now, updated=updated, once=True)
        outcome, saga_id, row_owner, created, fields = await self._script(
            "CLAIM_EVENT",
            [self._inbox_key(trigger_id, key), self._key("saga", record.saga_id)],
            claim_args + saga_args,
        )
        claim = ClaimOutcome(outcome)
        if claim not in (ClaimOutcome.CLAIMED, ClaimOutcome.TAKEN_OVER):
            return EventClaim(claim, saga_id, row_owner or None)
        if int(created):  # stored as given: nothing to read back
            saga = dataclasses.replace(
                record,
                status=SagaStatus(record.status),
                created_at=record.created_at or now,
                updated_at=now,
            )
            return EventClaim(claim, saga_id, row_owner or None, saga, True)
        stored = tables.saga_from_hash(dict(zip(fields[::2], fields[1::2], strict=True)))
        return EventClaim(claim, saga_id, row_owner or None, stored)

    async def save_saga(self, record: SagaRecord, outbox: Sequence[OutboxMessage] = ()) -> None:
        if not await self._script(
            "SAVE_SAGA",
            [self._key("saga", record.saga_id)],
            self._saga_args("save", record, utcnow(), outbox),
        ):
            raise LeaseLostError(record.saga_id, record.owner)

    async def get_saga(self, saga_id: str) -> SagaRecord | None:
        fields = await self._db().hgetall(self._key("saga", saga_id))
        return tables.saga_from_hash(fields) if fields else None

    async def _scan(
        self, index: str, keep: Callable[[SagaRecord], bool], limit: int
    ) -> list[SagaRecord]:
        """Sagas listed in the sorted set ``index``, in its order, that pass ``keep``."""
        db, start = self._db(), 0
        found: list[SagaRecord] = []
        while len(found) < limit:
            ids = await db.zrange(index, start, start + _CHUNK - 1)
            if not ids:
                break
            start += len(ids)
            found += await self._sagas_kept(ids, keep)
        return found[:limit]

    async def _scan_newest(
        self, index: str, keep: Callable[[SagaRecord], bool], limit: int, below: str
    ) -> list[SagaRecord]:
        """Sagas listed in the sorted set ``index`` with a score under ``below``, highest
        score (newest) first, that pass ``keep``."""
        db = self._db()
        found: list[SagaRecord] = []
        while len(found) < limit:
            pairs = await db.zrevrangebyscore(
                index, below, "-inf", start=0, num=_CHUNK, withscores=True
            )
            if not pairs:
                break
            below = f"({int(pairs[-1][1])}"
            found += await self._sagas_kept([saga_id for saga_id, _ in pairs], keep)
        return found[:limit]

    async def _sagas_kept(
        self, ids: Sequence[str], keep: Callable[[SagaRecord], bool]
    ) -> list[SagaRecord]:
        """The sagas ``ids`` (read in one round trip) that still exist and pass ``keep``."""
        async with self._db().pipeline(transaction=False) as pipe:
            for saga_id in ids:
                pipe.hgetall(self._key("saga", saga_id))
            rows = await pipe.execute()
        return [
            record for fields in rows if fields and keep(record := tables.saga_from_hash(fields))
        ]

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
        # newest first is descending ``seq``: the status and name filters walk their sorted
        # sets backwards; the others filter that walk
        below = "+inf"
        if after is not None:
            seq = await self._db().hget(self._key("saga", after), "seq")
            if seq is None:
                return []
            below = f"({seq}"
        if status is not None:
            index = self._key("sagas-status", SagaStatus(status).value)
        elif saga_name is not None:
            index = self._key("sagas-name", saga_name)
        else:
            index = self._key("sagas")

        def keep(r: SagaRecord) -> bool:
            created = r.created_at
            assert created is not None  # every stored saga has one
            return (
                (status is None or r.status == status)
                and (saga_name is None or r.saga_name == saga_name)
                and (trigger_id is None or r.trigger_id == trigger_id)
                and (created_after is None or created >= created_after)
                and (created_before is None or created < created_before)
            )

        return await self._scan_newest(index, keep, limit, below)

    async def delete_saga(self, saga_id: str) -> None:
        self._texts.forget(saga_id)
        await self._script(
            "DELETE_SAGA",
            [self._key("saga", saga_id), self._key("steps", saga_id)],
            [self.prefix, saga_id],
        )

    async def list_recoverable(self, now: datetime, limit: int = 100) -> list[SagaRecord]:
        return await self._scan(
            self._key("sagas-active"),
            lambda r: (
                r.status not in TERMINAL_SAGA_STATUSES
                and (r.lease_expires_at is None or r.lease_expires_at < now)
            ),
            limit,
        )

    async def claim_saga(self, saga_id: str, owner: str, lease_until: datetime) -> bool:
        claimed = await self._script(
            "CLAIM_SAGA",
            [self._key("saga", saga_id)],
            [self.prefix, saga_id, owner, micros(lease_until), micros(utcnow())],
        )
        return bool(claimed)

    async def take_over_saga(self, saga_id: str, owner: str, lease_until: datetime) -> int | None:
        claimed = await self._script(
            "TAKE_OVER_SAGA",
            [self._key("saga", saga_id)],
            [self.prefix, saga_id, owner, micros(lease_until), micros(utcnow())],
        )
        return int(claimed) - 1 if claimed else None  # 0: not claimed, else the count + 1

    async def release_saga(
        self, saga_id: str, owner: str, retry_at: datetime | None = None
    ) -> bool:
        released = await self._script(
            "RELEASE_SAGA",
            [self._key("saga", saga_id)],
            [self.prefix, saga_id, owner, "" if retry_at is None else micros(retry_at)],
        )
        return bool(released)

    # -- steps -----------------------------------------------------------------------------
    async def save_step(self, step: StepRecord, outbox: Sequence[OutboxMessage] = ()) -> None:
        now = micros(utcnow())
        await self._script(
            "SAVE_STEP",
            [self._key("steps", step.saga_id)],
            [
                self.prefix,
                step.name,
                step_document(step, now),
                now,
                *_outbox_documents(outbox),
            ],
        )

    async def save_checkpoint(
        self,
        saga: SagaRecord | None = None,
        steps: Sequence[StepRecord] = (),
        outbox: Sequence[OutboxMessage] = (),
        *,
        complete_inbox: tuple[str, str] | None = None,
    ) -> None:
        """One Lua script (``SAVE_CHECKPOINT``): the writes of ``save_step``, ``save_saga``
        and ``complete_inbox`` in turn, atomically (see the contract)."""
        saga_ids = {step.saga_id for step in steps} | ({saga.saga_id} if saga else set())
        if len(saga_ids) != 1:  # nothing, or several sagas: the calls one by one
            await super().save_checkpoint(saga, steps, outbox, complete_inbox=complete_inbox)
            return
        [saga_id] = saga_ids
        moment = utcnow()
        now = micros(moment)
        args: list[Any] = [len(steps)]
        for index, step in enumerate(steps):
            messages = outbox if saga is None and index == len(steps) - 1 else ()
            step_args = [self.prefix, step.name, step_document(step, now), now]
            step_args += _outbox_documents(messages)
            args += [len(step_args), *step_args]
        saga_args = [] if saga is None else self._saga_args("save", saga, moment, outbox, now)
        args += [len(saga_args), *saga_args]
        inbox_args = [] if complete_inbox is None else [self.prefix, now]
        args += [len(inbox_args), *inbox_args]
        steps_key = self._key("steps", saga_id)
        inbox_key = steps_key if complete_inbox is None else self._inbox_key(*complete_inbox)
        if not await self._script(
            "SAVE_CHECKPOINT", [steps_key, self._key("saga", saga_id), inbox_key], args
        ):
            raise LeaseLostError(saga_id, None if saga is None else saga.owner)

    async def get_steps(self, saga_id: str) -> list[StepRecord]:
        steps = []
        for document in await self._db().hvals(self._key("steps", saga_id)):
            data = loads(document)
            data["status"] = StepStatus(data["status"])
            data["updated_at"] = from_micros(data["updated_at"])
            steps.append(StepRecord(**data))
        return steps

    async def reset_steps(self, saga_id: str) -> None:
        await self._db().delete(self._key("steps", saga_id))
