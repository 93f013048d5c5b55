-- Returns {queue, queued, scheduled, running, failed, succeeded, dead, cancelled, ...}.
-- Due scheduled / failed jobs count as queued: they are ready, and the next claim takes them.
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
