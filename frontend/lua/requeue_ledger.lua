--!include placement
-- Put everything a frontend without a lease held (a version before several frontends, or one that
-- died before it ever renewed one) back at the head of `control`, in the order it was taken: its
-- in-flight list of a version before the ledger, its ledger by seq, its landing list, its inbox
-- (a tenant's item back to the head of that tenant's intake).
-- Internal markers are dropped (the rooms they name are placed again when routed).
-- KEYS[1] the ledger, KEYS[2] the landing list, KEYS[3] `control`, KEYS[4] the seq counter,
-- KEYS[5] the legacy in-flight list. ARGV[1] prefix, ARGV[2] the frontend.
-- Returns how many items moved.
local items = held_items(ARGV[2])
push_back(items)
redis.call('DEL', KEYS[4])
return #items
