"""Process-wide defaults: which store ``Saga.run()`` and the engine use when none is given.

Order: an explicit ``store=`` argument, else :func:`configure`, else ``SAGAZ_STORE_URL``,
else a process-wide :class:`~sagaz.storage.memory.MemorySagaStore` (not durable).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sagaz.abc import SagaStore

__all__ = ["configure", "ensure_store", "reset_configuration", "resolve_store"]

_configured: SagaStore | None = None
_from_env: SagaStore | None = None


def configure(*, store: SagaStore | None = None) -> None:
    """Set the default store of this process.

    >>> sagaz.configure(store=SQLiteSagaStore("sagaz.db"))  # doctest: +SKIP
    """
    global _configured
    _configured = store


def reset_configuration() -> None:
    """Forget :func:`configure` and the environment-derived store (tests)."""
    global _configured, _from_env
    _configured = None
    _from_env = None


def resolve_store(store: SagaStore | None = None) -> SagaStore:
    """The store to use; see the module docstring for the order."""
    global _from_env
    if store is not None:
        return store
    if _configured is not None:
        return _configured
    if _from_env is None:
        from sagaz.storage.memory import MemorySagaStore

        url = os.environ.get("SAGAZ_STORE_URL")
        if url:
            from sagaz.storage.url import store_from_url

            _from_env = store_from_url(url)
        else:
            _from_env = MemorySagaStore()
    return _from_env


async def ensure_store(store: SagaStore | None = None) -> SagaStore:
    """Like :func:`resolve_store`, and start an implicit (configured or environment) store.

    An explicit ``store=`` is the caller's to start and stop.
    """
    resolved = resolve_store(store)
    if store is None and not getattr(resolved, "_started", False):
        await resolved.start()
    return resolved
