-- rate_limit.lua: the fleet-wide limiter (GCRA over requests and tokens) and provider pauses.
--
-- One script, four operations chosen by ARGV[1]; every operation is one atomic step, so any
-- number of workers on any number of machines book budget as one client would.
--
-- State of one bucket, a hash at Keys.rate_limit(name):
--   req_tat_us, tok_tat_us   GCRA theoretical arrival time of the requests / tokens dimension
--                            (Redis time, µs). At or before "now" the bucket is full.
--   win_start_ms, win_req, win_tok, prev_req, prev_tok
--                            what was booked in the current and the previous calendar minute,
--                            only to report headroom ("left this minute").
-- A provider pause is a string key at Keys.provider_pause(provider): the deadline in ms.
--
-- Common arguments:
--   ARGV[1]  operation: "reserve" | "reconcile" | "headroom" | "pause"
--   ARGV[2]  now in ms, or "" for Redis TIME (the override exists for tests only)
--
-- reserve: book 1 request and ARGV[4] tokens in every bucket, or nothing.
--   KEYS[1..n]    bucket hashes;  KEYS[n+1..]  pause keys of the providers involved
--   ARGV[3] n, ARGV[4] tokens, ARGV[5] max_wait_us, ARGV[6] burst_us,
--   ARGV[5+2i], ARGV[6+2i]  bucket i's µs per request and µs per token ("" = no such limit)
--   returns {granted 0|1, wait_us, retry_after_us, paused 0|1}
--   Atomic because the earliest conforming time is a maximum over all buckets: reading them
--   and moving every TAT must not interleave with another worker's booking.
--
-- reconcile: charge (delta > 0) or give back (delta < 0) tokens after the call.
--   KEYS[1..n]  bucket hashes with a token limit;  ARGV[3] delta tokens;  ARGV[3+i] µs per token
--   returns n.  Atomic: a read-modify-write of each TAT.
--
-- headroom: KEYS[1] bucket hash; returns {requests, tokens} booked over the last minute
--   (current minute + the previous one weighted by how much of it is still within 60 s).
--
-- pause: KEYS[1] pause key; ARGV[3] duration ms.  Sets the deadline now + duration unless a
--   later one is already set (a pause is never shortened); returns the deadline in force (ms).
--   Atomic: compare-and-set between workers that saw different Retry-After values.

local MINUTE_MS = 60000
-- Bucket hashes outlive their last booking by two minutes so headroom can still report them.
local KEEP_MS = 2 * MINUTE_MS

local op = ARGV[1]

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

local function expire_after(key, tat_us, now_us)
  local ahead_ms = math.ceil(math.max(tat_us - now_us, 0) / 1000)
  redis.call('PEXPIRE', key, ahead_ms + KEEP_MS)
end

-- The minute counters, rolled forward to the minute that contains now_ms.
local function read_window(key, now_ms)
  local f = redis.call('HMGET', key, 'win_start_ms', 'win_req', 'win_tok', 'prev_req', 'prev_tok')
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

local function write_window(key, w)
  redis.call('HSET', key, 'win_start_ms', int(w.start), 'win_req', int(w.req), 'win_tok', int(w.tok),
    'prev_req', int(w.prev_req), 'prev_tok', int(w.prev_tok))
end

-- Earliest time a cost conforms to one dimension. A cost above the burst conforms once the
-- bucket is full (TAT <= t) and leaves it in debt, so a big request is never refused forever.
local function conform_at(tat, cost, burst)
  return tat - math.max(burst - cost, 0)
end

if op == 'reserve' then
  local n = tonumber(ARGV[3])
  local tokens = tonumber(ARGV[4])
  local max_wait = tonumber(ARGV[5])
  local burst = tonumber(ARGV[6])
  local now = clock_us()

  local paused_until = 0
  for k = n + 1, #KEYS do
    local deadline_ms = tonumber(redis.call('GET', KEYS[k]))
    if deadline_ms and deadline_ms * 1000 > paused_until then
      paused_until = deadline_ms * 1000
    end
  end

  local buckets = {}
  local at = now
  for i = 1, n do
    local b = {
      req_iv = tonumber(ARGV[5 + 2 * i]),
      tok_iv = tonumber(ARGV[6 + 2 * i]),
    }
    local f = redis.call('HMGET', KEYS[i], 'req_tat_us', 'tok_tat_us')
    b.req_tat, b.tok_tat = tonumber(f[1]) or 0, tonumber(f[2]) or 0
    if b.req_iv then
      at = math.max(at, conform_at(b.req_tat, b.req_iv, burst))
    end
    if b.tok_iv then
      at = math.max(at, conform_at(b.tok_tat, tokens * b.tok_iv, burst))
    end
    buckets[i] = b
  end

  if paused_until > now then
    return {0, 0, math.ceil(math.max(paused_until, at) - now), 1}
  end
  local wait = at - now
  if wait > max_wait then
    return {0, 0, math.ceil(wait), 0}
  end

  -- Book at `at`, the moment the call may go out, in every bucket: a bucket that alone would
  -- have allowed it earlier still sees it at `at`, which keeps each bucket's view exact.
  local now_ms = math.floor(now / 1000)
  for i = 1, n do
    local b = buckets[i]
    local req_tat, tok_tat = b.req_tat, b.tok_tat
    if b.req_iv then
      req_tat = math.floor(math.max(req_tat, at) + b.req_iv + 0.5)
      redis.call('HSET', KEYS[i], 'req_tat_us', int(req_tat))
    end
    if b.tok_iv then
      tok_tat = math.floor(math.max(tok_tat, at) + tokens * b.tok_iv + 0.5)
      redis.call('HSET', KEYS[i], 'tok_tat_us', int(tok_tat))
    end
    local w = read_window(KEYS[i], now_ms)
    w.req = w.req + 1
    w.tok = w.tok + tokens
    write_window(KEYS[i], w)
    expire_after(KEYS[i], math.max(req_tat, tok_tat), now)
  end
  return {1, math.ceil(wait), 0, 0}
end

if op == 'reconcile' then
  local delta = tonumber(ARGV[3])
  local now = clock_us()
  for i = 1, #KEYS do
    local iv = tonumber(ARGV[3 + i])
    local f = redis.call('HMGET', KEYS[i], 'req_tat_us', 'tok_tat_us')
    local req_tat, tat = tonumber(f[1]) or 0, tonumber(f[2]) or 0
    if delta > 0 then
      tat = math.max(tat, now) + delta * iv
    elseif tat > now then
      -- Unused budget comes back at once, but a bucket never holds more than it is full.
      tat = math.max(tat + delta * iv, now)
    end
    redis.call('HSET', KEYS[i], 'tok_tat_us', int(math.floor(tat + 0.5)))
    local w = read_window(KEYS[i], math.floor(now / 1000))
    w.tok = math.max(w.tok + delta, 0)
    write_window(KEYS[i], w)
    expire_after(KEYS[i], math.max(req_tat, tat), now)
  end
  return #KEYS
end

if op == 'headroom' then
  local now_ms = math.floor(clock_us() / 1000)
  local w = read_window(KEYS[1], now_ms)
  local prev_share = math.max(1 - (now_ms - w.start) / MINUTE_MS, 0)
  return {math.ceil(w.req + w.prev_req * prev_share), math.ceil(w.tok + w.prev_tok * prev_share)}
end

if op == 'pause' then
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
end

return redis.error_reply('rate_limit.lua: unknown operation ' .. tostring(op))
