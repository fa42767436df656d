"""An unannotated trigger method gets a JSON object as :class:`EventData`: read-only, read by key
or by attribute, nested too, so both styles of the ADR work (``event["user_id"]``,
``event.user_id``, ``idempotency_key=lambda e: e.message_id``)."""

from __future__ import annotations

import copy
import json
import pickle
from pathlib import Path
from typing import Any

import pytest

from sagaz import Saga, SagaStatus, TriggerConfig, action, trigger
from sagaz.engine.decoding import EventDecoder
from sagaz.engine.engine import TriggerEngine
from sagaz.engine.identity import canonical_hash, storable
from sagaz.events import AdmissionOutcome, Delivery, EventData, EventMeta, Reason, plain_data
from sagaz.storage.sqlite import SQLiteSagaStore
from sagaz.testing import TriggerTestHarness
from sagaz.triggers import registry

ORDER = {
    "order_id": 7,
    "user_id": "u-1",
    "payload": {"sku": "A", "lines": [{"qty": 2}, {"qty": 3}], "tags": ["x"]},
}


def unannotated(payload: Any, *, decoded: bool = True, message_id: str | None = None) -> Any:
    def on_order(self: Any, event):
        return event

    meta = EventMeta(source="kafka", message_id=message_id)
    return EventDecoder(on_order, where="Shop.on_order").decode(
        Delivery(payload=payload, meta=meta, identity="k", decoded=decoded)
    )


@pytest.mark.parametrize("decoded", [True, False])
def test_a_json_object_reads_by_key_and_by_attribute_nested_too(decoded: bool) -> None:
    payload = ORDER if decoded else json.dumps(ORDER).encode()
    event = unannotated(payload, decoded=decoded)
    assert isinstance(event, EventData)
    assert (event["user_id"], event.user_id) == ("u-1", "u-1")
    assert (event["payload"]["sku"], event.payload.sku) == ("A", "A")
    assert [line.qty for line in event.payload.lines] == [2, 3]  # objects in lists too
    assert event.payload.tags == ["x"]
    assert event.get("missing") is None


def test_other_json_is_as_decoded() -> None:
    assert unannotated(b"[1, 2]", decoded=False) == [1, 2]
    assert unannotated(b"3", decoded=False) == 3
    assert unannotated(b"\xff not json", decoded=False) == b"\xff not json"


def test_a_missing_field_is_an_attribute_error_naming_the_fields_there_are() -> None:
    event = unannotated(ORDER)
    with pytest.raises(AttributeError, match=r"no field 'order'.*'order_id', 'user_id', 'payload'"):
        _ = event.order
    with pytest.raises(AttributeError, match=r"no field 'size'.*event.get\(\"size\"\).*'sku'"):
        _ = event.payload.size
    assert not hasattr(event, "order")
    assert getattr(event, "order", "default") == "default"


def test_it_is_read_only_and_a_copy_is_a_plain_dict() -> None:
    event = unannotated(ORDER)
    for change in (
        lambda: event.__setitem__("user_id", "u-2"),
        lambda: setattr(event, "user_id", "u-2"),
        lambda: event.update(user_id="u-2"),
        lambda: event.pop("user_id"),
        lambda: event.payload.__setitem__("sku", "B"),
    ):
        with pytest.raises(TypeError, match="an event is read-only: change a copy"):
            change()
    assert event == ORDER
    mine = dict(event)
    mine["user_id"] = "u-2"  # a plain dict to change
    deep = plain_data(event)
    assert type(deep["payload"]) is dict and type(deep["payload"]["lines"][0]) is dict
    assert deep == ORDER


def test_it_equals_and_serialises_as_the_plain_dict() -> None:
    event = unannotated(ORDER, message_id="orders:0:7")
    assert event == ORDER and dict(event) == ORDER
    assert json.loads(json.dumps(event)) == ORDER
    assert canonical_hash(event) == canonical_hash(ORDER)  # content dedup: the same key
    kept = storable(event)
    assert type(kept) is dict and kept == ORDER
    for again in (pickle.loads(pickle.dumps(event)), copy.deepcopy(event), copy.copy(event)):
        assert isinstance(again, EventData) and again == ORDER
        assert again.message_id == "orders:0:7"


def test_message_id_is_the_events_field_else_the_id_of_its_message() -> None:
    assert unannotated(ORDER, message_id="orders:0:7").message_id == "orders:0:7"
    own = {**ORDER, "message_id": "m-42"}
    assert unannotated(own, message_id="orders:0:7").message_id == "m-42"  # the field wins
    with pytest.raises(AttributeError, match=r"nor did its message carry an id.*'order_id'"):
        _ = unannotated(ORDER).message_id
    with pytest.raises(AttributeError, match="no field 'message_id'"):
        _ = unannotated(ORDER, message_id="orders:0:7").payload.message_id  # only the event's


def test_annotated_events_are_unchanged() -> None:
    def on_order(self: Any, event: dict[str, Any]) -> Any: ...

    event = EventDecoder(on_order, where="Shop.on_order").decode(
        Delivery(payload=ORDER, meta=EventMeta(source="kafka"), identity="k", decoded=True)
    )
    assert type(event) is dict


async def test_the_adr_attribute_style_runs_end_to_end_on_a_durable_store(
    tmp_path: Path,
) -> None:
    seen: list[tuple[str, Any]] = []

    class AttributeOrderSaga(Saga):
        saga_name = "event-data-orders"

        # the ADR's §6 and its semantic concurrency control, as written
        @trigger(
            source="kafka",
            topic="orders",
            idempotency_key=lambda e: seen.append(("idempotency", e)) or e.message_id,
            concurrency_key=lambda event: seen.append(("concurrency", event)) or event.user_id,
        )
        def on_order(self, event):
            seen.append(("method", event))
            return {"order_id": event.order_id, "user_id": event.user_id, "data": event.payload}

        @action("ship")
        async def ship(self, ctx: Any) -> dict[str, Any]:
            data = ctx["data"]
            data["shipped"] = True  # the context is plain data, as once read back from a store
            return {"data": data, "lines": len(ctx["data"]["lines"])}

    store = SQLiteSagaStore(tmp_path / "sagas.db")
    config = TriggerConfig(persist_events=True)
    trigger_id = "event-data-orders.on_order"
    meta = EventMeta(source="kafka", topic="orders", message_id="orders:0:7")
    async with TriggerEngine(
        config, store, triggers=registry.for_saga(AttributeOrderSaga), start_sources=False
    ) as engine:
        admitted = await engine.dispatch(trigger_id, ORDER, meta=meta)
        assert admitted.accepted, admitted.error
        result = await engine.wait_for(admitted.saga_id or "", timeout=10)
        again = await engine.dispatch(trigger_id, ORDER, meta=meta)  # redelivered message
        stored = await store.get_saga(admitted.saga_id or "")
    assert not isinstance(result, type(None)) and result
    assert result.status is SagaStatus.COMPLETED, result.error
    assert result.context["data"] == {**ORDER["payload"], "shipped": True}
    assert result.context["lines"] == 2
    assert again.outcome is AdmissionOutcome.DUPLICATE  # keyed by the message id
    assert stored is not None and stored.event == ORDER
    # the method and both key callables received the same object
    [(_, first), *rest] = seen[:3]
    assert {kind for kind, _ in seen[:3]} == {"idempotency", "concurrency", "method"}
    assert all(event is first for _, event in rest) and isinstance(first, EventData)


async def test_a_missing_field_dead_letters_with_the_fields_in_the_error(tmp_path: Path) -> None:
    class StrictOrderSaga(Saga):
        saga_name = "event-data-strict"

        @trigger(source="memory", channel="event-data-strict")
        def on_order(self, event):
            return {"order_id": event.order_id, "total": event.total}

        @action("noop")
        async def noop(self, ctx: Any) -> None:
            return None

    store = SQLiteSagaStore(tmp_path / "sagas.db")
    async with TriggerEngine(
        TriggerConfig(), store, triggers=registry.for_saga(StrictOrderSaga)
    ) as engine:
        # an event a saga received, sent on as it is: it is stored as the plain dict
        assert await engine.fire("event-data-strict", unannotated(ORDER)) == []
        [dead] = await store.list_dead_letters(trigger_id="event-data-strict.on_order")
    assert "AttributeError: the event has no field 'total'" in dead.error
    assert "'order_id', 'user_id', 'payload'" in dead.error
    assert dead.payload == ORDER and type(dead.payload) is dict
    assert "payload_approximate" not in dead.meta and dead.reason == Reason.INVALID.value


class HarnessOrderSaga(Saga):
    saga_name = "event-data-harness"

    @trigger(source="redis", stream="orders", concurrency_key=lambda event: event.user_id)
    def on_order(self, event):
        return {"order_id": event.order_id, "user_id": event.user_id, "data": event.payload}

    @action("noop")
    async def noop(self, ctx: Any) -> None:
        return None


async def test_the_harness_gives_the_same_event_and_a_plain_context() -> None:
    context = await TriggerTestHarness(HarnessOrderSaga()).trigger("on_order", ORDER)
    assert context == {"order_id": 7, "user_id": "u-1", "data": ORDER["payload"]}
    assert context is not None and type(context["data"]) is dict


class MessageKeyedSaga(Saga):
    saga_name = "event-data-message-keyed"

    @trigger(source="kafka", topic="orders", idempotency_key=lambda e: e.message_id)
    def on_order(self, event):
        return {"order_id": event.order_id}

    @action("noop")
    async def noop(self, ctx: Any) -> None:
        return None


async def test_the_harness_key_is_the_message_id_of_the_event() -> None:
    async with TriggerTestHarness(MessageKeyedSaga()) as harness:
        first = await harness.run("on_order", ORDER, key="orders:0:1")
        again = await harness.run("on_order", ORDER, key="orders:0:1")
        assert harness.last_admission.outcome is AdmissionOutcome.DUPLICATE
        other = await harness.run("on_order", ORDER, key="orders:0:2")
        unkeyed = await harness.run("on_order", ORDER)
        assert harness.last_admission.outcome is AdmissionOutcome.INVALID
        assert "nor did its message carry an id" in harness.last_admission.error
    assert first and other and first.saga_id != other.saga_id
    assert again is None and unkeyed is None
