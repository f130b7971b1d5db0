-- reserve.lua: book 1 request and ARGV[4] tokens in every bucket, or nothing.
--   KEYS[1..n] bucket hashes;  KEYS[n+1..2n] their sorted sets;  KEYS[2n+1..] pause keys
--   ARGV[3] n, ARGV[4] tokens, ARGV[5] max_wait_us, ARGV[6] burst_us,
--   ARGV[5+2i], ARGV[6+2i]  bucket i's µs per request and µs per token ("" = no such limit)
--   ARGV[7+2n] "1": a refused caller takes a place in the waiting line of the buckets that
--   refused it and hold it back longest (`line_us`, the end of the line, in the bucket hash)
--   and its retry_after is its slot in the line
--   ARGV[8+2n] the caller's tenant ("" = one line for all) and ARGV[9+2n] its weight: each
--   tenant then has a line of its own in the bucket (`line_us:<tenant>`, its weight in
--   `w:<tenant>`), advanced by a cost times the waiting tenants' total weight over its own
--   returns {granted 0|1, wait_us, retry_after_us, paused 0|1}
--   Atomic because the earliest conforming time is a maximum over all buckets: reading them
--   and moving every TAT must not interleave with another worker's booking.

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
    tok_tat = tonumber(f[2]) or 0, tok_ahead = tonumber(f[3]) or 0, at = now}
  if req_iv then
    b.at = math.max(b.at, conform_at(b.req_tat, req_iv, burst))
  end
  if tok_iv then
    b.tok_cost = math.floor(tokens * tok_iv + 0.5)
    b.at = math.max(b.at, conform_at(b.tok_tat, b.tok_cost, burst))
  end
  at = math.max(at, b.at)
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
  -- The caller's slot is the latest of its places in the buckets that refused it, and only
  -- the buckets whose own place for it is that late (within one step) hold it and count its
  -- tenant as waiting: a tenant held back by its own limit lines up in its own bucket, never
  -- in the provider's, even when the provider refused the call too, so it takes no share of
  -- the provider from the tenants really waiting there.
  local owner, weight = ARGV[8 + 2 * n], tonumber(ARGV[9 + 2 * n]) or 1
  local field = 'line_us'
  if owner ~= '' then
    field = 'line_us:' .. owner
  end
  local slot = at
  for i = 1, n do
    local b = buckets[i]
    if b.at - now > max_wait then
      b.place = math.max(b.at, tonumber(redis.call('HGET', KEYS[i], field)) or 0)
      slot = math.max(slot, b.place)
      -- The waiting tenants' total weight (this one's included): a tenant counts while its
      -- line reaches past what the bucket books ahead anyway (its next free time plus the
      -- longest wait), so one that only brushes the provider now and then, held back by its
      -- own limit, takes no share from the tenants queued there. Ended lines are dropped.
      local share = 1
      if owner ~= '' then
        local total = weight
        local fields = redis.call('HGETALL', KEYS[i])
        for j = 1, #fields, 2 do
          local other = string.match(fields[j], '^line_us:(.+)$')
          if other and other ~= owner then
            local ends = tonumber(fields[j + 1])
            if ends > b.at + max_wait then
              total = total + (tonumber(redis.call('HGET', KEYS[i], 'w:' .. other)) or 1)
            elseif ends <= now then
              redis.call('HDEL', KEYS[i], fields[j], 'w:' .. other)
            end
          end
        end
        share = total / weight
      end
      b.step = math.max(b.req_iv or 0, b.tok_cost or 0) * share
    end
  end
  slot = math.ceil(slot)
  for i = 1, n do
    local b = buckets[i]
    if b.place and slot - b.place < math.max(b.step, 1) then
      redis.call('HSET', KEYS[i], field, int(slot + b.step))
      if owner ~= '' then
        redis.call('HSET', KEYS[i], 'w:' .. owner, ARGV[9 + 2 * n])
      end
      redis.call('PEXPIRE', KEYS[i], math.ceil((slot + b.step - now) / 1000) + KEEP_MS)
    end
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
