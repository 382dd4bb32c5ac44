-- The outcome of one delivery attempt on the head of a subscription's partition queue,
-- applied in one step: the queue and its retry schedule, the subscription's counters and
-- status, and the delivery log. A stale caller (the head changed, the subscription was
-- deleted) changes nothing. Returns {status} or {status, the partition's next head}.
-- KEYS: 1 index, 2 state, 3 due, 4 queue, 5 attempts, 6 log
-- ARGV: 1 subscription id, 2 partition, 3 the head item as read, 4 outcome
--   ("ok" | "retry" | "failed"), 5 now (tenant clock, s), 6 next attempt (s, retry only),
--   7 log entry (JSON), 8 log size, 9 disable_after (s), 10 reason to disable now ("" none)
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then return 'deleted' end
if redis.call('LINDEX', KEYS[4], 0) ~= ARGV[3] then return 'stale' end
local now = tonumber(ARGV[5])
local outcome = ARGV[4]
if outcome == 'retry' then
  redis.call('HINCRBY', KEYS[5], ARGV[2], 1)
  redis.call('ZADD', KEYS[3], ARGV[6], ARGV[2])
else
  redis.call('LPOP', KEYS[4])
  redis.call('HDEL', KEYS[5], ARGV[2])
  if redis.call('LLEN', KEYS[4]) > 0 then
    redis.call('ZADD', KEYS[3], now, ARGV[2])
  else
    redis.call('ZREM', KEYS[3], ARGV[2])
  end
end
if outcome == 'ok' then
  redis.call('HSET', KEYS[2], 'failureCount', 0, 'lastSuccessAt', now)
  redis.call('HDEL', KEYS[2], 'failingSince')
else
  redis.call('HINCRBY', KEYS[2], 'failureCount', 1)
  local since = tonumber(redis.call('HGET', KEYS[2], 'failingSince'))
  if not since then
    since = now
    redis.call('HSET', KEYS[2], 'failingSince', now)
  end
  if ARGV[10] ~= '' then
    redis.call('HSET', KEYS[2], 'status', 'inactive', 'disabledReason', ARGV[10])
  elseif now - since >= tonumber(ARGV[9]) then
    redis.call('HSET', KEYS[2], 'status', 'inactive', 'disabledReason',
      'no successful delivery for ' .. ARGV[9] .. ' s (disable_after)')
  end
end
redis.call('XADD', KEYS[6], 'MAXLEN', ARGV[8], '*', 'e', ARGV[7])
local status = redis.call('HGET', KEYS[2], 'status') or 'active'
-- The partition's next head, so the caller goes on without another round trip.
if outcome ~= 'retry' and status == 'active' then
  local head = redis.call('LINDEX', KEYS[4], 0)
  if head then return {status, head} end
end
return {status}
