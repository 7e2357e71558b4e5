"""
Tests for L{mcpsvc.metrics}, C{/metrics}, L{mcpsvc.storage.metered} and L{mcpsvc.audit}.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.logger import capturedLogs
from twisted.trial.unittest import SynchronousTestCase

from mcpsvc.audit import audit, setAuditHook
from mcpsvc.config import loadConfig
from mcpsvc.http.app import Dispatcher, RootApp
from mcpsvc.http.metrics import buildMetrics
from mcpsvc.http.site import McpsvcSite
from mcpsvc.metrics import Metrics, routeLabel
from mcpsvc.storage.interfaces import NoSuchClient, StoreUnavailable
from mcpsvc.storage.memory import MemoryStore
from mcpsvc.storage.metered import OPERATIONS, MeteredStore
from mcpsvc.storage.test.base import StoreTestsMixin
from mcpsvc.test.fakes import PingStore, rawRequest

TOKEN = "m" * 24


def site(metricsToken: "str | None" = TOKEN) -> tuple:
    clock = Clock()
    metrics = Metrics()
    raw = {"JWT_SECRET": "x" * 32}
    if metricsToken:
        raw["METRICS_TOKEN"] = metricsToken
    config = loadConfig(raw)
    root = RootApp(clock=clock, ping=PingStore().ping, metrics=buildMetrics(config, metrics.registry))
    return McpsvcSite(Dispatcher([], root.resource()), clock=clock, metrics=metrics), metrics


class MetricsEndpointTests(SynchronousTestCase):
    def test_requestsCounted(self) -> None:
        """
        Requests are counted by route, method and status, and served in
        Prometheus text format to the bearer of the metrics token.
        """
        s, metrics = site()
        rawRequest(s, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        rawRequest(s, b"GET /random/path/123 HTTP/1.1\r\nHost: x\r\n\r\n")
        status, headers, body, _ = rawRequest(
            s, f"GET /metrics HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n\r\n".encode()
        )
        self.assertEqual(status, 200)
        self.assertTrue(headers["content-type"][0].startswith("text/plain"))
        text = body.decode()
        self.assertIn('mcpsvc_http_requests_total{method="GET",route="/health",status="200"} 1.0', text)
        self.assertIn('mcpsvc_http_requests_total{method="GET",route="other",status="404"} 1.0', text)
        self.assertIn("mcpsvc_http_request_duration_seconds_bucket", text)

    def test_tokenRequired(self) -> None:
        """
        Without the token, C{/metrics} is 401; without a configured token it
        does not exist on the public listener.
        """
        s, _ = site()
        for auth in ("", "Authorization: Bearer wrong\r\n", f"Authorization: {TOKEN}\r\n"):
            status, _, _, _ = rawRequest(s, f"GET /metrics HTTP/1.1\r\nHost: x\r\n{auth}\r\n".encode())
            self.assertEqual(status, 401)
        s, _ = site(None)
        self.assertEqual(rawRequest(s, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")[0], 404)

    def test_routeLabel(self) -> None:
        self.assertEqual(routeLabel("/mcp/"), "/mcp")
        self.assertEqual(routeLabel("/.well-known/oauth-protected-resource/mcp"), "/.well-known/oauth-protected-resource")
        self.assertEqual(routeLabel("/wp-admin"), "other")

    def test_labelsFromFixedSets(self) -> None:
        """
        A method, status or code-made label outside its fixed set is
        C{other}: an invented HTTP method adds no series.
        """
        from mcpsvc.metrics import Metrics, codeLabel, methodLabel, statusLabel

        self.assertEqual([methodLabel(m) for m in ("GET", "POST", "BREW", "get", "X" * 100)],
                         ["GET", "POST", "other", "other", "other"])
        self.assertEqual([statusLabel(s) for s in (200, 499, 99, 600)], ["200", "499", "other", "other"])
        self.assertEqual([codeLabel(v) for v in ("token.issue", "(unknown)", "a b", "x" * 200, "\u00e9")],
                         ["token.issue", "(unknown)", "other", "other", "other"])
        metrics = Metrics()
        for i in range(100):
            metrics.observeRequest("/health", f"M{i}", 405, 0.001)
            metrics.auditHook()(f"invented action {i}", "denied")
        samples = {tuple(sorted(s.labels.items())) for m in metrics.requests.collect() for s in m.samples
                   if s.name == "mcpsvc_http_requests_total"}
        self.assertEqual(samples, {(("method", "other"), ("route", "/health"), ("status", "405"))})
        audit = {s.labels["action"] for m in metrics.audit.collect() for s in m.samples}
        self.assertEqual(audit, {"other"})


class AuditTests(SynchronousTestCase):
    def test_event(self) -> None:
        """
        An audit event is a structured event with C{event_type: audit}.
        """
        with capturedLogs() as events:
            audit("token.issue", "success", clientID="c1", subject="s1", jti="j1")
        (event,) = events
        self.assertEqual(event["event_type"], "audit")
        self.assertEqual((event["action"], event["outcome"], event["clientID"], event["jti"]),
                         ("token.issue", "success", "c1", "j1"))

    def test_secretsRefused(self) -> None:
        """
        A field that would carry a secret is refused.
        """
        for name in ("token", "refresh_token", "client_secret", "password", "authorization"):
            with self.assertRaises(ValueError):
                audit("x", "y", **{name: "v"})

    def test_hookCounts(self) -> None:
        """
        The metrics hook counts audit events by action and outcome.
        """
        metrics = Metrics()
        setAuditHook(metrics.auditHook())
        self.addCleanup(setAuditHook, None)
        with capturedLogs():
            audit("client.register", "success")
            audit("client.register", "success")
        value = metrics.registry.get_sample_value(
            "mcpsvc_audit_events_total", {"action": "client.register", "outcome": "success"}
        )
        self.assertEqual(value, 2.0)


class _SlowStore:
    """
    A store whose operations answer when the test says so.
    """

    backendName = "slow"

    def __init__(self) -> None:
        self.pending: list = []

    def getClient(self, clientID: str) -> "Deferred[object]":
        d: "Deferred[object]" = Deferred()
        self.pending.append(d)
        return d

    def ping(self) -> "Deferred[None]":
        raise StoreUnavailable("refused at once")


class MeteredStoreConformanceTests(StoreTestsMixin, SynchronousTestCase):
    """
    The store conformance suite through L{MeteredStore}: the proxy changes
    no answer and no failure.
    """

    def makeStore(self) -> MeteredStore:
        return MeteredStore(MemoryStore(self.clock), Metrics(), self.clock)


class MeteredStoreTests(SynchronousTestCase):
    def sample(self, metrics: Metrics, name: str, operation: str) -> "float | None":
        return metrics.registry.get_sample_value(name, {"operation": operation})

    def test_latencyOnClock(self) -> None:
        """
        Each operation's latency is measured on the injected clock, from
        the call to its Deferred firing.
        """
        clock, metrics = Clock(), Metrics()
        inner = _SlowStore()
        store = MeteredStore(inner, metrics, clock)
        d = store.getClient("c1")
        clock.advance(0.003)
        inner.pending[0].callback("record")
        self.assertEqual(self.successResultOf(d), "record")
        self.assertEqual(self.sample(metrics, "mcpsvc_store_operation_seconds_count", "getClient"), 1.0)
        self.assertAlmostEqual(
            self.sample(metrics, "mcpsvc_store_operation_seconds_sum", "getClient"), 0.003)
        self.assertEqual(metrics.registry.get_sample_value(
            "mcpsvc_store_operation_seconds_bucket", {"operation": "getClient", "le": "0.0025"}), 0.0)
        self.assertEqual(store.backendName, "slow")

    def test_unavailableCounted(self) -> None:
        """
        L{StoreUnavailable} counts as a store error (asynchronous or
        raised at once); a domain failure such as L{NoSuchClient} does
        not, but is timed.
        """
        clock, metrics = Clock(), Metrics()
        inner = _SlowStore()
        store = MeteredStore(inner, metrics, clock)
        d1, d2 = store.getClient("a"), store.getClient("b")
        inner.pending[0].errback(StoreUnavailable("timeout"))
        inner.pending[1].errback(NoSuchClient("b"))
        self.failureResultOf(d1, StoreUnavailable)
        self.failureResultOf(d2, NoSuchClient)
        with self.assertRaises(StoreUnavailable):
            store.ping()
        self.assertEqual(self.sample(metrics, "mcpsvc_store_errors_total", "getClient"), 1.0)
        self.assertEqual(self.sample(metrics, "mcpsvc_store_errors_total", "ping"), 1.0)
        self.assertEqual(self.sample(metrics, "mcpsvc_store_operation_seconds_count", "getClient"), 2.0)

    def test_everyOperation(self) -> None:
        """
        Every L{IStore} method of a full store is measured under its own
        name.
        """
        clock, metrics = Clock(), Metrics()
        store = MeteredStore(MemoryStore(clock), metrics, clock)
        self.assertIn("countSessions", OPERATIONS)
        self.assertIn("takeToken", OPERATIONS)
        self.successResultOf(store.countSessions(0))
        self.successResultOf(store.takeToken("k", 1, 1.0, 0))
        for operation in ("countSessions", "takeToken"):
            self.assertEqual(
                self.sample(metrics, "mcpsvc_store_operation_seconds_count", operation), 1.0)

    def test_wiredInBuildService(self) -> None:
        """
        C{buildService} measures the configured store: a request touching
        the store shows in the latency histogram.
        """
        from twisted.internet.testing import MemoryReactorClock

        from mcpsvc.service import buildService
        from mcpsvc.storage import StoreService

        reactor = MemoryReactorClock()
        config = loadConfig({"JWT_SECRET": "x" * 32, "STORE": "memory", "LISTEN": "tcp:0"})
        root = buildService(config, reactor=reactor,
                            storeService=StoreService(MemoryStore(reactor)))
        sweeper = root.getServiceNamed("sweeper")
        self.assertIsInstance(sweeper.store, MeteredStore)
        self.successResultOf(sweeper.store.countSessions(0))
        self.assertEqual(
            root.metrics.registry.get_sample_value(
                "mcpsvc_store_operation_seconds_count", {"operation": "countSessions"}), 1.0)


class OpenStreamsTests(SynchronousTestCase):
    def test_readWhenScraped(self) -> None:
        """
        C{mcpsvc_open_streams} reports, by kind, what the watched callables
        say at scrape time; C{buildService} watches the MCP endpoint
        (nothing open yet).
        """
        from twisted.internet.testing import MemoryReactorClock

        from mcpsvc.metrics import Metrics
        from mcpsvc.service import buildService
        from mcpsvc.storage import StoreService

        metrics = Metrics()
        counts = {"listen": 2, "get": 1}
        metrics.watchStreams(lambda: counts["listen"], lambda: counts["get"])
        sample = lambda kind: metrics.registry.get_sample_value(  # noqa: E731
            "mcpsvc_open_streams", {"kind": kind})
        self.assertEqual((sample("listen"), sample("get")), (2.0, 1.0))
        counts["listen"] = 0
        self.assertEqual(sample("listen"), 0.0)
        reactor = MemoryReactorClock()
        config = loadConfig({"JWT_SECRET": "x" * 32, "STORE": "memory", "LISTEN": "tcp:0"})
        root = buildService(config, reactor=reactor,
                            storeService=StoreService(MemoryStore(reactor)))
        self.assertEqual(root.metrics.registry.get_sample_value(
            "mcpsvc_open_streams", {"kind": "listen"}), 0.0)


class ActiveSessionsTests(SynchronousTestCase):
    def test_gaugeSetBySweep(self) -> None:
        """
        Each sweep sets the active-sessions gauge from C{countSessions}; a
        failed count is logged and the next sweep counts again.
        """
        from mcpsvc.service import Sweeper
        from mcpsvc.storage.interfaces import SessionRecord

        clock = Clock()
        clock.advance(1000)
        memory = MemoryStore(clock)
        metrics = Metrics()
        for i in range(3):
            self.successResultOf(memory.createSession(SessionRecord(
                sessionID=f"s{i}", subject="alice", clientID="c", protocolVersion="2025-06-18",
                createdAt=1000, expiresAt=1000 + 30 * (i + 1))))
        failures = [StoreUnavailable("down")]
        original = memory.countSessions

        def countSessions(now: float) -> "Deferred[int]":
            if failures:
                from twisted.internet.defer import fail

                return fail(failures.pop())
            return original(now)

        memory.countSessions = countSessions  # type: ignore[method-assign]
        sweeper = Sweeper(40, memory, clock, metrics)
        gauge = lambda: metrics.registry.get_sample_value("mcpsvc_active_sessions")  # noqa: E731
        with capturedLogs():
            sweeper.startService()
        self.assertEqual(len(self.flushLoggedErrors(StoreUnavailable)), 1)
        self.assertEqual(gauge(), 0.0)
        clock.advance(40)  # s0 (expires at 1030) is gone
        self.assertEqual(gauge(), 2.0)
        clock.advance(40)  # s1 (1060) too
        self.assertEqual(gauge(), 1.0)
        self.successResultOf(sweeper.stopService())


class _ScriptedApprover:
    """
    Approves every authorization request for C{alice}, except one whose
    C{state} is C{deny-me}.
    """

    async def approve(self, request: object, authz: object) -> object:
        from mcpsvc.oauth.app import Approval, Denial

        if authz.state == "deny-me":  # type: ignore[attr-defined]
            return Denial()
        return Approval(subject="alice")


class AuditTrailTests(SynchronousTestCase):
    """
    A scripted OAuth flow through a real L{McpsvcSite} leaves exactly the
    audit trail the issue asks for: one event per security decision, each
    with client, subject, address and request id, and none with a secret.
    """

    def setUp(self) -> None:
        from mcpsvc.config import RateLimit
        from mcpsvc.oauth import buildOAuth
        from mcpsvc.oauth.test.helpers import makeConfig

        self.clock = Clock()
        self.clock.advance(1_750_000_000)
        self.store = MemoryStore(self.clock)
        self.metrics = Metrics()
        setAuditHook(self.metrics.auditHook())
        self.addCleanup(setAuditHook, None)
        config = makeConfig(rateLimitRegister=RateLimit(count=2, seconds=3600))
        self.config = config
        oauth, _ = buildOAuth(config, store=self.store, clock=self.clock, approver=_ScriptedApprover())
        self.site = McpsvcSite(oauth.resource(), clock=self.clock, metrics=self.metrics)
        self.count = 0

    def send(self, method: str, target: str, body: bytes = b"", contentType: str = "",
             authorization: str = "") -> "tuple[int, dict, bytes, str]":
        self.count += 1
        requestID = f"req-{self.count:03d}"
        head = f"{method} {target} HTTP/1.1\r\nHost: mcp.example.com\r\nX-Request-ID: {requestID}\r\n"
        if contentType:
            head += f"Content-Type: {contentType}\r\n"
        if authorization:
            head += f"Authorization: {authorization}\r\n"
        head += f"Content-Length: {len(body)}\r\n\r\n"
        status, headers, content, _ = rawRequest(
            self.site, head.encode() + body, peer=("192.0.2.7", 5000 + self.count))
        return status, headers, content, requestID

    def test_scriptedFlow(self) -> None:
        import json
        from urllib.parse import urlencode

        from twisted.logger import formatEvent

        from mcpsvc.oauth.test.helpers import CHALLENGE, IAT, SERVER, SNOW, VERIFIER, basic, queryOf

        def form(**fields: str) -> bytes:
            return urlencode(fields).encode()

        formType = "application/x-www-form-urlencoded"
        ids: dict = {}
        with capturedLogs() as events:
            metadata = json.dumps({
                "client_name": "ServiceNow", "redirect_uris": [SNOW],
                "token_endpoint_auth_method": "client_secret_basic",
                "grant_types": ["authorization_code", "refresh_token"],
            }).encode()
            status, _, content, ids["register"] = self.send(
                "POST", "/oauth/register", metadata, "application/json", "Bearer " + IAT)
            self.assertEqual(status, 201, content)
            client = json.loads(content)
            clientID, secret = client["client_id"], client["client_secret"]
            auth = basic(clientID, secret)

            status, _, _, ids["registerDenied"] = self.send(
                "POST", "/oauth/register", metadata, "application/json", "Bearer wrong-iat-value")
            self.assertEqual(status, 401)
            status, headers, _, ids["rateLimited"] = self.send(
                "POST", "/oauth/register", metadata, "application/json", "Bearer " + IAT)
            self.assertEqual(status, 429)
            self.assertIn("retry-after", headers)

            def authorize(state: str) -> "tuple[dict, str]":
                query = urlencode({
                    "response_type": "code", "client_id": clientID, "redirect_uri": SNOW,
                    "code_challenge": CHALLENGE, "code_challenge_method": "S256",
                    "state": state, "resource": SERVER + "/mcp",
                })
                status, headers, _, requestID = self.send("GET", "/oauth/authorize?" + query)
                self.assertEqual(status, 302)
                return queryOf(headers["location"][0]), requestID

            approved, ids["approve"] = authorize("st-1")
            code = approved["code"]
            denied, ids["deny"] = authorize("deny-me")
            self.assertEqual(denied["error"], "access_denied")

            status, _, content, ids["issue"] = self.send(
                "POST", "/oauth/token",
                form(grant_type="authorization_code", code=code, redirect_uri=SNOW,
                     code_verifier=VERIFIER), formType, auth)
            self.assertEqual(status, 200, content)
            first = json.loads(content)
            status, _, content, ids["refresh"] = self.send(
                "POST", "/oauth/token",
                form(grant_type="refresh_token", refresh_token=first["refresh_token"]), formType, auth)
            self.assertEqual(status, 200, content)
            second = json.loads(content)

            status, _, _, ids["authFailed"] = self.send(
                "POST", "/oauth/token",
                form(grant_type="refresh_token", refresh_token=second["refresh_token"]), formType,
                basic(clientID, "wrong-client-secret-value"))
            self.assertEqual(status, 401)

            status, _, _, ids["revoke"] = self.send(
                "POST", "/oauth/revoke", form(token=second["access_token"]), formType, auth)
            self.assertEqual(status, 200)

            self.clock.advance(self.config.refreshGraceSeconds + 1)
            status, _, content, ids["reuse"] = self.send(
                "POST", "/oauth/token",
                form(grant_type="refresh_token", refresh_token=first["refresh_token"]), formType, auth)
            self.assertEqual(status, 400, content)

        trail = [e for e in events if e.get("event_type") == "audit"]
        byKey: dict = {}
        for event in trail:
            byKey.setdefault((event["action"], event["outcome"]), []).append(event)
        subject = "alice"
        expected = {
            ("client.register", "success"): ("register", clientID, None),
            ("client.register", "denied"): ("registerDenied", None, None),
            ("rate_limit.hit", "denied"): ("rateLimited", None, None),
            ("authorize.approve", "success"): ("approve", clientID, subject),
            ("authorize.deny", "denied"): ("deny", clientID, None),
            ("token.issue", "success"): ("issue", clientID, subject),
            ("token.refresh", "success"): ("refresh", clientID, subject),
            ("client.auth_failed", "denied"): ("authFailed", clientID, None),
            ("token.revoke", "success"): ("revoke", clientID, subject),
            ("token.reuse_detected", "denied"): ("reuse", clientID, subject),
            # the refused request itself, besides the detection
            ("token.refresh", "failure"): ("reuse", clientID, None),
        }
        self.assertEqual(sorted(byKey), sorted(expected), [(e["action"], e["outcome"]) for e in trail])
        for key, (step, client_, subject_) in expected.items():
            (event,) = byKey[key]
            self.assertEqual(
                (event["requestID"], event["address"], event["clientID"], event["subject"]),
                (ids[step], "192.0.2.7", client_, subject_), key)
            # and the metrics hook counted it once
            self.assertEqual(self.metrics.registry.get_sample_value(
                "mcpsvc_audit_events_total", {"action": key[0], "outcome": key[1]}), 1.0, key)

        secrets = [IAT, "wrong-iat-value", secret, "wrong-client-secret-value", code,
                   first["access_token"], first["refresh_token"],
                   second["access_token"], second["refresh_token"]]
        # the refresh token's secret half too, not only the whole token
        secrets += [t.split(".", 1)[1] for t in (first["refresh_token"], second["refresh_token"])]
        for event in trail:
            text = formatEvent(event) + repr(event)
            for value in secrets:
                self.assertNotIn(value, text, event["action"])
