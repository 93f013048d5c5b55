-- ARGV[3] = JSON [[id, queue, payload, handler, key, mr, when], ...]
-- (when: "" = now, "d<ms>" = after a delay, "a<epoch ms>" = at), ARGV[4] = "1" to refuse
-- ids already stored (the first try of a call; a retry after a lost reply takes a stored
-- id as its own). Returns the ids as JSON, or {"duplicate": id} having stored nothing.
local jobs = cjson.decode(ARGV[3])
if ARGV[4] == '1' then
  local seen = {}
  for _, job in ipairs(jobs) do
    local id = job[1]
    if seen[id] or redis.call('EXISTS', jkey(id)) == 1 then
      return cjson.encode({duplicate = id})
    end
    seen[id] = true
  end
end
local out = store_jobs(jobs)
flush()
return cjson.encode(out)
