"""
C{/metrics} of a real C{twistd -n mcpsvc}, scraped after a scripted flow
(issue 7, "What it must show"): register, authorize (auto mode), exchange,
three tool calls, refresh, revoke, and a registration refused by the rate
limit. Every counter the flow touches moved by exactly the expected
amount; store latency was measured; the active-sessions gauge counts the
session; without C{METRICS_TOKEN} the scrape is refused.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Dict, Tuple

from twisted.trial.unittest import SynchronousTestCase

from mcpsvc.testing.redis import freePort
from tests.flow import Flow, http, metricSamples
from tests.process import SECRET, McpsvcProcess

IAT = "initial-access-token-" + "m" * 24
METRICS_TOKEN = "metrics-token-" + "q" * 20


def label(**labels: str) -> Tuple[Tuple[str, str], ...]:
    return tuple(sorted(labels.items()))


class MetricsEndToEndTests(SynchronousTestCase):
    def startServer(self) -> McpsvcProcess:
        workdir = os.path.abspath(self.mktemp())
        os.makedirs(workdir)
        port = freePort()
        process = McpsvcProcess(workdir, env={
            "JWT_SECRET": SECRET,
            "DCR_AUTH_TOKEN": IAT,
            "AUTHORIZE_MODE": "auto",
            "SERVER_URL": f"http://127.0.0.1:{port}",
            "METRICS_TOKEN": METRICS_TOKEN,
            "RATE_LIMIT_REGISTER": "2/3600",
            "SWEEP_INTERVAL": "1",
        }, listen=[f"tcp:{port}:interface=127.0.0.1"])
        self.addCleanup(process.kill)
        return process.start()

    def scrape(self, url: str) -> Dict[Tuple[str, Tuple[Tuple[str, str], ...]], float]:
        status, headers, body = http(url + "/metrics", headers={"Authorization": "Bearer " + METRICS_TOKEN})
        self.assertEqual(status, 200, body)
        self.assertTrue(headers["content-type"].startswith("text/plain"), headers)
        return metricSamples(body.decode())

    def test_countersAfterFlow(self) -> None:
        process = self.startServer()
        url = process.url
        flow = Flow(url, IAT)

        # Registration: one accepted, one refused (wrong initial access
        # token), then the third hits RATE_LIMIT_REGISTER=2/3600.
        self.assertEqual(flow.register(url)[0], 201)
        self.assertEqual(flow.register(url, iat="wrong-" + IAT)[0], 401)
        status, headers, _ = flow.register(url)
        self.assertEqual(status, 429)
        self.assertIn("retry-after", headers)

        code = flow.authorize(url)
        self.assertEqual(flow.exchange(url, code)[0], 200)
        self.assertEqual(flow.initialize(url)[0], 200)
        self.assertIsNotNone(flow.sessionID)
        for i in range(3):
            status, _, body = flow.callTool(url, "echo_message", {"message": f"hello {i}"})
            self.assertEqual(status, 200, body)
            self.assertEqual(body["result"]["content"][0]["text"], f"hello {i}")
        self.assertEqual(flow.refresh(url)[0], 200)
        self.assertEqual(flow.revoke(url, flow.tokens["access_token"])[0], 200)

        # Refused without the token (and with a wrong one).
        self.assertEqual(http(url + "/metrics")[0], 401)
        self.assertEqual(http(url + "/metrics", headers={"Authorization": "Bearer wrong"})[0], 401)

        # The sweeper (every second) counts the live session: wait for it,
        # bounded.
        deadline = time.monotonic() + 10
        while True:
            samples = self.scrape(url)
            if samples.get(("mcpsvc_active_sessions", ())) == 1.0 or time.monotonic() > deadline:
                break
            time.sleep(0.2)  # bounded by the deadline: the sweeper runs every second
        self.assertEqual(samples.get(("mcpsvc_active_sessions", ())), 1.0)

        requests = "mcpsvc_http_requests_total"
        expected = {
            (requests, label(route="/oauth/register", method="POST", status="201")): 1,
            (requests, label(route="/oauth/register", method="POST", status="401")): 1,
            (requests, label(route="/oauth/register", method="POST", status="429")): 1,
            (requests, label(route="/oauth/authorize", method="GET", status="302")): 1,
            (requests, label(route="/oauth/token", method="POST", status="200")): 2,
            (requests, label(route="/oauth/revoke", method="POST", status="200")): 1,
            # initialize + three tools/call; the notification is 202
            (requests, label(route="/mcp", method="POST", status="200")): 4,
            (requests, label(route="/mcp", method="POST", status="202")): 1,
            (requests, label(route="/metrics", method="GET", status="401")): 2,
        }
        audit = "mcpsvc_audit_events_total"
        for action, outcome in (
            ("client.register", "success"), ("client.register", "denied"),
            ("rate_limit.hit", "denied"), ("authorize.approve", "success"),
            ("token.issue", "success"), ("token.refresh", "success"),
            ("token.revoke", "success"),
        ):
            expected[(audit, label(action=action, outcome=outcome))] = 1
        expected[("mcpsvc_tool_calls_total", label(tool="echo_message", outcome="ok"))] = 3
        actual = {key: samples.get(key) for key in expected}
        self.assertEqual(actual, {k: float(v) for k, v in expected.items()})
        # Nothing else in the audit trail: no failures were recorded.
        self.assertEqual(
            sorted(dict(k[1])["action"] + "/" + dict(k[1])["outcome"] for k in samples if k[0] == audit),
            sorted(dict(k[1])["action"] + "/" + dict(k[1])["outcome"] for k in expected if k[0] == audit),
        )
        # Every request to the token endpoint has a duration sample.
        self.assertEqual(samples[("mcpsvc_http_request_duration_seconds_count", label(route="/oauth/token"))], 2.0)

        # The store was measured, operation by operation.
        latency = "mcpsvc_store_operation_seconds_count"
        for operation, count in (
            ("createClient", 1), ("storeCode", 1), ("consumeCode", 1), ("createFamily", 1),
            ("rotateRefresh", 1), ("revokeJTI", 1), ("createSession", 1),
        ):
            self.assertEqual(samples.get((latency, label(operation=operation))), float(count), operation)
        for operation in ("takeToken", "getClient", "isAnyRevoked", "getSession", "sweep", "countSessions"):
            self.assertGreaterEqual(samples.get((latency, label(operation=operation)), 0.0), 1.0, operation)
        self.assertGreater(samples[("mcpsvc_store_operation_seconds_sum", label(operation="createClient"))], 0.0)
        self.assertNotIn(True, [k[0] == "mcpsvc_store_errors_total" and v > 0 for k, v in samples.items()])

        shown = {f"{name}{dict(labels)}": value for (name, labels), value in samples.items()
                 if name.endswith("_total") or name == "mcpsvc_active_sessions"}
        print("\n[metrics] " + "\n[metrics] ".join(f"{k} {v}" for k, v in sorted(shown.items())),
              file=sys.stderr)
        self.assertEqual(process.stop(), 0)
