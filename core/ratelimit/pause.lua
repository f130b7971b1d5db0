-- pause.lua: KEYS[1] pause key; ARGV[3] duration ms.  Sets the deadline now + duration unless
--   a later one is already set (a pause is never shortened); returns the deadline in force (ms).
--   Atomic: compare-and-set between workers that saw different Retry-After values.

local now_ms = math.floor(clock_us() / 1000)
local deadline = now_ms + math.ceil(tonumber(ARGV[3]))
local current = tonumber(redis.call('GET', KEYS[1]))
if current and current >= deadline then
  return current
end
if deadline <= now_ms then
  return deadline
end
redis.call('SET', KEYS[1], int(deadline), 'PX', deadline - now_ms)
return deadline
