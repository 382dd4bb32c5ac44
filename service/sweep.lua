-- The sweep's atomic step: one chunk of expiry transitions (service/sweep.py), applied
-- exactly as commit.lua (mode "each") applies the same transitions, but all or nothing and
-- with every command batched across the chunk: per lot, only its stream entries cost a
-- call of their own (the per-call overhead of Lua, not the work, dominated the old path).
--
-- KEYS: 1 counts hash, 2 expiry zset, 3 lots zset, 4 tombstones zset, 5 event stream,
--       then the n lot keys, then the n history keys (same order).
-- ARGV: 1 n, then
--   n expected prefixes "<rev>|" of the lots' current values,
--   n new lot values,
--   n new histories (whole, trimmed: the sweep read them with the lots, and a history
--     changes only together with its lot, whose revision is checked here),
--   then sections, each a count of items followed by the items:
--     (score, member)...  lots zset (last modification)
--     member...           expiry index removals
--     (score, member)...  expiry index additions
--     (field, delta)...   count deltas (each field once, deltas non-zero)
--     (score, member)...  tombstones of ended options
--     cloudevent...       stream entries, in order
-- Returns {} when applied; otherwise the positions (1-based) of the lots whose revision
-- moved, and nothing was written (the sweep drops those lots and resubmits the others).

local n = tonumber(ARGV[1])

local current = redis.call('MGET', unpack(KEYS, 6, 5 + n))
local moved = {}
for i = 1, n do
  local value, want = current[i], ARGV[1 + i]
  if not value or string.sub(value, 1, #want) ~= want then moved[#moved + 1] = i end
end
if #moved > 0 then return moved end

-- Commands over an argument range, at most 6000 arguments per call (Lua's stack limit).
local function call_range(cmd, key, first, last)
  for i = first, last, 6000 do
    redis.call(cmd, key, unpack(ARGV, i, math.min(i + 5999, last)))
  end
end

local function call_list(cmd, key, args)
  for i = 1, #args, 6000 do
    if key then
      redis.call(cmd, key, unpack(args, i, math.min(i + 5999, #args)))
    else
      redis.call(cmd, unpack(args, i, math.min(i + 5999, #args)))
    end
  end
end

local values = {}
for i = 1, n do
  values[4 * i - 3] = KEYS[5 + i]
  values[4 * i - 2] = ARGV[1 + n + i]
  values[4 * i - 1] = KEYS[5 + n + i]
  values[4 * i] = ARGV[1 + 2 * n + i]
end
call_list('MSET', nil, values)

local pos = 2 + 3 * n
local function section(width)
  local first = pos + 1
  local last = pos + tonumber(ARGV[pos]) * width
  pos = last + 1
  return first, last
end

local first, last = section(2)
if last >= first then call_range('ZADD', KEYS[3], first, last) end
first, last = section(1)
if last >= first then call_range('ZREM', KEYS[2], first, last) end
first, last = section(2)
if last >= first then call_range('ZADD', KEYS[2], first, last) end

-- Counts: what commit.lua's HINCRBY + HDEL-at-zero leave, with three calls per chunk.
first, last = section(2)
if last >= first then
  local fields = {}
  for i = first, last, 2 do fields[#fields + 1] = ARGV[i] end
  local values = {}
  for i = 1, #fields, 4000 do
    local part = redis.call('HMGET', KEYS[1], unpack(fields, i, math.min(i + 3999, #fields)))
    for j = 1, #part do values[#values + 1] = part[j] end
  end
  local set, del = {}, {}
  for k = 1, #fields do
    local v = tonumber(values[k] or '0') + tonumber(ARGV[first + 2 * k - 1])
    if v > 0 then
      set[#set + 1] = fields[k]
      set[#set + 1] = string.format('%d', v)
    else
      del[#del + 1] = fields[k]
    end
  end
  if #set > 0 then call_list('HSET', KEYS[1], set) end
  if #del > 0 then call_list('HDEL', KEYS[1], del) end
end

first, last = section(2)
if last >= first then call_range('ZADD', KEYS[4], first, last) end

first, last = section(1)
local stream = KEYS[5]
for i = first, last do redis.call('XADD', stream, '*', 'ce', ARGV[i]) end

return {}
