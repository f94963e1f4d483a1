--!include placement
-- A frontend renews its lease (and says whether it takes new rooms, and its weight). When another
-- frontend took its rooms over while its lease was expired (it was paused, or cut off from Redis),
-- the answer says so: it must then leave those rooms without speaking in them.
-- KEYS[1] fleet:leases. ARGV[1] prefix, ARGV[2] me, ARGV[3] lease ms, ARGV[4] weight,
-- ARGV[5] "1" when the configuration says this frontend drains (takes no new rooms).
-- Returns {now (ms, Redis time), who took our rooms over or "", rooms we hold, draining "1"/"0"}.
local me = ARGV[2]
local now = now_ms()
local taken = redis.call('GET', k_taken(me))
if taken then redis.call('DEL', k_taken(me)) end
redis.call('ZADD', K_LEASES, now + tonumber(ARGV[3]), me)
redis.call('HSET', K_WEIGHT, me, ARGV[4])
if ARGV[5] == '1' then redis.call('SADD', K_DRAINING, me) end
local draining = redis.call('SISMEMBER', K_DRAINING, me)
return {now, taken or '', redis.call('SCARD', k_held(me)), tostring(draining)}
