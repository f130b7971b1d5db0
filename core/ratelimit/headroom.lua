-- headroom.lua: KEYS[1] bucket hash; returns {requests, tokens} booked over the last minute
--   (current minute + the previous one weighted by how much of it is still within 60 s).

local now_ms = math.floor(clock_us() / 1000)
local w = read_window(KEYS[1], now_ms)
local prev_share = math.max(1 - (now_ms - w.start) / MINUTE_MS, 0)
return {math.ceil(w.req + w.prev_req * prev_share), math.ceil(w.tok + w.prev_tok * prev_share)}
