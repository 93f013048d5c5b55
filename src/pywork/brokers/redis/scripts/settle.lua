-- ARGV[3] = JSON [id, token, state, status, error, retry_in ms, id, ...] (flat: no table
-- per outcome); ARGV[4..] = pairs "<n>r" / "<n>p", value: the result / progress (encoded
-- JSON, stored as given) of the n-th outcome, for the outcomes that carry one.
-- Returns a string of "1" (applied) or "0", one per outcome. Idempotent: the lease token
-- changes whenever a lease is revoked, so a job still holding the token in the outcome's
-- state was settled by an earlier try of this very call.
local out = {}
local o = cjson.decode(ARGV[3])
local extra = nil
if ARGV[4] then
  extra = {}
  for i = 4, #ARGV, 2 do extra[ARGV[i]] = ARGV[i + 1] end
end
for b = 1, #o, 6 do
  local id, token, state = o[b], o[b + 1], o[b + 2]
  local status, err, retry = o[b + 3], o[b + 4], o[b + 5]
  local jk = jkey(id)
  local f = redis.pcall('HMGET', jk, 'state', 'lease', 'queue', 'attempts', 'seq', 'key', 'error')
  if f[2] == token and f[1] == state then
    out[#out + 1] = '1'  -- applied by an earlier call whose reply was lost
  elseif f[1] ~= 'running' or f[2] ~= token or not f[3] then
    -- (a record without its queue cannot be moved: the claim that takes it back after
    -- its lease, knowing the queue, settles it dead as a bad record)
    out[#out + 1] = '0'
  else
    local queue = f[3]
    local more = nil  -- {field, value, ...}: the result and progress to store
    if extra then
      local n = (b + 5) / 6
      local result, progress = extra[n .. 'r'], extra[n .. 'p']
      if result or progress then
        more = {}
        if result then more[1] = 'result'; more[2] = result end
        if progress then more[#more + 1] = 'progress'; more[#more + 1] = progress end
      end
    end
    later('ZREM', 'running', queue, nil, id)
    if state == 'failed' then
      local at = NOW + tonumber(retry)
      local fields = {'HSET', jk, 'state', 'failed', 'run', at}
      if status ~= '' then fields[#fields + 1] = 'status'; fields[#fields + 1] = status end
      if err ~= '' then fields[#fields + 1] = 'error'; fields[#fields + 1] = err end
      if more then
        for i = 1, #more do fields[#fields + 1] = more[i] end
      end
      redis.call(unpack(fields))
      if err == '' and f[7] then redis.call('HDEL', jk, 'error') end
      add_timed(P .. 'failed:' .. queue, queue, at, id)
    elseif state == 'queued' then
      local fields = {'HSET', jk, 'state', 'queued', 'attempts',
        math.max(0, (tonumber(f[4]) or 1) - 1)}
      if more then
        for i = 1, #more do fields[#fields + 1] = more[i] end
      end
      redis.call(unpack(fields))
      make_ready(id, queue, tonumber(f[5]) or next_seq(1) + 1)
    else
      finish(jk, id, queue, state, status, err, 0, {f[6], f[7], false}, more)
    end
    out[#out + 1] = '1'
  end
end
flush()
return table.concat(out)
