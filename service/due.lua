-- The lots holding options due at or before a tick, with their stored values, in one call.
-- KEYS: 1 expiry zset. ARGV: 1 tick, 2 max index entries, 3 tenant key prefix.
-- Returns a flat list {extcode, value | false, ...}, each lot once.
local members = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
local out, seen = {}, {}
for i = 1, #members do
  local code = string.match(members[i], '^(.*)/[^/]*$')
  if not seen[code] then
    seen[code] = true
    out[#out + 1] = code
    out[#out + 1] = redis.call('GET', ARGV[3] .. 'l:' .. code)
  end
end
return out
