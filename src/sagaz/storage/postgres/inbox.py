"""The inbox: claims of trigger keys and their leases (the purge of expired rows is in
:mod:`sagaz.storage.postgres.retention`).

A part of :class:`~sagaz.storage.postgres.PostgresSagaStore`.
"""

from __future__ import annotations

from datetime import datetime
from functools import cached_property
from typing import Any

from sagaz.clock import utcnow
from sagaz.exceptions import StoreError
from sagaz.records import (
    ClaimOutcome,
    InboxClaim,
)
from sagaz.storage.codec import to_utc
from sagaz.storage.postgres.connection import (
    _CLAIM_RETRIES,
    _INBOX_CONFLICT,
    PostgresConnection,
    _inbox_rows,
)

__all__ = ["PostgresInbox"]


def _found_claim(row: Any) -> InboxClaim:
    """The claim of a key whose row was neither inserted nor taken over: done or held."""
    outcome = ClaimOutcome.DUPLICATE if row["status"] == "completed" else ClaimOutcome.BUSY
    return InboxClaim(outcome, row["saga_id"], row["owner"])


class PostgresInbox(PostgresConnection):
    """The inbox: claims of trigger keys and their leases."""

    # -- inbox -----------------------------------------------------------------------------
    async def claim_inbox(
        self, trigger_id: str, key: str, saga_id: str, owner: str, lease_until: datetime
    ) -> InboxClaim:
        args = (trigger_id, key, saga_id, owner, to_utc(lease_until), utcnow())
        claim: InboxClaim = await self._committer().run(
            self._claim_one,
            args,
            batch=(self._claim_inboxes, args, (("inbox", trigger_id, key),)),
        )
        return claim

    async def _claim_one(self, conn: Any, args: tuple[Any, ...]) -> InboxClaim:
        # one statement inserts a new row or takes over an expired/own one; the row lock
        # taken by ON CONFLICT makes the lease check and the takeover atomic
        trigger_id, key, _, owner, _, _ = args
        claim = (
            f"INSERT INTO {self._s}.inbox AS i (trigger_id, key, saga_id, owner, "
            "lease_until, status, created_at) VALUES ($1, $2, $3, $4, $5, 'pending', $6) "
            f"{_INBOX_CONFLICT} RETURNING i.saga_id, (xmax = 0) AS inserted"
        )
        select = (
            f"SELECT saga_id, owner, status FROM {self._s}.inbox WHERE trigger_id = $1 AND key = $2"
        )
        for _ in range(_CLAIM_RETRIES):
            row = await conn.fetchrow(claim, *args)
            if row is not None:
                outcome = ClaimOutcome.CLAIMED if row["inserted"] else ClaimOutcome.TAKEN_OVER
                return InboxClaim(outcome, row["saga_id"], owner)
            row = await conn.fetchrow(select, trigger_id, key)
            if row is not None:
                return _found_claim(row)
        raise StoreError(f"inbox row ({trigger_id!r}, {key!r}) kept changing under us; retry")

    async def _claim_inboxes(self, conn: Any, items: list[tuple[Any, ...]]) -> list[InboxClaim]:
        """:meth:`_claim_one` for several keys (distinct) in two statements."""
        # one parameter: the rows as an array of inbox_claim (see postgres_schema, migration 9)
        claimed = {(row[0], row[1]): row for row in await conn.fetch(self._claim_many, items)}
        missing = [args for args in items if (args[0], args[1]) not in claimed]
        found: dict[tuple[str, str], Any] = {}
        if missing:
            rows = await conn.fetch(
                "SELECT i.trigger_id, i.key, i.saga_id, i.owner, i.status FROM "
                + _inbox_rows(self._s, "$1::text[], $2::text[]"),
                [args[0] for args in missing],
                [args[1] for args in missing],
            )
            found = {(row[0], row[1]): row for row in rows}
        results: list[InboxClaim] = []
        for args in items:
            ident = (args[0], args[1])
            row = claimed.get(ident)
            if row is not None:
                outcome = ClaimOutcome.CLAIMED if row["inserted"] else ClaimOutcome.TAKEN_OVER
                results.append(InboxClaim(outcome, row["saga_id"], args[3]))
            elif ident in found:
                results.append(_found_claim(found[ident]))
            else:  # deleted between the two statements: look again, alone
                results.append(await self._claim_one(conn, args))
        return results

    async def complete_inbox(self, trigger_id: str, key: str) -> None:
        await self._write_execute(
            self._complete_inbox,
            trigger_id,
            key,
            utcnow(),
        )

    async def release_inbox(self, trigger_id: str, key: str) -> None:
        await self._write_execute(
            f"DELETE FROM {self._s}.inbox WHERE trigger_id = $1 AND key = $2", trigger_id, key
        )

    @cached_property
    def _renew_leases_sql(self) -> str:
        """:meth:`renew_leases`'s statement: an owner's active sagas (not finished: schema
        11) and pending keys, through saga_executions_by_owner and inbox_pending_by_owner."""
        # the rows of this owner that no other transaction holds (SKIP LOCKED): renewing
        # waits on no row lock, so it is never one end of a deadlock (this UPDATE of many
        # rows locks them in no particular order, the checkpoints and claims of a group in
        # theirs), nor stuck behind a frozen worker's open transaction. A row skipped is
        # being written (its saga checkpointed, its key claimed or completed) or taken over:
        # the next renewal, a third of a lease later, finds it free.
        s = self._s
        return (
            f"WITH s AS (UPDATE {s}.saga_executions AS e SET lease_expires_at = $2 FROM "
            f"(SELECT saga_id FROM {s}.saga_executions WHERE owner = $1 AND finished_at IS NULL "
            "FOR UPDATE SKIP LOCKED) AS l "
            "WHERE e.saga_id = l.saga_id RETURNING 1), "
            f"i AS (UPDATE {s}.inbox AS t SET lease_until = $2 FROM "
            f"(SELECT trigger_id, key FROM {s}.inbox WHERE owner = $1 AND status = 'pending' "
            "FOR UPDATE SKIP LOCKED) AS l "
            "WHERE t.trigger_id = l.trigger_id AND t.key = l.key RETURNING 1) "
            "SELECT (SELECT count(*) FROM s) + (SELECT count(*) FROM i)"
        )

    async def renew_leases(self, owner: str, lease_until: datetime) -> int:
        # a statement of its own, not an operation of the group committer's next group:
        # queued behind a backlog of writes (a broker poll's claims, the claims of a thawed
        # worker's busy keys) a renewal landed seconds after it was asked for, past a short
        # lease, and another worker took the claims of this live one over. It waits on no
        # row lock (SKIP LOCKED), so it needs no place in a group's order of locks either
        touched = await self._db().fetchval(self._renew_leases_sql, owner, to_utc(lease_until))
        return int(touched)
