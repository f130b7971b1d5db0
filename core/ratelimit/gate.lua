-- gate.lua: may this call go out? The target's breaker, then the provider pause and the
-- rate-limit reservation, in one step (one round trip before every upstream call).
--
-- Assembled by core/ratelimit/gate.py: the bodies of core/redis/breaker.lua and of the
-- limiter's reserve script (common.lua + reserve.lua) are pasted in as the functions
-- `breaker(KEYS, ARGV)` and `limiter(KEYS, ARGV)` where the markers stand; their headers
-- document their own keys and arguments.
--
-- KEYS[1..2]   the breaker's keys (breaker.lua)      KEYS[3..]  the reservation's keys
-- ARGV[1]      the number of the reservation's keys, m
-- ARGV[2..8]   the breaker's arguments for "allow"   ARGV[9..]  the reservation's arguments
--
-- Returns {permit, reservation}: breaker.lua's reply, and reserve.lua's reply or
-- {-1} when the breaker refused (then nothing was booked). A probe whose reservation is refused
-- is handed back at once ("release"), so another caller can probe now.
--
-- Atomic for the reason each part is; together so that a breaker that refuses books nothing
-- and a probe never waits on budget it did not get.

local function breaker(KEYS, ARGV)
--@breaker
end

local function limiter(KEYS, ARGV)
--@reserve
end

local m = tonumber(ARGV[1])
local breaker_keys = {KEYS[1], KEYS[2]}
local breaker_args = {}
for i = 2, 8 do
  breaker_args[#breaker_args + 1] = ARGV[i]
end
local permit = breaker(breaker_keys, breaker_args)
if permit[2] == 0 then
  return {permit, {-1}}
end
local limiter_keys, limiter_args = {}, {}
for i = 3, 2 + m do
  limiter_keys[#limiter_keys + 1] = KEYS[i]
end
for i = 9, #ARGV do
  limiter_args[#limiter_args + 1] = ARGV[i]
end
local reservation = limiter(limiter_keys, limiter_args)
if reservation[1] == 0 and permit[3] == 1 then
  breaker_args[1] = 'release'
  breaker_args[7] = '0'
  breaker(breaker_keys, breaker_args)
end
return {permit, reservation}
