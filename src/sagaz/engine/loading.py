"""How the engine finds and builds a source for a ``@trigger(source=...)``.

Each built-in source lives in its own module (``sagaz.sources.kafka``...) that exposes
``create(options, ctx) -> Source``: build the source when the engine starts, from the option
model validated when the saga class was defined (``sagaz.triggers.options.OPTION_MODELS``).
This is where the driver is imported, through :func:`sagaz._imports.require_extra`.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Protocol, cast

from sagaz.abc import Source, SourceContext
from sagaz.triggers.options import SourceOptions

__all__ = [
    "SOURCE_MODULES",
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
