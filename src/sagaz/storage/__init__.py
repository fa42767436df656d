"""Saga stores behind the :class:`sagaz.abc.SagaStore` contract.

``MemorySagaStore`` (tests), ``SQLiteSagaStore`` (the embedded default), ``PostgresSagaStore``
(asyncpg, shared by many instances) and ``RedisSagaStore``. ``store_from_url()`` picks one from a
``SAGAZ_STORE_URL``-style address. The Postgres and Redis stores import their drivers lazily.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sagaz.storage.memory import MemorySagaStore
from sagaz.storage.url import store_from_url

if TYPE_CHECKING:
    from sagaz.storage.postgres import PostgresSagaStore
    from sagaz.storage.redis import RedisSagaStore
    from sagaz.storage.sqlite import SQLiteSagaStore

__all__ = [
    "MemorySagaStore",
    "PostgresSagaStore",
    "RedisSagaStore",
    "SQLiteSagaStore",
    "store_from_url",
]


def __getattr__(name: str) -> Any:
    if name == "SQLiteSagaStore":
        from sagaz.storage.sqlite import SQLiteSagaStore

        return SQLiteSagaStore
    if name == "PostgresSagaStore":
        from sagaz.storage.postgres import PostgresSagaStore

        return PostgresSagaStore
    if name == "RedisSagaStore":
        from sagaz.storage.redis import RedisSagaStore

        return RedisSagaStore
    raise AttributeError(f"module 'sagaz.storage' has no attribute {name!r}")
