-- quorum-sessions: merge a delta into one record (after common.lua).
--
-- KEYS[1] record key, KEYS[2] epoch key, KEYS[3] epoch run key (both absent
-- in Cluster mode).
-- ARGV[1] mode `u` (upsert) or `c` (create), ARGV[2] now (12 hex, ms),
-- ARGV[3] epoch candidate (16 hex), ARGV[4] expiry margin (decimal ms),
-- ARGV[5..] the delta as hash pairs, exactly as codec::encode_pairs makes them.
-- Returns { status, epoch, held_max } with status `applied`, `gone` or
-- `exists`, and held_max the largest stamp the record held before ('' if none).
--
-- The same rules as replica::apply_merge, Record::merge_from and
-- Record::normalize. Everything is validated before the first write: a Lua
-- error after a write is not rolled back.

-- True when entry `a` wins over entry `b`: the larger stamp (the first 32
-- bytes), then on equal stamps the larger rest of the stored form.
local function entry_wins(a, b)
  local by_stamp = bytes_cmp(string.sub(a, 1, 32), string.sub(b, 1, 32))
  if by_stamp ~= 0 then return by_stamp > 0 end
  return bytes_cmp(string.sub(a, 33), string.sub(b, 33)) > 0
end

-- The larger / smaller of two optional fixed-width strings (nil is smallest
-- for max; for min, nil means "unknown" and the other one is taken).
local function max_opt(a, b)
  if a == nil then return b end
  if b == nil then return a end
  if bytes_cmp(a, b) >= 0 then return a end
  return b
end
local function min_opt(a, b)
  if a == nil then return b end
  if b == nil then return a end
  if bytes_cmp(a, b) <= 0 then return a end
  return b
end

-- Record::normalize: a tombstone keeps no fields and is never partial; entries
-- with an until (kinds V and D) before now are dropped.
local function normalize(rec, now)
  if rec.t then
    rec.f = {}
    rec.p = nil
    return
  end
  for name, value in pairs(rec.f) do
    local kind = string.byte(value, 33)
    if (kind == 86 or kind == 68) and bytes_cmp(string.sub(value, 34, 45), now) < 0 then
      rec.f[name] = nil -- 86 'V', 68 'D'; clearing during pairs() is allowed
    end
  end
end

-- apply_merge: returns the status and the record to store (nil: no write).
local function merge(stored, delta, mode, now)
  local merged = { f = {} }
  if not stored.exists then
    for name, value in pairs(delta.f) do merged.f[name] = value end
    merged.v, merged.e, merged.c = delta.v, delta.e, delta.c
    merged.t, merged.o, merged.p = delta.t, delta.o, delta.p
    normalize(merged, now)
    return 'applied', merged
  end
  if mode == 'c' and stored.o ~= delta.o then return 'exists', nil end
  if stored.t and not delta.t then return 'gone', nil end
  for name, value in pairs(stored.f) do merged.f[name] = value end
  for name, value in pairs(delta.f) do
    local mine = merged.f[name]
    if mine == nil or entry_wins(value, mine) then merged.f[name] = value end
  end
  merged.v = '1'
  merged.t = max_opt(stored.t, delta.t)
  merged.e = max_opt(stored.e, delta.e)
  merged.c = min_opt(stored.c, delta.c)
  merged.o = min_opt(stored.o, delta.o)
  merged.p = stored.p and delta.p
  normalize(merged, now)
  return 'applied', merged
end

-- The largest stamp of a stored record: fields, tombstone, origin.
local function held_max(rec)
  local best = max_opt(rec.t, rec.o)
  for _, value in pairs(rec.f) do best = max_opt(best, string.sub(value, 1, 32)) end
  return best or ''
end

-- Runs `command key items...` in chunks (unpack has a C-stack limit).
local function chunked(command, key, items, step)
  for i = 1, #items, step do
    local last = math.min(i + step - 1, #items)
    redis.call(command, key, unpack(items, i, last))
  end
end

-- Writes the difference between `stored` and `merged`, then the TTL.
local function store(key, stored, merged, now, margin)
  local effective = min_opt(merged.e, merged.c)
  if bytes_cmp(effective, now) <= 0 then
    -- Record::is_expired: the record is dead; nothing is kept.
    redis.call('DEL', key)
    return
  end
  local set, del = {}, {}
  for name, value in pairs(merged.f) do
    if stored.f[name] ~= value then
      set[#set + 1] = name
      set[#set + 1] = value
    end
  end
  for name in pairs(stored.f) do
    if merged.f[name] == nil then del[#del + 1] = name end
  end
  local meta = { { 'm:v', merged.v }, { 'm:e', merged.e }, { 'm:c', merged.c },
    { 'm:t', merged.t }, { 'm:o', merged.o } }
  if merged.p then meta[#meta + 1] = { 'm:p', '1' } else meta[#meta + 1] = { 'm:p', nil } end
  local before = { ['m:v'] = stored.v, ['m:e'] = stored.e, ['m:c'] = stored.c,
    ['m:t'] = stored.t, ['m:o'] = stored.o }
  if stored.p then before['m:p'] = '1' end
  for _, item in ipairs(meta) do
    local name, value = item[1], item[2]
    if value == nil then
      if before[name] ~= nil then del[#del + 1] = name end
    elseif before[name] ~= value then
      set[#set + 1] = name
      set[#set + 1] = value
    end
  end
  chunked('HDEL', key, del, 500)
  chunked('HSET', key, set, 1000)
  -- 12 hex digits are at most 2^48: exact in a double; '%d' prints an integer.
  local at = tonumber(effective, 16) + margin
  redis.call('PEXPIREAT', key, string.format('%d', at))
end

local key, epoch_key, run_key = KEYS[1], KEYS[2], KEYS[3]
local mode, now, candidate = ARGV[1], ARGV[2], ARGV[3]
local margin = tonumber(ARGV[4])
if (mode ~= 'u' and mode ~= 'c') or not is_hex(now, 12) or not is_hex(candidate, 16)
    or margin == nil or margin < 0 or margin > 86400000 then
  return redis.error_reply('ERR quorum-sessions merge: bad arguments')
end

local epoch, epoch_err = epoch_read(epoch_key, run_key)
if epoch_err then return redis.error_reply(epoch_err) end
local type_err = check_type(key)
if type_err then return redis.error_reply(type_err) end
local stored, stored_err = parse(redis.call('HGETALL', key), 1)
if stored_err then return redis.error_reply('CORRUPT ' .. stored_err) end
local delta, delta_err = parse(ARGV, 5)
if delta_err or not delta.exists then
  return redis.error_reply('ERR quorum-sessions merge: bad delta: ' .. (delta_err or 'empty'))
end

-- Everything is validated: writes start here.
epoch = epoch_ensure(epoch_key, run_key, epoch, candidate)
local held = held_max(stored)
local status, merged = merge(stored, delta, mode, now)
if merged then store(key, stored, merged, now, margin) end
return { status, epoch, held }
