-- ARGV[3] = id. Returns 1 if the job was dead and is queued again.
local id = ARGV[3]
local jk = jkey(id)
local f = redis.call('HMGET', jk, 'state', 'queue', 'key')
if f[1] ~= 'dead' then return 0 end
local queue, key = f[2], f[3]
if not queue then return redis.error_reply('bad stored record: job ' .. id .. ' has no queue field') end
redis.call('SADD', P .. 'queues', queue)
redis.call('ZREM', P .. 'dead:' .. queue, id)
redis.call('HDEL', jk, 'status', 'error', 'start', 'fin', 'run', 'result', 'progress')
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
