-- Shared by admit.lua and settle.lua (prepended to each). A meter is one hash (its spend, its
-- budget period, its reservations, and two sliding one-minute windows of one-second slots:
-- `r` counts requests, `t` tokens) and one sorted set of the requests in flight, each scored
-- by when its lease ends. Times are Redis's own, never an instance's.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local nowsec = math.floor(now / 1000)

local function num(v)
  return tonumber(v) or 0
end

-- HINCRBY, but Redis reads "-0" as no integer: a zero change is no call.
local function incr(h, f, n)
  if n ~= 0 then
    return redis.call('HINCRBY', h, f, n)
  end
  return num(redis.call('HGET', h, f))
end

-- Moves window `w` of hash `h` to end at second `s`, forgetting the seconds that leave it;
-- returns what the window holds.
local function advance(h, w, s)
  local head = num(redis.call('HGET', h, w .. 'h'))
  local total = num(redis.call('HGET', h, w .. 'n'))
  if s <= head then
    return total
  end
  for x = math.max(head, s - 60) + 1, s do
    local f = w .. (x % 60)
    local c = num(redis.call('HGET', h, f))
    if c > 0 then
      total = total - c
      redis.call('HDEL', h, f)
    end
  end
  if total < 0 then
    total = 0
  end
  redis.call('HSET', h, w .. 'h', s, w .. 'n', total)
  return total
end

-- Seconds from `s` until the oldest second counted leaves window `w`.
local function reset_secs(h, w, s)
  if num(redis.call('HGET', h, w .. 'n')) <= 0 then
    return 0
  end
  local head = num(redis.call('HGET', h, w .. 'h'))
  for x = head - 59, head do
    if num(redis.call('HGET', h, w .. (x % 60))) > 0 then
      return math.max(x + 60 - s, 0)
    end
  end
  return 0
end

-- A new budget period when the current one is over (`period` in ms; 0: none).
local function roll(h, period)
  if period <= 0 then
    return
  end
  local at = tonumber(redis.call('HGET', h, 'reset_at'))
  if at and now >= at then
    local periods = math.floor((now - at) / period) + 1
    redis.call('HSET', h, 'spend', 0, 'reset_at', at + periods * period, 'soft', 0)
  end
end
