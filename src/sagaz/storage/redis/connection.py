"""The connection of :class:`~sagaz.storage.redis.RedisSagaStore`: its lifecycle, the schema,
and the read and write paths that every part of the store shares.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar
from urllib.parse import quote, urlencode, urlsplit, urlunsplit

from sagaz._imports import require_extra
from sagaz._redis_pool import DEFAULT_POOL_TIMEOUT, blocking_pool
from sagaz.abc import SagaStore
from sagaz.exceptions import StoreError, StoreUnavailableError
from sagaz.records import SchemaVersions
from sagaz.storage import redis_schema as tables
from sagaz.storage.redis.encoding import SagaTexts
from sagaz.storage.redis_pipeline import grouped_client
from sagaz.storage.unavailable import unavailable_error
from sagaz.storage.url import redact_url

__all__ = ["RedisConnection"]

T = TypeVar("T")

_MAX_CONNECTIONS = 8  # group commit keeps at most two pipelines out (redis_pipeline)


class RedisConnection(SagaStore):
    """What every part of :class:`~sagaz.storage.redis.RedisSagaStore` shares: the connection,
    its lifecycle and the read and write paths (the operations are in the sibling modules).
    """

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "sagaz",
        max_connections: int = _MAX_CONNECTIONS,
        pool_timeout: float = DEFAULT_POOL_TIMEOUT,
        **client_options: Any,
    ) -> None:
        self.url = url
        self.prefix = prefix
        self.max_connections = max_connections
        self.pool_timeout = pool_timeout
        self._client_options = client_options
        self._client: Any = None
        self._scripts: dict[str, Any] = {}
        self._noscript: type[Exception] = Exception
        self._lifecycle_lock = asyncio.Lock()
        self._texts = SagaTexts()  # the sagas' unchanged texts, reused between their writes

    def __repr__(self) -> str:
        return f"RedisSagaStore({redact_url(self.url)!r}, prefix={self.prefix!r})"

    # -- lifecycle -------------------------------------------------------------------------
    async def start(self) -> None:
        """Connect, check the server answers, and record the key layout's version under a
        new prefix. Idempotent.

        An older layout raises :class:`~sagaz.exceptions.SchemaOutdatedError`: migrate it
        with ``sagaz db upgrade`` (:meth:`upgrade_schema`)."""
        async with self._lifecycle_lock:
            if self._client is not None:
                return
            redis = require_extra("redis", "redis.asyncio")
            client = grouped_client(self._pool(), translate=self._lost)
            try:
                await client.ping()
                await tables.migrate(client, self.prefix, url=self._store_url())
                # loaded now, in one round trip: else the first sagas' scripts all fail with
                # NOSCRIPT on a fresh server, and each caller loads its script again
                await asyncio.gather(*(client.script_load(s) for s in tables.SCRIPTS.values()))
            except BaseException as exc:
                await client.aclose()
                if isinstance(exc, OSError | redis.RedisError):
                    raise self._unreachable(exc) from exc
                raise
            self._scripts = {
                name: client.register_script(source) for name, source in tables.SCRIPTS.items()
            }
            self._noscript = require_extra("redis", "redis.exceptions").NoScriptError
            self._client = client
            self._started = True

    async def stop(self) -> None:
        """Send the queued commands, then close the connection pool. Idempotent."""
        async with self._lifecycle_lock:
            if self._client is not None:
                await self._client.groups.drain()
            client, self._client = self._client, None
            self._started = False
            if client is not None:
                await client.aclose()

    async def schema_version(self) -> int:
        """The key-layout version recorded in Redis."""
        return int(await self._db().get(self._key("schema_version")) or 0)

    def _store_url(self) -> str:
        """The store's URL with the password redacted, ``?prefix=`` included (messages)."""
        if self.prefix == "sagaz":
            return redact_url(self.url)
        parts = urlsplit(redact_url(self.url))
        query = "&".join(q for q in (parts.query, urlencode({"prefix": self.prefix})) if q)
        return urlunsplit(parts._replace(query=query))

    def _unreachable(self, exc: BaseException) -> StoreError:
        """The error for ``exc``: :class:`StoreUnavailableError` when the server cannot be
        reached (an outage the engine waits out), else :class:`StoreError`."""
        error = StoreUnavailableError if self._unavailable(exc) else StoreError
        return error(
            f"cannot use Redis at {redact_url(self.url)}: {exc}; check the URL "
            "(redis://host:6379/0) and that the server is up"
        )

    def _pool(self) -> Any:
        return blocking_pool(
            self.url,
            user=repr(self),
            max_connections=self.max_connections,
            timeout=self.pool_timeout,
            decode_responses=True,
            **{**self._client_options, "protocol": 2},  # group commit reads RESP2 itself
        )

    async def _one_client(self, use: Callable[[Any], Awaitable[T]]) -> T:
        """Run ``use`` on a client of its own (the store need not be started)."""
        redis = require_extra("redis", "redis.asyncio")
        client = grouped_client(self._pool())
        try:
            return await use(client)
        except (OSError, redis.RedisError) as exc:
            raise self._unreachable(exc) from exc
        finally:
            await client.aclose()

    async def schema_versions(self) -> SchemaVersions:
        return await self._one_client(lambda client: tables.read_versions(client, self.prefix))

    async def upgrade_schema(self) -> SchemaVersions:
        return await self._one_client(
            lambda client: tables.migrate(client, self.prefix, url=self._store_url(), upgrade=True)
        )

    def _lost(self, exc: Exception) -> Exception:
        """What a caller of a group that ``exc`` failed gets: :class:`StoreUnavailableError`
        for an outage, whichever operation it was in, else ``exc`` itself."""
        return unavailable_error(self, exc) if self._unavailable(exc) else exc

    def _unavailable(self, exc: BaseException) -> bool:
        """Whether ``exc`` says the server cannot be reached (see :mod:`sagaz.storage.unavailable`):
        refused, reset or timed-out connections, a server still loading its data."""
        if isinstance(exc, OSError):
            return True
        redis = sys.modules.get("redis.exceptions")
        # ConnectionError covers BusyLoadingError (a restarted server loading its data)
        return redis is not None and isinstance(exc, redis.ConnectionError | redis.TimeoutError)

    def _db(self) -> Any:
        if self._client is None:
            raise StoreError(
                f"{self!r} is not started: call await store.start() or use async with store"
            )
        return self._client

    async def _script(self, name: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
        """Run one of the store's Lua scripts (``EVALSHA``, loading it again should the
        server have lost it), in the next group of commands like any other."""
        db, script = self._db(), self._scripts[name]
        try:
            return await db.groups.submit_one(("EVALSHA", script.sha, len(keys), *keys, *args))
        except self._noscript:  # the server lost it (restarted, SCRIPT FLUSH): load it again
            script.sha = await db.script_load(script.script)
            return await db.evalsha(script.sha, len(keys), *keys, *args)

    def _key(self, *parts: str) -> str:
        return ":".join((self.prefix, *parts))

    def _inbox_key(self, trigger_id: str, key: str) -> str:
        # two free-form parts: quote them so ("a:b", "c") and ("a", "b:c") stay apart
        return self._key("inbox", quote(trigger_id, safe=""), quote(key, safe=""))

    def _open_executions_key(self, trigger_name: str, saga_id: str) -> str:
        return self._key("texec-open-saga", quote(trigger_name, safe=""), quote(saga_id, safe=""))
