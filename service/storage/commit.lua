-- One atomic step for one or many lot transitions (state + indexes + counts + events).
-- Packed by service/storage/commit_script.py (`flatten`).
--
-- KEYS: 1 counts hash, 2 expiry zset, 3 lots zset, 4 tombstones zset, 5 intents zset,
--       6 event stream; on a Redis Cluster also, per transition t, its lot key (5 + 2t)
--       and history key (6 + 2t). On one server lot and history keys are the extcodes
--       appended to ARGV[3] and ARGV[4], `TenantKeys.lot_prefix` and `history_prefix`
--       (service/storage/keys.py; every key shares the tenant's hash tag, hence its
--       cluster slot; passing them would cost more than the transition itself). A cluster
--       needs them declared: it checks before the call that every key is served here and
--       not being migrated (TRYAGAIN / ASK otherwise, nothing written), whereas an
--       undeclared key that moved away fails the script after some writes.
-- ARGV: 1 mode ("all": every transition or none; "each": apply the transitions whose
--       revision still matches, skip the others), 2 history cap, 3 lot key prefix,
--       4 history key prefix, then per transition, flat:
--   expected_rev, new_value, extcode, lot_score ("" = leave),
--   n, member...                 expiry index removals
--   n, (score, member)...        expiry index additions
--   n, (field, delta, limit)...  count deltas (limit 0 = unchecked)
--   n, (member, score)...        tombstones of ended options
--   n, member...                 pending-intent index removals
--   n, (score, member)...        pending-intent index additions
--   n, cloudevent...             appended to the stream
--   n, history entry...          appended to the lot's history (one line each)
--   (n counts items, not arguments)
-- Returns: mode "all": {"ok"} | {"rev", t} | {"limit", field};
--          mode "each": a list with 1 (applied) or 0 (revision moved) per transition.

local mode, cap = ARGV[1], tonumber(ARGV[2])
local lot_prefix, history_prefix = ARGV[3], ARGV[4]
local declared = #KEYS > 6

-- Decode the flat arguments into one table per transition; sections are slices of ARGV.
local trs = {}
local pos = 5
local function section(width)
  local count = tonumber(ARGV[pos])
  local out = {}
  for i = pos + 1, pos + count * width do out[#out + 1] = ARGV[i] end
  pos = pos + 1 + count * width
  return out
end
while pos <= #ARGV do
  local tr = {tonumber(ARGV[pos]), ARGV[pos + 1], ARGV[pos + 2], ARGV[pos + 3]}
  pos = pos + 4
  tr[5] = section(1)
  tr[6] = section(2)
  tr[7] = section(3)
  tr[8] = section(2)
  tr[9] = section(1)
  tr[10] = section(2)
  tr[11] = section(1)
  tr[12] = section(1)
  tr[13] = #trs + 1  -- its position: where its keys are declared
  trs[#trs + 1] = tr
end

local function append_all(dst, src)
  for i = 1, #src do dst[#dst + 1] = src[i] end
end

local function apply(list)
  local lots, scored, exp_rem, exp_add, tombs, int_rem, int_add = {}, {}, {}, {}, {}, {}, {}
  local deltas, fields = {}, {}
  local hist_keys, hist_add = {}, {}
  for _, tr in ipairs(list) do
    local code = tr[3]
    lots[#lots + 1] = declared and KEYS[5 + 2 * tr[13]] or lot_prefix .. code
    lots[#lots + 1] = tr[2]
    if tr[4] ~= '' then
      scored[#scored + 1] = tr[4]
      scored[#scored + 1] = code
    end
    append_all(exp_rem, tr[5])
    append_all(exp_add, tr[6])
    local c = tr[7]
    for i = 1, #c, 3 do
      local f = c[i]
      if deltas[f] == nil then
        deltas[f] = 0
        fields[#fields + 1] = f
      end
      deltas[f] = deltas[f] + tonumber(c[i + 1])
    end
    local tb = tr[8]
    for i = 1, #tb, 2 do
      tombs[#tombs + 1] = tb[i + 1]
      tombs[#tombs + 1] = tb[i]
    end
    append_all(int_rem, tr[9])
    append_all(int_add, tr[10])
    local ev = tr[11]
    for i = 1, #ev do redis.call('XADD', KEYS[6], '*', 'ce', ev[i]) end
    if #tr[12] > 0 then
      hist_keys[#hist_keys + 1] = declared and KEYS[6 + 2 * tr[13]] or history_prefix .. code
      hist_add[#hist_add + 1] = table.concat(tr[12], '\n')
    end
  end
  call_many('MSET', nil, lots)
  if #scored > 0 then call_many('ZADD', KEYS[3], scored) end
  if #exp_rem > 0 then call_many('ZREM', KEYS[2], exp_rem) end
  if #exp_add > 0 then call_many('ZADD', KEYS[2], exp_add) end
  for _, f in ipairs(fields) do
    local d = deltas[f]
    if d ~= 0 and redis.call('HINCRBY', KEYS[1], f, d) <= 0 then
      redis.call('HDEL', KEYS[1], f)
    end
  end
  if #tombs > 0 then call_many('ZADD', KEYS[4], tombs) end
  if #int_rem > 0 then call_many('ZREM', KEYS[5], int_rem) end
  if #int_add > 0 then call_many('ZADD', KEYS[5], int_add) end
  if #hist_keys > 0 then
    local old = redis.call('MGET', unpack(hist_keys))
    local pairs_ = {}
    for i = 1, #hist_keys do
      local h = old[i]
      if h then h = h .. '\n' .. hist_add[i] else h = hist_add[i] end
      pairs_[#pairs_ + 1] = hist_keys[i]
      pairs_[#pairs_ + 1] = trim_history(h, cap)
    end
    call_many('MSET', nil, pairs_)
  end
end

local lot_keys = {}
for t = 1, #trs do lot_keys[t] = declared and KEYS[5 + 2 * t] or lot_prefix .. trs[t][3] end
local current = redis.call('MGET', unpack(lot_keys))
local function rev_of(value)
  if not value then return 0 end
  return tonumber(string.match(value, '^(%d+)|'))
end

if mode == 'all' then
  for t = 1, #trs do
    if rev_of(current[t]) ~= trs[t][1] then return {'rev', t} end
  end
  for t = 1, #trs do
    local x = trs[t][7]
    for i = 1, #x, 3 do
      local delta, limit = tonumber(x[i + 1]), tonumber(x[i + 2])
      if limit > 0 and delta > 0 then
        local cur = tonumber(redis.call('HGET', KEYS[1], x[i]) or '0')
        if cur + delta > limit then return {'limit', x[i]} end
      end
    end
  end
  apply(trs)
  return {'ok'}
end

local out, ok = {}, {}
for t = 1, #trs do
  if rev_of(current[t]) == trs[t][1] then
    ok[#ok + 1] = trs[t]
    out[t] = 1
  else
    out[t] = 0
  end
end
if #ok > 0 then apply(ok) end
return out
