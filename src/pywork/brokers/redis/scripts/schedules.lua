-- ARGV[3] = at (micros), or '' for every schedule. Returns {later or false, {name,
-- declaration, next, last or false}, ...}: the schedules due at `at` (all of them without
-- `at`), by next run then name, and the earliest next run of the others.
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
