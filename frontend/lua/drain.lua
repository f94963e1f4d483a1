-- Move up to ARGV[1] items from the head of KEYS[1] to the tail of KEYS[2] and return them, in order.
-- The non-blocking half of a blocking pop: one command and one reply per burst instead of one LMOVE
-- each (the per-command cost is in the client). Used by backend_sdk after its BLMOVE.
local items = redis.call('LRANGE', KEYS[1], 0, tonumber(ARGV[1]) - 1)
if #items > 0 then
  redis.call('LTRIM', KEYS[1], #items, -1)
  redis.call('RPUSH', KEYS[2], unpack(items))
end
return items
