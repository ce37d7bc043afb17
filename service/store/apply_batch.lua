-- A batch of apply.lua calls on a single Redis, each followed by its event-log append when it
-- lands: one round trip and one reply for a stream consumer's whole batch. scripts.py puts
-- apply.lua's text before this, as `local function apply_one(KEYS, ARGV)`.
-- KEYS: three per user (state, history, event ids), then the event-log streams.
-- ARGV: 1 msgpack header {users (KEYS triples), log MAXLEN (0 = no log), model version logged},
--       2 msgpack list of writes, each {user (1-based, of the KEYS triples), log stream
--         (1-based, of the streams after the triples; 0 = none), user id, timestamp text,
--         then apply.lua's 15 ARGV}.
-- Returns apply.lua's {status, events_applied, version} of every write, flattened; a write
-- that failed gives {-1, its error, 0}.
local header = cmsgpack.unpack(ARGV[1])
local streams_from, log_maxlen, logged_version = header[1] * 3, header[2], header[3]
local writes = cmsgpack.unpack(ARGV[2])
-- A failing write (or log append) fails only its own reply, as it would in a pipeline of
-- apply.lua calls: {-1, error, 0}. What it wrote before failing stays, as there.
local function failure(error)
  if type(error) == 'table' and error.err then return error.err end
  return tostring(error)
end
local replies = {}
for _, w in ipairs(writes) do
  local base = (w[1] - 1) * 3
  local argv = {}
  for i = 1, 15 do argv[i] = tostring(w[i + 4]) end
  local ok, reply = pcall(apply_one, {KEYS[base + 1], KEYS[base + 2], KEYS[base + 3]}, argv)
  if ok and reply[1] ~= 0 and w[2] > 0 and log_maxlen > 0 then
    local logged, error = pcall(redis.call, 'XADD', KEYS[streams_from + w[2]],
                                'MAXLEN', '~', log_maxlen, '*', 'user_id', w[3],
                                'item_id', argv[4], 'event_id', argv[3], 'timestamp', w[4],
                                'model_version', logged_version)
    if not logged then ok, reply = false, error end
  end
  if not ok then reply = {-1, failure(reply), 0} end
  replies[#replies + 1] = reply[1]
  replies[#replies + 1] = reply[2]
  replies[#replies + 1] = reply[3]
end
return replies
