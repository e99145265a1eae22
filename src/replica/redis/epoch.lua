-- quorum-sessions: the epoch key (after common.lua).
--
-- KEYS[1] epoch key, KEYS[2] epoch run key (absent in Cluster mode).
-- ARGV[1] `get` or `complete`; ARGV[2] the candidate (for
-- `get`, 16 hex) or the epoch id to mark complete (for `complete`, 16 hex).
-- `get` returns the epoch, creating it from the candidate if missing;
-- `complete` returns 1 after marking the epoch complete if its id is ARGV[2],
-- else 0 and changes nothing.

local op, id = ARGV[1], ARGV[2]
if (op ~= 'get' and op ~= 'complete') or not is_hex(id, 16) then
  return redis.error_reply('ERR quorum-sessions epoch: bad arguments')
end
local epoch, epoch_err = epoch_read(KEYS[1], KEYS[2])
if epoch_err then return redis.error_reply(epoch_err) end
if op == 'get' then return epoch_ensure(KEYS[1], KEYS[2], epoch, id) end
if not epoch or string.sub(epoch, 1, 16) ~= id then return 0 end
if string.sub(epoch, 17) ~= ':c' then redis.call('SET', KEYS[1], id .. ':c') end
return 1
