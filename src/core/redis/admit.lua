-- Atomic all-or-nothing admission (the same rules as src/core/limits.rs): GCRA over every
-- bucket of a request, and optionally an in-flight lease. Redis runs a script without
-- interleaving any other command, and the clock is Redis's own (TIME), so every gateway instance
-- sees one sequence of admissions whatever its own clock says.
--
-- ARGV[1]: the number of buckets n. Bucket i: KEYS[i]; ARGV[3i-1], ARGV[3i], ARGV[3i+1]: limit,
-- period in ms, cost. With a lease, KEYS[n+1] is its sorted set (member: lease id, score: expiry
-- in ms) and ARGV[3n+2..3n+4] are the lease id, the most leases, and its time to live in ms.
-- Returns five integers per bucket, then five for the lease: allowed (1/0), limit, remaining,
-- reset in ms, retry-after in ms (-1: never).
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000000 + tonumber(time[2]) -- microseconds
local now_ms = math.floor(now / 1000)
local n = tonumber(ARGV[1])
local outcomes = {}
local all_allowed = true
for i = 1, n do
  local limit = tonumber(ARGV[3 * i - 1])
  local period = tonumber(ARGV[3 * i]) * 1000
  local cost = tonumber(ARGV[3 * i + 1])
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
local lease = nil
if #KEYS > n then
  local key = KEYS[n + 1]
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now_ms)
  local held = redis.call('ZCARD', key)
  local max = tonumber(ARGV[3 * n + 3])
  local id = ARGV[3 * n + 2]
  -- An id already held is a collision, never a free slot (ids are random: only a bug repeats one).
  local taken = redis.call('ZSCORE', key, id)
  lease = { key = key, id = id, max = max, ttl = tonumber(ARGV[3 * n + 4]),
            held = held, allowed = held < max and not taken }
  if not lease.allowed then all_allowed = false end
end
local reply = {}
for i = 1, n do
  local o = outcomes[i]
  local tat = o.tat
  if all_allowed then
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
if lease then
  local in_use = lease.held
  if all_allowed then
    redis.call('ZADD', lease.key, now_ms + lease.ttl, lease.id)
    redis.call('PEXPIRE', lease.key, lease.ttl + 1000)
    in_use = in_use + 1
  end
  reply[#reply + 1] = lease.allowed and 1 or 0
  reply[#reply + 1] = lease.max
  reply[#reply + 1] = math.max(lease.max - in_use, 0)
  reply[#reply + 1] = 0
  reply[#reply + 1] = lease.allowed and 0 or 1000
end
return reply
