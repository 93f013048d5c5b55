-- ARGV[3] = name, ARGV[4] / ARGV[5] = the declaration / next run read before ('' = none),
-- ARGV[6] / ARGV[7] = the new ones. Returns 1, or 0 when the schedule changed meanwhile.
local name = ARGV[3]
local current = redis.call('HGET', P .. 'schedules', name) or ''
local next_run = redis.call('ZSCORE', P .. 'schedule-next', name) or ''
if current ~= ARGV[4] or next_run ~= ARGV[5] then return 0 end
redis.call('HSET', P .. 'schedules', name, ARGV[6])
redis.call('ZADD', P .. 'schedule-next', ARGV[7], name)
return 1
