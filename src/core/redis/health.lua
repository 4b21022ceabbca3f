-- Replays one request's passive-health events into the shared book (the same rules as
-- src/core/balance.rs), atomically, so instances that each live for one request still eject a
-- backend that keeps failing.
--
-- KEYS[1]: the book (a hash: backend -> "consecutive_failures:ejected_until_ms").
-- ARGV[1], ARGV[2]: failures that eject, and for how long (ms). Then triples: kind, backend, ms,
-- where kind is "r" (recovered) or "f" (failed at ms).
local eject_after = tonumber(ARGV[1])
local eject_for = tonumber(ARGV[2])
for i = 3, #ARGV, 3 do
  local kind, backend, ms = ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 2])
  if kind == 'r' then
    redis.call('HDEL', KEYS[1], backend)
  else
    local failures, until_ms = 0, 0
    local current = redis.call('HGET', KEYS[1], backend)
    if current then
      local f, u = string.match(current, '^(%d+):(%d+)$')
      failures, until_ms = tonumber(f) or 0, tonumber(u) or 0
    end
    failures = failures + 1
    if failures >= eject_after then
      until_ms = ms + eject_for
      failures = 0
    end
    redis.call('HSET', KEYS[1], backend, string.format('%d:%d', failures, until_ms))
  end
end
redis.call('PEXPIRE', KEYS[1], 86400000)
return 1
