-- Queue up one task.
-- KEYS[1] task       hash: field -> value, this task's own (`<prefix>task:<id>`)
-- KEYS[2] sequence   string: counter giving FIFO order within a priority
-- KEYS[3] ready      zset: id -> order (priority band, then sequence), of this task's queue
-- KEYS[4] scheduled  zset: id -> run_after (seconds since the epoch), of this task's queue
-- KEYS[5] wake       list: wake-up tokens that idle acquirers of this queue block on
-- ARGV[1] id
-- ARGV[2] payload, JSON bytes stored as they are (never decoded here)
-- ARGV[3] queue name
-- ARGV[4] priority, a whole number from -100 to 100
-- ARGV[5] run_after in seconds since the epoch, or "" to run as soon as possible
-- Returns the server time of the enqueue (seconds since the epoch, as a string). The same
-- call sent again (its reply was lost) changes nothing and returns the first call's time; an
-- id taken by another task is an error.
local id = ARGV[1]
-- Claims the id and stores the payload in one command; the id is rarely taken already.
if redis.call('HSETNX', KEYS[1], 'payload', ARGV[2]) == 0 then
  local existing = redis.call('HMGET', KEYS[1], 'payload', 'enqueued_at')
  if existing[1] ~= ARGV[2] then
    return redis.error_reply('threadmill: task id ' .. id .. ' exists already')
  end
  if existing[2] then
    return existing[2]
  end
  -- Claimed by a call that failed before it was done (Redis keeps what a failing script
  -- wrote): finish its work now.
end
local clock = redis.call('TIME')
local now = string.format('%.6f', tonumber(clock[1]) + tonumber(clock[2]) / 1e6)
local sequence = redis.call('INCR', KEYS[2])
-- Higher priority sorts first; 2^44 sequence numbers per band keep the score an exact integer.
local order = string.format('%.0f', (100 - tonumber(ARGV[4])) * 17592186044416 + sequence)
redis.call('HSET', KEYS[1], 'status', 'READY', 'queue', ARGV[3], 'order', order,
  'enqueued_at', now, 'attempts', 0, 'worker_ids', '[]', 'errors', '[]')
if ARGV[5] ~= '' and tonumber(ARGV[5]) > tonumber(now) then
  redis.call('ZADD', KEYS[4], ARGV[5], id)
else
  redis.call('ZADD', KEYS[3], order, id)
  -- Enough tokens to wake every idle acquirer; more would only be stale.
  if redis.call('LPUSH', KEYS[5], '1') > 256 then
    redis.call('LTRIM', KEYS[5], 0, 255)
  end
end
return now
