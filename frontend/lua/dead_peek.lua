-- A page of the dead-letter list KEYS[1] for ops tools, without ever sending a huge item whole:
-- items ARGV[1]..ARGV[2] (LRANGE indexes, inclusive); an item of at most ARGV[3] bytes comes as it
-- is, a bigger one as {length, its first ARGV[3] bytes, its last ARGV[4] bytes}. Items are read one
-- at a time (LINDEX), so the script never holds a whole page of big items either.
local first, last = tonumber(ARGV[1]), tonumber(ARGV[2])
local limit, tail = tonumber(ARGV[3]), tonumber(ARGV[4])
local n = redis.call('LLEN', KEYS[1])
if last < 0 or last >= n then last = n - 1 end
local out = {}
for i = first, last do
  local item = redis.call('LINDEX', KEYS[1], i)
  if not item then break end
  if #item <= limit then
    out[#out + 1] = item
  else
    out[#out + 1] = {#item, string.sub(item, 1, limit), string.sub(item, -tail)}
  end
end
return out
