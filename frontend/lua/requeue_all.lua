-- Move the whole list KEYS[1] to the head of KEYS[2], keeping its order (oldest first).
-- Used for: a backend consumer's processing list back to its events list (backend_sdk).
-- Returns how many items moved.
local n = 0
while redis.call('LMOVE', KEYS[1], KEYS[2], 'RIGHT', 'LEFT') do n = n + 1 end
return n
