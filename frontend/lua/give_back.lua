-- Move one occurrence of ARGV[1] from the list KEYS[1] back to the head of KEYS[2].
-- Used for: an event a backend popped and did not start, given back at shutdown (backend_sdk).
-- Returns 1 when it was there, else 0.
if redis.call('LREM', KEYS[1], 1, ARGV[1]) == 1 then
  redis.call('LPUSH', KEYS[2], ARGV[1])
  return 1
end
return 0
