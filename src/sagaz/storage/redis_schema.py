"""The key layout of :class:`~sagaz.storage.redis.RedisSagaStore`: its version, how a saga hash
maps to a record, and the Lua scripts that change it.

Redis runs a script atomically, so every claim and every change that keeps an index in step
with its row is one script. Key layout under the prefix ``p`` (``ARGV[1]`` of every script):

``p:saga:<id>`` hash of a saga; ``p:sagas`` / ``p:sagas-active`` / ``p:sagas-status:<status>`` /
``p:sagas-name:<name>`` sorted sets of saga ids scored by insertion order (``p:saga-seq``);
``p:sagas-events`` terminal sagas with a stored event, scored by ``updated_at``;
``p:owner-sagas:<owner>`` / ``p:owner-inbox:<owner>`` what a worker holds (lease renewal);
``p:steps:<id>`` hash step name → JSON; ``p:inbox:<trigger>:<key>`` hash of an inbox row
(both parts URL-quoted); ``p:inbox-completed`` completed rows scored by ``completed_at``;
``p:outbox:<id>`` hash, ``p:outbox-unsent`` sorted set of unsent ids, ``p:outbox-saga:<saga>``
sorted set of one saga's outbox ids (written with the rows; whatever deletes an outbox row
removes its id in the same script: nothing does today, the outbox is kept as by the SQL
stores); ``p:dead:<id>`` hash,
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
from sagaz.types import SagaStatus

__all__ = [
    "SCHEMA_VERSION",
    "SCRIPTS",
    "micros",
    "migrate",
    "optional_moment",
    "read_versions",
    "saga_from_hash",
]

SCHEMA_VERSION = 6
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
``p:saga-requests`` (the open requests by saga id), created on first use. A later layout adds
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


SAVE_SAGA = """
-- KEYS[1] saga hash; ARGV: prefix, mode ('create'|'save'), id, name, status, terminal,
-- created_at, updated_at, owner ('' = none), has_event, n_set, n_set field/value pairs,
-- n_del, n_del fields to delete, then (saga_id, JSON) of each outbox row written with it
local key, p, id = KEYS[1], ARGV[1], ARGV[3]
local name, status, terminal = ARGV[4], ARGV[5], ARGV[6] == '1'
local owner, has_event = ARGV[9], ARGV[10] == '1'
local old = redis.call('HMGET', key, 'seq', 'status', 'saga_name', 'owner')
local seq = old[1]
if seq then
  if ARGV[2] == 'create' then return 0 end
  if old[2] ~= status then redis.call('ZREM', p .. ':sagas-status:' .. old[2], id) end
  if old[3] ~= name then redis.call('ZREM', p .. ':sagas-name:' .. old[3], id) end
  if old[4] and old[4] ~= owner then redis.call('SREM', p .. ':owner-sagas:' .. old[4], id) end
else
  seq = redis.call('INCR', p .. ':saga-seq')
  redis.call('HSET', key, 'seq', seq, 'created_at', ARGV[7])
  redis.call('ZADD', p .. ':sagas', seq, id)
end
redis.call('ZADD', p .. ':sagas-status:' .. status, seq, id)
redis.call('ZADD', p .. ':sagas-name:' .. name, seq, id)
if terminal then
  redis.call('ZREM', p .. ':sagas-active', id)
  if owner ~= '' then redis.call('SREM', p .. ':owner-sagas:' .. owner, id) end
  if has_event then
    redis.call('ZADD', p .. ':sagas-events', ARGV[8], id)
  else
    redis.call('ZREM', p .. ':sagas-events', id)
  end
else
  redis.call('ZADD', p .. ':sagas-active', seq, id)
  if owner ~= '' then redis.call('SADD', p .. ':owner-sagas:' .. owner, id) end
  redis.call('ZREM', p .. ':sagas-events', id)
end
local n_set = tonumber(ARGV[11])
local fields = {'updated_at', ARGV[8]}
for i = 12, 11 + 2 * n_set do fields[#fields + 1] = ARGV[i] end
redis.call('HSET', key, unpack(fields))
local del_at = 12 + 2 * n_set
local n_del = tonumber(ARGV[del_at])
if n_del > 0 then
  redis.call('HDEL', key, unpack(ARGV, del_at + 1, del_at + n_del))
end
for i = del_at + n_del + 1, #ARGV, 2 do
  local outbox_id = redis.call('INCR', p .. ':outbox-seq')
  redis.call('HSET', p .. ':outbox:' .. outbox_id, 'doc', ARGV[i + 1], 'created_at', ARGV[8])
  redis.call('ZADD', p .. ':outbox-unsent', outbox_id, outbox_id)
  redis.call('ZADD', p .. ':outbox-saga:' .. ARGV[i], outbox_id, outbox_id)
end
return 1
"""

DELETE_SAGA = """
-- KEYS[1] saga hash, KEYS[2] steps hash; ARGV: prefix, id
local p, id = ARGV[1], ARGV[2]
local old = redis.call('HMGET', KEYS[1], 'status', 'saga_name', 'owner')
redis.call('DEL', KEYS[2])
if not old[1] then return 0 end
redis.call('ZREM', p .. ':sagas', id)
redis.call('ZREM', p .. ':sagas-active', id)
redis.call('ZREM', p .. ':sagas-events', id)
redis.call('ZREM', p .. ':sagas-status:' .. old[1], id)
redis.call('ZREM', p .. ':sagas-name:' .. old[2], id)
if old[3] then redis.call('SREM', p .. ':owner-sagas:' .. old[3], id) end
redis.call('DEL', KEYS[1])
return 1
"""

CLAIM_SAGA = """
-- KEYS[1] saga hash; ARGV: prefix, id, owner, lease_until, now
local p, id, owner = ARGV[1], ARGV[2], ARGV[3]
local old = redis.call('HMGET', KEYS[1], 'seq', 'owner', 'lease')
if not old[1] then return 0 end
if old[2] and old[2] ~= owner and old[3] and tonumber(old[3]) >= tonumber(ARGV[5]) then
  return 0
end
if old[2] and old[2] ~= owner then redis.call('SREM', p .. ':owner-sagas:' .. old[2], id) end
redis.call('HSET', KEYS[1], 'owner', owner, 'lease', ARGV[4])
if redis.call('ZSCORE', p .. ':sagas-active', id) then
  redis.call('SADD', p .. ':owner-sagas:' .. owner, id)
end
return 1
"""

SAVE_STEP = """
-- KEYS[1] steps hash; ARGV: prefix, step name, step JSON, created_at, then (saga_id, JSON)
-- of each outbox row
local p = ARGV[1]
redis.call('HSET', KEYS[1], ARGV[2], ARGV[3])
local ids = {}
for i = 5, #ARGV, 2 do
  local id = redis.call('INCR', p .. ':outbox-seq')
  redis.call('HSET', p .. ':outbox:' .. id, 'doc', ARGV[i + 1], 'created_at', ARGV[4])
  redis.call('ZADD', p .. ':outbox-unsent', id, id)
  redis.call('ZADD', p .. ':outbox-saga:' .. ARGV[i], id, id)
  ids[#ids + 1] = id
end
return ids
"""

CLAIM_INBOX = """
-- KEYS[1] inbox row; ARGV: prefix, saga_id, owner, lease_until, now
local row, p, owner = KEYS[1], ARGV[1], ARGV[3]
local v = redis.call('HMGET', row, 'status', 'saga_id', 'owner', 'lease')
if not v[1] then
  redis.call('HSET', row, 'status', 'pending', 'saga_id', ARGV[2], 'owner', owner,
             'lease', ARGV[4], 'created_at', ARGV[5])
  redis.call('SADD', p .. ':owner-inbox:' .. owner, row)
  return {'claimed', ARGV[2], owner}
end
if v[1] == 'completed' then return {'duplicate', v[2], v[3] or ''} end
if v[3] == owner or not v[4] or tonumber(v[4]) < tonumber(ARGV[5]) then
  if v[3] and v[3] ~= owner then redis.call('SREM', p .. ':owner-inbox:' .. v[3], row) end
  redis.call('HSET', row, 'owner', owner, 'lease', ARGV[4])
  redis.call('SADD', p .. ':owner-inbox:' .. owner, row)
  return {'taken_over', v[2], owner}
end
return {'busy', v[2], v[3] or ''}
"""

COMPLETE_INBOX = """
-- KEYS[1] inbox row; ARGV: prefix, now
local v = redis.call('HMGET', KEYS[1], 'status', 'owner')
if not v[1] then return 0 end
redis.call('HSET', KEYS[1], 'status', 'completed', 'completed_at', ARGV[2])
redis.call('ZADD', ARGV[1] .. ':inbox-completed', ARGV[2], KEYS[1])
if v[2] then redis.call('SREM', ARGV[1] .. ':owner-inbox:' .. v[2], KEYS[1]) end
return 1
"""

RELEASE_INBOX = """
-- KEYS[1] inbox row; ARGV: prefix
local owner = redis.call('HGET', KEYS[1], 'owner')
if owner then redis.call('SREM', ARGV[1] .. ':owner-inbox:' .. owner, KEYS[1]) end
redis.call('ZREM', ARGV[1] .. ':inbox-completed', KEYS[1])
return redis.call('DEL', KEYS[1])
"""

RENEW_LEASES = """
-- ARGV: prefix, owner, lease_until
local p, owner, lease = ARGV[1], ARGV[2], ARGV[3]
local touched = 0
local held = p .. ':owner-inbox:' .. owner
for _, row in ipairs(redis.call('SMEMBERS', held)) do
  local v = redis.call('HMGET', row, 'owner', 'status')
  if v[1] == owner and v[2] == 'pending' then
    redis.call('HSET', row, 'lease', lease)
    touched = touched + 1
  else
    redis.call('SREM', held, row)
  end
end
held = p .. ':owner-sagas:' .. owner
for _, id in ipairs(redis.call('SMEMBERS', held)) do
  local key = p .. ':saga:' .. id
  if redis.call('HGET', key, 'owner') == owner
      and redis.call('ZSCORE', p .. ':sagas-active', id) then
    redis.call('HSET', key, 'lease', lease)
    touched = touched + 1
  else
    redis.call('SREM', held, id)
  end
end
return touched
"""

PURGE_EXPIRED = """
-- ARGV: prefix, before, batch size; returns {rows affected, index entries looked at}
local p, before, batch = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local affected, seen = 0, 0
local index = p .. ':inbox-completed'
for _, row in ipairs(redis.call('ZRANGEBYSCORE', index, '-inf', '(' .. ARGV[2],
                                'LIMIT', 0, batch)) do
  local v = redis.call('HMGET', row, 'status', 'completed_at')
  if v[1] == 'completed' and tonumber(v[2]) < before then
    redis.call('DEL', row)
    affected = affected + 1
  end
  redis.call('ZREM', index, row)
  seen = seen + 1
end
index = p .. ':sagas-events'
for _, id in ipairs(redis.call('ZRANGEBYSCORE', index, '-inf', '(' .. ARGV[2],
                               'LIMIT', 0, batch)) do
  local key = p .. ':saga:' .. id
  local v = redis.call('HMGET', key, 'event', 'updated_at')
  if v[1] and tonumber(v[2]) < before then
    redis.call('HDEL', key, 'event')
    affected = affected + 1
  end
  redis.call('ZREM', index, id)
  seen = seen + 1
end
index = p .. ':texec-completed'
for _, id in ipairs(redis.call('ZRANGEBYSCORE', index, '-inf', '(' .. ARGV[2],
                               'LIMIT', 0, batch)) do
  local key = p .. ':texec:' .. id
  local v = redis.call('HMGET', key, 'trigger_name', 'completed_at')
  if v[2] and tonumber(v[2]) < before then
    redis.call('DEL', key)
    redis.call('ZREM', p .. ':texecs:' .. v[1], id)
    affected = affected + 1
  end
  redis.call('ZREM', index, id)
  seen = seen + 1
end
-- cron claims before the cutoff, except the newest tick of each trigger (last_cron_tick);
-- ticks are their own members, integer-microsecond text
local triggers, budget = p .. ':cron-triggers', batch
for _, trigger in ipairs(redis.call('SMEMBERS', triggers)) do
  if budget <= 0 then break end
  local ticks = p .. ':cron:' .. trigger
  local newest = redis.call('ZRANGE', ticks, -1, -1)[1]
  if not newest then
    redis.call('SREM', triggers, trigger)
  else
    local upto = ARGV[2]
    if tonumber(newest) < before then upto = newest end
    local old = redis.call('ZRANGEBYSCORE', ticks, '-inf', '(' .. upto, 'LIMIT', 0, budget)
    if #old > 0 then
      redis.call('ZREM', ticks, unpack(old))
      redis.call('HDEL', p .. ':cron-owners:' .. trigger, unpack(old))
      affected = affected + #old
      seen = seen + #old
      budget = budget - #old
    end
  end
end
return {affected, seen}
"""

MARK_OUTBOX_SENT = """
-- ARGV: prefix, now, ids...
local p = ARGV[1]
for i = 3, #ARGV do
  local key = p .. ':outbox:' .. ARGV[i]
  if redis.call('EXISTS', key) == 1 then redis.call('HSET', key, 'sent_at', ARGV[2]) end
  redis.call('ZREM', p .. ':outbox-unsent', ARGV[i])
end
return #ARGV - 2
"""

ADD_DEAD_LETTER = """
-- ARGV: prefix, trigger_id, JSON, created_at; returns the new id
local p = ARGV[1]
local id = redis.call('INCR', p .. ':dead-seq')
redis.call('HSET', p .. ':dead:' .. id, 'doc', ARGV[3], 'trigger_id', ARGV[2],
           'created_at', ARGV[4])
redis.call('ZADD', p .. ':dead-all', id, id)
redis.call('ZADD', p .. ':dead-by-trigger:' .. ARGV[2], id, id)
return id
"""

DELETE_DEAD_LETTER = """
-- ARGV: prefix, id
local p, id = ARGV[1], ARGV[2]
local key = p .. ':dead:' .. id
local trigger = redis.call('HGET', key, 'trigger_id')
if not trigger then return 0 end
redis.call('DEL', key)
redis.call('ZREM', p .. ':dead-all', id)
redis.call('ZREM', p .. ':dead-by-trigger:' .. trigger, id)
return 1
"""

SAVE_TRIGGER_SCHEDULE = """
-- KEYS[1] schedule hash; ARGV: prefix, trigger name, saga_name, poll_interval_ms,
-- allow_concurrent, enabled (of a new row only), last_poll_at ('' keeps the stored one)
redis.call('HSET', KEYS[1], 'saga_name', ARGV[3], 'poll_interval_ms', ARGV[4],
           'allow_concurrent', ARGV[5])
redis.call('HSETNX', KEYS[1], 'enabled', ARGV[6])
if ARGV[7] ~= '' then redis.call('HSET', KEYS[1], 'last_poll_at', ARGV[7]) end
redis.call('SADD', ARGV[1] .. ':schedules', ARGV[2])
return 1
"""

SET_TRIGGER_ENABLED = """
-- KEYS[1] schedule hash; ARGV: prefix, trigger name, enabled
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], 'enabled', ARGV[3])
redis.call('SADD', ARGV[1] .. ':schedules', ARGV[2])
return 1
"""

TOUCH_TRIGGER_SCHEDULE = """
-- KEYS[1] schedule hash; ARGV: last_poll_at
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], 'last_poll_at', ARGV[1])
return 1
"""

START_TRIGGER_EXECUTION = """
-- KEYS[1] open ids of this saga; ARGV: prefix, trigger, context hash, saga_id, exclusive,
-- started_at
local p, trigger, hash = ARGV[1], ARGV[2], ARGV[3]
local open = p .. ':texec-open:' .. trigger
if ARGV[5] == '1' and tonumber(redis.call('HGET', open, hash) or '0') > 0 then return 0 end
local id = redis.call('INCR', p .. ':texec-seq')
redis.call('HSET', p .. ':texec:' .. id, 'trigger_name', trigger, 'context_hash', hash,
           'saga_id', ARGV[4], 'started_at', ARGV[6])
redis.call('ZADD', p .. ':texecs:' .. trigger, id, id)
redis.call('HINCRBY', open, hash, 1)
redis.call('SADD', KEYS[1], id)
return 1
"""

COMPLETE_TRIGGER_EXECUTION = """
-- KEYS[1] open ids of this saga; ARGV: prefix, trigger, completed_at
local p = ARGV[1]
local open = p .. ':texec-open:' .. ARGV[2]
for _, id in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local key = p .. ':texec:' .. id
  if redis.call('HEXISTS', key, 'completed_at') == 0 then
    redis.call('HSET', key, 'completed_at', ARGV[3])
    redis.call('ZADD', p .. ':texec-completed', ARGV[3], id)
    local hash = redis.call('HGET', key, 'context_hash')
    if redis.call('HINCRBY', open, hash, -1) <= 0 then redis.call('HDEL', open, hash) end
  end
end
redis.call('DEL', KEYS[1])
return 1
"""

CLAIM_CRON_TICK = """
-- KEYS[1] claimed ticks (sorted set), KEYS[2] tick -> owner, KEYS[3] triggers with ticks;
-- ARGV: tick, owner, trigger
if redis.call('ZADD', KEYS[1], 'NX', ARGV[1], ARGV[1]) == 1 then
  redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
  redis.call('SADD', KEYS[3], ARGV[3])
  return 1
end
return 0
"""

ACQUIRE_LEASE = """
-- KEYS[1] the lease; ARGV: holder, ttl in milliseconds. Redis expires the key itself.
local holder = redis.call('GET', KEYS[1])
if holder == false or holder == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
"""

RENEW_LEASE = """
-- KEYS[1] the lease; ARGV: holder, ttl in milliseconds
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""

RELEASE_LEASE = """
-- KEYS[1] the lease; ARGV: holder
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

TAKE_RATE_TOKEN = """
-- KEYS[1] a shared token bucket (sagaz.storage.rate_limits): its theoretical arrival time in
-- microseconds of the server's clock; ARGV: interval, tolerance (microseconds). Returns 0
-- when a token was taken, else the microseconds until the next one.
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000000 + tonumber(time[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
if tat - now <= tonumber(ARGV[2]) then
  local next = tat + tonumber(ARGV[1])
  -- a bucket left alone refills completely by next: it need not outlive it
  local ttl = math.floor((next - now) / 1000) + 1000
  redis.call('SET', KEYS[1], string.format('%d', next), 'PX', ttl)
  return 0
end
return tat - now - tonumber(ARGV[2])
"""

SCRIPTS: dict[str, str] = {
    "SAVE_SAGA": SAVE_SAGA,
    "DELETE_SAGA": DELETE_SAGA,
    "CLAIM_SAGA": CLAIM_SAGA,
    "SAVE_STEP": SAVE_STEP,
    "CLAIM_INBOX": CLAIM_INBOX,
    "COMPLETE_INBOX": COMPLETE_INBOX,
    "RELEASE_INBOX": RELEASE_INBOX,
    "RENEW_LEASES": RENEW_LEASES,
    "PURGE_EXPIRED": PURGE_EXPIRED,
    "MARK_OUTBOX_SENT": MARK_OUTBOX_SENT,
    "ADD_DEAD_LETTER": ADD_DEAD_LETTER,
    "DELETE_DEAD_LETTER": DELETE_DEAD_LETTER,
    "SAVE_TRIGGER_SCHEDULE": SAVE_TRIGGER_SCHEDULE,
    "SET_TRIGGER_ENABLED": SET_TRIGGER_ENABLED,
    "TOUCH_TRIGGER_SCHEDULE": TOUCH_TRIGGER_SCHEDULE,
    "START_TRIGGER_EXECUTION": START_TRIGGER_EXECUTION,
    "COMPLETE_TRIGGER_EXECUTION": COMPLETE_TRIGGER_EXECUTION,
    "CLAIM_CRON_TICK": CLAIM_CRON_TICK,
    "ACQUIRE_LEASE": ACQUIRE_LEASE,
    "RENEW_LEASE": RENEW_LEASE,
    "RELEASE_LEASE": RELEASE_LEASE,
    "TAKE_RATE_TOKEN": TAKE_RATE_TOKEN,
}
"""Every script by name; the store registers them all at start (EVALSHA afterwards)."""


def _as_function(name: str, script: str) -> str:
    """``script`` as a Lua function ``name(K, ARGV)``: its KEYS[1] is ``K``, its ARGV the
    table passed (so one script can run several others in turn)."""
    body = script.replace("KEYS[1]", "K")
    return f"local function {name}(K, ARGV)\n{body}\nend\n"


SAVE_CHECKPOINT = (
    _as_function("save_step", SAVE_STEP)
    + _as_function("save_saga", SAVE_SAGA)
    + _as_function("complete_inbox", COMPLETE_INBOX)
    + """
-- KEYS[1] steps hash, KEYS[2] saga hash, KEYS[3] inbox row; ARGV: sections, each a count
-- then that many values: per step (the count of steps first) the SAVE_STEP ARGV, then the
-- SAVE_SAGA ARGV (count 0: no saga), then the COMPLETE_INBOX ARGV (count 0: no inbox row)
local pos = 1
local function take()
  local n = tonumber(ARGV[pos])
  local section = {}
  for i = 1, n do section[i] = ARGV[pos + i] end
  pos = pos + n + 1
  return section
end
local n_steps = tonumber(ARGV[pos])
pos = pos + 1
for _ = 1, n_steps do save_step(KEYS[1], take()) end
local saga = take()
if #saga > 0 then save_saga(KEYS[2], saga) end
local inbox = take()
if #inbox > 0 then complete_inbox(KEYS[3], inbox) end
return 1
"""
)
"""A saga's checkpoint in one script (:meth:`RedisSagaStore.save_checkpoint`): its steps,
its row with the outbox messages, its inbox row completed."""

SCRIPTS["SAVE_CHECKPOINT"] = SAVE_CHECKPOINT
