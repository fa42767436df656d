"""Dead letters keep the delivery exactly, and a replay runs it again as the same saga.

The format tests put each kind of delivery a source hands in through a dead letter and the
durable stores' codec (JSON with bytes and datetime envelopes), and compare what a replay
rebuilds with the original, field by field. The replay tests run the pipeline in memory.
"""

from __future__ import annotations

import dataclasses
import sys
import textwrap
import uuid
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from pydantic import BaseModel

from sagaz import Saga, SagaContext, SagaStatus, TriggerConfig, action, trigger
from sagaz.engine.dead_letters import dead_letter_record, replay_delivery, saga_location
from sagaz.engine.engine import TriggerEngine
from sagaz.engine.pending import pending_delivery, pending_event
from sagaz.engine.replay import import_saga, replay
from sagaz.events import CronTick, Delivery, EventMeta, FileEvent, WebhookRequest
from sagaz.exceptions import DeadLetterReplayError, InvalidEventError
from sagaz.records import DeadLetterRecord, SagaRecord
from sagaz.storage.codec import dumps, loads
from sagaz.storage.memory import MemorySagaStore
from sagaz.triggers import registry

RECEIVED = datetime(2026, 3, 1, 12, 30, 15, 123456, tzinfo=UTC)


class OrderPlaced(BaseModel):
    order_id: str
    amount: float
    placed_at: datetime


@dataclasses.dataclass(frozen=True)
class Refund:
    refund_id: uuid.UUID
    amount: Decimal


class Opaque:
    """An event object sagaz cannot store (neither JSON, nor a model, nor a dataclass)."""

    def __init__(self) -> None:
        self.handle = object()


def meta(source: str, **fields: Any) -> EventMeta:
    return EventMeta(source=source, trigger="shop.on_event", received_at=RECEIVED, **fields)


# What each source hands in (see the sources' own delivery-building functions).
DELIVERIES: dict[str, Delivery] = {
    "kafka": Delivery(
        b'{"order_id": "k-1", "amount": 5}',
        meta(
            "kafka",
            message_id="orders:2:41",
            topic="orders",
            partition=2,
            offset=41,
            key="user-7",
            headers={"trace": "abc", "empty": ""},
        ),
        "orders/2/41",
    ),
    "kafka-binary": Delivery(
        b"\x00\xff not json",
        meta("kafka", topic="orders", partition=0, offset=1, key=b"\x01\x02"),
        "orders/0/1",
    ),
    "rabbitmq": Delivery(
        b'{"order_id": "r-1"}',
        meta("rabbitmq", message_id="m-1", topic="q", key="rk", headers={"x": "1"}, attempt=3),
        "m-1",
    ),
    "redis-fields": Delivery(
        {"order_id": "x-1", "amount": "5"},
        meta("redis", message_id="1-0", topic="stream"),
        "stream/1-0",
        decoded=True,
    ),
    "sqs": Delivery(
        {"MessageId": "s-1", "Body": {"order_id": "s-1"}, "Attributes": {"A": "1"}},
        meta("sqs", message_id="s-1", topic="http://q", headers={"h": "v"}, attempt=2),
        "s-1",
        decoded=True,
        body='{"order_id": "s-1"}',
    ),
    "sqs-not-json": Delivery(
        {"MessageId": "s-2", "Body": "plain text"},
        meta("sqs", message_id="s-2"),
        "s-2",
        decoded=True,
        body="plain text",
    ),
    "cron": Delivery(
        CronTick(
            timestamp=RECEIVED.timestamp(),
            scheduled_at=RECEIVED.astimezone(ZoneInfo("Europe/Paris")),
            fired_at=RECEIVED,
            schedule="30 13 * * *",
        ),
        meta("cron", message_id="shop.on_event@2026-03-01T12:30:15"),
        "shop.on_event@2026-03-01T12:30:15",
        decoded=True,
    ),
    "file": Delivery(
        FileEvent(path="/in/a.json", size=12, event_type="created", mtime=1767225600.123456789),
        meta("file", message_id="/in/a.json:1:12", topic="/in"),
        "/in/a.json:1:12",
        decoded=True,
    ),
    "webhook": Delivery(
        WebhookRequest(
            method="POST",
            path="/orders/7",
            path_params={"id": "7"},
            query_params={"dry": "1"},
            headers={"content-type": "application/json", "x-trace": "abc"},
            body=b'{"order_id": "w-1", "amount": 4200}',
        ),
        meta("webhook", message_id="hex", topic="/orders/{id}", headers={"x-trace": "abc"}),
        "sha256:abc",
        decoded=True,
        body=b'{"order_id": "w-1", "amount": 4200}',
    ),
    "memory-model": Delivery(
        OrderPlaced(order_id="m-1", amount=2.5, placed_at=RECEIVED),
        meta("memory", topic="orders"),
        "",
        decoded=True,
    ),
    "memory-dataclass": Delivery(
        Refund(uuid.UUID(int=7), Decimal("10.10")), meta("memory"), "", decoded=True
    ),
    "memory-scalar": Delivery("just text", meta("memory"), "", decoded=True),
    "poll": Delivery(
        {"n": 1, "nested": {"at": RECEIVED, "raw": b"\x00"}},
        meta("custom", topic="health"),
        "health:1f",
        decoded=True,
    ),
}


class Shop(Saga):
    saga_name = "dead-letter-format-shop"


def stub_trigger() -> Any:
    return SimpleNamespace(trigger_id="shop.on_event", saga_name="shop", saga=Shop.__new__(Shop))


def through_a_store(record: DeadLetterRecord) -> DeadLetterRecord:
    """What a durable store gives back (JSON text with the codec's envelopes)."""
    return dataclasses.replace(
        record, payload=loads(dumps(record.payload)), meta=loads(dumps(record.meta)), id=9
    )


def assert_same_delivery(again: Delivery, original: Delivery) -> None:
    """``again`` (rebuilt from a dead letter or a pending row) is ``original``: its payload,
    of the same type, its metadata, identity, decoding and envelope body."""
    assert type(again.payload) is type(original.payload)
    assert again.payload == original.payload
    assert again.meta == original.meta
    assert (again.identity, again.decoded, again.body) == (
        original.identity,
        original.decoded,
        original.body,
    )


@pytest.mark.parametrize("kind", sorted(DELIVERIES))
def test_a_replay_gets_back_the_delivery_that_was_dead_lettered(kind: str) -> None:
    original = DELIVERIES[kind]
    record = dead_letter_record(
        stub_trigger(), original, reason="retries_exhausted", error="boom", attempts=1, saga_id="s"
    )
    stored = through_a_store(record)
    again = replay_delivery(stored)

    assert_same_delivery(again, original)
    assert type(again.body) is type(original.body)
    assert again.replay_of == 9
    assert stored.meta["saga_module"] == __name__
    assert stored.meta["saga_qualname"] == "Shop"


def test_raw_bytes_are_stored_as_bytes_and_a_webhook_body_once() -> None:
    kafka = dead_letter_record(
        stub_trigger(), DELIVERIES["kafka"], reason="r", error="e", attempts=1, saga_id=None
    )
    assert through_a_store(kafka).payload == b'{"order_id": "k-1", "amount": 5}'
    webhook = through_a_store(
        dead_letter_record(
            stub_trigger(), DELIVERIES["webhook"], reason="r", error="e", attempts=1, saga_id=None
        )
    )
    assert webhook.payload["body"] == b'{"order_id": "w-1", "amount": 4200}'
    assert webhook.meta["payload_type"] == "sagaz.events:WebhookRequest"
    assert "body" not in webhook.meta and webhook.meta["body_field"] == "body"


def test_a_cron_tick_keeps_its_time_zone() -> None:
    record = dead_letter_record(
        stub_trigger(), DELIVERIES["cron"], reason="r", error="e", attempts=1, saga_id=None
    )
    tick = replay_delivery(through_a_store(record)).payload
    assert tick.scheduled_at.tzinfo == ZoneInfo("Europe/Paris")
    assert tick.scheduled_at.isoformat() == "2026-03-01T13:30:15.123456+01:00"


def test_an_event_sagaz_cannot_store_is_described_and_its_replay_says_why_not() -> None:
    delivery = Delivery(Opaque(), meta("memory"), "", decoded=True)
    record = through_a_store(
        dead_letter_record(stub_trigger(), delivery, reason="r", error="e", attempts=1, saga_id="s")
    )
    assert record.meta["payload_type"] == "unstorable"
    assert "Opaque object" in record.payload
    with pytest.raises(DeadLetterReplayError, match="cannot be replayed; send the event again"):
        replay_delivery(record)


def test_a_saga_resumed_by_recovery_has_no_delivery_to_replay_and_says_so() -> None:
    delivery = Delivery({"n": 1}, EventMeta(source="recovery"), "", decoded=True)
    record = through_a_store(
        dead_letter_record(stub_trigger(), delivery, reason="r", error="e", attempts=2, saga_id="s")
    )
    with pytest.raises(DeadLetterReplayError, match="resumed after its worker stopped"):
        replay_delivery(record)


def test_plain_data_json_cannot_hold_is_kept_as_close_as_it_gets_and_flagged() -> None:
    delivery = Delivery({"amount": Decimal("1.5"), "tags": {"a"}}, meta("memory"), "", decoded=True)
    record = through_a_store(
        dead_letter_record(stub_trigger(), delivery, reason="r", error="e", attempts=1, saga_id="s")
    )
    assert record.payload == {"amount": "1.5", "tags": ["a"]}
    assert record.meta["payload_approximate"] is True


@pytest.mark.parametrize(
    ("payload", "flagged"),
    [
        ({"id": 1, "name": "x", "ok": True, "none": None}, False),  # flat: kept as it is
        ({"id": 1, "ratio": float("nan")}, True),  # a float the stores cannot keep exactly
        ({1: "x"}, True),  # a key JSON cannot hold
        ({"id": 1, "when": Decimal("2")}, True),  # a value JSON cannot hold
        ({"id": 1, "nested": {"a": float("inf")}}, True),
    ],
)
def test_a_flat_event_is_kept_as_it_is_and_anything_else_checked_in_full(
    payload: dict[Any, Any], flagged: bool
) -> None:
    delivery = Delivery(payload, meta("memory"), "", decoded=True)
    record = dead_letter_record(
        stub_trigger(), delivery, reason="r", error="e", attempts=1, saga_id="s"
    )
    assert record.meta.get("payload_approximate", False) is flagged
    if not flagged:
        assert record.payload is payload


def test_a_legacy_dead_letter_replays_its_payload_with_identity_and_body() -> None:
    record = DeadLetterRecord(
        trigger_id="shop.on_event",
        saga_name="shop",
        payload={"MessageId": "m", "Body": {"n": 7}},
        error="e",
        reason="r",
        source="sqs",
        meta={"message_id": "m", "identity": "m", "body": '{"n": 7}'},
        id=3,
    )
    delivery = replay_delivery(record)
    assert (delivery.payload, delivery.identity, delivery.body) == (record.payload, "m", '{"n": 7}')
    assert delivery.decoded and delivery.replay_of == 3 and delivery.meta.source == "sqs"


def test_saga_location_names_module_qualname_and_file() -> None:
    assert saga_location(Shop) == {
        "saga_module": __name__,
        "saga_qualname": "Shop",
        "saga_file": str(Path(__file__).resolve()),
    }


# -- replay through the pipeline -------------------------------------------------------------
@dataclasses.dataclass
class Flaky:
    """A shop whose charge fails while ``broken``; ``charges`` counts the charge step's runs."""

    broken: bool = True
    charges: int = 0
    transform_fails: bool = False

    @property
    def trigger_id(self) -> str:
        return "flaky-shop.on_order"


def define_flaky(flaky: Flaky) -> type[Saga]:
    class FlakyShop(Saga):
        saga_name = "flaky-shop"

        @trigger(source="memory", channel="flaky-orders")
        def on_order(self, event: OrderPlaced) -> dict[str, Any]:
            if flaky.transform_fails:
                raise InvalidEventError("the trigger method has a bug")
            return {"order_id": event.order_id, "amount": event.amount}

        @action("charge")
        async def charge(self, ctx: SagaContext) -> dict[str, Any]:
            flaky.charges += 1
            if flaky.broken:
                raise RuntimeError("card declined")
            return {"charged": ctx["amount"]}

    return FlakyShop


ORDER = OrderPlaced(order_id="o-1", amount=4200.0, placed_at=RECEIVED)
NO_RETRIES = TriggerConfig(max_retries=0)


async def dead_lettered(store: MemorySagaStore, flaky: Flaky) -> DeadLetterRecord:
    async with TriggerEngine(NO_RETRIES, store) as engine:
        [saga_id] = await engine.fire("flaky-orders", ORDER) or [None]
        if saga_id is not None:
            await engine.wait_for(saga_id, timeout=10)
    [dead] = await store.list_dead_letters()
    return dead


async def test_a_fixed_cause_replays_to_the_same_saga_completed_and_the_dead_letter_goes() -> None:
    flaky = Flaky()
    define_flaky(flaky)
    store = MemorySagaStore()
    dead = await dead_lettered(store, flaky)
    failed = await store.get_saga(dead.saga_id or "")
    assert failed is not None and failed.status is SagaStatus.COMPENSATED
    assert dead.payload == ORDER.model_dump() and dead.meta["payload_type"].endswith(":OrderPlaced")

    flaky.broken = False
    outcome = await replay(store, dead, config=NO_RETRIES, timeout=10)

    assert (outcome.status, outcome.saga_id, outcome.settled) == ("completed", dead.saga_id, True)
    saga = await store.get_saga(dead.saga_id or "")
    assert saga is not None and saga.status is SagaStatus.COMPLETED
    assert saga.attempt == 2 and saga.context["charged"] == 4200.0
    assert await store.list_dead_letters() == []
    assert flaky.charges == 2

    # the same dead letter once more (a stale copy): the saga completed, nothing runs again
    outcome = await replay(store, dead, config=NO_RETRIES, timeout=10)
    assert (outcome.status, outcome.saga_id, outcome.settled) == ("duplicate", dead.saga_id, True)
    assert flaky.charges == 2


async def test_a_replay_that_fails_again_leaves_one_dead_letter_naming_the_old_one() -> None:
    flaky = Flaky()
    define_flaky(flaky)
    store = MemorySagaStore()
    dead = await dead_lettered(store, flaky)

    outcome = await replay(store, dead, config=NO_RETRIES, timeout=10)

    assert (outcome.status, outcome.saga_id) == ("compensated", dead.saga_id)
    assert not outcome.settled
    assert outcome.error is not None and "card declined" in outcome.error
    [again] = await store.list_dead_letters()
    assert again.id == outcome.dead_letter_id and again.id != dead.id
    assert again.meta["replay_of"] == dead.id
    assert again.saga_id == dead.saga_id and again.payload == dead.payload
    saga = await store.get_saga(dead.saga_id or "")
    assert saga is not None and saga.attempt == 2


async def test_an_event_the_trigger_method_rejected_replays_once_the_method_is_fixed() -> None:
    flaky = Flaky(broken=False, transform_fails=True)
    define_flaky(flaky)
    store = MemorySagaStore()
    dead = await dead_lettered(store, flaky)
    assert dead.reason == "invalid"

    flaky.transform_fails = False
    outcome = await replay(store, dead, timeout=10)

    assert outcome.status == "completed"
    assert dead.saga_id is not None and outcome.saga_id == dead.saga_id
    assert await store.list_dead_letters() == []


async def test_a_replay_leaves_the_applications_interrupted_sagas_alone() -> None:
    """The replay's engine is no worker of the application: it resumes no other saga, even
    one of the same trigger whose worker's lease expired (the application recovers it)."""
    flaky = Flaky()
    define_flaky(flaky)
    store = MemorySagaStore()
    dead = await dead_lettered(store, flaky)
    interrupted = SagaRecord(
        saga_id="interrupted",
        saga_name="flaky-shop",
        status=SagaStatus.RUNNING,
        context={"order_id": "o-2", "amount": 1.0},
        trigger_id=flaky.trigger_id,
        owner="a-dead-worker",
        lease_expires_at=datetime(2020, 1, 1, tzinfo=UTC),
    )
    await store.create_saga(interrupted)

    flaky.broken = False
    assert (await replay(store, dead, timeout=10)).status == "completed"

    untouched = await store.get_saga("interrupted")
    assert untouched is not None
    assert (untouched.status, untouched.owner) == (SagaStatus.RUNNING, "a-dead-worker")
    assert flaky.charges == 2  # the dead letter's saga twice, the interrupted one never


async def test_a_replay_needs_its_trigger_registered() -> None:
    flaky = Flaky()
    define_flaky(flaky)
    store = MemorySagaStore()
    dead = await dead_lettered(store, flaky)
    registry.clear()
    with pytest.raises(DeadLetterReplayError, match=r"flaky-shop\.on_order"):
        await replay(store, dead)
    assert await store.list_dead_letters() == [dead]


# -- finding the saga's module ---------------------------------------------------------------
APP = textwrap.dedent(
    """
    from sagaz import Saga, action, trigger

    class AppSaga(Saga):
        saga_name = "import-app"

        @trigger(source="memory", channel="import-app")
        def on_event(self, event: dict) -> dict:
            return dict(event)

        @action("one")
        async def one(self, ctx) -> None:
            return None

    if __name__ == "__main__":
        raise SystemExit("the script's main block must not run on replay")
    """
)


def record_of(**meta: Any) -> DeadLetterRecord:
    return DeadLetterRecord(
        trigger_id="import-app.on_event", saga_name="import-app", payload={}, error="e",
        reason="r", meta={"format": 2, **meta}, id=4,
    )  # fmt: skip


@pytest.fixture
def app_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    package = tmp_path / "shopapp"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "sagas.py").write_text(APP)
    (tmp_path / "app.py").write_text(APP)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # not where the application imports from
    monkeypatch.setattr(sys, "path", list(sys.path))
    for name in ("shopapp", "shopapp.sagas", "app"):
        sys.modules.pop(name, None)
    yield tmp_path
    for name in ("shopapp", "shopapp.sagas", "app"):
        sys.modules.pop(name, None)


def test_the_stored_module_is_imported_from_where_it_was_found(app_dir: Path) -> None:
    record = record_of(saga_module="shopapp.sagas", saga_file=str(app_dir / "shopapp/sagas.py"))
    assert import_saga(record) == {}
    assert registry.get("import-app.on_event").saga_cls.__module__ == "shopapp.sagas"


def test_a_script_saga_is_imported_from_its_file_without_running_its_main_block(
    app_dir: Path,
) -> None:
    record = record_of(saga_module="__main__", saga_file=str(app_dir / "app.py"))
    assert import_saga(record) == {"__main__": "app"}
    assert registry.get("import-app.on_event").saga_cls.__module__ == "app"


def test_modules_given_are_imported_instead(app_dir: Path) -> None:
    record = record_of(saga_module="nowhere.at.all")
    assert import_saga(record, [str(app_dir / "app.py")]) == {"__main__": "app"}


@pytest.mark.parametrize(
    ("meta", "message"),
    [
        ({"saga_module": "nowhere_app.sagas"}, "'nowhere_app.sagas', which cannot be imported"),
        ({}, "was stored without its saga's module"),
        ({"saga_module": "__main__", "saga_file": "/gone/app.py"}, "is not there any more"),
        ({"saga_module": "json"}, "which importing json did not register"),
    ],
)
def test_what_cannot_be_imported_says_what_to_pass(
    app_dir: Path, meta: dict[str, Any], message: str
) -> None:
    with pytest.raises(DeadLetterReplayError, match=message) as caught:
        import_saga(record_of(**meta))
    assert "--modules" in str(caught.value)


@pytest.mark.parametrize("kind", sorted(DELIVERIES))
def test_a_pending_saga_keeps_its_delivery_as_a_dead_letter_does(kind: str) -> None:
    """Admission's pending row keeps a non-redeliverable delivery (recovery runs the trigger
    method again from it): the same delivery comes back from a durable store."""
    original = DELIVERIES[kind]
    kept = loads(dumps(pending_event("shop.on_event", original)))
    saga = SagaRecord("s", "shop", SagaStatus.PENDING, {}, trigger_id="shop.on_event", event=kept)
    again = pending_delivery(saga)

    assert again is not None
    assert_same_delivery(again, original)
    assert again.replay_of is None


def test_a_pending_saga_without_a_kept_delivery_has_none() -> None:
    """A pending row of an older sagaz (its context stored) or a ``persist_events`` event."""
    for event in (None, {"id": 1}, "text", {"sagaz_pending_event": 99, "meta": {}}):
        saga = SagaRecord("s", "shop", SagaStatus.PENDING, {"id": 1}, event=event)
        assert pending_delivery(saga) is None
