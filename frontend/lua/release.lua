--!include placement
-- A frontend hands its rooms over (SIGTERM with live peers, or `greenroom drain`), after it left them:
-- each room goes to a live peer (`take` first in its inbox); what this frontend still held in flight
-- is routed behind. Without a live peer the rooms stay in `rooms` unheld (the next frontend to start
-- takes them) and what it held goes back to the head of `control`, in order.
-- KEYS[1] fleet:leases. ARGV[1] prefix, ARGV[2] me, ARGV[3] max_item_bytes, ARGV[4] "1": also end
-- the lease (a stop), "0": keep it (drain: the frontend stays up and takes no new rooms).
-- Returns {rooms handed to peers, rooms left unheld, items routed}.
local me, max_bytes = ARGV[2], tonumber(ARGV[3])
local now = now_ms()
local rooms = redis.call('SMEMBERS', k_held(me))
table.sort(rooms)
local given, unheld, holds = 0, 0, {}
local peer = nil
for _, room in ipairs(rooms) do
  local key = redis.call('HGET', K_SHAREKEY, room) or ''
  local id = place(key, now, me, nil)
  if id then
    assign(room, id, key)
    redis.call('RPUSH', k_inbox(id), marker('take', room))
    given = given + 1
    peer = peer or id
  else
    redis.call('HDEL', K_HOLDER, room)
    unheld = unheld + 1
  end
  stop_moving(room, holds)
end
local items = held_items(me)
append_holds(holds, items)
redis.call('DEL', k_held(me))
if ARGV[4] == '1' then
  redis.call('ZREM', K_LEASES, me)
  redis.call('HDEL', K_WEIGHT, me)
  redis.call('SREM', K_DRAINING, me)
end
peer = peer or place('', now, me, nil)
if peer then
  route_all(items, peer, now, max_bytes)
else
  push_back(items)
end
return {given, unheld, #items}
