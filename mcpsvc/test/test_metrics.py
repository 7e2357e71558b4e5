"""
Tests for L{mcpsvc.metrics}, C{/metrics} and L{mcpsvc.audit}.
"""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.logger import capturedLogs
from twisted.trial.unittest import SynchronousTestCase

from mcpsvc.audit import audit, setAuditHook
from mcpsvc.config import loadConfig
from mcpsvc.http.app import Dispatcher, RootApp
from mcpsvc.http.metrics import buildMetrics
from mcpsvc.http.site import McpsvcSite
from mcpsvc.metrics import Metrics, routeLabel
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
