"""The process-wide engine: what ``sagaz.start_triggers()`` starts and the functions that
reach it (``fire_event``, ``pause_trigger``, ``webhook_app``...).

>>> engine = await sagaz.start_triggers()  # doctest: +SKIP
>>> await sagaz.fire_event("orders", {"id": 1})  # doctest: +SKIP
>>> await sagaz.stop_triggers()  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from sagaz.abc import SagaStore
from sagaz.config import TriggerConfig, ensure_store
from sagaz.engine.instances import SagaFactory
from sagaz.engine.loading import load_source_module
from sagaz.engine.pausing import set_trigger_enabled
from sagaz.saga.definition import Saga
from sagaz.saga.listeners import SagaListener

if TYPE_CHECKING:
    from sagaz.engine.engine import TriggerEngine

__all__ = [
    "fire_event",
    "pause_trigger",
    "resume_trigger",
    "start_triggers",
    "stop_triggers",
    "webhook_app",
]

_engine: TriggerEngine | None = None
_pending_shared: dict[str, Any] = {}  # what webhook_app() prepares before start_triggers()


async def start_triggers(
    config: TriggerConfig | None = None,
    store: SagaStore | None = None,
    *,
    sagas: Iterable[Saga] = (),
    saga_factory: SagaFactory | None = None,
    listeners: Sequence[SagaListener] = (),
) -> TriggerEngine:
    """Start the process-wide engine for every registered trigger and return it.

    For a saga whose constructor takes arguments, give the instance, ``sagas=[OrderSaga(
    client)]``: it runs every event of its class, concurrently, so keep per-run state in the
    context, not on ``self``; or ``saga_factory=lambda cls: cls(client)``, called per run.
    Without either a saga class is built with no arguments (else ``ConfigurationError``).

    ``listeners`` hear about every trigger and saga of the engine, in addition to the
    ``listeners`` of each saga class (audit, metrics, tracing).
    """
    global _engine
    if _engine is not None and _engine.running:
        raise RuntimeError("triggers are already running; call `await sagaz.stop_triggers()` first")
    global _pending_shared
    from sagaz.engine.engine import TriggerEngine  # which imports this module

    engine = TriggerEngine(
        config,
        store,
        listeners=listeners,
        shared=_pending_shared,
        sagas=sagas,
        saga_factory=saga_factory,
    )
    _pending_shared = {}
    await engine.start()
    _engine = engine
    return engine


async def stop_triggers() -> None:
    """Stop the process-wide engine (graceful: stop intake, drain, ack, close)."""
    global _engine
    engine, _engine = _engine, None
    if engine is not None:
        await engine.stop()


async def fire_event(channel: str, event: Any) -> list[str]:
    """Send an in-process event to the ``source="memory"`` triggers on ``channel``; return
    the accepted saga ids. ``(await sagaz.start_triggers()).wait_for(saga_id)`` answers each
    with its ``SagaResult`` or a ``NotRun`` naming why it did not run (see
    :meth:`TriggerEngine.wait_for`)."""
    if _engine is None:
        raise RuntimeError("no trigger engine is running: `await sagaz.start_triggers()` first")
    return await _engine.fire(channel, event)


async def pause_trigger(trigger_id: str, *, store: SagaStore | None = None) -> None:
    """Pause a trigger in every engine on the store, within their
    ``trigger_state_interval_seconds``; a restart keeps it paused. No engine needs to run
    here: it is written to ``store`` (else the configured store, as ``start_triggers`` picks
    it). When the process-wide engine runs on that store it pauses the trigger at once.

    >>> await sagaz.pause_trigger("orders.on_order", store=store)  # doctest: +SKIP

    Raises :class:`~sagaz.exceptions.TriggerNotFoundError` for an id the store does not know.
    See :meth:`TriggerEngine.pause_trigger` for what a paused trigger does.
    """
    await _set_trigger_enabled(trigger_id, False, store)


async def resume_trigger(trigger_id: str, *, store: SagaStore | None = None) -> None:
    """Resume a paused trigger (see :func:`pause_trigger`)."""
    await _set_trigger_enabled(trigger_id, True, store)


async def _set_trigger_enabled(trigger_id: str, enabled: bool, store: SagaStore | None) -> None:
    engine = _engine
    if engine is not None and engine.running and store in (None, engine.store):
        await engine.pausing.set_enabled(trigger_id, enabled)
    else:
        await set_trigger_enabled(await ensure_store(store), trigger_id, enabled)


def webhook_app() -> Any:
    """The ASGI app of the webhook triggers, to mount in an existing Starlette/FastAPI app.

    Call it before or after ``start_triggers()``; once mounted, sagaz does not start its own
    uvicorn server (call it before ``start_triggers()`` for that).

    >>> app.mount("/hooks", sagaz.webhook_app())  # doctest: +SKIP
    """
    # The webhook module is loaded by its kind, as start() does; it keeps its server in the
    # resources the process-wide engine shares with its sources, which the engine never reads.
    webhook: Any = load_source_module("webhook")  # webhook_app() is its own, not the contract's
    shared = _engine.shared if _engine is not None else _pending_shared
    return webhook.webhook_app(shared)
