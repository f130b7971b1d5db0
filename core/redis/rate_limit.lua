-- rate_limit.lua: the fleet-wide limiter (GCRA over requests and tokens) and provider pauses.
--
-- One script, four operations chosen by ARGV[1]; each is one atomic step, so any number of
-- workers on any number of machines book budget as one client would.
--
-- State of one bucket:
--   hash at Keys.rate_limit(name):
--     req_tat_us, tok_tat_us  GCRA theoretical arrival time of the requests / tokens dimension
--                             (Redis time, µs): every booking so far is paid for at that time.
--                             At or before "now" the bucket is full.
--     line_us                 the end of the waiting line of refused callers (see reserve)
--     tok_ahead_us, seq       the token cost (in µs of TAT) of bookings whose calls have not
--                             gone out yet, and a counter naming them
--     win_start_ms, win_req, win_tok, prev_req, prev_tok
--                             what was booked in the current and the previous calendar minute,
--                             only to report headroom ("left this minute")
--   sorted set at Keys.rate_limit_ahead(name): those not-yet-sent bookings, score = send time
--   (µs), member = "<seq>:<cost µs>".
-- A provider pause is a string key at Keys.provider_pause(provider): the deadline in ms.
--
-- Common arguments:
--   ARGV[1]  operation: "reserve" | "reconcile" | "headroom" | "pause"
--   ARGV[2]  now in ms, or "" for Redis TIME (the override exists for tests only)
--
-- reserve: book 1 request and ARGV[4] tokens in every bucket, or nothing.
--   KEYS[1..n] bucket hashes;  KEYS[n+1..2n] their sorted sets;  KEYS[2n+1..] pause keys
--   ARGV[3] n, ARGV[4] tokens, ARGV[5] max_wait_us, ARGV[6] burst_us,
--   ARGV[5+2i], ARGV[6+2i]  bucket i's µs per request and µs per token ("" = no such limit)
--   ARGV[7+2n] "1": a refused caller takes a place in the buckets' waiting line (`line_us`,
--   the end of the line, in every bucket hash) and its retry_after is its slot in the line
--   returns {granted 0|1, wait_us, retry_after_us, paused 0|1}
--   Atomic because the earliest conforming time is a maximum over all buckets: reading them
--   and moving every TAT must not interleave with another worker's booking.
--
-- reconcile: charge (delta > 0) or give back (delta < 0) tokens after the call; what is given
--   back repays the debt of calls already sent, never the cost of bookings still ahead.
--   KEYS[1..n] hashes of the buckets with a token limit;  KEYS[n+1..2n] their sorted sets
--   ARGV[3] delta tokens;  ARGV[3+i] bucket i's µs per token.  Returns n.
--   Atomic: a read-modify-write of each TAT.
--
-- headroom: KEYS[1] bucket hash; returns {requests, tokens} booked over the last minute
--   (current minute + the previous one weighted by how much of it is still within 60 s).
--
-- pause: KEYS[1] pause key; ARGV[3] duration ms.  Sets the deadline now + duration unless a
--   later one is already set (a pause is never shortened); returns the deadline in force (ms).
--   Atomic: compare-and-set between workers that saw different Retry-After values.

local MINUTE_MS = 60000
-- Bucket state outlives its last booking by two minutes so headroom can still report it.
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

if op == 'reserve' then
  local n = tonumber(ARGV[3])
  local tokens = tonumber(ARGV[4])
  local max_wait = tonumber(ARGV[5])
  local burst = tonumber(ARGV[6])
  local now = clock_us()

  local paused_until = 0
  for k = 2 * n + 1, #KEYS do
    local deadline_ms = tonumber(redis.call('GET', KEYS[k]))
    if deadline_ms and deadline_ms * 1000 > paused_until then
      paused_until = deadline_ms * 1000
    end
  end

  local buckets = {}
  local at = now
  for i = 1, n do
    local req_iv, tok_iv = tonumber(ARGV[5 + 2 * i]), tonumber(ARGV[6 + 2 * i])
    local f = redis.call('HMGET', KEYS[i], 'req_tat_us', 'tok_tat_us', 'tok_ahead_us')
    local b = {req_iv = req_iv, tok_iv = tok_iv, req_tat = tonumber(f[1]) or 0,
      tok_tat = tonumber(f[2]) or 0, tok_ahead = tonumber(f[3]) or 0}
    if req_iv then
      at = math.max(at, conform_at(b.req_tat, req_iv, burst))
    end
    if tok_iv then
      b.tok_cost = math.floor(tokens * tok_iv + 0.5)
      at = math.max(at, conform_at(b.tok_tat, b.tok_cost, burst))
    end
    buckets[i] = b
  end
  at = math.ceil(at)

  if paused_until > now then
    return {0, 0, math.ceil(math.max(paused_until, at) - now), 1}
  end
  local wait = at - now
  if wait > max_wait then
    if ARGV[7 + 2 * n] ~= '1' then
      return {0, 0, wait, 0}
    end
    -- The waiting line: refused callers are handed slots one cost apart from the end of the
    -- line (or from `at`, if the line is behind it), so a backlog comes back spread at the
    -- bucket's rate instead of all at `at`, where all but a few would be refused again.
    local line, step = 0, 0
    for i = 1, n do
      line = math.max(line, tonumber(redis.call('HGET', KEYS[i], 'line_us')) or 0)
      step = math.max(step, buckets[i].req_iv or 0, buckets[i].tok_cost or 0)
    end
    local slot = math.ceil(math.max(at, line))
    for i = 1, n do
      redis.call('HSET', KEYS[i], 'line_us', int(slot + step))
      redis.call('PEXPIRE', KEYS[i], math.ceil((slot + step - now) / 1000) + KEEP_MS)
    end
    return {0, 0, slot - now, 0}
  end

  -- Book at `at`, the moment the call may go out, in every bucket: a bucket that alone would
  -- have allowed it earlier still sees it at `at`, so no bucket ever undercounts.
  local now_ms = math.floor(now / 1000)
  for i = 1, n do
    local b, hash, ahead = buckets[i], KEYS[i], KEYS[n + i]
    local req_tat, tok_tat = b.req_tat, b.tok_tat
    if b.req_iv then
      req_tat = math.floor(math.max(req_tat, at) + b.req_iv + 0.5)
      redis.call('HSET', hash, 'req_tat_us', int(req_tat))
    end
    if b.tok_iv then
      tok_tat = math.max(tok_tat, at) + b.tok_cost
      local tok_ahead = settle_ahead(ahead, b.tok_ahead, now)
      if at > now and b.tok_cost > 0 then
        local seq = redis.call('HINCRBY', hash, 'seq', 1)
        redis.call('ZADD', ahead, int(at), seq .. ':' .. int(b.tok_cost))
        tok_ahead = tok_ahead + b.tok_cost
      end
      redis.call('HSET', hash, 'tok_tat_us', int(tok_tat), 'tok_ahead_us', int(tok_ahead))
    end
    local w = read_window(hash, now_ms)
    w.req = w.req + 1
    w.tok = w.tok + tokens
    write_window(hash, w)
    expire_after(hash, ahead, math.max(req_tat, tok_tat), now)
  end
  return {1, wait, 0, 0}
end

if op == 'reconcile' then
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
