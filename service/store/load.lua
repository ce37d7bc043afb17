-- Everything an event needs in one round trip. KEYS: state hash, history list, event-id zset.
-- ARGV: 1 history wanted ('1'/'0'), 2 event id to check ('' = none).
-- The history comes back as one newline-joined string (ids never contain control characters):
-- parsing a list reply element by element cost more than the model step at ML-1M lengths.
local fields = redis.call('HMGET', KEYS[1], 'version', 'state', 'hidden', 'model_version',
                          'events_applied', 'events_received', 'updated_at')
local reply = {}
for i = 1, 7 do reply[i] = fields[i] or '' end
reply[8] = ''
if ARGV[1] == '1' then
  reply[8] = table.concat(redis.call('LRANGE', KEYS[2], 0, -1), '\n')
end
reply[9] = '0'
if ARGV[2] ~= '' and redis.call('ZSCORE', KEYS[3], ARGV[2]) then reply[9] = '1' end
return reply
