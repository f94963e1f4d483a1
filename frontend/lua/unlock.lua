-- Release the lock KEYS[1] only when it still holds ARGV[1] (ours: it may have expired and been
-- taken by someone else meanwhile). Returns 1 when released, else 0.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
