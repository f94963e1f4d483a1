--!include placement
-- A router's step (after its BLMOVE moved the head of `control` to the tail of `control:routing`):
-- route everything in `control:routing`, then up to the limits from the head of `control`, each to its
-- room's holder (placement.lua), and take what is now in this frontend's own inbox (what it routed to
-- itself, behind what others routed to it) into its ledger, up to its room. No item of a room can
-- overtake another: `control:routing` only ever receives the head of `control` at its tail, and only
-- this script, run by one router at a time, empties it from its head.
-- KEYS[1] control, KEYS[2] control:routing, KEYS[3] my inbox, KEYS[4] my landing, KEYS[5] my ledger,
-- KEYS[6] my seq counter.
-- ARGV[1] prefix, ARGV[2] me, ARGV[3] most items from control, ARGV[4] most bytes from control,
-- ARGV[5] max_item_bytes, ARGV[6] the most items my ledger may hold (the window), ARGV[7] the tenant
-- whose own intake KEYS[1] is ("" for the public `control`).
-- Returns {seq, stored, seq, stored, ...}: what entered my ledger, oldest first.
local me, most, budget = ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local max_bytes = tonumber(ARGV[5])
local now = now_ms()
local source = ARGV[7] or ''
local items = redis.call('LRANGE', KEYS[2], 0, -1)
if #items > 0 then redis.call('DEL', KEYS[2]) end
for i = 1, #items do items[i] = wrap(items[i], source) end
local taken = take_head(KEYS[1], most, budget, 0, items, source)
if taken > 0 then redis.call('LTRIM', KEYS[1], taken, -1) end
-- my landing list (a pop of my intake loop that has not run its script yet) and my inbox (what others
-- routed to me) are older than what I route now: they enter my ledger first, then what I route to
-- myself, up to my room; what does not fit waits in my inbox, in order. With no room for the landed
-- item it stays where it is (the intake script gives it back).
local mine = redis.call('LRANGE', KEYS[4], 0, -1)
local room = tonumber(ARGV[6]) - redis.call('HLEN', KEYS[5]) - #mine
if room < 0 then
  route_all(items, me, now, max_bytes, nil, 0)
  return {}
end
if #mine > 0 then redis.call('DEL', KEYS[4]) end
local waiting = redis.call('LLEN', KEYS[3])
if waiting > 0 and room > 0 then
  local from_landing = #mine
  for _, v in ipairs(redis.call('LRANGE', KEYS[3], 0, room - 1)) do mine[#mine + 1] = v end
  redis.call('LTRIM', KEYS[3], #mine - from_landing, -1)
  waiting = waiting - (#mine - from_landing)
  room = room - (#mine - from_landing)
end
if waiting > 0 then
  route_all(items, me, now, max_bytes, nil, 0)  -- my inbox is not empty: mine queue behind it
else
  route_all(items, me, now, max_bytes, mine, #mine + room)
end
return into_ledger(KEYS[5], KEYS[6], mine)
