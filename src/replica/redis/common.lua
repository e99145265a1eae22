-- quorum-sessions: helpers shared by the scripts (prepended by mod.rs).
--
-- Values are never decoded: entries are compared as byte strings and copied.
-- Lua's `<` on strings uses strcoll (the server's locale: "aa" sorts after
-- "z" in Danish), so no ordering below uses it: fixed-width lowercase hex is
-- compared as numbers (at most 12 digits at a time, exact in a double; the
-- same order as the bytes), anything else byte by byte with `bytes_cmp`.
--
-- The scripts run on every request, and in Redis each call into a C function
-- (string.sub, string.find, redis.call, ...) and each new string costs far
-- more than a Lua operation: the hot paths call as few as they can, validate
-- each distinct stamp or field name once per call, and never call `INFO`
-- outside Cluster mode (the caller passes the run id of the Redis process
-- it is connected to; only a call that finds no epoch made by that run id
-- checks it with INFO).

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
-- range, not %x (which follows the locale); anchored, so one pass.
local function is_hex(s, n)
  return #s == n and string.find(s, '^[0-9a-f]+$') ~= nil
end

-- nil when `run_id` is the run id of the Redis process running this script,
-- else the STALERUN error. `INFO` costs more than the rest of a request: it
-- runs only where a call would make an epoch or find none made by `run_id`
-- (once per epoch, and on a stale caller), never in the usual case.
--
-- Why: after a restart fred may write a request queued before the
-- connection dropped onto the new connection, carrying the old process's
-- run id. Without this check such a call makes a new epoch (and writes its
-- record) although the reply is refused, so one restart could start
-- several epochs, and a replica refilled meanwhile would be made write-only
-- again. The error is a reply, before any write: the caller re-learns the
-- run id and retries.
local function stale_run_id(run_id)
  local info = redis.call('INFO', 'server')
  local running = string.match(info, 'run_id:([0-9A-Za-z]+)')
  if running ~= nil and running == run_id then return nil end
  return 'STALERUN the run id passed is not the one of this Redis process'
end

-- Reads the epoch: its value, or false when it is missing or was not made or
-- confirmed by this Redis process (the run key holds another run id than
-- `run_id`, which the caller learnt with `INFO` on the very connection this
-- script came through: the keyspace was loaded from a snapshot or an AOF, or
-- a replica was promoted; what it holds may lack acknowledged writes). nil
-- and an error for foreign data, and nil and the STALERUN error when it
-- would be false but `run_id` is not the running process's (see
-- stale_run_id): a caller may make an epoch only in its own process. No
-- epoch key (Cluster mode) reads as ''; no run key (Cluster mode) skips the
-- process checks. One MGET in the usual case (MGET reads a key of another
-- type as missing: TYPE tells them apart).
local function epoch_read(key, run_key, run_id)
  if key == nil then return '' end
  local values
  if run_key ~= nil then
    values = redis.call('MGET', key, run_key)
  else
    values = redis.call('MGET', key)
  end
  local value, run = values[1], values[2]
  if not value then
    local kind = redis.call('TYPE', key)['ok']
    if kind ~= 'none' then return nil, 'CORRUPT the epoch key holds a ' .. kind end
    if run_key ~= nil then
      local stale = stale_run_id(run_id)
      if stale then return nil, stale end
    end
    return false
  end
  -- `:s` (being renewed, witness.rs) only in Cluster mode (no run key).
  if #value ~= 18 or string.find(value, '^[0-9a-f]+:[cns]$') == nil
      or (run_key ~= nil and string.sub(value, 18) == 's') then
    return nil, 'CORRUPT the epoch key holds foreign data'
  end
  if run_key ~= nil and run ~= run_id then
    if not run then
      local kind = redis.call('TYPE', run_key)['ok']
      if kind ~= 'none' then return nil, 'CORRUPT the epoch run key holds a ' .. kind end
    end
    local stale = stale_run_id(run_id)
    if stale then return nil, stale end
    return false
  end
  return value
end

-- True when `run_id` may be compared with and stored in the run key: a
-- non-empty word (Redis run ids are 40 hex digits). Unused in Cluster mode.
local function valid_run_id(run_key, run_id)
  if run_key == nil then return true end
  return run_id ~= nil and #run_id > 0 and #run_id <= 64 and string.find(run_id, '^[0-9A-Za-z]+$') ~= nil
end

-- The run id of the Redis process running this script (`INFO server`:
-- about 3 µs).
local function running_run_id()
  return string.match(redis.call('INFO', 'server'), 'run_id:([0-9A-Za-z]+)')
end

-- Cluster mode: checks the witness of the slot this call works in (see
-- witness.rs): a key of that slot holding the run id of the Redis process
-- that stamped it, before the epoch that covers the slot was made. nil when
-- it names the running process, else an error, before any write: NOWITNESS
-- (missing: the slot lost its data, or was never stamped) or NEWPROCESS
-- (stamped by another process: a restart that loaded a snapshot, a
-- failover to a Cluster replica, a slot migrated from another node). Foreign
-- data: GET fails with WRONGTYPE. The running process is asked every time
-- (one INFO): a caller cannot know which process a Cluster node's slot is
-- served by when its call arrives (a MOVED redirect sends the same call on).
local function witness_check(key)
  local value = redis.call('GET', key)
  if not value then return 'NOWITNESS the slot has no witness: it may have lost its data' end
  if running_run_id() == value then return nil end
  return 'NEWPROCESS the slot was stamped by another Redis process'
end

-- Makes a new epoch from the caller's random candidate when `value` is false
-- (a Redis restarted empty or from a snapshot gets a new epoch), and records
-- this process as its maker. A write: call it only after every validation.
local function epoch_ensure(key, run_key, value, candidate, run_id)
  if value then return value end
  value = candidate .. ':n'
  redis.call('SET', key, value)
  if run_key ~= nil then redis.call('SET', run_key, run_id) end
  return value
end
