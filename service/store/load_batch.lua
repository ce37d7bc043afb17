-- load.lua of many users on a single Redis, without history or an event-id check: one round
-- trip and one reply. scripts.py puts load.lua's text before this, as
-- `local function load_one(KEYS, ARGV)`.
-- KEYS: the users' state hashes. Returns load.lua's nine fields of every user, flattened.
local replies = {}
local none = {'0', ''}
for i = 1, #KEYS do
  local reply = load_one({KEYS[i]}, none)
  for j = 1, 9 do replies[#replies + 1] = reply[j] end
end
return replies
