-- quorum-sessions: the epoch key (after common.lua).
--
-- KEYS[1] epoch key, KEYS[2] epoch run key (absent in Cluster mode).
-- ARGV[1] `get` or `complete`; ARGV[2] the candidate (for `get`, 16 hex) or
-- the epoch id to mark complete (for `complete`, 16 hex); ARGV[3] the run id
-- of the Redis process the caller is connected to (see epoch_read; unused in
-- Cluster mode).
-- `get` returns the epoch, creating it from the candidate if missing;
-- `complete` returns 1 after marking the epoch complete if its id is ARGV[2],
-- else 0 and changes nothing. Either answers the STALERUN error, changing
-- nothing, when it finds no epoch made by ARGV[3] and ARGV[3] is not the
-- running process's run id (see stale_run_id).

local op, id, run_id = ARGV[1], ARGV[2], ARGV[3]
if (op ~= 'get' and op ~= 'complete') or not is_hex(id, 16) or not valid_run_id(KEYS[2], run_id) then
  return redis.error_reply('ERR quorum-sessions epoch: bad arguments')
end
local epoch, epoch_err = epoch_read(KEYS[1], KEYS[2], run_id)
if epoch_err then return redis.error_reply(epoch_err) end
if op == 'get' then return epoch_ensure(KEYS[1], KEYS[2], epoch, id, run_id) end
if not epoch or string.sub(epoch, 1, 16) ~= id then return 0 end
if string.sub(epoch, 17) ~= ':c' then redis.call('SET', KEYS[1], id .. ':c') end
return 1
