-- The incoming dispatcher's take: what its blocking pop moved, and what else is waiting, into its
-- ledger, each under a new sequence number (the ledger is a hash: an acknowledgement is one HDEL,
-- whatever the ledger holds).
-- KEYS[1] the list commands come from (`control`), KEYS[2] this frontend's landing list (the target
-- of its BLMOVE), KEYS[3] its ledger (hash seq -> item), KEYS[4] its sequence counter.
-- ARGV[1] the most items to take from KEYS[1], ARGV[2] the most bytes (one item past it at most).
-- Items are popped one at a time, so a backlog of huge items never sits in the script's memory.
-- Returns {seq, item, seq, item, ...}, oldest first.
local most, budget = tonumber(ARGV[1]), tonumber(ARGV[2])
local items = redis.call('LRANGE', KEYS[2], 0, -1)
local bytes = 0
for i = 1, #items do bytes = bytes + #items[i] end
if #items > 0 then redis.call('DEL', KEYS[2]) end
local taken = 0
while taken < most and bytes < budget do
  local item = redis.call('LPOP', KEYS[1])
  if not item then break end
  items[#items + 1] = item
  bytes = bytes + #item
  taken = taken + 1
end
if #items == 0 then return {} end
local last = redis.call('INCRBY', KEYS[4], #items)
local first = last - #items
local out = {}
for i = 1, #items do
  out[2 * i - 1] = first + i
  out[2 * i] = items[i]
  redis.call('HSET', KEYS[3], first + i, items[i])
end
return out
