"""The Redis broker: sorted sets per queue and state, one Lua script per operation.

Every operation that changes a job (enqueue, claim, renew, settle, cancel, retry) is one
Lua script, so it is atomic and costs one round trip however many jobs it handles.
The storage layout and the reasons for it are in ``docs/brokers-redis.md``; in short,
with ``P = "{prefix}:"`` (the braces are a Cluster hash tag: every key is in one slot)::

    P job:<id>          hash: payload, state, queue, handler, key, mr, attempts, lease,
                        status, error, enq, start, fin, run, seq (times in epoch ms)
    P ready:<q>         zset id -> enqueue sequence (claim order: oldest first)
    P scheduled:<q>     zset id -> run_at (ms)          P failed:<q>  id -> retry at (ms)
    P running:<q>       zset id -> lease deadline (ms)  P dead:<q>    id -> died at (ms)
    P succeeded:<q>     zset id -> finished at (ms)     P cancelled:<q>  (same)
    P queues            set of queue names               P keys  hash unique key -> id
    P seq               enqueue sequence counter         P wake  pub/sub channel (queue names)

Times come from the Redis server clock (``TIME``), so consumers on machines with skewed
clocks agree on lease deadlines; only an absolute ``at=`` comes from the producer's clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import msgspec
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import BusyLoadingError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from pywork import cron as cronlib
from pywork._durations import duration, optional_duration, positive_int
from pywork.brokers.base import (
    Delivery,
    JobRecord,
    JobState,
    Outcome,
    QueueStats,
    ScheduleRecord,
)
from pywork.cron import check_schedule_name, declare, from_micros, to_micros
from pywork.encoding import DecodeError, decode_job, encode_for_enqueue
from pywork.job import Job
from pywork.status import Status

try:
    from redis.maint_notifications import MaintNotificationsConfig as _MaintNotificationsConfig
except ImportError:  # redis-py < 7
    _MaintNotificationsConfig = None  # type: ignore[assignment,misc,unused-ignore]

__all__ = ["RedisBroker"]

logger = logging.getLogger("pywork.brokers.redis")

_CHECK_STATES = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.DEAD, JobState.QUEUED})
_STATE_ARG = {
    JobState.SUCCEEDED: "succeeded",
    JobState.FAILED: "failed",
    JobState.DEAD: "dead",
    JobState.QUEUED: "queued",
}
_REASONS = {b"cancelled": "cancelled", b"lost": "lost"}
#: Pauses between tries of an idempotent call whose connection failed (about 3.5 s in all).
_RETRY_DELAYS = (0.05, 0.1, 0.2, 0.4, 0.8, 1.0, 1.0)
_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder()

# --------------------------------------------------------------------------------------
# Lua. Every script gets KEYS[1] = "<P>seq" (routes the call to the prefix's slot),
# ARGV[1] = P and ARGV[2] = the retention in ms; its own arguments start at ARGV[3].
# --------------------------------------------------------------------------------------
_PRELUDE = """
local P = ARGV[1]
local RET = tonumber(ARGV[2])
local T = redis.call('TIME')
local NOW = tonumber(T[1]) * 1000 + math.floor(tonumber(T[2]) / 1000)
local LIVE = {queued = true, scheduled = true, running = true, failed = true}

local function jkey(id) return P .. 'job:' .. id end

local function wake(queue) redis.call('PUBLISH', P .. 'wake', queue) end

-- sorted-set writes batched per key (P .. kind .. ':' .. queue), sent by flush() in
-- chunks: one call per key and chunk instead of one per job
local pending, pending_order = {}, {}
local function later(op, kind, queue, score, id)
  local by_kind = pending[op .. kind]
  if not by_kind then
    by_kind = {}
    pending[op .. kind] = by_kind
  end
  local batch = by_kind[queue]
  if not batch then
    batch = {op = op, key = P .. kind .. ':' .. queue, n = 0}
    by_kind[queue] = batch
    pending_order[#pending_order + 1] = batch
  end
  local n = batch.n
  if op == 'ZADD' then
    batch[n + 1] = score
    n = n + 1
  end
  batch[n + 1] = id
  batch.n = n + 1
end
local function flush()
  for _, batch in ipairs(pending_order) do
    local step = batch.op == 'ZADD' and 1000 or 500
    for i = 1, batch.n, step do
      redis.call(batch.op, batch.key, unpack(batch, i, math.min(i + step - 1, batch.n)))
    end
  end
  pending, pending_order = {}, {}
end

-- put a job in its queue's ready set, waking waiting consumers when the set was empty
local woken = {}
local function make_ready(id, queue, seq)
  local rk = P .. 'ready:' .. queue
  if not woken[queue] then
    woken[queue] = true
    if redis.call('ZCARD', rk) == 0 then wake(queue) end
  end
  later('ZADD', 'ready', queue, seq, id)
end

-- add to a time-ordered set, waking waiting consumers when it becomes the earliest
local function add_timed(zk, queue, at, id)
  local first = redis.call('ZRANGE', zk, 0, 0, 'WITHSCORES')
  if first[2] == nil or tonumber(first[2]) > at then wake(queue) end
  redis.call('ZADD', zk, at, id)
end

local function next_seq(n) return redis.call('INCRBY', P .. 'seq', n) - n end

local function drop_key(key, id)
  if key and key ~= '' and redis.call('HGET', P .. 'keys', key) == id then
    redis.call('HDEL', P .. 'keys', key)
  end
end

-- succeeded / dead / cancelled. `f` = HMGET key, error, run. A record kept for retention
-- is scored so that it lives until max(finish + retention, keep_until): a running job
-- cancelled must outlive its lease, so that its consumer's next renew reads "cancelled".
local function finish(jk, id, queue, state, status, err, keep_until, f)
  drop_key(f[1], id)
  if state ~= 'dead' and RET <= 0 and keep_until <= NOW then
    redis.call('DEL', jk)
    return
  end
  if err ~= '' then
    if status ~= '' then
      redis.call('HSET', jk, 'state', state, 'fin', NOW, 'status', status, 'error', err)
    else
      redis.call('HSET', jk, 'state', state, 'fin', NOW, 'error', err)
    end
  else
    if status ~= '' then
      redis.call('HSET', jk, 'state', state, 'fin', NOW, 'status', status)
    else
      redis.call('HSET', jk, 'state', state, 'fin', NOW)
    end
    if f[2] then redis.call('HDEL', jk, 'error') end
  end
  if f[3] then redis.call('HDEL', jk, 'run') end
  if state == 'dead' then
    later('ZADD', 'dead', queue, NOW, id)
  else
    later('ZADD', state, queue, math.max(NOW, keep_until - RET), id)
  end
end

-- store jobs ([[id, queue, payload, handler, key, mr, when], ...]; when: "" = now,
-- "d<ms>" = after a delay, "a<epoch ms>" = at); returns per job its id, or the id of the
-- live job holding its key, or its own id when it is already stored
local function store_jobs(jobs)
  local out = {}
  local seq = next_seq(#jobs)
  local known = {}
  for i, job in ipairs(jobs) do
    local id, queue, payload, handler, key, mr, when = unpack(job)
    local jk = jkey(id)
    local existing = nil
    if redis.call('EXISTS', jk) == 1 then
      existing = id
    elseif key ~= '' then
      local other = redis.call('HGET', P .. 'keys', key)
      if other then
        local state = redis.call('HGET', jkey(other), 'state')
        if state and LIVE[state] then existing = other end
      end
    end
    if existing then
      out[i] = existing
    else
      out[i] = id
      local run_at = NOW
      local kind = string.sub(when, 1, 1)
      if kind == 'd' then run_at = NOW + tonumber(string.sub(when, 2))
      elseif kind == 'a' then run_at = tonumber(string.sub(when, 2)) end
      if not known[queue] then
        known[queue] = true
        redis.call('SADD', P .. 'queues', queue)
      end
      local fields = {'HSET', jk, 'payload', payload, 'queue', queue, 'handler', handler,
        'attempts', 0, 'lease', 0, 'enq', NOW, 'seq', seq + i}
      if key ~= '' then
        fields[#fields + 1] = 'key'; fields[#fields + 1] = key
        redis.call('HSET', P .. 'keys', key, id)
      end
      if mr ~= '' then fields[#fields + 1] = 'mr'; fields[#fields + 1] = mr end
      if run_at > NOW then
        fields[#fields + 1] = 'state'; fields[#fields + 1] = 'scheduled'
        fields[#fields + 1] = 'run'; fields[#fields + 1] = run_at
        redis.call(unpack(fields))
        add_timed(P .. 'scheduled:' .. queue, queue, run_at, id)
      else
        fields[#fields + 1] = 'state'; fields[#fields + 1] = 'queued'
        redis.call(unpack(fields))
        make_ready(id, queue, seq + i)
      end
    end
  end
  return out
end

-- due scheduled and failed jobs -> ready, in due order
local function promote(queue)
  for _, kind in ipairs({'scheduled', 'failed'}) do
    local zk = P .. kind .. ':' .. queue
    local ids = redis.call('ZRANGE', zk, '-inf', NOW, 'BYSCORE', 'LIMIT', 0, 500)
    if #ids > 0 then
      redis.call('ZREM', zk, unpack(ids))
      local seq = next_seq(#ids)
      for i, id in ipairs(ids) do
        local jk = jkey(id)
        redis.call('HSET', jk, 'state', 'queued', 'seq', seq + i)
        redis.call('HDEL', jk, 'run')
        make_ready(id, queue, seq + i)
      end
    end
  end
end

-- jobs whose lease expired -> queued again (attempt already counted), or dead
local function reclaim(queue, default_mr)
  local rk = P .. 'running:' .. queue
  local ids = redis.call('ZRANGE', rk, '-inf', NOW, 'BYSCORE', 'LIMIT', 0, 500)
  if #ids == 0 then return end
  redis.call('ZREM', rk, unpack(ids))
  for _, id in ipairs(ids) do
    local jk = jkey(id)
    local f = redis.call('HMGET', jk, 'state', 'attempts', 'mr', 'seq', 'key', 'error', 'run')
    if f[1] == 'running' then
      local attempts = tonumber(f[2]) or 0
      local mr = tonumber(f[3]) or default_mr
      -- revoke the lease: its holder's token no longer matches (renew says "lost")
      redis.call('HINCRBY', jk, 'lease', 1)
      if attempts > mr then
        finish(jk, id, queue, 'dead', '408',
          'JobTimeout: lease expired on attempt ' .. attempts ..
          ' (its consumer died or stopped renewing it)', 0, {f[5], f[6], f[7]})
      else
        redis.call('HSET', jk, 'state', 'queued')
        make_ready(id, queue, tonumber(f[4]) or next_seq(1) + 1)
      end
    end
  end
end

-- lazily delete succeeded / cancelled records past retention, at most every 2 s
local function cleanup()
  if not redis.call('SET', P .. 'cleanup', '1', 'PX', 2000, 'NX') then return end
  for _, queue in ipairs(redis.call('SMEMBERS', P .. 'queues')) do
    for _, kind in ipairs({'succeeded', 'cancelled'}) do
      local zk = P .. kind .. ':' .. queue
      local ids = redis.call('ZRANGE', zk, '-inf', '(' .. (NOW - RET), 'BYSCORE', 'LIMIT', 0, 1000)
      if #ids > 0 then
        redis.call('ZREM', zk, unpack(ids))
        for _, id in ipairs(ids) do redis.call('DEL', jkey(id)) end
      end
    end
  end
end
"""

# ARGV[3] = JSON [[id, queue, payload, handler, key, mr, when], ...]
# (when: "" = now, "d<ms>" = after a delay, "a<epoch ms>" = at), ARGV[4] = "1" to refuse
# ids already stored (the first try of a call; a retry after a lost reply takes a stored
# id as its own). Returns the ids as JSON, or {"duplicate": id} having stored nothing.
_ENQUEUE = """
local jobs = cjson.decode(ARGV[3])
if ARGV[4] == '1' then
  local seen = {}
  for _, job in ipairs(jobs) do
    local id = job[1]
    if seen[id] or redis.call('EXISTS', jkey(id)) == 1 then
      return cjson.encode({duplicate = id})
    end
    seen[id] = true
  end
end
local out = store_jobs(jobs)
flush()
return cjson.encode(out)
"""

# ARGV[3] = claim id, ARGV[4] = limit, ARGV[5] = lease ms, ARGV[6] = default max_retries,
# ARGV[7] = nq, queues. Returns one string: per claimed job
# "<len(id)>:<id><token - 1>:<attempts - 1>:<len(payload)>:<payload>" (one bulk reply parses much
# faster than an array of 4 * limit elements). The leases are remembered for 10 s
# under the claim id, so that a call retried after a lost reply returns the same jobs
# instead of leaving them leased to nobody until their lease expires.
_CLAIM = """
local ck = P .. 'claim:' .. ARGV[3]
local prior = redis.call('GET', ck)
if prior then
  local out = {}
  local leased = cjson.decode(prior)
  for i = 1, #leased, 2 do
    local id, token = leased[i], leased[i + 1]
    local f = redis.call('HMGET', jkey(id), 'state', 'payload', 'attempts', 'lease')
    if f[1] == 'running' and tonumber(f[4]) == tonumber(token) + 1 then
      local payload = f[2] or ''
      out[#out + 1] = #id .. ':' .. id .. token .. ':' .. (tonumber(f[3]) - 1) .. ':' ..
        #payload .. ':' .. payload
    end
  end
  return table.concat(out)
end
local limit, lease, default_mr = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local nq = tonumber(ARGV[7])
local queues = {}
for i = 1, nq do queues[i] = ARGV[7 + i] end
cleanup()
for _, queue in ipairs(queues) do
  reclaim(queue, default_mr)
  promote(queue)
end
flush()
local ids, from = {}, {}
if nq == 1 then
  local r = redis.call('ZPOPMIN', P .. 'ready:' .. queues[1], limit)
  for i = 1, #r, 2 do ids[#ids + 1] = r[i] end
else
  local candidates = {}
  for _, queue in ipairs(queues) do
    local r = redis.call('ZRANGE', P .. 'ready:' .. queue, 0, limit - 1, 'WITHSCORES')
    for i = 1, #r, 2 do candidates[#candidates + 1] = {tonumber(r[i + 1]), r[i], queue} end
  end
  table.sort(candidates, function(a, b) return a[1] < b[1] end)
  for i = 1, math.min(limit, #candidates) do
    local c = candidates[i]
    later('ZREM', 'ready', c[3], nil, c[2])
    ids[i], from[i] = c[2], c[3]
  end
end
-- the hot loop: two calls per job, and the reply carries the attempts and token as they
-- were (strings, no number formatting here): the client adds one to each
local out, leased, running = {}, {}, {}
local deadline = NOW + lease
local JP = P .. 'job:'
local n = 0
for i = 1, #ids do
  local id = ids[i]
  local jk = JP .. id
  local f = redis.call('HMGET', jk, 'state', 'payload', 'attempts', 'lease')
  if f[1] == 'queued' then
    local attempts, token = f[3] or '0', f[4] or '0'
    redis.call('HSET', jk, 'state', 'running', 'start', NOW,
      'attempts', tonumber(attempts) + 1, 'lease', tonumber(token) + 1)
    local queue = from[i] or queues[1]
    local rz = running[queue]
    if not rz then rz = {}; running[queue] = rz end
    rz[#rz + 1] = deadline
    rz[#rz + 1] = id
    local payload = f[2] or ''
    n = n + 1
    out[n] = #id .. ':' .. id .. token .. ':' .. attempts .. ':' .. #payload .. ':' .. payload
    leased[2 * n - 1] = id
    leased[2 * n] = token
  end
end
for queue, rz in pairs(running) do
  for i = 1, #rz, 1000 do
    redis.call('ZADD', P .. 'running:' .. queue, unpack(rz, i, math.min(i + 999, #rz)))
  end
end
flush()
if n > 0 then redis.call('SET', ck, cjson.encode(leased), 'PX', 10000) end
return table.concat(out)
"""

# ARGV[3] = nq, queues. Returns ms until work may be ready (0 = now), or -1 for never.
_DUE = """
local nq = tonumber(ARGV[3])
local best = -1
for i = 1, nq do
  local queue = ARGV[3 + i]
  if redis.call('ZCARD', P .. 'ready:' .. queue) > 0 then return 0 end
  for _, kind in ipairs({'scheduled', 'failed', 'running'}) do
    local first = redis.call('ZRANGE', P .. kind .. ':' .. queue, 0, 0, 'WITHSCORES')
    if first[2] then
      local d = tonumber(first[2]) - NOW
      if d <= 0 then return 0 end
      if best < 0 or d < best then best = d end
    end
  end
end
return best
"""

# ARGV[3] = lease ms, ARGV[4] = JSON [id, token, id, token, ...]. Returns id, reason pairs for
# the leases not held: "cancelled" (same token, state cancelled) or "lost" (the token was
# revoked or the record is gone). A lease that its holder's own settle ended (same token,
# another state) is not reported: nothing was lost, and its consumer may simply not have
# seen the settle's reply yet.
_RENEW = """
local deadline = NOW + tonumber(ARGV[3])
local out = {}
local leases = cjson.decode(ARGV[4])
for i = 1, #leases, 2 do
  local id, token = leases[i], leases[i + 1]
  local f = redis.call('HMGET', jkey(id), 'state', 'lease', 'queue')
  if f[2] ~= token then
    out[#out + 1] = id
    out[#out + 1] = 'lost'
  elseif f[1] == 'running' then
    later('ZADD', 'running', f[3], deadline, id)
  elseif f[1] == 'cancelled' then
    out[#out + 1] = id
    out[#out + 1] = 'cancelled'
  end
end
flush()
return out
"""

# ARGV[3] = JSON [id, token, state, status, error, retry_in ms, id, ...] (flat: no table
# per outcome).
# Returns a string of "1" (applied) or "0", one per outcome. Idempotent: the lease token
# changes whenever a lease is revoked, so a job still holding the token in the outcome's
# state was settled by an earlier try of this very call.
_SETTLE = """
local out = {}
local o = cjson.decode(ARGV[3])
for b = 1, #o, 6 do
  local id, token, state = o[b], o[b + 1], o[b + 2]
  local status, err, retry = o[b + 3], o[b + 4], o[b + 5]
  local jk = jkey(id)
  local f = redis.call('HMGET', jk, 'state', 'lease', 'queue', 'attempts', 'seq', 'key', 'error')
  if f[2] == token and f[1] == state then
    out[#out + 1] = '1'  -- applied by an earlier call whose reply was lost
  elseif f[1] ~= 'running' or f[2] ~= token then
    out[#out + 1] = '0'
  else
    local queue = f[3]
    later('ZREM', 'running', queue, nil, id)
    if state == 'failed' then
      local at = NOW + tonumber(retry)
      local fields = {'HSET', jk, 'state', 'failed', 'run', at}
      if status ~= '' then fields[#fields + 1] = 'status'; fields[#fields + 1] = status end
      if err ~= '' then fields[#fields + 1] = 'error'; fields[#fields + 1] = err end
      redis.call(unpack(fields))
      if err == '' and f[7] then redis.call('HDEL', jk, 'error') end
      add_timed(P .. 'failed:' .. queue, queue, at, id)
    elseif state == 'queued' then
      redis.call('HSET', jk, 'state', 'queued', 'attempts', math.max(0, (tonumber(f[4]) or 1) - 1))
      make_ready(id, queue, tonumber(f[5]) or next_seq(1) + 1)
    else
      finish(jk, id, queue, state, status, err, 0, {f[6], f[7], false})
    end
    out[#out + 1] = '1'
  end
end
flush()
return table.concat(out)
"""

# ARGV[3] = id. Returns 1 if this call cancelled the job.
_CANCEL = """
local id = ARGV[3]
local jk = jkey(id)
local f = redis.call('HMGET', jk, 'state', 'queue', 'key', 'error', 'run')
local state, queue = f[1], f[2]
if not state or not LIVE[state] then return 0 end
local keep_until = 0
if state == 'queued' then
  redis.call('ZREM', P .. 'ready:' .. queue, id)
elseif state == 'running' then
  local rk = P .. 'running:' .. queue
  keep_until = tonumber(redis.call('ZSCORE', rk, id)) or 0
  redis.call('ZREM', rk, id)
else
  redis.call('ZREM', P .. state .. ':' .. queue, id)
end
finish(jk, id, queue, 'cancelled', '499', '', keep_until, {f[3], f[4], f[5]})
flush()
return 1
"""

# ARGV[3] = id. Returns {now, fields...} (fields empty when unknown).
_GET = """
return {NOW, redis.call('HGETALL', jkey(ARGV[3]))}
"""

# Returns {queue, queued, scheduled, running, failed, succeeded, dead, cancelled, ...}.
# Due scheduled / failed jobs count as queued: they are ready, and the next claim takes them.
_STATS = """
local out = {}
local kept = '(' .. (NOW - RET)
for _, queue in ipairs(redis.call('SMEMBERS', P .. 'queues')) do
  local function z(kind) return P .. kind .. ':' .. queue end
  local due_s = redis.call('ZCOUNT', z('scheduled'), '-inf', NOW)
  local due_f = redis.call('ZCOUNT', z('failed'), '-inf', NOW)
  out[#out + 1] = queue
  out[#out + 1] = redis.call('ZCARD', z('ready')) + due_s + due_f
  out[#out + 1] = redis.call('ZCARD', z('scheduled')) - due_s
  out[#out + 1] = redis.call('ZCARD', z('running'))
  out[#out + 1] = redis.call('ZCARD', z('failed')) - due_f
  out[#out + 1] = redis.call('ZCOUNT', z('succeeded'), kept, '+inf')
  out[#out + 1] = redis.call('ZCARD', z('dead'))
  out[#out + 1] = redis.call('ZCOUNT', z('cancelled'), kept, '+inf')
end
return out
"""

# ARGV[3] = limit, ARGV[4..] = queues (none: all). Returns {now, {id, fields...}, ...}.
_DEAD_LETTERS = """
local limit = tonumber(ARGV[3])
local queues = {}
for i = 4, #ARGV do queues[#queues + 1] = ARGV[i] end
if #queues == 0 then queues = redis.call('SMEMBERS', P .. 'queues') end
local candidates = {}
for _, queue in ipairs(queues) do
  local r = redis.call('ZRANGE', P .. 'dead:' .. queue, 0, limit - 1, 'WITHSCORES')
  for i = 1, #r, 2 do candidates[#candidates + 1] = {tonumber(r[i + 1]), r[i]} end
end
table.sort(candidates, function(a, b)
  if a[1] == b[1] then return a[2] < b[2] end
  return a[1] < b[1]
end)
local out = {NOW}
for i = 1, math.min(limit, #candidates) do
  local id = candidates[i][2]
  out[#out + 1] = {id, redis.call('HGETALL', jkey(id))}
end
return out
"""

# ARGV[3] = id. Returns 1 if the job was dead and is queued again.
_RETRY_DEAD = """
local id = ARGV[3]
local jk = jkey(id)
local f = redis.call('HMGET', jk, 'state', 'queue', 'key')
if f[1] ~= 'dead' then return 0 end
local queue, key = f[2], f[3]
redis.call('ZREM', P .. 'dead:' .. queue, id)
redis.call('HDEL', jk, 'status', 'error', 'start', 'fin', 'run')
local seq = next_seq(1) + 1
redis.call('HSET', jk, 'state', 'queued', 'attempts', 0, 'seq', seq)
if key and key ~= '' then
  local other = redis.call('HGET', P .. 'keys', key)
  local state = other and redis.call('HGET', jkey(other), 'state')
  if not (state and LIVE[state]) then redis.call('HSET', P .. 'keys', key, id) end
end
make_ready(id, queue, seq)
flush()
return 1
"""

# ARGV[3..] = queues (none: all). Returns how many dead jobs were deleted.
_PURGE_DEAD = """
local queues = {}
for i = 3, #ARGV do queues[#queues + 1] = ARGV[i] end
if #queues == 0 then queues = redis.call('SMEMBERS', P .. 'queues') end
local n = 0
for _, queue in ipairs(queues) do
  local zk = P .. 'dead:' .. queue
  for _, id in ipairs(redis.call('ZRANGE', zk, 0, -1)) do
    redis.call('DEL', jkey(id))
    n = n + 1
  end
  redis.call('DEL', zk)
end
return n
"""


# Cluster schedules (contract §9): P schedules = hash name -> JSON declaration (written and
# read by Python only, never re-encoded here), P schedule-next = zset name -> next run
# (epoch microseconds: exact in a double), P schedule-last = hash name -> last run.

# ARGV[3] = name. Returns {declaration or false, next or false, last or false}.
_SCHEDULE_GET = """
local name = ARGV[3]
return {redis.call('HGET', P .. 'schedules', name),
  redis.call('ZSCORE', P .. 'schedule-next', name),
  redis.call('HGET', P .. 'schedule-last', name)}
"""

# ARGV[3] = name, ARGV[4] / ARGV[5] = the declaration / next run read before ('' = none),
# ARGV[6] / ARGV[7] = the new ones. Returns 1, or 0 when the schedule changed meanwhile.
_SCHEDULE_PUT = """
local name = ARGV[3]
local current = redis.call('HGET', P .. 'schedules', name) or ''
local next_run = redis.call('ZSCORE', P .. 'schedule-next', name) or ''
if current ~= ARGV[4] or next_run ~= ARGV[5] then return 0 end
redis.call('HSET', P .. 'schedules', name, ARGV[6])
redis.call('ZADD', P .. 'schedule-next', ARGV[7], name)
return 1
"""

# ARGV[3] = name. Returns 1 if it existed.
_UNSCHEDULE = """
local name = ARGV[3]
redis.call('ZREM', P .. 'schedule-next', name)
redis.call('HDEL', P .. 'schedule-last', name)
return redis.call('HDEL', P .. 'schedules', name)
"""

# ARGV[3] = at (micros), or '' for every schedule. Returns {later or false, {name,
# declaration, next, last or false}, ...}: the schedules due at `at` (all of them without
# `at`), by next run then name, and the earliest next run of the others.
_SCHEDULES = """
local nk = P .. 'schedule-next'
local names, later
if ARGV[3] == '' then
  names = redis.call('ZRANGE', nk, 0, -1, 'WITHSCORES')
  later = false
else
  names = redis.call('ZRANGE', nk, '-inf', ARGV[3], 'BYSCORE', 'WITHSCORES')
  local first = redis.call('ZRANGE', nk, '(' .. ARGV[3], '+inf', 'BYSCORE', 'LIMIT', 0, 1,
    'WITHSCORES')
  later = first[2] or false
end
local out = {later}
for i = 1, #names, 2 do
  local name = names[i]
  out[#out + 1] = {name, redis.call('HGET', P .. 'schedules', name) or '', names[i + 1],
    redis.call('HGET', P .. 'schedule-last', name)}
end
return out
"""

# ARGV[3] = name, ARGV[4] = expected next run, ARGV[5] = new next run, ARGV[6] = last run
# (micros), ARGV[7] = JSON jobs as for _ENQUEUE. The compare-and-set of cluster schedules:
# returns 1 (moved on, jobs stored) or 0 (fired by someone else, or removed: no change).
_FIRE = """
local name = ARGV[3]
local current = redis.call('ZSCORE', P .. 'schedule-next', name)
if not current or tonumber(current) ~= tonumber(ARGV[4]) then return 0 end
redis.call('ZADD', P .. 'schedule-next', ARGV[5], name)
redis.call('HSET', P .. 'schedule-last', name, ARGV[6])
store_jobs(cjson.decode(ARGV[7]))
flush()
return 1
"""


def _ms(seconds: float) -> int:
    return math.ceil(seconds * 1000.0)


def _time(fields: dict[bytes, bytes], name: bytes) -> datetime | None:
    value = fields.get(name)
    if not value:
        return None
    return datetime.fromtimestamp(int(value) / 1000.0, tz=UTC)


def _text(fields: dict[bytes, bytes], name: bytes) -> str | None:
    value = fields.get(name)
    return value.decode() if value else None


def _record(job_id: str, flat: Sequence[bytes], now_ms: int) -> JobRecord | None:
    if not flat:
        return None
    fields = dict(zip(flat[::2], flat[1::2], strict=True))
    state = JobState(fields[b"state"].decode())
    run_at = _time(fields, b"run")
    if state in (JobState.SCHEDULED, JobState.FAILED) and int(fields.get(b"run") or 0) <= now_ms:
        state = JobState.QUEUED  # due: the next claim takes it
    args: dict[str, Any] = {}
    with contextlib.suppress(msgspec.DecodeError, TypeError):
        decoded = _decoder.decode(fields.get(b"payload", b""))
        if isinstance(decoded, dict) and isinstance(decoded.get("args"), dict):
            args = decoded["args"]
    status = fields.get(b"status")
    enqueued = _time(fields, b"enq")
    return JobRecord(
        id=job_id,
        handler=(_text(fields, b"handler") or ""),
        queue=(_text(fields, b"queue") or ""),
        args=args,
        state=state,
        status=Status(int(status)) if status else None,
        attempts=int(fields.get(b"attempts") or 0),
        error=_text(fields, b"error"),
        enqueued_at=enqueued or datetime.fromtimestamp(now_ms / 1000.0, tz=UTC),
        started_at=_time(fields, b"start"),
        finished_at=_time(fields, b"fin"),
        key=_text(fields, b"key"),
        run_at=run_at if state in (JobState.SCHEDULED, JobState.FAILED) else None,
    )


def _parse_claimed(data: bytes) -> list[Delivery]:
    """Split the claim script's reply (see _CLAIM) into Deliveries."""
    deliveries = []
    pos, end = 0, len(data)
    while pos < end:
        colon = data.index(b":", pos)
        start = colon + 1
        pos = start + int(data[pos:colon])
        job_id = data[start:pos].decode()
        colon = data.index(b":", pos)
        token = str(int(data[pos:colon]) + 1)
        pos = colon + 1
        colon = data.index(b":", pos)
        attempt = int(data[pos:colon]) + 1
        pos = colon + 1
        colon = data.index(b":", pos)
        start = colon + 1
        pos = start + int(data[pos:colon])
        try:
            job = decode_job(data[start:pos])
        except DecodeError as exc:
            deliveries.append(Delivery(job_id, token, attempt, None, str(exc)))
            continue
        deliveries.append(Delivery(job_id, token, attempt, job))
    return deliveries


def _check_schedule_name(name: object) -> None:
    if not isinstance(name, str):
        raise TypeError(f"schedule name must be a str, got {name!r}")
    if not name:
        raise ValueError("schedule name must be a non-empty str")


def _schedule_record(
    name: str | bytes,
    declaration: bytes,
    next_run: bytes | int,
    last_run: bytes | None,
) -> ScheduleRecord:
    fields = _decoder.decode(declaration)
    return ScheduleRecord(
        name=name.decode() if isinstance(name, bytes) else name,
        job=decode_job(fields["payload"]),
        every=fields["every"],
        cron=fields["cron"],
        timezone=fields["timezone"],
        next_run_at=from_micros(int(next_run)),
        last_run_at=None if last_run is None else from_micros(int(last_run)),
        jitter=fields["jitter"],
        misfire=fields["misfire"],
    )


def _check_queues(queues: Sequence[str]) -> list[str]:
    if isinstance(queues, str) or not isinstance(queues, Sequence):
        raise TypeError(f"queues must be a sequence of queue names, got {queues!r}")
    names = list(dict.fromkeys(queues))
    if not names or not all(isinstance(q, str) and q for q in names):
        raise ValueError(f"queues must be one or more non-empty str names, got {queues!r}")
    return names


def _split_url(url: str) -> tuple[str, str]:
    """Return (url for redis-py, prefix), taking ``?prefix=`` out of the query."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    prefix = "pywork"
    rest = []
    for name, value in query:
        if name == "prefix":
            prefix = value
        else:
            rest.append((name, value))
    if not prefix or any(c in prefix for c in "{}"):
        raise ValueError(
            f"the redis url's prefix must be a non-empty name without braces, got {prefix!r}"
        )
    return urlunsplit(parts._replace(query=urlencode(rest))), prefix


class _Waker:
    """One pub/sub subscription per broker: sets `event` when work arrives in a queue of
    interest. Resubscribes by itself after a disconnect (and then sets `event`, since
    notifications may have been missed meanwhile)."""

    def __init__(self, client: aioredis.Redis, channel: str) -> None:
        self.client = client
        self.channel = channel
        self.event = asyncio.Event()
        self.queues: set[bytes] = set()
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()

    async def ensure(self, queues: Sequence[str]) -> None:
        """Be subscribed (confirmed by the server) before a claim or wait on `queues`."""
        self.queues.update(q.encode() for q in queues)
        if self._task is not None:
            return
        async with self._lock:
            if self._task is None:
                pubsub = await self._subscribe()  # the first time, errors reach the caller
                self._task = asyncio.create_task(self._run(pubsub), name="pywork-redis-wake")

    async def _subscribe(self) -> Any:
        pubsub: Any = self.client.pubsub()
        try:
            await pubsub.subscribe(self.channel)
            async with asyncio.timeout(10.0):
                while True:
                    message = await pubsub.get_message(timeout=1.0)
                    if message is not None and message["type"] == "subscribe":
                        return pubsub
        except BaseException:
            await pubsub.aclose()
            raise

    async def _run(self, pubsub: Any) -> None:
        backoff = 0.05
        while True:
            try:
                if pubsub is None:
                    pubsub = await self._subscribe()
                    self.event.set()  # we may have missed notifications: look again
                backoff = 0.05
                async for message in pubsub.listen():
                    if message["type"] == "message" and message["data"] in self.queues:
                        self.event.set()
            except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
                logger.debug("redis wake-up subscription lost (%s); resubscribing", exc)
            except Exception:  # never let wake-ups die: wait() would fall back to timeouts
                logger.exception("redis wake-up subscription failed; resubscribing")
            finally:
                if pubsub is not None:
                    with contextlib.suppress(Exception):
                        await pubsub.aclose()
                    pubsub = None
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 2.0)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None


class RedisBroker:
    """A durable broker on Redis >= 7 (redis-py's asyncio client).

    Use :func:`pywork.connect` with ``redis://host:port/db`` (``rediss://`` for TLS); the
    optional ``?prefix=NAME`` query parameter namespaces the keys (default ``pywork``);
    other query parameters go to redis-py (e.g. ``socket_timeout``).

    Args:
        client: a ``redis.asyncio.Redis`` (bytes responses, i.e. ``decode_responses=False``).
        prefix: the key namespace; keys are ``{prefix}:...`` (a Cluster hash tag).
        retention: seconds the records of succeeded and cancelled jobs are kept.
        url: the URL shown in logs (defaults to a description of the client).
        owns_client: close `client` in :meth:`close`.
    """

    def __init__(
        self,
        client: aioredis.Redis,
        *,
        prefix: str = "pywork",
        retention: float = 3600.0,
        url: str | None = None,
        owns_client: bool = False,
    ) -> None:
        if not isinstance(client, aioredis.Redis):
            raise TypeError(f"client must be a redis.asyncio.Redis, got {client!r}")
        if not isinstance(prefix, str) or not prefix or any(c in prefix for c in "{}"):
            raise ValueError(f"prefix must be a non-empty str without braces, got {prefix!r}")
        self.retention = duration(retention, "retention")
        self.url = url or f"redis://(client {client!r})?prefix={prefix}"
        self.prefix = prefix
        self._client = client
        self._owns_client = owns_client
        self._p = f"{{{prefix}}}:"
        self._keys = [f"{self._p}seq"]
        self._retention_ms = _ms(self.retention)
        self._waker = _Waker(client, f"{self._p}wake")
        self._closed = False
        register = client.register_script
        self._enqueue = register(_PRELUDE + _ENQUEUE)
        self._claim = register(_PRELUDE + _CLAIM)
        self._due = register(_PRELUDE + _DUE)
        self._renew = register(_PRELUDE + _RENEW)
        self._settle = register(_PRELUDE + _SETTLE)
        self._cancel = register(_PRELUDE + _CANCEL)
        self._get = register(_PRELUDE + _GET)
        self._stats = register(_PRELUDE + _STATS)
        self._dead_letters = register(_PRELUDE + _DEAD_LETTERS)
        self._retry_dead = register(_PRELUDE + _RETRY_DEAD)
        self._purge_dead = register(_PRELUDE + _PURGE_DEAD)
        self._schedule_get = register(_PRELUDE + _SCHEDULE_GET)
        self._schedule_put = register(_PRELUDE + _SCHEDULE_PUT)
        self._unschedule = register(_PRELUDE + _UNSCHEDULE)
        self._schedules = register(_PRELUDE + _SCHEDULES)
        self._fire = register(_PRELUDE + _FIRE)

    @classmethod
    async def from_url(cls, url: str, *, retention: float = 3600.0) -> RedisBroker:
        """Connect to the Redis server at `url` and check that it answers.

        Args:
            url: ``redis://[user:password@]host:port/db[?prefix=NAME&...]`` or ``rediss://``.
            retention: seconds the records of succeeded and cancelled jobs are kept.

        Raises:
            ValueError: the url or retention is invalid.
            redis.exceptions.ConnectionError: the server cannot be reached.
        """
        if not isinstance(url, str) or not url.lower().startswith(("redis://", "rediss://")):
            raise ValueError(f"a redis broker url starts with redis:// or rediss://, got {url!r}")
        retention = duration(retention, "retention")
        driver_url, prefix = _split_url(url)
        # Commands are retried only when the server refused them while loading its data
        # after a restart (nothing ran). Never on a lost connection: a script whose reply
        # was lost may have run, and running claim or settle twice is not harmless.
        # Connections the server closed (a restart) are replaced when taken from the pool;
        # other errors reach the caller, and the consumer retries with backoff.
        options: dict[str, Any] = {}
        if _MaintNotificationsConfig is not None:
            # redis-py >= 7 skips its check for connections the server closed while they
            # sat in the pool when these notifications are on ("auto" counts as on)
            options["maint_notifications_config"] = _MaintNotificationsConfig(enabled=False)
        client = aioredis.Redis.from_url(
            driver_url,
            retry=Retry(
                ExponentialBackoff(cap=1.0, base=0.02), 30, supported_errors=(BusyLoadingError,)
            ),
            retry_on_error=[],
            socket_connect_timeout=5.0,
            socket_keepalive=True,
            decode_responses=False,
            protocol=2,
            **options,
        )
        try:
            await client.ping()
        except BaseException:
            await client.aclose()
            raise
        return cls(client, prefix=prefix, retention=retention, url=url, owns_client=True)

    def __repr__(self) -> str:
        from pywork.brokers import mask_url

        return f"<RedisBroker {mask_url(self.url)}>"

    async def _run(
        self,
        script: Any,
        args: list[Any],
        *,
        idempotent: bool = False,
        retry: list[Any] | None = None,
    ) -> Any:
        """Run a script. An idempotent one is retried (with `retry` as its arguments, if
        given) over a few seconds when the connection fails: its reply may have been lost
        after it ran (a server restart)."""
        if self._closed:
            raise RuntimeError("this RedisBroker is closed")
        full = [self._p, self._retention_ms, *args]
        if not idempotent:
            return await script(keys=self._keys, args=full)
        for delay in _RETRY_DELAYS:
            try:
                return await script(keys=self._keys, args=full)
            except (RedisConnectionError, RedisTimeoutError) as exc:
                if self._closed:
                    raise
                logger.debug("redis call failed (%s); retrying in %.2fs", exc, delay)
            await asyncio.sleep(delay)
            if retry is not None:
                full = [self._p, self._retention_ms, *retry]
        return await script(keys=self._keys, args=full)

    # producer side ------------------------------------------------------------------
    def _job_args(self, job: Job, at: datetime | None, delay: float | None) -> list[str]:
        payload = encode_for_enqueue(job).decode()
        if delay is not None:
            when = f"d{_ms(delay)}"
        elif at is not None:
            when = f"a{math.floor(at.timestamp() * 1000.0)}"  # naive = local time
        else:
            when = ""
        mr = "" if job.max_retries is None else str(job.max_retries)
        return [job.id, job.queue, payload, job.handler, job.key or "", mr, when]

    async def enqueue(
        self, job: Job, *, at: datetime | None = None, delay: float | None = None
    ) -> str:
        """Store `job` and return its id, or the id of the live job holding its key.

        Durable once it returns as far as the server's ``appendfsync`` allows.

        Args:
            job: the job.
            at: when it becomes ready (naive = local time; a past time = now).
            delay: seconds (or a timedelta) until it becomes ready; exclusive with `at`.

        Raises:
            TypeError: `job` is not a Job, `at` not a datetime or `delay` not a duration.
            ValueError: both `at` and `delay`, a negative `delay`, or a duplicate job id.
            SerializationError: the args or headers are not plain JSON (nothing is stored).
        """
        if at is not None and delay is not None:
            raise ValueError("pass either at= or delay=, not both")
        if at is not None and not isinstance(at, datetime):
            raise TypeError(f"at must be a datetime or None, got {at!r}")
        delay = optional_duration(delay, "delay")
        packed = _encoder.encode([self._job_args(job, at, delay)])
        return (await self._store(packed))[0]

    async def enqueue_many(self, jobs: Sequence[Job]) -> list[str]:
        """Store `jobs` atomically in one round trip (every job is encoded first).

        Returns:
            Per job, its id (or the id of the live job already holding its key).

        Raises:
            TypeError: `jobs` is not a sequence of Jobs.
            ValueError: the same id twice, or an id already stored (nothing is stored).
            SerializationError: a job cannot be encoded; nothing is stored.
        """
        if isinstance(jobs, str | bytes) or not isinstance(jobs, Sequence):
            raise TypeError(f"enqueue_many takes a sequence of Jobs, got {jobs!r}")
        if not jobs:
            return []
        packed = _encoder.encode([self._job_args(job, None, None) for job in jobs])
        return await self._store(packed)

    async def _store(self, packed: bytes) -> list[str]:
        reply = await self._run(self._enqueue, [packed, 1], idempotent=True, retry=[packed, 0])
        ids: list[str] | dict[str, str] = _decoder.decode(reply)
        if isinstance(ids, dict):
            raise ValueError(f"a job with id {ids['duplicate']!r} is already stored")
        return ids

    async def get(self, job_id: str) -> JobRecord | None:
        """The record of `job_id`, or None when unknown (or no longer kept)."""
        if not isinstance(job_id, str):
            raise TypeError(f"job_id must be a str, got {job_id!r}")
        now, flat = await self._run(self._get, [job_id])
        return _record(job_id, flat, int(now))

    async def cancel(self, job_id: str) -> bool:
        """Cancel a queued, scheduled, failed or running job; True if this call did it.

        A running job's consumer learns of it at its next renew (reason ``"cancelled"``).
        """
        if not isinstance(job_id, str):
            raise TypeError(f"job_id must be a str, got {job_id!r}")
        return bool(await self._run(self._cancel, [job_id]))

    async def stats(self) -> dict[str, QueueStats]:
        """Per-queue counts of jobs in each state (due scheduled/failed jobs count as queued)."""
        flat = await self._run(self._stats, [])
        out: dict[str, QueueStats] = {}
        for i in range(0, len(flat), 8):
            out[flat[i].decode()] = QueueStats(*(int(n) for n in flat[i + 1 : i + 8]))
        return dict(sorted(out.items()))

    async def dead_letters(self, queue: str | None = None, limit: int = 100) -> list[JobRecord]:
        """Dead jobs, oldest death first, of `queue` (None: every queue)."""
        if queue is not None and (not isinstance(queue, str) or not queue):
            raise ValueError(f"queue must be None or a non-empty str, got {queue!r}")
        limit = positive_int(limit, "limit")
        result = await self._run(self._dead_letters, [limit, *([queue] if queue else [])])
        now = int(result[0])
        records = [_record(item[0].decode(), item[1], now) for item in result[1:]]
        return [record for record in records if record is not None]

    async def retry_dead(self, job_id: str) -> bool:
        """Queue a dead job again with attempts reset to 0; True if it was dead."""
        if not isinstance(job_id, str):
            raise TypeError(f"job_id must be a str, got {job_id!r}")
        return bool(await self._run(self._retry_dead, [job_id]))

    async def purge_dead(self, queue: str | None = None) -> int:
        """Delete the dead jobs of `queue` (None: every queue); return how many."""
        if queue is not None and (not isinstance(queue, str) or not queue):
            raise ValueError(f"queue must be None or a non-empty str, got {queue!r}")
        return int(await self._run(self._purge_dead, [queue] if queue else []))

    async def close(self) -> None:
        """Stop the wake-up subscription and close the connections (if owned). Idempotent."""
        if self._closed:
            return
        self._closed = True
        await self._waker.close()
        if self._owns_client:
            await self._client.aclose()

    # cluster schedules (contract §9) ----------------------------------------------------
    async def schedule(
        self,
        name: str,
        job: Job,
        *,
        every: float | timedelta | None = None,
        cron: str | None = None,
        timezone: str = "UTC",
        jitter: float | timedelta = 0.0,
        misfire: str = "skip",
    ) -> ScheduleRecord:
        """Declare (or redeclare) the schedule `name`; see :meth:`ScheduleStore.schedule`."""
        spec, payload = declare(
            name, job, every=every, cron=cron, timezone=timezone, jitter=jitter, misfire=misfire
        )
        declaration = _encoder.encode(
            {
                "payload": payload.decode(),
                "every": spec.every,
                "cron": spec.cron,
                "timezone": spec.timezone,
                "jitter": spec.jitter,
                "misfire": spec.misfire,
            }
        )
        while True:  # compare-and-set against a concurrent redeclaration
            old, old_next, last = await self._run(self._schedule_get, [name])
            next_run = None
            if old is not None and old_next is not None:
                stored = _schedule_record(name, old, old_next, None)
                if spec.same_timing(stored.spec):
                    next_run = int(old_next)
            if next_run is None:
                next_run = to_micros(spec.first_run(cronlib.now()))
            args = [name, old or "", old_next or "", declaration, next_run]
            if await self._run(self._schedule_put, args):
                return _schedule_record(name, declaration, next_run, last)

    async def unschedule(self, name: str) -> bool:
        """Delete the schedule `name`; True if it existed."""
        check_schedule_name(name)
        return bool(await self._run(self._unschedule, [name]))

    async def schedules(self) -> list[ScheduleRecord]:
        """Every schedule, by name."""
        reply = await self._run(self._schedules, [""])
        records = [_schedule_record(*row) for row in reply[1:]]
        return sorted(records, key=lambda record: record.name)

    async def due_schedules(self, at: datetime) -> tuple[list[ScheduleRecord], datetime | None]:
        """The schedules whose next run is at or before `at` (by next run, then name), and
        the earliest next run of the others (None when there are none)."""
        if not isinstance(at, datetime):
            raise TypeError(f"at must be a datetime, got {at!r}")
        reply = await self._run(self._schedules, [to_micros(at)])
        later = reply[0]
        records = [_schedule_record(*row) for row in reply[1:]]
        return records, (from_micros(int(later)) if later else None)

    async def fire(
        self,
        name: str,
        expected: datetime,
        next_run_at: datetime,
        last_run_at: datetime,
        jobs: Sequence[tuple[Job, float | None]],
    ) -> bool:
        """If `name` still runs next at `expected`, move it on and enqueue `jobs`, in one
        script (the compare-and-set that makes each tick fire once across consumers).

        Returns:
            True if this call won the compare-and-set (and enqueued the jobs); False
            (nothing changed) if another consumer fired it first or it was removed.
        """
        packed = _encoder.encode(
            [self._job_args(job, None, delay if delay else None) for job, delay in jobs]
        )
        args = [name, to_micros(expected), to_micros(next_run_at), to_micros(last_run_at), packed]
        return bool(await self._run(self._fire, args))

    # consumer side ------------------------------------------------------------------
    async def claim(
        self, queues: Sequence[str], limit: int, *, lease: float, max_retries: int
    ) -> list[Delivery]:
        """Lease up to `limit` ready jobs of `queues`, oldest first (see the Protocol)."""
        names = _check_queues(queues)
        limit = positive_int(limit, "limit", minimum=0)
        lease = duration(lease, "lease", allow_zero=False)
        max_retries = positive_int(max_retries, "max_retries", minimum=0)
        if self._closed:
            raise RuntimeError("this RedisBroker is closed")
        await self._waker.ensure(names)
        if limit == 0:
            return []
        claim_id = os.urandom(12).hex()
        data: bytes = await self._run(
            self._claim,
            [claim_id, limit, _ms(lease), max_retries, len(names), *names],
            idempotent=True,
        )
        return _parse_claimed(data)

    async def wait(self, queues: Sequence[str], timeout: float) -> None:
        """Return when work may be ready in `queues`, or after `timeout` seconds.

        Sleeps on a pub/sub notification, bounded by the earliest due time of the
        queues' scheduled and failed jobs and leases.
        """
        names = _check_queues(queues)
        timeout = duration(timeout, "timeout")
        if self._closed:
            raise RuntimeError("this RedisBroker is closed")
        await self._waker.ensure(names)
        event = self._waker.event
        if event.is_set():
            event.clear()
            return
        due = int(await self._run(self._due, [len(names), *names]))
        if due == 0:
            return
        if due > 0:
            timeout = min(timeout, due / 1000.0)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await event.wait()
            event.clear()

    wait_for_work = wait  # (until this backend moves onto the BrokerFront)

    async def renew(self, deliveries: Sequence[Delivery], *, lease: float) -> dict[str, str]:
        """Extend the leases still held; return ``{id: "cancelled" | "lost"}`` for the others.

        A lease is "lost" once it was revoked (it expired and a claim took the job back)
        or the record is gone. A lease that ended by its holder's own settle is not
        reported: nothing was lost, its consumer just has not seen the settle's reply yet.
        """
        lease = duration(lease, "lease", allow_zero=False)
        if not deliveries:
            return {}
        packed = _encoder.encode([part for d in deliveries for part in (d.id, d.token)])
        flat = await self._run(self._renew, [_ms(lease), packed], idempotent=True)
        return {flat[i].decode(): _REASONS[flat[i + 1]] for i in range(0, len(flat), 2)}

    async def settle(self, outcomes: Sequence[Outcome]) -> list[bool]:
        """Apply outcomes in one round trip, each fenced by its lease token.

        Returns:
            Per outcome, whether it was applied (False: lease lost or job cancelled).

        Raises:
            ValueError: an outcome's state is not succeeded, failed, dead or queued.
        """
        if not outcomes:
            return []
        rows: list[str | int] = []
        for outcome in outcomes:
            if outcome.state not in _CHECK_STATES:
                raise ValueError(
                    f"an outcome's state must be succeeded, failed, dead or queued, "
                    f"got {outcome.state!r}"
                )
            retry_in = optional_duration(outcome.retry_in, "retry_in") or 0.0
            rows += (
                outcome.delivery.id,
                outcome.delivery.token,
                _STATE_ARG[outcome.state],
                "" if outcome.status is None else str(int(outcome.status)),
                outcome.error or "",
                _ms(retry_in),
            )
        applied: bytes = await self._run(self._settle, [_encoder.encode(rows)], idempotent=True)
        return [flag == 49 for flag in applied]  # b"1"
