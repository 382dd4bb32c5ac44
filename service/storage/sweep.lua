-- The sweep's atomic step: one chunk of expiry transitions (service/usecases/sweep.py), applied
-- exactly as commit.lua (mode "each") applies the same transitions, but all or nothing and
-- with every command batched across the chunk: per lot, only its stream entries cost a
-- call of their own (the per-call overhead of Lua, not the work, dominated the old path).
-- Packed by service/storage/sweep_script.py (`apply_command`).
--
-- KEYS: 1 counts hash, 2 expiry zset, 3 lots zset, 4 tombstones zset, 5 event stream;
--       on a Redis Cluster also the n lot keys, then the n history keys (6 .. 5 + 2n).
--       On one server lot and history keys are the extcodes appended to ARGV[1] and
--       ARGV[2], `TenantKeys.lot_prefix` and `history_prefix` (service/storage/keys.py),
--       as commit.lua does (fewer bytes to send). A cluster needs them declared: it checks
--       before the call that every key is served here and not being migrated (TRYAGAIN /
--       ASK otherwise, nothing written), whereas an undeclared key that moved away fails
--       the script half-way, after some of its writes.
-- ARGV: 1 lot key prefix, 2 history key prefix, 3 the tick (score of the lots modified and
--   of the tombstones), 4 n, then n extcodes, n expected prefixes "<rev>|" of the lots'
--   current values, n new lot values, n new histories (each lot's whole history: the
--   sweep read it with the lot and appended and trimmed as commit.lua does; only a write
--   that bumps the lot's revision changes a history, so the revision check covers it too),
--   then sections, each a count of items followed by the items:
--     member...           expiry index removals
--     (score, member)...  expiry index additions
--     (field, delta)...   count deltas (each field once, deltas non-zero)
--     member...           tombstones of ended options (scored by the tick)
--     cloudevent...       stream entries, in order
-- Returns {} when applied; otherwise the positions (1-based) of the lots whose revision
-- moved, and nothing was written (the sweep drops those lots and resubmits the others).

local lot_prefix, history_prefix = ARGV[1], ARGV[2]
local tick, n = ARGV[3], tonumber(ARGV[4])
local at = 4  -- ARGV[at + i]: the i-th extcode; the other per-lot lists follow, n apart
local declared = #KEYS > 5
local lot_keys = {}
if declared then
  for i = 1, n do lot_keys[i] = KEYS[5 + i] end
else
  for i = 1, n do lot_keys[i] = lot_prefix .. ARGV[at + i] end
end

local current = redis.call('MGET', unpack(lot_keys))
local moved = {}
for i = 1, n do
  local value, want = current[i], ARGV[at + n + i]
  if not value or string.find(value, want, 1, true) ~= 1 then moved[#moved + 1] = i end
end
if #moved > 0 then return moved end

-- call_many over ARGV[first .. last], without copying them into a table first.
local function call_range(cmd, key, first, last)
  for i = first, last, 6000 do
    redis.call(cmd, key, unpack(ARGV, i, math.min(i + 5999, last)))
  end
end

local history_keys = {}
if declared then
  for i = 1, n do history_keys[i] = KEYS[5 + n + i] end
else
  for i = 1, n do history_keys[i] = history_prefix .. ARGV[at + i] end
end
local values, scored = {}, {}
for i = 1, n do
  values[4 * i - 3] = lot_keys[i]
  values[4 * i - 2] = ARGV[at + 2 * n + i]
  values[4 * i - 1] = history_keys[i]
  values[4 * i] = ARGV[at + 3 * n + i]
  scored[2 * i - 1] = tick
  scored[2 * i] = ARGV[at + i]
end
call_many('MSET', nil, values)
call_many('ZADD', KEYS[3], scored)

local pos = at + 1 + 4 * n
local function section(width)
  local first = pos + 1
  local last = pos + tonumber(ARGV[pos]) * width
  pos = last + 1
  return first, last
end

local first, last = section(1)
if last >= first then call_range('ZREM', KEYS[2], first, last) end
first, last = section(2)
if last >= first then call_range('ZADD', KEYS[2], first, last) end

-- Counts: what commit.lua's HINCRBY + HDEL-at-zero leave, with three calls per chunk.
first, last = section(2)
if last >= first then
  local fields = {}
  for i = first, last, 2 do fields[#fields + 1] = ARGV[i] end
  local got = {}
  for i = 1, #fields, 4000 do
    local part = redis.call('HMGET', KEYS[1], unpack(fields, i, math.min(i + 3999, #fields)))
    for j = 1, #part do got[#got + 1] = part[j] end
  end
  local set, del = {}, {}
  for k = 1, #fields do
    local v = tonumber(got[k] or '0') + tonumber(ARGV[first + 2 * k - 1])
    if v > 0 then
      set[#set + 1] = fields[k]
      set[#set + 1] = string.format('%d', v)
    else
      del[#del + 1] = fields[k]
    end
  end
  if #set > 0 then call_many('HSET', KEYS[1], set) end
  if #del > 0 then call_many('HDEL', KEYS[1], del) end
end

first, last = section(1)
if last >= first then
  local tombs = {}
  for i = first, last do
    tombs[#tombs + 1] = tick
    tombs[#tombs + 1] = ARGV[i]
  end
  call_many('ZADD', KEYS[4], tombs)
end

first, last = section(1)
local stream = KEYS[5]
for i = first, last do redis.call('XADD', stream, '*', 'ce', ARGV[i]) end

return {}
