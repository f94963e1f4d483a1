--!include placement
-- A frontend drops the placement of rooms it parted (they are no longer in `rooms`): only when no
-- command of theirs waits in its inbox, landing list or ledger, so a `join` routed to it after the
-- `part` is never separated from its room.
-- KEYS[1] fleet:leases. ARGV[1] prefix, ARGV[2] me, ARGV[3] the most items to look at (inbox and
-- ledger), then the rooms. Returns the rooms kept because commands of theirs wait (the caller asks
-- again later), or -1 when there was too much to look at.
local me = ARGV[2]
local pending = {}
local inbox = k_inbox(me)
if redis.call('LLEN', inbox) + redis.call('HLEN', k_ledger(me)) > tonumber(ARGV[3]) then return {-1} end
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
for _, v in ipairs(redis.call('HVALS', k_ledger(me))) do note(v) end
local kept = {}
for i = 4, #ARGV do
  local room = ARGV[i]
  if pending[room] then
    kept[#kept + 1] = room
  elseif redis.call('HEXISTS', K_ROOMS, room) == 0 and redis.call('HGET', K_HOLDER, room) == me then
    redis.call('HDEL', K_HOLDER, room)
    redis.call('HDEL', K_SHAREKEY, room)
    redis.call('SREM', k_held(me), room)
  end
end
return kept
