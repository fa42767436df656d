"""A group commit as one statement: the inbox claims, the new sagas, the events' claims (an
inbox claim and its saga's row) and the checkpoints of a group in one ``WITH`` of
data-modifying CTEs, which the server commits on its own (no
``BEGIN``/``COMMIT``: one round trip per group). See
:mod:`sagaz.storage.postgres_groups` for when a group runs this way.

A part of :class:`~sagaz.storage.postgres.PostgresSagaStore`.
"""

from __future__ import annotations

import re
from typing import Any

from sagaz.records import ClaimOutcome, EventClaim, InboxClaim
from sagaz.storage import postgres_rows as mapping
from sagaz.storage.postgres.connection import _INBOX_CONFLICT, _inbox_lookup
from sagaz.storage.postgres.events import OURS, EventItem, PostgresEventClaims
from sagaz.storage.postgres.inbox import _found_claim
from sagaz.storage.postgres.sagas import CheckpointShape, _checkpoint_args, checkpoints_written
from sagaz.storage.postgres_groups import UNRESOLVED, BatchRunner, Statement

__all__ = ["PostgresGroupStatement"]

# a parameter, or a quoted identifier (a schema name may hold "$1": left as it is)
_PARAM = re.compile(r'"[^"]*"|\$(\d+)')

#: claims?, the events' claims (none, or as _KEYS or _ROWS), and the checkpoint shape
#: (steps, saga, outbox, inbox, as checkpoint rows), or None for a group without checkpoints
_Shape = tuple[bool, bool, int, CheckpointShape | None]

#: the events' claims sent as their keys (a text[]) beside their saga rows, which hold the
#: rest of each claim: 26,200 client instructions an inbox_claim row against 5,000 a key
#: (asyncpg checks and encodes every array element; two timestamptz of it)
_KEYS = 1
#: ... or as inbox_claim rows, when a record names another trigger than its claim
_ROWS = 2


def _shift(sql: str, by: int) -> str:
    """``sql`` with its parameters ``$n`` renumbered ``$(n + by)``; quoted identifiers are
    left as they are."""

    def renumber(match: re.Match[str]) -> str:
        number = match.group(1)
        return match.group(0) if number is None else f"${int(number) + by}"

    return _PARAM.sub(renumber, sql)


class PostgresGroupStatement(PostgresEventClaims):
    """Runs an all-batch group (claims, new sagas, events' claims, checkpoints) as one
    statement."""

    def _statement(self) -> Statement | None:
        return self._group_statement

    async def _group_statement(
        self, conn: Any, batches: dict[BatchRunner, list[Any]]
    ) -> dict[BatchRunner, list[Any]]:
        """The ``statement`` of the group committer: a result per item, by runner; an item
        the statement did not settle is :data:`UNRESOLVED` (its operation runs again)."""
        claims: list[tuple[Any, ...]] = []
        creates: list[tuple[Any, ...]] = []
        events: list[EventItem] = []
        checkpoints: list[Any] = []
        for runner, items in batches.items():
            if runner == self._claim_inboxes:
                claims = items
            elif runner == self._create_sagas:
                creates = items
            elif runner == self._claim_events:
                events = items
            elif runner == self._run_checkpoints:
                checkpoints = items
            else:  # pragma: no cover - every batch runner of the store is above
                raise AssertionError(f"unknown batch runner {runner!r}")
        # each kind's rows as one parameter, an array of rows (see postgres_schema, 9)
        args: list[Any] = []
        if claims:
            args.append(claims)
        if creates:
            args.append(creates)
        # the events' claims: their keys beside their saga rows, which hold the rest of
        # each claim (trigger id, saga id, owner, lease, moment) unless a record names
        # another trigger than its claim (then one inbox_claim row each, as for claims)
        event_claims = 0
        if events:
            sagas = [event.saga_params for event in events]
            if all(event.claim_args[0] == event.saga_params[6] for event in events):
                event_claims = _KEYS
                args.append([event.claim_args[1] for event in events])
            else:
                event_claims = _ROWS
                args.append([event.claim_args for event in events])
            args.append(sagas)
        checkpoint_shape = None
        if checkpoints:
            checkpoint_shape, checkpoint_args = _checkpoint_args(checkpoints)
            args += checkpoint_args
        shape: _Shape = (bool(claims), bool(creates), event_claims, checkpoint_shape)
        sql = self._group_sql.get(shape)
        if sql is None:
            sql = self._group_sql[shape] = self._build_group_sql(shape)
        rows = await conn.fetch(sql, *args)
        claimed: dict[tuple[str, str], Any] = {}
        found: dict[tuple[str, str], Any] = {}
        inserted: set[str] = set()
        event_claimed: dict[tuple[str, str], Any] = {}
        event_found: dict[tuple[str, str], Any] = {}
        event_sagas: set[str] = set()
        every_saga = False  # every event whose key was claimed had its saga created
        fresh = False  # every event's key was inserted and its saga created (no rows of 4)
        lost: set[str] = set()  # the checkpoints' sagas fenced out
        for row in rows:
            kind = row[0]
            if kind == 1:
                claimed[(row[1], row[2])] = row
            elif kind == 2:
                found[(row[1], row[2])] = row
            elif kind == 3:
                inserted.add(row[1])
            elif kind == 4:
                event_claimed[(row[1], row[2])] = row
            elif kind == 5:
                event_found[(row[1], row[2])] = row
            elif kind == 6:
                event_sagas.add(row[1])
            elif kind == 7:
                lost.add(row[1])
            elif kind == 8:
                every_saga = True
            elif kind == 9:
                fresh = True
        results: dict[BatchRunner, list[Any]] = {}
        if claims:
            results[self._claim_inboxes] = [_claim(args, claimed, found) for args in claims]
        if creates:
            results[self._create_sagas] = [
                None if params[0] in inserted else UNRESOLVED for params in creates
            ]
        if events:
            if fresh:
                results[self._claim_events] = [_fresh(event) for event in events]
            else:
                results[self._claim_events] = [
                    _event(event, event_claimed, event_found, None if every_saga else event_sagas)
                    for event in events
                ]
        if checkpoints:
            results[self._run_checkpoints] = checkpoints_written(checkpoints, lost)
        return results

    def _build_group_sql(self, shape: _Shape) -> str:
        """The statement of a group of ``shape``: its CTEs, then one row per claimed key
        (kind 1), per key found as it was before the statement (2), per inserted saga (3),
        per event's claimed key (4) unless every event's key was inserted and its saga
        created (one row, 9), per key found (5), per saga it created (6) unless it created
        every claimed key's (one row, 8, if not 9), per checkpoint's saga fenced out (7)."""
        has_claims, has_creates, has_events, checkpoint_shape = shape
        ctes: list[str] = []
        selects = [
            # typed once: every SELECT below fills these columns
            "SELECT 0 AS kind, NULL::text AS trigger_id, NULL::text AS key, "
            "NULL::text AS saga_id, NULL::text AS owner, NULL::text AS status, "
            "NULL::timestamptz AS lease_until, NULL::bool AS inserted WHERE FALSE"
        ]
        n = 0
        if has_claims:  # an array of inbox_claim
            ctes.append(f"cl AS ({self._claim_many})")
            selects += self._claim_selects("cl", 1, n)
            n = 1
        if has_creates:  # an array of saga_row
            ctes.append(f"sn AS ({_shift(self._insert_sagas, n)})")
            selects.append("SELECT 3, saga_id, NULL, NULL, NULL, NULL, NULL, NULL FROM sn")
            n += 1
        if has_events:  # the claims (keys, or inbox_claim rows), then the sagas (saga_row)
            # what the statement's rows of the events depend on, counted once (cn: one row):
            # keys claimed, of them inserted (claimed afresh), sagas created. Each gate
            # below reads it (a one-time filter): an aggregate the server sets up at every
            # group is dearer than the rows it saves
            events = f"cardinality(${n + 2}::{self._s}.saga_row[])"
            gate = "(SELECT {} FROM cn)"
            if has_events == _KEYS:
                ctes.append(f"ec AS ({self._claim_keys_sql(n)})")
                keys_from: str | None = self._key_rows(n)
            else:
                ctes.append(f"ec AS ({_shift(self._claim_many, n)})")
                keys_from = None
            # every key inserted and every saga created, the usual group: one row of kind 9
            # says so instead of a row (kind 4) per key
            fresh = f"fresh = {events} AND created = {events}"
            selects += self._claim_selects(
                "ec", 4, n, keys_from, unless=gate.format(f"NOT ({fresh})"),
                claimed=gate.format("claimed"),
            )  # fmt: skip
            # a saga is created only where its key was claimed (by ec, in this statement)
            insert = _shift(self._insert_sagas, n + 1).replace(
                # a filter by an array made once, not a join: no hash node to set up
                " ON CONFLICT",
                " WHERE u.saga_id = ANY (ARRAY(SELECT saga_id FROM ec)) ON CONFLICT",
                1,
            )
            ctes.append(f"es AS ({insert})")
            ctes.append(
                "cn AS (SELECT c.claimed, c.fresh, (SELECT count(*) FROM es) AS created FROM "
                "(SELECT count(*) AS claimed, count(*) FILTER (WHERE inserted) AS fresh "
                "FROM ec) AS c)"
            )
            # the sagas created, listed only if some claimed key's saga was not (it existed):
            # else one row says every one was (kind 8), or every key was claimed afresh too
            # (kind 9)
            selects.append(
                "SELECT 6, saga_id, NULL, NULL, NULL, NULL, NULL, NULL FROM es WHERE "
                + gate.format("created <> claimed")
            )
            selects.append(
                f"SELECT CASE WHEN {fresh} THEN 9 ELSE 8 END, NULL, NULL, NULL, NULL, NULL, "
                "NULL, NULL FROM cn WHERE created = claimed"
            )
            n += 2
        if checkpoint_shape is not None:
            ctes += self._checkpoint_ctes(checkpoint_shape, n)
            if checkpoint_shape[1]:  # the sagas fenced out (kind 7)
                selects.append("SELECT 7, saga_id, NULL, NULL, NULL, NULL, NULL, NULL FROM lost")
        select = " UNION ALL ".join(selects)
        return f"WITH {', '.join(ctes)} {select}" if ctes else select

    def _key_rows(self, n: int) -> str:
        """The events' claims sent as keys: ``unnest`` of the keys (``$n+1``) beside the saga
        rows (``$n+2``), one row each: ``key`` and the saga row's columns."""
        return f"unnest(${n + 1}::text[], ${n + 2}::{self._s}.saga_row[]) AS u(key)"

    def _claim_keys_sql(self, n: int) -> str:
        """:attr:`_claim_many` of the events' claims sent as keys (:meth:`_key_rows`): the
        claim's lease is the saga row's, its moment the row's ``updated_at``."""
        return (
            f"INSERT INTO {self._s}.inbox AS i (trigger_id, key, saga_id, owner, lease_until, "
            "status, created_at) SELECT u.trigger_id, u.key, u.saga_id, u.owner, "
            f"{mapping.moment_sql('u.lease_expires_at')}, 'pending', "
            f"{mapping.moment_sql('u.updated_at')} FROM {self._key_rows(n)} {_INBOX_CONFLICT} "
            "RETURNING i.trigger_id, i.key, i.saga_id, (xmax = 0) AS inserted"
        )

    def _claim_selects(
        self,
        cte: str,
        kind: int,
        n: int,
        keys_from: str | None = None,
        unless: str | None = None,
        claimed: str | None = None,
    ) -> list[str]:
        """The rows of the claims of ``cte`` (keys in ``$n+1``): one per key claimed
        (``kind``; only where the condition ``unless`` holds), and one per key as it was
        before the statement (its snapshot, ``kind + 1``): of the keys not claimed, the
        ones that refused the claim then. ``keys_from``: the ``FROM`` item of the keys if
        not ``$n+1`` as inbox_claim rows; ``claimed``: the count of the keys claimed, if
        not counted from ``cte``.

        The second are read only if some key was not claimed: gated by a count (a one-time
        filter), so that in the usual group, every key claimed, no key is looked up again."""
        keys = f"${n + 1}::{self._s}.inbox_claim[]"
        if keys_from is None:
            keys_from = f"unnest({keys}) AS u(trigger_id, key)"
        else:
            keys = f"${n + 1}::text[]"
        return [
            f"SELECT {kind}, trigger_id, key, saga_id, NULL, NULL, NULL, inserted FROM {cte}"
            + ("" if unless is None else f" WHERE {unless}"),
            f"SELECT {kind + 1}, i.trigger_id, i.key, i.saga_id, i.owner, i.status, "
            "i.lease_until, NULL FROM "
            + _inbox_lookup(self._s, keys_from)
            + f" WHERE {claimed or f'(SELECT count(*) FROM {cte})'} < cardinality({keys})",
        ]


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


def _fresh(event: EventItem) -> EventClaim:
    """The answer to an event's claim that inserted its key and created its saga: the key is
    claimed for the event's saga and owner (the statement's rows of kind 9)."""
    _, _, saga_id, owner, _, _ = event.claim_args
    return event.answer(InboxClaim(ClaimOutcome.CLAIMED, saga_id, owner), None)


def _event(
    event: EventItem,
    claimed: dict[tuple[str, str], Any],
    found: dict[tuple[str, str], Any],
    inserted: set[str] | None,
) -> Any:
    """The answer to one event's claim from the statement's rows, or :data:`UNRESOLVED`: its
    claim is not settled (see :func:`_claim`), or its key was claimed but its saga exists
    (the claim is kept on ``event``: run again, its operation reads the saga). ``inserted``:
    the sagas created, None when the saga of every claimed key was."""
    claim = _claim(event.claim_args, claimed, found)
    if claim is UNRESOLVED:
        return UNRESOLVED
    if claim.outcome not in OURS:
        return EventClaim(claim.outcome, claim.saga_id, claim.owner)
    if inserted is None or event.record.saga_id in inserted:
        return event.answer(claim, None)
    event.claim = claim  # committed with the statement
    return UNRESOLVED
