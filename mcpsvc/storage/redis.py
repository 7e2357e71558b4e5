# -*- test-case-name: mcpsvc.storage.test.test_redis -*-
"""
The Redis L{IStore}, for several machines (txredisapi).

Layout, under the configured key prefix C{P}:
  - C{P client:<id>}: hash; C{P clients}: set of client ids (for listing);
  - C{P code:<hash>}: hash, TTL until C{expiresAt};
  - C{P family:<id>}: hash (plus C{revoked}), TTL until C{expiresAt};
    C{P families}: sorted set of live family ids scored by C{expiresAt};
  - C{P revoked:<jti>}: C{expiresAt}, TTL until then;
  - C{P session:<id>}: hash, TTL until C{expiresAt}; C{P sessions}: sorted
    set scored by C{expiresAt} (for counting); C{P psessions:<sha1 of
    subject NUL clientID>}: sorted set of that principal's session ids
    scored by last use (C{expiresAt}, moved by every touch), its TTL at
    least its longest session's (for the limit of
    L{RedisStore.createSession}, in the same script as the creation; ended
    sessions leave it, expired ones when the limit is next counted);
  - C{P bucket:<key>}: hash C{tokens}, C{updated}, TTL until full again;
  - C{P task:<id>}: hash, TTL until C{expiresAt}; replaced whole by a
    compare-and-set on its C{version} (L{RedisStore.replaceTask}).
  - C{P assertion:<sha256 of clientID NUL jti>}: C{expiresAt} of a used
    client assertion, TTL until then (a Lua script: the first use wins).

Records carry their own C{expiresAt} and every read checks it against the
caller's C{now}, so expiry is exact even between Redis' TTL ticks; the TTLs
(computed from the injected clock) make Redis forget records by itself. The
sweeper only trims the two sorted-set indexes.

Single-use codes, rotation, revocation, session creation (with its limit)
and touch, and token buckets are Lua scripts (atomic on the server). Hashes
are compared in Lua as C{sha1(a) == sha1(b)}, which does not leak how much
of a stored hash an attacker's value matches. Scripts derive some key names from record contents
(the deny-listed C{jti} of a revoked family): fine on a standalone server or
behind Sentinel, not on Redis Cluster.

Every call is bounded by C{timeout} on the injected clock; a connection
error, a timeout or an error reply fails it with L{StoreUnavailable}; a
call its caller cancels fails with C{CancelledError}, quietly. The
connection (L{RedisConnection}) is a lazy txredisapi pool that reconnects by
itself, so the store works again when Redis comes back.
"""

from __future__ import annotations

import hashlib
import math
from typing import Any, Callable, Coroutine, Dict, List, Mapping, Optional, Sequence, Tuple, TypeVar
from urllib.parse import parse_qs, unquote, urlsplit

from twisted.internet.defer import CancelledError, Deferred, FirstError, gatherResults, succeed
from twisted.internet.defer import TimeoutError as DeferredTimeoutError
from twisted.internet.error import ConnectError, ConnectionClosed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from mcpsvc.storage._codec import fromStrings, toStrings
from mcpsvc.storage._logic import (
    RevocationBatch,
    RevocationBatches,
    isIdleDocumentClient,
    takeFromBucket,
)
from mcpsvc.storage.interfaces import (
    AlreadyUsed,
    ClientRecord,
    CodeMismatch,
    CodeRecord,
    Conflict,
    IStore,
    NoSuchClient,
    NoSuchCode,
    NoSuchFamily,
    NoSuchSession,
    NoSuchTask,
    RateDecision,
    RefreshFamily,
    RotationOutcome,
    RotationResult,
    SessionRecord,
    StoreError,
    StoreUnavailable,
    SweepReport,
    TaskRecord,
    TooManyTasks,
)

__all__ = ["RedisStore", "RedisConnection", "parseRedisURL", "redisConnector"]

T = TypeVar("T")
log = Logger()

_PRELUDE = """
local function hash(f)
  local h = {}
  for i = 1, #f, 2 do h[f[i]] = f[i + 1] end
  return h
end
local function eq(a, b)
  if not a or not b then return false end
  return redis.sha1hex(a) == redis.sha1hex(b)
end
local function denyList(key, exp, now)
  local cur = redis.call('GET', key)
  if cur and tonumber(cur) >= tonumber(exp) then return end
  local ttl = math.ceil((tonumber(exp) - tonumber(now)) * 1000)
  if ttl > 0 then redis.call('SET', key, exp, 'PX', ttl) end
end
local function liveFamily(key, now)
  local f = redis.call('HGETALL', key)
  if #f == 0 then return nil end
  local h = hash(f)
  if h['revoked'] == '1' or tonumber(h['expiresAt']) <= tonumber(now) then return nil end
  return f, h
end
local function revoke(key, index, h, prefix, now)
  redis.call('HSET', key, 'revoked', '1')
  redis.call('ZREM', index, h['familyID'])
  if h['lastAccessJTI'] and tonumber(h['lastAccessExpiresAt']) > tonumber(now) then
    denyList(prefix .. 'revoked:' .. h['lastAccessJTI'], h['lastAccessExpiresAt'], now)
  end
  local untilAt = h['expiresAt']
  if h['lastAccessExpiresAt'] and tonumber(h['lastAccessExpiresAt']) > tonumber(untilAt) then
    untilAt = h['lastAccessExpiresAt']
  end
  denyList(prefix .. 'revoked:family:' .. h['familyID'], untilAt, now)
end
"""

#: KEYS: record, index. ARGV: now, ttl ms (0: none), index kind ('set',
#: 'zset' or ''), score, member, field, value, ...
_CREATE = """
local exp = redis.call('HGET', KEYS[1], 'expiresAt')
if redis.call('EXISTS', KEYS[1]) == 1 and ((not exp) or tonumber(exp) > tonumber(ARGV[1])) then
  return 0
end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], unpack(ARGV, 6))
if tonumber(ARGV[2]) > 0 then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
if ARGV[3] == 'set' then
  redis.call('SADD', KEYS[2], ARGV[5])
elseif ARGV[3] == 'zset' then
  redis.call('ZADD', KEYS[2], ARGV[4], ARGV[5])
end
return 1
"""

#: KEYS: assertion. ARGV: now, expiresAt, ttl ms. 1: first use, 0: replay.
_USE_ASSERTION = """
local cur = redis.call('GET', KEYS[1])
if cur and tonumber(cur) > tonumber(ARGV[1]) then return 0 end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
return 1
"""

#: KEYS: record. ARGV: field, value, ...
_REPLACE = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], unpack(ARGV))
return 1
"""

#: KEYS: record, index. ARGV: member.
_DELETE = """
local n = redis.call('DEL', KEYS[1])
redis.call('SREM', KEYS[2], ARGV[1])
return n
"""

#: KEYS: client record, index. ARGV: member, the record's metadata as read.
#: Removes the record only if its metadata is still that (not renewed).
_DELETE_UNCHANGED = """
if redis.call('HGET', KEYS[1], 'metadata') ~= ARGV[2] then return 0 end
redis.call('DEL', KEYS[1])
redis.call('SREM', KEYS[2], ARGV[1])
return 1
"""

#: KEYS: code. ARGV: now, then for client id, redirect URI and code
#: challenge in turn: '1' and the value to check, or '0' and ''. Same rules
#: as L{mcpsvc.storage._logic.checkCode}.
_CONSUME = _PRELUDE + """
local f = redis.call('HGETALL', KEYS[1])
if #f == 0 then return {'missing'} end
local h = hash(f)
if tonumber(h['expiresAt']) <= tonumber(ARGV[1]) then return {'missing'} end
if ARGV[2] == '1' and ARGV[3] ~= h['clientID'] then return {'mismatch', 'client_id'} end
if ARGV[4] == '1' and ARGV[5] ~= h['redirectURI'] then return {'mismatch', 'redirect_uri'} end
if ARGV[6] == '1' and not eq(ARGV[7], h['codeChallenge']) then
  return {'mismatch', 'code_verifier'}
end
if h['used'] == '1' then return {'used', unpack(f)} end
redis.call('HSET', KEYS[1], 'used', '1')
return {'ok', unpack(f)}
"""

#: KEYS: family, families. ARGV: now, presented, new, sealed, graceUntil,
#: jti, jtiExpiresAt, prefix, issued ('1' or '0'), maxGraceReplays. Same
#: rules as L{mcpsvc.storage._logic.rotation}.
_ROTATE = _PRELUDE + """
local f, h = liveFamily(KEYS[1], ARGV[1])
if not f then return {'missing'} end
if eq(ARGV[2], h['currentHash']) then
  redis.call('HSET', KEYS[1], 'previousHash', h['currentHash'], 'currentHash', ARGV[3],
             'sealedSuccessor', ARGV[4], 'graceUntil', ARGV[5],
             'lastAccessJTI', ARGV[6], 'lastAccessExpiresAt', ARGV[7], 'graceReplays', '0')
  redis.call('HINCRBY', KEYS[1], 'rotations', 1)
  return {'rotated', unpack(redis.call('HGETALL', KEYS[1]))}
end
local previous = eq(ARGV[2], h['previousHash'])
if previous and tonumber(ARGV[1]) < tonumber(h['graceUntil'])
    and tonumber(h['graceReplays'] or '0') < tonumber(ARGV[10]) then
  redis.call('HSET', KEYS[1], 'lastAccessJTI', ARGV[6], 'lastAccessExpiresAt', ARGV[7])
  redis.call('HINCRBY', KEYS[1], 'graceReplays', 1)
  return {'grace', unpack(redis.call('HGETALL', KEYS[1]))}
end
if previous or ARGV[9] == '1' then
  revoke(KEYS[1], KEYS[2], h, ARGV[8], ARGV[1])
  return {'reused', unpack(f)}
end
return {'unknown', unpack(f)}
"""

#: KEYS: family, families. ARGV: now, prefix.
_REVOKE = _PRELUDE + """
local f, h = liveFamily(KEYS[1], ARGV[1])
if not f then return {} end
revoke(KEYS[1], KEYS[2], h, ARGV[2], ARGV[1])
return f
"""

#: KEYS: revoked:<jti>. ARGV: expiresAt, now.
_DENY = _PRELUDE + """
denyList(KEYS[1], ARGV[1], ARGV[2])
return 1
"""

#: The principal index of a session hash: C{principalIndex(prefix, h)}.
_PRINCIPAL_INDEX = """
local function principalIndex(prefix, key)
  local f = redis.call('HMGET', key, 'subject', 'clientID')
  if not f[1] or not f[2] then return nil end
  return prefix .. 'psessions:' .. redis.sha1hex(f[1] .. '\\0' .. f[2])
end
local function extend(key, ttl)
  if redis.call('PTTL', key) < ttl then redis.call('PEXPIRE', key, ttl) end
end
"""

#: KEYS: session, sessions, principal index. ARGV: now, ttl ms, expiresAt,
#: sessionID, createdAt, limit ('' for none), session key prefix, field,
#: value, ... Returns {0} (a live session has that id) or {1, ended id, ...}:
#: the principal's live sessions (at createdAt) beyond the limit - 1 most
#: recently used are ended, least recently used first (the same order as the
#: other backends), then the new one is stored, all in one step.
_CREATE_SESSION = _PRINCIPAL_INDEX + """
local exp = redis.call('HGET', KEYS[1], 'expiresAt')
if redis.call('EXISTS', KEYS[1]) == 1 and ((not exp) or tonumber(exp) > tonumber(ARGV[1])) then
  return {0}
end
local result = {1}
redis.call('ZREM', KEYS[3], ARGV[4])
if ARGV[6] ~= '' then
  local keep = math.max(0, tonumber(ARGV[6]) - 1)
  if redis.call('ZCARD', KEYS[3]) > keep then
    local at = tonumber(ARGV[5])
    local live = {}
    for _, id in ipairs(redis.call('ZRANGE', KEYS[3], 0, -1)) do
      local h = redis.call('HMGET', ARGV[7] .. id, 'expiresAt', 'createdAt')
      if h[1] and tonumber(h[1]) > at then
        table.insert(live, {id, tonumber(h[1]), tonumber(h[2]) or 0})
        redis.call('ZADD', KEYS[3], 'XX', h[1], id)
      else
        redis.call('ZREM', KEYS[3], id)
      end
    end
    table.sort(live, function(a, b)
      if a[2] ~= b[2] then return a[2] < b[2] end
      if a[3] ~= b[3] then return a[3] < b[3] end
      return a[1] < b[1]
    end)
    for i = 1, #live - keep do
      local id = live[i][1]
      redis.call('DEL', ARGV[7] .. id)
      redis.call('ZREM', KEYS[3], id)
      redis.call('ZREM', KEYS[2], id)
      table.insert(result, id)
    end
  end
end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], unpack(ARGV, 8))
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[4])
redis.call('ZADD', KEYS[3], ARGV[3], ARGV[4])
extend(KEYS[3], tonumber(ARGV[2]))
return result
"""

#: KEYS: session, sessions. ARGV: now, expiresAt, ttl ms, sessionID, prefix.
_TOUCH = _PRINCIPAL_INDEX + """
local exp = redis.call('HGET', KEYS[1], 'expiresAt')
if (not exp) or tonumber(exp) <= tonumber(ARGV[1]) then return 0 end
local ttl = math.max(1, tonumber(ARGV[3]))
redis.call('HSET', KEYS[1], 'expiresAt', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ttl)
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[4])
local index = principalIndex(ARGV[5], KEYS[1])
if index then
  redis.call('ZADD', index, ARGV[2], ARGV[4])
  extend(index, ttl)
end
return 1
"""

#: KEYS: session, sessions. ARGV: now, sessionID, prefix.
_END_SESSION = _PRINCIPAL_INDEX + """
local exp = redis.call('HGET', KEYS[1], 'expiresAt')
local index = principalIndex(ARGV[3], KEYS[1])
if index then redis.call('ZREM', index, ARGV[2]) end
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[2])
if exp and tonumber(exp) > tonumber(ARGV[1]) then return 1 end
return 0
"""

#: KEYS: bucket. ARGV: capacity, refillPerSecond, now, cost. Same rules as
#: L{mcpsvc.storage._logic.takeFromBucket}.
_TAKE = """
local cap = tonumber(ARGV[1])
local rate = tonumber(ARGV[2])
local now = tonumber(ARGV[3])
local cost = tonumber(ARGV[4])
local s = redis.call('HMGET', KEYS[1], 'tokens', 'updated')
local tokens = cap
local updated = now
if s[1] then
  tokens = tonumber(s[1])
  updated = tonumber(s[2])
  if now > updated then
    tokens = math.min(cap, tokens + (now - updated) * rate)
    updated = now
  end
end
local allowed = 0
local retry = 0
if tokens >= cost then
  tokens = math.min(cap, tokens - cost)
  allowed = 1
else
  retry = (cost - tokens) / rate
end
local ttl = math.ceil((cap - tokens) / rate * 1000)
if ttl >= 1 then
  redis.call('HSET', KEYS[1], 'tokens', string.format('%.17g', tokens),
             'updated', string.format('%.17g', updated))
  redis.call('PEXPIRE', KEYS[1], ttl)
else
  redis.call('DEL', KEYS[1])
end
return {allowed, string.format('%.17g', tokens), string.format('%.17g', retry)}
"""


#: KEYS: task, the principal's task index (a zset of task ids by
#: expiresAt). ARGV: now, ttl ms, limit ('' for none), createdAt,
#: expiresAt, task id, task key prefix, field, value, ... Returns 0 (a live
#: task has this id), -1 (the principal has limit live tasks) or 1.
#: Index members expired at createdAt, over, past their lease (leaseUntil
#: not 0 and at most createdAt: their instance stopped), or gone are dropped
#: on the way,
#: so the index holds at most limit + 1 ids after a limited creation.
_CREATE_TASK = """
local exp = redis.call('HGET', KEYS[1], 'expiresAt')
if exp and tonumber(exp) > tonumber(ARGV[1]) then return 0 end
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', ARGV[4])
if ARGV[3] ~= '' then
  local live = 0
  for _, id in ipairs(redis.call('ZRANGE', KEYS[2], 0, -1)) do
    local h = redis.call('HMGET', ARGV[7] .. id, 'status', 'expiresAt', 'leaseUntil')
    local lease = tonumber(h[3] or '0') or 0
    if (h[1] == 'working' or h[1] == 'input_required') and h[2]
        and tonumber(h[2]) > tonumber(ARGV[4])
        and (lease == 0 or lease > tonumber(ARGV[4])) then
      live = live + 1
    else
      redis.call('ZREM', KEYS[2], id)
    end
  end
  if live >= tonumber(ARGV[3]) then return -1 end
end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], unpack(ARGV, 8))
if tonumber(ARGV[2]) > 0 then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
redis.call('ZADD', KEYS[2], ARGV[5], ARGV[6])
if redis.call('PTTL', KEYS[2]) < tonumber(ARGV[2]) then
  redis.call('PEXPIRE', KEYS[2], math.max(1, tonumber(ARGV[2])))
end
return 1
"""

#: KEYS: task. ARGV: now, expected version, ttl ms, field, value, ...
#: Returns -1 (no live task), 0 (another version) or 1 (replaced).
_REPLACE_TASK = """
local h = redis.call('HMGET', KEYS[1], 'expiresAt', 'version')
if (not h[1]) or tonumber(h[1]) <= tonumber(ARGV[1]) then return -1 end
if h[2] ~= ARGV[2] then return 0 end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], unpack(ARGV, 4))
redis.call('PEXPIRE', KEYS[1], math.max(1, tonumber(ARGV[3])))
return 1
"""


def _pairs(flat: Sequence[Any]) -> Dict[str, str]:
    return {flat[i]: flat[i + 1] for i in range(0, len(flat), 2)}


def _flatFields(record: Any) -> List[str]:
    """
    C{record}'s fields as the flat name, value list of C{HSET}.
    """
    return [part for pair in toStrings(record).items() for part in pair]


def _num(value: float) -> str:
    return repr(float(value))


# --------------------------------------------------------------------------
# Connection


def parseRedisURL(url: str) -> Dict[str, Any]:
    """
    Parse C{redis://[[user]:password@]host[:port][/db]} or C{rediss://...}
    (TLS) into C{host}, C{port}, C{username}, C{password}, C{db}, C{tls}. A
    C{?db=N} query is accepted too.

    @raise ValueError: for another scheme or a bad database number.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss"):
        raise ValueError(f"not a redis:// or rediss:// URL: {url!r}")
    db = 0
    path = parts.path.strip("/")
    query = parse_qs(parts.query)
    if path:
        db = int(path)
    elif "db" in query:
        db = int(query["db"][0])
    return {
        "host": parts.hostname or "127.0.0.1",
        "port": parts.port or 6379,
        "username": unquote(parts.username) if parts.username else None,
        "password": unquote(parts.password) if parts.password is not None else None,
        "db": db,
        "tls": parts.scheme == "rediss",
    }


def _sentinelManager(txredisapi: Any, sentinels: List[Tuple[str, int]], timeout: float) -> Any:
    """
    A C{txredisapi.Sentinel} whose master discovery:
      - leaves no timer behind when it succeeds, fails or is cancelled
        (txredisapi's own keeps a 10-second timer alive when a connection
        attempt is cancelled, e.g. by C{disconnect()}, so "closed" would not
        mean closed);
      - fails as soon as every Sentinel has answered without naming a usable
        master (during a failover: the old master is down, the replica not
        yet promoted), instead of waiting for the discovery timeout. Waiting
        would delay the next attempt, so mcpsvc would serve again only
        seconds after the promotion (measured: 8 s instead of about 2 with
        the default 5 s C{STORE_TIMEOUT}, see C{tests/test_redis_ha.py}).
    """
    from twisted.internet import reactor

    class Sentinel(txredisapi.Sentinel):  # type: ignore[misc]
        discovery_timeout = timeout

        def discover_master(self, service_name: str) -> "Deferred[Tuple[str, int]]":
            def cancel(d: Deferred[Any]) -> None:
                if timer.active():
                    timer.cancel()

            result: Deferred[Tuple[str, int]] = Deferred(cancel)
            waiting = [len(self.sentinels)]

            def notFound() -> None:
                if timer.active():
                    timer.cancel()
                if not result.called:
                    result.errback(
                        txredisapi.MasterNotFoundError(f"No master found for {service_name}")
                    )

            def answered() -> None:
                waiting[0] -= 1
                if waiting[0] <= 0:
                    notFound()

            def onResponse(response: Mapping[str, Any]) -> None:
                state = response.get(service_name)
                if not result.called and state and self.check_master_state(state):
                    if timer.active():
                        timer.cancel()
                    result.callback((state["ip"], int(state["port"])))
                answered()

            def onError(failure: Failure) -> None:
                answered()

            timer = reactor.callLater(self.discovery_timeout, notFound)
            for sentinel in self.sentinels:
                sentinel.sentinel_masters().addCallbacks(onResponse, onError)
            return result

    return Sentinel(sentinels)


def _sentinelFactory(txredisapi: Any) -> Any:
    """
    txredisapi's factory for connections to a master found through
    Sentinel, with a protocol that handles the loss of a connection while
    it is being set up.

    txredisapi's C{SentinelRedisProtocol.connectionMade} sends C{AUTH} and
    C{ROLE} and returns their Deferreds to the transport, which ignores
    them: a connection lost before they are answered (the master dying, or
    Sentinel's C{CLIENT KILL} on a promoted replica) was an "Unhandled error
    in Deferred". The connection is gone and the pool reconnects by itself.
    Any other failure of C{ROLE} (C{NOAUTH} after a refused C{AUTH}, ...)
    is logged and closes the connection, which is of no use; the pool tries
    again, with its back-off.
    """

    def authFailed(failure: Failure) -> None:
        # ROLE, sent right after, fails too and says why
        return None

    def roleFailed(failure: Failure, protocol: Any) -> None:
        if not failure.check(txredisapi.ConnectionError):
            log.error("Redis connection set-up failed: {why}", why=failure.getErrorMessage())
            if protocol.transport is not None:
                protocol.transport.loseConnection()

    class Protocol(txredisapi.SentinelRedisProtocol):  # type: ignore[misc]
        def connectionMade(self) -> "Deferred[Any]":
            def checkRole(role: Any) -> Any:
                if self.factory.is_master and role[0] != "master":
                    self.transport.loseConnection()
                    return None
                return txredisapi.RedisProtocol.connectionMade(self)

            if self.password is not None:
                self.auth(self.password, self.username).addErrback(authFailed)
            return self.role().addCallback(checkRole).addErrback(roleFailed, self)

    class Factory(txredisapi.SentinelConnectionFactory):  # type: ignore[misc]
        protocol = Protocol

    return Factory


class _SentinelHandler:
    """
    A master handler obtained through Sentinel; disconnecting it also
    disconnects from the Sentinels.
    """

    def __init__(self, handler: Any, manager: Any) -> None:
        self._handler = handler
        self._manager = manager

    def __getattr__(self, name: str) -> Any:
        return getattr(self._handler, name)

    def discoverMaster(self, name: str) -> "Deferred[Tuple[str, int]]":
        """
        Ask the Sentinels where master C{name} is now (the change relay
        follows failovers with it).
        """
        return self._manager.discover_master(name)  # type: ignore[no-any-return]

    def disconnect(self) -> "Deferred[None]":
        async def disconnect() -> None:
            try:
                await self._handler.disconnect()
            finally:
                await self._manager.disconnect()
                await _settle()

        return Deferred.fromCoroutine(disconnect())


async def _settle(turns: int = 100) -> None:
    """
    Let txredisapi finish parsing data it already received: its protocol
    re-delivers buffered replies with C{callLater(0, ...)}, which would
    otherwise still be pending after a "closed" connection (bounded).
    """
    from twisted.internet import reactor
    from twisted.internet.task import deferLater

    for _ in range(turns):
        pending = [
            call for call in reactor.getDelayedCalls()
            if getattr(call.func, "__qualname__", "") == "LineReceiver.dataReceived"
        ]
        if not pending:
            return
        await deferLater(reactor, 0, lambda: None)


def redisConnector(
    *,
    url: Optional[str] = None,
    host: str = "127.0.0.1",
    port: int = 6379,
    password: Optional[str] = None,
    db: int = 0,
    sentinels: Sequence[Tuple[str, int]] = (),
    sentinelMaster: Optional[str] = None,
    timeout: float = 5.0,
    poolSize: int = 4,
    maxRetryDelay: float = 2.0,
    sentinelRetryDelay: float = 0.5,
) -> Callable[[], Any]:
    """
    Return a function that opens a lazy txredisapi connection pool (it
    connects, and reconnects, in the background) and returns its handler.
    Nothing happens until it is called.

    C{url} (C{redis://} or C{rediss://}) overrides C{host}, C{port},
    C{password} and C{db}. With C{sentinels} and C{sentinelMaster} the
    master is found (and re-found after a failover) through Sentinel; the
    password and database apply to the master, not the Sentinels.

    @param maxRetryDelay: the longest pause between reconnection attempts,
        i.e. how long after Redis comes back we may still fail.
    @param sentinelRetryDelay: the same through Sentinel (when shorter): an
        attempt is a question to the Sentinels, which are there to answer
        it, and after a failover the next attempt is the one that finds
        the promoted replica.
    """
    username: Optional[str] = None
    tls = False
    if url:
        parsed = parseRedisURL(url)
        host, port, username = parsed["host"], parsed["port"], parsed["username"]
        password, db, tls = parsed["password"], parsed["db"], parsed["tls"]
    if sentinels and tls:
        # txredisapi's Sentinel client connects to the Sentinels and to the
        # master over plain TCP: refuse rather than send the password in
        # clear (the configuration refuses it first, with the reason).
        raise ValueError("Sentinel with rediss:// (TLS) is not supported")

    def connect() -> Any:
        import txredisapi

        common = dict(
            password=password,
            replyTimeout=timeout,
            convertNumbers=False,
        )
        if sentinels:
            if not sentinelMaster:
                raise ValueError("Sentinel needs a master name")
            manager = _sentinelManager(txredisapi, list(sentinels), timeout)
            handler = manager.master_for(
                sentinelMaster, factory_class=_sentinelFactory(txredisapi),
                dbid=db or None, poolsize=poolSize, username=username, **common
            )
            _tune(handler)
            handler._factory.maxDelay = min(maxRetryDelay, sentinelRetryDelay)
            return _SentinelHandler(handler, manager)
        contextFactory: Any = False
        if tls:
            from twisted.internet.ssl import optionsForClientTLS

            contextFactory = optionsForClientTLS(host)
        handler = txredisapi.lazyConnectionPool(
            host,
            port,
            dbid=db or None,
            poolsize=poolSize,
            username=username,
            ssl_context_factory=contextFactory,
            connectTimeout=timeout,
            **common,
        )
        _tune(handler)
        return handler

    def _tune(handler: Any) -> None:
        factory = handler._factory
        # txredisapi backs off up to 10 s between attempts by default; keep
        # recovery after an outage quick (see RedisFactory.retryDelay).
        factory.maxDelay = maxRetryDelay
        # A lazy pool's "fully connected" Deferred has no consumer: without
        # this, a failed AUTH or SELECT is an "Unhandled error in Deferred".
        if factory.deferred is not None:
            factory.deferred.addErrback(_connectFailed, host, port)
        _keepTrying(factory)

    return connect


def _keepTrying(factory: Any) -> None:
    """
    When AUTH or SELECT fails on one new connection (a wrong password, a
    connection dropped in the middle of the handshake, a Redis restarting),
    txredisapi calls C{factory.stopTrying()}: the whole pool then never
    reconnects, and every later call fails until mcpsvc is restarted, even
    once Redis is fine (or the password fixed). Keep reconnecting instead,
    with the pool's usual back-off: a refused handshake is an outage like
    any other. (We close the pool with C{disconnect()}, which does not go
    through C{stopTrying}.)
    """

    def stopTrying() -> "Deferred[None]":
        log.warn("Redis refused or dropped a new connection during AUTH/SELECT; reconnecting")
        return succeed(None)

    factory.stopTrying = stopTrying


def _connectFailed(failure: Failure, host: str, port: int) -> None:
    log.error(
        "Cannot use Redis at {host}:{port}: {why}", host=host, port=port, why=failure.getErrorMessage()
    )


class RedisConnection:
    """
    The store's link to Redis: opened by L{open} (from C{startService}),
    closed by L{close} (from C{stopService}); never in a constructor.

    @param connect: returns a txredisapi handler (see L{redisConnector});
        tests may pass anything with the same commands and C{disconnect()}.
    """

    def __init__(self, connect: Callable[[], Any]) -> None:
        self._connect = connect
        self._handler: Optional[Any] = None

    @property
    def handler(self) -> Any:
        """
        The open handler.

        @raise StoreUnavailable: if the connection is not open.
        """
        if self._handler is None:
            raise StoreUnavailable("the Redis connection is not open")
        return self._handler

    def open(self) -> None:
        """
        Start connecting (in the background). Idempotent.
        """
        if self._handler is None:
            self._handler = self._connect()

    def close(self) -> "Deferred[None]":
        """
        Close every connection; fires once they are really closed.
        """
        handler, self._handler = self._handler, None

        async def close() -> None:
            if handler is not None:
                await handler.disconnect()
                await _settle()

        return Deferred.fromCoroutine(close())


# --------------------------------------------------------------------------
# Store


@implementer(IStore)
class RedisStore:
    """
    L{IStore} in Redis.

    @param connection: a L{RedisConnection} (opened by the store service).
    @param clock: the time source for TTLs and per-call deadlines.
    @param prefix: prepended to every key.
    @param timeout: seconds before a call fails with L{StoreUnavailable}.
    """

    backendName = "redis"

    def __init__(
        self, connection: RedisConnection, clock: IReactorTime, prefix: str = "mcpsvc:", timeout: float = 5.0
    ) -> None:
        self._connection = connection
        self._clock = clock
        self._prefix = prefix
        self._timeout = timeout
        #: Revocation checks, coalesced (see isRevoked).
        self._revocations = RevocationBatches(self._checkRevocations)

    # -- plumbing

    def _key(self, kind: str, name: str = "") -> str:
        return f"{self._prefix}{kind}:{name}" if name else f"{self._prefix}{kind}"

    def _ttl(self, expiresAt: float, now: Optional[float] = None) -> int:
        if now is None:
            now = self._clock.seconds()
        return int(math.ceil((expiresAt - now) * 1000))

    def _call(self, coroutine: Coroutine[Any, Any, T]) -> "Deferred[T]":
        d = Deferred.fromCoroutine(coroutine)
        d.addTimeout(self._timeout, self._clock)
        d.addErrback(self._unavailable)
        return d

    def _unavailable(self, failure: Failure) -> Failure:
        if failure.check(StoreError):
            return failure
        if failure.check(CancelledError):
            # Our own deadline arrives as TimeoutError (addTimeout converts
            # it before this errback); a bare CancelledError is the caller
            # giving up (e.g. the HTTP client went away): not an outage.
            return failure
        import txredisapi

        if failure.check(
            txredisapi.ConnectionError,
            txredisapi.ResponseError,
            DeferredTimeoutError,
            ConnectError,
            ConnectionClosed,
            ConnectionError,
            OSError,
        ):
            log.error("Redis unavailable: {why}", why=failure.getErrorMessage() or failure.type.__name__)
            raise StoreUnavailable(
                f"Redis: {failure.type.__name__}: {failure.getErrorMessage()}"
            ) from failure.value
        return failure

    async def _command(self, *args: Any) -> Any:
        return await self._connection.handler.execute_command(*args)

    async def _eval(self, script: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
        return await self._connection.handler.eval(script, list(keys), [str(a) for a in args])

    async def _create(
        self, key: str, record: Any, expiresAt: Optional[float], index: str = "", indexKind: str = "",
        score: float = 0, member: str = "",
    ) -> bool:
        ttl = 0
        if expiresAt is not None:
            ttl = self._ttl(expiresAt)
            if ttl <= 0:
                return True  # already expired: nothing worth storing
        fields = _flatFields(record)
        created = await self._eval(
            _CREATE,
            [key, index or key],
            [_num(self._clock.seconds()), ttl, indexKind, _num(score), member, *fields],
        )
        return bool(created)

    async def _hash(self, key: str) -> Dict[str, str]:
        return _pairs(await self._command("HGETALL", key) or [])

    async def _hashes(self, keys: Sequence[str]) -> List[Dict[str, str]]:
        """
        C{HGETALL} several keys, all in flight together.
        """
        try:
            return await gatherResults(
                [Deferred.fromCoroutine(self._hash(key)) for key in keys], consumeErrors=True
            )
        except FirstError as e:
            e.subFailure.raiseException()
            raise  # pragma: no cover

    # -- clients

    def createClient(self, record: ClientRecord) -> "Deferred[None]":
        async def create() -> None:
            key = self._key("client", record.clientID)
            if not await self._create(key, record, None, self._key("clients"), "set", 0, record.clientID):
                raise Conflict(record.clientID)

        return self._call(create())

    def getClient(self, clientID: str) -> "Deferred[ClientRecord]":
        async def get() -> ClientRecord:
            h = await self._hash(self._key("client", clientID))
            if not h:
                raise NoSuchClient(clientID)
            return fromStrings(ClientRecord, h)

        return self._call(get())

    def listClients(self) -> "Deferred[List[ClientRecord]]":
        async def list_() -> List[ClientRecord]:
            ids = sorted(await self._command("SMEMBERS", self._key("clients")) or [])
            hashes = await self._hashes([self._key("client", clientID) for clientID in ids])
            return [fromStrings(ClientRecord, h) for h in hashes if h]

        return self._call(list_())

    def updateClient(self, record: ClientRecord) -> "Deferred[None]":
        async def update() -> None:
            fields = _flatFields(record)
            if not await self._eval(_REPLACE, [self._key("client", record.clientID)], fields):
                raise NoSuchClient(record.clientID)

        return self._call(update())

    def deleteClient(self, clientID: str) -> "Deferred[None]":
        async def delete() -> None:
            removed = await self._eval(
                _DELETE, [self._key("client", clientID), self._key("clients")], [clientID]
            )
            if not removed:
                raise NoSuchClient(clientID)

        return self._call(delete())

    def removeIdleDocumentClients(self, staleBefore: float, now: float) -> "Deferred[int]":
        """
        Not one atomic step (the decision reads JSON metadata and the
        families): each record is removed only if its metadata is still
        the one read (a use meanwhile renews it), and a family created in
        between can only be for a client resolved just now, whose record
        was renewed then. Removing a document client's record is harmless
        anyway: it is a cached copy, fetched again on its next use.
        """

        async def remove() -> int:
            ids = [i for i in await self._command("SMEMBERS", self._key("clients")) or []
                   if i[:4].lower() == "http"]
            hashes = await self._hashes([self._key("client", i) for i in sorted(ids)])
            idle = [h for h in hashes
                    if h and isIdleDocumentClient(fromStrings(ClientRecord, h).metadata, staleBefore)]
            if not idle:
                return 0
            familyIDs = await self._command(
                "ZRANGEBYSCORE", self._key("families"), f"({_num(now)}", "+inf") or []
            families = await self._hashes([self._key("family", f) for f in sorted(familyIDs)])
            live = {f.get("clientID") for f in families if self._isLive(f, now)}
            removed = 0
            for h in idle:
                if h["clientID"] in live:
                    continue
                removed += int(await self._eval(
                    _DELETE_UNCHANGED, [self._key("client", h["clientID"]), self._key("clients")],
                    [h["clientID"], h.get("metadata", "")],
                ))
            return removed

        return self._call(remove())

    # -- codes

    def storeCode(self, record: CodeRecord) -> "Deferred[None]":
        async def store() -> None:
            if not await self._create(self._key("code", record.codeHash), record, record.expiresAt):
                raise Conflict(record.codeHash)

        return self._call(store())

    def consumeCode(
        self,
        codeHash: str,
        now: float,
        clientID: Optional[str] = None,
        codeChallenge: Optional[str] = None,
        redirectURI: Optional[str] = None,
    ) -> "Deferred[CodeRecord]":
        checks: List[str] = []
        for value in (clientID, redirectURI, codeChallenge):
            checks += ["0", ""] if value is None else ["1", value]

        async def consume() -> CodeRecord:
            reply = await self._eval(_CONSUME, [self._key("code", codeHash)], [_num(now), *checks])
            status = reply[0]
            if status == "missing":
                raise NoSuchCode(codeHash)
            if status == "mismatch":
                raise CodeMismatch(reply[1])
            fields = _pairs(reply[1:])
            record = fromStrings(CodeRecord, fields)
            if status == "used":
                raise AlreadyUsed(record)
            return record

        return self._call(consume())

    # -- refresh families

    def createFamily(self, family: RefreshFamily) -> "Deferred[None]":
        async def create() -> None:
            created = await self._create(
                self._key("family", family.familyID), family, family.expiresAt,
                self._key("families"), "zset", family.expiresAt, family.familyID,
            )
            if not created:
                raise Conflict(family.familyID)

        return self._call(create())

    @staticmethod
    def _isLive(h: Mapping[str, str], now: float) -> bool:
        return bool(h) and h.get("revoked") != "1" and now < float(h["expiresAt"])

    def getFamily(self, familyID: str, now: float) -> "Deferred[RefreshFamily]":
        async def get() -> RefreshFamily:
            h = await self._hash(self._key("family", familyID))
            if not self._isLive(h, now):
                raise NoSuchFamily(familyID)
            return fromStrings(RefreshFamily, h)

        return self._call(get())

    def rotateRefresh(
        self,
        familyID: str,
        presentedHash: str,
        newHash: str,
        sealedSuccessor: str,
        graceUntil: float,
        accessJTI: str,
        accessExpiresAt: float,
        now: float,
        issued: bool = False,
        maxGraceReplays: int = 1,
    ) -> "Deferred[RotationResult]":
        async def rotate() -> RotationResult:
            reply = await self._eval(
                _ROTATE,
                [self._key("family", familyID), self._key("families")],
                [_num(now), presentedHash, newHash, sealedSuccessor, _num(graceUntil),
                 accessJTI, _num(accessExpiresAt), self._prefix, "1" if issued else "0",
                 int(maxGraceReplays)],
            )
            if reply[0] == "missing":
                raise NoSuchFamily(familyID)
            return RotationResult(
                outcome=RotationOutcome(reply[0]),
                family=fromStrings(RefreshFamily, _pairs(reply[1:])),
            )

        return self._call(rotate())

    def revokeFamily(self, familyID: str, now: float) -> "Deferred[Optional[RefreshFamily]]":
        async def revoke() -> Optional[RefreshFamily]:
            reply = await self._eval(
                _REVOKE,
                [self._key("family", familyID), self._key("families")],
                [_num(now), self._prefix],
            )
            if not reply:
                return None
            return fromStrings(RefreshFamily, _pairs(reply))

        return self._call(revoke())

    def listFamilies(self, clientID: Optional[str], now: float) -> "Deferred[List[RefreshFamily]]":
        async def list_() -> List[RefreshFamily]:
            ids = await self._command("ZRANGEBYSCORE", self._key("families"), f"({_num(now)}", "+inf") or []
            hashes = await self._hashes([self._key("family", familyID) for familyID in sorted(ids)])
            return [
                fromStrings(RefreshFamily, h)
                for h in hashes
                if self._isLive(h, now) and (clientID is None or h.get("clientID") == clientID)
            ]

        return self._call(list_())

    # -- revocations

    def revokeJTI(self, jti: str, expiresAt: float) -> "Deferred[None]":
        async def revoke() -> None:
            await self._eval(
                _DENY, [self._key("revoked", jti)], [_num(expiresAt), _num(self._clock.seconds())]
            )

        return self._call(revoke())

    def isRevoked(self, jti: str, now: float) -> "Deferred[bool]":
        """
        Coalesced: a check asked while none is in flight goes to Redis at
        once (one C{GET}); checks asked while one is in flight wait for it
        and then go together in one C{MGET}. Each check still reads Redis
        after it was asked (never an earlier answer), so a revocation
        written by any instance before a request arrives is always seen.
        Under load this turns N commands, N replies to parse and N reactor
        wake-ups into one of each.
        """
        return self.isAnyRevoked((jti,), now)

    def isAnyRevoked(self, ids: Sequence[str], now: float) -> "Deferred[bool]":
        return self._revocations.ask(ids, now)

    def _checkRevocations(self, batch: RevocationBatch) -> "Deferred[List[bool]]":
        keys = [self._key("revoked", jti) for ids, _ in batch for jti in ids]

        async def check() -> List[bool]:
            if len(keys) == 1:
                values = [await self._command("GET", keys[0])]
            else:
                values = list(await self._command("MGET", *keys))
            answers = iter(values)
            results = []
            for ids, now in batch:
                revoked = False
                for jti in ids:
                    value = next(answers)
                    try:
                        revoked = revoked or (value is not None and now < float(value))
                    except (TypeError, ValueError):
                        log.error("Unreadable revocation entry for {jti}: treated as revoked", jti=jti)
                        revoked = True  # fail closed
                results.append(revoked)
            return results

        return self._call(check())

    # -- sessions

    def _principalIndex(self, subject: str, clientID: str) -> str:
        digest = hashlib.sha1(
            (subject + "\0" + clientID).encode("utf-8"), usedforsecurity=False
        ).hexdigest()
        return self._key("psessions", digest)

    def createSession(self, record: SessionRecord, limit: Optional[int] = None) -> "Deferred[List[str]]":
        async def create() -> List[str]:
            ttl = self._ttl(record.expiresAt)
            if ttl <= 0:
                return []  # already expired: nothing worth storing
            fields = _flatFields(record)
            result = await self._eval(
                _CREATE_SESSION,
                [self._key("session", record.sessionID), self._key("sessions"),
                 self._principalIndex(record.subject, record.clientID)],
                [_num(self._clock.seconds()), ttl, _num(record.expiresAt), record.sessionID,
                 _num(record.createdAt), "" if limit is None else str(int(limit)),
                 self._key("session", "x")[:-1], *fields],
            )
            if not result or int(result[0]) != 1:
                raise Conflict(record.sessionID)
            return [e.decode("utf-8") if isinstance(e, bytes) else str(e) for e in result[1:]]

        return self._call(create())

    def getSession(self, sessionID: str, now: float) -> "Deferred[SessionRecord]":
        async def get() -> SessionRecord:
            h = await self._hash(self._key("session", sessionID))
            if not h or now >= float(h["expiresAt"]):
                raise NoSuchSession(sessionID)
            return fromStrings(SessionRecord, h)

        return self._call(get())

    def touchSession(self, sessionID: str, expiresAt: float, now: float) -> "Deferred[None]":
        async def touch() -> None:
            touched = await self._eval(
                _TOUCH,
                [self._key("session", sessionID), self._key("sessions")],
                [_num(now), _num(expiresAt), self._ttl(expiresAt, now), sessionID, self._prefix],
            )
            if not touched:
                raise NoSuchSession(sessionID)

        return self._call(touch())

    def deleteSession(self, sessionID: str) -> "Deferred[bool]":
        async def delete() -> bool:
            existed = await self._eval(
                _END_SESSION,
                [self._key("session", sessionID), self._key("sessions")],
                [_num(self._clock.seconds()), sessionID, self._prefix],
            )
            return bool(existed)

        return self._call(delete())

    def countSessions(self, now: float) -> "Deferred[int]":
        async def count() -> int:
            return int(await self._command("ZCOUNT", self._key("sessions"), f"({_num(now)}", "+inf"))

        return self._call(count())

    # -- rate limits

    def takeToken(
        self, key: str, capacity: int, refillPerSecond: float, now: float, cost: int = 1
    ) -> "Deferred[RateDecision]":
        if refillPerSecond <= 0:
            # same validation as the other backends
            takeFromBucket(None, now, capacity, refillPerSecond, now, cost)

        async def take() -> RateDecision:
            allowed, tokens, retry = await self._eval(
                _TAKE,
                [self._key("bucket", key)],
                [int(capacity), repr(float(refillPerSecond)), _num(now), int(cost)],
            )
            return RateDecision(
                allowed=bool(int(allowed)),
                remaining=int(math.floor(float(tokens))),
                retryAfter=float(retry),
            )

        return self._call(take())

    # -- tasks

    def createTask(self, record: TaskRecord, limit: Optional[int] = None) -> "Deferred[None]":
        """
        One Lua script: the principal's live tasks are counted from its
        index (C{tasks:<sha256 of subject NUL clientID>}) and the task is
        created, atomically.
        """

        async def create() -> None:
            ttl = self._ttl(record.expiresAt)
            if ttl <= 0:
                return  # already expired: nothing worth storing
            fields = _flatFields(record)
            principal = hashlib.sha256(
                record.subject.encode("utf-8") + b"\0" + record.clientID.encode("utf-8")
            ).hexdigest()
            created = int(await self._eval(
                _CREATE_TASK,
                [self._key("task", record.taskID), self._key("tasks", principal)],
                [_num(self._clock.seconds()), ttl, "" if limit is None else str(int(limit)),
                 _num(record.createdAt), _num(record.expiresAt), record.taskID,
                 self._key("task", "x")[:-1], *fields],
            ))
            if created == 0:
                raise Conflict(record.taskID)
            if created < 0:
                raise TooManyTasks(int(limit or 0))

        return self._call(create())

    def getTask(self, taskID: str, now: float) -> "Deferred[TaskRecord]":
        async def get() -> TaskRecord:
            h = await self._hash(self._key("task", taskID))
            if not h or float(h.get("expiresAt", 0)) <= now:
                raise NoSuchTask(taskID)
            return fromStrings(TaskRecord, h)

        return self._call(get())

    def replaceTask(self, record: TaskRecord, now: float) -> "Deferred[bool]":
        async def replace() -> bool:
            fields = _flatFields(record)
            replaced = int(await self._eval(
                _REPLACE_TASK,
                [self._key("task", record.taskID)],
                [_num(now), str(record.version - 1), self._ttl(record.expiresAt, now), *fields],
            ))
            if replaced < 0:
                raise NoSuchTask(record.taskID)
            return replaced == 1

        return self._call(replace())

    # -- client assertions

    def useAssertionID(self, clientID: str, jti: str, expiresAt: float, now: float) -> "Deferred[bool]":
        """
        One Lua script (atomic): a live entry (its C{expiresAt} after the
        caller's C{now}) is a replay; otherwise C{SET ... PX}, so Redis
        forgets the entry when it expires.
        """

        async def use() -> bool:
            ttl = self._ttl(expiresAt, now)
            if ttl <= 0:
                return True
            digest = hashlib.sha256(
                clientID.encode("utf-8") + b"\0" + jti.encode("utf-8")
            ).hexdigest()
            reply = await self._eval(
                _USE_ASSERTION, [self._key("assertion", digest)], [_num(now), _num(expiresAt), ttl]
            )
            return bool(reply)

        return self._call(use())

    # -- operations

    def ping(self) -> "Deferred[None]":
        async def ping() -> None:
            await self._command("PING")

        return self._call(ping())

    def sweep(self, now: float) -> "Deferred[SweepReport]":
        """
        Records expire by TTL; trim the sorted-set indexes of families and
        sessions past their expiry.
        """

        async def sweep() -> SweepReport:
            bound = _num(now)
            families = await self._command("ZREMRANGEBYSCORE", self._key("families"), "-inf", bound)
            sessions = await self._command("ZREMRANGEBYSCORE", self._key("sessions"), "-inf", bound)
            return SweepReport(removed={"familyIndex": int(families), "sessionIndex": int(sessions)})

        return self._call(sweep())
