-- One atomic step for one or many lot transitions (state + indexes + counts + events).
--
-- KEYS: 1 counts hash, 2 expiry zset, 3 lots zset, 4 tombstones zset, 5 intents zset,
--       6 event stream, then per transition t: lot key (6 + 2t - 1), history key (6 + 2t).
-- ARGV: 1 mode ("all": every transition or none; "each": apply those whose revision still
--       matches, skip the others), 2 history cap, 3 number of transitions, then for each:
--   expected_rev, new_value, extcode, lot_score ("" = leave),
--   n, (member)*                 expiry index removals
--   n, (score, member)*          expiry index additions
--   n, (field, delta, limit)*    count deltas (limit 0 = unchecked)
--   n, (member, score)*          tombstones of ended options
--   n, (member)*                 pending-intent index removals
--   n, (score, member)*          pending-intent index additions
--   n, (cloudevent json)*        events: appended to the stream and the lot's history
-- Returns: mode "all": {"ok"} | {"rev", t} | {"limit", field};
--          mode "each": a list with 1 (applied) or 0 (revision moved) per transition.

local mode = ARGV[1]
local cap = tonumber(ARGV[2])
local n = tonumber(ARGV[3])
local pos = 4
local trs = {}

local function take(width)
  local count = tonumber(ARGV[pos])
  local first = pos + 1
  pos = first + count * width
  return {first, count}
end

for t = 1, n do
  local tr = {rev = tonumber(ARGV[pos]), value = ARGV[pos + 1], extcode = ARGV[pos + 2],
              score = ARGV[pos + 3]}
  pos = pos + 4
  tr.exp_rem = take(1)
  tr.exp_add = take(2)
  tr.counts = take(3)
  tr.tombs = take(2)
  tr.int_rem = take(1)
  tr.int_add = take(2)
  tr.events = take(1)
  trs[t] = tr
end

local function current_rev(key)
  local cur = redis.call('GET', key)
  if not cur then return 0 end
  return tonumber(string.match(cur, '^(%d+)|'))
end

local function apply(t, tr)
  local lot_key, hist_key = KEYS[5 + 2 * t], KEYS[6 + 2 * t]
  redis.call('SET', lot_key, tr.value)
  if tr.score ~= '' then redis.call('ZADD', KEYS[3], tr.score, tr.extcode) end
  local f, c = tr.exp_rem[1], tr.exp_rem[2]
  for i = f, f + c - 1 do redis.call('ZREM', KEYS[2], ARGV[i]) end
  f, c = tr.exp_add[1], tr.exp_add[2]
  for i = f, f + 2 * c - 1, 2 do redis.call('ZADD', KEYS[2], ARGV[i], ARGV[i + 1]) end
  f, c = tr.counts[1], tr.counts[2]
  for i = f, f + 3 * c - 1, 3 do
    if redis.call('HINCRBY', KEYS[1], ARGV[i], ARGV[i + 1]) <= 0 then
      redis.call('HDEL', KEYS[1], ARGV[i])
    end
  end
  f, c = tr.tombs[1], tr.tombs[2]
  for i = f, f + 2 * c - 1, 2 do redis.call('ZADD', KEYS[4], ARGV[i + 1], ARGV[i]) end
  f, c = tr.int_rem[1], tr.int_rem[2]
  for i = f, f + c - 1 do redis.call('ZREM', KEYS[5], ARGV[i]) end
  f, c = tr.int_add[1], tr.int_add[2]
  for i = f, f + 2 * c - 1, 2 do redis.call('ZADD', KEYS[5], ARGV[i], ARGV[i + 1]) end
  f, c = tr.events[1], tr.events[2]
  local len = 0
  for i = f, f + c - 1 do
    redis.call('XADD', KEYS[6], '*', 'ce', ARGV[i])
    len = redis.call('RPUSH', hist_key, ARGV[i])
  end
  if len > cap then redis.call('LTRIM', hist_key, -cap, -1) end
end

if mode == 'all' then
  for t = 1, n do
    if current_rev(KEYS[5 + 2 * t]) ~= trs[t].rev then return {'rev', t} end
  end
  for t = 1, n do
    local f, c = trs[t].counts[1], trs[t].counts[2]
    for i = f, f + 3 * c - 1, 3 do
      local delta, limit = tonumber(ARGV[i + 1]), tonumber(ARGV[i + 2])
      if limit > 0 and delta > 0 then
        local cur = tonumber(redis.call('HGET', KEYS[1], ARGV[i]) or '0')
        if cur + delta > limit then return {'limit', ARGV[i]} end
      end
    end
  end
  for t = 1, n do apply(t, trs[t]) end
  return {'ok'}
end

local out = {}
for t = 1, n do
  if current_rev(KEYS[5 + 2 * t]) == trs[t].rev then
    apply(t, trs[t])
    out[t] = 1
  else
    out[t] = 0
  end
end
return out
