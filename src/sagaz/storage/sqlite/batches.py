"""The frequent operations of one group written together: one statement per kind of row.

A part of :class:`~sagaz.storage.sqlite.SQLiteSagaStore`, run by its group committer
(:mod:`sagaz.storage.sqlite_groups`) before it runs a group operation by operation.

In a busy store a group is mostly claims of events (:meth:`claim_event`: an inbox row and a
saga row each) and checkpoints (:meth:`save_checkpoint`: a saga row's update, a step row, at
the end an inbox row completed), about twenty of each kind. One statement per row cost about
as much again as the row itself: each statement's binding, its program's start and end (a
cursor opened on the table and every index), Python's ``sqlite3`` around it; on
``stores.py``'s run, seven statements a saga, about 60,000 instructions of its 630,000
(benchmarks/README.md, "SQLite: one statement per kind of row"). :func:`run_together` writes
the rows of a whole group with one ``INSERT ... SELECT ... FROM (VALUES ...)`` per kind (or
a few: a statement takes 1, 2, 4, ... 64 rows, so that a dozen statements serve every group
size), and the completed inbox rows with one ``UPDATE`` whose ``OR`` terms each seek the key.

A statement that writes many rows keeps the pages it changes in a statement journal, to undo
itself alone if it fails midway: the store's connection keeps that journal in memory
(``PRAGMA temp_store = MEMORY``, :func:`~sagaz.storage.sqlite_schema.open_database`; past 64
KiB SQLite would spill it to a temporary file, about 10,000 writes per 3,000 sagas). The new
inbox and saga rows are written with ``INSERT OR IGNORE``, which cannot fail midway and so
keeps no such journal: a row it ignores (a key taken, or any other constraint) is a row
fewer than given, below.

It gives every operation the result the operation itself would have given, or gives up:

- a group holding anything else, a saga that two of its operations touch, or an inbox key
  both claimed and completed in it, is not written together (None: nothing ran) — operation
  by operation, in order, as before, since the rows of different kinds are written here in
  another order;
- a claim whose key the inbox has already (a redelivery: its ``INSERT OR IGNORE`` wrote
  fewer rows than given, and its saga id is not among those of the rows just inserted, read
  back by their rowids: :func:`_written`) writes no saga row here; it is settled alone once
  the rest of the group is written, from the key's row, and finds its own case (a
  duplicate, a key taken over, a busy one; a row ignored for another reason, none under its
  key, raises: the group then runs operation by operation). What it reads, its key's inbox
  row and its own saga's row, no other operation of the group writes after it in queue
  order (a key both claimed and completed, a saga in two operations, are not written
  together, above; a second claim of a key in the group is itself settled alone), so it
  finds what it would have found in its place;
- a statement that changes fewer rows than it was given (a saga row fenced by another owner
  or stored under another name, a new saga row whose saga exists) raises
  :class:`NotTogether`: the committer rolls the group back and runs it operation by
  operation, where each operation finds its own case (a lease lost) and its caller alone
  gets it.

A saga row a checkpoint finds missing is written whole by the upsert, as
:func:`~sagaz.storage.sqlite.sagas._save` does.
"""

from __future__ import annotations

import functools
import sqlite3
from collections.abc import Callable, Iterator
from typing import Any

from sagaz.records import ClaimOutcome, EventClaim
from sagaz.storage import sqlite_rows as mapping
from sagaz.storage import sqlite_schema as tables
from sagaz.storage.sqlite.inbox import _claim_and_create, _claim_known_and_create
from sagaz.storage.sqlite.sagas import (
    _COMPLETE_INBOX,
    _INSERT_OUTBOX,
    _as_created,
    _save_checkpoint,
)

__all__ = ["NotTogether", "run_together"]

LARGEST = 64
"""The most rows one statement takes (a larger kind goes in several): a prepared statement
of 64 saga rows holds about 90 KB, and a statement of each size a kind takes is kept."""


class NotTogether(Exception):
    """A statement changed fewer rows than it was given: run the group again, operation by
    operation (see the module's documentation)."""


def _values(width: int, rows: int) -> str:
    row = "(" + ", ".join("?" * width) + ")"
    return ", ".join([row] * rows)


@functools.cache
def _claims_sql(rows: int) -> str:
    """New inbox rows, as :data:`~sagaz.storage.sqlite.inbox._INSERT_CLAIM`'s, ``rows`` of
    them (a row that breaks a constraint, a key claimed already, is not written: fewer rows
    changed)."""
    return (
        "INSERT OR IGNORE INTO inbox (trigger_id, key, saga_id, owner, lease_until, status, "
        "created_at) SELECT column1, column2, column3, column4, column5, 'pending', column6 "
        f"FROM (VALUES {_values(6, rows)})"
    )


def _saga_select(created: str, moment: str) -> str:
    """Saga rows from ``VALUES``: ``created`` (or ``moment`` where it is ``NO_TEXT``) as
    ``created_at``, ``moment`` as ``updated_at``."""
    return (
        f"INSERT INTO saga_executions ({tables.SAGA_COLUMNS}) SELECT column1, column2, "
        "column3, column4, column5, NULLIF(column6, 0), column7, NULLIF(column8, 0), column9, "
        f"column10, COALESCE(NULLIF({created}, 0), {moment}), {moment} FROM (VALUES "
    )


# the values of sqlite_rows.saga_params, as connection._INSERT_SAGA
_SAGA_SELECT = _saga_select("column11", "column12")
# those of sqlite_rows.saga_update_params, then created_at (or NO_TEXT)
_SAVE_SELECT = _saga_select("column12", "column11")


@functools.cache
def _sagas_sql(rows: int) -> str:
    """New saga rows, as :data:`~sagaz.storage.sqlite.sagas._CREATE_SAGA`'s (a row that
    breaks a constraint is not written: fewer rows changed)."""
    return f"{_SAGA_SELECT.replace('INSERT', 'INSERT OR IGNORE', 1)}{_values(12, rows)})"


@functools.cache
def _saves_sql(rows: int) -> str:
    """Saga rows saved, as :func:`~sagaz.storage.sqlite.sagas._save` saves one: the values of
    :func:`~sagaz.storage.sqlite_rows.saga_update_params` and ``created_at``. A row under its
    name is updated but for the name (saga_executions_by_name is left alone, as by
    ``_UPDATE_SAGA``), unless fenced; a missing row is inserted."""
    return (
        f"{_SAVE_SELECT}{_values(12, rows)}) WHERE true ON CONFLICT (saga_id) DO UPDATE SET "
        "status = excluded.status, context = excluded.context, attempt = excluded.attempt, "
        "error = excluded.error, trigger_id = excluded.trigger_id, event = excluded.event, "
        "owner = excluded.owner, lease_expires_at = excluded.lease_expires_at, "
        "updated_at = excluded.updated_at "
        "WHERE saga_executions.saga_name = excluded.saga_name "
        "AND (saga_executions.owner IS NULL OR excluded.owner IS NULL "
        "OR saga_executions.owner = excluded.owner "
        "OR saga_executions.attempt < excluded.attempt)"
    )


@functools.cache
def _steps_sql(rows: int) -> str:
    """Step rows, as :data:`~sagaz.storage.sqlite.sagas._INSERT_STEP`'s."""
    return (
        f"INSERT OR REPLACE INTO saga_steps (saga_seq, {tables.STEP_COLUMNS}) SELECT "
        "COALESCE((SELECT seq FROM saga_executions WHERE saga_id = column1), 0), column1, "
        "column2, column3, NULLIF(column4, 0), NULLIF(column5, 0), column6, "
        "NULLIF(column7, 0.5), NULLIF(column8, 0), column9 FROM (VALUES "
        f"{_values(9, rows)})"
    )


@functools.cache
def _completions_sql(rows: int) -> str:
    """Inbox rows completed at ``?1``, as :data:`~sagaz.storage.sqlite.sagas._COMPLETE_INBOX`
    completes one: each ``OR`` term a seek of ``inbox_by_key`` (a ``FROM (VALUES ...)`` join
    would copy the values into a temporary table first, about 60,000 instructions)."""
    keys = " OR ".join(f"(trigger_id = ?{2 * k + 2} AND key = ?{2 * k + 3})" for k in range(rows))
    return f"UPDATE inbox SET status = 'completed', completed_at = ?1 WHERE {keys}"


def _sizes(count: int) -> Iterator[int]:
    """The rows of each statement that writes ``count`` rows: 64, 32, ... 1 (the largest
    that fits what is left, each a statement kept prepared)."""
    while count:
        rows = LARGEST
        while rows > count:
            rows //= 2
        yield rows
        count -= rows


def _write(
    cursor: sqlite3.Cursor,
    sql: Callable[[int], str],
    params: list[Any],
    width: int,
    *,
    changes: bool = True,
) -> None:
    """``sql(rows)`` over ``params`` (``width`` values a row) in statements of 64, 32, ... 1
    rows; raise :class:`NotTogether` if ``changes`` and a statement changed fewer rows."""
    start = 0
    for rows in _sizes(len(params) // width):
        end = start + rows * width
        changed = cursor.execute(sql(rows), params[start:end]).rowcount
        if changes and changed != rows:
            raise NotTogether
        start = end


def run_together(cursor: sqlite3.Cursor, ops: list[tuple[Any, ...]]) -> list[Any] | None:
    """Run a group of queued operations (``(op, arg, ...)``) with one statement per kind of
    row and return their results in order; None, having run nothing, if the group is not
    one of claims and checkpoints on distinct sagas and keys. Raises :class:`NotTogether`
    (or an ``sqlite3.Error``) with the group's transaction to roll back."""
    claims: list[Any] = []  # flat: the inbox rows' values
    sagas: list[Any] = []  # the new saga rows'
    saves: list[Any] = []  # the saved saga rows' (and their created_at)
    steps: list[Any] = []
    completions: list[Any] = []  # (completed_at, trigger id, key) each
    messages: list[Any] = []
    touched: set[str] = set()  # saga ids
    expected = 0  # operations that touch a saga
    claiming: list[int] = []  # the claims' places in ops
    for place, queued in enumerate(ops):
        op, arg = queued[0], queued[1]
        if op is _save_checkpoint:
            step_rows, params, created, outbox, inbox = arg
            if params is not None:
                saga_id = params[0]
                saves += params
                saves.append(mapping.NO_TEXT if created is None else mapping.lasting_text(created))
            else:
                saga_id = step_rows[0][0] if step_rows else None
            for row in step_rows:
                if row[0] != saga_id:  # steps of another saga: not worth the bookkeeping
                    return None
                steps += row
            if saga_id is not None:
                touched.add(saga_id)
                expected += 1
            if outbox:
                messages += outbox
            if inbox is not None:
                completions.append(inbox)
        elif op is _claim_and_create:
            claim_args, params, _, _ = arg
            touched.add(claim_args[2])
            expected += 1
            claiming.append(place)
            claims += claim_args
            sagas += params
        else:
            return None
    if len(touched) != expected:
        return None  # a saga in two operations: their order matters
    if completions and claims and _completing_claimed(claims, completions):
        return None
    alone: list[int] = []  # the places of the claims whose key the inbox had already
    if claims:
        written = _claim(cursor, claims)
        if written is not None:  # not every key was new: those claims run alone, below
            sagas, alone = _of_written(claims, sagas, claiming, written)
        if sagas:
            _write(cursor, _sagas_sql, sagas, 12)
    if saves:
        _write(cursor, _saves_sql, saves, 12)
    if steps:
        _write(cursor, _steps_sql, steps, 9, changes=False)
    if messages:
        cursor.executemany(_INSERT_OUTBOX, messages)
    if completions:
        _complete(cursor, completions)
    results = [_result(queued) for queued in ops]
    for place in alone:  # after the rest: what they read, the rest left alone (see above)
        results[place] = _claim_known_and_create(cursor, ops[place][1])
    return results


_WRITTEN = "SELECT saga_id FROM inbox WHERE id > ? AND id <= ?"

_ORDERED = 2**62
"""Below this rowid an inbox row's id is one more than the largest before it (SQLite gives a
new row that id until the largest possible rowid, 2**63 - 1, is taken: then random ones)."""


def _claim(cursor: sqlite3.Cursor, claims: list[Any]) -> set[str] | None:
    """Write the new inbox rows of ``claims`` (six values each); None if every one was
    written, else the saga ids of those written (a claim's saga id is the group's alone)."""
    written: set[str] | None = None
    start = 0
    for rows in _sizes(len(claims) // 6):
        end = start + rows * 6
        changed = cursor.execute(_claims_sql(rows), claims[start:end]).rowcount
        if changed != rows:
            if written is None:  # the statements before wrote all theirs
                written = {claims[k] for k in range(2, start, 6)}
            written |= _written(cursor, changed)
        elif written is not None:
            written.update(claims[k] for k in range(start + 2, end, 6))
        start = end
    return written


def _written(cursor: sqlite3.Cursor, changed: int) -> set[str]:
    """The saga ids of the ``changed`` inbox rows the cursor's last statement inserted: the
    rows up to its last rowid, their ids one after the other (a ``RETURNING`` would make
    SQLite copy the ``VALUES`` into a temporary table first: +10,000 instructions a saga in
    ``stores.py``'s run, every group). :class:`NotTogether` past :data:`_ORDERED`."""
    if not changed:
        return set()
    last = cursor.lastrowid
    if last is None or last >= _ORDERED:
        raise NotTogether
    ids = cursor.execute(_WRITTEN, (last - changed, last)).fetchall()
    if len(ids) != changed:
        raise NotTogether
    return {row[0] for row in ids}


def _of_written(
    claims: list[Any], sagas: list[Any], claiming: list[int], written: set[str]
) -> tuple[list[Any], list[int]]:
    """The new saga rows of the claims whose inbox row was ``written`` (their saga ids), and
    the places in the group of the others (their key was known: each runs alone)."""
    kept: list[Any] = []
    alone: list[int] = []
    for n, place in enumerate(claiming):
        if claims[6 * n + 2] in written:
            kept += sagas[12 * n : 12 * n + 12]
        else:
            alone.append(place)
    return kept, alone


def _completing_claimed(claims: list[Any], completions: list[Any]) -> bool:
    """Whether an inbox key is both claimed and completed in the group."""
    claimed = {(claims[k], claims[k + 1]) for k in range(0, len(claims), 6)}
    return any((trigger_id, key) in claimed for _, trigger_id, key in completions)


def _complete(cursor: sqlite3.Cursor, completions: list[Any]) -> None:
    """Complete the inbox rows of ``completions``: by ``OR`` terms if they share their
    moment (a group's checkpoints do), else one by one."""
    moment = completions[0][0]
    keys: list[Any] = []
    for completed_at, trigger_id, key in completions:
        if completed_at != moment:
            for completion in completions:
                cursor.execute(_COMPLETE_INBOX, completion)
            return
        keys += (trigger_id, key)
    start = 0
    for rows in _sizes(len(keys) // 2):
        end = start + 2 * rows
        cursor.execute(_completions_sql(rows), [moment, *keys[start:end]])
        start = end


def _result(queued: tuple[Any, ...]) -> Any:
    """What the operation would have returned, having found the common case."""
    if queued[0] is _save_checkpoint:
        return True
    claim_args, _, record, now = queued[1]
    return EventClaim(
        ClaimOutcome.CLAIMED, claim_args[2], claim_args[3], _as_created(record, now), True
    )
