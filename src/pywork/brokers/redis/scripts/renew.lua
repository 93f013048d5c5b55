-- ARGV[3] = lease ms, ARGV[4] = JSON [id, token, id, token, ...], ARGV[5..] = pairs id,
-- progress (encoded JSON) to store with the leases still held. Returns id, reason pairs for
-- the leases not held: "cancelled" (same token, state cancelled) or "lost" (the token was
-- revoked or the record is gone). A lease that its holder's own settle ended (same token,
-- another state) is not reported: nothing was lost, and its consumer may simply not have
-- seen the settle's reply yet.
local deadline = NOW + tonumber(ARGV[3])
local out = {}
local leases = cjson.decode(ARGV[4])
local progress = nil
if ARGV[5] then
  progress = {}
  for i = 5, #ARGV, 2 do progress[ARGV[i]] = ARGV[i + 1] end
end
for i = 1, #leases, 2 do
  local id, token = leases[i], leases[i + 1]
  local f = redis.pcall('HMGET', jkey(id), 'state', 'lease', 'queue')
  if f[2] ~= token or (f[1] == 'running' and not f[3]) then  -- (no queue: a bad record)
    out[#out + 1] = id
    out[#out + 1] = 'lost'
  elseif f[1] == 'running' then
    later('ZADD', 'running', f[3], deadline, id)
    local report = progress and progress[id]
    if report then redis.call('HSET', jkey(id), 'progress', report) end
  elseif f[1] == 'cancelled' then
    out[#out + 1] = id
    out[#out + 1] = 'cancelled'
  end
end
flush()
return out
