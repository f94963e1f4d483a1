--!include placement
-- The old holder left a moving room: it goes to its target (or, if that one died meanwhile, where
-- placement says), `take` first, then the commands that waited in its hold list, in order.
-- KEYS[1] fleet:leases. ARGV[1] prefix, ARGV[2] me, ARGV[3] room.
-- Returns the new holder, or "" when the room was not moving.
local me, room = ARGV[2], ARGV[3]
local target = redis.call('HGET', K_MOVING, room)
if not target then return '' end
local now = now_ms()
local key = redis.call('HGET', K_SHAREKEY, room) or ''
if not alive(target, now) then target = place(key, now, me, me) end
assign(room, target, key)
-- the room's share group goes where the room went: a new room of the group joins it there (the
-- group's other rooms move with it, greenroom rebalance moves a group whole)
if key ~= '' then redis.call('HSET', K_SHARE, key, target) end
redis.call('RPUSH', k_inbox(target), marker('take', room))
for _, v in ipairs(redis.call('LRANGE', k_hold(room), 0, -1)) do redis.call('RPUSH', k_inbox(target), v) end
redis.call('DEL', k_hold(room))
redis.call('HDEL', K_MOVING, room)
return target
