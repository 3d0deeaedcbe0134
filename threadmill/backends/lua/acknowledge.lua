-- Publish the final result of a leased task and end its lease, if the caller still holds it.
-- KEYS[1] tasks        hash: "<id>.<field>" -> value
-- KEYS[2] running      zset: id -> lease expiry, of the task's queue
-- KEYS[3] pool_leases  zset: "<pool id>\t<id>"
-- KEYS[4] expiry       zset: id -> when its finished result may be trimmed (seconds)
-- ARGV[1] id
-- ARGV[2] lease token "<attempts>\t<worker id>" of the caller
-- ARGV[3] final status: SUCCESSFUL or FAILED
-- ARGV[4] return value, JSON bytes stored as they are ("" when FAILED)
-- ARGV[5] errors, the task's whole list as JSON
-- ARGV[6] result time to live, seconds
-- ARGV[7] "holder" when the lease holder itself reports, "settler" when someone else ends the
--         lease for it (maintenance, the arbiter); only a holder's repeat is recognised
-- Returns {1, finished_at} when recorded, {2, finished_at} when this holder had recorded it
-- already (a retried call), {0, status} when the lease is held by nobody or someone else.
local tasks, id, token = KEYS[1], ARGV[1], ARGV[2]
local f = redis.call('HMGET', tasks, id .. '.lease', id .. '.status', id .. '.final_lease',
  id .. '.finished_at')
if not f[1] or string.sub(f[1], 1, #token + 1) ~= token .. '\t' then
  if f[3] == token .. '\tholder' and ARGV[7] == 'holder' then
    return {2, f[4]}
  end
  return {0, f[2] or ''}
end
local clock = redis.call('TIME')
local now_number = tonumber(clock[1]) + tonumber(clock[2]) / 1e6
local now = string.format('%.6f', now_number)
local pool = string.sub(f[1], #token + 2)
redis.call('HSET', tasks, id .. '.status', ARGV[3], id .. '.finished_at', now,
  id .. '.errors', ARGV[5], id .. '.final_lease', token .. '\t' .. ARGV[7])
if ARGV[3] == 'SUCCESSFUL' then
  redis.call('HSET', tasks, id .. '.return_value', ARGV[4])
end
redis.call('HDEL', tasks, id .. '.lease', id .. '.previous_attempted_at',
  id .. '.previous_worker_ids')
redis.call('ZREM', KEYS[2], id)
if pool ~= '' then
  redis.call('ZREM', KEYS[3], pool .. '\t' .. id)
end
redis.call('ZADD', KEYS[4], string.format('%.6f', now_number + tonumber(ARGV[6])), id)
return {1, now}
