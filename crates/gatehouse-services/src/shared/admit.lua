-- KEYS: per meter (the key's, then its team's) its hash and its in-flight set.
-- ARGV: member, tokens, nanos, lease_ms, then per meter eight values, -1 for "none":
--   rpm, tpm, max_parallel, max_budget_nanos, period_ms (0: none), seed_spend_nanos,
--   seed_reset_at, soft_nanos.
-- Either every meter takes the request or none does. Returns {0, sec, now, then per meter:
-- requests used, tokens used, requests reset, tokens reset} or a refusal {code, meter, ...}:
-- 1 parallel {max}; 2 rpm {wait}; 3 tpm {used, wait}; 4 budget {spend, reserved, reset_at}.
local member = ARGV[1]
local tokens = tonumber(ARGV[2])
local nanos = tonumber(ARGV[3])
local lease = tonumber(ARGV[4])
local meters = #KEYS / 2
local used = {}

for i = 1, meters do
  local h, z = KEYS[2 * i - 1], KEYS[2 * i]
  local b = 4 + (i - 1) * 8
  local rpm, tpm, par = tonumber(ARGV[b + 1]), tonumber(ARGV[b + 2]), tonumber(ARGV[b + 3])
  local max, period = tonumber(ARGV[b + 4]), tonumber(ARGV[b + 5])
  local soft = tonumber(ARGV[b + 8])
  if redis.call('HEXISTS', h, 'spend') == 0 then
    -- First sight of this meter (or Redis lost it): it starts from the database's spend.
    local seed = tonumber(ARGV[b + 6])
    local flag = 0
    if soft >= 0 and seed >= soft then
      flag = 1
    end
    redis.call('HSET', h, 'spend', seed, 'reserved', 0, 'period', period, 'soft', flag)
    if tonumber(ARGV[b + 7]) >= 0 then
      redis.call('HSET', h, 'reset_at', ARGV[b + 7])
    end
  elseif num(redis.call('HGET', h, 'period')) ~= period then
    -- An edit changed the period: the new one counts from now.
    redis.call('HSET', h, 'period', period)
    if period > 0 then
      redis.call('HSET', h, 'reset_at', now + period)
    else
      redis.call('HDEL', h, 'reset_at')
    end
  end
  roll(h, period)
  -- Places and reservations of requests whose instance never settled them (it died).
  local gone = redis.call('ZRANGEBYSCORE', z, '-inf', now)
  if #gone > 0 then
    local back = 0
    for _, m in ipairs(gone) do
      back = back + num(redis.call('HGET', h, 'h:' .. m))
      redis.call('HDEL', h, 'h:' .. m)
    end
    incr(h, 'reserved', -back)
    redis.call('ZREMRANGEBYSCORE', z, '-inf', now)
  end
  if par >= 0 and redis.call('ZCARD', z) + 1 > par then
    return {1, i, par}
  end
  local ur = advance(h, 'r', nowsec)
  if rpm >= 0 and ur >= rpm then
    return {2, i, reset_secs(h, 'r', nowsec)}
  end
  local ut = advance(h, 't', nowsec)
  if tpm >= 0 and ut + tokens > tpm then
    return {3, i, ut, reset_secs(h, 't', nowsec)}
  end
  local spend, reserved = num(redis.call('HGET', h, 'spend')), num(redis.call('HGET', h, 'reserved'))
  if max >= 0 and spend + reserved + nanos > max then
    return {4, i, spend, reserved, tonumber(redis.call('HGET', h, 'reset_at')) or -1}
  end
  used[i] = {ur, ut}
end

local out = {0, nowsec, now}
local slot = nowsec % 60
for i = 1, meters do
  local h, z = KEYS[2 * i - 1], KEYS[2 * i]
  incr(h, 'r' .. slot, 1)
  incr(h, 'rn', 1)
  if tokens > 0 then
    incr(h, 't' .. slot, tokens)
    incr(h, 'tn', tokens)
  end
  incr(h, 'reserved', nanos)
  redis.call('HSET', h, 'h:' .. member, nanos)
  redis.call('ZADD', z, now + lease, member)
  redis.call('PEXPIRE', z, lease * 2)
  -- A meter idle for a week goes; if its key is used again, it starts from the database's
  -- spend, which every instance writes every few seconds.
  redis.call('PEXPIRE', h, 604800000)
  table.insert(out, used[i][1])
  table.insert(out, used[i][2])
  table.insert(out, reset_secs(h, 'r', nowsec))
  table.insert(out, reset_secs(h, 't', nowsec))
end
return out
