-- quorum-sessions: read one record and the epoch atomically (after common.lua).
--
-- KEYS[1] record key, KEYS[2] epoch key, KEYS[3] epoch run key (both absent
-- in Cluster mode).
-- ARGV[1] epoch candidate (16 hex), used when the epoch is missing.
-- Returns { epoch, { name, value, ... } }; decoding happens in Rust.

local epoch, epoch_err = epoch_read(KEYS[2], KEYS[3])
if epoch_err then return redis.error_reply(epoch_err) end
if not is_hex(ARGV[1], 16) then return redis.error_reply('ERR quorum-sessions read: bad arguments') end
local type_err = check_type(KEYS[1])
if type_err then return redis.error_reply(type_err) end
local flat = redis.call('HGETALL', KEYS[1])
epoch = epoch_ensure(KEYS[2], KEYS[3], epoch, ARGV[1])
return { epoch, flat }
