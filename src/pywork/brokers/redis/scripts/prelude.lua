-- The prelude of every script (each is registered as prelude + its own file).
--
-- Every script gets KEYS[1] = "<P>seq" (it routes the call to the prefix's slot: every
-- key of a store shares the hash tag {prefix}), ARGV[1] = P and ARGV[2] = the retention
-- in ms; its own arguments start at ARGV[3]. NOW is the server's clock, in epoch ms.
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
-- P queues holds the names of the queues that hold records: a queue's name is dropped
-- once its seven sets are empty. P expiry scores each queue holding records kept for
-- retention (succeeded / cancelled) by the earliest of their scores, so that the clean-up
-- finds the records past retention without walking every queue.
local KINDS = {'ready', 'scheduled', 'failed', 'running', 'dead', 'succeeded', 'cancelled'}
local function drop_if_empty(queue)
  local keys = {}
  for i, kind in ipairs(KINDS) do keys[i] = P .. kind .. ':' .. queue end
  if redis.call('EXISTS', unpack(keys)) == 0 then
    redis.call('SREM', P .. 'queues', queue)
    redis.call('ZREM', P .. 'expiry', queue)
    return true
  end
  return false
end
local kept = {}  -- queue -> lowest score of the records kept for retention by this script
local emptied = {}  -- queues whose records this script deleted: their name may go
-- the ids of the jobs this script finished (succeeded, dead, cancelled), published by
-- flush() as one JSON array on P done for broker.wait, only while someone listens
local done = {}
local function flush()
  for _, batch in ipairs(pending_order) do
    local step = batch.op == 'ZADD' and 1000 or 500
    for i = 1, batch.n, step do
      redis.call(batch.op, batch.key, unpack(batch, i, math.min(i + step - 1, batch.n)))
    end
  end
  pending, pending_order = {}, {}
  if next(kept) then
    local args = {'ZADD', P .. 'expiry', 'LT'}
    for queue, score in pairs(kept) do
      args[#args + 1] = score
      args[#args + 1] = queue
    end
    redis.call(unpack(args))
    kept = {}
  end
  if next(emptied) then
    for queue in pairs(emptied) do drop_if_empty(queue) end
    emptied = {}
  end
  if done[1] then
    local channel = P .. 'done'
    if redis.call('PUBSUB', 'NUMSUB', channel)[2] > 0 then
      redis.call('PUBLISH', channel, cjson.encode(done))
    end
    done = {}
  end
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

-- succeeded / dead / cancelled. `f` = HMGET key, error, run; `more` = nil or further
-- {field, value, ...} to set (result, progress). A record kept for retention is scored so
-- that it lives until max(finish + retention, keep_until): a running job cancelled must
-- outlive its lease, so that its consumer's next renew reads "cancelled".
local function finish(jk, id, queue, state, status, err, keep_until, f, more)
  drop_key(f[1], id)
  done[#done + 1] = id
  if state ~= 'dead' and RET <= 0 and keep_until <= NOW then
    redis.call('DEL', jk)
    emptied[queue] = true
    return
  end
  if more then
    local fields = {'HSET', jk, 'state', state, 'fin', NOW}
    if status ~= '' then fields[#fields + 1] = 'status'; fields[#fields + 1] = status end
    if err ~= '' then fields[#fields + 1] = 'error'; fields[#fields + 1] = err end
    for i = 1, #more do fields[#fields + 1] = more[i] end
    redis.call(unpack(fields))
    if err == '' and f[2] then redis.call('HDEL', jk, 'error') end
  elseif err ~= '' then
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
    local score = math.max(NOW, keep_until - RET)
    later('ZADD', state, queue, score, id)
    if not kept[queue] or score < kept[queue] then kept[queue] = score end
  end
end

-- a job whose record cannot be used (a mistyped or missing field, an id that is not
-- UTF-8): dead with BAD_REQUEST and an error naming what is wrong
local function bad_record(id, queue, what)
  local jk = jkey(id)
  local f = redis.call('HMGET', jk, 'key', 'error', 'run')
  finish(jk, id, queue, 'dead', '400', 'bad stored record: ' .. what, 0, f)
end

-- true when `s` is valid UTF-8 (what Python's strict decoder accepts)
local function valid_utf8(s)
  if not string.find(s, '[\128-\255]') then return true end
  local i, n = 1, #s
  while i <= n do
    local c = string.byte(s, i)
    if c < 128 then
      i = i + 1
    else
      local len, min
      if c >= 194 and c <= 223 then len, min = 2, 128
      elseif c >= 224 and c <= 239 then len, min = 3, 2048
      elseif c >= 240 and c <= 244 then len, min = 4, 65536
      else return false end
      if i + len - 1 > n then return false end
      local cp = c % (2 ^ (7 - len))
      for j = i + 1, i + len - 1 do
        local b = string.byte(s, j)
        if b < 128 or b > 191 then return false end
        cp = cp * 64 + (b - 128)
      end
      if cp < min or cp > 1114111 or (cp >= 55296 and cp <= 57343) then return false end
      i = i + len
    end
  end
  return true
end

-- a non-negative integer as stored by pywork (decimal digits, exact in a double)
local function counter(s)
  return s == false or s == nil or (#s < 16 and string.find(s, '^%d+$') ~= nil)
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
