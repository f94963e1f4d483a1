-- Move the dead letter ARGV[1] out of the dead list KEYS[1] and push ARGV[2] (what it carried) to
-- the tail of KEYS[2]. Returns 1 when the dead letter was there, else 0 (someone else moved it).
if redis.call('LREM', KEYS[1], 1, ARGV[1]) == 1 then
  redis.call('RPUSH', KEYS[2], ARGV[2])
  return 1
end
return 0
