"""The decoder goes by the method's annotation, the payload's type and what the source said its
payload is (``Delivery.decoded``, ``Delivery.body``), never by the source's name."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import BaseModel
from typing_extensions import TypedDict

from sagaz import Saga, TriggerConfig, action, trigger
from sagaz.engine.decoding import EventDecoder, InvalidPayloadError
from sagaz.engine.engine import TriggerEngine
from sagaz.events import AdmissionOutcome, CronTick, Delivery, EventMeta, WebhookRequest
from sagaz.storage.memory import MemorySagaStore


class Order(BaseModel):
    id: int


class OrderDict(TypedDict):
    id: int


@dataclass
class OrderData:
    id: int


def decoder(annotation: Any) -> EventDecoder:
    def method(self: Any, event: Any) -> None: ...

    if annotation is not None:
        method.__annotations__["event"] = annotation
    else:
        del method.__annotations__["event"]
    return EventDecoder(method, where="Shop.on_order")


def delivery(payload: Any, *, source: str = "anything", **fields: Any) -> Delivery:
    return Delivery(payload=payload, meta=EventMeta(source=source), identity="k", **fields)


# the envelope of a message queue (SQS-like: a mapping) under a source name the decoder never saw
MESSAGE = {"MessageId": "m-1", "Body": {"id": 3}}
ENVELOPE = delivery(MESSAGE, source="nats", decoded=True, body='{"id": 3}')


@pytest.mark.parametrize("annotation", [Order, OrderDict, OrderData])
def test_a_typed_method_gets_the_body_of_an_envelope_whatever_the_source(annotation: Any) -> None:
    event = decoder(annotation).decode(ENVELOPE)
    assert event == (annotation(id=3) if annotation is not OrderDict else {"id": 3})


@pytest.mark.parametrize("annotation", [None, dict[str, Any], dict])
def test_an_untyped_method_gets_a_mapping_envelope_whole(annotation: Any) -> None:
    assert decoder(annotation).decode(ENVELOPE)["MessageId"] == "m-1"


def test_the_same_mapping_without_a_body_is_the_event_itself() -> None:
    plain = delivery(MESSAGE, source="sqs", decoded=True)  # the name "sqs" changes nothing
    with pytest.raises(InvalidPayloadError, match="event does not match Order"):
        decoder(Order).decode(plain)
    assert decoder(dict[str, Any]).decode(plain) == MESSAGE


@pytest.mark.parametrize("annotation", [dict[str, Any], dict])
def test_a_dict_method_gets_its_own_shallow_copy_of_a_dict_event(annotation: Any) -> None:
    nested = {"sku": "A"}
    payload = {"id": 7, "line": nested}
    event = decoder(annotation).decode(delivery(payload, decoded=True))
    assert event == payload and type(event) is dict
    assert event is not payload and event["line"] is nested  # as pydantic copies it


def test_a_dict_event_with_a_key_that_is_not_a_string_is_still_refused() -> None:
    with pytest.raises(InvalidPayloadError, match="Input should be a valid string"):
        decoder(dict[str, Any]).decode(delivery({1: "a"}, decoded=True))


def request(body: bytes) -> WebhookRequest:
    return WebhookRequest("POST", "/orders", {}, {}, {}, body)


def test_an_object_envelope_goes_whole_to_its_own_type_and_its_body_to_any_other() -> None:
    req = request(b'{"id": 4}')
    envelope = delivery(req, source="http", decoded=True, body=req.body)
    assert decoder(None).decode(envelope) is req
    assert decoder(WebhookRequest).decode(envelope) is req
    assert decoder(Order).decode(envelope) == Order(id=4)
    assert decoder(dict[str, Any]).decode(envelope) == {"id": 4}  # not a mapping: its body


def test_an_empty_envelope_body_validates_as_null() -> None:
    envelope = delivery(request(b""), decoded=True, body=b"")
    with pytest.raises(InvalidPayloadError) as excinfo:
        decoder(Order).decode(envelope)
    assert excinfo.value.details[0]["loc"] == []


def test_raw_payloads_are_json_where_they_are_json() -> None:
    raw = json.dumps({"id": 5}).encode()
    assert decoder(None).decode(delivery(raw)) == {"id": 5}
    assert decoder(None).decode(delivery(b"\xff not json")) == b"\xff not json"
    assert decoder(Order).decode(delivery(raw)) == Order(id=5)
    assert decoder(OrderDict).decode(delivery(raw)) == {"id": 5}


@pytest.mark.parametrize(
    "raw",
    [
        b' {"id": 5}\n',  # whitespace around the value
        b"\xef\xbb\xbf" + b'{"id": 5}',  # a UTF-8 byte order mark
        '{"id": 5}'.encode("utf-16"),
        '{"id": 5}'.encode("utf-16-le"),
        '{"id": 5}'.encode("utf-32"),
        b'{"id": 5, "s": "\xed\xa0\x80"}',  # a lone surrogate, as json.loads takes it
        b"[5]",
        b"5",
        b"NaN",
    ],
)
def test_raw_json_bytes_decode_as_json_loads_decodes_them(raw: bytes) -> None:
    expected = json.loads(raw)
    event = decoder(None).decode(delivery(raw))
    assert event == expected or (expected != expected and event != event)  # NaN


@pytest.mark.parametrize("raw", [b'{"id": 5}x', b'{"id": 5}{"id": 6}', b"", b"\xff\xfe", b"{"])
def test_raw_bytes_that_json_loads_refuses_stay_bytes(raw: bytes) -> None:
    assert decoder(None).decode(delivery(raw)) == raw


def test_a_typed_dict_annotation_validates_a_decoded_payload() -> None:
    # a TypedDict has no instance check: asking isinstance() used to raise TypeError
    assert decoder(OrderDict).decode(delivery({"id": "6"}, decoded=True)) == {"id": 6}


TICK = CronTick(
    timestamp=0.0,
    scheduled_at=datetime(2024, 1, 1, tzinfo=UTC),
    fired_at=datetime(2024, 1, 1, tzinfo=UTC),
    schedule="@daily",
)


def test_a_source_event_object_goes_to_its_own_type_and_a_mismatch_names_it() -> None:
    tick = delivery(TICK, decoded=True)
    assert decoder(CronTick).decode(tick) is TICK
    assert decoder(None).decode(tick) is TICK
    with pytest.raises(InvalidPayloadError, match="source delivers a CronTick: annotate"):
        decoder(Order).decode(tick)


async def test_a_dead_lettered_envelope_keeps_its_body_for_the_replay() -> None:
    class Shop(Saga):
        saga_name = "decoding-shop"

        @trigger(source="memory", channel="decoding-orders")
        def on_order(self, event: Order) -> dict[str, Any]:
            return {"id": event.id}

        @action("ship")
        async def ship(self, ctx: Any) -> None:
            return None

    store = MemorySagaStore()
    trigger_id = "decoding-shop.on_order"
    async with TriggerEngine(TriggerConfig(), store) as engine:
        refused = await engine.dispatch(trigger_id, MESSAGE, body='{"id": "not a number"}')
        [dead] = await store.list_dead_letters(trigger_id=trigger_id)
        replayed = await engine.dispatch(trigger_id, dead.payload, body='{"id": 8}')
        result = await engine.wait_for(replayed.saga_id or "", timeout=10)
    assert refused.outcome is AdmissionOutcome.INVALID
    assert dead.payload == MESSAGE
    assert dead.meta["body"] == '{"id": "not a number"}'
    assert result is not None and result.context["id"] == 8
