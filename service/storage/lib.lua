-- Shared by commit.lua and sweep.lua (service/storage/scripts.py puts it ahead of each):
-- what both must do the same way, so that the sweep leaves Redis exactly as commit.lua does.

-- A command over a list of arguments (after `key`, when given), at most 6000 per call
-- (Lua's stack limit): called once per chunk, not once per lot, because per-call
-- overhead, not the work, dominates a sweep otherwise.
local function call_many(cmd, key, args)
  local n = #args
  for i = 1, n, 6000 do
    local last = math.min(i + 5999, n)
    if key then
      redis.call(cmd, key, unpack(args, i, last))
    else
      redis.call(cmd, unpack(args, i, last))
    end
  end
end

-- A lot's history (entries joined by "\n") cut to its last `cap` entries. commit.lua trims
-- with it; the sweep trims in Python (`sweep_script.trim_history`, the same rule: the
-- sweep's equality tests compare the two scripts' results).
local function trim_history(h, cap)
  if #h <= cap * 48 then return h end  -- no entry is shorter than 48 bytes
  local starts, pos = {1}, 1
  while true do
    local nl = string.find(h, '\n', pos, true)
    if not nl then break end
    starts[#starts + 1] = nl + 1
    pos = nl + 1
  end
  if #starts <= cap then return h end
  return string.sub(h, starts[#starts - cap + 1])
end

