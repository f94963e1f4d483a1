-- The placement library: included at the top of every script that routes or places rooms (scripts.py
-- loads it in front of them). Who holds which room, who is alive, where a new room goes, how items
-- are wrapped. ARGV[1] of every such script is the key prefix; key names mirror frontend/keys.py.
local P = ARGV[1]
local K_ROOMS = P .. 'rooms'
local K_HOLDER = P .. 'rooms:holder'          -- hash room -> frontend id: who holds the room
local K_SHAREKEY = P .. 'rooms:sharekey'      -- hash room -> share key (rooms that may share a connection)
local K_SHARE = P .. 'rooms:share'            -- hash share key -> frontend id: where that group lives
local K_MOVING = P .. 'rooms:moving'          -- hash room -> target frontend id, while a room moves
local K_LEASES = P .. 'fleet:leases'           -- zset frontend id -> lease expiry (ms, Redis time)
local K_WEIGHT = P .. 'fleet:weight'           -- hash frontend id -> capacity weight
local K_DRAINING = P .. 'fleet:draining'       -- set of frontends that take no new rooms
local K_ROUTING = P .. 'control:routing'      -- the shared list routers move control's head into
local function k_inbox(id) return P .. 'control:inbox:' .. id end
local function k_held(id) return P .. 'rooms:held:' .. id end
local function k_hold(room) return P .. 'rooms:hold:' .. room end
local function k_ledger(id) return P .. 'control:ledger:' .. id end
local function k_landing(id) return P .. 'control:landing:' .. id end
local function k_seq(id) return P .. 'control:seq:' .. id end
local function k_taken(id) return P .. 'fleet:taken:' .. id end
local function k_legacy(id) return P .. 'control:inflight:' .. id end

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- Items in inboxes and ledgers ("stored" values) are written only by scripts:
--   a public item (from `control`) keeps its bytes, unless it starts with NUL: then it gets a second
--   NUL in front, so that nothing pushed to `control` can pass for one of the two below;
--   an item of a tenant's own intake is "\0@<tenant>\0<item>": its holder knows whose it is;
--   an internal marker is "\0!<verb>\0<room>" (take, release).
local function wrap(item, tenant)
  if tenant and tenant ~= '' then return '\0@' .. tenant .. '\0' .. item end
  if string.byte(item, 1) == 0 then return '\0\0' .. item end
  return item
end
-- (item, tenant or nil) inside a stored value; item is nil for an internal marker.
local function unwrap(stored)
  if string.byte(stored, 1) ~= 0 then return stored, nil end
  local second = string.byte(stored, 2)
  if second == 0 then return string.sub(stored, 3), nil end
  if second == 64 then  -- '@'
    local tenant, item = string.match(stored, '^%z@([^%z]*)%z(.*)$')
    return item, tenant
  end
  return nil, nil
end
local function marker(verb, room) return '\0!' .. verb .. '\0' .. room end
local function k_tenant_control(tenant) return P .. 'tenant:' .. tenant .. ':control' end

local function alive(id, now)
  local expiry = redis.call('ZSCORE', K_LEASES, id)
  return expiry and tonumber(expiry) >= now
end

-- Strict UTF-8, 1-800 bytes, no space or control character: the room ids worth placing (the frontend
-- validates them fully; anything else is routed to the frontend that routes it, to be refused there).
local function plausible_room(room)
  if type(room) ~= 'string' then return false end
  local n = #room
  if n == 0 or n > 800 then return false end
  local i = 1
  while i <= n do
    local c = string.byte(room, i)
    if c <= 32 or c == 127 then return false end
    local extra, low, high = 0, 128, 191
    if c < 128 then extra = 0
    elseif c >= 194 and c <= 223 then extra = 1
    elseif c == 224 then extra, low = 2, 160
    elseif c == 237 then extra, high = 2, 159  -- no surrogates
    elseif c >= 225 and c <= 239 then extra = 2
    elseif c == 240 then extra, low = 3, 144
    elseif c == 244 then extra, high = 3, 143
    elseif c >= 241 and c <= 243 then extra = 3
    else return false end
    for j = 1, extra do
      local d = string.byte(room, i + j)
      if not d or d < (j == 1 and low or 128) or d > (j == 1 and high or 191) then return false end
    end
    i = i + extra + 1
  end
  return true
end

-- The share key of a spec: rooms whose keys are equal may share one chat connection, so they are
-- placed on one frontend. The same function is frontend/placement.py's share_key (a test pins both).
local function text(v) if type(v) == 'string' then return v end return '' end
local function share_key(spec)
  if type(spec) ~= 'table' or spec.share == false then return '' end
  local parts
  if spec.protocol == 'irc' then
    local tls = spec.tls == true
    local port = spec.port
    if type(port) ~= 'number' then port = tls and 6697 or 6667 end
    local sasl = spec.sasl
    local su, sp = '', ''
    if type(sasl) == 'table' then su, sp = text(sasl.username), text(sasl.password) end
    parts = {'irc', string.lower(text(spec.server)), tostring(port), tls and '1' or '0', text(spec.nick),
             text(spec.password), su, sp}
  elseif spec.protocol == 'xmpp' then
    local tls = spec.tls ~= false
    local port = spec.port
    if type(port) ~= 'number' then port = 5222 end
    parts = {'xmpp', string.lower(text(spec.jid)), text(spec.password), text(spec.host), tostring(port),
             tls and '1' or '0'}
  else
    return ''
  end
  return redis.sha1hex(table.concat(parts, '\0'))
end

-- The live frontends that take new rooms (not draining, not `exclude`), with their weights.
local function candidates(now, exclude)
  local out = {}
  for _, id in ipairs(redis.call('ZRANGEBYSCORE', K_LEASES, now, '+inf')) do
    if id ~= exclude and redis.call('SISMEMBER', K_DRAINING, id) == 0 then
      out[#out + 1] = id
    end
  end
  return out
end

local function load_of(id)
  local weight = tonumber(redis.call('HGET', K_WEIGHT, id) or '1') or 1
  if weight <= 0 then weight = 1 end
  return redis.call('SCARD', k_held(id)) / weight
end

-- Where a room goes: its share group's frontend if that one is alive and takes rooms, else the live
-- frontend with the fewest rooms for its weight (ties: the smallest id). `fallback` when none is.
local function place(key, now, exclude, fallback)
  if key ~= '' then
    local group = redis.call('HGET', K_SHARE, key)
    if group and group ~= exclude and alive(group, now) and redis.call('SISMEMBER', K_DRAINING, group) == 0 then
      return group
    end
  end
  local best, best_load = nil, nil
  for _, id in ipairs(candidates(now, exclude)) do
    local l = load_of(id)
    if best == nil or l < best_load or (l == best_load and id < best) then best, best_load = id, l end
  end
  best = best or fallback
  if key ~= '' and best then redis.call('HSET', K_SHARE, key, best) end
  return best
end

local function assign(room, id, key)
  local old = redis.call('HGET', K_HOLDER, room)
  if old and old ~= id then redis.call('SREM', k_held(old), room) end
  redis.call('HSET', K_HOLDER, room, id)
  redis.call('SADD', k_held(id), room)
  if key and key ~= '' then redis.call('HSET', K_SHAREKEY, room, key) end
end

-- Route one stored item: returns the list key it goes to (an inbox, or a room's hold list while the
-- room moves), the stored item, and a `take` to push in front of it when the room was just placed
-- from the registry.
-- `me` routes it; items nobody can route (not JSON, no plausible room, too big) go to `me`, which
-- refuses them with their reason. A command for a registered room that nobody holds places it, and its
-- new holder gets `take` first. `memo` remembers holders within one run (a batch has many of a room).
local function route_one(stored, me, now, max_bytes, memo, moving)
  local item = unwrap(stored)
  if not item then return nil end  -- an internal marker: never routed
  if #item > max_bytes then return k_inbox(me), stored end
  local ok, obj = pcall(cjson.decode, item)
  if not ok or type(obj) ~= 'table' then return k_inbox(me), stored end
  local room = obj.room
  if type(room) ~= 'string' then return k_inbox(me), stored end
  local holder = memo[room]
  if holder == nil then  -- the room's first command of this run (a room in `memo` is plausible)
    if not plausible_room(room) then return k_inbox(me), stored end
    holder = redis.call('HGET', K_HOLDER, room) or false
    memo[room] = holder
  end
  if moving and redis.call('HEXISTS', K_MOVING, room) == 1 then return k_hold(room), stored end
  if holder then return k_inbox(holder), stored end
  local key, take = '', false
  if obj.type == 'join' then
    key = share_key(obj.spec)
  elseif redis.call('HEXISTS', K_ROOMS, room) == 1 then
    key, take = redis.call('HGET', K_SHAREKEY, room) or '', true
  else
    return k_inbox(me), stored
  end
  local id = place(key, now, nil, me)
  assign(room, id, key)
  memo[room] = id
  return k_inbox(id), stored, take and marker('take', room) or nil
end

-- Up to `most` items from the head of list `key` appended to `items` (wrapped for `tenant` when given),
-- each while fewer than `budget` bytes came before it (`bytes` of them already); returns how many,
-- for the caller's one LTRIM. Read 32 at a time (not a redis.call LPOP per item: with the memo's
-- plausibility, a step costs Redis about a quarter less, tests/bench/route_cost.py); what a read
-- brought past the limits stays in the list (at most 31 items read and left), so no more than 32
-- items of a backlog are ever in the script's memory at once.
local TAKE_CHUNK = 32
local function take_head(key, most, budget, bytes, items, tenant)
  local taken = 0
  while taken < most and bytes < budget do
    local chunk = redis.call('LRANGE', key, taken, taken + math.min(TAKE_CHUNK, most - taken) - 1)
    for i = 1, #chunk do
      if bytes >= budget then break end
      local item = chunk[i]
      items[#items + 1] = tenant and wrap(item, tenant) or item
      bytes = bytes + #item
      taken = taken + 1
    end
    if #chunk < TAKE_CHUNK then break end
  end
  return taken
end

-- Push `values` to `key` in order, many per call.
local function push_all(key, values)
  for i = 1, #values, 200 do
    redis.call('RPUSH', key, unpack(values, i, math.min(i + 199, #values)))
  end
end

-- Every stored item of `items` (in order) to where it goes. With `direct` (a table), what goes to
-- `me` is appended there instead of to its inbox, up to `room` items, for as long as nothing of `me`
-- had to wait in its inbox (what waits there is older, and stays ahead).
local function route_all(items, me, now, max_bytes, direct, room)
  local memo, batches, order = {}, {}, {}
  local moving = redis.call('EXISTS', K_MOVING) == 1
  local mine = k_inbox(me)
  local function add(key, stored)
    if direct and key == mine and #direct < room then
      direct[#direct + 1] = stored
    else
      if key == mine then direct = nil end
      local batch = batches[key]
      if not batch then batch = {}; batches[key] = batch; order[#order + 1] = key end
      batch[#batch + 1] = stored
    end
  end
  for _, item in ipairs(items) do
    local key, stored, first = route_one(item, me, now, max_bytes, memo, moving)
    if key then
      if first then add(key, first) end
      add(key, stored)
    end
  end
  for _, key in ipairs(order) do push_all(key, batches[key]) end
end

-- Put `stored` values into ledger `key` under new numbers from counter `seq`; returns the reply
-- {seq, stored, ...} a frontend gets from its router or intake script.
local function into_ledger(key, seq, values)
  if #values == 0 then return {} end
  local last = redis.call('INCRBY', seq, #values)
  local first = last - #values
  local out, args = {}, {}
  for i = 1, #values do
    out[2 * i - 1] = first + i
    out[2 * i] = values[i]
    args[#args + 1] = first + i
    args[#args + 1] = values[i]
    if #args >= 400 then redis.call('HSET', key, unpack(args)); args = {} end
  end
  if #args > 0 then redis.call('HSET', key, unpack(args)) end
  return out
end

-- What a frontend holds, as stored items in the order they were taken: the in-flight list of a
-- version before the ledger, its ledger by seq, its landing list, its inbox (internal markers are
-- dropped: whoever takes its rooms over sends new ones).
local function held_items(id)
  local flat = redis.call('HGETALL', k_ledger(id))
  local entries = {}
  for i = 1, #flat, 2 do entries[#entries + 1] = {tonumber(flat[i]) or 0, flat[i + 1]} end
  table.sort(entries, function(a, b) return a[1] < b[1] end)
  local out = {}
  local function add(stored)
    if unwrap(stored) then out[#out + 1] = stored end
  end
  for _, v in ipairs(redis.call('LRANGE', k_legacy(id), 0, -1)) do out[#out + 1] = wrap(v) end
  for _, e in ipairs(entries) do add(e[2]) end
  for _, v in ipairs(redis.call('LRANGE', k_landing(id), 0, -1)) do add(v) end
  for _, v in ipairs(redis.call('LRANGE', k_inbox(id), 0, -1)) do add(v) end
  redis.call('DEL', k_legacy(id), k_ledger(id), k_landing(id), k_inbox(id))
  return out
end

-- A room that was moving when its holder went: it moves no more; ``holds`` (a list) gets it, so that
-- ``append_holds`` adds the commands parked for it.
local function stop_moving(room, holds)
  if redis.call('HEXISTS', K_MOVING, room) == 1 then
    redis.call('HDEL', K_MOVING, room)
    holds[#holds + 1] = room
  end
end

-- The commands parked for each room of ``holds`` (rooms:hold:<room>, in order) appended to
-- ``items``; the hold lists go.
local function append_holds(holds, items)
  for _, room in ipairs(holds) do
    for _, v in ipairs(redis.call('LRANGE', k_hold(room), 0, -1)) do
      if unwrap(v) then items[#items + 1] = v end
    end
    redis.call('DEL', k_hold(room))
  end
end

-- Stored items back to the head of the intake each came from (`control`, or a tenant's own), in
-- order: for items nobody can route now (no frontend alive).
local function push_back(items)
  for i = #items, 1, -1 do
    local item, tenant = unwrap(items[i])
    if item then redis.call('LPUSH', tenant and k_tenant_control(tenant) or (P .. 'control'), item) end
  end
end
