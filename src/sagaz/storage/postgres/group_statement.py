"""A group commit as one statement: the inbox claims, the new sagas and the checkpoints of a
group in one ``WITH`` of data-modifying CTEs, which the server commits on its own (no
``BEGIN``/``COMMIT``: one round trip per group). See
:mod:`sagaz.storage.postgres_groups` for when a group runs this way.

A part of :class:`~sagaz.storage.postgres.PostgresSagaStore`.
"""

from __future__ import annotations

import re
from typing import Any

from sagaz.records import ClaimOutcome, InboxClaim
from sagaz.storage.postgres.inbox import PostgresInbox, _found_claim
from sagaz.storage.postgres.sagas import PostgresSagas, _checkpoint_args
from sagaz.storage.postgres_groups import UNRESOLVED, BatchRunner, Statement

__all__ = ["PostgresGroupStatement"]

_PARAM = re.compile(r"\$(\d+)")

#: a checkpoint shape (steps, saga, outbox, inbox), or None for a group without checkpoints
_Shape = tuple[bool, bool, tuple[bool, bool, bool, bool] | None]


def _shift(sql: str, by: int) -> str:
    """``sql`` with its parameters ``$n`` renumbered ``$(n + by)``."""
    return _PARAM.sub(lambda match: f"${int(match.group(1)) + by}", sql)


class PostgresGroupStatement(PostgresSagas, PostgresInbox):
    """Runs an all-batch group (claims, new sagas, checkpoints) as one statement."""

    def _statement(self) -> Statement | None:
        return self._group_statement

    async def _group_statement(
        self, conn: Any, batches: dict[BatchRunner, list[Any]]
    ) -> dict[BatchRunner, list[Any]]:
        """The ``statement`` of the group committer: a result per item, by runner; an item
        the statement did not settle is :data:`UNRESOLVED` (its operation runs again)."""
        claims: list[tuple[Any, ...]] = []
        creates: list[tuple[Any, ...]] = []
        checkpoints: list[Any] = []
        for runner, items in batches.items():
            if runner == self._claim_inboxes:
                claims = items
            elif runner == self._create_sagas:
                creates = items
            elif runner == self._run_checkpoints:
                checkpoints = items
            else:  # pragma: no cover - every batch runner of the store is above
                raise AssertionError(f"unknown batch runner {runner!r}")
        args: list[Any] = []
        for rows in (claims, creates):
            if rows:
                args += [list(column) for column in zip(*rows, strict=True)]
        checkpoint_shape = None
        if checkpoints:
            checkpoint_shape, checkpoint_args = _checkpoint_args(checkpoints)
            args += checkpoint_args
        shape: _Shape = (bool(claims), bool(creates), checkpoint_shape)
        sql = self._group_sql.get(shape)
        if sql is None:
            sql = self._group_sql[shape] = self._build_group_sql(shape)
        rows = await conn.fetch(sql, *args)
        claimed: dict[tuple[str, str], Any] = {}
        found: dict[tuple[str, str], Any] = {}
        inserted: set[str] = set()
        for row in rows:
            kind = row[0]
            if kind == 1:
                claimed[(row[1], row[2])] = row
            elif kind == 2:
                found[(row[1], row[2])] = row
            elif kind == 3:
                inserted.add(row[1])
        results: dict[BatchRunner, list[Any]] = {}
        if claims:
            results[self._claim_inboxes] = [_claim(args, claimed, found) for args in claims]
        if creates:
            results[self._create_sagas] = [
                None if params[0] in inserted else UNRESOLVED for params in creates
            ]
        if checkpoints:
            results[self._run_checkpoints] = [None] * len(checkpoints)
        return results

    def _build_group_sql(self, shape: _Shape) -> str:
        """The statement of a group of ``shape``: its CTEs, then one row per claimed key
        (kind 1), per key found as it was before the statement (2), per inserted saga (3)."""
        has_claims, has_creates, checkpoint_shape = shape
        ctes: list[str] = []
        selects: list[str] = []
        n = 0
        if has_claims:  # $1 to $6
            ctes.append(f"cl AS ({self._claim_many})")
            selects.append(
                "SELECT 1 AS kind, trigger_id, key, saga_id, NULL::text AS owner, "
                "NULL::text AS status, NULL::timestamptz AS lease_until, inserted FROM cl"
            )
            # the rows before the statement (its snapshot): of the keys not claimed, the
            # ones that refused the claim then (see _claim)
            selects.append(
                "SELECT 2, i.trigger_id, i.key, i.saga_id, i.owner, i.status, i.lease_until, "
                f"NULL FROM {self._s}.inbox AS i JOIN unnest($1::text[], $2::text[]) "
                "AS u(trigger_id, key) ON i.trigger_id = u.trigger_id AND i.key = u.key"
            )
            n = 6
        if has_creates:  # 12 arrays
            ctes.append(f"sn AS ({_shift(self._insert_sagas, n)})")
            selects.append("SELECT 3, saga_id, NULL, NULL, NULL, NULL, NULL, NULL FROM sn")
            n += 12
        if checkpoint_shape is not None:
            ctes += self._checkpoint_ctes(checkpoint_shape, n)
        select = " UNION ALL ".join(selects) if selects else "SELECT 0"
        return f"WITH {', '.join(ctes)} {select}" if ctes else select


def _claim(
    args: tuple[Any, ...], claimed: dict[tuple[str, str], Any], found: dict[tuple[str, str], Any]
) -> Any:
    """The claim of one key from the statement's rows, or :data:`UNRESOLVED` when they do
    not settle it: the key was not claimed, and its row as the statement's snapshot saw it
    would have let the claim through (it changed in between, or was inserted since)."""
    trigger_id, key, _, owner, _, now = args
    row = claimed.get((trigger_id, key))
    if row is not None:
        outcome = ClaimOutcome.CLAIMED if row["inserted"] else ClaimOutcome.TAKEN_OVER
        return InboxClaim(outcome, row["saga_id"], owner)
    row = found.get((trigger_id, key))
    if row is None:
        return UNRESOLVED
    refused = row["status"] != "pending" or (
        row["owner"] != owner and row["lease_until"] is not None and row["lease_until"] >= now
    )
    return _found_claim(row) if refused else UNRESOLVED
