"""The Lua scripts of :class:`~sagaz.storage.redis.RedisSagaStore`, by name (:data:`SCRIPTS`).

Redis runs a script atomically, so every claim and every change that keeps an index in step
with its row is one script. The key layout they read and write, and its version, are in
:mod:`sagaz.storage.redis_schema`; ``ARGV[1]`` of every script is the key prefix ``p``.
"""

from __future__ import annotations

from sagaz.storage.redis_purge_scripts import (
    PURGE_ABANDONED_INBOX,
    PURGE_DEAD_LETTERS,
    PURGE_EXPIRED,
    PURGE_SAGAS,
)
from sagaz.types import TERMINAL_SAGA_STATUSES

__all__ = ["CLAIM_EVENT", "SAVE_CHECKPOINT", "SCRIPTS"]

# whether ``s`` (a saga's status) is terminal, in Lua
_IS_TERMINAL = " or ".join(f"s == '{status.value}'" for status in sorted(TERMINAL_SAGA_STATUSES))

SAVE_SAGA = (
    """
-- KEYS[1] saga hash; ARGV: prefix, mode ('create'|'save'), id, name, status, terminal,
-- created_at, updated_at, owner ('' = none), present (five '0'/'1': whether the saga has an
-- error, trigger_id, event, owner, lease), context, attempt, error, trigger_id, event, lease
-- (each '' when absent: the hash loses that field), then (saga_id, JSON) of each outbox row
-- written with it. Returns 1 when written; 0 when not: 'create' of an existing saga, or
-- 'save' of a saga another owner holds, unless as a new attempt (fenced: the contract)
local function is_terminal(s) return """
    + _IS_TERMINAL
    + """ end
local key, p, id = KEYS[1], ARGV[1], ARGV[3]
local name, status, terminal = ARGV[4], ARGV[5], ARGV[6] == '1'
local owner, present = ARGV[9], ARGV[10]
local has_event = string.sub(present, 3, 3) == '1'
local old = redis.call('HMGET', key, 'seq', 'status', 'saga_name', 'owner', 'attempt')
local seq = old[1]
if seq and old[4] and owner ~= '' and old[4] ~= owner and ARGV[2] == 'save'
   and tonumber(ARGV[12]) <= tonumber(old[5] or '0') then
  return 0
end
local fields = {'updated_at', ARGV[8], 'saga_id', id, 'saga_name', name, 'status', status,
                'context', ARGV[11], 'attempt', ARGV[12]}
-- an active saga (stored with a status that is not terminal) is in sagas-active and in the
-- owner-sagas set of its owner, and in none of the indexes of terminal sagas: this script
-- makes every status change, so it writes only what the change moves
local active = false
if seq then
  if ARGV[2] == 'create' then return 0 end
  active = not is_terminal(old[2])
  if old[2] ~= status then
    redis.call('ZREM', p .. ':sagas-status:' .. old[2], id)
    redis.call('ZADD', p .. ':sagas-status:' .. status, seq, id)
  end
  if old[3] ~= name then
    redis.call('ZREM', p .. ':sagas-name:' .. old[3], id)
    redis.call('ZADD', p .. ':sagas-name:' .. name, seq, id)
  end
  if old[4] and old[4] ~= owner then redis.call('SREM', p .. ':owner-sagas:' .. old[4], id) end
else
  seq = redis.call('INCR', p .. ':saga-seq')
  fields[#fields + 1] = 'seq'
  fields[#fields + 1] = seq
  fields[#fields + 1] = 'created_at'
  fields[#fields + 1] = ARGV[7]
  redis.call('ZADD', p .. ':sagas', seq, id)
  redis.call('ZADD', p .. ':sagas-status:' .. status, seq, id)
  redis.call('ZADD', p .. ':sagas-name:' .. name, seq, id)
end
local was_terminal = old[1] and not active  -- stored, and terminal
if terminal then
  if active then
    redis.call('ZREM', p .. ':sagas-active', id)
    if owner ~= '' then redis.call('SREM', p .. ':owner-sagas:' .. owner, id) end
  end
  redis.call('ZADD', p .. ':sagas-finished', ARGV[8], id)
  if has_event then
    redis.call('ZADD', p .. ':sagas-events', ARGV[8], id)
  elseif was_terminal then
    redis.call('ZREM', p .. ':sagas-events', id)
  end
else
  if not active then redis.call('ZADD', p .. ':sagas-active', seq, id) end
  if was_terminal then
    redis.call('ZREM', p .. ':sagas-finished', id)
    redis.call('ZREM', p .. ':sagas-events', id)
  end
  if owner ~= '' and (not active or old[4] ~= owner) then
    redis.call('SADD', p .. ':owner-sagas:' .. owner, id)
  end
end
local names = {'error', 'trigger_id', 'event', 'owner', 'lease'}
local values = {ARGV[13], ARGV[14], ARGV[15], owner, ARGV[16]}
local absent = {}
for i = 1, 5 do
  if string.sub(present, i, i) == '1' then
    fields[#fields + 1] = names[i]
    fields[#fields + 1] = values[i]
  elseif old[1] then  -- a new hash has none of them
    absent[#absent + 1] = names[i]
  end
end
redis.call('HSET', key, unpack(fields))
if #absent > 0 then redis.call('HDEL', key, unpack(absent)) end
for i = 17, #ARGV, 2 do
  local outbox_id = redis.call('INCR', p .. ':outbox-seq')
  redis.call('HSET', p .. ':outbox:' .. outbox_id, 'doc', ARGV[i + 1], 'created_at', ARGV[8])
  redis.call('ZADD', p .. ':outbox-unsent', outbox_id, outbox_id)
  redis.call('ZADD', p .. ':outbox-saga:' .. ARGV[i], outbox_id, outbox_id)
end
return 1
"""
)

DELETE_SAGA = """
-- KEYS[1] saga hash, KEYS[2] steps hash; ARGV: prefix, id
local p, id = ARGV[1], ARGV[2]
local old = redis.call('HMGET', KEYS[1], 'status', 'saga_name', 'owner')
redis.call('DEL', KEYS[2])
if not old[1] then return 0 end
redis.call('ZREM', p .. ':sagas', id)
redis.call('ZREM', p .. ':sagas-active', id)
redis.call('ZREM', p .. ':sagas-events', id)
redis.call('ZREM', p .. ':sagas-finished', id)
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

TAKE_OVER_SAGA = (  # CLAIM_SAGA, counted: the recovery attempts of the saga's attempt
    CLAIM_SAGA.replace("return 1\n", "")
    + """local n = redis.call('HMGET', KEYS[1], 'attempt', 'recovery_of', 'recoveries')
local count = 0
if n[2] == n[1] then count = tonumber(n[3] or '0') end
if old[2] and old[2] ~= owner then count = count + 1 end
redis.call('HSET', KEYS[1], 'recoveries', count, 'recovery_of', n[1])
return count + 1
"""
)

RELEASE_SAGA = """
-- KEYS[1] saga hash; ARGV: prefix, id, owner, retry_at ('' = none)
if redis.call('HGET', KEYS[1], 'owner') ~= ARGV[3] then return 0 end
redis.call('SREM', ARGV[1] .. ':owner-sagas:' .. ARGV[3], ARGV[2])
redis.call('HDEL', KEYS[1], 'owner')
if ARGV[4] == '' then redis.call('HDEL', KEYS[1], 'lease')
else redis.call('HSET', KEYS[1], 'lease', ARGV[4]) end
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
    "RELEASE_SAGA": RELEASE_SAGA,
    "TAKE_OVER_SAGA": TAKE_OVER_SAGA,
    "SAVE_STEP": SAVE_STEP,
    "CLAIM_INBOX": CLAIM_INBOX,
    "COMPLETE_INBOX": COMPLETE_INBOX,
    "RELEASE_INBOX": RELEASE_INBOX,
    "RENEW_LEASES": RENEW_LEASES,
    "PURGE_EXPIRED": PURGE_EXPIRED,
    "PURGE_SAGAS": PURGE_SAGAS,
    "PURGE_DEAD_LETTERS": PURGE_DEAD_LETTERS,
    "PURGE_ABANDONED_INBOX": PURGE_ABANDONED_INBOX,
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
-- SAVE_SAGA ARGV (count 0: no saga), then the COMPLETE_INBOX ARGV (count 0: no inbox row).
-- Returns 1, or 0 when the saga row is another owner's: then nothing is written (fenced)
local pos = 1
local function take()
  local n = tonumber(ARGV[pos])
  local section = {unpack(ARGV, pos + 1, pos + n)}
  pos = pos + n + 1
  return section
end
local n_steps = tonumber(ARGV[pos])
pos = pos + 1
local steps = {}
for i = 1, n_steps do steps[i] = take() end
local saga = take()
if #saga > 0 and save_saga(KEYS[2], saga) == 0 then return 0 end
for i = 1, n_steps do save_step(KEYS[1], steps[i]) end
local inbox = take()
if #inbox > 0 then complete_inbox(KEYS[3], inbox) end
return 1
"""
)
"""A saga's checkpoint in one script (:meth:`RedisSagaStore.save_checkpoint`): its steps,
its row with the outbox messages, its inbox row completed."""

SCRIPTS["SAVE_CHECKPOINT"] = SAVE_CHECKPOINT

CLAIM_EVENT = (
    _as_function("claim_inbox", CLAIM_INBOX)
    + _as_function("save_saga", SAVE_SAGA)
    + """
-- KEYS[1] inbox row, KEYS[2] saga hash; ARGV: the CLAIM_INBOX ARGV (5), then the SAVE_SAGA
-- ARGV (mode 'create'). Returns the claim (outcome, saga_id, owner), then 1 if the saga was
-- created, and the saga's hash as it was when it existed already (empty otherwise)
local claim = claim_inbox(KEYS[1], {ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]})
if claim[1] ~= 'claimed' and claim[1] ~= 'taken_over' then
  return {claim[1], claim[2], claim[3], 0, {}}
end
local saga = {unpack(ARGV, 6)}
if save_saga(KEYS[2], saga) == 1 then return {claim[1], claim[2], claim[3], 1, {}} end
return {claim[1], claim[2], claim[3], 0, redis.call('HGETALL', KEYS[2])}
"""
)
"""Admission's claim of an event in one script (:meth:`RedisSagaStore.claim_event`): its
inbox row claimed and, when the key is ours, its saga's row created (or read)."""

SCRIPTS["CLAIM_EVENT"] = CLAIM_EVENT
