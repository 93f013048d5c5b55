-- ARGV[3] = id. Returns 1 if this call cancelled the job.
local id = ARGV[3]
local jk = jkey(id)
local f = redis.call('HMGET', jk, 'state', 'queue', 'key', 'error', 'run')
local state, queue = f[1], f[2]
if not state or not LIVE[state] then return 0 end
if not queue then return redis.error_reply('bad stored record: job ' .. id .. ' has no queue field') end
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
