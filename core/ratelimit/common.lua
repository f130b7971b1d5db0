-- common.lua: the limiter's state and the helpers every operation shares. Each operation's
-- script is this file followed by its own (reserve.lua, reconcile.lua, headroom.lua,
-- pause.lua; put together by core/ratelimit/limiter.py), so each stays one atomic step: any
-- number of workers on any number of machines book budget as one client would.
--
-- State of one bucket:
--   hash at Keys.rate_limit(name):
--     req_tat_us, tok_tat_us  GCRA theoretical arrival time of the requests / tokens dimension
--                             (Redis time, µs): every booking so far is paid for at that time.
--                             At or before "now" the bucket is full.
--     line_us                 the end of the waiting line of refused callers (see reserve.lua)
--     tok_ahead_us, seq       the token cost (in µs of TAT) of bookings whose calls have not
--                             gone out yet, and a counter naming them
--     win_start_ms, win_req, win_tok, prev_req, prev_tok
--                             what was booked in the current and the previous calendar minute,
--                             only to report headroom ("left this minute")
--   sorted set at Keys.rate_limit_ahead(name): those not-yet-sent bookings, score = send time
--   (µs), member = "<seq>:<cost µs>".
-- A provider pause is a string key at Keys.provider_pause(provider): the deadline in ms.
--
-- Arguments every operation takes:
--   ARGV[1]  the operation's name (a reply names the script it came from)
--   ARGV[2]  now in ms, or "" for Redis TIME (the override exists for tests only)

local MINUTE_MS = 60000
-- Bucket state outlives its last booking by two minutes so headroom can still report it.
local KEEP_MS = 2 * MINUTE_MS


local function clock_us()
  if ARGV[2] ~= '' then
    return tonumber(ARGV[2]) * 1000
  end
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000000 + tonumber(t[2])
end

-- Integers as plain digits: tostring() would print large numbers in exponent form.
local function int(x)
  return string.format('%.0f', x)
end

local function expire_after(hash, ahead, tat_us, now_us)
  local ttl_ms = math.ceil(math.max(tat_us - now_us, 0) / 1000) + KEEP_MS
  redis.call('PEXPIRE', hash, ttl_ms)
  redis.call('PEXPIRE', ahead, ttl_ms)
end

-- The cost still ahead once the bookings whose send time has come are dropped from the set.
local function settle_ahead(ahead, cost_us, now_us)
  local sent = redis.call('ZRANGEBYSCORE', ahead, '-inf', int(now_us))
  for _, member in ipairs(sent) do
    cost_us = cost_us - tonumber(string.match(member, ':(%d+)$'))
  end
  if #sent > 0 then
    redis.call('ZREMRANGEBYSCORE', ahead, '-inf', int(now_us))
  end
  return math.max(cost_us, 0)
end

-- The minute counters, rolled forward to the minute that contains now_ms.
local function read_window(hash, now_ms)
  local f = redis.call('HMGET', hash, 'win_start_ms', 'win_req', 'win_tok', 'prev_req', 'prev_tok')
  local start = math.floor(now_ms / MINUTE_MS) * MINUTE_MS
  local w = {start = start, req = 0, tok = 0, prev_req = 0, prev_tok = 0}
  local stored = tonumber(f[1])
  if stored == nil then
    return w
  end
  if stored >= start then
    -- Same minute (or a caller's clock slightly behind another's): keep counting in it.
    w.start = stored
    w.req, w.tok = tonumber(f[2]) or 0, tonumber(f[3]) or 0
    w.prev_req, w.prev_tok = tonumber(f[4]) or 0, tonumber(f[5]) or 0
  elseif stored == start - MINUTE_MS then
    w.prev_req, w.prev_tok = tonumber(f[2]) or 0, tonumber(f[3]) or 0
  end
  return w
end

local function write_window(hash, w)
  redis.call('HSET', hash, 'win_start_ms', int(w.start), 'win_req', int(w.req), 'win_tok', int(w.tok),
    'prev_req', int(w.prev_req), 'prev_tok', int(w.prev_tok))
end

-- Earliest time a cost conforms to one dimension. A cost above the burst conforms once the
-- bucket is full (TAT <= t) and leaves it in debt, so a big request is never refused forever.
local function conform_at(tat, cost, burst)
  return tat - math.max(burst - cost, 0)
end
