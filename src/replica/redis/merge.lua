-- quorum-sessions: merge deltas into records (after common.lua), each
-- record on its own, under one epoch read.
--
-- KEYS[1..K] the record keys, KEYS[K+1] the epoch key, KEYS[K+2] the epoch
-- run key; in Cluster mode K is 1 and KEYS[2] is the witness of the
-- record's slot (see witness_check).
-- ARGV[1] K, ARGV[2] epoch candidate (16 hex), ARGV[3] expiry margin
-- (decimal ms), ARGV[4] the run id of the Redis process the caller is
-- connected to (see epoch_read; unused in Cluster mode), then for each
-- record in KEYS order: mode `u` (upsert) or `c` (create), now (12 hex,
-- ms), the count n of delta items, and the n items: the delta as hash
-- pairs, exactly as codec::encode_pairs makes them.
-- Returns three items per record: status, epoch ('' in Cluster mode),
-- held_max with status
-- `applied`, `gone` or `exists`, and held_max the largest stamp the record
-- held before the merge ('' if none); or `error`, the error text (`CORRUPT
-- ...`, `ERR ...`), '' when that record was refused (written not at all;
-- the others are merged). The whole call fails (writing nothing) on bad
-- arguments, on foreign data in the epoch keys, and with STALERUN when it
-- finds no epoch made by ARGV[4] and ARGV[4] is not the running process's
-- run id (see stale_run_id).
--
-- The same rules as replica::apply_merge, Record::merge_from and
-- Record::normalize. Everything read (of the stored hash, and the delta) is
-- validated and the merge decided before the first write: a Lua error after
-- a write is not rolled back.
--
-- A write costs what it changes: the usual update reads only the record's
-- metadata and the fields the delta names (one HMGET), not the whole hash.
-- Two summaries kept on every write of format 2 make that exact: `m:h`,
-- the largest field stamp the record holds ('-' for none), and `m:u`,
-- present ('1') when some entry carries an `until`. The whole hash is read
-- (HGETALL, and `m:h`/`m:u` recomputed) only when the merge may drop
-- fields — a tombstone on either side, an `until` on either side — or when
-- the record has no summary (format 1), or when it is no record of ours
-- (reported Corrupt, untouched).
--
-- Stored formats (`m:v`): 1 is the record alone, what builds before the
-- summaries read; 2 adds the summaries. Both are read. The delta's `m:v` is
-- the format the caller is set to write (StoredFormat), and the result is
-- written in the larger of the stored record's and the delta's: format 1
-- only while both are (with no summary: one found, written by an interim
-- build, is deleted, since a format-1 writer would leave it stale), so that
-- a build that reads only format 1 can read every record while servers
-- roll. A version above 2 is refused ("written by a newer build"), the
-- record untouched.
--
-- This runs on every write, and each call into C (string.sub, string.find,
-- redis.call), each Lua function call, each new table (and each resize of
-- one) costs far more than plain Lua operations (measured with callgrind:
-- about 1,000 instructions for a string.sub, 750 for a table, 300 for a
-- Lua call, 50 for a VM operation): the code below is written to need few
-- of them. One pass over each side; each distinct stamp, hex value and
-- entry checked once per call (a delta entry byte for byte the stored one
-- is not checked again); the fast path keeps no table per field (the
-- stored copy of the delta's k-th field is read by position in the HMGET
-- reply); tables are made with the room they need.
local byte, sub, find = string.byte, string.sub, string.find

-- An entry is `stamp(32) kind(1) until(12, kinds V and D) bytes(kinds v, V)`.
-- The entries of one write share their stamp, so the first 33 bytes of an
-- entry (its "head") repeat: each distinct head is checked once per call
-- into { stamp, kind, physical, logical, writer }, or false. The numbers
-- (48, 32 and 48 bits: exact in doubles, so comparing them is comparing the
-- bytes) are decoded only when two different stamps are compared, most
-- often the physical part alone. A 32-byte key (a tombstone, origin or
-- summary stamp) maps to the same table as the first head with that stamp:
-- only the stamp of such a key is used, never its kind.
local heads = {}

local function decode_head(head)
  local info = false
  local _, hex_end = find(head, '^[0-9a-f]+')
  local kind = byte(head, 33)
  if hex_end and hex_end >= 32
      and (kind == nil or kind == 118 or kind == 100 or kind == 86 or kind == 68) then
    if kind == nil then
      info = { head, nil, false, false, false }
    else
      local stamp = sub(head, 1, 32)
      info = { stamp, kind, false, false, false }
      if heads[stamp] == nil then heads[stamp] = info end
    end
  end
  heads[head] = info
  return info
end

-- True when decoded stamp `a` is larger than `b` (nil is smallest).
local function later(a, b)
  if b == nil then return a ~= nil end
  if a == nil or a == b then return false end
  local sa, sb = a[1], b[1]
  if sa == sb then return false end
  local x, y = a[3], b[3]
  if not x then x = tonumber(sub(sa, 1, 12), 16); a[3] = x end
  if not y then y = tonumber(sub(sb, 1, 12), 16); b[3] = y end
  if x ~= y then return x > y end
  x, y = a[4], b[4]
  if not x then x = tonumber(sub(sa, 13, 20), 16); a[4] = x end
  if not y then y = tonumber(sub(sb, 13, 20), 16); b[4] = y end
  if x ~= y then return x > y end
  x, y = a[5], b[5]
  if not x then x = tonumber(sub(sa, 21, 32), 16); a[5] = x end
  if not y then y = tonumber(sub(sb, 21, 32), 16); b[5] = y end
  return x > y
end

-- is_hex with a memo: metadata values repeat within a call (the delta's
-- expiry and cap are most often the stored ones; the write epoch is the
-- epoch read). Kept in `heads`: its keys are 12 or 16 bytes long, never 32
-- or 33 (one table fewer to make and grow).
local hexes = heads
local function hex(s, n)
  if #s ~= n then return false end
  local ok = hexes[s]
  if ok == nil then
    ok = find(s, '^[0-9a-f]+$') ~= nil
    hexes[s] = ok
  end
  return ok
end

-- Checks one field: its name (`f:` then non-empty UTF-8 without control
-- characters, the rules of Rust's str::from_utf8 and
-- record::check_field_name; printable ASCII is one string.find) unless
-- `known`, and its entry. Returns the decoded head, or nil and the error.
-- Kinds 'd', 'V' and 'D' get their tail checked (a 'v' entry holds any bytes).
local function check_field(name, value, known)
  if not known and not find(name, '^f:[\32-\126]+$') then
    local n, i, ok = #name, 3, #name >= 3
    while ok and i <= n do
      local c = byte(name, i)
      if c < 0x80 then
        ok = c >= 0x20 and c ~= 0x7f
        i = i + 1
      else
        local len, base, min
        if c >= 0xc2 and c <= 0xdf then len, base, min = 2, 0xc0, 0x80
        elseif c >= 0xe0 and c <= 0xef then len, base, min = 3, 0xe0, 0x800
        elseif c >= 0xf0 and c <= 0xf4 then len, base, min = 4, 0xf0, 0x10000 end
        ok = len ~= nil and i + len - 1 <= n
        if ok then
          local cp = c - base
          for j = i + 1, i + len - 1 do
            local b = byte(name, j)
            if b < 0x80 or b > 0xbf then ok = false end
            cp = cp * 64 + (b - 0x80)
          end
          -- no overlong form, surrogate or C1 control (U+0080..U+009F)
          ok = ok and cp >= min and cp <= 0x10ffff and (cp < 0xd800 or cp > 0xdfff) and cp > 0x9f
          i = i + len
        end
      end
    end
    if not ok then return nil, 'a field has a bad name' end
  end
  -- The length first: a 32-byte head would find a stamp's table.
  if #value < 33 then return nil, 'an entry is shorter than 33 bytes' end
  local head = sub(value, 1, 33)
  local info = heads[head]
  if info == nil then info = decode_head(head) end
  if not info then
    local _, hex_end = find(value, '^[0-9a-f]+')
    if not hex_end or hex_end < 32 then return nil, 'an entry has a bad stamp' end
    return nil, 'an entry has an unknown kind'
  end
  local kind = info[2]
  if kind == 100 and #value ~= 33 then return nil, 'a removed entry holds bytes' end
  if kind == 86 or kind == 68 then
    if #value < 45 or not hex(sub(value, 34, 45), 12) then
      return nil, 'an entry has a bad until'
    end
    if kind == 68 and #value ~= 45 then return nil, 'a removed entry holds bytes' end
  end
  return info
end

-- The error of a format version this build does not read: the same text as
-- record::check_format (a canonical decimal 3..255 is a newer build's; the
-- rest is malformed).
local function format_error(value)
  if find(value, '^[1-9][0-9]?[0-9]?$') and tonumber(value) <= 255 then
    return 'written by a newer build (format ' .. value .. '); this build reads 1..=2'
  end
  return 'bad format version'
end

-- Records one metadata item of a hash in `rec`; nil, or the error.
local function check_meta(rec, name, value)
  if name == 'm:v' then
    if value ~= '1' and value ~= '2' then return format_error(value) end
    rec.v = value
  elseif name == 'm:e' then
    if not hex(value, 12) then return 'bad expiry' end
    rec.e = value
  elseif name == 'm:c' then
    if not hex(value, 12) then return 'bad lifetime cap' end
    rec.c = value
  elseif name == 'm:t' or name == 'm:o' then
    local info = false
    if #value == 32 then
      info = heads[value]
      if info == nil then info = decode_head(value) end
    end
    if not info then
      if name == 'm:t' then return 'bad tombstone' end
      return 'bad origin'
    end
    if name == 'm:t' then rec.t = value else rec.o = value end
  elseif name == 'm:p' then
    if value ~= '1' then return 'bad partial flag' end
    rec.p = true
  elseif name == 'm:ep' then
    if not hex(value, 16) then return 'bad write epoch' end
    rec.ep = value
  elseif name == 'm:h' then
    if value ~= '-' then
      local info = false
      if #value == 32 then
        info = heads[value]
        if info == nil then info = decode_head(value) end
      end
      if not info then return 'bad field stamp summary' end
    end
    rec.h = value
  elseif name == 'm:u' then
    if value ~= '1' then return 'bad until flag' end
    rec.u = value
  else
    return 'unknown hash field'
  end
  return nil
end

-- Parses one side, `flat` pairs from index `first` to `last`, into { exists, f =
-- { ['f:name'] = entry }, s = { ['f:name'] = head }, untils, best, v, e, c,
-- t, o, p }, validating every item as codec::decode_pairs does (`best`: the
-- largest stamp held). For the delta (`stored` given) the fields are not
-- kept: each is decided against the stored copy at once, and the ones that
-- win are listed in `winners` (name, entry, name, entry, ...), the merge of
-- the usual case. Returns nil and a reason on error.
local function parse(flat, first, last, stored)
  local f, s, winners, n
  if stored then
    -- Room for two winners and the summary without a resize.
    winners, n = { nil, nil, nil, nil, nil, nil, nil, nil }, 0
  else
    f, s = {}, {}
  end
  -- The keys always set in the constructor: one allocation, no resize.
  local rec
  if stored then
    rec = { winners = winners, exists = nil, v = nil, e = nil, c = nil, fbest = nil, wbest = nil,
      best = nil }
  else
    rec = { f = f, s = s, exists = nil, v = nil, e = nil, c = nil, fbest = nil, best = nil }
  end
  local count, best, wbest = 0, nil, nil
  local stored_f, stored_s, got, k
  if stored then stored_f, stored_s, got, k = stored.f, stored.s, stored.got, 9 end
  for i = first, last, 2 do
    local name, value = flat[i], flat[i + 1]
    if i == last then return nil, 'odd number of hash items' end
    local byte1, byte2 = 0, 0
    if name ~= 'm:v' and name ~= 'm:e' and name ~= 'm:c' then byte1, byte2 = byte(name, 1, 2) end
    if byte1 == 102 and byte2 == 58 then -- 'f:'
      local mine
      if got then
        k = k + 1
        mine = got[k] or nil
      elseif stored then
        mine = stored_f[name]
      end
      local info, kind
      if mine == value then
        -- Byte for byte the stored entry, checked with it: only its kind.
        kind = byte(value, 33)
      else
        local err
        info, err = check_field(name, value, mine ~= nil)
        if not info then return nil, err end
        kind = info[2]
      end
      if kind == 86 or kind == 68 then rec.untils = true end
      count = count + 1
      if not stored then
        f[name] = value
        s[name] = info
        if best ~= info and later(info, best) then best = info end
      elseif mine == nil then
        winners[n + 1], winners[n + 2], n = name, value, n + 2
        if later(info, wbest) then wbest = info end
      elseif mine ~= value then
        -- The larger stamp wins, then on equal stamps the larger rest of
        -- the stored form, byte by byte.
        local theirs
        if got then theirs = heads[sub(mine, 1, 33)] else theirs = stored_s[name] end
        if later(info, theirs) or (not later(theirs, info)
            and bytes_cmp(sub(value, 33), sub(mine, 33)) > 0) then
          winners[n + 1], winners[n + 2], n = name, value, n + 2
          if later(info, wbest) then wbest = info end
        end
      end
    elseif name == 'm:e' and hex(value, 12) then
      rec.e = value -- the usual items, without check_meta when valid
    elseif name == 'm:c' and hex(value, 12) then
      rec.c = value
    elseif name == 'm:v' and (value == '2' or value == '1') then
      rec.v = value
    else
      -- m:ep, m:h and m:u belong to the stored hash (the epoch of its last
      -- merge, the summaries).
      if stored and (name == 'm:ep' or name == 'm:h' or name == 'm:u') then
        return nil, 'stored-only metadata in a delta'
      end
      local err = check_meta(rec, name, value)
      if err then return nil, err end
    end
  end
  rec.exists = first <= last
  if rec.exists and not (rec.v and rec.e and rec.c) then return nil, 'missing record metadata' end
  if rec.t and count > 0 then return nil, 'a tombstone holds fields' end
  rec.fbest, rec.wbest = best, wbest
  if rec.t and later(heads[rec.t], best) then best = heads[rec.t] end
  if rec.o and later(heads[rec.o], best) then best = heads[rec.o] end
  rec.best = best
  return rec
end

-- The larger / smaller of two optional stamps, or of two optional 12-hex
-- times (ms: true); nil is smallest for max; for min, nil means "unknown"
-- and the other one is taken.
local function pick(a, b, larger, ms)
  if a == nil then return b end
  if b == nil or a == b then return a end
  local b_beyond
  if ms then
    local x, y = tonumber(a, 16), tonumber(b, 16)
    if larger then b_beyond = y > x else b_beyond = y < x end
  elseif larger then
    b_beyond = later(heads[b], heads[a])
  else
    b_beyond = later(heads[a], heads[b])
  end
  if b_beyond then return b end
  return a
end

local argv = ARGV
local count, candidate, run_id = tonumber(argv[1]), argv[2], argv[4]
local margin = tonumber(argv[3])
local epoch_key, run_key, witness_key
if count == 1 and #KEYS == 2 then
  witness_key = KEYS[2]
elseif count ~= nil then
  epoch_key, run_key = KEYS[count + 1], KEYS[count + 2]
end
if count == nil or count < 1 or count % 1 ~= 0 or (#KEYS ~= count + 2 and not witness_key)
    or candidate == nil or not is_hex(candidate, 16) or margin == nil or margin < 0
    or margin > 86400000 or not valid_run_id(run_key, run_id) then
  return redis.error_reply('ERR quorum-sessions merge: bad arguments')
end
-- Where each record's arguments are, places[4r-3 .. 4r] = mode, now_ms,
-- first, last: all checked before the first record is written.
local places, at, nargv = { nil, nil, nil, nil }, 5, #argv
for r = 4, 4 * count, 4 do
  local mode, now, n = argv[at], argv[at + 1], tonumber(argv[at + 2])
  if (mode ~= 'u' and mode ~= 'c') or now == nil or not hex(now, 12) or n == nil or n < 0
      or n % 1 ~= 0 or at + 2 + n > nargv then
    return redis.error_reply('ERR quorum-sessions merge: bad arguments')
  end
  places[r - 3], places[r - 2] = mode, tonumber(now, 16)
  places[r - 1], places[r] = at + 3, at + 2 + n
  at = at + 3 + n
end
if at ~= nargv + 1 then return redis.error_reply('ERR quorum-sessions merge: bad arguments') end

-- Cluster mode: no epoch here (''); the witness of the record's slot
-- instead.
local epoch, epoch_err
if witness_key then
  epoch, epoch_err = '', witness_check(witness_key)
else
  epoch, epoch_err = epoch_read(epoch_key, run_key, run_id)
end
if epoch_err then return redis.error_reply(epoch_err) end
-- The write epoch of `epoch` (its 16 hex digits, checked by epoch_read).
local ep16, ep_of = nil, nil
if epoch and epoch ~= '' then
  ep16, ep_of = sub(epoch, 1, 16), epoch
  hexes[ep16] = true
end


-- The fast path's read: the metadata and the delta's own fields, or nil
-- when the whole hash must be read (see the header). A delta with a
-- tombstone or an `until` goes the whole way at once.
local NONE = {} -- no fields: never written to
local function read_fast(key, first, last)
  -- The delta's field names: the first two in locals (the usual delta
  -- names one or two: no table, no unpack), `names` from the third on.
  local n, n1, n2, names = 11, nil, nil, nil
  for i = first, last, 2 do
    local name, value = argv[i], nil
    if i < last then value = argv[i + 1] end
    if name == 'm:t' then return nil end
    local byte1, byte2 = 0, 0
    -- The usual metadata first: no C call for them.
    if name ~= 'm:v' and name ~= 'm:e' and name ~= 'm:c' then byte1, byte2 = byte(name, 1, 2) end
    if byte1 == 102 and byte2 == 58 and value ~= nil then -- 'f:'
      local kind = byte(value, 33)
      if kind == 86 or kind == 68 then return nil end -- 'V', 'D': an until
      -- unpack has a C-stack limit (about 8,000 values).
      if n >= 4000 then return nil end
      n = n + 1
      if n == 12 then
        n1 = name
      elseif n == 13 then
        n2 = name
      else
        if n == 14 then
          names = { 'HMGET', key, 'm:v', 'm:e', 'm:c', 'm:t', 'm:o', 'm:p', 'm:ep', 'm:h', 'm:u',
            n1, n2 }
        end
        names[n] = name
      end
    end
  end
  local got
  if names then
    got = redis.pcall(unpack(names, 1, n))
  elseif n == 13 then
    got = redis.pcall('HMGET', key, 'm:v', 'm:e', 'm:c', 'm:t', 'm:o', 'm:p', 'm:ep', 'm:h', 'm:u',
      n1, n2)
  elseif n == 12 then
    got = redis.pcall('HMGET', key, 'm:v', 'm:e', 'm:c', 'm:t', 'm:o', 'm:p', 'm:ep', 'm:h', 'm:u',
      n1)
  else
    got = redis.pcall('HMGET', key, 'm:v', 'm:e', 'm:c', 'm:t', 'm:o', 'm:p', 'm:ep', 'm:h', 'm:u')
  end
  if got.err then return 'wrongtype' end
  local v, e, c, o, p, ep, h = got[1], got[2], got[3], got[5], got[6], got[7], got[8]
  -- No format version: no record of ours, or no key at all.
  if not v then
    if redis.call('EXISTS', key) == 1 then return nil end
    return { exists = false, f = NONE, s = NONE }
  end
  -- A tombstone, an until or no summary (format 1): the whole hash.
  if got[4] or got[9] or not h then return nil end
  -- The fields before the metadata: `m:h` is most often the stamp of one
  -- of them, already checked then.
  for i = 12, n do
    local value = got[i - 2]
    if value then
      local name
      if names then name = names[i] elseif i == 12 then name = n1 else name = n2 end
      local _, err = check_field(name, value, false)
      if err then return 'CORRUPT ' .. err end
    end
  end
  -- The metadata by position, as check_meta checks it.
  if v ~= '2' and v ~= '1' then return 'CORRUPT ' .. format_error(v) end
  if not e then return 'CORRUPT missing record metadata' end
  if not hex(e, 12) then return 'CORRUPT bad expiry' end
  if not c then return 'CORRUPT missing record metadata' end
  if not hex(c, 12) then return 'CORRUPT bad lifetime cap' end
  local best = nil
  if o then
    if #o == 32 then best = heads[o]; if best == nil then best = decode_head(o) end end
    if not best then return 'CORRUPT bad origin' end
  end
  if p then
    if p ~= '1' then return 'CORRUPT bad partial flag' end
    p = true
  end
  if ep and not hex(ep, 16) then return 'CORRUPT bad write epoch' end
  local fbest = nil
  if h ~= '-' then
    if #h == 32 then fbest = heads[h]; if fbest == nil then fbest = decode_head(h) end end
    if not fbest then return 'CORRUPT bad field stamp summary' end
  end
  if later(fbest, best) then best = fbest end
  -- No field tables: parse finds the stored copy of the delta's k-th field
  -- at got[9 + k]. `f` is used only where a field may drop, never here.
  -- A missing item is false in `got`: nil here, as parse leaves it.
  return { exists = true, got = got, f = false, v = v, e = e, c = c, o = o or nil, p = p or nil,
    ep = ep or nil, h = h, fbest = fbest, best = best }
end

-- Merges the delta ARGV[first..last] into the record `key`: the status and
-- held_max, or nil and the error (nothing written). Sets `epoch` when it
-- writes one.
local function merge_one(key, mode, now_ms, first, last)
  local stored = read_fast(key, first, last)
  local wrongtype = stored == 'wrongtype'
  if stored == nil then
    local flat = redis.pcall('HGETALL', key)
    wrongtype = flat.err ~= nil
    if not wrongtype then
      local stored_err
      stored, stored_err = parse(flat, 1, #flat, nil)
      if stored_err then return nil, 'CORRUPT ' .. stored_err end
    end
  end
  if wrongtype then
    return nil, 'CORRUPT the key holds a ' .. redis.call('TYPE', key)['ok'] .. ', not a hash'
  end
  if type(stored) == 'string' then return nil, stored end
  local delta, delta_err = parse(argv, first, last, stored)
  if delta_err or not delta.exists then
    return nil, 'ERR quorum-sessions merge: bad delta: ' .. (delta_err or 'empty')
  end
  local held = ''
  if stored.best then held = stored.best[1] end

  -- apply_merge: a conditional create of another record, or a live delta on a
  -- tombstone, writes nothing.
  if stored.exists and mode == 'c' and stored.o ~= delta.o then
    if not epoch then epoch = epoch_ensure(epoch_key, run_key, epoch, candidate, run_id) end
    return 'exists', held
  end
  if stored.t and not delta.t then
    if not epoch then epoch = epoch_ensure(epoch_key, run_key, epoch, candidate, run_id) end
    return 'gone', held
  end

  -- The merged metadata, then what to write: `set` (name, value, ...) and `del`.
  local mt, me, mc, mo, mp
  if stored.exists then
    -- Most often the delta's are the stored ones: no call then.
    mt, me, mc, mo = stored.t, stored.e, stored.c, stored.o
    if delta.t ~= mt then mt = pick(mt, delta.t, true, false) end
    if delta.e ~= me then me = pick(me, delta.e, true, true) end
    if delta.c ~= mc then mc = pick(mc, delta.c, false, true) end
    if delta.o ~= mo then mo = pick(mo, delta.o, false, false) end
    mp = stored.p and delta.p
  else
    mt, me, mc, mo, mp = delta.t, delta.e, delta.c, delta.o, delta.p
  end
  local stored_f = stored.f
  local set, del = delta.winners, nil -- del: made when needed
  local fields_after = nil
  if mt or stored.untils or delta.untils then
    -- Record::normalize: a tombstone keeps no fields and is never partial;
    -- entries with an until (kinds V and D) before now are dropped. The
    -- merged fields are the stored ones and the winners, less those dropped.
    local fields = {}
    if mt then
      mp = nil
    else
      for name, value in pairs(stored_f) do fields[name] = value end
      for i = 1, #set, 2 do fields[set[i]] = set[i + 1] end
      for name, value in pairs(fields) do
        local kind = byte(value, 33)
        if (kind == 86 or kind == 68) and tonumber(sub(value, 34, 45), 16) < now_ms then
          fields[name] = nil -- 86 'V', 68 'D'; clearing during pairs() is allowed
        end
      end
    end
    fields_after = fields
    set = {}
    for name, value in pairs(fields) do
      if stored_f[name] ~= value then
        set[#set + 1] = name
        set[#set + 1] = value
      end
    end
    for name in pairs(stored_f) do
      if fields[name] == nil then
        del = del or {}
        del[#del + 1] = name
      end
    end
  end
  -- The summaries of the merged record: its largest field stamp, and
  -- whether an entry carries an until. Without a drop (`fields` unset), the
  -- fields are the stored ones with the winners on top, and a winner never
  -- holds a smaller stamp than the entry it replaces.
  local fbest, untils = stored.fbest, false
  if fields_after then
    fbest = nil
    for _, value in pairs(fields_after) do
      local info = heads[sub(value, 1, 33)]
      if later(info, fbest) then fbest = info end
      local kind = byte(value, 33)
      if kind == 86 or kind == 68 then untils = true end
    end
  elseif later(delta.wbest, fbest) then
    fbest = delta.wbest
  end
  -- The result's format: the larger of the stored and the delta's ('1' or
  -- '2'; no string `<`, which follows the server's locale). Format 1 keeps
  -- no summary (and drops one an interim build wrote: it would go stale).
  local mv = delta.v
  if stored.v == '2' then mv = '2' end
  local h, u = '-', nil
  if fbest then h = fbest[1] end
  if untils then u = '1' end
  if mv == '1' then h = nil; u = nil end
  local p, stored_p = nil, nil
  if mp then p = '1' end
  if stored.p then stored_p = '1' end
  -- Each metadata item that changes: set, or deleted when it goes (inline:
  -- no table or call per item).
  local ns, nd = #set, 0
  if del then nd = #del end
  if stored.v ~= mv then set[ns + 1], set[ns + 2], ns = 'm:v', mv, ns + 2 end
  if me ~= stored.e then set[ns + 1], set[ns + 2], ns = 'm:e', me, ns + 2 end
  if mc ~= stored.c then set[ns + 1], set[ns + 2], ns = 'm:c', mc, ns + 2 end
  if mt ~= stored.t then
    if mt == nil then
      del = del or {}
      del[nd + 1], nd = 'm:t', nd + 1
    else
      set[ns + 1], set[ns + 2], ns = 'm:t', mt, ns + 2
    end
  end
  if mo ~= stored.o then
    if mo == nil then
      del = del or {}
      del[nd + 1], nd = 'm:o', nd + 1
    else
      set[ns + 1], set[ns + 2], ns = 'm:o', mo, ns + 2
    end
  end
  if p ~= stored_p then
    if p == nil then
      del = del or {}
      del[nd + 1], nd = 'm:p', nd + 1
    else
      set[ns + 1], set[ns + 2], ns = 'm:p', p, ns + 2
    end
  end
  if h ~= stored.h then
    if h == nil then
      del = del or {}
      del[nd + 1], nd = 'm:h', nd + 1
    else
      set[ns + 1], set[ns + 2], ns = 'm:h', h, ns + 2
    end
  end
  if u ~= stored.u then
    if u == nil then
      del = del or {}
      del[nd + 1], nd = 'm:u', nd + 1
    else
      set[ns + 1], set[ns + 2], ns = 'm:u', u, ns + 2
    end
  end

  -- Everything is validated and decided: writes start here.
  if not epoch then epoch = epoch_ensure(epoch_key, run_key, epoch, candidate, run_id) end
  -- m:ep: the epoch this write happened in, read in this same script (so a
  -- record holding m:ep = E was written while E stood; see "Reads" in
  -- the module docs of replica::redis). Not in Cluster mode (no epoch).
  if epoch ~= '' then
    if epoch ~= ep_of then ep16, ep_of = sub(epoch, 1, 16), epoch end
    if stored.ep ~= ep16 then set[ns + 1], set[ns + 2], ns = 'm:ep', ep16, ns + 2 end
  end
  -- 12 hex digits are at most 2^48: exact in a double.
  local effective = tonumber(me, 16)
  if mc ~= me then
    local cap = tonumber(mc, 16)
    if cap < effective then effective = cap end
  end
  if effective <= now_ms then
    -- Record::is_expired: the record is dead; nothing is kept.
    redis.call('DEL', key)
  else
    -- In chunks: unpack has a C-stack limit.
    for i = 1, nd, 500 do redis.call('HDEL', key, unpack(del, i, math.min(i + 499, nd))) end
    for i = 1, ns, 1000 do redis.call('HSET', key, unpack(set, i, math.min(i + 999, ns))) end
    -- '%d' prints an integer (a number argument would be printed with
    -- '%.17g' by Redis, which costs more than string.format).
    redis.call('PEXPIREAT', key, string.format('%d', effective + margin))
  end
  return 'applied', held
end

-- One reply per record; one record's error leaves the others be.
local out, n = { nil, nil, nil }, 0
for r = 1, count do
  local p = 4 * r
  local status, held = merge_one(KEYS[r], places[p - 3], places[p - 2], places[p - 1], places[p])
  if status then
    out[n + 1], out[n + 2], out[n + 3] = status, epoch, held
  else
    out[n + 1], out[n + 2], out[n + 3] = 'error', held, ''
  end
  n = n + 3
end
return out
