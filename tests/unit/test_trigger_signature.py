"""A trigger method's signature is checked when its saga class is defined: an event type that
events cannot be validated into fails there, naming saga, method and what is supported."""

from __future__ import annotations

import textwrap
import types
from typing import Any

import pytest
from pydantic import BaseModel

from sagaz import EventData, EventMeta, Saga, TriggerConfig, trigger
from sagaz.engine.engine import TriggerEngine
from sagaz.exceptions import TriggerDefinitionError
from sagaz.storage.memory import MemorySagaStore
from sagaz.testing import TriggerTestHarness
from sagaz.triggers import registry


class PlainOrder:
    """A plain class: pydantic has no way to build one from a message."""

    def __init__(self, order_id: int) -> None:
        self.order_id = order_id


class Order(BaseModel):
    order_id: int


def test_an_event_type_pydantic_cannot_validate_fails_at_class_definition() -> None:
    with pytest.raises(TriggerDefinitionError) as excinfo:

        class PlainSaga(Saga):
            saga_name = "signature-plain"

            @trigger(source="kafka", topic="orders")
            def on_order(self, event: PlainOrder) -> dict[str, Any]:
                return {"order_id": event.order_id}

    message = str(excinfo.value)
    assert "PlainSaga.on_order (parameter 'event')" in message
    assert "PlainOrder" in message
    assert "a pydantic model, a dataclass or a TypedDict" in message  # what is supported
    assert "no annotation" in message
    assert "signature-plain.on_order" not in {t.trigger_id for t in registry.triggers()}


def test_a_container_of_a_plain_class_fails_too() -> None:
    with pytest.raises(TriggerDefinitionError, match=r"ListSaga\.on_orders.*PlainOrder"):

        class ListSaga(Saga):
            @trigger(source="memory", channel="signature-list")
            def on_orders(self, event: list[PlainOrder]) -> dict[str, Any]:
                return {}


def test_the_second_parameter_must_be_event_meta() -> None:
    with pytest.raises(TriggerDefinitionError, match="'meta' must be annotated EventMeta"):

        class MetaSaga(Saga):
            @trigger(source="memory", channel="signature-meta")
            def on_order(self, event: Order, meta: dict[str, Any]) -> dict[str, Any]:
                return {}


@pytest.mark.parametrize("annotation", [Order, dict[str, Any], EventData, Any, None])
def test_supported_annotations_are_accepted(annotation: Any) -> None:
    def on_order(self: Any, event: Any, meta: EventMeta) -> dict[str, Any]:
        return {}

    if annotation is None:
        del on_order.__annotations__["event"]
    else:
        on_order.__annotations__["event"] = annotation
    saga = type(
        "SupportedSaga", (Saga,), {"on_order": trigger(source="memory", channel="c")(on_order)}
    )
    assert [t.method for t in registry.for_saga(saga)] == ["on_order"]


async def test_an_event_annotated_event_data_gets_the_mapping() -> None:
    class MappingSaga(Saga):
        @trigger(source="memory", channel="signature-mapping")
        def on_order(self, event: EventData) -> dict[str, Any]:
            return {"order_id": event.order_id, "sku": event.line.sku}

    harness = TriggerTestHarness(MappingSaga())
    context = await harness.trigger("on_order", {"order_id": 1, "line": {"sku": "A"}})
    assert context == {"order_id": 1, "sku": "A"}


def module(name: str, code: str) -> types.ModuleType:
    """``code`` run as the module ``name`` (a file with its saga above its event type)."""
    mod = types.ModuleType(name)
    exec(compile(textwrap.dedent(code), f"<{name}>", "exec"), mod.__dict__)
    return mod


FORWARD = """
    from __future__ import annotations
    from typing import Any
    from pydantic import BaseModel
    from sagaz import Saga, action, trigger

    class ForwardSaga(Saga):
        saga_name = "signature-forward"

        @trigger(source="memory", channel="signature-forward")
        def on_order(self, event: {event_type}) -> dict[str, Any]:
            return {{"order_id": event.order_id}}

        @action("noop")
        async def noop(self, ctx: Any) -> None:
            return None

    {definition}
"""


async def test_a_forward_reference_to_a_type_defined_later_is_resolved_at_start() -> None:
    # the saga above its event model, in a module with postponed annotations: a normal layout
    mod = module(
        "signature_forward_ok",
        FORWARD.format(
            event_type="LaterOrder",
            definition="class LaterOrder(BaseModel):\n        order_id: int",
        ),
    )
    definitions = registry.for_saga(mod.ForwardSaga)
    async with TriggerEngine(TriggerConfig(), MemorySagaStore(), triggers=definitions) as engine:
        [saga_id] = await engine.fire("signature-forward", {"order_id": "5"})
        result = await engine.wait_for(saga_id, timeout=10)
    assert result and result.context == {"order_id": 5}  # validated into LaterOrder


@pytest.mark.parametrize(
    ("event_type", "definition", "error"),
    [
        (
            "LaterPlain",
            "class LaterPlain:\n        pass",
            "events cannot be validated into the event annotation LaterPlain",
        ),
        ("NeverDefined", "", "cannot resolve the type annotations.*NeverDefined"),
    ],
)
async def test_a_forward_reference_that_does_not_resolve_to_a_supported_type_fails_start(
    event_type: str, definition: str, error: str
) -> None:
    mod = module(
        f"signature_forward_{event_type.lower()}",
        FORWARD.format(event_type=event_type, definition=definition),
    )
    engine = TriggerEngine(
        TriggerConfig(), MemorySagaStore(), triggers=registry.for_saga(mod.ForwardSaga)
    )
    with pytest.raises(TriggerDefinitionError, match=rf"ForwardSaga\.on_order.*{error}"):
        await engine.start()
    assert not engine.running
