-- ARGV[3] = name. Returns 1 if it existed.
local name = ARGV[3]
redis.call('ZREM', P .. 'schedule-next', name)
redis.call('HDEL', P .. 'schedule-last', name)
return redis.call('HDEL', P .. 'schedules', name)
