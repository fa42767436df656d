"""How the engine finds and builds a source for a ``@trigger(source=...)``.

Each built-in source lives in its own module (``sagaz.sources.kafka``...) that exposes
``create(options, ctx) -> Source``: build the source when the engine starts, from the option
model validated when the saga class was defined (``sagaz.triggers.options.OPTION_MODELS``).
This is where the driver is imported, through :func:`sagaz._imports.require_extra`.
"""

from __future__ import annotations

import importlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, Protocol, cast

from sagaz.abc import SagaStore, Source
from sagaz.clock import Clock
from sagaz.config import TriggerConfig
from sagaz.triggers.options import SourceOptions

__all__ = [
    "SOURCE_MODULES",
    "SourceContext",
    "SourceModule",
    "load_source_module",
]

SOURCE_MODULES: dict[str, str] = {
    "memory": "sagaz.sources.memory",
    "custom": "sagaz.sources.poll",
    "kafka": "sagaz.sources.kafka",
    "rabbitmq": "sagaz.sources.rabbitmq",
    "redis": "sagaz.sources.redis",
    "sqs": "sagaz.sources.sqs",
    "cron": "sagaz.sources.cron",
    "webhook": "sagaz.sources.webhook",
    "file": "sagaz.sources.file",
}


@dataclass(slots=True)
class SourceContext:
    """What a source gets from the engine when it is created."""

    trigger_id: str
    saga_name: str
    config: TriggerConfig
    store: SagaStore
    clock: Clock
    worker_id: str
    #: log + ``on_trigger_error`` listeners; never raises
    report_error: Callable[[BaseException], Awaitable[None]]
    #: per-engine shared resources (e.g. the one webhook server of all webhook triggers)
    shared: dict[str, Any] = field(default_factory=dict)
    #: where a broker source publishes dead letters: the trigger's ``dead_letter_topic``,
    #: else ``TriggerConfig.dead_letter_topic`` (resolved by the engine); ``None``: nowhere
    dead_letter_topic: str | None = None


class SourceModule(Protocol):
    """The shape of a source module (see the module docstring)."""

    def create(self, options: SourceOptions, ctx: SourceContext) -> Source:
        """Build the source of one trigger from its validated options (its kind's model in
        ``OPTION_MODELS``); drivers are imported here, not at import time."""
        ...


def load_source_module(kind: str) -> SourceModule:
    """Import the module of a built-in source (drivers stay unimported)."""
    module: ModuleType = importlib.import_module(SOURCE_MODULES[kind])
    return cast(SourceModule, module)
