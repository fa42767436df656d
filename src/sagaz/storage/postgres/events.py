"""Admission's claim of an event: its inbox row and its saga's pending row, one operation.

A part of :class:`~sagaz.storage.postgres.PostgresSagaStore`; in a group that runs as one
statement, :mod:`sagaz.storage.postgres.group_statement` writes both in it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import cached_property
from typing import Any

from sagaz._aio import gather_all
from sagaz.clock import utcnow
from sagaz.records import ClaimOutcome, EventClaim, InboxClaim, SagaRecord
from sagaz.storage import postgres_rows as mapping
from sagaz.storage.codec import to_utc
from sagaz.storage.postgres.inbox import PostgresInbox
from sagaz.storage.postgres.sagas import PostgresSagas, _created
from sagaz.storage.unavailable import translates_unavailable

__all__ = ["PostgresEventClaims"]

#: the claims that make the key ours: the saga row is created (or read) with them
OURS = (ClaimOutcome.CLAIMED, ClaimOutcome.TAKEN_OVER)


@dataclass(slots=True, eq=False)
class EventItem:
    """One :meth:`PostgresEventClaims.claim_event` as statement parameters."""

    claim_args: tuple[Any, ...]  # trigger id, key, saga id, owner, lease, now
    saga_params: tuple[Any, ...]
    record: SagaRecord
    now: datetime
    #: set once a one-statement group has committed the claim but not created the saga (it
    #: exists): the operation, run again, only creates or reads the saga
    claim: InboxClaim | None = None

    def answer(self, claim: InboxClaim, row: Any) -> EventClaim:
        """The answer for ``claim``, the saga created (``row`` None) or found (``row``)."""
        if row is None:
            return EventClaim(
                claim.outcome, claim.saga_id, claim.owner, _created(self.record, self.now), True
            )
        return EventClaim(claim.outcome, claim.saga_id, claim.owner, mapping.saga_from_row(row))


class PostgresEventClaims(PostgresSagas, PostgresInbox):
    """:meth:`claim_event`: the inbox claim and the pending saga row in one transaction."""

    # errors: the committer's (translated there, or the operation's own: not unavailable);
    # the contract's default (no owner or lease) calls wrapped operations
    @translates_unavailable
    async def claim_event(self, trigger_id: str, key: str, record: SagaRecord) -> EventClaim:
        owner, lease = record.owner, record.lease_expires_at
        if owner is None or lease is None:
            return await super().claim_event(trigger_id, key, record)  # says what is missing
        now = utcnow()
        item = EventItem(
            (trigger_id, key, record.saga_id, owner, to_utc(lease), now),
            mapping.saga_params(record, record.created_at or now, now),
            record,
            now,
        )
        rows = (("inbox", trigger_id, key), ("saga", record.saga_id))
        claim: EventClaim = await self._committer().run(
            self._claim_event_op, item, batch=(self._claim_events_runner, item, rows), first=True
        )
        return claim

    @translates_unavailable
    async def claim_events(
        self, trigger_id: str, claims: Sequence[tuple[str, SagaRecord]]
    ) -> list[EventClaim]:
        """:meth:`claim_event` for each, queued at once at one moment: the group committer
        makes them in its next groups (as many concurrent ``claim_event`` calls), without a
        coroutine or a task per claim."""
        now = utcnow()
        items: list[EventItem] = []
        for key, record in claims:
            owner, lease = record.owner, record.lease_expires_at
            if owner is None or lease is None:
                return await super().claim_events(trigger_id, claims)  # says what is missing
            params = mapping.saga_params(record, record.created_at or now, now)
            claim_args = (trigger_id, key, record.saga_id, owner, to_utc(lease), now)
            items.append(EventItem(claim_args, params, record, now))
        run, op, runner = self._committer().run, self._claim_event_op, self._claim_events_runner
        waiting: list[asyncio.Future[EventClaim]] = []
        for item in items:  # queued only once every record is known to be complete
            rows = (("inbox", trigger_id, item.claim_args[1]), ("saga", item.record.saga_id))
            waiting.append(run(op, item, batch=(runner, item, rows), first=True))
        return await gather_all(waiting)

    # bound once: a new bound method per claim would be one more object in flight for the
    # cyclic collector (equal to ``self._claim_events``: the group statement compares them)
    @cached_property
    def _claim_event_op(self) -> Callable[[Any, EventItem], Awaitable[EventClaim]]:
        return self._claim_event_one

    @cached_property
    def _claim_events_runner(self) -> Callable[[Any, list[EventItem]], Awaitable[list[EventClaim]]]:
        return self._claim_events

    async def _claim_event_one(self, conn: Any, item: EventItem) -> EventClaim:
        claim = item.claim or await self._claim_one(conn, item.claim_args)
        if claim.outcome not in OURS:
            return EventClaim(claim.outcome, claim.saga_id, claim.owner)
        return item.answer(claim, await self._create_one(conn, item.saga_params))

    async def _claim_events(self, conn: Any, items: list[EventItem]) -> list[EventClaim]:
        """:meth:`_claim_event_one` for several events (distinct keys and sagas): their
        claims in one batch, then their sagas in another."""
        claims: list[InboxClaim | None] = [item.claim for item in items]
        fresh = [n for n, claim in enumerate(claims) if claim is None]
        if fresh:
            found = await self._claim_inboxes(conn, [items[n].claim_args for n in fresh])
            for n, fresh_claim in zip(fresh, found, strict=True):
                claims[n] = fresh_claim
        ours = [n for n, c in enumerate(claims) if c is not None and c.outcome in OURS]
        rows: dict[int, Any] = {}
        if ours:
            created = await self._create_sagas(conn, [items[n].saga_params for n in ours])
            rows = dict(zip(ours, created, strict=True))
        answers: list[EventClaim] = []
        for n, (item, found_claim) in enumerate(zip(items, claims, strict=True)):
            assert found_claim is not None
            if n in rows:
                answers.append(item.answer(found_claim, rows[n]))
            else:
                answers.append(
                    EventClaim(found_claim.outcome, found_claim.saga_id, found_claim.owner)
                )
        return answers
