-- ARGV[3..] = queues (none: all). Returns how many dead jobs were deleted.
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
  drop_if_empty(queue)
end
return n
