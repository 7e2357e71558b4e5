"""
Tests for L{mcpsvc.service}: the tree, its start and stop order, the
sweeper and the HTTP drain, on a L{MemoryReactorClock} (no sockets).
"""

from __future__ import annotations

from typing import Any, Dict, List

from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import capturedLogs
from twisted.trial.unittest import SynchronousTestCase, TestCase

from mcpsvc.config import loadConfig
from mcpsvc.service import OrderedMultiService, Sweeper, buildService
from mcpsvc.storage.interfaces import StoreUnavailable, SweepReport
from mcpsvc.test.fakes import FakeStoreService, PingStore

SECRET = "x" * 32


def config(**extra: str) -> Any:
    raw = {"JWT_SECRET": SECRET, "STORE": "memory"}
    raw.update(extra)
    return loadConfig(raw)


class Recording(Service):
    def __init__(self, name: str, events: List[str], stopping: "Deferred[None] | None" = None) -> None:
        self.setName(name)
        self.events = events
        self.stopping = stopping

    def startService(self) -> None:
        super().startService()
        self.events.append(f"start {self.name}")

    def stopService(self) -> "Deferred[None]":
        super().stopService()
        self.events.append(f"stop {self.name}")
        d = self.stopping if self.stopping is not None else succeed(None)
        return d.addCallback(lambda _: self.events.append(f"stopped {self.name}"))


class OrderedMultiServiceTests(SynchronousTestCase):
    def test_stopWaitsForEachChild(self) -> None:
        """
        Children stop in reverse order, each only once the one after it has
        really stopped.
        """
        events: List[str] = []
        gate: Deferred[None] = Deferred()
        parent = OrderedMultiService()
        for name, stopping in (("store", None), ("sweeper", None), ("http", gate)):
            Recording(name, events, stopping).setServiceParent(parent)
        parent.startService()
        self.assertEqual(events, ["start store", "start sweeper", "start http"])
        del events[:]
        with capturedLogs():
            d = parent.stopService()
            self.assertNoResult(d)
            self.assertEqual(events, ["stop http"])
            gate.callback(None)
        self.successResultOf(d)
        self.assertEqual(
            events,
            ["stop http", "stopped http", "stop sweeper", "stopped sweeper", "stop store", "stopped store"],
        )

    def test_failingChildDoesNotBlockOthers(self) -> None:
        """
        A child whose stop fails is logged, and the rest still stop.
        """
        events: List[str] = []
        parent = OrderedMultiService()
        Recording("store", events).setServiceParent(parent)
        bad: Deferred[None] = Deferred()
        Recording("http", events, bad).setServiceParent(parent)
        parent.startService()
        with capturedLogs():
            d = parent.stopService()
            bad.errback(RuntimeError("nope"))
        self.successResultOf(d)
        self.assertIn("stopped store", events)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)


    def test_processFreezesStartupHeap(self) -> None:
        """
        Started as the process's tree (C{handleSignals}), the service moves
        the start-up heap out of the cyclic GC once the reactor runs (so a
        full collection under load does not walk every module and class),
        after the children started; a tree built for tests or embedding
        leaves the GC of its host alone.
        """
        from mcpsvc import service

        events: List[str] = []
        self.patch(service.gc, "freeze", lambda: events.append("freeze"))
        self.patch(service.signal, "signal", lambda *a: None)
        reactor = MemoryReactorClock()
        parent = OrderedMultiService(reactor=reactor, handleSignals=True)
        Recording("http", events).setServiceParent(parent)
        parent.startService()
        self.assertEqual(events, ["start http"])
        with capturedLogs():
            reactor.run()
        self.assertEqual(events, ["start http", "freeze"])

        del events[:]
        embedded = OrderedMultiService(reactor=MemoryReactorClock())
        embedded.startService()
        embedded._reactor.run()
        self.assertEqual(events, [])


class HangUpTests(SynchronousTestCase):
    def test_sighupReloadsTools(self) -> None:
        """
        Started as the process's tree, the service handles SIGHUP at once
        (before the reactor runs: the default action would end the
        process) by calling C{reloadTools} on the reactor thread.
        """
        import signal as signalModule

        from mcpsvc import service

        handlers: Dict[int, Any] = {}
        self.patch(service.signal, "signal", lambda number, f: handlers.__setitem__(number, f))
        reactor = MemoryReactorClock()
        called: List[Any] = []
        reactor.callFromThread = lambda f, *a: f(*a)  # type: ignore[method-assign]
        parent = OrderedMultiService(reactor=reactor, handleSignals=True)
        parent.reloadTools = lambda: called.append("reload")
        with capturedLogs():
            parent.startService()
            self.assertIn(signalModule.SIGHUP, handlers)
            handlers[signalModule.SIGHUP](signalModule.SIGHUP, None)
        self.assertEqual(called, ["reload"])

    def test_sighupStormCoalesced(self) -> None:
        """
        SIGHUPs that arrive before the reactor thread has run the reload
        already asked for are one reload; one arriving after it is
        another.
        """
        from mcpsvc import service

        handlers: Dict[int, Any] = {}
        self.patch(service.signal, "signal", lambda number, f: handlers.__setitem__(number, f))
        reactor = MemoryReactorClock()
        queued: List[Any] = []
        reactor.callFromThread = lambda f, *a: queued.append((f, a))  # type: ignore[method-assign]
        called: List[Any] = []
        parent = OrderedMultiService(reactor=reactor, handleSignals=True)
        parent.reloadTools = lambda: called.append("reload")
        with capturedLogs():
            parent.startService()
            hangUp = handlers[service.signal.SIGHUP]
            for _ in range(1000):
                hangUp(service.signal.SIGHUP, None)
            while queued:
                f, a = queued.pop(0)
                f(*a)
            self.assertEqual(called, ["reload"])
            hangUp(service.signal.SIGHUP, None)
            while queued:
                f, a = queued.pop(0)
                f(*a)
        self.assertEqual(called, ["reload", "reload"])


class SweeperTests(SynchronousTestCase):
    def test_survivesFailingSweep(self) -> None:
        """
        A sweep that fails is logged and the next one still runs.
        """
        clock = MemoryReactorClock()
        clock.advance(1000)
        store = PingStore()
        store.sweepResults = [StoreUnavailable("down"), SweepReport(removed={"codes": 2})]
        sweeper = Sweeper(60, store, clock)
        with capturedLogs() as events:
            sweeper.startService()
            clock.advance(60)
            clock.advance(60)
        self.assertEqual(store.sweeps, [1000, 1060, 1120])
        self.assertTrue(sweeper.running)
        self.assertEqual(len(self.flushLoggedErrors(StoreUnavailable)), 1)
        removed = [e for e in events if e.get("total") == 2]
        self.assertEqual(len(removed), 1)
        self.successResultOf(sweeper.stopService())

    def test_idleDocumentClientsRemoved(self) -> None:
        """
        With C{documentClientIdle}, each sweep removes the metadata
        document clients unused for that long (and holding no grant), and
        logs how many; registered clients stay. With 0, none is removed.
        """
        from mcpsvc.storage.interfaces import ClientRecord
        from mcpsvc.storage.memory import MemoryStore

        clock = MemoryReactorClock()
        clock.advance(100_000)
        store = MemoryStore(clock)
        url = "https://app.example.com/client.json"
        for clientID, metadata in ((url, {"cimd": {"fresh_until": 1000.0}}), ("registered", {})):
            self.successResultOf(store.createClient(ClientRecord(
                clientID=clientID, secretHash=None, metadata=metadata, createdAt=0)))
        keeping = Sweeper(60, store, clock, documentClientIdle=0)
        self.successResultOf(Deferred.fromCoroutine(keeping.sweepOnce()))
        self.assertEqual(len(self.successResultOf(store.listClients())), 2)
        sweeper = Sweeper(60, store, clock, documentClientIdle=86400)
        with capturedLogs() as events:
            self.successResultOf(Deferred.fromCoroutine(sweeper.sweepOnce()))
        self.assertEqual([c.clientID for c in self.successResultOf(store.listClients())],
                         ["registered"])
        self.assertEqual([e["removed"]["documentClients"] for e in events if "removed" in e], [1])
        # That pass runs at most hourly (it reads every document client).
        self.successResultOf(store.createClient(ClientRecord(
            clientID=url, secretHash=None, metadata={"cimd": {"fresh_until": 1000.0}},
            createdAt=0)))
        clock.advance(3599)
        self.successResultOf(Deferred.fromCoroutine(sweeper.sweepOnce()))
        self.assertEqual(len(self.successResultOf(store.listClients())), 2)
        clock.advance(1)
        self.successResultOf(Deferred.fromCoroutine(sweeper.sweepOnce()))
        self.assertEqual(len(self.successResultOf(store.listClients())), 1)

    def test_stopWaitsForSweep(self) -> None:
        """
        Stopping waits for an in-flight sweep to finish.
        """
        clock = MemoryReactorClock()
        store = PingStore()
        pending: Deferred[SweepReport] = Deferred()
        store.sweepResults = [pending]
        sweeper = Sweeper(60, store, clock)
        sweeper.startService()
        d = sweeper.stopService()
        self.assertNoResult(d)
        pending.callback(SweepReport(removed={}))
        self.successResultOf(d)


class BuildServiceTests(SynchronousTestCase):
    def build(self, **extra: str) -> Any:
        self.reactor = MemoryReactorClock()
        self.events: List[str] = []
        self.storeService = FakeStoreService(self.events)
        with capturedLogs() as self.logged:
            return buildService(config(**extra), reactor=self.reactor, storeService=self.storeService)

    def test_noIOUntilStarted(self) -> None:
        """
        Building the tree opens nothing.
        """
        self.build()
        self.assertEqual(self.reactor.tcpServers, [])
        self.assertEqual(self.events, [])

    def test_tree(self) -> None:
        """
        The tree holds store, sweeper, tasks and http, in that order, and
        starting it listens on the default address.
        """
        root = self.build()
        self.assertEqual([s.name for s in root], ["store", "sweeper", "tasks", "http"])
        root.privilegedStartService()
        root.startService()
        self.assertEqual(self.events, ["store started"])
        [(port, factory, backlog, interface)] = self.reactor.tcpServers
        self.assertEqual((port, interface), (3000, "127.0.0.1"))
        self.assertIs(factory, root.getServiceNamed("http").site)
        with capturedLogs():
            self.successResultOf(root.stopService())
        self.assertEqual(self.events, ["store started", "store stopped"])

    def test_listenOptions(self) -> None:
        """
        One listener per C{--listen} description.
        """
        self.reactor = MemoryReactorClock()
        from mcpsvc.config import loadConfig as load

        cfg = load({"JWT_SECRET": SECRET, "STORE": "memory"}, listen=("tcp:8080", "tcp:8081:interface=\\:\\:1"))
        with capturedLogs():
            root = buildService(cfg, reactor=self.reactor, storeService=FakeStoreService([]))
        root.privilegedStartService()
        root.startService()
        self.assertEqual([(p, i) for p, _, _, i in self.reactor.tcpServers], [(8080, ""), (8081, "::1")])

    def test_summaryLogged(self) -> None:
        """
        The configuration summary is logged without secret values.
        """
        self.build(DCR_AUTH_TOKEN="t" * 40)
        summaries = [e for e in self.logged if "summary" in e]
        self.assertEqual(len(summaries), 1)
        self.assertNotIn(SECRET, repr(summaries))
        self.assertNotIn("t" * 40, repr(summaries))


class DrainTests(SynchronousTestCase):
    def test_drainWaitsForInFlight(self) -> None:
        """
        Stopping HTTP stops listening at once, then waits for in-flight
        requests, bounded by the shutdown timeout.
        """
        reactor = MemoryReactorClock()
        with capturedLogs():
            root = buildService(config(SHUTDOWN_TIMEOUT="10"), reactor=reactor, storeService=FakeStoreService([]))
        http = root.getServiceNamed("http")
        root.privilegedStartService()
        root.startService()
        request = object()
        http.site.inFlight.add(request)
        with capturedLogs():
            d = http.stopService()
        self.assertNoResult(d)
        self.assertFalse(any(s.running for s in http.endpointServices))
        http.site.inFlight.discard(request)
        http.site.requestDone()
        self.successResultOf(d)

    def test_drainTimeout(self) -> None:
        """
        After the shutdown timeout, stopping completes anyway.
        """
        reactor = MemoryReactorClock()
        with capturedLogs():
            root = buildService(config(SHUTDOWN_TIMEOUT="10"), reactor=reactor, storeService=FakeStoreService([]))
        http = root.getServiceNamed("http")
        root.privilegedStartService()
        root.startService()

        class Stuck:
            class channel:
                class transport:
                    aborted = False

                    @classmethod
                    def abortConnection(cls) -> None:
                        cls.aborted = True

        http.site.inFlight.add(Stuck)
        with capturedLogs() as events:
            d = http.stopService()
            self.assertNoResult(d)
            reactor.advance(9.9)
            self.assertNoResult(d)
            reactor.advance(0.2)
        self.successResultOf(d)
        self.assertTrue(Stuck.channel.transport.aborted)
        self.assertTrue(any("Shutdown timeout" in e.get("log_format", "") for e in events))


class MetricsListenerTests(SynchronousTestCase):
    def test_separateListener(self) -> None:
        """
        C{--metrics-listen} adds a listener serving C{/metrics} without a
        token.
        """
        reactor = MemoryReactorClock()
        cfg = config().replace(metricsListen=("tcp:9100:interface=127.0.0.1",))
        with capturedLogs():
            root = buildService(cfg, reactor=reactor, storeService=FakeStoreService([]))
        root.privilegedStartService()
        root.startService()
        ports = {p: f for p, f, _, _ in reactor.tcpServers}
        self.assertEqual(sorted(ports), [3000, 9100])
        from mcpsvc.test.fakes import rawRequest

        status, _, body, _ = rawRequest(ports[9100], b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertEqual(status, 200)
        self.assertIn(b"mcpsvc_http_requests_total", body)
        status, _, _, _ = rawRequest(ports[3000], b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertEqual(status, 404)


class JWKSFetcherTests(TestCase):
    """
    The fetch of C{private_key_jwt} clients' C{jwks_uri} that
    L{mcpsvc.oauth.buildOAuth} wires (L{mcpsvc.oauth.clientkeys.jwksFetch}
    over the SSRF-safe L{mcpsvc.oauth.fetch.SafeFetcher}), against a real
    loopback HTTP server.
    """

    def setUp(self) -> None:
        from twisted.internet import reactor
        from twisted.web.resource import Resource
        from twisted.web.server import Site

        documents = {
            b"/jwks.json": b'{"keys": []}',
            b"/big.json": b'{"k": "' + b"x" * 70000 + b'"}',
            b"/bad.json": b"not json",
        }

        class Documents(Resource):
            isLeaf = True

            def render_GET(self, request: Any) -> bytes:
                body = documents.get(request.path)
                if body is None:
                    request.setResponseCode(404)
                    return b"{}"
                request.setHeader(b"content-type", b"application/json")
                return body

        self.port = reactor.listenTCP(0, Site(Documents()), interface="127.0.0.1")
        self.addCleanup(self.port.stopListening)
        self.base = f"http://127.0.0.1:{self.port.getHost().port}"
        self.reactor = reactor

    def fetcher(self, environment: str = "development") -> Any:
        from mcpsvc.config import Config
        from mcpsvc.oauth import buildOAuth
        from mcpsvc.storage.memory import MemoryStore

        config = Config(environment=environment, jwtSecret="s" * 40)
        app, _ = buildOAuth(config, store=MemoryStore(self.reactor), clock=self.reactor,
                              reactor=self.reactor)
        assert app.assertions.cache is not None
        return app.assertions.cache.fetchJSON

    async def test_fetches(self) -> None:
        """
        A JSON document is fetched and parsed (http to loopback allowed in
        development).
        """
        self.assertEqual(await self.fetcher()(self.base + "/jwks.json"), {"keys": []})

    async def test_refusals(self) -> None:
        """
        A non-200 answer, a body over the size cap and a body that is not
        JSON fail the fetch.
        """
        from mcpsvc.oauth.fetch import FetchError

        fetch = self.fetcher()
        for path, reason in (("/missing", "status"), ("/big.json", "too-large"),
                             ("/bad.json", "json")):
            try:
                await fetch(self.base + path)
            except FetchError as e:
                self.assertEqual(e.reason, reason, path)
                continue
            self.fail(f"{path} was accepted")

    async def test_productionRules(self) -> None:
        """
        In production, a non-https URL is refused, and so is an https URL
        whose host is a loopback address: nothing is sent.
        """
        from mcpsvc.oauth.fetch import FetchError

        fetch = self.fetcher("production")
        for url, reason in ((self.base + "/jwks.json", "scheme"),
                            (f"https://127.0.0.1:{self.port.getHost().port}/jwks.json", "address")):
            try:
                await fetch(url)
            except FetchError as e:
                self.assertEqual(e.reason, reason, url)
                continue
            self.fail(f"{url} was accepted")
