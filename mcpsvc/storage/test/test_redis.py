# -*- test-case-name: mcpsvc.storage.test.test_redis -*-
"""
Tests for L{mcpsvc.storage.redis} against a real C{redis-server} that the
tests start themselves (L{mcpsvc.testing.redis.RedisServer}); a missing
C{redis-server} is a failure, not a skip.
"""

from __future__ import annotations

import atexit
import os
import tempfile
import uuid
from typing import Any, Optional

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.trial.unittest import SynchronousTestCase, TestCase

from mcpsvc.storage.interfaces import NoSuchFamily, RotationOutcome, StoreUnavailable
from mcpsvc.storage.redis import RedisConnection, RedisStore, parseRedisURL, redisConnector
from mcpsvc.storage.test.base import EPOCH, StoreTestsMixin, client, code, family, session
from mcpsvc.testing.redis import RedisServer

_shared: Optional[RedisServer] = None


def sharedServer() -> RedisServer:
    """
    One server for the conformance suite (each test uses its own key
    prefix), stopped when the test process exits.
    """
    global _shared
    if _shared is None or not _shared.running:
        _shared = RedisServer(tempfile.mkdtemp(prefix="mcpsvc-redis-")).start()
        atexit.register(_shared.stop)
    return _shared


def openStore(testCase: Any, url: str, clock: Any, timeout: float = 5.0, prefix: Optional[str] = None,
              maxRetryDelay: float = 2.0) -> RedisStore:
    connection = RedisConnection(redisConnector(url=url, timeout=timeout, maxRetryDelay=maxRetryDelay))
    connection.open()
    testCase.addCleanup(connection.close)
    return RedisStore(connection, clock, prefix or f"test:{uuid.uuid4().hex}:", timeout)


class RedisStoreTests(StoreTestsMixin, TestCase):
    """
    The conformance suite against a real Redis.
    """

    def makeStore(self) -> RedisStore:
        self.server = sharedServer()
        self.prefix = f"test:{uuid.uuid4().hex}:"
        return openStore(self, self.server.url, self.clock, prefix=self.prefix)

    async def test_familyWithoutGraceReplays(self) -> None:
        """
        A family written before C{graceReplays} existed reads as 0 replays
        and rotates and replays as usual.
        """
        await self.store.createFamily(family())
        self.server.command("HDEL", self.prefix + "family:fam-1", "graceReplays")
        self.assertEqual(await self.store.getFamily("fam-1", self.now()), family())
        now = self.now()
        await self.rotate("sha256:r0", "sha256:r1", now)
        self.server.command("HDEL", self.prefix + "family:fam-1", "graceReplays")
        result = await self.rotate("sha256:r0", "sha256:x", now)
        self.assertEqual((result.outcome, result.family.graceReplays), (RotationOutcome.GRACE, 1))

    async def test_ttls(self) -> None:
        """
        Redis forgets records by itself: TTLs follow C{expiresAt}.
        """
        await self.store.storeCode(code(expiresAt=self.now() + 600))
        await self.store.createFamily(family(expiresAt=self.now() + 86400))
        await self.store.revokeJTI("j", self.now() + 30)
        await self.store.createSession(session(expiresAt=self.now() + 3600))
        await self.store.takeToken("b", 10, 2, self.now(), 4)
        pttl = lambda key: self.server.command("PTTL", self.prefix + key)  # noqa: E731
        self.assertTrue(599_000 < pttl("code:" + code().codeHash) <= 600_000)
        self.assertTrue(86_399_000 < pttl("family:fam-1") <= 86_400_000)
        self.assertTrue(29_000 < pttl("revoked:j") <= 30_000)
        self.assertTrue(3_599_000 < pttl("session:sess-1") <= 3_600_000)
        self.assertTrue(1_000 < pttl("bucket:b") <= 2_000)  # full again in 4 / 2 s
        await self.store.touchSession("sess-1", self.now() + 7200, self.now())
        self.assertTrue(7_199_000 < pttl("session:sess-1") <= 7_200_000)
        self.assertEqual(self.server.command("PTTL", self.prefix + "client:none"), -2)

    async def test_principalIndex(self) -> None:
        """
        A principal's session index lives at least as long as its longest
        session (so a session used for long is still counted), and a
        deleted session leaves it; nothing is left behind.
        """
        import hashlib

        digest = hashlib.sha1(b"alice\0client-1").hexdigest()
        index = self.prefix + "psessions:" + digest
        await self.store.createSession(session("s1", expiresAt=self.now() + 600))
        await self.store.createSession(session("s2", expiresAt=self.now() + 60))
        self.assertTrue(599_000 < self.server.command("PTTL", index) <= 600_000)
        await self.store.touchSession("s2", self.now() + 7200, self.now())
        self.assertTrue(7_199_000 < self.server.command("PTTL", index) <= 7_200_000)
        # Scored by last use: the touch moved s2 after s1.
        self.assertEqual(self.server.command("ZRANGE", index, 0, -1), ["s1", "s2"])
        self.assertEqual(float(self.server.command("ZSCORE", index, "s2")), self.now() + 7200)
        await self.store.deleteSession("s1")
        self.assertEqual(self.server.command("ZRANGE", index, 0, -1), ["s2"])
        # A session from before the index existed joins it when touched.
        self.server.command("DEL", index)
        await self.store.touchSession("s2", self.now() + 7300, self.now())
        self.assertEqual(
            await self.store.createSession(session("s3", expiresAt=self.now() + 60), limit=1), ["s2"])
        self.assertEqual(self.server.command("ZRANGE", index, 0, -1), ["s3"])
        await self.store.deleteSession("s3")
        self.assertEqual(self.server.command("KEYS", self.prefix + "*"), [])

    async def test_principalIndexStaleMembers(self) -> None:
        """
        Members whose session is gone (a reset, an eviction by Redis) or
        scored by an older release (C{createdAt}) do not count against the
        limit, and are dropped or rescored when it is next counted.
        """
        import hashlib

        index = self.prefix + "psessions:" + hashlib.sha1(b"alice\0client-1").hexdigest()
        await self.store.createSession(session("s1", expiresAt=self.now() + 600, createdAt=self.now()))
        self.server.command("ZADD", index, str(self.now()), "s1")
        self.server.command("ZADD", index, str(self.now() + 900), "lost")
        self.assertEqual(
            await self.store.createSession(session("s2", expiresAt=self.now() + 60), limit=2), [])
        self.assertEqual(self.server.command("ZRANGE", index, 0, -1), ["s2", "s1"])
        self.assertEqual(float(self.server.command("ZSCORE", index, "s1")), self.now() + 600)
        self.assertEqual(await self.store.countSessions(self.now()), 2)

    async def test_expiredNotStored(self) -> None:
        await self.store.storeCode(code(expiresAt=self.now() - 1))
        self.assertEqual(self.server.command("KEYS", self.prefix + "*"), [])

    async def test_prefix(self) -> None:
        await self.store.createClient(client())
        await self.store.createFamily(family())
        await self.store.revokeFamily("fam-1", self.now())
        keys = self.server.command("KEYS", self.prefix + "*")
        self.assertEqual(
            sorted(k[len(self.prefix):] for k in keys),
            ["client:client-1", "clients", "family:fam-1", "revoked:family:fam-1", "revoked:jti-0"],
        )

    async def test_sweepTrimsIndexes(self) -> None:
        await self.store.createFamily(family("f1", expiresAt=self.now() + 5))
        await self.store.createFamily(family("f2"))
        await self.store.createSession(session("s1", expiresAt=self.now() + 5))
        report = await self.store.sweep(self.now() + 10)
        self.assertEqual(dict(report.removed), {"familyIndex": 1, "sessionIndex": 1})
        self.assertEqual(self.server.command("ZRANGE", self.prefix + "families", 0, -1), ["f2"])
        self.assertEqual(self.server.command("ZCARD", self.prefix + "sessions"), 0)

    async def test_revokedFamilyLeavesIndex(self) -> None:
        await self.store.createFamily(family())
        await self.store.revokeFamily("fam-1", self.now())
        self.assertEqual(self.server.command("ZCARD", self.prefix + "families"), 0)
        await self.assertFails(self.store.getFamily("fam-1", self.now()), NoSuchFamily)

    async def test_revocationChecksCoalesced(self) -> None:
        """
        Revocation checks asked together reach Redis as one C{GET} (the
        first, at once) and one C{MGET} (the rest, when it answers), and
        each gets its own answer.
        """
        from twisted.internet.defer import gatherResults

        for i in range(0, 40, 2):
            await self.store.revokeJTI(f"j{i}", self.now() + 60)
        await self.store.revokeJTI("old", self.now() + 1)

        def calls(name: str) -> int:
            for line in self.server.command("INFO", "commandstats").splitlines():
                if line.startswith(f"cmdstat_{name}:"):
                    return int(line.split("calls=")[1].split(",")[0])
            return 0

        before = (calls("get"), calls("mget"))
        checks = [self.store.isRevoked(f"j{i}", self.now()) for i in range(40)]
        checks.append(self.store.isRevoked("old", self.now() + 2))
        results = await gatherResults(checks)
        self.assertEqual(results, [i % 2 == 0 for i in range(40)] + [False])
        self.assertEqual((calls("get") - before[0], calls("mget") - before[1]), (1, 1))

    async def test_notOpen(self) -> None:
        store = RedisStore(RedisConnection(lambda: None), self.clock, "x:", 1.0)
        await self.assertFails(store.ping(), StoreUnavailable)
        await self.assertFails(store.isRevoked("j", EPOCH), StoreUnavailable)

    async def test_database(self) -> None:
        store = openStore(self, self.server.url.rsplit("/", 1)[0] + "/3", self.clock)
        await store.createClient(client())
        self.assertIn("db3:keys=", self.server.command("INFO", "keyspace"))


class RedisAuthTests(TestCase):
    """
    Password-protected servers.
    """

    def setUp(self) -> None:
        self.server = RedisServer(self.mktemp(), password="s3cr\u00e9t pw").start()
        self.addCleanup(self.server.stop)

    async def test_password(self) -> None:
        url = f"redis://:{'s3cr%C3%A9t%20pw'}@127.0.0.1:{self.server.port}/0"
        store = openStore(self, url, reactor, timeout=5.0)
        await store.createClient(client())
        self.assertEqual((await store.getClient("client-1")).clientID, "client-1")

    async def test_passwordFixedRecovers(self) -> None:
        """
        A refused AUTH does not stop the pool for good (txredisapi would
        stop reconnecting): once Redis accepts the password, the same
        store works again without a restart.
        """
        store = openStore(self, f"redis://:later@127.0.0.1:{self.server.port}/0", reactor,
                          timeout=0.3, maxRetryDelay=0.2)
        with self.assertRaises(StoreUnavailable):
            await store.ping()
        self.server.command("CONFIG", "SET", "requirepass", "later")
        self.server.password = "later"
        for attempt in range(100):  # bounded: each attempt waits at most the 0.3 s timeout
            try:
                await store.ping()
                break
            except StoreUnavailable:
                continue
        else:
            self.fail("the store never reconnected after the password was fixed")
        await store.createClient(client())
        self.assertEqual((await store.getClient("client-1")).clientID, "client-1")
        self.flushLoggedErrors()

    async def test_wrongPassword(self) -> None:
        store = openStore(self, f"redis://:wrong@127.0.0.1:{self.server.port}/0", reactor, timeout=0.5)
        try:
            await store.ping()
        except StoreUnavailable:
            pass
        else:
            self.fail("ping succeeded with a wrong password")


class RedisOutageTests(TestCase):
    """
    A Redis outage fails calls quickly with L{StoreUnavailable}; when Redis
    comes back, the same store works again without any restart.
    """

    timeout = 60

    def setUp(self) -> None:
        self.server = RedisServer(self.mktemp()).start()
        self.addCleanup(self.server.stop)

    async def assertUnavailableQuickly(self, d: "Deferred[Any]", limit: float) -> None:
        started = reactor.seconds()
        try:
            result = await d
        except StoreUnavailable:
            pass
        else:
            self.fail(f"succeeded during the outage: {result!r}")
        self.assertLess(reactor.seconds() - started, limit)

    async def test_outageAndRecovery(self) -> None:
        store = openStore(self, self.server.url, reactor, timeout=0.5, maxRetryDelay=0.5)
        await store.createClient(client())
        self.assertFalse(await store.isRevoked("j", EPOCH))
        self.server.stop()
        await self.assertUnavailableQuickly(store.isRevoked("j", EPOCH), 2.0)
        await self.assertUnavailableQuickly(store.consumeCode("sha256:x", EPOCH), 2.0)
        await self.assertUnavailableQuickly(store.ping(), 2.0)
        self.server.start()  # same port; data is gone (no AOF here)
        for attempt in range(40):
            try:
                await store.ping()
                break
            except StoreUnavailable:
                await deferLater(reactor, 0.1, lambda: None)
        else:
            self.fail("Redis did not come back within 40 attempts")
        now = reactor.seconds()
        await store.revokeJTI("j", now + 100)
        self.assertTrue(await store.isRevoked("j", now))
        await store.createClient(client("after"))

    async def test_refusedAtStart(self) -> None:
        self.server.stop()
        store = openStore(self, self.server.url, reactor, timeout=0.3)
        await self.assertUnavailableQuickly(store.ping(), 2.0)
        await self.assertUnavailableQuickly(store.isRevoked("j", EPOCH), 2.0)


class ParseURLTests(SynchronousTestCase):
    def test_plain(self) -> None:
        self.assertEqual(
            parseRedisURL("redis://localhost"),
            {"host": "localhost", "port": 6379, "username": None, "password": None, "db": 0, "tls": False},
        )

    def test_full(self) -> None:
        self.assertEqual(
            parseRedisURL("rediss://user:p%40ss@redis.example:6380/2"),
            {"host": "redis.example", "port": 6380, "username": "user", "password": "p@ss", "db": 2, "tls": True},
        )

    def test_passwordOnlyAndQueryDB(self) -> None:
        parsed = parseRedisURL("redis://:pw@[::1]:7000?db=5")
        self.assertEqual((parsed["host"], parsed["port"], parsed["password"], parsed["db"]), ("::1", 7000, "pw", 5))

    def test_badScheme(self) -> None:
        self.assertRaises(ValueError, parseRedisURL, "http://x")

    def test_noIOUntilCalled(self) -> None:
        connect = redisConnector(url="redis://127.0.0.1:1/0")
        self.assertTrue(callable(connect))
        connection = RedisConnection(connect)
        self.assertRaises(StoreUnavailable, lambda: connection.handler)


class SentinelTests(TestCase):
    """
    The master is found through a real Sentinel (C{REDIS_SENTINELS} and
    C{REDIS_SENTINEL_MASTER}).
    """

    async def test_sentinel(self) -> None:
        master = RedisServer(os.path.join(self.mktemp(), "master")).start()
        self.addCleanup(master.stop)
        sentinel = RedisServer(
            os.path.join(self.mktemp(), "sentinel"), sentinelFor=("mymaster", master.port)
        ).start()
        self.addCleanup(sentinel.stop)
        connection = RedisConnection(
            redisConnector(sentinels=[("127.0.0.1", sentinel.port)], sentinelMaster="mymaster", db=2, timeout=5.0)
        )
        connection.open()
        self.addCleanup(connection.close)
        store = RedisStore(connection, reactor, "sentinel:", 5.0)
        await store.createClient(client())
        self.assertEqual((await store.getClient("client-1")).clientID, "client-1")
        self.assertIn("db2:keys=", master.command("INFO", "keyspace"))

    async def test_sentinelUsername(self) -> None:
        """
        Through Sentinel, the master is authenticated as the URL's ACL user
        (it was the default user, with the password only).
        """
        master = RedisServer(os.path.join(self.mktemp(), "master")).start()
        self.addCleanup(master.stop)
        master.command("ACL", "SETUSER", "svc", "on", ">svc-password", "~*", "&*", "+@all")
        sentinel = RedisServer(
            os.path.join(self.mktemp(), "sentinel"), sentinelFor=("mymaster", master.port)
        ).start()
        self.addCleanup(sentinel.stop)
        connection = RedisConnection(
            redisConnector(url="redis://svc:svc-password@ignored.invalid:1/0",
                           sentinels=[("127.0.0.1", sentinel.port)], sentinelMaster="mymaster",
                           timeout=5.0, poolSize=1)
        )
        connection.open()
        self.addCleanup(connection.close)
        store = RedisStore(connection, reactor, "sentinel:", 5.0)
        await store.createClient(client())
        clients = master.command("CLIENT", "LIST")
        self.assertIn("user=svc", clients)

    def test_sentinelWithTLSRefused(self) -> None:
        """
        Sentinel with C{rediss://} is refused: the Sentinel client would
        connect without TLS and send the password in clear.
        """
        self.assertRaises(
            ValueError, redisConnector, url="rediss://:pw@redis.example:6380/0",
            sentinels=[("127.0.0.1", 26379)], sentinelMaster="mymaster",
        )


class ParserTests(SynchronousTestCase):
    def test_hiredis(self) -> None:
        """
        txredisapi parses replies with hiredis (a dependency): its
        pure-Python parser pauses the transport and waits a reactor
        iteration for every element of a reply (a session read or an
        C{MGET} of revocations would cost one iteration per field).
        """
        import txredisapi

        self.assertIs(txredisapi.RedisProtocol, txredisapi.HiredisProtocol)


class RedisServerHelperTests(SynchronousTestCase):
    """
    L{RedisServer} itself.
    """

    def test_missingExecutable(self) -> None:
        from mcpsvc.testing.redis import RedisServerError

        server = RedisServer(self.mktemp(), executable="/nonexistent/redis-server")
        e = self.assertRaises(RedisServerError, server.start)
        self.assertIn("redis-server not found", str(e))

    def test_restartKeepsPortAndAOF(self) -> None:
        server = RedisServer(self.mktemp(), appendonly=True)
        self.addCleanup(server.stop)
        port = server.start().port
        self.assertEqual(server.command("SET", "k", "v"), "OK")
        server.kill()
        self.assertFalse(server.running)
        server.start()
        self.assertEqual((server.port, server.command("GET", "k")), (port, "v"))
        self.assertEqual(server.url, f"redis://127.0.0.1:{port}/0")


class _HangingHandler:
    """
    A txredisapi stand-in whose commands never answer (until cancelled).
    """

    def __init__(self) -> None:
        self.pending: list = []

    def execute_command(self, *args: Any) -> "Deferred[Any]":
        d: Deferred[Any] = Deferred()
        self.pending.append(d)
        return d

    def disconnect(self) -> "Deferred[None]":
        return Deferred.fromCoroutine(_noop())


async def _noop() -> None:
    return None


class _RecordingHandler(_HangingHandler):
    """
    A txredisapi stand-in that records each command with its Deferred.
    """

    def execute_command(self, *args: Any) -> "Deferred[Any]":
        d = super().execute_command(*args)
        self.commands.append(args)
        return d

    def __init__(self) -> None:
        super().__init__()
        self.commands: list = []


class RevocationCoalescingTests(SynchronousTestCase):
    """
    L{RedisStore.isRevoked} batches the checks asked while one is in
    flight; each check is sent to Redis only after it was asked.
    """

    def makeStore(self) -> "tuple[RedisStore, _RecordingHandler]":
        from twisted.internet.task import Clock

        handler = _RecordingHandler()
        connection = RedisConnection(lambda: handler)
        connection.open()
        return RedisStore(connection, Clock(), "t:", timeout=5.0), handler

    def test_batches(self) -> None:
        store, handler = self.makeStore()
        first = store.isRevoked("a", EPOCH)
        self.assertEqual(handler.commands, [("GET", "t:revoked:a")])
        second = store.isRevoked("b", EPOCH)
        third = store.isRevoked("c", EPOCH)
        gone = store.isRevoked("d", EPOCH)
        gone.cancel()
        self.failureResultOf(gone)
        self.assertEqual(len(handler.commands), 1)  # they wait for the first
        handler.pending[0].callback(None)
        self.assertIs(self.successResultOf(first), False)
        self.assertEqual(handler.commands[1], ("MGET", "t:revoked:b", "t:revoked:c", "t:revoked:d"))
        handler.pending[1].callback([str(EPOCH + 10), str(EPOCH - 1), None])
        self.assertIs(self.successResultOf(second), True)
        self.assertIs(self.successResultOf(third), False)  # that entry had expired
        # Idle again: the next check goes at once, alone.
        store.isRevoked("e", EPOCH)
        self.assertEqual(handler.commands[2], ("GET", "t:revoked:e"))

    def test_failureReachesEveryWaiter(self) -> None:
        """
        A batch that fails fails each of its checks with
        L{StoreUnavailable} (fail closed), and the next batch still goes.
        """
        store, handler = self.makeStore()
        store.isRevoked("a", EPOCH)
        waiting = [store.isRevoked(j, EPOCH) for j in ("b", "c")]
        handler.pending[0].callback(None)
        handler.pending[1].errback(ConnectionError("gone"))
        for d in waiting:
            self.failureResultOf(d, StoreUnavailable)
        self.flushLoggedErrors()
        later = store.isRevoked("z", EPOCH)
        handler.pending[2].callback(str(EPOCH + 5))
        self.assertIs(self.successResultOf(later), True)

    def test_unreadableEntryIsRevoked(self) -> None:
        from twisted.logger import capturedLogs

        store, handler = self.makeStore()
        d = store.isRevoked("a", EPOCH)
        with capturedLogs() as events:
            handler.pending[0].callback("garbage")
        self.assertIs(self.successResultOf(d), True)
        self.assertIn("Unreadable revocation entry", " ".join(str(e.get("log_format")) for e in events))


class CancellationTests(SynchronousTestCase):
    """
    A call cancelled by its caller fails with C{CancelledError}, not
    L{StoreUnavailable}, and logs nothing; the store's own deadline is
    still an outage.
    """

    def makeStore(self) -> "tuple[RedisStore, Any]":
        from twisted.internet.task import Clock

        clock = Clock()
        connection = RedisConnection(_HangingHandler)
        connection.open()
        return RedisStore(connection, clock, "t:", timeout=5.0), clock

    def test_callerCancels(self) -> None:
        from twisted.internet.defer import CancelledError
        from twisted.logger import capturedLogs

        store, _ = self.makeStore()
        d = store.isRevoked("j", EPOCH)
        with capturedLogs() as events:
            d.cancel()
        self.failureResultOf(d, CancelledError)
        self.assertEqual([e for e in events if e.get("log_level") is not None and
                          e["log_level"].name in ("error", "critical")], [])

    def test_deadlineIsUnavailable(self) -> None:
        store, clock = self.makeStore()
        d = store.isRevoked("j", EPOCH)
        clock.advance(5.0)
        self.failureResultOf(d, StoreUnavailable)
        self.flushLoggedErrors()
