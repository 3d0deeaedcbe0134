-- One maintenance pass: heartbeat, promote due scheduled tasks, find orphaned leases. Finished
-- results need no trimming: their hashes expire in Redis itself. Settling the orphans is left
-- to the caller (the retry policy is Python's), which does it with a compare-and-set on each
-- lease, so concurrent passes are safe.
-- KEYS[1] tasks          the task key prefix: task <id>'s hash is KEYS[1] .. <id>
-- KEYS[2] pool_leases    zset (all scores 0): "<pool id>\t<id>"
-- KEYS[3] pools          zset: pool id -> heartbeat deadline (seconds)
-- then four keys per queue, for queue i (i = 0, 1, ...), named by ARGV[5 + i]:
-- KEYS[4+4i] ready       zset: id -> order
-- KEYS[5+4i] scheduled   zset: id -> run_after (seconds)
-- KEYS[6+4i] running     zset: id -> lease expiry (whole milliseconds)
-- KEYS[7+4i] wake        list: wake-up tokens
-- ARGV[1] the ids of the live pools calling, joined by newlines, or "" (a live pool's
--         heartbeat also renews its leases, so tasks waiting in its prefetch buffers are never
--         failed for waiting)
-- ARGV[2] pool time to live, seconds: a pool whose heartbeat is older is dead
-- ARGV[3] lease time to live, seconds
-- ARGV[4] the most items of each kind to handle in this pass
-- ARGV[5...] the queue names, in the order of the keys
-- Returns {promoted, id1, lease1, reason1, id2, ...}: the orphaned leases, each with
-- its lease string "<attempts>\t<worker id>\t<pool id>" and "expired" or "pool".
local tasks, pool_leases, pools = KEYS[1], KEYS[2], KEYS[3]
local pool_ttl, lease_ttl, batch = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local clock = redis.call('TIME')
local now_number = tonumber(clock[1]) + tonumber(clock[2]) / 1e6
local now = string.format('%.6f', now_number)
local queues = (#KEYS - 3) / 4
local running_of = {}
for q = 0, queues - 1 do
  running_of[ARGV[5 + q]] = KEYS[6 + 4 * q]
end

local heartbeat = string.format('%.6f', now_number + pool_ttl)
local renewed = string.format('%.0f', (now_number + lease_ttl) * 1000)
local now_ms = string.format('%.0f', now_number * 1000)
for pool in string.gmatch(ARGV[1], '[^\n]+') do
  redis.call('ZADD', pools, heartbeat, pool)
  local held = redis.call('ZRANGEBYLEX', pool_leases, '[' .. pool .. '\t', '[' .. pool .. '\t\255')
  for _, member in ipairs(held) do
    local id = string.sub(member, #pool + 2)
    local running = running_of[redis.call('HGET', tasks .. id, 'queue') or '']
    if running then
      redis.call('ZADD', running, 'XX', renewed, id)
    end
  end
end

local promoted = 0
for q = 0, queues - 1 do
  local ready, scheduled, wake = KEYS[4 + 4 * q], KEYS[5 + 4 * q], KEYS[7 + 4 * q]
  local due = redis.call('ZRANGEBYSCORE', scheduled, '-inf', now, 'LIMIT', 0, batch)
  for _, id in ipairs(due) do
    redis.call('ZREM', scheduled, id)
    redis.call('ZADD', ready, redis.call('HGET', tasks .. id, 'order'), id)
    redis.call('LPUSH', wake, '1')
    promoted = promoted + 1
  end
  redis.call('LTRIM', wake, 0, 255)
end

local reply = {promoted}
for q = 0, queues - 1 do
  local expired = redis.call('ZRANGEBYSCORE', KEYS[6 + 4 * q], '-inf', now_ms, 'LIMIT', 0,
    batch)
  for _, id in ipairs(expired) do
    table.insert(reply, id)
    table.insert(reply, redis.call('HGET', tasks .. id, 'lease') or '')
    table.insert(reply, 'expired')
  end
end

local dead = redis.call('ZRANGEBYSCORE', pools, '-inf', now, 'LIMIT', 0, batch)
for _, dead_pool in ipairs(dead) do
  local held = redis.call('ZRANGEBYLEX', pool_leases, '[' .. dead_pool .. '\t',
    '[' .. dead_pool .. '\t\255', 'LIMIT', 0, batch)
  if #held == 0 then
    redis.call('ZREM', pools, dead_pool)
  end
  for _, member in ipairs(held) do
    local id = string.sub(member, #dead_pool + 2)
    local lease = redis.call('HGET', tasks .. id, 'lease')
    if lease then
      table.insert(reply, id)
      table.insert(reply, lease)
      table.insert(reply, 'pool')
    else
      redis.call('ZREM', pool_leases, member)
    end
  end
end

return reply
