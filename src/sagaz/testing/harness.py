"""``TriggerTestHarness``: exercise a saga's triggers in pytest without any broker."""

from __future__ import annotations

import inspect
from types import TracebackType
from typing import Any, Self

from sagaz.config import TriggerConfig
from sagaz.engine.decoding import EventDecoder
from sagaz.events import AdmissionOutcome, Delivery, EventMeta, WebhookRequest, plain_data
from sagaz.saga.definition import Saga
from sagaz.saga.result import SagaResult
from sagaz.storage.memory import MemorySagaStore
from sagaz.triggers.registration import TriggerDefinition, TriggerRegistry

__all__ = ["TriggerTestHarness"]


def _envelope_body(event: Any) -> bytes | None:
    """A :class:`WebhookRequest` is an envelope, as the webhook source hands it in: a typed
    trigger method gets its body."""
    return event.body if isinstance(event, WebhookRequest) else None


class TriggerTestHarness:
    """Drive the ``@trigger`` methods of one saga in tests.

    >>> harness = TriggerTestHarness(ModelRetrainingSaga())  # doctest: +SKIP
    >>> event = DriftEvent(model_id="m", score=0.8)  # doctest: +SKIP
    >>> await harness.trigger("on_drift_detected", event)  # doctest: +SKIP
    {'model_id': 'm', 'reason': 'drift'}

    ``trigger()`` validates the event like the engine and calls the method: the context dict,
    or ``None`` when the method filters the event. ``run()`` sends the event through the real
    pipeline (inbox, queue, dispatcher, retries) on a :class:`MemorySagaStore` and returns the
    :class:`SagaResult` (``None`` when the event did not become a saga: see
    :attr:`last_admission`).
    """

    def __init__(
        self, saga: Saga, *, config: TriggerConfig | None = None, store: Any = None
    ) -> None:
        self.saga = saga
        self.config = config or TriggerConfig(shutdown_timeout=5)
        self.store = store or MemorySagaStore()
        self.last_admission: Any = None
        self._definitions = self._collect(type(saga))
        self._engine: Any = None

    @staticmethod
    def _collect(saga_cls: type[Saga]) -> dict[str, TriggerDefinition]:
        scratch = TriggerRegistry()  # not the global registry: abstract sagas work too
        return {d.method: d for d in scratch.register_saga(saga_cls) if "#" not in d.trigger_id}

    def _definition(self, method: str) -> TriggerDefinition:
        try:
            return self._definitions[method]
        except KeyError:
            raise KeyError(
                f"{type(self.saga).__qualname__} has no @trigger method {method!r}; "
                f"trigger methods: {sorted(self._definitions)}"
            ) from None

    async def trigger(
        self, method: str, event: Any, meta: EventMeta | None = None
    ) -> dict[str, Any] | None:
        """Validate ``event`` as the engine would and call the trigger method."""
        definition = self._definition(method)
        fn = getattr(self.saga, method)
        decoder = EventDecoder(fn, where=f"{type(self.saga).__qualname__}.{method}")
        meta = meta or EventMeta(source=definition.source, trigger=definition.trigger_id)
        decoded = decoder.decode(
            Delivery(
                payload=event,
                meta=meta,
                identity="",
                decoded=not isinstance(event, (bytes, str)),
                body=_envelope_body(event),
            )
        )
        result = fn(*decoder.arguments(decoded, meta))
        if inspect.isawaitable(result):
            result = await result
        return plain_data(result)  # type: ignore[no-any-return]

    async def run(
        self, method: str, event: Any, *, key: str = "", timeout: float = 30.0
    ) -> SagaResult | None:
        """Run ``event`` through the real pipeline and return the saga's result.

        ``key`` is the event's identity (as a broker message id would be): running the same
        key again is a duplicate. Without one each run is its own event."""
        from sagaz.engine.engine import TriggerEngine

        if self._engine is None:
            self._engine = TriggerEngine(
                self.config,
                self.store,
                triggers=list(self._definitions.values()),
                start_sources=False,
                sagas=[self.saga],  # its steps run on the instance under test
            )
            await self._engine.start()
        definition = self._definition(method)
        result = await self._engine.dispatch(
            definition.trigger_id,
            event,
            identity=key,
            body=_envelope_body(event),
        )
        self.last_admission = result
        if result.outcome is not AdmissionOutcome.ACCEPTED or result.saga_id is None:
            return None
        outcome = await self._engine.wait_for(result.saga_id, timeout)
        return outcome if isinstance(outcome, SagaResult) else None  # NotRun: interrupted

    async def close(self) -> None:
        """Stop the pipeline started by :meth:`run`."""
        if self._engine is not None:
            await self._engine.stop()
            self._engine = None

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
