-- One event's atomic check-and-write (or a rebuild's): nothing changes unless it returns 1.
-- KEYS: state hash, history list, event-id zset of one user (one hash slot).
-- ARGV: 1 expected version, 2 writer token, 3 event id ('' = none), 4 item ('' = none),
--       5 state bytes ('' = keep), 6 hidden bytes, 7 model version, 8 applied (0/1),
--       9 received (0/1), 10 unix time, 11 max history length, 12 TTL seconds (0 = none),
--       13 max event ids, 14 expected writer token ('' = any: the caller read the record),
--       15 on a conflict, return the current record: '' no, '0' without history, '1' with it.
-- Returns {status, events_applied, version[, record...]}: status 0 conflict, 1 written,
-- 2 duplicate event id, 3 this token is already stored (a retried call whose reply was lost).
local state_key, hist_key, eids_key = KEYS[1], KEYS[2], KEYS[3]
local token, event_id, item = ARGV[2], ARGV[3], ARGV[4]
local fields = redis.call('HMGET', state_key, 'version', 'token', 'events_applied',
                          'events_received')
local version = tonumber(fields[1] or '0')
local applied = tonumber(fields[3] or '0')
if fields[2] == token then
  return {3, applied, version}
end
if event_id ~= '' and redis.call('ZSCORE', eids_key, event_id) then
  return {2, applied, version}
end
if version ~= tonumber(ARGV[1]) or (ARGV[14] ~= '' and fields[2] ~= ARGV[14]) then
  if ARGV[15] == '' then
    return {0, applied, version}
  end
  -- The current record, so the caller retries without another round trip to read it.
  local r = redis.call('HMGET', state_key, 'state', 'hidden', 'model_version',
                       'events_received', 'updated_at')
  local hist = ''
  if ARGV[15] == '1' then
    hist = table.concat(redis.call('LRANGE', hist_key, 0, -1), '\n')
  end
  return {0, applied, version, r[1] or '', r[2] or '', r[3] or '', r[4] or '', r[5] or '', hist}
end
version = version + 1
applied = applied + tonumber(ARGV[8])
local received = tonumber(fields[4] or '0') + tonumber(ARGV[9])
-- One HSET for every field (each call from Lua costs more than the work it does).
if ARGV[5] ~= '' then
  redis.call('HSET', state_key, 'version', version, 'token', token, 'events_applied', applied,
             'events_received', received, 'updated_at', ARGV[10],
             'state', ARGV[5], 'hidden', ARGV[6], 'model_version', ARGV[7])
else
  redis.call('HSET', state_key, 'version', version, 'token', token, 'events_applied', applied,
             'events_received', received, 'updated_at', ARGV[10])
end
if item ~= '' and redis.call('RPUSH', hist_key, item) > tonumber(ARGV[11]) then
  redis.call('LTRIM', hist_key, -tonumber(ARGV[11]), -1)
end
-- Each write adds at most one event id, so the set holds at most `version` of them.
if event_id ~= '' then
  redis.call('ZADD', eids_key, version, event_id)
  if version > tonumber(ARGV[13]) then
    redis.call('ZREMRANGEBYRANK', eids_key, 0, -tonumber(ARGV[13]) - 1)
  end
end
local ttl = tonumber(ARGV[12])
if ttl > 0 then
  redis.call('EXPIRE', state_key, ttl)
  redis.call('EXPIRE', hist_key, ttl)
  redis.call('EXPIRE', eids_key, ttl)
end
return {1, applied, version}
