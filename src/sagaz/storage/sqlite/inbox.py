"""The inbox: claims of trigger keys and their leases (the purge of expired rows is in
:mod:`sagaz.storage.sqlite.retention`).

A part of :class:`~sagaz.storage.sqlite.SQLiteSagaStore`.
"""

from __future__ import annotations

import sqlite3
from datetime import datetime
from typing import Any

from sagaz.clock import utcnow
from sagaz.records import (
    ClaimOutcome,
    EventClaim,
    InboxClaim,
    SagaRecord,
)
from sagaz.storage import sqlite_rows as mapping
from sagaz.storage import sqlite_schema as tables
from sagaz.storage.codec import to_text
from sagaz.storage.sqlite.connection import (
    SQLiteConnection,
    _change,
    _rows,
)
from sagaz.storage.sqlite.sagas import _as_created, _create

__all__ = ["SQLiteInbox"]

_INSERT_CLAIM = (
    "INSERT INTO inbox (trigger_id, key, saga_id, owner, lease_until, status, created_at) "
    "VALUES (?, ?, ?, ?, ?, 'pending', ?) ON CONFLICT (trigger_id, key) DO NOTHING"
)

_RENEW_SAGAS = (  # an owner's active sagas: saga_executions_active (seq, owner) walked whole,
    # the owner compared in the index (schema 10: no index by owner for the checkpoints to
    # rewrite; on 100,000 active sagas of 10 owners, 23 ms against 16 by owner)
    f"UPDATE saga_executions SET lease_expires_at = ? WHERE owner = ? AND {tables.ACTIVE_WHERE}"
)


def _claim(cursor: sqlite3.Cursor, args: tuple[str, str, str, str, str, str]) -> InboxClaim:
    """:meth:`SQLiteInbox.claim_inbox` in the writer's transaction; ``args``: trigger id, key,
    saga id, owner, lease and now (as text)."""
    # a new key (the common case) is one statement; a known one is read after it
    if _change(cursor, _INSERT_CLAIM, args):
        return InboxClaim(ClaimOutcome.CLAIMED, args[2], args[3])
    return _claim_known(cursor, args)


def _claim_known(cursor: sqlite3.Cursor, args: tuple[str, str, str, str, str, str]) -> InboxClaim:
    """:func:`_claim` of a key the inbox has already."""
    trigger_id, key, _, owner, until, now = args
    rows = _rows(
        cursor,
        "SELECT saga_id, owner, lease_until, status FROM inbox WHERE trigger_id = ? AND key = ?",
        (trigger_id, key),
    )
    row_saga, row_owner, row_lease, row_status = rows[0]
    if row_status == "completed":
        return InboxClaim(ClaimOutcome.DUPLICATE, row_saga, row_owner)
    if row_owner == owner or row_lease is None or row_lease < now:
        _change(
            cursor,
            "UPDATE inbox SET owner = ?, lease_until = ? WHERE trigger_id = ? AND key = ?",
            (owner, until, trigger_id, key),
        )
        return InboxClaim(ClaimOutcome.TAKEN_OVER, row_saga, owner)
    return InboxClaim(ClaimOutcome.BUSY, row_saga, row_owner)


def _claim_and_create(
    cursor: sqlite3.Cursor,
    args: tuple[tuple[str, str, str, str, str, str], tuple[Any, ...], SagaRecord, datetime],
) -> EventClaim:
    """:meth:`SQLiteInbox.claim_event` in the writer's transaction; ``args``: those of
    :func:`_claim`, the saga row's values, the record and the moment (created ``now``)."""
    claim_args = args[0]
    if _change(cursor, _INSERT_CLAIM, claim_args):  # a new key (the common case)
        return _create_claimed(cursor, args, ClaimOutcome.CLAIMED, claim_args[2])
    return _claim_known_and_create(cursor, args)


def _claim_known_and_create(
    cursor: sqlite3.Cursor,
    args: tuple[tuple[str, str, str, str, str, str], tuple[Any, ...], SagaRecord, datetime],
) -> EventClaim:
    """:func:`_claim_and_create` of a key the inbox has already (an ``IndexError`` if it has
    none)."""
    claim = _claim_known(cursor, args[0])
    if claim.outcome is not ClaimOutcome.TAKEN_OVER:
        return EventClaim(claim.outcome, claim.saga_id, claim.owner)
    return _create_claimed(cursor, args, claim.outcome, claim.saga_id)


def _create_claimed(
    cursor: sqlite3.Cursor,
    args: tuple[tuple[str, str, str, str, str, str], tuple[Any, ...], SagaRecord, datetime],
    outcome: ClaimOutcome,
    saga_id: str,
) -> EventClaim:
    """The claim of ``args`` made (``outcome``), with its saga's row created or found."""
    claim_args, params, record, now = args
    owner = claim_args[3]
    rows = _create(cursor, params)
    if rows:
        return EventClaim(outcome, saga_id, owner, mapping.saga_from_row(rows[0]))
    return EventClaim(outcome, saga_id, owner, _as_created(record, now), True)


class SQLiteInbox(SQLiteConnection):
    """The inbox: claims of trigger keys and their leases."""

    # -- inbox -----------------------------------------------------------------------------
    async def claim_inbox(
        self, trigger_id: str, key: str, saga_id: str, owner: str, lease_until: datetime
    ) -> InboxClaim:
        now, until = to_text(utcnow()), to_text(lease_until)
        args = (trigger_id, key, saga_id, owner, until, now)
        return await self._submit(_claim, args)

    async def claim_event(self, trigger_id: str, key: str, record: SagaRecord) -> EventClaim:
        owner, lease = record.owner, record.lease_expires_at
        if owner is None or lease is None:
            return await super().claim_event(trigger_id, key, record)  # says what is missing
        groups = self._committer()
        now, text_now = groups.moment()
        # the lease's text: the saga's later writes store it again (sqlite_rows.lasting_text)
        args = (trigger_id, key, record.saga_id, owner, mapping.lasting_text(lease), text_now)
        params = mapping.saga_params(record, text_now)
        # first: its caller fires its next event and starts its saga (sqlite_groups)
        return await groups.submit(_claim_and_create, (args, params, record, now), first=True)

    async def complete_inbox(self, trigger_id: str, key: str) -> None:
        await self._write_one(
            "UPDATE inbox SET status = 'completed', completed_at = ? "
            "WHERE trigger_id = ? AND key = ?",
            (to_text(utcnow()), trigger_id, key),
        )

    async def release_inbox(self, trigger_id: str, key: str) -> None:
        await self._write_one(
            "DELETE FROM inbox WHERE trigger_id = ? AND key = ?", (trigger_id, key)
        )

    async def renew_leases(self, owner: str, lease_until: datetime) -> int:
        until = to_text(lease_until)

        def renew(conn: sqlite3.Connection) -> int:
            inbox = _change(
                conn,
                "UPDATE inbox SET lease_until = ? WHERE owner = ? AND status = 'pending'",
                (until, owner),
            )
            sagas = _change(conn, _RENEW_SAGAS, (until, owner))
            return inbox + sagas

        return await self._write(renew)
