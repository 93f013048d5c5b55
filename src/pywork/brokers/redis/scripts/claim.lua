-- claim: take back expired leases, make due jobs ready, then lease the oldest ready jobs.
--
-- ARGV[3] = claim id, ARGV[4] = limit, ARGV[5] = lease ms, ARGV[6] = default max_retries,
-- ARGV[7] / ARGV[8] = the text before / after the attempts in the error of a job dead
-- because its lease expired too often (pywork.brokers.base.LEASE_EXPIRED), ARGV[9] = nq,
-- ARGV[10..] = the queues. Returns one string: per claimed job
-- "<len(id)>:<id><token - 1>:<attempts - 1>:<len(payload)>:<payload>" (one bulk reply
-- parses much faster than an array of 4 * limit elements). The leases are remembered for
-- 10 s under the claim id, so that a call retried after a lost reply returns the same jobs
-- instead of leaving them leased to nobody until their lease expires.

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
    local f = redis.pcall('HMGET', jk, 'state', 'attempts', 'mr', 'seq', 'key', 'error', 'run',
      'lease', 'queue')
    if f[1] ~= 'running' then  -- (settled, or not a hash: nothing to take back)
    elseif not counter(f[8]) then
      bad_record(id, queue, "field 'lease' is not a count")
    elseif not f[9] then
      bad_record(id, queue, 'no queue field')
    else
      local attempts = tonumber(f[2]) or 0
      local mr = tonumber(f[3]) or default_mr
      -- revoke the lease: its holder's token no longer matches (renew says "lost")
      redis.call('HINCRBY', jk, 'lease', 1)
      if attempts > mr then
        finish(jk, id, queue, 'dead', '408', ARGV[7] .. attempts .. ARGV[8], 0,
          {f[5], f[6], f[7]})
      else
        redis.call('HSET', jk, 'state', 'queued')
        make_ready(id, queue, tonumber(f[4]) or next_seq(1) + 1)
      end
    end
  end
end

-- the lowest score of a queue's records kept for retention (nil: none)
local function kept_head(queue)
  local first = nil
  for _, kind in ipairs({'succeeded', 'cancelled'}) do
    local head = redis.call('ZRANGE', P .. kind .. ':' .. queue, 0, 0, 'WITHSCORES')
    if head[2] and (not first or tonumber(head[2]) < first) then first = tonumber(head[2]) end
  end
  return first
end

-- lazily delete succeeded / cancelled records past retention, at most every 2 s, with
-- bounded work: at most 1,000 records of at most 100 queues (found through P expiry), and
-- a slice of about 100 names of P queues (SSCAN, its cursor in P sweep) whose queues are
-- dropped when empty or indexed in P expiry (names left by older versions)
local function cleanup()
  if not redis.call('SET', P .. 'cleanup', '1', 'PX', 2000, 'NX') then return end
  local cut = '(' .. (NOW - RET)
  local budget = 1000
  local ek = P .. 'expiry'
  for _, queue in ipairs(redis.call('ZRANGE', ek, '-inf', cut, 'BYSCORE', 'LIMIT', 0, 100)) do
    if budget <= 0 then break end
    for _, kind in ipairs({'succeeded', 'cancelled'}) do
      local zk = P .. kind .. ':' .. queue
      local ids = redis.call('ZRANGE', zk, '-inf', cut, 'BYSCORE', 'LIMIT', 0, budget)
      if #ids > 0 then
        redis.call('ZREM', zk, unpack(ids))
        for _, id in ipairs(ids) do redis.call('DEL', jkey(id)) end
        budget = budget - #ids
      end
    end
    local first = kept_head(queue)
    if first then
      redis.call('ZADD', ek, first, queue)
    elseif not drop_if_empty(queue) then
      redis.call('ZREM', ek, queue)
    end
  end
  local sk = P .. 'sweep'
  local scan = redis.call('SSCAN', P .. 'queues', redis.call('GET', sk) or '0', 'COUNT', 100)
  redis.call('SET', sk, scan[1])
  for _, queue in ipairs(scan[2]) do
    if not drop_if_empty(queue) then
      local first = kept_head(queue)
      if first then redis.call('ZADD', ek, 'LT', first, queue) end
    end
  end
end

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
      out[#out + 1] = #id .. ':' .. id .. token .. ':' .. ((tonumber(f[3]) or 1) - 1) .. ':' ..
        #payload .. ':' .. payload
    end
  end
  return table.concat(out)
end
local limit, lease, default_mr = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local nq = tonumber(ARGV[9])
local queues = {}
for i = 1, nq do queues[i] = ARGV[9 + i] end
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
  local f = redis.pcall('HMGET', jk, 'state', 'payload', 'attempts', 'lease', 'queue')
  local attempts, token = f[3] or '0', f[4] or '0'
  local queue = from[i] or queues[1]
  if f[1] ~= 'queued' then  -- (a stale entry, or not a hash: dropped from the index)
  elseif not counter(attempts) then
    bad_record(id, queue, "field 'attempts' is not a count")
  elseif not counter(token) then
    bad_record(id, queue, "field 'lease' is not a count")
  elseif f[5] ~= queue then
    bad_record(id, queue, f[5] and 'its queue field is not the queue it is ready in'
      or 'no queue field')
  elseif not valid_utf8(id) then
    bad_record(id, queue, 'the job id is not valid UTF-8')
  else
    redis.call('HSET', jk, 'state', 'running', 'start', NOW,
      'attempts', tonumber(attempts) + 1, 'lease', tonumber(token) + 1)
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
