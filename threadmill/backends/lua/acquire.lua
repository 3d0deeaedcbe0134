-- Lease up to ARGV[1] tasks, round-robin over the queues so a busy queue never starves another.
-- KEYS[1] tasks          the task key prefix: task <id>'s hash is KEYS[1] .. <id>
-- KEYS[2] pool_leases    zset (all scores 0): "<pool id>\t<id>" for every lease a pool holds
-- KEYS[3] receipt        string: the ids this very call leased, kept a short while, so that
--                        the same call sent again (its reply was lost) leases nothing more and
--                        gets the same tasks back
-- then four keys per queue, in the caller's order, for queue i (i = 0, 1, ...):
-- KEYS[4+4i] ready       zset: id -> order
-- KEYS[5+4i] scheduled   zset: id -> run_after (seconds)
-- KEYS[6+4i] running     zset: id -> lease expiry (whole milliseconds: a small sorted set keeps
--                        whole scores as integers, which it compares without parsing)
-- KEYS[7+4i] wake        list: wake-up tokens, emptied here when nothing is ready, so a
--                        token in it always means "something was queued after you looked"
-- ARGV[1] how many tasks to lease at most
-- ARGV[2] worker id, JSON-encoded (appended to worker_ids as it is)
-- ARGV[3] worker id, plain (goes into the lease token)
-- ARGV[4] pool id, or "" when the lease belongs to no pool
-- ARGV[5] lease time to live, seconds
-- ARGV[6] the most scheduled tasks to promote per queue in this call
-- ARGV[7] which queue to take from first (0-based), so callers rotate the start
-- ARGV[8] how long to keep the receipt, seconds
-- Returns {now, next_due, id1, payload1, enqueued_at1, started_at1, worker_ids1, errors1, ...}:
-- next_due is the earliest run_after still scheduled ("" if none), for the caller's wait.
local clock = redis.call('TIME')
local now_number = tonumber(clock[1]) + tonumber(clock[2]) / 1e6
local now = string.format('%.6f', now_number)
local queues = (#KEYS - 3) / 4
local tasks = KEYS[1]
local worker_json, worker, pool = ARGV[2], ARGV[3], ARGV[4]

local function leased_task(reply, id, payload, enqueued_at, started_at, workers, errors)
  table.insert(reply, id)
  table.insert(reply, payload)
  table.insert(reply, enqueued_at)
  table.insert(reply, started_at)
  table.insert(reply, workers)
  table.insert(reply, errors)
end

local receipt = redis.call('GET', KEYS[3])
if receipt then
  -- A repeat of a call that was carried out: answer with what it leased and still holds.
  local reply = {now, ''}
  for id in string.gmatch(receipt, '[^\n]+') do
    local f = redis.call('HMGET', tasks .. id, 'lease', 'payload', 'enqueued_at',
      'started_at', 'worker_ids', 'errors')
    if f[1] and string.find(f[1], '\t' .. worker .. '\t', 1, true) then
      leased_task(reply, id, f[2], f[3], f[4], f[5], f[6])
    end
  end
  return reply
end

-- Due scheduled tasks become ready first, so they compete by priority like any other.
local next_due = ''
for q = 0, queues - 1 do
  local ready, scheduled = KEYS[4 + 4 * q], KEYS[5 + 4 * q]
  local due = redis.call('ZRANGEBYSCORE', scheduled, '-inf', now, 'LIMIT', 0, tonumber(ARGV[6]))
  for _, id in ipairs(due) do
    redis.call('ZREM', scheduled, id)
    redis.call('ZADD', ready, redis.call('HGET', tasks .. id, 'order'), id)
  end
  local first = redis.call('ZRANGE', scheduled, 0, 0, 'WITHSCORES')
  if first[2] and (next_due == '' or tonumber(first[2]) < tonumber(next_due)) then
    next_due = first[2]
  end
end

local reply = {now, next_due}
local wanted = tonumber(ARGV[1])
local expiry = string.format('%.0f', (now_number + tonumber(ARGV[5])) * 1000)
local taken, empty_in_a_row, q = 0, 0, tonumber(ARGV[7]) % queues
while taken < wanted and empty_in_a_row < queues do
  local popped = redis.call('ZPOPMIN', KEYS[4 + 4 * q])
  if popped[1] then
    empty_in_a_row = 0
    taken = taken + 1
    local id = popped[1]
    local task = tasks .. id
    local f = redis.call('HMGET', task, 'payload', 'enqueued_at', 'started_at', 'worker_ids',
      'errors', 'attempts', 'attempted_at')
    local started = f[3] or now
    local workers = f[4]
    if workers == '[]' then
      workers = '[' .. worker_json .. ']'
    else
      workers = string.sub(workers, 1, -2) .. ',' .. worker_json .. ']'
    end
    local attempts = tonumber(f[6]) + 1
    local lease = attempts .. '\t' .. worker .. '\t' .. pool
    -- The previous_* fields let a release put the task back exactly as it was.
    redis.call('HSET', task, 'status', 'RUNNING', 'started_at', started, 'attempted_at', now,
      'previous_attempted_at', f[7] or '', 'previous_worker_ids', f[4], 'worker_ids', workers,
      'attempts', attempts, 'lease', lease)
    redis.call('ZADD', KEYS[6 + 4 * q], expiry, id)
    if pool ~= '' then
      redis.call('ZADD', KEYS[2], 0, pool .. '\t' .. id)
    end
    leased_task(reply, id, f[1], f[2], started, workers, f[5])
  else
    empty_in_a_row = empty_in_a_row + 1
  end
  q = (q + 1) % queues
end
if taken > 0 then
  local ids = {}
  for i = 3, #reply, 6 do
    table.insert(ids, reply[i])
  end
  redis.call('SET', KEYS[3], table.concat(ids, '\n'), 'EX', tonumber(ARGV[8]))
end
if taken == 0 then
  for q = 0, queues - 1 do
    redis.call('DEL', KEYS[7 + 4 * q])
  end
end
return reply
