-- Give back every task a pool still holds, as `release` would each: the caller knows none of
-- them started (the pool's worker died before it could say it had leased them). Then drop
-- the pool's heartbeat.
-- KEYS[1] tasks          the task key prefix: task <id>'s hash is KEYS[1] .. <id>
-- KEYS[2] pool_leases    zset (all scores 0): "<pool id>\t<id>"
-- KEYS[3] pools          zset: pool id -> heartbeat deadline
-- then three keys per queue, for queue i (i = 0, 1, ...), named by ARGV[2 + i]:
-- KEYS[4+3i] ready       zset: id -> order
-- KEYS[5+3i] running     zset: id -> lease expiry (milliseconds)
-- KEYS[6+3i] wake        list: wake-up tokens
-- ARGV[1] the pool id
-- ARGV[2...] the queue names, in the order of the keys
-- Returns how many tasks were given back.
local tasks, pool_leases, pool = KEYS[1], KEYS[2], ARGV[1]
local queue_index = {}
for q = 0, (#KEYS - 3) / 3 - 1 do
  queue_index[ARGV[2 + q]] = q
end
local released = 0
local held = redis.call('ZRANGEBYLEX', pool_leases, '[' .. pool .. '\t', '[' .. pool .. '\t\255')
for _, member in ipairs(held) do
  local id = string.sub(member, #pool + 2)
  local task = tasks .. id
  local f = redis.call('HMGET', task, 'lease', 'attempts', 'queue', 'previous_attempted_at',
    'previous_worker_ids', 'order')
  local q = queue_index[f[3] or '']
  -- A lease of this pool on a queue the caller did not name stays for maintenance to settle.
  if f[1] and q and string.sub(f[1], -#pool - 1) == '\t' .. pool then
    local attempts = tonumber(f[2]) - 1
    redis.call('HSET', task, 'status', 'READY', 'worker_ids', f[5], 'attempts', attempts)
    if f[4] and f[4] ~= '' then
      redis.call('HSET', task, 'attempted_at', f[4])
    else
      redis.call('HDEL', task, 'attempted_at')
    end
    if attempts == 0 then
      redis.call('HDEL', task, 'started_at')
    end
    redis.call('HDEL', task, 'lease', 'previous_attempted_at', 'previous_worker_ids')
    redis.call('ZREM', KEYS[5 + 3 * q], id)
    redis.call('ZADD', KEYS[4 + 3 * q], f[6], id)
    redis.call('LPUSH', KEYS[6 + 3 * q], '1')
    redis.call('LTRIM', KEYS[6 + 3 * q], 0, 255)
    released = released + 1
  end
  if not f[1] or q then
    redis.call('ZREM', pool_leases, member)
  end
end
redis.call('ZREM', KEYS[3], pool)
return released
