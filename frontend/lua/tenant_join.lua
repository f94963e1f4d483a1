-- A new room of a registered tenant: counted in the tenant's rooms (over every frontend) unless that
-- would pass its max_rooms. KEYS[1] tenant:<name>:rooms; ARGV[1] the room, ARGV[2] max_rooms ("" for
-- no limit). Returns 1 (counted, or already), 0 (refused: the quota is used up), and the count.
if redis.call('SISMEMBER', KEYS[1], ARGV[1]) == 1 then return {1, redis.call('SCARD', KEYS[1])} end
local n = redis.call('SCARD', KEYS[1])
if ARGV[2] ~= '' and n >= tonumber(ARGV[2]) then return {0, n} end
redis.call('SADD', KEYS[1], ARGV[1])
return {1, n + 1}
