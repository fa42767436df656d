"""A trigger method that calls a method its unannotated event cannot have (ADR-025's
``event.is_valid()``) is refused when its saga class is defined, with the fix; what the
decoded event does have, an annotated event, or a source whose events can be any object, is
accepted."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import BaseModel

from sagaz import EventMeta, Saga, action, trigger
from sagaz.exceptions import TriggerDefinitionError
from sagaz.testing import TriggerTestHarness


class Event(BaseModel):
    valid: bool

    def is_valid(self) -> bool:
        return self.valid


def test_a_method_no_decoded_message_has_is_refused() -> None:
    with pytest.raises(TriggerDefinitionError) as refused:

        class Checked(Saga):
            @trigger(source="kafka", topic="events")
            def on_event(self, message):  # type: ignore[no-untyped-def]
                if not message.is_valid():
                    return None
                return {"id": message["id"]}

            @action("a")
            async def a(self, ctx: Any) -> None: ...

    text = str(refused.value)
    assert "Checked.on_event @trigger(source='kafka'): the method calls message.is_valid()" in text
    assert f"{__file__}:" in text  # where the call is
    assert "'message' has no type annotation" in text
    assert "sagaz.EventData" in text
    assert "def on_event(self, message: MyEvent)" in text


@pytest.mark.parametrize(
    ("source", "options", "delivered"),
    [
        ("rabbitmq", {"queue": "q"}, "sagaz.EventData"),
        ("redis", {"stream": "s"}, "sagaz.EventData"),
        ("sqs", {"queue_url": "http://127.0.0.1:1/q"}, "the SQS message"),
        ("webhook", {"path": "/hook"}, "WebhookRequest"),
        ("cron", {"schedule": "@daily"}, "CronTick"),
        ("file", {"path": "/tmp", "pattern": "*.csv"}, "FileEvent"),
    ],
)
def test_each_source_names_what_it_delivers(
    source: str, options: dict[str, Any], delivered: str
) -> None:
    with pytest.raises(TriggerDefinitionError, match=r"calls event\.is_valid\(\)") as refused:

        class Checked(Saga):
            @trigger(source=source, **options)
            def on_event(self, event):  # type: ignore[no-untyped-def]
                return {"ok": event.is_valid()}

            @action("a")
            async def a(self, ctx: Any) -> None: ...

    assert delivered in str(refused.value)


def test_what_the_decoded_event_has_is_accepted() -> None:
    class Plain(Saga):
        @trigger(source="kafka", topic="events")
        def on_event(self, event):  # type: ignore[no-untyped-def]
            keys = list(event.keys())  # EventData is a dict
            first = event.get("id")
            return {"keys": keys, "id": first, "text": event.decode() if keys == [] else ""}

        @trigger(source="webhook", path="/hook")
        def on_hook(self, request):  # type: ignore[no-untyped-def]
            return request.json()

        @trigger(source="cron", schedule="@daily")
        def on_tick(self, tick):  # type: ignore[no-untyped-def]
            return {"at": tick.scheduled_at.isoformat()}  # a call on a field, not the event

        @action("a")
        async def a(self, ctx: Any) -> None: ...

    assert Plain.saga_name == "plain"


def test_an_annotated_event_or_an_any_object_source_is_not_checked() -> None:
    class Annotated(Saga):
        @trigger(source="rabbitmq", queue="events")
        def on_event(self, event: Event, meta: EventMeta) -> dict[str, Any] | None:
            return {"ok": True} if event.is_valid() else None

        @trigger(source="memory", channel="events")  # fire_event may pass any object
        def on_fired(self, event):  # type: ignore[no-untyped-def]
            return {"ok": event.is_valid()}

        @action("a")
        async def a(self, ctx: Any) -> None: ...

    assert Annotated.saga_name == "annotated"


def test_an_event_rebound_in_the_method_is_not_checked() -> None:
    class Rebound(Saga):
        @trigger(source="kafka", topic="events")
        def on_event(self, event):  # type: ignore[no-untyped-def]
            event = Event.model_validate(dict(event))
            return {"ok": event.is_valid()}

        @action("a")
        async def a(self, ctx: Any) -> None: ...

    assert Rebound.saga_name == "rebound"


async def test_at_run_time_a_missing_field_says_an_event_has_no_methods() -> None:
    """``memory`` events are not checked at definition: a dict fired is ``EventData``, and
    its ``AttributeError`` says how to call methods on an event."""

    class Fired(Saga):
        @trigger(source="memory", channel="fired")
        def on_fired(self, event):  # type: ignore[no-untyped-def]
            return {"ok": event.is_valid()}

        @action("a")
        async def a(self, ctx: Any) -> None: ...

    with pytest.raises(AttributeError) as failed:
        await TriggerTestHarness(Fired()).trigger("on_fired", {"valid": True})
    text = str(failed.value)
    assert "the event has no field 'is_valid'" in text
    assert "annotate the trigger method's event with a pydantic model" in text
