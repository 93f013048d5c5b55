-- ARGV[3] = name, ARGV[4] = expected next run, ARGV[5] = new next run, ARGV[6] = last run
-- (micros), ARGV[7] = JSON jobs as for enqueue.lua. The compare-and-set of cluster schedules:
-- returns 1 (moved on, jobs stored) or 0 (fired by someone else, or removed: no change).
local name = ARGV[3]
local current = redis.call('ZSCORE', P .. 'schedule-next', name)
if not current or tonumber(current) ~= tonumber(ARGV[4]) then return 0 end
redis.call('ZADD', P .. 'schedule-next', ARGV[5], name)
redis.call('HSET', P .. 'schedule-last', name, ARGV[6])
store_jobs(cjson.decode(ARGV[7]))
flush()
return 1
