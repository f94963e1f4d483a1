--!include placement
-- The intake loop's take (after its BLMOVE moved the head of this frontend's inbox to its landing
-- list): the landing list, then what else waits in the inbox, into its ledger under new sequence
-- numbers (the ledger is a hash: an acknowledgement is one HDEL, whatever the ledger holds).
-- KEYS[1] my inbox, KEYS[2] my landing, KEYS[3] my ledger (hash seq -> item), KEYS[4] my seq counter.
-- ARGV[1] prefix, ARGV[2] the most items to take from the inbox, ARGV[3] the most bytes (one item past it at most),
-- ARGV[4] the most items the ledger may hold (the window: the router fills it too).
-- The inbox is read 32 items at a time (``take_head``): a backlog of huge items never puts more than
-- 32 of them in the script's memory.
-- Returns {seq, item, seq, item, ...}, oldest first; {-1} when the ledger is full.
local most, budget = tonumber(ARGV[2]), tonumber(ARGV[3])
local items = redis.call('LRANGE', KEYS[2], 0, -1)
local room = tonumber(ARGV[4]) - redis.call('HLEN', KEYS[3]) - #items
if #items > 0 then redis.call('DEL', KEYS[2]) end
if room < 0 then
  -- no room for what the pop landed (the router filled the window meanwhile): back to the head of
  -- the inbox, in order, and the caller waits for an acknowledgement before it pops again
  for i = #items, 1, -1 do redis.call('LPUSH', KEYS[1], items[i]) end
  return {-1}
end
if room < most then most = room end
local bytes = 0
for i = 1, #items do bytes = bytes + #items[i] end
local taken = take_head(KEYS[1], most, budget, bytes, items)
if taken > 0 then redis.call('LTRIM', KEYS[1], taken, -1) end
return into_ledger(KEYS[3], KEYS[4], items)
