"""
Several instances, one service (issue 7, item 1): three C{twistd -n
mcpsvc} processes and one real C{redis-server}, all on loopback, with
C{STORE=redis}, C{DEPLOYMENT_TYPE=multi-server} and one C{JWT_SECRET}.
They share one public C{SERVER_URL} (the issuer and audience), as behind a
load balancer; each step of one client's flow goes to a different
instance, and a revocation on one is honoured by another on its very next
request. Rate limits are counted across all three.
"""

from __future__ import annotations

from typing import List

from twisted.trial.unittest import SynchronousTestCase

from tests.flow import Flow
from tests.process import McpsvcProcess, startInstances

IAT = "initial-access-token-" + "3" * 24


class ThreeInstancesTests(SynchronousTestCase):
    def startInstances(self, **extra: str) -> List[McpsvcProcess]:
        self.serverURL, processes = startInstances(self, 3, IAT, **extra)
        return processes

    def test_oneServiceAcrossInstances(self) -> None:
        """
        Register on A, authorize on B, exchange the code on C; open an MCP
        session on A and continue it on B; refresh on A and use the new
        token on C in the same session; revoke on C: A refuses the token on
        its next request (and B too), though A accepted it just before.
        Registrations are limited across the three (3 per hour: two on A
        and one on B pass, the next on C is 429 with Retry-After).
        """
        a, b, c = self.startInstances(RATE_LIMIT_REGISTER="3/3600")
        A, B, C = a.url, b.url, c.url
        flow = Flow(self.serverURL, IAT)

        status, _, client = flow.register(A)
        self.assertEqual(status, 201, client)
        code = flow.authorize(B)
        status, _, tokens = flow.exchange(C, code)
        self.assertEqual(status, 200, tokens)

        status, headers, body = flow.initialize(A)
        self.assertEqual(status, 200, body)
        self.assertTrue(flow.sessionID)
        status, _, body = flow.callTool(B, "echo_message", {"message": "on B"})
        self.assertEqual(status, 200, body)
        self.assertEqual(body["result"]["content"][0]["text"], "on B")

        status, _, refreshed = flow.refresh(A)
        self.assertEqual(status, 200, refreshed)
        self.assertNotEqual(refreshed["access_token"], tokens["access_token"])
        status, _, body = flow.callTool(C, "echo_message", {"message": "on C"})
        self.assertEqual(status, 200, body)

        # A accepts the token, C revokes it, A refuses it at once.
        access = flow.tokens["access_token"]
        self.assertEqual(flow.callTool(A, "echo_message", {"message": "before"})[0], 200)
        self.assertEqual(flow.revoke(C, access)[0], 200)
        status, headers, _ = flow.callTool(A, "echo_message", {"message": "after"})
        self.assertEqual(status, 401)
        self.assertIn('error="invalid_token"', headers.get("www-authenticate", ""))
        self.assertEqual(flow.callTool(B, "echo_message", {"message": "after"})[0], 401)
        # Only the access token was revoked: the grant lives on, and a
        # refresh on B gives a token that A accepts.
        self.assertEqual(flow.refresh(B)[0], 200)
        self.assertEqual(flow.callTool(A, "echo_message", {"message": "renewed"})[0], 200)
        # Rate limits: one registration on A so far; one more on A and one
        # on B pass, the fourth (on C) is refused.
        other = Flow(self.serverURL, IAT)
        self.assertEqual(other.register(A)[0], 201)
        self.assertEqual(other.register(B)[0], 201)
        status, headers, body = other.register(C)
        self.assertEqual(status, 429, body)
        self.assertGreater(int(headers["retry-after"]), 0)
        # Every instance saw its part.
        for process, path in ((a, "/oauth/register"), (b, "/oauth/authorize"), (c, "/oauth/token"),
                              (c, "/oauth/revoke")):
            process.waitFor(lambda r: r.get("eventType") == "request" and r.get("path") == path, 5)
        for process in (a, b, c):
            self.assertEqual(process.stop(), 0)
