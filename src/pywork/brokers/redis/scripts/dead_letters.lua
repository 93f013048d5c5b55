-- ARGV[3] = limit, ARGV[4..] = queues (none: all). Returns {{id, fields...}, ...},
-- oldest death first.
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
local out = {}
for i = 1, math.min(limit, #candidates) do
  local id = candidates[i][2]
  out[#out + 1] = {id, redis.call('HGETALL', jkey(id))}
end
return out
