-- Publish the final results of leased tasks of one queue, each only if its caller still holds
-- its lease. One call for many tasks: a script call costs the server more than a task's work.
-- KEYS[1] tasks        the task key prefix: task <id>'s hash is KEYS[1] .. <id>
-- KEYS[2] running      zset: id -> lease expiry (milliseconds), of the tasks' queue
-- KEYS[3] pool_leases  zset: "<pool id>\t<id>"
-- ARGV[1] result time to live, milliseconds: the finished task's hash expires then
-- ARGV[2] "holder" when the lease holders themselves report, "settler" when someone else ends
--         the leases for them (maintenance, the arbiter); only a holder's repeat is recognised
-- then five per task, from ARGV[3]:
--   id; lease token "<attempts>\t<worker id>" of the caller; final status, SUCCESSFUL or
--   FAILED; return value, JSON bytes stored as they are ("" when FAILED); errors, the task's
--   whole list as JSON
-- Returns two values per task, in the order given: 1, finished_at when recorded; 2,
-- finished_at when this holder had recorded it already (a retried call); 0, status when the
-- lease is held by nobody or someone else.
local tasks, role = KEYS[1], ARGV[2]
local clock = redis.call('TIME')
local now = string.format('%.6f', tonumber(clock[1]) + tonumber(clock[2]) / 1e6)
local reply = {}
for i = 3, #ARGV, 5 do
  local id, token, status = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local task = tasks .. id
  local f = redis.call('HMGET', task, 'lease', 'status', 'final_lease', 'finished_at')
  if f[1] and string.sub(f[1], 1, #token + 1) == token .. '\t' then
    local pool = string.sub(f[1], #token + 2)
    redis.call('HSET', task, 'status', status, 'finished_at', now, 'errors', ARGV[i + 4],
      'final_lease', token .. '\t' .. role)
    if status == 'SUCCESSFUL' then
      redis.call('HSET', task, 'return_value', ARGV[i + 3])
    end
    redis.call('HDEL', task, 'lease', 'previous_attempted_at', 'previous_worker_ids')
    redis.call('ZREM', KEYS[2], id)
    if pool ~= '' then
      redis.call('ZREM', KEYS[3], pool .. '\t' .. id)
    end
    redis.call('PEXPIRE', task, ARGV[1])
    table.insert(reply, 1)
    table.insert(reply, now)
  elseif f[3] == token .. '\tholder' and role == 'holder' then
    table.insert(reply, 2)
    table.insert(reply, f[4])
  else
    table.insert(reply, 0)
    table.insert(reply, f[2] or '')
  end
end
return reply
