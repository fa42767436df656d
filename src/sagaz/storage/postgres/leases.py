"""Named leases and shared rate-limit tokens.

A part of :class:`~sagaz.storage.postgres.PostgresSagaStore`.
"""

from __future__ import annotations

from sagaz.storage.postgres.connection import PostgresConnection
from sagaz.storage.rate_limits import MIN_RATE_WAIT, rate_interval

__all__ = ["PostgresLeases"]


class PostgresLeases(PostgresConnection):
    """Named leases and shared rate-limit tokens."""

    # -- leases ----------------------------------------------------------------------------
    # The server's clock decides expiry: holders on other machines need not agree on time.
    async def acquire_lease(self, name: str, holder: str, ttl: float) -> bool:
        # the row lock of ON CONFLICT makes "free, expired or ours" and the take-over atomic
        acquired = await self._db().fetchval(
            f"INSERT INTO {self._s}.leases AS l (name, holder, expires_at) "
            "VALUES ($1, $2, clock_timestamp() + make_interval(secs => $3::float8)) "
            "ON CONFLICT (name) DO UPDATE SET holder = EXCLUDED.holder, "
            "expires_at = EXCLUDED.expires_at "
            "WHERE l.holder = EXCLUDED.holder OR l.expires_at <= clock_timestamp() "
            "RETURNING TRUE",
            name,
            holder,
            float(ttl),
        )
        return bool(acquired)

    async def renew_lease(self, name: str, holder: str, ttl: float) -> bool:
        renewed = await self._db().fetchval(
            f"UPDATE {self._s}.leases "
            "SET expires_at = clock_timestamp() + make_interval(secs => $3::float8) "
            "WHERE name = $1 AND holder = $2 AND expires_at > clock_timestamp() RETURNING TRUE",
            name,
            holder,
            float(ttl),
        )
        return bool(renewed)

    async def release_lease(self, name: str, holder: str) -> bool:
        released = await self._db().fetchval(
            f"DELETE FROM {self._s}.leases "
            "WHERE name = $1 AND holder = $2 AND expires_at > clock_timestamp() RETURNING TRUE",
            name,
            holder,
        )
        return bool(released)

    # -- shared rate limits ----------------------------------------------------------------
    # GCRA: one "theoretical arrival time" per bucket; a token is free while it is at most
    # (burst - 1) intervals ahead of now. One statement: the row lock of ON CONFLICT makes
    # the check and the take atomic. clock_timestamp() is read once the row is locked: now(),
    # the statement's start, would be older for a taker that waited for the lock, and would
    # set the bucket back.
    async def take_rate_token(self, name: str, rate: float, burst: int) -> float:
        interval, tolerance = rate_interval(rate, burst)
        row = await self._db().fetchrow(
            f"WITH taken AS (INSERT INTO {self._s}.rate_limits AS r (name, tat) "
            "VALUES ($1, clock_timestamp() + make_interval(secs => $2::float8)) "
            "ON CONFLICT (name) DO UPDATE "
            "SET tat = GREATEST(r.tat, clock_timestamp()) + make_interval(secs => $2::float8) "
            "WHERE r.tat <= clock_timestamp() + make_interval(secs => $3::float8) "
            "RETURNING 1) "
            "SELECT EXISTS (SELECT 1 FROM taken) AS taken, "
            "(SELECT EXTRACT(EPOCH FROM tat - clock_timestamp())::float8 "
            f"FROM {self._s}.rate_limits WHERE name = $1) AS ahead",
            name,
            interval,
            tolerance,
        )
        assert row is not None
        if row["taken"]:
            return 0.0
        ahead = row["ahead"] if row["ahead"] is not None else interval
        return max(ahead - tolerance, MIN_RATE_WAIT)
