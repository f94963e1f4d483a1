--!include placement
-- At start, after the lease: place every room of `rooms` that nobody alive holds (a cold start, or
-- the rooms a stopping frontend left unheld), and route what this frontend held in flight in an
-- earlier run (the same frontend id) to the holders. Rooms placed on others get `take` in their inbox.
-- KEYS[1] fleet:leases. ARGV[1] prefix, ARGV[2] me, ARGV[3] max_item_bytes, then pairs of
-- (room, share key) for the rooms of the registry.
-- Returns {items of the earlier run routed, the rooms this frontend now holds...}.
local me, max_bytes = ARGV[2], tonumber(ARGV[3])
local now = now_ms()
local earlier = held_items(me)
route_all(earlier, me, now, max_bytes)
for i = 4, #ARGV, 2 do
  local room, key = ARGV[i], ARGV[i + 1]
  local holder = redis.call('HGET', K_HOLDER, room)
  if not holder or (holder ~= me and not alive(holder, now) and not redis.call('ZSCORE', K_LEASES, holder)) then
    local id = place(key, now, nil, me)
    assign(room, id, key)
    if id ~= me then redis.call('RPUSH', k_inbox(id), marker('take', room)) end
  end
end
local out = redis.call('SMEMBERS', k_held(me))
table.insert(out, 1, #earlier)
return out
