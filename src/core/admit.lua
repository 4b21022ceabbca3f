-- Atomic all-or-nothing GCRA admission over several buckets (the same rule as src/core/limits.rs).
-- Redis runs a script without interleaving any other command, and the clock is Redis's own
-- (TIME), so every gateway instance sees one sequence of admissions whatever its own clock says.
--
-- KEYS[i]: the bucket's key. ARGV[3i-2], ARGV[3i-1], ARGV[3i]: limit, period in ms, cost.
-- Returns, per bucket: allowed (1/0), limit, remaining, reset in ms, retry-after in ms (-1: never).
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000000 + tonumber(time[2]) -- microseconds
local n = #KEYS
local outcomes = {}
local all_allowed = true
for i = 1, n do
  local limit = tonumber(ARGV[3 * i - 2])
  local period = tonumber(ARGV[3 * i - 1]) * 1000
  local cost = tonumber(ARGV[3 * i])
  local interval = period / limit
  local tat = tonumber(redis.call('GET', KEYS[i]) or '0')
  if tat < now then tat = now end
  local new_tat = tat + cost * interval
  local allow_at = new_tat - period
  local allowed = now >= allow_at and cost <= limit
  if not allowed then all_allowed = false end
  outcomes[i] = { limit = limit, interval = interval, period = period, cost = cost,
                  tat = tat, new_tat = new_tat, allow_at = allow_at, allowed = allowed }
end
local reply = {}
for i = 1, n do
  local o = outcomes[i]
  local taken = all_allowed
  local tat = o.tat
  if taken then
    tat = o.new_tat
    redis.call('SET', KEYS[i], string.format('%d', math.ceil(tat)), 'PX', math.ceil((tat - now) / 1000) + 1000)
  end
  local remaining = math.floor((o.period - (tat - now)) / o.interval)
  if remaining < 0 then remaining = 0 end
  if remaining > o.limit then remaining = o.limit end
  local retry = 0
  if not o.allowed then
    if o.cost > o.limit then retry = -1 else retry = math.ceil((o.allow_at - now) / 1000) end
  end
  reply[#reply + 1] = o.allowed and 1 or 0
  reply[#reply + 1] = o.limit
  reply[#reply + 1] = remaining
  reply[#reply + 1] = math.ceil((tat - now) / 1000)
  reply[#reply + 1] = retry
end
return reply
