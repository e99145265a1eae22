-- quorum-sessions: merge a delta into one record (after common.lua).
--
-- KEYS[1] record key, KEYS[2] epoch key, KEYS[3] epoch run key (both absent
-- in Cluster mode).
-- ARGV[1] mode `u` (upsert) or `c` (create), ARGV[2] now (12 hex, ms),
-- ARGV[3] epoch candidate (16 hex), ARGV[4] expiry margin (decimal ms),
-- ARGV[5] the run id of the Redis process the caller is connected to (see
-- epoch_read; unused in Cluster mode), ARGV[6..] the delta as hash pairs,
-- exactly as codec::encode_pairs makes them.
-- Returns { status, epoch, held_max } with status `applied`, `gone` or
-- `exists`, and held_max the largest stamp the record held before ('' if none).
--
-- The same rules as replica::apply_merge, Record::merge_from and
-- Record::normalize. Everything (the stored hash and the delta) is validated
-- before the first write: a Lua error after a write is not rolled back.

-- Each distinct stamp (the first 32 bytes of an entry) is checked once and
-- kept as its three numbers { physical, logical, writer } (48, 32 and 48
-- bits: exact in doubles), or false when it is not 32 lowercase hex digits.
local stamps = {}

-- The stamp of `text` (an entry, or a stamp), or nil when it is malformed.
local function stamp_of(text)
  local s = string.sub(text, 1, 32)
  local known = stamps[s]
  if known == nil then
    known = false
    if #s == 32 and string.find(s, '^[0-9a-f]+$') then
      known = { tonumber(string.sub(s, 1, 12), 16), tonumber(string.sub(s, 13, 20), 16),
        tonumber(string.sub(s, 21, 32), 16) }
    end
    stamps[s] = known
  end
  if known then return s end
  return nil
end

-- -1, 0 or 1 comparing two stamps returned by stamp_of (as numbers: the
-- same order as their bytes).
local function stamp_cmp(a, b)
  if a == b then return 0 end
  local x, y = stamps[a], stamps[b]
  for i = 1, 3 do
    if x[i] ~= y[i] then
      if x[i] < y[i] then return -1 end
      return 1
    end
  end
  return 0
end

-- Field names seen in this call: true (a valid `f:` name), 'bad' (an `f:`
-- name that is not non-empty UTF-8 without control characters, the rules of
-- Rust's str::from_utf8 and record::check_field_name), false (no `f:`).
local names = {}

local function field_name(name)
  local known = names[name]
  if known ~= nil then return known end
  -- Printable ASCII, the usual case, is one string.find.
  if string.find(name, '^f:[\32-\126]+$') then
    known = true
  elseif string.sub(name, 1, 2) ~= 'f:' then
    known = false
  else
    known = 'bad'
    local s = string.sub(name, 3)
    local n, i = #s, 1
    local ok = n > 0
    while ok and i <= n do
      local c = string.byte(s, i)
      if c < 0x80 then
        ok = c >= 0x20 and c ~= 0x7f
        i = i + 1
      else
        local len, base, min
        if c >= 0xc2 and c <= 0xdf then len, base, min = 2, 0xc0, 0x80
        elseif c >= 0xe0 and c <= 0xef then len, base, min = 3, 0xe0, 0x800
        elseif c >= 0xf0 and c <= 0xf4 then len, base, min = 4, 0xf0, 0x10000
        else len = nil end
        ok = len ~= nil and i + len - 1 <= n
        if ok then
          local cp = c - base
          for j = i + 1, i + len - 1 do
            local b = string.byte(s, j)
            if b < 0x80 or b > 0xbf then ok = false end
            cp = cp * 64 + (b - 0x80)
          end
          -- no overlong form, surrogate or C1 control (U+0080..U+009F)
          ok = ok and cp >= min and cp <= 0x10ffff and (cp < 0xd800 or cp > 0xdfff) and cp > 0x9f
          i = i + len
        end
      end
    end
    if ok then known = true end
  end
  names[name] = known
  return known
end

-- Parses flat hash pairs `name, value, ...` from index `first` into
-- { exists, f = { ['f:name'] = entry }, s = { ['f:name'] = stamp }, count,
-- untils, v, e, c, t, o, p }, validating every item as codec::decode_pairs
-- does. An entry is `stamp(32) kind(1) until(12, kinds V and D) bytes(kinds
-- v, V)`. Returns nil and a reason on error.
local function parse(flat, first)
  local f, s = {}, {}
  local rec = { exists = false, f = f, s = s, count = 0, untils = false }
  for i = first, #flat, 2 do
    local name, value = flat[i], flat[i + 1]
    if value == nil then return nil, 'odd number of hash items' end
    rec.exists = true
    local is_field = field_name(name)
    if is_field == true then
      local kind = string.byte(value, 33)
      if kind == nil then return nil, 'an entry is shorter than 33 bytes' end
      local stamp = stamp_of(value)
      if not stamp then return nil, 'an entry has a bad stamp' end
      if kind ~= 118 then -- 'v'
        if kind == 100 then -- 'd'
          if #value ~= 33 then return nil, 'a removed entry holds bytes' end
        elseif kind == 86 or kind == 68 then -- 'V', 'D'
          if #value < 45 or not is_hex(string.sub(value, 34, 45), 12) then
            return nil, 'an entry has a bad until'
          end
          if kind == 68 and #value ~= 45 then return nil, 'a removed entry holds bytes' end
          rec.untils = true
        else
          return nil, 'an entry has an unknown kind'
        end
      end
      f[name] = value
      s[name] = stamp
      rec.count = rec.count + 1
    elseif is_field == 'bad' then
      return nil, 'a field has a bad name'
    elseif name == 'm:v' then
      if value ~= '1' then return nil, 'unknown format version' end
      rec.v = value
    elseif name == 'm:e' then
      if not is_hex(value, 12) then return nil, 'bad expiry' end
      rec.e = value
    elseif name == 'm:c' then
      if not is_hex(value, 12) then return nil, 'bad lifetime cap' end
      rec.c = value
    elseif name == 'm:t' then
      if #value ~= 32 or not stamp_of(value) then return nil, 'bad tombstone' end
      rec.t = value
    elseif name == 'm:o' then
      if #value ~= 32 or not stamp_of(value) then return nil, 'bad origin' end
      rec.o = value
    elseif name == 'm:p' then
      if value ~= '1' then return nil, 'bad partial flag' end
      rec.p = true
    else
      return nil, 'unknown hash field'
    end
  end
  if rec.exists and not (rec.v and rec.e and rec.c) then return nil, 'missing record metadata' end
  if rec.t and rec.count > 0 then return nil, 'a tombstone holds fields' end
  return rec
end

-- The larger / smaller of two optional stamps; of two optional 12-hex times
-- (nil is smallest for max; for min, nil means "unknown": the other is taken).
local function max_stamp(a, b)
  if a == nil then return b end
  if b == nil then return a end
  if stamp_cmp(a, b) >= 0 then return a end
  return b
end
local function min_stamp(a, b)
  if a == nil then return b end
  if b == nil then return a end
  if stamp_cmp(a, b) <= 0 then return a end
  return b
end
local function max_ms(a, b)
  if a == nil then return b end
  if b == nil then return a end
  if tonumber(a, 16) >= tonumber(b, 16) then return a end
  return b
end
local function min_ms(a, b)
  if a == nil then return b end
  if b == nil then return a end
  if tonumber(a, 16) <= tonumber(b, 16) then return a end
  return b
end

-- Record::normalize: a tombstone keeps no fields and is never partial; entries
-- with an until (kinds V and D) before now are dropped.
local function normalize(rec, now_ms, untils)
  if rec.t then
    rec.f = {}
    rec.p = nil
    return
  end
  if not untils then return end
  for name, value in pairs(rec.f) do
    local kind = string.byte(value, 33)
    if (kind == 86 or kind == 68) and tonumber(string.sub(value, 34, 45), 16) < now_ms then
      rec.f[name] = nil -- 86 'V', 68 'D'; clearing during pairs() is allowed
    end
  end
end

-- apply_merge: returns the status and the record to store (nil: no write).
-- A delta entry wins over the stored one with the larger stamp, then on
-- equal stamps with the larger rest of the stored form (byte order).
local function merge(stored, delta, mode, now_ms)
  local merged = { f = {} }
  local f = merged.f
  local untils = stored.untils or delta.untils
  if not stored.exists then
    for name, value in pairs(delta.f) do f[name] = value end
    merged.v, merged.e, merged.c = delta.v, delta.e, delta.c
    merged.t, merged.o, merged.p = delta.t, delta.o, delta.p
    normalize(merged, now_ms, untils)
    return 'applied', merged
  end
  if mode == 'c' and stored.o ~= delta.o then return 'exists', nil end
  if stored.t and not delta.t then return 'gone', nil end
  for name, value in pairs(stored.f) do f[name] = value end
  local stored_s, delta_s = stored.s, delta.s
  for name, value in pairs(delta.f) do
    local mine = f[name]
    if mine == nil then
      f[name] = value
    elseif mine ~= value then
      local by_stamp = stamp_cmp(delta_s[name], stored_s[name])
      if by_stamp > 0 or (by_stamp == 0 and bytes_cmp(string.sub(value, 33), string.sub(mine, 33)) > 0) then
        f[name] = value
      end
    end
  end
  merged.v = '1'
  merged.t = max_stamp(stored.t, delta.t)
  merged.e = max_ms(stored.e, delta.e)
  merged.c = min_ms(stored.c, delta.c)
  merged.o = min_stamp(stored.o, delta.o)
  merged.p = stored.p and delta.p
  normalize(merged, now_ms, untils)
  return 'applied', merged
end

-- The largest stamp of a stored record: fields, tombstone, origin.
local function held_max(rec)
  local best = max_stamp(rec.t, rec.o)
  for _, stamp in pairs(rec.s) do
    if best == nil or (stamp ~= best and stamp_cmp(stamp, best) > 0) then best = stamp end
  end
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
local function store(key, stored, merged, now_ms, margin)
  -- 12 hex digits are at most 2^48: exact in a double.
  local effective = tonumber(min_ms(merged.e, merged.c), 16)
  if effective <= now_ms then
    -- Record::is_expired: the record is dead; nothing is kept.
    redis.call('DEL', key)
    return
  end
  local set, del = {}, {}
  local n = 0
  local stored_f, merged_f = stored.f, merged.f
  for name, value in pairs(merged_f) do
    if stored_f[name] ~= value then
      set[n + 1] = name
      set[n + 2] = value
      n = n + 2
    end
  end
  for name in pairs(stored_f) do
    if merged_f[name] == nil then del[#del + 1] = name end
  end
  local p = nil
  if merged.p then p = '1' end
  local stored_p = nil
  if stored.p then stored_p = '1' end
  local meta = { 'm:v', merged.v, stored.v, 'm:e', merged.e, stored.e, 'm:c', merged.c, stored.c,
    'm:t', merged.t, stored.t, 'm:o', merged.o, stored.o, 'm:p', p, stored_p }
  for i = 1, 18, 3 do
    local name, value, before = meta[i], meta[i + 1], meta[i + 2]
    if value == nil then
      if before ~= nil then del[#del + 1] = name end
    elseif before ~= value then
      set[n + 1] = name
      set[n + 2] = value
      n = n + 2
    end
  end
  if #del > 0 then chunked('HDEL', key, del, 500) end
  if n > 0 then chunked('HSET', key, set, 1000) end
  -- '%d' prints an integer.
  redis.call('PEXPIREAT', key, string.format('%d', effective + margin))
end

local key, epoch_key, run_key = KEYS[1], KEYS[2], KEYS[3]
local mode, now, candidate, run_id = ARGV[1], ARGV[2], ARGV[3], ARGV[5]
local margin = tonumber(ARGV[4])
if (mode ~= 'u' and mode ~= 'c') or not is_hex(now, 12) or not is_hex(candidate, 16)
    or margin == nil or margin < 0 or margin > 86400000 or not valid_run_id(run_key, run_id) then
  return redis.error_reply('ERR quorum-sessions merge: bad arguments')
end
local now_ms = tonumber(now, 16)

local epoch, epoch_err = epoch_read(epoch_key, run_key, run_id)
if epoch_err then return redis.error_reply(epoch_err) end
local flat = redis.pcall('HGETALL', key)
if flat.err then
  return redis.error_reply('CORRUPT the key holds a ' .. redis.call('TYPE', key)['ok'] .. ', not a hash')
end
local stored, stored_err = parse(flat, 1)
if stored_err then return redis.error_reply('CORRUPT ' .. stored_err) end
local delta, delta_err = parse(ARGV, 6)
if delta_err or not delta.exists then
  return redis.error_reply('ERR quorum-sessions merge: bad delta: ' .. (delta_err or 'empty'))
end

-- Everything is validated: writes start here.
epoch = epoch_ensure(epoch_key, run_key, epoch, candidate, run_id)
local held = held_max(stored)
local status, merged = merge(stored, delta, mode, now_ms)
if merged then store(key, stored, merged, now_ms, margin) end
return { status, epoch, held }
