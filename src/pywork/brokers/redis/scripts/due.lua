-- ARGV[3] = nq, queues. Returns ms until work may be ready (0 = now), or -1 for never.
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
