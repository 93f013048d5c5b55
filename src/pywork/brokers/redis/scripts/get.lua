-- ARGV[3] = id. Returns the job's fields (HGETALL: empty when unknown).
return redis.call('HGETALL', jkey(ARGV[3]))
