"""What the store forgets with age: expired rows (``purge_expired``), finished sagas
(``purge_sagas``) and old dead letters (``purge_dead_letters``), see :class:`~sagaz.abc.SagaStore`.

A part of :class:`~sagaz.storage.postgres.PostgresSagaStore`.
"""

from __future__ import annotations

from datetime import datetime
from functools import cached_property

from sagaz.clock import utcnow
from sagaz.storage.codec import to_utc
from sagaz.storage.postgres.connection import PostgresConnection

__all__ = ["PostgresRetention"]

_PURGE_BATCH = 1000
"""Rows of each kind ``purge_expired`` deletes per statement (one short transaction)."""


_DOOMED = "saga_id = ANY(ARRAY(SELECT saga_id FROM doomed))"
"""The rows of the sagas ``purge_sagas`` deletes (its CTE ``doomed``)."""


class PostgresRetention(PostgresConnection):
    """Expired rows, finished sagas and old dead letters, deleted in short batches."""

    @cached_property
    def _purge_expired_sql(self) -> str:
        """:meth:`purge_expired`'s statement (``$1`` the moment, ``$2`` the batch)."""
        # Each statement deletes at most _PURGE_BATCH rows of each kind (one short
        # transaction); the outer WHEREs check again what a concurrent writer may have changed.
        s = self._s
        return (
            f"WITH i AS (DELETE FROM {s}.inbox WHERE (trigger_id, key) IN "
            f"(SELECT trigger_id, key FROM {s}.inbox "
            "WHERE status = 'completed' AND completed_at < $1 LIMIT $2) "
            "AND status = 'completed' AND completed_at < $1 RETURNING 1), "
            # abandoned: pending, its lease long expired (its worker died), its event never back
            f"a AS (DELETE FROM {s}.inbox WHERE (trigger_id, key) IN "
            f"(SELECT trigger_id, key FROM {s}.inbox "
            "WHERE status = 'pending' AND lease_until < $1 LIMIT $2) "
            "AND status = 'pending' AND lease_until < $1 RETURNING 1), "
            # finished sagas that still keep their event (event_finished_at: schema 11), the
            # oldest first along saga_executions_stored_events and each row then by its key,
            # whatever the estimates (a kept plan made while the table was never analyzed
            # takes a third of the rows for the range, and scanned the table twice)
            f"s AS (UPDATE {s}.saga_executions SET event = NULL, event_finished_at = NULL "
            "WHERE saga_id = ANY(ARRAY("
            f"SELECT saga_id FROM {s}.saga_executions WHERE event_finished_at < $1 "
            "ORDER BY event_finished_at LIMIT $2)) AND event_finished_at < $1 RETURNING 1), "
            f"e AS (DELETE FROM {s}.trigger_executions WHERE id IN "
            f"(SELECT id FROM {s}.trigger_executions WHERE completed_at < $1 LIMIT $2) "
            "RETURNING 1), "
            # every trigger keeps its newest tick: last_cron_tick answers the same afterwards
            f"c AS (DELETE FROM {s}.cron_claims WHERE (trigger_id, tick) IN "
            f"(SELECT c.trigger_id, c.tick FROM {s}.cron_claims AS c WHERE c.tick < $1 "
            f"AND c.tick < (SELECT max(n.tick) FROM {s}.cron_claims AS n "
            "WHERE n.trigger_id = c.trigger_id) LIMIT $2) RETURNING 1), "
            # an expired lease is free and a bucket whose arrival time passed is full: a
            # missing row says the same, so each distinct key leaves no row behind
            f"l AS (DELETE FROM {s}.leases WHERE name IN (SELECT name FROM {s}.leases "
            "WHERE expires_at <= clock_timestamp() LIMIT $2) "
            "AND expires_at <= clock_timestamp() RETURNING 1), "
            f"r AS (DELETE FROM {s}.rate_limits WHERE name IN (SELECT name FROM {s}.rate_limits "
            "WHERE tat < clock_timestamp() LIMIT $2) AND tat < clock_timestamp() RETURNING 1) "
            "SELECT (SELECT count(*) FROM i), (SELECT count(*) FROM a), (SELECT count(*) FROM s), "
            "(SELECT count(*) FROM e), (SELECT count(*) FROM c), "
            "(SELECT count(*) FROM l), (SELECT count(*) FROM r)"
        )

    async def purge_expired(self, before: datetime) -> int:
        sql = self._purge_expired_sql
        total = 0
        while True:
            counts = [int(n) for n in await self._db().fetchrow(sql, to_utc(before), _PURGE_BATCH)]
            total += sum(counts)
            if max(counts) < _PURGE_BATCH:
                return total

    @cached_property
    def _purge_sagas_sql(self) -> str:
        """:meth:`purge_sagas`'s statement (``$1`` the moment, ``$2`` the limit, ``$3`` now):
        the sagas finished before, oldest first along saga_executions_finished."""
        s = self._s
        # One statement, one short transaction. The rows are locked (SKIP LOCKED: a saga
        # being saved right now is left for the next purge) and their status re-checked.
        # Pending inbox rows are few (events in flight): their saga ids make a small hash.
        return (
            f"WITH doomed AS (SELECT saga_id FROM {s}.saga_executions AS e "
            "WHERE finished_at < $1 "  # finished before (schema 11)
            f"AND saga_id NOT IN (SELECT saga_id FROM {s}.inbox "
            "WHERE status = 'pending' AND lease_until >= $3) "
            f"AND NOT EXISTS (SELECT 1 FROM {s}.saga_requests AS r WHERE r.saga_id = e.saga_id) "
            f"AND NOT EXISTS (SELECT 1 FROM {s}.outbox AS o "
            "WHERE o.saga_id = e.saga_id AND o.sent_at IS NULL) "
            "ORDER BY finished_at LIMIT $2 FOR UPDATE SKIP LOCKED), "
            # each table's rows of those by its index on saga_id, whatever the estimates (a
            # join with ``doomed`` may be a hash over a scan of the whole table)
            f"steps AS (DELETE FROM {s}.saga_steps WHERE {_DOOMED}), "
            f"history AS (DELETE FROM {s}.saga_history WHERE {_DOOMED}), "
            f"outbox AS (DELETE FROM {s}.outbox WHERE {_DOOMED}), "
            f"gone AS (DELETE FROM {s}.saga_executions WHERE {_DOOMED} RETURNING 1) "
            "SELECT count(*) FROM gone"
        )

    async def purge_sagas(self, before: datetime, *, limit: int = 500) -> int:
        deleted = await self._db().fetchval(
            self._purge_sagas_sql,
            to_utc(before),
            limit,
            utcnow(),  # the inbox leases are the engines' clock, as claim_inbox compares them
        )
        return int(deleted)

    async def purge_dead_letters(self, before: datetime, *, limit: int = 500) -> int:
        s = self._s
        deleted = await self._db().fetchval(
            f"WITH gone AS (DELETE FROM {s}.dead_letters WHERE id IN "
            f"(SELECT id FROM {s}.dead_letters WHERE created_at < $1 ORDER BY id LIMIT $2 "
            "FOR UPDATE SKIP LOCKED) RETURNING 1) SELECT count(*) FROM gone",
            to_utc(before),
            limit,
        )
        return int(deleted)
