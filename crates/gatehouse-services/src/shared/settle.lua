-- KEYS: as admit.lua. ARGV: member, sec (the admission's), reserved_tokens, used_tokens,
-- cost_nanos, then per meter: period_ms, soft_nanos (-1: none), tpm (-1: none).
-- Gives back the request's place and reservation and counts what it used. Returns per meter:
-- spend, reset_at (-1: none), and 1 when this request crossed the soft budget.
local member = ARGV[1]
local sec = tonumber(ARGV[2])
local reserved_tokens = tonumber(ARGV[3])
local used_tokens = tonumber(ARGV[4])
local cost = tonumber(ARGV[5])
local out = {}

for i = 1, #KEYS / 2 do
  local h, z = KEYS[2 * i - 1], KEYS[2 * i]
  local b = 5 + (i - 1) * 3
  local period, soft, tpm = tonumber(ARGV[b + 1]), tonumber(ARGV[b + 2]), tonumber(ARGV[b + 3])
  local m = load(h)
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
  table.insert(out, after)
  table.insert(out, tonumber(m.f.reset_at) or -1)
  table.insert(out, crossed)
end
return out
