"""A shared store in Redis, through ``redis.asyncio``.

>>> store = RedisSagaStore("redis://localhost:6379/0", prefix="myapp")  # doctest: +SKIP
>>> async with store: ...  # doctest: +SKIP

Each claim, and each write that must keep an index in step with its row, is one Lua script
(:mod:`sagaz.storage.redis_schema`), which Redis runs atomically. Every key starts with
``prefix:``, so several apps (or tests) can share a database. Written for a single Redis
primary (standalone or Sentinel); the scripts build some key names themselves, which Redis
Cluster does not allow. redis-py is imported when the store starts
(``pip install "sagaz[redis]"``).
"""

from __future__ import annotations

from sagaz.storage.redis.store import RedisSagaStore

__all__ = ["RedisSagaStore"]
