"""The inbox: claims of trigger keys and their leases (the purge of expired rows is in
:mod:`sagaz.storage.sqlite.retention`).

A part of :class:`~sagaz.storage.sqlite.SQLiteSagaStore`.
"""

from __future__ import annotations

import sqlite3
from datetime import datetime

from sagaz.clock import utcnow
from sagaz.records import (
    ClaimOutcome,
    InboxClaim,
)
from sagaz.storage import sqlite_schema as tables
from sagaz.storage.codec import to_text
from sagaz.storage.sqlite.connection import (
    SQLiteConnection,
    _change,
    _rows,
)

__all__ = ["SQLiteInbox"]

_INSERT_CLAIM = (
    "INSERT INTO inbox (trigger_id, key, saga_id, owner, lease_until, status, created_at) "
    "VALUES (?, ?, ?, ?, ?, 'pending', ?) ON CONFLICT (trigger_id, key) DO NOTHING"
)


class SQLiteInbox(SQLiteConnection):
    """The inbox: claims of trigger keys and their leases."""

    # -- inbox -----------------------------------------------------------------------------
    async def claim_inbox(
        self, trigger_id: str, key: str, saga_id: str, owner: str, lease_until: datetime
    ) -> InboxClaim:
        now, until = to_text(utcnow()), to_text(lease_until)

        def claim(conn: sqlite3.Connection) -> InboxClaim:
            # a new key (the common case) is one statement; a known one is read after it
            if _change(conn, _INSERT_CLAIM, (trigger_id, key, saga_id, owner, until, now)):
                return InboxClaim(ClaimOutcome.CLAIMED, saga_id, owner)
            rows = _rows(
                conn,
                "SELECT saga_id, owner, lease_until, status FROM inbox "
                "WHERE trigger_id = ? AND key = ?",
                (trigger_id, key),
            )
            row_saga, row_owner, row_lease, row_status = rows[0]
            if row_status == "completed":
                return InboxClaim(ClaimOutcome.DUPLICATE, row_saga, row_owner)
            if row_owner == owner or row_lease is None or row_lease < now:
                _change(
                    conn,
                    "UPDATE inbox SET owner = ?, lease_until = ? WHERE trigger_id = ? AND key = ?",
                    (owner, until, trigger_id, key),
                )
                return InboxClaim(ClaimOutcome.TAKEN_OVER, row_saga, owner)
            return InboxClaim(ClaimOutcome.BUSY, row_saga, row_owner)

        return await self._write(claim)

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
            sagas = _change(
                conn,
                f"UPDATE saga_executions SET lease_expires_at = ? "
                f"WHERE owner = ? AND status IN {tables.ACTIVE_SQL}",
                (until, owner),
            )
            return inbox + sagas

        return await self._write(renew)
