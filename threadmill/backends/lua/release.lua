-- Give a leased, unstarted task back to its queue as it was: its attempt is not counted and
-- it keeps its place in the queue.
-- KEYS[1] task         hash: field -> value, the task's own
-- KEYS[2] running      zset: id -> lease expiry (milliseconds), of the task's queue
-- KEYS[3] pool_leases  zset: "<pool id>\t<id>"
-- KEYS[4] ready        zset: id -> order, of the task's queue
-- KEYS[5] wake         list: wake-up tokens of the task's queue
-- ARGV[1] id
-- ARGV[2] lease token "<attempts>\t<worker id>" of the caller
-- Returns 1 when released, 0 when the caller no longer holds the lease.
local task, id, token = KEYS[1], ARGV[1], ARGV[2]
local f = redis.call('HMGET', task, 'lease', 'attempts', 'previous_attempted_at',
  'previous_worker_ids')
if not f[1] or string.sub(f[1], 1, #token + 1) ~= token .. '\t' then
  return 0
end
local pool = string.sub(f[1], #token + 2)
local attempts = tonumber(f[2]) - 1
redis.call('HSET', task, 'status', 'READY', 'worker_ids', f[4], 'attempts', attempts)
if f[3] and f[3] ~= '' then
  redis.call('HSET', task, 'attempted_at', f[3])
else
  redis.call('HDEL', task, 'attempted_at')
end
if attempts == 0 then
  redis.call('HDEL', task, 'started_at')
end
redis.call('HDEL', task, 'lease', 'previous_attempted_at', 'previous_worker_ids')
redis.call('ZREM', KEYS[2], id)
if pool ~= '' then
  redis.call('ZREM', KEYS[3], pool .. '\t' .. id)
end
redis.call('ZADD', KEYS[4], redis.call('HGET', task, 'order'), id)
redis.call('LPUSH', KEYS[5], '1')
redis.call('LTRIM', KEYS[5], 0, 255)
return 1
