-- budget.lua: reserve spend against every budget a call counts against, or settle it.
--   KEYS[1..n]  spend counters, in nano-USD (integers), one per budget and period
--   ARGV[1]     "reserve" or "settle"
--   ARGV[2]     amount in nano-USD (reserve: the call's most it can cost; settle: the signed
--               difference between what it cost and what was reserved)
--   ARGV[3..n+2]    each budget's cap in nano-USD (reserve only; "" = ignore)
--   ARGV[n+3..2n+2] each counter's TTL in seconds (its period's end plus a margin)
--   returns {1, 0} when reserved or settled; {0, i} when budget i would pass its cap
--   Atomic because every counter must be checked and moved together: two workers reading
--   "room left" and then adding would spend past the cap between them.

local n = #KEYS
local mode = ARGV[1]
local amount = tonumber(ARGV[2])

if mode == 'reserve' then
  for i = 1, n do
    local cap = tonumber(ARGV[2 + i])
    local spent = tonumber(redis.call('GET', KEYS[i])) or 0
    if cap and spent + amount > cap then
      return {0, i}
    end
  end
end
for i = 1, n do
  redis.call('INCRBY', KEYS[i], amount)
  if redis.call('TTL', KEYS[i]) < 0 then
    redis.call('EXPIRE', KEYS[i], tonumber(ARGV[n + 2 + i]))
  end
end
return {1, 0}
