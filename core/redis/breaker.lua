-- breaker.lua: applies one event to one fleet-wide circuit breaker and returns its state.
--
-- KEYS[1]  the breaker hash (Keys.breaker(target)):
--            state            "closed" (also when absent) | "open" | "half_open"
--            open_until_ms    end of the cool-down while open (Redis time, ms)
--            probe_until_ms   while half_open: when the probe's holder counts as gone
--            win_start_ms, win_ok, win_fail, prev_ok, prev_fail
--                             outcomes in the current and previous calendar minute (stats only)
-- KEYS[2]  the times (ms) of the most recent failures while closed, newest first, at most
--          ARGV[3] of them (Keys.breaker_failures(target))
--
-- ARGV[1]  event: "allow" | "success" | "failure" | "release" (the probe's holder gives it up
--          without calling) | "stats"
-- ARGV[2]  now in ms, or "" for Redis TIME (the override exists for tests only)
-- ARGV[3]  failures that open the breaker        ARGV[4]  their window, ms
-- ARGV[5]  cool-down, ms                         ARGV[6]  probe timeout, ms
-- ARGV[7]  "1" when the outcome reported is the probe's, else "0"
--
-- Returns {state, allowed 0|1, probe 0|1, retry_after_ms, recent_ok, recent_fail}; the state is
-- the one callers see: "half_open" as soon as the cool-down is over, even before the probe goes.
--
-- Atomic because "the cool-down is over, so this caller is the probe" must be decided once for
-- the whole fleet, and because counting a failure and opening on the N-th must not interleave.

local MINUTE_MS = 60000
-- Outcome counters are kept two minutes after the last event so stats can still report them.
local KEEP_MS = 2 * MINUTE_MS

local hash, failures_key = KEYS[1], KEYS[2]
local event = ARGV[1]
local max_failures = tonumber(ARGV[3])
local window_ms = tonumber(ARGV[4])
local cooldown_ms = tonumber(ARGV[5])
local probe_timeout_ms = tonumber(ARGV[6])
local is_probe = ARGV[7] == '1'

local now
if ARGV[2] ~= '' then
  now = tonumber(ARGV[2])
else
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function int(x)
  return string.format('%.0f', x)
end

local f = redis.call('HMGET', hash, 'state', 'open_until_ms', 'probe_until_ms',
  'win_start_ms', 'win_ok', 'win_fail', 'prev_ok', 'prev_fail')
local state = f[1] or 'closed'
local open_until = tonumber(f[2]) or 0
local probe_until = tonumber(f[3]) or 0

-- Outcome counters rolled forward to the minute that contains now.
local start = math.floor(now / MINUTE_MS) * MINUTE_MS
local win = {ok = 0, fail = 0, prev_ok = 0, prev_fail = 0}
local stored_start = tonumber(f[4])
if stored_start and stored_start >= start then
  start = stored_start
  win.ok, win.fail = tonumber(f[5]) or 0, tonumber(f[6]) or 0
  win.prev_ok, win.prev_fail = tonumber(f[7]) or 0, tonumber(f[8]) or 0
elseif stored_start == start - MINUTE_MS then
  win.prev_ok, win.prev_fail = tonumber(f[5]) or 0, tonumber(f[6]) or 0
end

local function open_breaker()
  state = 'open'
  open_until = now + cooldown_ms
  redis.call('HSET', hash, 'state', state, 'open_until_ms', int(open_until))
  redis.call('HDEL', hash, 'probe_until_ms')
  redis.call('DEL', failures_key)
end

local function save()
  redis.call('HSET', hash, 'win_start_ms', int(start), 'win_ok', int(win.ok), 'win_fail', int(win.fail),
    'prev_ok', int(win.prev_ok), 'prev_fail', int(win.prev_fail))
  local deadline = math.max(open_until, probe_until, now)
  redis.call('PEXPIRE', hash, deadline - now + KEEP_MS)
end

local allowed, probe, retry_after = 0, 0, 0

if event == 'allow' then
  if state == 'closed' then
    allowed = 1
  elseif state == 'open' and now < open_until then
    retry_after = open_until - now
  elseif state == 'half_open' and now < probe_until then
    -- The probe is out; its outcome decides. This is the latest the answer can come.
    retry_after = probe_until - now
  else
    -- The cool-down is over, or the last probe's holder died without reporting: this caller
    -- is the one probe for the fleet.
    state = 'half_open'
    probe_until = now + probe_timeout_ms
    redis.call('HSET', hash, 'state', state, 'probe_until_ms', int(probe_until))
    allowed, probe = 1, 1
    save()
  end
elseif event == 'success' then
  win.ok = win.ok + 1
  if is_probe and state == 'half_open' then
    state = 'closed'
    open_until, probe_until = 0, 0
    redis.call('HSET', hash, 'state', state)
    redis.call('HDEL', hash, 'open_until_ms', 'probe_until_ms')
    redis.call('DEL', failures_key)
  end
  save()
elseif event == 'failure' then
  win.fail = win.fail + 1
  if state == 'closed' then
    redis.call('LPUSH', failures_key, int(now))
    redis.call('LTRIM', failures_key, 0, max_failures - 1)
    redis.call('PEXPIRE', failures_key, window_ms)
    local oldest = tonumber(redis.call('LINDEX', failures_key, max_failures - 1))
    if oldest and oldest > now - window_ms then
      open_breaker()
    end
  elseif is_probe and state == 'half_open' then
    open_breaker()
  end
  -- Otherwise a call that started before the breaker opened failed late: it is counted in
  -- the stats but does not stretch the cool-down.
  save()
elseif event == 'release' then
  if state == 'half_open' and probe_until > now then
    probe_until = now
    redis.call('HSET', hash, 'probe_until_ms', int(probe_until))
    save()
  end
elseif event ~= 'stats' then
  return redis.error_reply('breaker.lua: unknown event ' .. tostring(event))
end

local visible = state
if state == 'open' and now >= open_until then
  visible = 'half_open'
end
local prev_share = math.max(1 - (now - start) / MINUTE_MS, 0)
return {visible, allowed, probe, math.ceil(retry_after),
  math.ceil(win.ok + win.prev_ok * prev_share), math.ceil(win.fail + win.prev_fail * prev_share)}
