-- A frontend's ledger sequence never goes back. Sent ahead of the first batch on every new connection
-- of the router and the intake loop: after a fail-over the promoted replica may not have the last
-- increments, and a number handed out twice would let the acknowledgement of the first command delete
-- the second from the ledger before it ran.
-- KEYS[1] the frontend's seq counter; ARGV[1] the highest seq this frontend has seen.
-- Returns the counter as it was.
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
local floor = tonumber(ARGV[1])
if current < floor then redis.call('SET', KEYS[1], floor) end
return current
