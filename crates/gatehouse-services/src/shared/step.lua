-- One call: first the settles of requests that ended (any number, each for one or two
-- meters), then, if asked, the admission of a new request. Settles ride along with the next
-- admission instead of costing a call of their own.
--
-- ARGV[1] = number of settles; then per settle: meters, member, sec (its admission's),
-- reserved_tokens, used_tokens, cost_nanos, and per meter: period_ms, soft_nanos, tpm (-1:
-- none). KEYS: per settle per meter its hash and its in-flight set; then the admission's.
-- After the settles: 1 and the admission's ARGV (below), or 0.
--
-- Admission ARGV: member, tokens, nanos, lease_ms, then per meter eight values, -1 for
-- "none": rpm, tpm, max_parallel, max_budget_nanos, period_ms (0: none), seed_spend_nanos,
-- seed_reset_at, soft_nanos. Either every meter takes the request or none does.
--
-- Returns {n, <n values: per settle per meter spend, reset_at (-1: none), crossed (1 when
-- this request crossed the soft budget)>, then the admission's answer}: {0, sec, now, then
-- per meter: requests used, tokens used, requests reset, tokens reset} or a refusal
-- {code, meter, ...}: 1 parallel {max}; 2 rpm {wait}; 3 tpm {used, wait}; 4 budget
-- {spend, reserved, reset_at}.

local settled = {}
local a, k = 2, 1
for _ = 1, tonumber(ARGV[1]) do
  local meters = tonumber(ARGV[a])
  local member = ARGV[a + 1]
  local sec = tonumber(ARGV[a + 2])
  local reserved_tokens = tonumber(ARGV[a + 3])
  local used_tokens = tonumber(ARGV[a + 4])
  local cost = tonumber(ARGV[a + 5])
  a = a + 6
  for _ = 1, meters do
    local h, z = KEYS[k], KEYS[k + 1]
    local period, soft, tpm = tonumber(ARGV[a]), tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2])
    k, a = k + 2, a + 3
    local m = load(h, tpm >= 0 and {'t' .. (sec % 60), 't' .. (nowsec % 60)} or {})
    if tpm >= 0 then
      -- The worst case counted at `sec` is replaced by what was used.
      advance(m, 't', nowsec)
      sub(m, 't', sec, reserved_tokens)
      add(m, 't', sec, used_tokens)
    end
    -- Gone already if its lease ended first: then its reservation went with it.
    if redis.call('ZREM', z, member) == 1 then
      put(m, 'reserved', math.max(m.f.reserved - held(member), 0))
    end
    roll(m, period)
    local before = m.f.spend
    local after = before + cost
    if cost > 0 then
      put(m, 'spend', after)
    end
    local crossed = 0
    if soft >= 0 and before < soft and after >= soft and num(m.f.soft) ~= 1 then
      put(m, 'soft', 1)
      crossed = 1
    end
    save(m)
    table.insert(settled, after)
    table.insert(settled, tonumber(m.f.reset_at) or -1)
    table.insert(settled, crossed)
  end
end

local function answer(admission)
  local out = {#settled}
  for _, v in ipairs(settled) do
    table.insert(out, v)
  end
  for _, v in ipairs(admission) do
    table.insert(out, v)
  end
  return out
end

if tonumber(ARGV[a]) ~= 1 then
  return answer({})
end

local function admit(a, k)
  local member = ARGV[a + 1]
  local tokens = tonumber(ARGV[a + 2])
  local nanos = tonumber(ARGV[a + 3])
  local lease = tonumber(ARGV[a + 4])
  local count = (#KEYS - k + 1) / 2
  local meters = {}

  for i = 1, count do
    local h, z = KEYS[k + 2 * i - 2], KEYS[k + 2 * i - 1]
    local b = a + 4 + (i - 1) * 8
    local rpm, tpm, par = tonumber(ARGV[b + 1]), tonumber(ARGV[b + 2]), tonumber(ARGV[b + 3])
    local max, period = tonumber(ARGV[b + 4]), tonumber(ARGV[b + 5])
    local soft = tonumber(ARGV[b + 8])
    local slots = {}
    if rpm >= 0 then
      table.insert(slots, 'r' .. (nowsec % 60))
    end
    if tpm >= 0 then
      table.insert(slots, 't' .. (nowsec % 60))
    end
    local m = load(h, slots)
    m.rpm, m.tpm = rpm, tpm
    if not m.seeded then
      -- First sight of this meter (or Redis lost it): it starts from the database's spend.
      local seed = tonumber(ARGV[b + 6])
      put(m, 'spend', seed)
      put(m, 'reserved', 0)
      put(m, 'period', period)
      put(m, 'soft', (soft >= 0 and seed >= soft) and 1 or 0)
      if tonumber(ARGV[b + 7]) >= 0 then
        put(m, 'reset_at', tonumber(ARGV[b + 7]))
      end
    elseif num(m.f.period) ~= period then
      -- An edit changed the period: the new one counts from now.
      put(m, 'period', period)
      if period > 0 then
        put(m, 'reset_at', now + period)
      else
        m.f.reset_at = nil
        redis.call('HDEL', h, 'reset_at')
      end
    end
    roll(m, period)
    -- Places and reservations of requests whose instance never settled them (it died), looked
    -- for once a second.
    if m.f.px < nowsec then
      put(m, 'px', nowsec)
      local gone = redis.call('ZRANGEBYSCORE', z, '-inf', now)
      if #gone > 0 then
        local back = 0
        for _, g in ipairs(gone) do
          back = back + held(g)
        end
        put(m, 'reserved', math.max(m.f.reserved - back, 0))
        redis.call('ZREMRANGEBYSCORE', z, '-inf', now)
      end
    end
    if par >= 0 and redis.call('ZCARD', z) + 1 > par then
      save(m)
      return {1, i, par}
    end
    -- A window is kept only for a limit the meter has: a new limit counts from its edit.
    local ur, ut = 0, 0
    if rpm >= 0 then
      advance(m, 'r', nowsec)
      ur = m.f.rn
      if ur >= rpm then
        local wait = reset_secs(m, 'r')
        save(m)
        return {2, i, wait}
      end
    end
    if tpm >= 0 then
      advance(m, 't', nowsec)
      ut = m.f.tn
      if ut + tokens > tpm then
        local wait = reset_secs(m, 't')
        save(m)
        return {3, i, ut, wait}
      end
    end
    if max >= 0 and m.f.spend + m.f.reserved + nanos > max then
      save(m)
      return {4, i, m.f.spend, m.f.reserved, tonumber(m.f.reset_at) or -1}
    end
    m.ur, m.ut = ur, ut
    meters[i] = m
  end

  local out = {0, nowsec, now}
  for i = 1, count do
    local m, z = meters[i], KEYS[k + 2 * i - 1]
    local rr, rt = 0, 0
    if m.rpm >= 0 then
      add(m, 'r', nowsec, 1)
      rr = reset_secs(m, 'r')
    end
    if m.tpm >= 0 then
      add(m, 't', nowsec, tokens)
      rt = reset_secs(m, 't')
    end
    put(m, 'reserved', m.f.reserved + nanos)
    -- A meter idle for a week goes (its expiry is pushed back once a day); used again, it
    -- starts from the database's spend, which every instance writes every few seconds.
    local refresh = m.f.xp < nowsec - 86400
    if refresh then
      put(m, 'xp', nowsec)
    end
    save(m)
    redis.call('ZADD', z, now + lease, member)
    if refresh then
      redis.call('PEXPIRE', m.h, 604800000)
      redis.call('PEXPIRE', z, 604800000)
    end
    table.insert(out, m.ur)
    table.insert(out, m.ut)
    table.insert(out, rr)
    table.insert(out, rt)
  end
  return out
end

return answer(admit(a, k))
