"""The purge scripts of :class:`~sagaz.storage.redis.RedisSagaStore` (registered with the
others in :data:`sagaz.storage.redis_scripts.SCRIPTS`): expired rows, finished sagas and old
dead letters.

``ARGV[1]`` of each is the key prefix ``p``; the key layout is in
:mod:`sagaz.storage.redis_schema`.
"""

from __future__ import annotations

from sagaz.types import TERMINAL_SAGA_STATUSES

__all__ = ["PURGE_ABANDONED_INBOX", "PURGE_DEAD_LETTERS", "PURGE_EXPIRED", "PURGE_SAGAS"]

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

_TERMINAL_LUA = (
    "{" + ", ".join(f"['{s.value}'] = true" for s in sorted(TERMINAL_SAGA_STATUSES)) + "}"
)

PURGE_SAGAS = (
    f"local terminal = {_TERMINAL_LUA}\n"
    + """
-- ARGV: prefix, before, limit, scan, now; returns {sagas deleted, index entries looked at,
-- entries moved}.
-- Finished sagas (p:sagas-finished, scored by updated_at) older than before, oldest first,
-- at most limit deleted out of at most scan looked at. Kept: a saga with a pending inbox row
-- with a live lease (its retry is due: found in the inbox rows its owner holds), an open
-- request, or an unsent
-- outbox message; it moves behind the others, out of the way of the next call's window.
local p, before = ARGV[1], tonumber(ARGV[2])
local limit, scan, now = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local index = p .. ':sagas-finished'
local pending = {}
local function retrying(owner, id)
  if not owner then return false end
  local ids = pending[owner]
  if not ids then
    ids = {}
    for _, row in ipairs(redis.call('SMEMBERS', p .. ':owner-inbox:' .. owner)) do
      local v = redis.call('HMGET', row, 'status', 'saga_id', 'lease')
      if v[1] == 'pending' and v[2] and v[3] and tonumber(v[3]) >= now then
        ids[v[2]] = true
      end
    end
    pending[owner] = ids
  end
  return ids[id] == true
end
local function unsent(outbox)
  for _, oid in ipairs(redis.call('ZRANGE', outbox, 0, -1)) do
    if redis.call('ZSCORE', p .. ':outbox-unsent', oid) then return true end
  end
  return false
end
local deleted, seen, moved = 0, 0, 0
local last = string.format('%d', before - 1)  -- the last score before the cutoff
local candidates = redis.call('ZRANGEBYSCORE', index, '-inf', '(' .. ARGV[2],
                              'WITHSCORES', 'LIMIT', 0, scan)
for i = 1, #candidates, 2 do
  if deleted >= limit then break end
  local id, score = candidates[i], candidates[i + 1]
  seen = seen + 1
  local key = p .. ':saga:' .. id
  local v = redis.call('HMGET', key, 'status', 'updated_at', 'saga_name', 'owner')
  if not v[1] or not terminal[v[1]] then
    redis.call('ZREM', index, id)  -- gone, or running again: not finished
    moved = moved + 1
  elseif tonumber(v[2]) >= before then
    redis.call('ZADD', index, v[2], id)  -- its score is its updated_at again
    moved = moved + 1
  elseif retrying(v[4], id) or redis.call('HEXISTS', p .. ':saga-requests', id) == 1
      or unsent(p .. ':outbox-saga:' .. id) then
    -- kept for now: it goes behind every other saga older than the cutoff (the purge reads
    -- updated_at from the hash, not the score), so it never hides those
    if tonumber(score) < before - 1 then
      redis.call('ZADD', index, last, id)
      moved = moved + 1
    end
  else
    local outbox = p .. ':outbox-saga:' .. id
    for _, oid in ipairs(redis.call('ZRANGE', outbox, 0, -1)) do
      redis.call('DEL', p .. ':outbox:' .. oid)
    end
    redis.call('DEL', outbox, p .. ':steps:' .. id, p .. ':history:' .. id, key)
    redis.call('ZREM', index, id)
    redis.call('ZREM', p .. ':sagas', id)
    redis.call('ZREM', p .. ':sagas-active', id)
    redis.call('ZREM', p .. ':sagas-events', id)
    redis.call('ZREM', p .. ':sagas-status:' .. v[1], id)
    redis.call('ZREM', p .. ':sagas-name:' .. v[3], id)
    if v[4] then redis.call('SREM', p .. ':owner-sagas:' .. v[4], id) end
    deleted = deleted + 1
  end
end
return {deleted, seen, moved}
"""
)

PURGE_DEAD_LETTERS = """
-- ARGV: prefix, before, limit; returns the dead letters deleted: the oldest ids first, up to
-- the first one stored at or after before
local p, before = ARGV[1], tonumber(ARGV[2])
local deleted = 0
for _, id in ipairs(redis.call('ZRANGE', p .. ':dead-all', 0, tonumber(ARGV[3]) - 1)) do
  local key = p .. ':dead:' .. id
  local v = redis.call('HMGET', key, 'created_at', 'trigger_id')
  if v[1] and tonumber(v[1]) >= before then break end
  redis.call('DEL', key)
  redis.call('ZREM', p .. ':dead-all', id)
  if v[2] then redis.call('ZREM', p .. ':dead-by-trigger:' .. v[2], id) end
  deleted = deleted + 1
end
return deleted
"""

PURGE_ABANDONED_INBOX = """
-- KEYS[1] the inbox rows a worker holds (p:owner-inbox:<owner>); ARGV: before. Deletes its
-- pending rows whose lease expired before the cutoff (the worker died, the event never came
-- back), and forgets the rows it no longer holds; returns the rows deleted.
local before, deleted = tonumber(ARGV[1]), 0
for _, row in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local v = redis.call('HMGET', row, 'status', 'lease')
  if v[1] == 'pending' and v[2] and tonumber(v[2]) < before then
    redis.call('DEL', row)
    redis.call('SREM', KEYS[1], row)
    deleted = deleted + 1
  elseif v[1] ~= 'pending' then
    redis.call('SREM', KEYS[1], row)
  end
end
return deleted
"""
