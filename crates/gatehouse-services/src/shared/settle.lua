-- KEYS: as admit.lua. ARGV: member, sec (the admission's), reserved_tokens, used_tokens,
-- cost_nanos, then per meter: period_ms, soft_nanos (-1: none).
-- Gives back the request's place and reservation and counts what it used. Returns per meter:
-- spend, reset_at (-1: none), and 1 when this request crossed the soft budget.
local member = ARGV[1]
local sec = tonumber(ARGV[2])
local reserved_tokens = tonumber(ARGV[3])
local used_tokens = tonumber(ARGV[4])
local cost = tonumber(ARGV[5])
local meters = #KEYS / 2
local out = {}

for i = 1, meters do
  local h, z = KEYS[2 * i - 1], KEYS[2 * i]
  local period, soft = tonumber(ARGV[4 + 2 * i]), tonumber(ARGV[5 + 2 * i])
  advance(h, 't', nowsec)
  -- The worst case counted at `sec` is replaced by what was used, while that second is in
  -- the window; a later second counts as the window's oldest.
  if sec <= nowsec and nowsec - sec < 60 then
    local f = 't' .. (sec % 60)
    local take = math.min(reserved_tokens, num(redis.call('HGET', h, f)))
    if take > 0 then
      incr(h, f, -take)
      incr(h, 'tn', -take)
    end
  end
  if used_tokens > 0 then
    local s = math.max(sec, nowsec - 59)
    if s > nowsec then
      s = nowsec
    end
    incr(h, 't' .. (s % 60), used_tokens)
    incr(h, 'tn', used_tokens)
  end
  local held = redis.call('HGET', h, 'h:' .. member)
  if held then
    incr(h, 'reserved', -num(held))
    redis.call('HDEL', h, 'h:' .. member)
  end
  redis.call('ZREM', z, member)
  roll(h, period)
  local before = num(redis.call('HGET', h, 'spend'))
  local after = before
  if cost > 0 then
    after = incr(h, 'spend', cost)
  end
  local crossed = 0
  if soft >= 0 and before < soft and after >= soft and redis.call('HGET', h, 'soft') ~= '1' then
    redis.call('HSET', h, 'soft', 1)
    crossed = 1
  end
  table.insert(out, after)
  table.insert(out, tonumber(redis.call('HGET', h, 'reset_at')) or -1)
  table.insert(out, crossed)
end
return out
