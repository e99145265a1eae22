-- quorum-sessions: the anti-entropy lease (after common.lua).
--
-- KEYS[1] the lease key. ARGV[1] `acquire` or `release`, ARGV[2] the
-- owner (16 hex), ARGV[3] the lease's time to live in ms (decimal, for
-- `acquire`).
-- `acquire` returns 1 and (re)sets the lease to the owner for ARGV[3] ms
-- when it is free (missing: Redis expired it) or the owner's already, else
-- 0. `release` deletes it if the owner holds it and returns 1.
-- Anything but a 16-hex string under the key is foreign data: CORRUPT,
-- untouched.

local op, owner, ttl = ARGV[1], ARGV[2], tonumber(ARGV[3])
if (op ~= 'acquire' and op ~= 'release') or not is_hex(owner, 16)
    or (op == 'acquire' and (ttl == nil or ttl < 1 or ttl > 86400000)) then
  return redis.error_reply('ERR quorum-sessions lease: bad arguments')
end
local held = redis.pcall('GET', KEYS[1])
if type(held) == 'table' and held.err then
  return redis.error_reply('CORRUPT the lease key holds a ' .. redis.call('TYPE', KEYS[1])['ok'])
end
if held and not is_hex(held, 16) then
  return redis.error_reply('CORRUPT the lease key holds foreign data')
end
if op == 'release' then
  if held == owner then redis.call('DEL', KEYS[1]) end
  return 1
end
if held and held ~= owner then return 0 end
redis.call('SET', KEYS[1], owner, 'PX', string.format('%d', ttl))
return 1
