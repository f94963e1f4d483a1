--!include placement
-- Move one entry of a frontend's ledger back to the head of `control`: an entry found stranded there
-- (on two scans in a row, behind the frontend's sequence, held by none of its rooms).
-- KEYS[1] the ledger (hash seq -> stored item), KEYS[2] `control`; ARGV[1] prefix, ARGV[2] the seq.
-- Returns 1 when it was there, else 0 (an internal marker is dropped, and counts as moved).
local stored = redis.call('HGET', KEYS[1], ARGV[2])
if not stored then return 0 end
redis.call('HDEL', KEYS[1], ARGV[2])
push_back({stored})
return 1
