"""Named leases and shared rate-limit tokens.

A part of :class:`~sagaz.storage.sqlite.SQLiteSagaStore`.
"""

from __future__ import annotations

import sqlite3
import time
from datetime import timedelta

from sagaz.clock import utcnow
from sagaz.storage.codec import to_text
from sagaz.storage.rate_limits import rate_interval
from sagaz.storage.rate_limits import take as take_token
from sagaz.storage.sqlite.connection import SQLiteConnection

__all__ = ["SQLiteLeases"]


class SQLiteLeases(SQLiteConnection):
    """Named leases and shared rate-limit tokens."""

    # -- leases ----------------------------------------------------------------------------
    async def acquire_lease(self, name: str, holder: str, ttl: float) -> bool:
        now = utcnow()
        taken = await self._write_one(
            "INSERT INTO leases (name, holder, expires_at) VALUES (?, ?, ?) "
            "ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, "
            "expires_at = excluded.expires_at "
            "WHERE leases.holder = excluded.holder OR leases.expires_at <= ?",
            (name, holder, to_text(now + timedelta(seconds=ttl)), to_text(now)),
        )
        return taken == 1

    async def renew_lease(self, name: str, holder: str, ttl: float) -> bool:
        now = utcnow()
        renewed = await self._write_one(
            "UPDATE leases SET expires_at = ? WHERE name = ? AND holder = ? AND expires_at > ?",
            (to_text(now + timedelta(seconds=ttl)), name, holder, to_text(now)),
        )
        return renewed == 1

    async def release_lease(self, name: str, holder: str) -> bool:
        released = await self._write_one(
            "DELETE FROM leases WHERE name = ? AND holder = ? AND expires_at > ?",
            (name, holder, to_text(utcnow())),
        )
        return released == 1

    # -- shared rate limits ----------------------------------------------------------------
    async def take_rate_token(self, name: str, rate: float, burst: int) -> float:
        rate_interval(rate, burst)  # a bad bucket fails here, not in a group of writes

        def take_one(conn: sqlite3.Connection) -> float:
            row = conn.execute("SELECT tat FROM rate_limits WHERE name = ?", (name,)).fetchone()
            wait, tat = take_token(row[0] if row else None, time.time(), rate, burst)
            if tat is not None:
                conn.execute(
                    "INSERT INTO rate_limits (name, tat) VALUES (?, ?) "
                    "ON CONFLICT (name) DO UPDATE SET tat = excluded.tat",
                    (name, tat),
                )
            return wait

        return await self._write(take_one)
