"""
High availability and several instances on Redis (issue 7, items 1 and 2).

Everything runs on loopback, started by the tests themselves in temporary
directories: a master, a replica (C{REPLICAOF}) and Sentinels
(C{down-after-milliseconds} 500) for the failover tests: one (quorum 1)
for the store-level test, three (quorum 2) for the process-level ones; one plain
C{redis-server} shared by two C{twistd -n mcpsvc} processes for the
several-instances test.

No test sleeps to let something happen: each waits for an event (a reply to
C{WAIT}, a Sentinel event such as C{+switch-master} on its pub/sub channel,
read by a thread; a store call or an HTTP request succeeding) with a bound
(a count of attempts, or a timeout on a condition), pausing briefly between
attempts only so as not to spin.

The failover tests print what they measured (run pytest with C{-s} to see
it): how long the Sentinel took and how long the store, or the process,
was unavailable.
"""

from __future__ import annotations

import base64
import json
import os
import select
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any, Dict, List, Optional, Tuple

from twisted.trial.unittest import SynchronousTestCase, TestCase

from mcpsvc.testing.redis import RedisServer, _encode
from tests.process import SECRET, McpsvcProcess

MASTER_NAME = "mymaster"
DOWN_AFTER_MS = 500
FAILOVER_TIMEOUT_MS = 3000
DCR_TOKEN = "dcr-" + "t" * 40
#: seconds from the Sentinel's +switch-master to serving again (measured:
#: 0.0 to 1.2, usually under 0.4; about 6 before mcpsvc.storage.redis
#: stopped waiting for the discovery timeout)
SWITCH_TO_SERVING = 2.0


# --------------------------------------------------------------------------
# Redis plumbing (blocking; loopback, tiny replies)


class _Incomplete(Exception):
    pass


def _parse(buffer: bytes, pos: int = 0) -> Tuple[Any, int]:
    """
    Parse one RESP2 reply from C{buffer} at C{pos}; return it and the
    position after it.

    @raise _Incomplete: if the buffer does not hold all of it yet.
    """
    end = buffer.find(b"\r\n", pos)
    if end < 0:
        raise _Incomplete()
    start = pos
    kind, rest, pos = buffer[pos:pos + 1], buffer[pos + 1:end], end + 2
    if kind == b"+":
        return rest.decode(), pos
    if kind == b"-":
        return RedisReplyError(rest.decode()), pos
    if kind == b":":
        return int(rest), pos
    if kind == b"$":
        n = int(rest)
        if n < 0:
            return None, pos
        if len(buffer) < pos + n + 2:
            raise _Incomplete()
        return buffer[pos:pos + n].decode("utf-8", "replace"), pos + n + 2
    if kind == b"*":
        n = int(rest)
        if n < 0:
            return None, pos
        items = []
        for _ in range(n):
            item, pos = _parse(buffer, pos)
            items.append(item)
        return items, pos
    raise AssertionError(f"unexpected reply {buffer[start:end]!r}")


class RedisReplyError(Exception):
    pass


class RedisLine:
    """
    One persistent connection to a Redis server or a Sentinel: for C{WAIT}
    (which is about the writes of I{this} connection) and for pub/sub.
    """

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.buffer = b""

    def read(self, timeout: float) -> Any:
        """
        The next reply, or L{TimeoutError} if none is complete within
        C{timeout} seconds.
        """
        deadline = time.monotonic() + timeout
        while True:
            try:
                reply, pos = _parse(self.buffer)
            except _Incomplete:
                pass
            else:
                self.buffer = self.buffer[pos:]
                if isinstance(reply, RedisReplyError):
                    raise reply
                return reply
            remaining = max(0.0, deadline - time.monotonic())
            ready, _, _ = select.select([self.sock], [], [], remaining)
            if not ready and time.monotonic() >= deadline:
                raise TimeoutError()
            if ready:
                chunk = self.sock.recv(65536)
                if not chunk:
                    raise ConnectionError("connection closed")
                self.buffer += chunk

    def command(self, *args: Any, timeout: float = 10.0) -> Any:
        self.sock.sendall(_encode(list(args)))
        return self.read(timeout)

    def close(self) -> None:
        self.sock.close()


def fields(flat: List[Any]) -> Dict[str, Any]:
    return {flat[i]: flat[i + 1] for i in range(0, len(flat), 2)}


class SentinelGroup:
    """
    A master, one replica and C{count} Sentinels (C{quorum} of them must
    agree the master is down), on loopback, in a temporary directory of
    C{testCase}, whose cleanup kills them.

    @ivar sentinel: the first Sentinel, whose events are recorded.
    @ivar allSentinels: every Sentinel.
    @ivar events: C{(time.monotonic(), channel, message)} of every
        Sentinel event the first Sentinel published (C{+sdown}, C{+odown},
        C{+switch-master}, ...).
    """

    def __init__(self, testCase: SynchronousTestCase, count: int = 1, quorum: int = 1) -> None:
        base = os.path.abspath(testCase.mktemp())
        self.master = RedisServer(os.path.join(base, "master"))
        self.replica = RedisServer(os.path.join(base, "replica"))
        self.allSentinels = [
            RedisServer(
                os.path.join(base, f"sentinel{i}"), sentinelFor=(MASTER_NAME, self.master.port),
                quorum=quorum,
            )
            for i in range(count)
        ]
        self.sentinel = self.allSentinels[0]
        self.events: List[Tuple[float, str, str]] = []
        for server in (self.master, self.replica):
            server.start()
            testCase.addCleanup(server.kill)
        # No 5-second pause before a full synchronisation (the default).
        self.master.command("CONFIG", "SET", "repl-diskless-sync-delay", "0")
        self.replica.command("REPLICAOF", self.master.host, self.master.port)
        self.waitReplicated()
        for sentinel in self.allSentinels:
            sentinel.start()
            testCase.addCleanup(sentinel.kill)
            sentinel.command(
                "SENTINEL", "SET", MASTER_NAME,
                "down-after-milliseconds", DOWN_AFTER_MS,
                "failover-timeout", FAILOVER_TIMEOUT_MS,
            )
        # The Sentinel's events, read and timestamped as they arrive by a
        # thread (the tests block, or run the reactor, meanwhile).
        self._events = RedisLine(self.sentinel.port)
        self._events.command("PSUBSCRIBE", "*")
        self._stopEvents = threading.Event()
        self._eventArrived = threading.Condition()
        reader = threading.Thread(target=self._readEvents, name="sentinel-events", daemon=True)
        reader.start()

        def stopReading() -> None:
            self._stopEvents.set()
            reader.join(5)
            self._events.close()

        testCase.addCleanup(stopReading)
        # The Sentinel learns about the replica from the master's INFO and
        # then connects to it; a failover needs both.
        # With several Sentinels, each must also know the others (they
        # find each other through hello messages on the master, every 2 s):
        # electing the leader of a failover takes a majority of them.
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.replicaKnown() and self.sentinelsKnown():
                break
            self._stopEvents.wait(0.05)  # a pause between polls, bounded by the deadline
        else:
            raise AssertionError(f"the Sentinels never saw the replica or each other: {self.events}")

    def _readEvents(self) -> None:
        while not self._stopEvents.is_set():
            try:
                message = self._events.read(0.1)
            except TimeoutError:
                continue
            except OSError:
                return
            if isinstance(message, list) and message and message[0] == "pmessage":
                with self._eventArrived:
                    self.events.append((time.monotonic(), message[2], message[3]))
                    self._eventArrived.notify_all()

    def waitEvent(self, predicate: Any, timeout: float) -> bool:
        """
        Wait (at most C{timeout} seconds) until an event whose channel
        satisfies C{predicate} has been seen; return whether it was.
        """
        with self._eventArrived:
            return self._eventArrived.wait_for(
                lambda: any(predicate(channel) for _, channel, _ in self.events), timeout
            )

    @property
    def sentinels(self) -> str:
        """
        C{REDIS_SENTINELS} for this group.
        """
        return ",".join(f"{s.host}:{s.port}" for s in self.allSentinels)

    def replicaKnown(self) -> bool:
        for sentinel in self.allSentinels:
            replicas = [fields(r) for r in sentinel.command("SENTINEL", "replicas", MASTER_NAME)]
            if not any(
                int(r["port"]) == self.replica.port
                and r["flags"] == "slave"
                and r.get("master-link-status") == "ok"
                for r in replicas
            ):
                return False
        return True

    def sentinelsKnown(self) -> bool:
        """
        Whether every Sentinel knows every other one.
        """
        others = len(self.allSentinels) - 1
        return all(
            int(fields(s.command("SENTINEL", "master", MASTER_NAME))["num-other-sentinels"]) >= others
            for s in self.allSentinels
        )

    def masterPort(self) -> int:
        """
        The port of the master according to the Sentinel.
        """
        host, port = self.sentinel.command("SENTINEL", "get-master-addr-by-name", MASTER_NAME)
        return int(port)

    def waitReplicated(self, timeoutMS: int = 5000) -> None:
        """
        Block until the replica has acknowledged every write the master has
        acknowledged so far: a write of our own followed by C{WAIT 1} on
        the same connection (the replication stream is ordered, so the
        writes before it are acknowledged too).
        """
        line = RedisLine(self.master.port)
        try:
            line.command("INCR", "ha:marker")
            acknowledged = line.command("WAIT", 1, timeoutMS, timeout=timeoutMS / 1000 + 5)
        finally:
            line.close()
        if acknowledged < 1:
            raise AssertionError(f"the replica did not acknowledge within {timeoutMS} ms")

    def switched(self) -> bool:
        return any(channel == "+switch-master" for _, channel, _ in list(self.events))

    def killMaster(self) -> float:
        """
        SIGKILL the master; return the time it happened (monotonic).
        """
        self.master.kill()
        return time.monotonic()

    def eventTimes(self, since: float) -> Dict[str, float]:
        """
        Seconds from C{since} (monotonic) to the first of each event.
        """
        out: Dict[str, float] = {}
        for at, channel, _ in list(self.events):
            out.setdefault(channel, round(at - since, 3))
        return out


# --------------------------------------------------------------------------
# a. Store-level failover


class StoreFailoverTests(TestCase):
    """
    A L{RedisStore} found through Sentinel survives the master's death:
    unavailable (never wrong) until the replica is promoted, then serving
    again with every write acknowledged by the replica before the failover.
    """

    timeout = 30

    async def test_failover(self) -> None:
        from twisted.internet import reactor
        from twisted.internet.task import deferLater

        from mcpsvc.config import loadConfig
        from mcpsvc.storage import NoSuchClient, StoreUnavailable, buildStoreService
        from mcpsvc.storage.interfaces import RotationOutcome
        from mcpsvc.storage.test.base import client, family

        group = SentinelGroup(self)
        config = loadConfig({
            "STORE": "redis",
            "DEPLOYMENT_TYPE": "multi-server",
            "REDIS_SENTINELS": group.sentinels,
            "REDIS_SENTINEL_MASTER": MASTER_NAME,
            "STORE_TIMEOUT": "1",
            "JWT_SECRET": SECRET,
        })
        service = buildStoreService(config, reactor=reactor, clock=reactor)
        service.startService()
        self.addCleanup(service.stopService)
        store = service.store

        now = reactor.seconds()
        await store.createClient(client("ha-client", createdAt=now))
        await store.revokeJTI("jti-revoked", now + 600)
        await store.createFamily(
            family("ha-family", createdAt=now, expiresAt=now + 3600, lastAccessExpiresAt=now + 600)
        )
        self.assertTrue(await store.isRevoked("jti-revoked", now))
        group.waitReplicated()
        self.assertEqual(group.replica.command("EXISTS", "mcpsvc:revoked:jti-revoked"), 1)

        killedAt = group.killMaster()
        outcomes: List[Tuple[float, str]] = []
        for attempt in range(400):
            results = []
            try:
                revoked = await store.isRevoked("jti-revoked", reactor.seconds())
            except StoreUnavailable:
                results.append("unavailable")
            else:
                # never a wrong answer: the revocation is there or we fail
                self.assertTrue(revoked, "a revoked jti was reported as not revoked")
                results.append("ok")
            try:
                record = await store.getClient("ha-client")
            except StoreUnavailable:
                results.append("unavailable")
            except NoSuchClient:
                self.fail("an acknowledged, replicated client vanished")
            else:
                self.assertEqual(record.clientID, "ha-client")
                results.append("ok")
            outcome = "ok" if results == ["ok", "ok"] else "unavailable"
            outcomes.append((time.monotonic() - killedAt, outcome))
            if outcome == "ok":
                break
            self.assertLess(time.monotonic() - killedAt, 20, "no recovery within 20 s")
            await deferLater(reactor, 0.05, lambda: None)
        else:
            self.fail("the store did not recover")
        recoveredAfter = outcomes[-1][0]
        # Answers came only from the promoted replica.
        self.assertEqual(group.masterPort(), group.replica.port)
        self.assertEqual(group.replica.command("ROLE")[0], "master")
        self.assertIn("unavailable", [o for _, o in outcomes], "the master's death went unnoticed")

        # Writes work again, without restarting anything.
        now = reactor.seconds()
        await store.createClient(client("after-failover", createdAt=now))
        await store.revokeJTI("jti-after", now + 600)
        self.assertTrue(await store.isRevoked("jti-after", now))
        result = await store.rotateRefresh(
            "ha-family", "sha256:r0", "sha256:r1", "sealed", now + 60, "jti-1", now + 600, now
        )
        self.assertEqual(result.outcome, RotationOutcome.ROTATED)
        self.assertEqual(group.replica.command("EXISTS", "mcpsvc:client:after-failover"), 1)

        # Serving again right after the promotion: discovery does not wait
        # for its timeout and reconnection attempts stay frequent.
        switchedAfter = group.eventTimes(killedAt)["+switch-master"]
        self.assertLess(recoveredAfter - switchedAfter, SWITCH_TO_SERVING)
        report = {
            "store_unavailable_s": round(recoveredAfter, 3),
            "failed_attempts": sum(1 for _, o in outcomes if o != "ok"),
            "sentinel_events_s": group.eventTimes(killedAt),
        }
        print(f"\n[store failover] {json.dumps(report)}", file=sys.stderr)


class MinReplicasTests(TestCase):
    """
    With C{min-replicas-to-write} (docs/operations-redis.md), a master
    without enough live replicas refuses writes: the store reports
    L{StoreUnavailable} (a 503), never a write it did not make; reads go
    on.
    """

    timeout = 20

    async def test_writesRefusedWithoutReplica(self) -> None:
        from twisted.internet import reactor

        from mcpsvc.config import loadConfig
        from mcpsvc.storage import StoreUnavailable, buildStoreService
        from mcpsvc.storage.test.base import client

        master = RedisServer(os.path.abspath(self.mktemp())).start()
        self.addCleanup(master.kill)
        master.command("SET", "mcpsvc:revoked:j", str(time.time() + 600))
        master.command("CONFIG", "SET", "min-replicas-to-write", "1")
        master.command("CONFIG", "SET", "min-replicas-max-lag", "10")
        service = buildStoreService(
            loadConfig({"STORE": "redis", "REDIS_URL": master.url, "STORE_TIMEOUT": "2", "JWT_SECRET": SECRET}),
            reactor=reactor, clock=reactor,
        )
        service.startService()
        self.addCleanup(service.stopService)
        store = service.store
        self.assertTrue(await store.isRevoked("j", reactor.seconds()))
        for write in (
            lambda: store.createClient(client("c")),
            lambda: store.revokeJTI("k", reactor.seconds() + 600),
            lambda: store.takeToken("bucket", 10, 1.0, reactor.seconds()),
        ):
            with self.assertRaises(StoreUnavailable):
                await write()
        self.assertEqual(master.command("EXISTS", "mcpsvc:client:c", "mcpsvc:revoked:k"), 0)


# --------------------------------------------------------------------------
# The two Sentinel fixes in mcpsvc.storage.redis


def _resp(value: Any) -> bytes:
    if isinstance(value, list):
        return b"*%d\r\n" % len(value) + b"".join(_resp(v) for v in value)
    data = str(value).encode()
    return b"$%d\r\n%s\r\n" % (len(data), data)


class SentinelConnectionTests(TestCase):
    """
    Master discovery fails as soon as every Sentinel has answered without
    a usable master; a connection lost while txredisapi checks its role is
    not an unhandled error.
    """

    timeout = 20

    async def test_discoveryFailsFast(self) -> None:
        """
        While the master is down and nothing has been promoted, discovery
        fails at once rather than after its (here 10-second) timeout, so
        the next attempt, which may find a promoted replica, is not delayed.
        """
        import txredisapi
        from twisted.internet import reactor
        from twisted.internet.task import deferLater

        from mcpsvc.storage.redis import _sentinelManager

        master = RedisServer(os.path.join(self.mktemp(), "master")).start()
        self.addCleanup(master.kill)
        sentinel = RedisServer(
            os.path.join(self.mktemp(), "sentinel"), sentinelFor=(MASTER_NAME, master.port)
        ).start()
        self.addCleanup(sentinel.kill)
        sentinel.command("SENTINEL", "SET", MASTER_NAME, "down-after-milliseconds", DOWN_AFTER_MS)
        manager = _sentinelManager(txredisapi, [(sentinel.host, sentinel.port)], 10.0)
        self.addCleanup(manager.disconnect)
        self.assertEqual(await manager.discover_master(MASTER_NAME), (master.host, master.port))

        master.kill()
        for attempt in range(100):
            flags = fields(sentinel.command("SENTINEL", "master", MASTER_NAME))["flags"]
            if "s_down" in flags.split(","):
                break
            await deferLater(reactor, 0.05, lambda: None)
        else:
            self.fail("the Sentinel never saw the master down")
        started = time.monotonic()
        with self.assertRaises(txredisapi.MasterNotFoundError):
            await manager.discover_master(MASTER_NAME)
        self.assertLess(time.monotonic() - started, 2.0)

    async def test_wrongMasterPassword(self) -> None:
        """
        A wrong master password through Sentinel: calls fail with
        L{StoreUnavailable}, the refusal is logged, nothing is an unhandled
        error; the right password works.
        """
        import gc

        from twisted.internet import reactor

        from mcpsvc.storage import StoreUnavailable
        from mcpsvc.storage.redis import RedisConnection, RedisStore, redisConnector

        master = RedisServer(os.path.join(self.mktemp(), "master"), password="right").start()
        self.addCleanup(master.kill)
        sentinel = RedisServer(
            os.path.join(self.mktemp(), "sentinel"), sentinelFor=(MASTER_NAME, master.port)
        ).start()
        self.addCleanup(sentinel.kill)
        sentinel.command("SENTINEL", "SET", MASTER_NAME, "auth-pass", "right")

        def open_(password: str) -> RedisStore:
            connection = RedisConnection(redisConnector(
                sentinels=[(sentinel.host, sentinel.port)], sentinelMaster=MASTER_NAME,
                password=password, timeout=1.0, poolSize=1,
            ))
            connection.open()
            self.addCleanup(connection.close)
            return RedisStore(connection, reactor, "x:", 1.0)

        with self.assertRaises(StoreUnavailable):
            await open_("wrong").ping()
        await open_("right").ping()
        gc.collect()
        self.assertEqual(self.flushLoggedErrors(), [])

    async def test_connectionLostDuringRoleCheck(self) -> None:
        """
        A "master" that drops every connection before answering C{ROLE}
        (as a dying master or Sentinel's C{CLIENT KILL} on a promoted
        replica does): the pool keeps trying, nothing is logged as an
        unhandled error, and store calls fail with L{StoreUnavailable}.
        """
        import gc

        from twisted.internet import reactor
        from twisted.internet.defer import Deferred
        from twisted.internet.protocol import Factory, Protocol

        from mcpsvc.storage import StoreUnavailable
        from mcpsvc.storage.redis import RedisConnection, RedisStore, redisConnector

        enough: Deferred[None] = Deferred()
        connections = []

        class Dropping(Protocol):
            def connectionMade(self) -> None:
                connections.append(self)

            def dataReceived(self, data: bytes) -> None:
                self.transport.loseConnection()
                if len(connections) >= 3 and not enough.called:
                    enough.callback(None)

        masterPort = reactor.listenTCP(0, Factory.forProtocol(Dropping), interface="127.0.0.1")
        self.addCleanup(masterPort.stopListening)
        state = [
            "name", MASTER_NAME, "ip", "127.0.0.1", "port", masterPort.getHost().port,
            "flags", "master", "num-other-sentinels", 0,
        ]

        class FakeSentinel(Protocol):
            def dataReceived(self, data: bytes) -> None:
                # one command at a time: SENTINEL MASTERS
                self.transport.write(_resp([state]))

        sentinelPort = reactor.listenTCP(0, Factory.forProtocol(FakeSentinel), interface="127.0.0.1")
        self.addCleanup(sentinelPort.stopListening)

        connection = RedisConnection(redisConnector(
            sentinels=[("127.0.0.1", sentinelPort.getHost().port)], sentinelMaster=MASTER_NAME,
            timeout=0.5, poolSize=1,
        ))
        connection.open()
        store = RedisStore(connection, reactor, "x:", 0.5)
        await enough
        with self.assertRaises(StoreUnavailable):
            await store.ping()
        await connection.close()
        for c in connections:
            c.transport.loseConnection()
        gc.collect()
        self.assertEqual(self.flushLoggedErrors(), [])


# --------------------------------------------------------------------------
# Processes


def http(
    url: str, method: str = "GET", body: Any = None, headers: Optional[Dict[str, str]] = None,
    form: Optional[Dict[str, str]] = None,
) -> Tuple[int, Dict[str, str], Any]:
    """
    One HTTP request; return the status, the headers and the body (parsed
    as JSON when it is JSON).
    """
    data = None
    headers = dict(headers or {})
    if body is not None:
        data = json.dumps(body).encode()
        headers.setdefault("Content-Type", "application/json")
    elif form is not None:
        data = urllib.parse.urlencode(form).encode()
        headers.setdefault("Content-Type", "application/x-www-form-urlencoded")
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=15) as response:
            status, responseHeaders, raw = response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as e:
        status, responseHeaders, raw = e.code, dict(e.headers), e.read()
    try:
        parsed = json.loads(raw)
    except ValueError:
        parsed = raw
    return status, responseHeaders, parsed


REGISTRATION = {"client_name": "x", "redirect_uris": ["http://127.0.0.1/cb"]}


def register(process: McpsvcProcess) -> Tuple[int, Dict[str, str], Any]:
    return http(
        process.url + "/oauth/register", "POST", REGISTRATION,
        headers={"Authorization": f"Bearer {DCR_TOKEN}"},
    )


def processEnv(**extra: str) -> Dict[str, str]:
    env = {
        "STORE": "redis",
        "DEPLOYMENT_TYPE": "multi-server",
        "JWT_SECRET": SECRET,
        "DCR_AUTH_TOKEN": DCR_TOKEN,
        "SERVER_URL": SERVER_URL,
        "RATE_LIMIT_REGISTER": "100000/3600",
        "RATE_LIMIT_TOKEN": "100000/900",
    }
    env.update(extra)
    return env


SERVER_URL = "http://127.0.0.1:3000"


def accessToken(jti: str) -> str:
    """
    An access token signed with the shared C{JWT_SECRET}, as any instance
    would issue it.
    """
    from mcpsvc.oauth.tokens import AccessTokens, KeyRing

    tokens = AccessTokens(keys=KeyRing.forSecret(SECRET), issuer=SERVER_URL, audience=SERVER_URL + "/mcp")
    return tokens.issue(now=time.time(), subject="alice", clientID="ha-client", scope="mcp", jti=jti).token


def callMCPFull(process: McpsvcProcess, token: str) -> Tuple[int, Dict[str, str], Any]:
    return http(
        process.url + "/mcp", "POST",
        {"jsonrpc": "2.0", "id": 1, "method": "ping"},
        headers={"Authorization": f"Bearer {token}", "Accept": "application/json, text/event-stream"},
    )


def callMCP(process: McpsvcProcess, token: str) -> int:
    return callMCPFull(process, token)[0]


class ProcessTestsMixin:
    def startProcess(self, env: Dict[str, str]) -> McpsvcProcess:
        workdir = os.path.abspath(self.mktemp())  # type: ignore[attr-defined]
        os.makedirs(workdir)
        process = McpsvcProcess(workdir, env=env)
        self.addCleanup(process.kill)  # type: ignore[attr-defined]
        return process.start()


class ProcessFailoverTests(ProcessTestsMixin, SynchronousTestCase):
    """
    A real mcpsvc behind three Sentinels (quorum 2) keeps serving through
    a failover: a short window of 503s (with C{Retry-After}), never a 2xx
    for something not done and never a revoked token accepted; then 200s
    again without a restart.
    """

    #: seconds after the kill by which the process must serve again
    bound = 15.0
    #: STORE_TIMEOUT for the process (None: the default, 5 s)
    storeTimeout: Optional[str] = None
    #: Sentinels, and how many must agree the master is down
    sentinelCount = 3
    quorum = 2

    def test_failover(self) -> None:
        group = SentinelGroup(self, self.sentinelCount, self.quorum)
        for sentinel in group.allSentinels:
            state = fields(sentinel.command("SENTINEL", "master", MASTER_NAME))
            self.assertEqual((int(state["quorum"]), int(state["num-other-sentinels"])),
                             (self.quorum, self.sentinelCount - 1))
        env = processEnv(REDIS_SENTINELS=group.sentinels, REDIS_SENTINEL_MASTER=MASTER_NAME)
        if self.storeTimeout:
            env["STORE_TIMEOUT"] = self.storeTimeout
        process = self.startProcess(env)
        for attempt in range(50):
            if http(process.url + "/ready")[0] == 200:
                break
            group.waitEvent(lambda channel: False, 0.1)
        else:
            self.fail("never ready:\n" + process.output[-3000:])

        # Registration, if that endpoint exists yet.
        status, _, body = register(process)
        registering = status != 404
        registered: List[str] = []
        if registering:
            self.assertEqual(status, 201, body)
            registered.append(body["client_id"])

        # A revoked token, and a control that is not revoked.
        revokedToken, liveToken = accessToken("jti-revoked"), accessToken("jti-live")
        group.master.command("SET", "mcpsvc:revoked:jti-revoked", str(time.time() + 3600), "EX", 3600)
        self.assertEqual(callMCP(process, revokedToken), 401)
        liveStatus = callMCP(process, liveToken)
        self.assertNotIn(liveStatus, (401, 503))
        group.waitReplicated()

        # Three probes, each in its own thread, each sending one kind of
        # request again and again: /ready (200 or 503), a registration (201
        # or 503) and an MCP request with the revoked token (401 or 503).
        probes = [Probe("ready", lambda: http(process.url + "/ready"), 200)]
        if registering:
            probes.append(Probe("register", lambda: register(process), 201))
        probes.append(Probe("revoked-token", lambda: callMCPFull(process, revokedToken), 401))
        progress = threading.Condition()
        killedAt = group.killMaster()
        for probe in probes:
            probe.start(killedAt, progress)
            self.addCleanup(probe.stop)

        def recovered() -> bool:
            if not group.switched():
                return False
            switchedAt = group.eventTimes(killedAt)["+switch-master"]
            return all(probe.servingSince(switchedAt, 3) is not None for probe in probes)

        with progress:
            done = progress.wait_for(
                lambda: recovered() or any(p.violations for p in probes), self.bound
            )
        for probe in probes:
            probe.stop()
        for probe in probes:
            self.assertEqual(probe.violations, [], probe.name)
        self.assertTrue(done, f"not serving again {self.bound} s after the kill: "
                        + json.dumps([p.summary() for p in probes]))
        self.assertEqual(group.masterPort(), group.replica.port)
        switchedAt = group.eventTimes(killedAt)["+switch-master"]
        servingAgain = max(p.servingSince(switchedAt, 3) for p in probes)
        self.assertLess(servingAgain - switchedAt, SWITCH_TO_SERVING)

        # Every registration answered 201 (before the kill, after WAIT; or
        # after it, necessarily on the new master) is really there.
        if registering:
            registered += [body["client_id"] for *_, status, body in probes[1].results if status == 201]
        for clientID in registered:
            self.assertEqual(group.replica.command("EXISTS", f"mcpsvc:client:{clientID}"), 1, clientID)
        # The control token is still accepted, the revoked one still not.
        self.assertEqual(callMCP(process, liveToken), liveStatus)
        self.assertEqual(callMCP(process, revokedToken), 401)

        unavailable = [r for p in probes for r in p.results if r[2] == 503]
        report = {
            "store_timeout": self.storeTimeout or "default (5)",
            "503_window_s": (
                [round(min(r[0] for r in unavailable), 3), round(max(r[1] for r in unavailable), 3)]
                if unavailable else None
            ),
            "serving_again_s": round(max(p.summary()["serving_again_s"] for p in probes), 3),
            "probes": [p.summary() for p in probes],
            "registrations_checked": len(registered) if registering else "endpoint missing",
            "sentinels": f"{self.sentinelCount} (quorum {self.quorum})",
            "sentinel_events_s": {
                k: v for k, v in group.eventTimes(killedAt).items()
                if k in ("+sdown", "+odown", "+promoted-slave", "+switch-master")
            },
        }
        print(f"\n[process failover] {json.dumps(report)}", file=sys.stderr)


class Probe:
    """
    Sends one kind of request in a loop (in a thread) and records
    C{(start, end, status, body)}, in seconds after the kill, until
    stopped. Any status other than C{expected} or 503 (with
    C{Retry-After}) is a violation.
    """

    def __init__(self, name: str, send: Any, expected: int) -> None:
        self.name = name
        self.send = send
        self.expected = expected
        self.results: List[Tuple[float, float, int, Any]] = []
        self.violations: List[Any] = []
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def start(self, since: float, progress: threading.Condition) -> None:
        def run() -> None:
            for attempt in range(5000):
                if self._stop.is_set():
                    return
                began = time.monotonic() - since
                try:
                    status, headers, body = self.send()
                except Exception as e:  # noqa: BLE001 - recorded, fails the test
                    status, headers, body = -1, {}, repr(e)
                ended = time.monotonic() - since
                with progress:
                    self.results.append((began, ended, status, body))
                    if status == 503 and "Retry-After" not in headers:
                        self.violations.append(("503 without Retry-After", began, body))
                    elif status not in (self.expected, 503):
                        self.violations.append((status, began, body))
                    progress.notify_all()
                self._stop.wait(0.02)  # pace the requests

        self._thread = threading.Thread(target=run, name=f"probe-{self.name}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(30)

    def servingSince(self, after: float, count: int) -> Optional[float]:
        """
        When the first of C{count} or more normal answers in a row, all
        sent after C{after} and after the last 503, was answered; or None.
        """
        results = list(self.results)
        lastBad = max([r[1] for r in results if r[2] != self.expected], default=-1.0)
        good = [r for r in results if r[0] > max(lastBad, after) and r[2] == self.expected]
        return good[0][1] if len(good) >= count else None

    def summary(self) -> Dict[str, Any]:
        results = list(self.results)
        bad = [r for r in results if r[2] != self.expected]
        lastBad = max([r[1] for r in bad], default=-1.0)
        after = [r for r in results if r[0] > lastBad and r[2] == self.expected]
        return {
            "probe": self.name,
            "requests": len(results),
            "503s": len(bad),
            "last_503_answered_s": round(lastBad, 3) if bad else None,
            "serving_again_s": round(after[0][1], 3) if after else None,
            "slowest_s": round(max((r[1] - r[0] for r in results), default=0), 3),
        }


class ProcessFailoverShortTimeoutTests(ProcessFailoverTests):
    """
    The same with C{STORE_TIMEOUT=1}: requests fail (503) sooner instead of
    waiting for the new master.
    """

    storeTimeout = "1"


# --------------------------------------------------------------------------
# c. Two instances, one Redis


class TwoInstancesTests(ProcessTestsMixin, SynchronousTestCase):
    """
    Two mcpsvc processes on one Redis are one service: a client registered
    through one is known to the other and to C{mcpsvc clients list}.
    """

    def test_registrationSeenByOtherInstance(self) -> None:
        server = RedisServer(os.path.abspath(self.mktemp())).start()
        self.addCleanup(server.stop)
        env = processEnv(REDIS_URL=server.url)
        a, b = self.startProcess(env), self.startProcess(env)

        status, _, body = register(a)
        self.assertEqual(status, 201, body)
        clientID = body["client_id"]
        headers = {}
        form = {
            "grant_type": "authorization_code",
            "code": "bogus-code",
            "redirect_uri": "http://127.0.0.1/cb",
            "code_verifier": "v" * 43,
        }
        if body.get("client_secret"):
            basic = base64.b64encode(
                f"{urllib.parse.quote(clientID)}:{urllib.parse.quote(body['client_secret'])}".encode()
            ).decode()
            headers["Authorization"] = f"Basic {basic}"
        else:
            form["client_id"] = clientID

        # B knows the client: the grant is what's wrong, not the client.
        status, _, answer = http(b.url + "/oauth/token", "POST", form=form, headers=headers)
        self.assertEqual((status, answer.get("error")), (400, "invalid_grant"), answer)
        # Control: a client nobody registered is invalid_client on B.
        status, _, answer = http(
            b.url + "/oauth/token", "POST", form=dict(form, client_id="nobody"),
        )
        self.assertEqual(answer.get("error"), "invalid_client", answer)

        # And the command line, on the same Redis, lists it.
        listing = subprocess.run(
            [os.path.join(os.path.dirname(sys.executable), "mcpsvc"), "clients", "list", "--json"],
            env=dict(a.env), cwd=a.workdir, capture_output=True, timeout=60,
        )
        self.assertEqual(listing.returncode, 0, listing.stderr)
        self.assertIn(clientID, [c.get("client_id", c.get("clientID")) for c in json.loads(listing.stdout)])
