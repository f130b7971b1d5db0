-- Single-flight: at most one upstream call per request fingerprint at a time, fleet-wide.
--
-- One script, one command per call in ARGV[1] (as dramatiq's dispatch.lua does). TTLs are
-- relative (PX), so the script needs no clock. The lock's value is the leader's owner token.
--
-- begin     KEYS[1] lock, KEYS[2] result
--           ARGV    "begin", token, lock_ttl_ms, result_format_version
--           Returns {"done", result_json} when a recent result in this format version exists,
--                   {"leader", token, lock_ttl_ms} when the caller now holds the lock,
--                   {"follower", leader_token, lock_pttl_ms} when another caller holds it.
--           Atomic: checking for a result and taking the lock as two steps lets a result and
--           the lock's release land in between, and the caller makes a second upstream call.
--
-- complete  KEYS[1] lock, KEYS[2] result, KEYS[3] wake
--           ARGV    "complete", token, result_json, wake_payload, result_ttl_ms
--           Stores the result even if the lock was lost (the answer is good and paid for),
--           wakes the flight's followers, and releases the lock if `token` still owns it.
--           Returns 1 if the lock was still the caller's, else 0.
--           Atomic: the result must be readable before the lock disappears (else a newcomer in
--           between becomes a second leader), and only the owner may release the lock.
--
-- abandon   KEYS[1] lock, KEYS[2] wake
--           ARGV    "abandon", token, wake_payload, wake_ttl_ms
--           Wakes the flight's followers and releases the lock if `token` still owns it.
--           Returns 1 if the lock was still the caller's, else 0.
--           Atomic: compare-and-delete, so a leader whose lock expired cannot release the
--           lock of the leader that took over.
--
-- extend    KEYS[1] lock
--           ARGV    "extend", token, lock_ttl_ms
--           Returns 1 if `token` still owns the lock, which now expires lock_ttl_ms from now,
--           else 0. Atomic: compare-and-expire, for the same reason as abandon.
--
-- The wake list is per flight (its key carries the leader's token) and holds exactly one
-- element once the flight ends. Followers block with `BLMOVE wake wake LEFT RIGHT`, a
-- rotation that leaves the element in place, so one push wakes every follower, present and
-- late, until the list expires.

local command = ARGV[1]

local function wake_followers(wake_key, payload, ttl_ms)
    redis.call("DEL", wake_key)
    redis.call("RPUSH", wake_key, payload)
    redis.call("PEXPIRE", wake_key, ttl_ms)
end

local function release_if_owner(lock_key, token)
    if redis.call("GET", lock_key) == token then
        redis.call("DEL", lock_key)
        return 1
    end
    return 0
end

if command == "begin" then
    local result = redis.call("GET", KEYS[2])
    if result then
        local ok, document = pcall(cjson.decode, result)
        if ok and type(document) == "table" and document["v"] == tonumber(ARGV[4]) then
            return {"done", result}
        end
    end
    if redis.call("SET", KEYS[1], ARGV[2], "NX", "PX", ARGV[3]) then
        return {"leader", ARGV[2], tonumber(ARGV[3])}
    end
    return {"follower", redis.call("GET", KEYS[1]), redis.call("PTTL", KEYS[1])}
elseif command == "complete" then
    redis.call("SET", KEYS[2], ARGV[3], "PX", ARGV[5])
    wake_followers(KEYS[3], ARGV[4], ARGV[5])
    return release_if_owner(KEYS[1], ARGV[2])
elseif command == "abandon" then
    wake_followers(KEYS[2], ARGV[3], ARGV[4])
    return release_if_owner(KEYS[1], ARGV[2])
elseif command == "extend" then
    if redis.call("GET", KEYS[1]) == ARGV[2] then
        redis.call("PEXPIRE", KEYS[1], ARGV[3])
        return 1
    end
    return 0
end
return redis.error_reply("single_flight.lua: unknown command " .. tostring(command))
