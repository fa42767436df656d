"""How the rows of :class:`~sagaz.storage.postgres.PostgresSagaStore` map to records, and back:
the parameters it sends (JSON as text, moments as ``bigint`` microseconds turned back in the
statement) and the records it reads, plus the connections' codec and reset hooks. The
schema itself is :mod:`sagaz.storage.postgres_schema`.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from sagaz.records import DeadLetterRecord, OutboxMessage, SagaRecord, StepRecord
from sagaz.storage.codec import dumps, loads, to_utc
from sagaz.storage.texts import JsonMemo
from sagaz.types import SagaStatus, StepStatus

__all__ = [
    "DEAD_LETTER_COLUMNS",
    "SAGA_VALUES",
    "dead_letter_from_row",
    "init_connection",
    "keep_session",
    "moment_sql",
    "outbox_from_row",
    "pg_micros",
    "saga_from_row",
    "saga_params",
    "step_from_row",
]

_PG_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def pg_micros(moment: datetime) -> int:
    """``moment`` (aware) as microseconds since PostgreSQL's epoch (2000-01-01 UTC): how a
    saga's and a step's moments and an inbox row's completion are sent (:func:`moment_sql`
    turns them back)."""
    if moment.tzinfo is not UTC:  # most moments are (sagaz.clock.utcnow)
        moment = to_utc(moment)
    return (moment - _PG_EPOCH) // _MICROSECOND


def moment_sql(micros: str) -> str:
    """SQL: the ``timestamptz`` of the ``bigint`` microseconds ``micros`` (an expression
    without side effects), exact: its high and low bits are each multiplied by an
    interval of a power of two microseconds (``interval * float8`` computes in double,
    exact for such products; one product of a whole microsecond count would round beyond
    2^53, after the year 2285)."""
    return (
        f"(timestamptz '2000-01-01 00:00:00+00' + ({micros} >> 20) * "
        f"interval '1048576 microseconds' + ({micros} & 1048575) * interval '1 microsecond')"
    )


SAGA_VALUES = "$1, $2, $3, $4, $5, $6, $7, $8, $9, " + ", ".join(
    moment_sql(f"${n}::bigint") for n in (10, 11, 12)
)
"""The parameters of an insert of :data:`SAGA_COLUMNS` (:func:`saga_params`' values)."""
DEAD_LETTER_COLUMNS = (
    "trigger_id, saga_name, payload, error, reason, traceback, attempts, saga_id, source, meta"
)


def _json_text(text: str) -> str:
    return text


async def init_connection(conn: Any) -> None:
    """Read JSONB with the sagaz codec; parameters arrive as :func:`dumps` text already, so a
    value that cannot be stored fails with a clear :class:`StoreError` before any query runs."""
    await conn.set_type_codec("jsonb", encoder=_json_text, decoder=loads, schema="pg_catalog")


async def keep_session(conn: Any) -> None:
    """The pool's reset hook: nothing to undo. The store keeps no session state (no LISTEN,
    advisory locks, cursors or SET), and the pool still rolls back an open transaction; the
    default reset would cost every operation a second round trip."""


def saga_params(
    record: SagaRecord,
    created_at: datetime,
    updated_at: datetime,
    texts: JsonMemo | None = None,
    updated_micros: int | None = None,
) -> tuple[Any, ...]:
    """The values of :data:`SAGA_COLUMNS` for ``record`` (JSON columns as text, moments as
    :func:`pg_micros`): a ``saga_row`` (migration 9), or :data:`SAGA_VALUES`. ``texts``: the
    saga's context and event texts (:class:`~sagaz.storage.texts.SagaJson`), reused while
    the values are unchanged; ``updated_micros``: ``pg_micros(updated_at)`` if the caller
    has it already."""
    lease, status, event = record.lease_expires_at, record.status, record.event
    updated = pg_micros(updated_at) if updated_micros is None else updated_micros
    encode_context, encode_event = (
        (dumps, dumps) if texts is None else (texts[0].encode, texts[1].encode)
    )
    context, event = encode_context(record.context), None if event is None else encode_event(event)
    return (
        record.saga_id,
        record.saga_name,
        # a member (most records) holds its value (``_value_``: ``.value`` is a Python
        # property, 0.45 µs more); SagaStatus() checks a plain string
        status._value_ if type(status) is SagaStatus else SagaStatus(status)._value_,
        context,
        record.attempt,
        record.error,
        record.trigger_id,
        event,
        record.owner,
        None if lease is None else pg_micros(lease),
        updated if created_at is updated_at else pg_micros(created_at),
        updated,
    )


def saga_from_row(row: Mapping[str, Any]) -> SagaRecord:
    """A row of :data:`SAGA_COLUMNS` as a record."""
    return SagaRecord(
        saga_id=row["saga_id"],
        saga_name=row["saga_name"],
        status=SagaStatus(row["status"]),
        context=row["context"],
        attempt=row["attempt"],
        error=row["error"],
        trigger_id=row["trigger_id"],
        event=row["event"],
        owner=row["owner"],
        lease_expires_at=row["lease_expires_at"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


def outbox_from_row(row: Mapping[str, Any]) -> OutboxMessage:
    """A row of :data:`OUTBOX_COLUMNS` as a message."""
    return OutboxMessage(
        saga_id=row["saga_id"],
        topic=row["topic"],
        payload=row["payload"],
        headers=row["headers"],
        id=row["id"],
        created_at=row["created_at"],
        sent_at=row["sent_at"],
    )


def step_from_row(row: Mapping[str, Any]) -> StepRecord:
    """A row of :data:`STEP_COLUMNS` as a record."""
    return StepRecord(
        saga_id=row["saga_id"],
        name=row["name"],
        status=StepStatus(row["status"]),
        result=row["result"],
        error=row["error"],
        attempts=row["attempts"],
        completed_seq=row["completed_seq"],
        compensation_error=row["compensation_error"],
        updated_at=row["updated_at"],
    )


def dead_letter_from_row(row: Mapping[str, Any]) -> DeadLetterRecord:
    """A row of ``id``, :data:`DEAD_LETTER_COLUMNS`, ``created_at`` as a record."""
    return DeadLetterRecord(
        trigger_id=row["trigger_id"],
        saga_name=row["saga_name"],
        payload=row["payload"],
        error=row["error"],
        reason=row["reason"],
        traceback=row["traceback"],
        attempts=row["attempts"],
        saga_id=row["saga_id"],
        source=row["source"],
        meta=row["meta"],
        id=row["id"],
        created_at=row["created_at"],
    )
