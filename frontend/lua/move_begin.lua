--!include placement
-- `greenroom rebalance`: start moving a room to another frontend. From now on the room's commands wait
-- in `rooms:hold:<room>`; its holder gets `release` behind what was routed to it, leaves the room
-- when it gets there and finishes the move (move_finish.lua).
-- KEYS[1] fleet:leases. ARGV[1] prefix, ARGV[2] room, ARGV[3] target frontend.
-- Returns "ok", or why not.
local room, target = ARGV[2], ARGV[3]
local now = now_ms()
local holder = redis.call('HGET', K_HOLDER, room)
if not holder then return 'not held' end
if holder == target then return 'already there' end
if not alive(holder, now) then return 'its holder is not alive' end
if not alive(target, now) then return 'the target is not alive' end
if redis.call('HEXISTS', K_MOVING, room) == 1 then return 'already moving' end
redis.call('HSET', K_MOVING, room, target)
redis.call('RPUSH', k_inbox(holder), marker('release', room))
return 'ok'
