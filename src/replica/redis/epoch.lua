-- quorum-sessions: the epoch key (after common.lua).
--
-- Standalone and Sentinel: KEYS[1] epoch key, KEYS[2] epoch run key.
-- ARGV[1] `get` or `complete`; ARGV[2] the candidate (for `get`, 16 hex) or
-- the epoch id to mark complete (for `complete`, 16 hex); ARGV[3] the run id
-- of the Redis process the caller is connected to (see epoch_read).
-- `get` returns the epoch, creating it from the candidate if missing;
-- `complete` returns 1 after marking the epoch complete if its id is ARGV[2],
-- else 0 and changes nothing. Either answers the STALERUN error, changing
-- nothing, when it finds no epoch made by ARGV[3] and ARGV[3] is not the
-- running process's run id (see stale_run_id).
--
-- Cluster mode (ARGV[4] = `cluster`): KEYS[1] the epoch key, KEYS[2] the
-- witness of its slot (`get`, `complete`: checked first, see witness_check)
-- or absent; `stamp` and `check` take KEYS[1] a witness key. The epoch may also read
-- `<id>:s`: being renewed (see witness.rs), incomplete, never marked
-- complete. `get` returns the epoch or '' when missing (never made here);
-- `complete` as above (0 for an epoch being renewed); `peek` the epoch or
-- '', with no witness check; `begin` sets the epoch to ARGV[2] being
-- renewed and returns it; `publish` sets it to ARGV[2], incomplete, if it
-- still holds ARGV[3] (the value `begin` set) and returns 1, else 0;
-- `stamp` sets the witness to the running process's run id and returns it;
-- `check` returns 1 after the witness check of KEYS[1].

local op, id, run_id, mode = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
if mode == 'cluster' then
  if not is_hex(id, 16) then
    return redis.error_reply('ERR quorum-sessions epoch: bad arguments')
  end
  if op == 'stamp' then
    local running = running_run_id()
    if running == nil then return redis.error_reply('ERR quorum-sessions epoch: no run id in INFO') end
    local kind = redis.call('TYPE', KEYS[1])['ok']
    if kind ~= 'none' and kind ~= 'string' then
      return redis.error_reply('CORRUPT the witness key holds a ' .. kind)
    end
    redis.call('SET', KEYS[1], running)
    return running
  end
  if op == 'check' then
    local lost = witness_check(KEYS[1])
    if lost then return redis.error_reply(lost) end
    return 1
  end
  if op == 'get' or op == 'complete' then
    local lost = witness_check(KEYS[2])
    if lost then return redis.error_reply(lost) end
  elseif op ~= 'peek' and op ~= 'begin' and op ~= 'publish' then
    return redis.error_reply('ERR quorum-sessions epoch: bad arguments')
  end
  local epoch, epoch_err = epoch_read(KEYS[1], nil, run_id)
  if epoch_err then return redis.error_reply(epoch_err) end
  if op == 'get' or op == 'peek' then return epoch or '' end
  if op == 'begin' then
    redis.call('SET', KEYS[1], id .. ':s')
    return id .. ':s'
  end
  if op == 'publish' then
    if epoch ~= run_id then return 0 end
    redis.call('SET', KEYS[1], id .. ':n')
    return 1
  end
  if not epoch or string.sub(epoch, 1, 16) ~= id or string.sub(epoch, 17) == ':s' then return 0 end
  if string.sub(epoch, 17) ~= ':c' then redis.call('SET', KEYS[1], id .. ':c') end
  return 1
end

if (op ~= 'get' and op ~= 'complete') or not is_hex(id, 16) or not valid_run_id(KEYS[2], run_id) then
  return redis.error_reply('ERR quorum-sessions epoch: bad arguments')
end
local epoch, epoch_err = epoch_read(KEYS[1], KEYS[2], run_id)
if epoch_err then return redis.error_reply(epoch_err) end
if op == 'get' then return epoch_ensure(KEYS[1], KEYS[2], epoch, id, run_id) end
if not epoch or string.sub(epoch, 1, 16) ~= id then return 0 end
if string.sub(epoch, 17) ~= ':c' then redis.call('SET', KEYS[1], id .. ':c') end
return 1
