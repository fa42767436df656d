"""How the engine finds and builds a source for a ``@trigger(source=...)``.

Each built-in source lives in its own module (``sagaz.sources.kafka.source``...) that exposes:

* ``OPTIONS``: the ``@trigger`` options it accepts (besides the pipeline options),
* ``REQUIRED``: the options it cannot do without,
* ``validate(options)``: extra checks at class-definition time (raise ``ValueError``),
  which must not import the broker driver,
* ``create(options, ctx) -> Source``: build the source when the engine starts
  (this is where the driver is imported, through :func:`sagaz._imports.require_extra`);
  ``ctx`` is a :class:`sagaz.abc.SourceContext`, all a source gets from the engine.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from types import ModuleType
from typing import Any, Protocol, cast

from sagaz.abc import Source, SourceContext

__all__ = [
    "PIPELINE_OPTIONS",
    "SOURCE_MODULES",
    "SourceModule",
    "load_source_module",
]

#: options handled by the pipeline for every source
PIPELINE_OPTIONS = frozenset(
    {
        "idempotency_key",
        "dedup",
        "concurrency_key",
        "max_concurrent_sagas",
        "rate_limit_per_second",
        "max_retries",
        "retry_backoff_seconds",
        "dead_letter_topic",
        "persist_events",
        "enabled",
    }
)

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


class SourceModule(Protocol):
    """The shape of a source module (see the module docstring)."""

    OPTIONS: frozenset[str]
    REQUIRED: frozenset[str]

    def validate(self, options: Mapping[str, Any]) -> None:
        """Check the trigger's options at class definition; raise ``ValueError`` naming the
        option and what to fix."""
        ...

    def create(self, options: Mapping[str, Any], ctx: SourceContext) -> Source:
        """Build the source of one trigger (drivers are imported here, not at import time)."""
        ...


def load_source_module(kind: str) -> SourceModule:
    """Import the module of a built-in source (drivers stay unimported)."""
    module: ModuleType = importlib.import_module(SOURCE_MODULES[kind])
    return cast(SourceModule, module)
