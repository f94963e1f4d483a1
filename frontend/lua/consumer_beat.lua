-- A backend consumer's heartbeat (backend_sdk): KEYS[1] its heartbeat key, KEYS[2] the consumers
-- registry (a sorted set) of its events list. ARGV[1] the value (pid), ARGV[2] the TTL in ms,
-- ARGV[3] the deadline (unix ms) the registry is scored by, ARGV[4] the consumer's name.
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[4])
return 1
