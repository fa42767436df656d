"""The key layout of :class:`~sagaz.storage.redis.RedisSagaStore`: its version, how a saga hash
maps to a record; the Lua scripts that change it are in :mod:`sagaz.storage.redis_scripts`
(:data:`SCRIPTS`, re-exported here).

Redis runs a script atomically, so every claim and every change that keeps an index in step
with its row is one script. Key layout under the prefix ``p`` (``ARGV[1]`` of every script):

``p:saga:<id>`` hash of a saga (its ``recoveries`` of attempt ``recovery_of``: fields
of ``take_over_saga``'s, absent until the first takeover, so no layout change);
``p:sagas`` / ``p:sagas-active`` / ``p:sagas-status:<status>`` / ``p:sagas-name:<name>``
sorted sets of saga ids scored by insertion order (``p:saga-seq``);
``p:sagas-events`` terminal sagas with a stored event, scored by ``updated_at``;
``p:sagas-finished`` every terminal saga, scored by ``updated_at`` (layout 7, ``purge_sagas``);
``p:owner-sagas:<owner>`` / ``p:owner-inbox:<owner>`` what a worker holds (lease renewal);
``p:steps:<id>`` hash step name → JSON; ``p:inbox:<trigger>:<key>`` hash of an inbox row
(both parts URL-quoted); ``p:inbox-completed`` completed rows scored by ``completed_at``;
``p:outbox:<id>`` hash, ``p:outbox-unsent`` sorted set of unsent ids, ``p:outbox-saga:<saga>``
sorted set of one saga's outbox ids (written with the rows; ``purge_sagas`` deletes the rows
and the set with their saga, in one script); ``p:dead:<id>`` hash,
``p:dead-all`` / ``p:dead-by-trigger:<trigger>`` sorted sets of ids; ``p:schedule:<name>`` hash
and ``p:schedules`` the set of names (rows written before it existed join it when saved again);
``p:texec:<id>`` hash, ``p:texecs:<trigger>`` ids, ``p:texec-open:<trigger>`` open count per
context hash, ``p:texec-open-saga:<trigger>:<saga>`` open ids of one saga, ``p:texec-completed``
completed ids scored by ``completed_at``; ``p:cron:<trigger>`` claimed ticks,
``p:cron-owners:<trigger>`` who claimed each and ``p:cron-triggers`` the set of triggers with
claimed ticks; ``p:lease:<name>`` the holder of a named lease (URL-quoted name), expiring with
it; ``p:rate:<name>`` a shared token bucket's theoretical arrival time (URL-quoted name; a new
key kind of layout 4); id counters ``p:<kind>-seq``; ``p:schema_version`` and
``p:migration-lock``.

Timestamps are integer microseconds passed in as strings and stored verbatim (never formatted
by Lua), and only compared with ``tonumber`` (exact below 2^53).
"""

from __future__ import annotations

import asyncio
import re
import secrets
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

from sagaz.exceptions import SchemaOutdatedError, StoreError
from sagaz.records import SagaRecord, SchemaVersions
from sagaz.storage.codec import from_micros, loads, to_micros
from sagaz.storage.redis_scripts import SCRIPTS
from sagaz.types import TERMINAL_SAGA_STATUSES, SagaStatus

__all__ = [
    "SCHEMA_VERSION",
    "SCRIPTS",
    "micros",
    "migrate",
    "optional_moment",
    "read_versions",
    "saga_from_hash",
]

SCHEMA_VERSION = 7
"""The key-layout version this code writes (stored in ``<prefix>:schema_version``).

Version 1 needs no data migration (keys are created on first write). Version 2 adds the two
indexes that ``purge_expired`` walks, ``p:texec-completed`` and ``p:cron-triggers``;
:func:`migrate` fills them from version-1 data (:func:`_index_for_purge`); rows that a
version-1 process still running during the upgrade writes afterwards are not indexed, so
purging misses them. Version 3 adds the named leases, ``p:lease:<name>`` (the holder, with
the lease's expiry as the key's own ``PX`` expiry); they are created on first use, so it
needs no data step. Version 4 adds the shared token buckets, ``p:rate:<name>``
(``take_rate_token``), likewise created on first use. Version 5 adds
``p:outbox-saga:<saga>``, each saga's outbox ids
(:meth:`~sagaz.storage.redis.RedisSagaStore.list_saga_outbox`); :func:`migrate` fills it from
the outbox rows (:func:`_index_outbox_by_saga`), and, as for version 2, rows an older process
writes during the upgrade are not indexed. Version 6 adds saga control:
``p:history:<saga_id>`` (a saga's history, ids from ``p:history-id``) and
``p:saga-requests`` (the open requests by saga id), created on first use. Version 7 adds
``p:sagas-finished``, the terminal sagas scored by ``updated_at`` (``purge_sagas``);
:func:`migrate` fills it from the status indexes (:func:`_index_finished_sagas`), and, as for
version 2, sagas an older process finishes during the upgrade are not indexed. A later layout adds
its data migration to :func:`migrate` too, which runs it under a ``SET NX`` lock when asked
(``sagaz db upgrade``): a store refuses to start on an older layout."""

_MIGRATION_LOCK_MS = 30_000
_MIGRATION_CHUNK = 500
_EXTEND_LOCK = (
    "if redis.call('GET', KEYS[1]) == ARGV[1] then "
    "return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end return 0"
)


async def migrate(client: Any, prefix: str, *, url: str, upgrade: bool = False) -> SchemaVersions:
    """Record :data:`SCHEMA_VERSION` under a new prefix or, with ``upgrade``, migrate an older
    layout to it; return the versions found.

    Without ``upgrade`` an older layout raises :class:`SchemaOutdatedError` (``url`` goes
    into its ``sagaz db upgrade --store URL``). ``client`` is a ``redis.asyncio.Redis``.
    Processes starting at once queue on a ``SET NX`` lock (expiring after 30 s, should its
    holder die) and re-read the version while waiting.
    """
    version_key = f"{prefix}:schema_version"
    lock, token = f"{prefix}:migration-lock", secrets.token_hex(8)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 30
    while True:
        current = int(await client.get(version_key) or 0)
        if current == SCHEMA_VERSION:  # current (perhaps another process just migrated it)
            return SchemaVersions(current=current, expected=SCHEMA_VERSION)
        _check(current, prefix, url=url, upgrade=upgrade)
        if await client.set(lock, token, nx=True, px=_MIGRATION_LOCK_MS):
            break
        if loop.time() > deadline:
            raise StoreError(
                f"another process has held {lock!r} for 30 s; if none is migrating, "
                "delete that key and start again"
            )
        await asyncio.sleep(0.05)
    try:
        current = int(await client.get(version_key) or 0)
        _check(current, prefix, url=url, upgrade=upgrade)
        if current < SCHEMA_VERSION:  # from 0 (a new prefix): keys appear on first write
            keep_lock = lambda: _extend(client, lock, token)  # noqa: E731
            if current == 1:  # 1 -> 2
                await _index_for_purge(client, prefix, keep_lock)
            # 2 -> 3: the lease keys are new and created on first use: nothing to migrate
            # 3 -> 4: so are the rate-limit keys
            if 1 <= current <= 4:  # 4 -> 5
                await _index_outbox_by_saga(client, prefix, keep_lock)
            # 5 -> 6: the saga history and request keys are created on first use
            if 1 <= current <= 6:  # 6 -> 7
                await _index_finished_sagas(client, prefix, keep_lock)
            await client.set(version_key, SCHEMA_VERSION)
    finally:
        await client.eval(
            "if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end",
            1,
            lock,
            token,
        )
    return SchemaVersions(current=current, expected=SCHEMA_VERSION)


def _check(current: int, prefix: str, *, url: str, upgrade: bool) -> None:
    """Refuse a newer layout, and an older one unless upgrading."""
    if current > SCHEMA_VERSION:
        raise StoreError(
            f"the Redis keys under {prefix!r} have layout version {current}, newer than "
            f"the {SCHEMA_VERSION} this sagaz understands: upgrade sagaz (pip install -U sagaz)"
        )
    if 0 < current < SCHEMA_VERSION and not upgrade:
        raise SchemaOutdatedError(
            f"the Redis keys under {prefix!r}", store=url, found=current, expected=SCHEMA_VERSION
        )


async def read_versions(client: Any, prefix: str) -> SchemaVersions:
    """The versions under ``prefix``, read without changing anything."""
    current = int(await client.get(f"{prefix}:schema_version") or 0)
    return SchemaVersions(current=current, expected=SCHEMA_VERSION)


async def _extend(client: Any, lock: str, token: str) -> None:
    """Keep the migration lock while a long data migration runs."""
    await client.eval(_EXTEND_LOCK, 1, lock, token, _MIGRATION_LOCK_MS)


async def _index_for_purge(
    client: Any, prefix: str, keep_lock: Callable[[], Awaitable[None]]
) -> None:
    """Version 1 → 2: index completed executions and cron triggers (idempotent).

    Executions are found by id (``1..p:texec-seq``), cron triggers by ``SCAN`` of
    ``p:cron:*``; both in chunks, extending the migration lock after each.
    """
    last_id = int(await client.get(f"{prefix}:texec-seq") or 0)
    for first in range(1, last_id + 1, _MIGRATION_CHUNK):
        ids = range(first, min(first + _MIGRATION_CHUNK, last_id + 1))
        async with client.pipeline(transaction=False) as pipe:
            for execution_id in ids:
                pipe.hget(f"{prefix}:texec:{execution_id}", "completed_at")
            completed = await pipe.execute()
        done = {str(i): at for i, at in zip(ids, completed, strict=True) if at is not None}
        if done:
            await client.zadd(f"{prefix}:texec-completed", done)
        await keep_lock()
    head = f"{prefix}:cron:"
    pattern = re.sub(r"([*?\[\]\\])", r"\\\1", head) + "*"
    triggers: list[str] = []
    async for key in client.scan_iter(match=pattern, count=_MIGRATION_CHUNK):
        triggers.append(key.removeprefix(head))
        if len(triggers) >= _MIGRATION_CHUNK:
            await client.sadd(f"{prefix}:cron-triggers", *triggers)
            triggers.clear()
            await keep_lock()
    if triggers:
        await client.sadd(f"{prefix}:cron-triggers", *triggers)


async def _index_outbox_by_saga(
    client: Any, prefix: str, keep_lock: Callable[[], Awaitable[None]]
) -> None:
    """Version 3 → 4: list every outbox row under its saga (idempotent).

    Rows are found by id (``1..p:outbox-seq``), in chunks, extending the migration lock
    after each."""
    last_id = int(await client.get(f"{prefix}:outbox-seq") or 0)
    for first in range(1, last_id + 1, _MIGRATION_CHUNK):
        ids = range(first, min(first + _MIGRATION_CHUNK, last_id + 1))
        async with client.pipeline(transaction=False) as pipe:
            for outbox_id in ids:
                pipe.hget(f"{prefix}:outbox:{outbox_id}", "doc")
            documents = await pipe.execute()
        async with client.pipeline(transaction=False) as pipe:
            for outbox_id, document in zip(ids, documents, strict=True):
                if document is not None:
                    saga_id = loads(document)["saga_id"]
                    pipe.zadd(f"{prefix}:outbox-saga:{saga_id}", {str(outbox_id): outbox_id})
            await pipe.execute()
        await keep_lock()


async def _index_finished_sagas(
    client: Any, prefix: str, keep_lock: Callable[[], Awaitable[None]]
) -> None:
    """Version 6 → 7: index every finished saga by its ``updated_at`` (idempotent).

    The sagas are found in the status indexes of the terminal statuses, in chunks, extending
    the migration lock after each."""
    for status in sorted(TERMINAL_SAGA_STATUSES):
        index = f"{prefix}:sagas-status:{status.value}"
        for first in range(0, int(await client.zcard(index)), _MIGRATION_CHUNK):
            ids = await client.zrange(index, first, first + _MIGRATION_CHUNK - 1)
            async with client.pipeline(transaction=False) as pipe:
                for saga_id in ids:
                    pipe.hget(f"{prefix}:saga:{saga_id}", "updated_at")
                updated = await pipe.execute()
            found = {i: int(at) for i, at in zip(ids, updated, strict=True) if at is not None}
            if found:
                await client.zadd(f"{prefix}:sagas-finished", found)
            await keep_lock()


def micros(moment: datetime) -> str:
    """``moment`` as the integer-microseconds text the scripts store and compare."""
    return str(to_micros(moment))


def optional_moment(text: str | None) -> datetime | None:
    """The datetime of :func:`micros` text, passing ``None`` through."""
    return None if text is None else from_micros(text)


def saga_from_hash(fields: dict[str, str]) -> SagaRecord:
    """A ``p:saga:<id>`` hash as a record (absent fields are ``None``)."""
    return SagaRecord(
        saga_id=fields["saga_id"],
        saga_name=fields["saga_name"],
        status=SagaStatus(fields["status"]),
        context=loads(fields["context"]),
        attempt=int(fields["attempt"]),
        error=fields.get("error"),
        trigger_id=fields.get("trigger_id"),
        event=loads(fields["event"]) if "event" in fields else None,
        owner=fields.get("owner"),
        lease_expires_at=optional_moment(fields.get("lease")),
        created_at=from_micros(fields["created_at"]),
        updated_at=from_micros(fields["updated_at"]),
    )
