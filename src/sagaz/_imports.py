"""Lazy import of optional broker drivers with an install hint."""

from __future__ import annotations

import importlib
from types import ModuleType

from sagaz.exceptions import MissingExtraError

__all__ = ["EXTRAS", "require_extra"]

#: extra name -> the modules it provides
EXTRAS: dict[str, tuple[str, ...]] = {
    "kafka": ("aiokafka",),
    "rabbitmq": ("aio_pika",),
    "redis": ("redis",),
    "sqs": ("aiobotocore",),
    "webhook": ("starlette", "uvicorn"),
    "file": ("watchfiles",),
    "postgres": ("asyncpg",),
    "metrics": ("prometheus_client",),
    "otel": ("opentelemetry",),
    "dashboard": ("jinja2", "starlette", "uvicorn"),
}


def require_extra(extra: str, module: str | None = None) -> ModuleType:
    """Import ``module`` (default: the extra's first module) or raise :class:`MissingExtraError`.

    >>> aiokafka = require_extra("kafka")  # doctest: +SKIP
    """
    names = EXTRAS[extra]
    target = module or names[0]
    try:
        return importlib.import_module(target)
    except ImportError as exc:
        raise MissingExtraError(
            f"{target!r} is not installed, but it is needed for the {extra!r} feature. "
            f'Install it with: pip install "sagaz[{extra}]"'
        ) from exc
