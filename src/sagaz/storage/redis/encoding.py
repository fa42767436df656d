"""The text the Redis store writes for a saga's values, built with less CPU per write.

A saga is written three times or so (created, running, completed) with the same name, event,
creation time and, most often, the same context. :class:`SagaTexts` remembers, per saga id,
the JSON text (:func:`sagaz.storage.codec.dumps`) of its last context and event and the
microseconds text of its ``created_at`` and lease, and hands the text back while the value is
unchanged. A value counts as unchanged when a *snapshot* of it (its structure with the exact
type of every element, floats by their ``hex()``) is equal to the one taken with the text, so
``1``, ``1.0`` and ``True``, or ``0.0`` and ``-0.0``, never share a text; a value holding
anything but ``dict`` (of ``str`` keys), ``list``, ``str``, ``int``, ``float``, ``bool`` and
``None`` is encoded every time. The text is the one ``dumps`` wrote for an equal value, so the
stored data is the same as without the cache.

The cache is bounded: a saga's entry goes at its terminal write or its deletion, beyond
:data:`MAX_SAGAS` entries the oldest goes first, and a text longer than :data:`MAX_TEXT`
characters is not kept (such a value is encoded every time).
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from sagaz.exceptions import StoreError
from sagaz.records import StepRecord
from sagaz.storage.codec import dumps, encode_value, plain_json
from sagaz.storage.redis_schema import micros
from sagaz.storage.texts import MAX_SAGAS, MAX_TEXT, EncodedText, SagaMemos
from sagaz.types import StepStatus

__all__ = ["MAX_SAGAS", "MAX_TEXT", "SagaTexts", "step_document"]

_NO_TEXT = ""  # never a dumps() result

# a JSON string as plain_json writes it (quoted, ASCII, escaped)
_text = json.encoder.encode_basestring_ascii


class _Memo:
    """What :class:`SagaTexts` keeps of one saga."""

    __slots__ = ("context", "created", "created_text", "event", "lease", "lease_text")

    def __init__(self) -> None:
        self.context = EncodedText()
        self.event = EncodedText()
        self.created: datetime | None = None
        self.created_text = _NO_TEXT
        self.lease: datetime | None = None
        self.lease_text = _NO_TEXT


class SagaTexts(SagaMemos[_Memo]):
    """The texts of the sagas a store is writing, per saga id (see the module)."""

    def __init__(self, max_sagas: int = MAX_SAGAS) -> None:
        super().__init__(_Memo, max_sagas)

    @staticmethod
    def context(memo: _Memo, value: Any) -> str:
        """``dumps(value)`` for the context of ``memo``'s saga, reused while unchanged."""
        return memo.context.encode(value)

    @staticmethod
    def event(memo: _Memo, value: Any) -> str:
        """``dumps(value)`` for the event of ``memo``'s saga, reused while unchanged."""
        return memo.event.encode(value)

    @staticmethod
    def created(memo: _Memo, moment: datetime) -> str:
        """``micros(moment)`` for ``created_at``, reused while the moment is the same."""
        if memo.created is None or moment != memo.created or not memo.created_text:
            memo.created_text = micros(moment)
            memo.created = moment
        return memo.created_text

    @staticmethod
    def lease(memo: _Memo, moment: datetime) -> str:
        """``micros(moment)`` for the lease's expiry, reused while the moment is the same."""
        if memo.lease is None or moment != memo.lease or not memo.lease_text:
            memo.lease_text = micros(moment)
            memo.lease = moment
        return memo.lease_text


def step_document(step: StepRecord, now: str) -> str:
    """A step checkpoint as the JSON document of the steps hash: the text
    ``dumps`` writes for it, with ``encode_value`` run on the result alone (the other fields
    are JSON types already)."""
    error, compensation_error = step.error, step.compensation_error
    if not (
        (error is None or type(error) is str)
        and (compensation_error is None or type(compensation_error) is str)
        and type(step.attempts) is int
        and (step.completed_seq is None or type(step.completed_seq) is int)
    ):  # something else: the codec says what is wrong with it, as before
        return dumps(_step_fields(step, step.result, now))
    result = encode_value(step.result, _path="value['result']")
    try:
        if type(step.saga_id) is str and type(step.name) is str and type(now) is str:
            # the text plain_json writes for these fields, joined without building the dict
            return "".join(
                [
                    '{"saga_id":',
                    _text(step.saga_id),
                    ',"name":',
                    _text(step.name),
                    ',"status":"',
                    StepStatus(step.status).value,  # the statuses need no escaping
                    '","result":',
                    "{}" if result == {} else plain_json(result),
                    ',"error":',
                    "null" if error is None else _text(error),
                    ',"attempts":',
                    str(step.attempts),
                    ',"completed_seq":',
                    "null" if step.completed_seq is None else str(step.completed_seq),
                    ',"compensation_error":',
                    "null" if compensation_error is None else _text(compensation_error),
                    ',"updated_at":',
                    _text(now),
                    "}",
                ]
            )
        return plain_json(_step_fields(step, result, now))
    except ValueError as exc:
        raise StoreError(
            f"cannot store a NaN or infinite float ({exc}); store None or a string instead"
        ) from exc


def _step_fields(step: StepRecord, result: Any, now: str) -> dict[str, Any]:
    return {
        "saga_id": step.saga_id,
        "name": step.name,
        "status": StepStatus(step.status).value,
        "result": result,
        "error": step.error,
        "attempts": step.attempts,
        "completed_seq": step.completed_seq,
        "compensation_error": step.compensation_error,
        "updated_at": now,
    }
