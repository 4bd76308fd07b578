/**
 * The cluster's atomic steps, as Lua scripts Redis runs whole (EVALSHA): a claim decided on one node
 * can never interleave with one on another. Key layout (prefix `ptth:` by default; docs/PROTOCOL.md
 * section 12):
 *
 * - `r:NAME` hash: th token hash, h holder (tokenless claims), k access key, l lease (s), n nonce of
 *   the private id, p hash of the private id, c created (ms).
 *   It expires `lease` after the cluster's last channel of the name goes, with every key below that
 *   belongs to it.
 * - `p:HASH` -> name (private URLs); `s:HASH` -> "name node" (Comet sessions); `rs:NAME` set of the
 *   name's session hashes; `k:KEY` set of the names held under an access key.
 * - `n:NODE:c` hash name -> channels the node holds; `n:NODE:k` hash key -> channels; `node:NODE`
 *   hash url, started; `nodes` zset node -> last heartbeat (ms). A node is live while its heartbeat
 *   is younger than the dead-after interval; only live nodes' counts count.
 *
 * Every script takes ARGV[1] prefix, ARGV[2] now (ms), ARGV[3] dead-after (ms), then its own.
 * Events go out on the `PREFIX + ev` channel: `open NAME NODE URL`, `close NAME NODE`,
 * `release NAME`, `update NAME`, `gone NODE`.
 */

const COMMON = `
local P = ARGV[1]
local NOW = tonumber(ARGV[2])
local DEAD = tonumber(ARGV[3])
local EV = P .. 'ev'
local function live_nodes()
  return redis.call('ZRANGEBYSCORE', P .. 'nodes', NOW - DEAD, '+inf')
end
local function name_count(name, nodes)
  local n = 0
  for _, id in ipairs(nodes) do n = n + tonumber(redis.call('HGET', P .. 'n:' .. id .. ':c', name) or '0') end
  return n
end
local function key_count(key, nodes)
  local n = 0
  for _, id in ipairs(nodes) do n = n + tonumber(redis.call('HGET', P .. 'n:' .. id .. ':k', key) or '0') end
  return n
end
-- The names an access key holds now; members whose registration went (expired) or moved are dropped.
local function key_names(key)
  local set = P .. 'k:' .. key
  local n = 0
  for _, name in ipairs(redis.call('SMEMBERS', set)) do
    if redis.call('HGET', P .. 'r:' .. name, 'k') == key then n = n + 1 else redis.call('SREM', set, name) end
  end
  return n
end
-- Sets (ms) or clears (nil) the expiry of a registration and every key that belongs to it.
local function expire_reg(name, ms)
  local r = P .. 'r:' .. name
  local keys = { r, P .. 'rs:' .. name }
  local priv = redis.call('HGET', r, 'p')
  if priv then keys[#keys + 1] = P .. 'p:' .. priv end
  for _, h in ipairs(redis.call('SMEMBERS', P .. 'rs:' .. name)) do keys[#keys + 1] = P .. 's:' .. h end
  for _, k in ipairs(keys) do
    if ms then redis.call('PEXPIRE', k, ms) else redis.call('PERSIST', k) end
  end
end
local function release(name)
  local r = P .. 'r:' .. name
  if redis.call('EXISTS', r) == 0 then return 0 end
  local key = redis.call('HGET', r, 'k')
  if key then redis.call('SREM', P .. 'k:' .. key, name) end
  -- The released registration's channels stop counting everywhere at once: a new registration of
  -- the name must not inherit them (the nodes close them when the release event reaches them).
  for _, id in ipairs(redis.call('ZRANGE', P .. 'nodes', 0, -1)) do
    local c = P .. 'n:' .. id .. ':c'
    local n = tonumber(redis.call('HGET', c, name) or '0')
    if n > 0 then
      redis.call('HDEL', c, name)
      if key then
        local kk = P .. 'n:' .. id .. ':k'
        local kc = tonumber(redis.call('HGET', kk, key) or '0') - n
        if kc <= 0 then redis.call('HDEL', kk, key) else redis.call('HSET', kk, key, kc) end
      end
    end
  end
  local priv = redis.call('HGET', r, 'p')
  if priv then redis.call('DEL', P .. 'p:' .. priv) end
  for _, h in ipairs(redis.call('SMEMBERS', P .. 'rs:' .. name)) do redis.call('DEL', P .. 's:' .. h) end
  redis.call('DEL', r, P .. 'rs:' .. name)
  redis.call('PUBLISH', EV, 'release ' .. name)
  return 1
end
-- No channel of the name left in the cluster: its lease starts (a lease of 0 ends it now).
local function lease_starts(name)
  local lease = tonumber(redis.call('HGET', P .. 'r:' .. name, 'l') or '0')
  if lease <= 0 then release(name) else expire_reg(name, lease * 1000) end
end
-- This node's channel count of a name (and its key) moves by d; events when the node's count
-- leaves or reaches 0, and the lease when the cluster's does.
local function move(node, url, name, key, d)
  local c = P .. 'n:' .. node .. ':c'
  local before = tonumber(redis.call('HGET', c, name) or '0')
  local after = before + d
  if after < 0 then after = 0 end
  if after == 0 then redis.call('HDEL', c, name) else redis.call('HSET', c, name, after) end
  if key and key ~= '' then
    local kk = P .. 'n:' .. node .. ':k'
    local kc = tonumber(redis.call('HGET', kk, key) or '0') + (after - before)
    if kc <= 0 then redis.call('HDEL', kk, key) else redis.call('HSET', kk, key, kc) end
  end
  if redis.call('EXISTS', P .. 'r:' .. name) == 0 then return after end
  if before == 0 and after > 0 then
    expire_reg(name, nil)
    redis.call('PUBLISH', EV, 'open ' .. name .. ' ' .. node .. ' ' .. url)
  elseif before > 0 and after == 0 then
    redis.call('PUBLISH', EV, 'close ' .. name .. ' ' .. node)
    if name_count(name, live_nodes()) == 0 then lease_starts(name) end
  end
  return after
end
-- Whether a count change is for the registration the name has now (nonce '' : whichever it has).
-- A channel of a released registration that closes later must not take one off its successor.
local function current(name, nonce)
  if nonce == '' then return true end
  local have = redis.call('HGET', P .. 'r:' .. name, 'n')
  return not have or have == nonce
end
-- A claim's reserved channel that never joined goes back; a name the claim made goes with it
-- unless a channel of it came meanwhile somewhere.
local function give_back(node, url, name, created, nonce)
  if not current(name, nonce) then return 0 end
  local key = redis.call('HGET', P .. 'r:' .. name, 'k') or ''
  move(node, url, name, key, -1)
  if created == '1' and name_count(name, live_nodes()) == 0 then release(name) end
  return 1
end
-- A node is gone (dead, or leaving): its channels stop counting, the names only it held start
-- their leases, and the others hear it. Returns how many names it held.
local function forget_node(node)
  local c = P .. 'n:' .. node .. ':c'
  local names = redis.call('HKEYS', c)
  redis.call('DEL', c, P .. 'n:' .. node .. ':k', P .. 'node:' .. node)
  redis.call('ZREM', P .. 'nodes', node)
  for _, name in ipairs(names) do
    redis.call('PUBLISH', EV, 'close ' .. name .. ' ' .. node)
    if redis.call('EXISTS', P .. 'r:' .. name) == 1 and name_count(name, live_nodes()) == 0 then lease_starts(name) end
  end
  redis.call('PUBLISH', EV, 'gone ' .. node)
  return #names
end
-- The live nodes (other than this one) holding channels of a name, as id, url, count triples.
local function holders(name, me)
  local out = {}
  for _, id in ipairs(live_nodes()) do
    local n = tonumber(redis.call('HGET', P .. 'n:' .. id .. ':c', name) or '0')
    if id ~= me and n > 0 then
      out[#out + 1] = id
      out[#out + 1] = redis.call('HGET', P .. 'node:' .. id, 'url') or ''
      out[#out + 1] = n
    end
  end
  return out
end
local function record(name, me, created)
  local r = P .. 'r:' .. name
  local f = redis.call('HMGET', r, 'th', 'h', 'k', 'l', 'n', 'c')
  return { 'ok', created, name, f[1] or '', f[2] or '', f[3] or '', f[4] or '0', f[5] or '', f[6] or '0',
    tostring(redis.call('PTTL', r)), holders(name, me) }
end
`;

/**
 * A claim (MemoryTable.decide's rules, cluster-wide). ARGV from 4: node, url, name, mustCreate (1:
 * a made-up name that must be free), tokenGiven (1/0), tokenHash, holder, key, maxNames ('' none),
 * lease ('' none), defaultLease, perName ('' no channel now), perKey ('' none), nonce, privateHash,
 * claimId (names the reservation for ABANDON_CLAIM).
 * Returns a refusal `{'refuse', reason, n}` or `record()`. A claim that brings a channel reserves it
 * on this node at once (join costs nothing more; abandon gives it back).
 */
export const CLAIM = `${COMMON}
local node, url, name = ARGV[4], ARGV[5], ARGV[6]
local mustCreate, tokenGiven, th, holder, key = ARGV[7], ARGV[8], ARGV[9], ARGV[10], ARGV[11]
local maxNames, lease, defaultLease = tonumber(ARGV[12]), ARGV[13], ARGV[14]
local perName, perKey, nonce, privHash = tonumber(ARGV[15]), tonumber(ARGV[16]), ARGV[17], ARGV[18]
local claimId = ARGV[19]
local r = P .. 'r:' .. name
local nodes = live_nodes()
local exists = redis.call('EXISTS', r) == 1
local created = '0'
local current = ''
if exists then
  if mustCreate == '1' then return { 'taken' } end
  local h = redis.call('HGET', r, 'h')
  current = redis.call('HGET', r, 'k') or ''
  if h then
    if tokenGiven == '1' then return { 'refuse', 'tokenless-held', 0 } end
    if holder ~= h then return { 'refuse', 'other-address', 0 } end
    if key ~= current then return { 'refuse', 'other-key', 0 } end
  else
    if tokenGiven ~= '1' then return { 'refuse', 'token-needed', 0 } end
    if redis.call('HGET', r, 'th') ~= th then return { 'refuse', 'token-mismatch', 0 } end
  end
end
local moving = key ~= '' and key ~= current
if (not exists or moving) and key ~= '' and maxNames then
  local held = key_names(key)
  if held >= maxNames then return { 'refuse', 'key-names', held } end
end
local count = 0
if exists then count = name_count(name, nodes) end
if perName then
  if count >= perName then return { 'refuse', 'too-many-channels', count } end
  local k = current
  if key ~= '' then k = key end
  if perKey and k ~= '' then
    local held = key_count(k, nodes)
    if moving and exists then held = held + count end
    if held >= perKey then return { 'refuse', 'key-channels', held } end
  end
end
if not exists then
  local hval = holder
  if tokenGiven == '1' then hval = '' end
  redis.call('HSET', r, 'th', th, 'l', (lease ~= '' and lease) or defaultLease, 'n', nonce, 'p', privHash, 'c', NOW)
  if hval ~= '' then redis.call('HSET', r, 'h', hval) end
  if key ~= '' then
    redis.call('HSET', r, 'k', key)
    redis.call('SADD', P .. 'k:' .. key, name)
  end
  redis.call('SET', P .. 'p:' .. privHash, name)
  created = '1'
else
  if moving then
    if current ~= '' then redis.call('SREM', P .. 'k:' .. current, name) end
    redis.call('SADD', P .. 'k:' .. key, name)
    redis.call('HSET', r, 'k', key)
    for _, id in ipairs(nodes) do
      local c = tonumber(redis.call('HGET', P .. 'n:' .. id .. ':c', name) or '0')
      if c > 0 then
        if current ~= '' then redis.call('HINCRBY', P .. 'n:' .. id .. ':k', current, -c) end
        redis.call('HINCRBY', P .. 'n:' .. id .. ':k', key, c)
      end
    end
  end
  if lease ~= '' then redis.call('HSET', r, 'l', lease) end
  if moving or lease ~= '' then redis.call('PUBLISH', EV, 'update ' .. name) end
end
local k = redis.call('HGET', r, 'k') or ''
if perName then
  move(node, url, name, k, 1)
  -- For a node that never hears this answer (its command timed out): ABANDON_CLAIM gives it back.
  redis.call('SET', P .. 'res:' .. claimId, name .. ' ' .. created .. ' ' .. redis.call('HGET', r, 'n'), 'PX', 60000)
elseif count == 0 and name_count(name, nodes) == 0 then
  local l = tonumber(redis.call('HGET', r, 'l'))
  expire_reg(name, math.max(l, 1) * 1000)
end
return record(name, node, created)
`;

/**
 * A channel of the name on this node came (d 1) or went (d -1). ARGV from 4: node, url, name, d,
 * nonce of the registration the channel belongs to (ignored when the name has another now).
 */
export const MOVE = `${COMMON}
local node, url, name, d, nonce = ARGV[4], ARGV[5], ARGV[6], tonumber(ARGV[7]), ARGV[8]
if not current(name, nonce) then return -1 end
local key = redis.call('HGET', P .. 'r:' .. name, 'k') or ''
return move(node, url, name, key, d)
`;

/**
 * A claim that reserved a channel ends without it. ARGV from 4: node, url, name, created (1: the
 * claim made the name, which then goes unless a channel came meanwhile), nonce, claimId.
 */
export const ABANDON = `${COMMON}
local node, url, name, created, nonce, claimId = ARGV[4], ARGV[5], ARGV[6], ARGV[7], ARGV[8], ARGV[9]
redis.call('DEL', P .. 'res:' .. claimId)
return give_back(node, url, name, created, nonce)
`;

/**
 * A claim whose answer never came (the command timed out, Redis ran it later): gives back what
 * it reserved, as ABANDON would, if it ran at all. Sent on the same connection after the claim,
 * so Redis runs it after. ARGV from 4: node, url, claimId.
 */
export const ABANDON_CLAIM = `${COMMON}
local node, url, claimId = ARGV[4], ARGV[5], ARGV[6]
local v = redis.call('GET', P .. 'res:' .. claimId)
if not v then return 0 end
redis.call('DEL', P .. 'res:' .. claimId)
local a = string.find(v, ' ', 1, true)
local b = string.find(v, ' ', a + 1, true)
local name, created, nonce = string.sub(v, 1, a - 1), string.sub(v, a + 1, b - 1), string.sub(v, b + 1)
return give_back(node, url, name, created, nonce)
`;

/** Releases a name now (the private URL's DELETE). ARGV from 4: name. */
export const RELEASE = `${COMMON}
return release(ARGV[4])
`;

/** The record of a name for this node, or false. ARGV from 4: node, name. */
export const GET = `${COMMON}
local node, name = ARGV[4], ARGV[5]
if redis.call('EXISTS', P .. 'r:' .. name) == 0 then return false end
return record(name, node, '0')
`;

/**
 * Changes a registration's lease or token (the private URL's PUT). ARGV from 4: name, lease ('' to
 * keep), tokenHash ('' to keep; a new token also ends a tokenless holder).
 */
export const UPDATE = `${COMMON}
local name, lease, th = ARGV[4], ARGV[5], ARGV[6]
local r = P .. 'r:' .. name
if redis.call('EXISTS', r) == 0 then return 0 end
if lease ~= '' then redis.call('HSET', r, 'l', lease) end
if th ~= '' then
  redis.call('HSET', r, 'th', th)
  redis.call('HDEL', r, 'h')
end
if lease ~= '' and redis.call('PTTL', r) >= 0 then lease_starts(name) end
redis.call('PUBLISH', EV, 'update ' .. name)
return 1
`;

/**
 * A node's heartbeat: it is live, its keys outlive it by a while, and nodes whose heartbeat is
 * older than dead-after are reaped (their channels stop counting; a name left with none starts its
 * lease; `close` and `gone` events go out), but only by a node that was live itself. Returns
 * {reaped, 1 when this node was not live before}. ARGV from 4: node, url, keep (ms its keys outlive
 * a missed heartbeat).
 */
export const HEARTBEAT = `${COMMON}
local node, url, keep = ARGV[4], ARGV[5], tonumber(ARGV[6])
local before = tonumber(redis.call('ZSCORE', P .. 'nodes', node) or '-1')
-- A node that was not live itself (dropped, or back after an outage when every score is old) must
-- not judge the others: they may only be as late as it was.
local was = before >= NOW - DEAD
redis.call('ZADD', P .. 'nodes', NOW, node)
redis.call('HSET', P .. 'node:' .. node, 'url', url)
for _, k in ipairs({ P .. 'node:' .. node, P .. 'n:' .. node .. ':c', P .. 'n:' .. node .. ':k' }) do
  redis.call('PEXPIRE', k, keep)
end
local reaped = 0
local dead_nodes = {}
if was then dead_nodes = redis.call('ZRANGEBYSCORE', P .. 'nodes', '-inf', NOW - DEAD) end
for _, dead in ipairs(dead_nodes) do
  forget_node(dead)
  reaped = reaped + 1
end
-- 1: this node was not live before this beat (its counts may be gone): it states them again.
if was then return { reaped, 0 } end
return { reaped, 1 }
`;

/**
 * A node leaves (graceful shutdown): its channels stop counting at once. ARGV from 4: node.
 */
export const LEAVE = `${COMMON}
return forget_node(ARGV[4])
`;

/**
 * After Redis came back (possibly empty): this node states again what it holds. ARGV from 4: node,
 * url, then groups of 9: name, channels, th, holder, key, lease, nonce, privateHash, created. A
 * registration Redis lost is made again from the node's copy; one Redis still has is kept as it
 * is (another node may have changed it), and only this node's channel counts are set. Returns the
 * names another registration holds now (the node drops its old ones).
 */
export const RESTATE = `${COMMON}
local node, url = ARGV[4], ARGV[5]
redis.call('DEL', P .. 'n:' .. node .. ':c', P .. 'n:' .. node .. ':k')
redis.call('ZADD', P .. 'nodes', NOW, node)
redis.call('HSET', P .. 'node:' .. node, 'url', url)
local i = 6
local stale = {}
while ARGV[i] do
  local name, n, th, h, key, lease = ARGV[i], tonumber(ARGV[i + 1]), ARGV[i + 2], ARGV[i + 3], ARGV[i + 4], ARGV[i + 5]
  local nonce, priv, created = ARGV[i + 6], ARGV[i + 7], ARGV[i + 8]
  local r = P .. 'r:' .. name
  local have = redis.call('HGET', r, 'n')
  if have and have ~= nonce then
    -- Another registration holds the name now: this node's channels are an old app's.
    stale[#stale + 1] = name
    n = 0
  elseif not have then
    redis.call('HSET', r, 'th', th, 'l', lease, 'n', nonce, 'p', priv, 'c', created)
    if h ~= '' then redis.call('HSET', r, 'h', h) end
    if key ~= '' then
      redis.call('HSET', r, 'k', key)
      redis.call('SADD', P .. 'k:' .. key, name)
    end
    redis.call('SET', P .. 'p:' .. priv, name)
  end
  if n > 0 then
    move(node, url, name, redis.call('HGET', r, 'k') or '', n)
  end
  i = i + 9
end
return stale
`;

/**
 * A Comet session of a name, served by a node. ARGV from 4: hash, name, node, expectedNode ('' to
 * set unconditionally). Only while the registration lives; with an expected node, only if the
 * session is still that node's (a node adopting the session of a dead one: one winner).
 */
export const SESSION = `${COMMON}
local hash, name, node, expected = ARGV[4], ARGV[5], ARGV[6], ARGV[7]
local r = P .. 'r:' .. name
if redis.call('EXISTS', r) == 0 then return 0 end
local s = P .. 's:' .. hash
if expected ~= '' then
  local cur = redis.call('GET', s)
  if cur and cur ~= name .. ' ' .. expected then return 0 end
end
redis.call('SET', s, name .. ' ' .. node)
redis.call('SADD', P .. 'rs:' .. name, hash)
local ttl = redis.call('PTTL', r)
if ttl > 0 then
  redis.call('PEXPIRE', s, ttl)
  redis.call('PEXPIRE', P .. 'rs:' .. name, ttl)
end
return 1
`;

/** Which node serves a Comet session: {name, node, url or '' once that node was found dead} or false. ARGV from 4: hash. */
export const SESSION_GET = `${COMMON}
local v = redis.call('GET', P .. 's:' .. ARGV[4])
if not v then return false end
local sp = string.find(v, ' ', 1, true)
local name, node = string.sub(v, 1, sp - 1), string.sub(v, sp + 1)
-- A member until found dead: a late heartbeat is not yet a dead node, whose sessions others may take.
local url = ''
if redis.call('ZSCORE', P .. 'nodes', node) then url = redis.call('HGET', P .. 'node:' .. node, 'url') or '' end
return { name, node, url }
`;
