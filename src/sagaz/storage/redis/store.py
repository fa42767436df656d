"""The RedisSagaStore: its parts composed into one class."""

from __future__ import annotations

from sagaz.storage.redis.control import RedisControl
from sagaz.storage.redis.inbox import RedisInbox
from sagaz.storage.redis.leases import RedisLeases
from sagaz.storage.redis.outbox import RedisOutbox
from sagaz.storage.redis.retention import RedisRetention
from sagaz.storage.redis.sagas import RedisSagas
from sagaz.storage.redis.triggers import RedisTriggers
from sagaz.storage.unavailable import raises_unavailable

__all__ = ["RedisSagaStore"]


@raises_unavailable
class RedisSagaStore(
    RedisSagas,
    RedisInbox,
    RedisOutbox,
    RedisTriggers,
    RedisLeases,
    RedisControl,
    RedisRetention,
):
    """A :class:`~sagaz.abc.SagaStore` in Redis, shared by every instance of an app.

    ``prefix`` starts every key (default ``sagaz``). Every command goes through group commit
    (:mod:`sagaz.storage.redis_pipeline`): the commands concurrent sagas issue at the same
    time share one round trip, each caller getting its own reply or error. Connections come
    from a blocking pool of at most ``max_connections`` (default 8: group commit needs
    few); a command waits up to ``pool_timeout`` seconds (default 20) for one. Extra keyword
    arguments go to each connection (``socket_timeout``, ``client_name``...). A lost
    server (restarted, unreachable, still loading its data) makes operations raise
    :class:`~sagaz.exceptions.StoreUnavailableError`; redis-py reconnects on the next call, so
    the store works again once the server is back. What a restart keeps is the server's
    business: run Redis with ``appendonly yes`` (``appendfsync always`` to lose no write).
    """
