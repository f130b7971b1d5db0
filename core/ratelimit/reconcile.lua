-- reconcile.lua: charge (delta > 0) or give back (delta < 0) tokens after the call; what is
--   given back repays the debt of calls already sent, never the cost of bookings still ahead.
--   KEYS[1..n] hashes of the buckets with a token limit;  KEYS[n+1..2n] their sorted sets
--   ARGV[3] delta tokens;  ARGV[3+i] bucket i's µs per token.  Returns n.
--   Atomic: a read-modify-write of each TAT.

local delta = tonumber(ARGV[3])
local now = clock_us()
local n = #KEYS / 2
for i = 1, n do
  local hash, ahead = KEYS[i], KEYS[n + i]
  local delta_us = math.floor(delta * tonumber(ARGV[3 + i]) + 0.5)
  local f = redis.call('HMGET', hash, 'req_tat_us', 'tok_tat_us', 'tok_ahead_us')
  local req_tat, tat = tonumber(f[1]) or 0, tonumber(f[2]) or 0
  local tok_ahead = settle_ahead(ahead, tonumber(f[3]) or 0, now)
  if delta_us > 0 then
    tat = math.max(tat, now) + delta_us
  else
    -- Unused budget comes back at once, as far as it repays the debt of calls already sent:
    -- that is all a provider bucket can have regained (never past full). Moving the TAT back
    -- over bookings still ahead would let new calls pile onto them, in a burst as large as
    -- the refunds of the booking horizon.
    local sent_debt = math.max(tat - tok_ahead - now, 0)
    tat = tat - math.min(-delta_us, sent_debt)
  end
  redis.call('HSET', hash, 'tok_tat_us', int(tat), 'tok_ahead_us', int(tok_ahead))
  local w = read_window(hash, math.floor(now / 1000))
  w.tok = math.max(w.tok + delta, 0)
  write_window(hash, w)
  expire_after(hash, ahead, math.max(req_tat, tat), now)
end
return n
