-- Shared by admit.lua and settle.lua (prepended to each). A meter is one hash and one sorted
-- set. The hash holds its spend and budget period and, for each limit it has, a sliding
-- one-minute window of one-second slots (`r` counts requests, `t` tokens): the slots
-- `r0`..`r59`, the newest second counted `rh`, the window's total `rn`, and the oldest second
-- that may still hold a count `ro`. The set holds the requests in flight, each scored by when
-- its lease ends and named `instance:n:nanos` (its reservation travels in its name). A script
-- reads a meter with one HMGET and writes it back with one HSET. Times are Redis's own.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local nowsec = math.floor(now / 1000)

local function num(v)
  return tonumber(v) or 0
end

local FIELDS = {'spend', 'reserved', 'period', 'reset_at', 'soft', 'rh', 'rn', 'ro', 'th', 'tn', 'to', 'px', 'xp'}
local NUMERIC = {'spend', 'reserved', 'rh', 'rn', 'ro', 'th', 'tn', 'to', 'px', 'xp'}

-- Reads a meter: its fields, and the window slots a script will touch (`slots`), in one call.
local function load(h, slots)
  local names = {unpack(FIELDS)}
  for _, s in ipairs(slots) do
    table.insert(names, s)
  end
  local v = redis.call('HMGET', h, unpack(names))
  local m = {h = h, seeded = v[1] ~= false, dirty = {}, f = {}}
  for i, name in ipairs(names) do
    m.f[name] = v[i]
  end
  for _, name in ipairs(NUMERIC) do
    m.f[name] = num(m.f[name])
  end
  for _, s in ipairs(slots) do
    m.f[s] = num(m.f[s])
  end
  return m
end

local function put(m, name, value)
  m.f[name] = value
  m.dirty[name] = true
end

-- Writes back what changed, in one call.
local function save(m)
  local args = {}
  for name in pairs(m.dirty) do
    table.insert(args, name)
    table.insert(args, m.f[name])
  end
  if #args > 0 then
    redis.call('HSET', m.h, unpack(args))
  end
end

-- A slot's count: loaded with the meter when the script knew it would need it.
local function slot(m, f)
  if m.f[f] == nil then
    m.f[f] = num(redis.call('HGET', m.h, f))
  end
  return m.f[f]
end

-- Moves window `w` to end at second `s`, forgetting the seconds that leave it (at most one
-- slot per second that passed, not per request).
local function advance(m, w, s)
  local head, total = m.f[w .. 'h'], m.f[w .. 'n']
  if s <= head then
    return
  end
  if total > 0 then
    for x = math.max(head, s - 60) + 1, s do
      local f = w .. (x % 60)
      local c = slot(m, f)
      if c > 0 then
        total = total - c
        put(m, f, 0)
      end
    end
  end
  if total < 0 then
    total = 0
  end
  put(m, w .. 'h', s)
  put(m, w .. 'n', total)
end

-- Counts `n` at second `s` of window `w` (a second older than the window counts as its oldest).
local function add(m, w, s, n)
  if n <= 0 then
    return
  end
  s = math.min(math.max(s, m.f[w .. 'h'] - 59), m.f[w .. 'h'])
  local f = w .. (s % 60)
  put(m, f, slot(m, f) + n)
  if m.f[w .. 'n'] <= 0 or m.f[w .. 'o'] > s or m.f[w .. 'o'] < m.f[w .. 'h'] - 59 then
    put(m, w .. 'o', s)
  end
  put(m, w .. 'n', m.f[w .. 'n'] + n)
end

-- Takes back up to `n` counted at second `s`, if that second is still in the window.
local function sub(m, w, s, n)
  local head = m.f[w .. 'h']
  if n <= 0 or s > head or head - s >= 60 then
    return
  end
  local f = w .. (s % 60)
  local take = math.min(n, slot(m, f))
  if take > 0 then
    put(m, f, m.f[f] - take)
    put(m, w .. 'n', math.max(m.f[w .. 'n'] - take, 0))
  end
end

-- Seconds from now until the oldest second counted leaves window `w`. The oldest is kept as
-- counts are added; when it leaves the window the next one is found by walking forward, so
-- each slot is passed once, not once per request. (A second whose tokens were all given back
-- may stay the oldest: the reset shown is then a little early, never late.)
local function reset_secs(m, w)
  local head, total = m.f[w .. 'h'], m.f[w .. 'n']
  if total <= 0 then
    return 0
  end
  local o = m.f[w .. 'o']
  if o < head - 59 then
    o = head - 59
    while o < head and slot(m, w .. (o % 60)) <= 0 do
      o = o + 1
    end
    put(m, w .. 'o', o)
  end
  return math.max(o + 60 - nowsec, 0)
end

-- A new budget period when the current one is over (`period` in ms; 0: none).
local function roll(m, period)
  local at = tonumber(m.f.reset_at)
  if period <= 0 or not at or now < at then
    return
  end
  local periods = math.floor((now - at) / period) + 1
  put(m, 'spend', 0)
  put(m, 'reset_at', at + periods * period)
  put(m, 'soft', 0)
end

-- The reservation a request's name carries (`instance:n:nanos`).
local function held(member)
  return tonumber(string.match(member, ':(%d+)$')) or 0
end
