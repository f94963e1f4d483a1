-- Re-queue a dead backend consumer's processing list (backend_sdk's recovery), atomically with the
-- check that it is dead. KEYS[1] its heartbeat key, KEYS[2] its processing list, KEYS[3] the events
-- list, KEYS[4] the consumers registry; ARGV[1] its name.
-- Returns -1 when the heartbeat is there (alive: nothing moves), else how many events moved to the
-- head of the events list (their order kept); the consumer is then forgotten by the registry.
if redis.call('EXISTS', KEYS[1]) == 1 then
  return -1
end
local n = 0
while redis.call('LMOVE', KEYS[2], KEYS[3], 'RIGHT', 'LEFT') do n = n + 1 end
redis.call('ZREM', KEYS[4], ARGV[1])
return n
