-- Cluster schedules (contract §9): P schedules = hash name -> JSON declaration (written and
-- read by Python only, never re-encoded here), P schedule-next = zset name -> next run
-- (epoch microseconds: exact in a double), P schedule-last = hash name -> last run.
--
-- ARGV[3] = name. Returns {declaration or false, next or false, last or false}.
local name = ARGV[3]
return {redis.call('HGET', P .. 'schedules', name),
  redis.call('ZSCORE', P .. 'schedule-next', name),
  redis.call('HGET', P .. 'schedule-last', name)}
