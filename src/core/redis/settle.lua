-- Settles a finished request (the same rules as src/core/limits.rs): releases its in-flight
-- lease and corrects token buckets by the real cost.
--
-- KEYS[1]: the lease set (ignored when ARGV[1] is empty); ARGV[1]: the lease id to release.
-- Adjustment i: KEYS[i+1]; ARGV[3i-1], ARGV[3i], ARGV[3i+1]: limit, period in ms, delta (units
-- more when positive, fewer when negative; a refund never fills a bucket past full).
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000000 + tonumber(time[2]) -- microseconds
if ARGV[1] ~= '' then
  redis.call('ZREM', KEYS[1], ARGV[1])
end
for i = 1, #KEYS - 1 do
  local limit = tonumber(ARGV[3 * i - 1])
  local period = tonumber(ARGV[3 * i]) * 1000
  local delta = tonumber(ARGV[3 * i + 1])
  local tat = tonumber(redis.call('GET', KEYS[i + 1]) or '0')
  if tat < now then tat = now end
  tat = tat + delta * (period / limit)
  if tat < now then tat = now end
  if tat > now then
    redis.call('SET', KEYS[i + 1], string.format('%d', math.ceil(tat)), 'PX', math.ceil((tat - now) / 1000) + 1000)
  else
    redis.call('DEL', KEYS[i + 1])
  end
end
return 1
