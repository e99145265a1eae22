-- quorum-sessions: one record's read in Cluster mode (after common.lua).
--
-- KEYS[1] the record key, KEYS[2] the witness of its slot. Returns the hash
-- as HGETALL gives it, or the witness's error (NOWITNESS, NEWPROCESS, see
-- witness_check) having read nothing.

if #KEYS ~= 2 then
  return redis.error_reply('ERR quorum-sessions read: bad arguments')
end
local lost = witness_check(KEYS[2])
if lost then return redis.error_reply(lost) end
return redis.call('HGETALL', KEYS[1])
