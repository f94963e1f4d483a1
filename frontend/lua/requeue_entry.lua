-- Move one entry of a frontend's ledger back to the head of the list it came from: an entry found
-- stranded there (on two scans in a row, in no room) by the frontend itself.
-- KEYS[1] the ledger (hash seq -> item), KEYS[2] the list (`control`); ARGV[1] the seq.
-- Returns 1 when it was there, else 0.
local item = redis.call('HGET', KEYS[1], ARGV[1])
if not item then return 0 end
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('LPUSH', KEYS[2], item)
return 1
