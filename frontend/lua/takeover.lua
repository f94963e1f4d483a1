--!include placement
-- A live frontend takes over a dead one (its lease expired): every room it held goes to a live
-- frontend (placement.lua; `take` first in the new holder's inbox), and everything it held in flight
-- (its ledger by seq, landing list, inbox; then the hold lists of its rooms that were moving) is
-- routed to the new holders, behind the `take`s and ahead of anything routed later.
-- KEYS[1] fleet:leases. ARGV[1] prefix, ARGV[2] me, ARGV[3] the dead frontend, ARGV[4] max_item_bytes.
-- Returns {rooms moved, items routed}, or {-1, 0} when the dead one renewed its lease meanwhile.
local me, dead, max_bytes = ARGV[2], ARGV[3], tonumber(ARGV[4])
local now = now_ms()
if alive(dead, now) then return {-1, 0} end
local rooms = redis.call('SMEMBERS', k_held(dead))
table.sort(rooms)
local holds = {}
for _, room in ipairs(rooms) do
  local key = redis.call('HGET', K_SHAREKEY, room) or ''
  local id = place(key, now, dead, me)
  assign(room, id, key)
  redis.call('RPUSH', k_inbox(id), marker('take', room))
  stop_moving(room, holds)
end
local items = held_items(dead)
append_holds(holds, items)
route_all(items, me, now, max_bytes)
redis.call('DEL', k_held(dead), k_seq(dead))
redis.call('ZREM', K_LEASES, dead)
redis.call('HDEL', K_WEIGHT, dead)
redis.call('SREM', K_DRAINING, dead)
redis.call('SET', k_taken(dead), me, 'EX', 86400)
return {#rooms, #items}
