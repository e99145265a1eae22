-- quorum-sessions: helpers shared by every script (prepended by redis.rs).
--
-- Values are never decoded: entries are compared as byte strings and copied.
-- Lua's `<` on strings uses strcoll (the server's locale), so every ordering
-- below goes through `bytes_cmp`, a plain byte-by-byte comparison.

-- -1, 0 or 1 as `a` sorts before, equal to or after `b`, byte by byte (a
-- proper prefix sorts first), like Rust's `[u8]` ordering.
local function bytes_cmp(a, b)
  if a == b then return 0 end
  local la, lb = #a, #b
  local n = la
  if lb < n then n = lb end
  for i = 1, n do
    local x, y = string.byte(a, i), string.byte(b, i)
    if x ~= y then
      if x < y then return -1 end
      return 1
    end
  end
  if la < lb then return -1 end
  return 1
end

-- True when `s` is exactly `n` lowercase hex digits. The class is a byte
-- range, not %x (which follows the locale).
local function is_hex(s, n)
  return #s == n and string.find(s, '[^0-9a-f]') == nil
end

-- Epoch value: 16 lowercase hex digits, then `:c` (complete) or `:n` (new).
local function is_epoch(s)
  local state = string.sub(s, 17)
  return #s == 18 and is_hex(string.sub(s, 1, 16), 16) and (state == ':c' or state == ':n')
end

-- The id of this Redis process: new at every start, and another one after a
-- failover. Read once per script call.
local run_id_cache = nil
local function run_id()
  if run_id_cache == nil then
    run_id_cache = string.match(redis.call('INFO', 'server'), 'run_id:(%w+)') or ''
  end
  return run_id_cache
end

-- Reads the epoch: its value, or false when it is missing or was not made or
-- confirmed by this Redis process (the run key holds another run id: the
-- keyspace was loaded from a snapshot or an AOF, or a replica was promoted;
-- what it holds may lack acknowledged writes). nil and an error for foreign
-- data. No epoch key (Cluster mode) reads as ''; no run key (Cluster mode)
-- skips the process check.
local function epoch_read(key, run_key)
  if key == nil then return '' end
  local kind = redis.call('TYPE', key)['ok']
  if kind == 'none' then return false end
  if kind ~= 'string' then return nil, 'CORRUPT the epoch key holds a ' .. kind end
  local value = redis.call('GET', key)
  if not value or not is_epoch(value) then
    return nil, 'CORRUPT the epoch key holds foreign data'
  end
  if run_key ~= nil then
    local run_kind = redis.call('TYPE', run_key)['ok']
    if run_kind ~= 'none' and run_kind ~= 'string' then
      return nil, 'CORRUPT the epoch run key holds a ' .. run_kind
    end
    if redis.call('GET', run_key) ~= run_id() then return false end
  end
  return value
end

-- Makes a new epoch from the caller's random candidate when `value` is false
-- (a Redis restarted empty or from a snapshot gets a new epoch), and records
-- this process as its maker. A write: call it only after every validation.
local function epoch_ensure(key, run_key, value, candidate)
  if value then return value end
  value = candidate .. ':n'
  redis.call('SET', key, value)
  if run_key ~= nil then redis.call('SET', run_key, run_id()) end
  return value
end

-- Field names: non-empty UTF-8 with no control character (Cc), the rules of
-- Rust's str::from_utf8 and record::check_field_name.
local function valid_name(s)
  local n = #s
  if n == 0 then return false end
  local i = 1
  while i <= n do
    local c = string.byte(s, i)
    if c < 0x80 then
      if c < 0x20 or c == 0x7f then return false end
      i = i + 1
    else
      local len, base, min
      if c >= 0xc2 and c <= 0xdf then len, base, min = 2, 0xc0, 0x80
      elseif c >= 0xe0 and c <= 0xef then len, base, min = 3, 0xe0, 0x800
      elseif c >= 0xf0 and c <= 0xf4 then len, base, min = 4, 0xf0, 0x10000
      else return false end
      if i + len - 1 > n then return false end
      local cp = c - base
      for j = i + 1, i + len - 1 do
        local b = string.byte(s, j)
        if b < 0x80 or b > 0xbf then return false end
        cp = cp * 64 + (b - 0x80)
      end
      if cp < min or cp > 0x10ffff or (cp >= 0xd800 and cp <= 0xdfff) then return false end
      if cp <= 0x9f then return false end -- C1 controls U+0080..U+009F
      i = i + len
    end
  end
  return true
end

-- An entry is `stamp(32) kind(1) until(12, kinds V and D) bytes(kinds v, V)`.
local function check_entry(v)
  if #v < 33 then return 'an entry is shorter than 33 bytes' end
  if not is_hex(string.sub(v, 1, 32), 32) then return 'an entry has a bad stamp' end
  local kind = string.sub(v, 33, 33)
  if kind == 'v' then return nil end
  if kind == 'd' then
    if #v ~= 33 then return 'a removed entry holds bytes' end
    return nil
  end
  if kind == 'V' or kind == 'D' then
    if #v < 45 or not is_hex(string.sub(v, 34, 45), 12) then return 'an entry has a bad until' end
    if kind == 'D' and #v ~= 45 then return 'a removed entry holds bytes' end
    return nil
  end
  return 'an entry has an unknown kind'
end

-- Parses flat hash pairs `name, value, ...` from index `first` into
-- { exists, f = { ['f:name'] = entry }, count, v, e, c, t, o, p }, validating
-- every item as codec::decode_pairs does. Returns nil and a reason on error.
local function parse(flat, first)
  local rec = { exists = false, f = {}, count = 0 }
  for i = first, #flat, 2 do
    local name, value = flat[i], flat[i + 1]
    if value == nil then return nil, 'odd number of hash items' end
    rec.exists = true
    if string.sub(name, 1, 2) == 'f:' then
      if not valid_name(string.sub(name, 3)) then return nil, 'a field has a bad name' end
      local err = check_entry(value)
      if err then return nil, err end
      rec.f[name] = value
      rec.count = rec.count + 1
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
      if not is_hex(value, 32) then return nil, 'bad tombstone' end
      rec.t = value
    elseif name == 'm:o' then
      if not is_hex(value, 32) then return nil, 'bad origin' end
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

-- Checks that `key` holds a hash or nothing; nil, or the CORRUPT error text.
local function check_type(key)
  local kind = redis.call('TYPE', key)['ok']
  if kind ~= 'hash' and kind ~= 'none' then
    return 'CORRUPT the key holds a ' .. kind .. ', not a hash'
  end
  return nil
end
