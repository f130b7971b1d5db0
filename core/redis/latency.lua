-- latency.lua: fold one call's latency into a target's fleet-wide moving average.
--   KEYS[1]  the latency hash (Keys.latency): field <target> = moving average in ms
--   ARGV[1]  the target ("provider/model");  ARGV[2] the call's latency in ms
--   ARGV[3]  the weight of the new sample (alpha, 0 < alpha <= 1)
--   returns the new average, as a string
--   Atomic because two workers folding samples at once must not both read the old average.

local old = tonumber(redis.call('HGET', KEYS[1], ARGV[1]))
local sample, alpha = tonumber(ARGV[2]), tonumber(ARGV[3])
local average = sample
if old then
  average = old + alpha * (sample - old)
end
local text = string.format('%.3f', average)
redis.call('HSET', KEYS[1], ARGV[1], text)
return text
