"""The Redis store's reuse of a saga's texts between its writes (sagaz.storage.redis.encoding):
the same text as the codec's for every value, a new one whenever the value changed (in place
too, or only in type), and an entry per saga that goes at its terminal write."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from sagaz.exceptions import StoreError
from sagaz.records import SagaRecord, StepRecord
from sagaz.storage.codec import dumps
from sagaz.storage.redis.encoding import MAX_TEXT, SagaTexts, step_document
from sagaz.storage.redis_schema import micros
from sagaz.types import SagaStatus, StepStatus
from tests.services import delete_redis_keys, unique_name

VALUES: list[Any] = [
    {"id": 1},
    {"id": True},
    {"id": 1.0},
    {"id": 0.0},
    {"id": -0.0},
    {"id": "1"},
    {"id": None},
    {"id": [1]},
    {"id": (1,)},
    {"id": {"id": 1}},
    {"$sagaz:bytes": "x"},
    {"raw": b"\x00"},
    {"at": datetime(2026, 1, 1, tzinfo=UTC)},
    {"b": 1, "a": 2},
    {"a": 2, "b": 1},
    [],
    "text",
]


def test_each_value_in_turn_gets_the_codecs_text() -> None:
    texts = SagaTexts()
    memo = texts.memo("s")
    for value in VALUES + VALUES[::-1]:
        assert texts.context(memo, value) == dumps(value)
        assert texts.event(memo, value) == dumps(value)


def test_a_context_changed_in_place_is_encoded_again() -> None:
    texts = SagaTexts()
    memo = texts.memo("s")
    context: dict[str, Any] = {"items": [1, 2], "n": 1}
    assert texts.context(memo, context) == dumps(context)
    context["items"].append(3)
    assert texts.context(memo, context) == '{"items":[1,2,3],"n":1}'
    context["n"] = True
    assert texts.context(memo, context) == '{"items":[1,2,3],"n":true}'


def test_an_unchanged_context_reuses_its_text() -> None:
    texts = SagaTexts()
    memo = texts.memo("s")
    first = texts.context(memo, {"id": 7})
    assert texts.context(memo, {"id": 7}) is first


def test_a_long_text_is_not_kept() -> None:
    texts = SagaTexts()
    memo = texts.memo("s")
    long = {"x": "y" * MAX_TEXT}
    assert texts.context(memo, long) == dumps(long)
    assert memo.context.snapshot is None and memo.context.text == ""
    assert texts.context(memo, {"id": 1}) == '{"id":1}'
    assert texts.context(memo, long) == dumps(long)


def test_the_cache_is_bounded_and_forgets() -> None:
    texts = SagaTexts(max_sagas=3)
    for n in range(10):
        texts.memo(f"s{n}")
    assert len(texts) == 3
    texts.forget("s9")
    texts.forget("unknown")
    assert len(texts) == 2


def test_moments_as_micros() -> None:
    texts = SagaTexts()
    memo = texts.memo("s")
    moment = datetime(2026, 1, 1, tzinfo=UTC)
    assert texts.created(memo, moment) == micros(moment)
    later = moment + timedelta(microseconds=1)
    assert texts.created(memo, later) == micros(later)
    assert texts.lease(memo, moment) == micros(moment)
    assert texts.lease(memo, later) == micros(later)


@pytest.mark.parametrize(
    "step",
    [
        StepRecord("s", "a", StepStatus.COMPLETED, {"x": b"\x01"}, None, 1, 3, None),
        StepRecord("s", "a", StepStatus.FAILED, None, "boom", 2, None, "undo failed"),
        StepRecord("s", "a", StepStatus.RUNNING),
        StepRecord('s\u00e9"\n', "\u6b65\\/", StepStatus.COMPENSATED, [1, 2.5], "\u00e9\t", 0, 0),
        StepRecord("s", "a", StepStatus.COMPENSATION_FAILED, {}, None, 1, None, "\u2028\x00"),
        StepRecord("s", "a", StepStatus.COMPLETED, {"a": {"b": [None, True, "\ud83d\ude00"]}}),
    ],
)
def test_a_step_document_is_the_codecs_text(step: StepRecord) -> None:
    fields = {
        "saga_id": step.saga_id,
        "name": step.name,
        "status": step.status.value,
        "result": step.result,
        "error": step.error,
        "attempts": step.attempts,
        "completed_seq": step.completed_seq,
        "compensation_error": step.compensation_error,
        "updated_at": "123",
    }
    assert step_document(step, "123") == dumps(fields)


@pytest.mark.parametrize("result", [{"x": float("nan")}, {"x": object()}])
def test_a_step_result_the_codec_refuses_is_refused(result: Any) -> None:
    with pytest.raises(StoreError, match="cannot store"):
        step_document(StepRecord("s", "a", StepStatus.COMPLETED, result), "1")


async def test_the_store_drops_a_sagas_texts_at_its_terminal_write(redis_url: str) -> None:
    from sagaz.storage.redis import RedisSagaStore

    prefix = unique_name("t-encoding")
    try:
        await _drops_texts_at_terminal_write(RedisSagaStore(redis_url, prefix=prefix))
    finally:
        await delete_redis_keys(redis_url, prefix)


async def _drops_texts_at_terminal_write(opened: Any) -> None:
    async with opened as store:
        context: dict[str, Any] = {"n": 1}
        record = SagaRecord("s1", "Demo", SagaStatus.PENDING, context, event={"id": 1})
        await store.create_saga(record)
        assert len(store._texts) == 1
        context["n"] = True  # changed in place: stored anew
        record.status = SagaStatus.RUNNING
        await store.save_checkpoint(record)
        stored = await store.get_saga("s1")
        assert stored is not None and stored.context == {"n": True}
        assert stored.context["n"] is True
        record.status = SagaStatus.COMPLETED
        await store.save_checkpoint(record)
        assert len(store._texts) == 0
        stored = await store.get_saga("s1")
        assert stored is not None and stored.event == {"id": 1}
        assert stored.status is SagaStatus.COMPLETED
