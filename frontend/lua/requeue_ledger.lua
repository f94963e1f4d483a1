-- Put everything a frontend holds back at the head of the list it came from, in the order it was
-- taken: its ledger by sequence number (oldest first), then its landing list, then what was there.
-- Used at start (our own ledger: an earlier run's leftovers) and to take over a dead frontend's.
-- KEYS[1] the ledger (hash seq -> item), KEYS[2] the landing list, KEYS[3] the list to put them back
-- at the head of (`control`), KEYS[4] the sequence counter (deleted when ARGV[1] is "1").
-- Also moves a legacy in-flight list (KEYS[5], from a version before the ledger) first when given.
-- Returns how many items moved.
local flat = redis.call('HGETALL', KEYS[1])
local entries = {}
for i = 1, #flat, 2 do
  entries[#entries + 1] = {tonumber(flat[i]) or 0, flat[i + 1]}
end
table.sort(entries, function(a, b) return a[1] < b[1] end)
local landed = redis.call('LRANGE', KEYS[2], 0, -1)
for i = #landed, 1, -1 do redis.call('LPUSH', KEYS[3], landed[i]) end
for i = #entries, 1, -1 do redis.call('LPUSH', KEYS[3], entries[i][2]) end
local moved = #entries + #landed
if KEYS[5] then
  while redis.call('LMOVE', KEYS[5], KEYS[3], 'RIGHT', 'LEFT') do moved = moved + 1 end
end
redis.call('DEL', KEYS[1], KEYS[2])
if ARGV[1] == '1' then redis.call('DEL', KEYS[4]) end
return moved
