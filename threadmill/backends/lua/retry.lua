-- Record a failed attempt of a leased task and queue the task again under the same id.
-- KEYS[1] task         hash: field -> value, the task's own
-- KEYS[2] running      zset: id -> lease expiry (milliseconds), of the task's queue
-- KEYS[3] pool_leases  zset: "<pool id>\t<id>"
-- KEYS[4] ready        zset: id -> order, of the task's queue
-- KEYS[5] scheduled    zset: id -> run_after (seconds), of the task's queue
-- KEYS[6] wake         list: wake-up tokens of the task's queue
-- ARGV[1] id
-- ARGV[2] lease token "<attempts>\t<worker id>" of the caller
-- ARGV[3] errors, the task's whole list as JSON (the failed attempt's error last)
-- ARGV[4] when to run again, seconds since the epoch
-- Returns 1 when queued again, 0 when the caller no longer holds the lease.
local task, id, token = KEYS[1], ARGV[1], ARGV[2]
local lease = redis.call('HGET', task, 'lease')
if not lease or string.sub(lease, 1, #token + 1) ~= token .. '\t' then
  return 0
end
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1e6
local pool = string.sub(lease, #token + 2)
redis.call('HSET', task, 'status', 'READY', 'errors', ARGV[3])
redis.call('HDEL', task, 'lease', 'previous_attempted_at', 'previous_worker_ids')
redis.call('ZREM', KEYS[2], id)
if pool ~= '' then
  redis.call('ZREM', KEYS[3], pool .. '\t' .. id)
end
if tonumber(ARGV[4]) > now then
  redis.call('ZADD', KEYS[5], ARGV[4], id)
else
  redis.call('ZADD', KEYS[4], redis.call('HGET', task, 'order'), id)
  redis.call('LPUSH', KEYS[6], '1')
  redis.call('LTRIM', KEYS[6], 0, 255)
end
return 1
