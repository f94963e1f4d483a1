--!include placement
-- A frontend drops the placement of rooms it parted (they are no longer in `rooms`): only when no
-- command of theirs waits in its inbox or landing list (it checks its ledger itself), so a `join`
-- routed to it after the `part` is never separated from its room.
-- KEYS[1] fleet:leases. ARGV[1] prefix, ARGV[2] me, ARGV[3] the most inbox items to look at,
-- then the rooms. Returns how many were forgotten, or -1 when the inbox was too long to look.
local me = ARGV[2]
local pending = {}
local inbox = k_inbox(me)
if redis.call('LLEN', inbox) > tonumber(ARGV[3]) then return -1 end
local function note(stored)
  local item = unwrap(stored)
  if not item then
    pending[string.match(stored, '^%z![^%z]*%z(.*)$') or ''] = true
    return
  end
  local ok, obj = pcall(cjson.decode, item)
  if ok and type(obj) == 'table' and type(obj.room) == 'string' then pending[obj.room] = true end
end
for _, v in ipairs(redis.call('LRANGE', inbox, 0, -1)) do note(v) end
for _, v in ipairs(redis.call('LRANGE', k_landing(me), 0, -1)) do note(v) end
local n = 0
for i = 4, #ARGV do
  local room = ARGV[i]
  if not pending[room] and redis.call('HEXISTS', K_ROOMS, room) == 0
      and redis.call('HGET', K_HOLDER, room) == me then
    redis.call('HDEL', K_HOLDER, room)
    redis.call('HDEL', K_SHAREKEY, room)
    redis.call('SREM', k_held(me), room)
    n = n + 1
  end
end
return n
