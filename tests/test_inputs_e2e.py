"""
The input attacks of issue 12 (sections 3 and 4) against a real
C{twistd -n mcpsvc} over loopback HTTP: each one used to answer 500 with a
critical traceback, or to grow the metrics or the log without bound.

Each class of attack is shown failing here: the JSON decoder (bodies and
token parts), form fields (the consent form's CSRF token), tool input
(C{calculate}), metric labels and logged request data.
"""

from __future__ import annotations

import base64
import html
import json
import os
import re
import urllib.parse
import urllib.request
from typing import Any, Dict, List, Tuple

from twisted.trial.unittest import SynchronousTestCase

from tests.flow import REDIRECT, Flow, http
from tests.process import SECRET, McpsvcProcess

IAT = "e2e-initial-access-token-" + "i" * 20
METRICS = "e2e-metrics-token-" + "m" * 20
DEEP = b"[" * 5000 + b"]" * 5000


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def send(url: str, data: bytes, ctype: str = "application/json", method: str = "POST",
         headers: Dict[str, str] = {}) -> Tuple[int, Dict[str, str], bytes]:
    request = urllib.request.Request(url, data=data, method=method,
                                     headers=dict({"Content-Type": ctype}, **headers))
    try:
        with urllib.request.urlopen(request, timeout=15) as response:
            return response.status, {k.lower(): v for k, v in response.headers.items()}, response.read()
    except urllib.error.HTTPError as e:
        return e.code, {k.lower(): v for k, v in e.headers.items()}, e.read()


class InputAttackTests(SynchronousTestCase):
    def start(self, **env: str) -> McpsvcProcess:
        workdir = os.path.abspath(self.mktemp())
        os.makedirs(workdir)
        process = McpsvcProcess(workdir, env=dict({
            "JWT_SECRET": SECRET, "DCR_AUTH_TOKEN": IAT, "METRICS_TOKEN": METRICS,
        }, **env))
        self.addCleanup(process.kill)
        return process.start()

    def assertNoTraceback(self, process: McpsvcProcess) -> None:
        # Read what the process has written so far (the last request's
        # log line proves the earlier ones are in).
        process.waitFor(lambda r: r.get("path") == "/health" and r.get("eventType") == "request")
        bad = [r for r in process.records if r.get("level") == "critical" or "traceback" in r]
        self.assertEqual(bad, [], json.dumps(bad)[:2000])

    def test_bodiesTokensToolsLabelsLogs(self) -> None:
        """
        Against one real process: nested and surrogate JSON on the OAuth
        endpoints, a JWT with a deeply nested header on /mcp, a tool
        input that overflows, invented HTTP methods, a refused 1 MB
        registration. Every answer is a 4xx in the path's format (or an
        explained tool error), nothing is logged with a traceback, the
        metrics grow by no series per invented method and no log line
        carries the 1 MB.
        """
        process = self.start(AUTHORIZE_MODE="auto")
        url = process.url
        iat = {"Authorization": "Bearer " + IAT}
        for path, body, headers, error in (
            ("/oauth/register", DEEP, iat, "invalid_client_metadata"),
            ("/oauth/register", b'{"client_name":"\\ud800","redirect_uris":["' + REDIRECT.encode() + b'"]}',
             iat, "invalid_client_metadata"),
            ("/oauth/register", b'{"redirect_uris":["' + REDIRECT.encode() + b'"],"token_value":"\\ud800"}',
             {}, "invalid_client_metadata"),
            ("/oauth/token", DEEP, {}, "invalid_request"),
            ("/oauth/introspect", DEEP, {}, "invalid_request"),
        ):
            status, _, raw = send(url + path, body, headers=headers)
            self.assertEqual((status, json.loads(raw)["error"]), (400, error), (path, raw[:200]))

        # A JWT whose header is nested thousands deep: 401 with the challenge.
        token = b64(b"[" * 3000 + b"]" * 3000) + ".e30.c2ln"
        status, headers, raw = send(url + "/mcp", b'{"jsonrpc":"2.0","id":1,"method":"tools/list"}', headers={
            "Authorization": "Bearer " + token, "Accept": "application/json, text/event-stream"})
        self.assertEqual(status, 401, raw[:300])
        self.assertIn('error="invalid_token"', headers["www-authenticate"])
        self.assertEqual(json.loads(raw)["jsonrpc"], "2.0")

        # A real client: its tool call that overflows a float is a tool error.
        flow = Flow("http://127.0.0.1:3000", IAT)  # the default SERVER_URL
        self.assertEqual(flow.register(url)[0], 201)
        self.assertEqual(flow.exchange(url, flow.authorize(url))[0], 200)
        self.assertEqual(flow.initialize(url)[0], 200)
        status, _, answer = flow.callTool(url, "calculate", {"expression": "2**4000*1.5"})
        self.assertEqual(status, 200)
        result = answer["result"]
        self.assertTrue(result["isError"])
        self.assertIn("too large for a floating-point number", result["content"][0]["text"])
        status, _, answer = flow.mcp(url, "tools/list")
        self.assertEqual(status, 200)
        # Its MCP body nested too deep: a parse error, the session still works.
        status, _, raw = send(url + "/mcp", DEEP, headers={
            "Authorization": "Bearer " + flow.tokens["access_token"], "Mcp-Session-Id": flow.sessionID or "",
            "MCP-Protocol-Version": "2025-06-18", "Accept": "application/json, text/event-stream"})
        self.assertEqual((status, json.loads(raw)["error"]["code"]), (400, -32700))

        # Invented methods: counted as "other", one series however many.
        for i in range(30):
            status, _, _ = send(url + "/health", b"", method=f"BREW{i}")
            self.assertLess(status, 500)
        status, _, metrics = send(url + "/metrics", b"", method="GET", headers={"Authorization": "Bearer " + METRICS})
        self.assertEqual(status, 200)
        text = metrics.decode()
        self.assertNotIn('method="BREW', text)
        self.assertIn('method="other"', text)

        # A refused registration of about 1 MB is not logged whole.
        big = json.dumps({"client_name": "n" * 500_000, "redirect_uris": ["https://x.example/" + "r" * 400_000]})
        status, _, _ = send(url + "/oauth/register", big.encode(), headers={"Authorization": "Bearer wrong"})
        self.assertEqual(status, 401)
        status, _, _ = send(url + "/health", b"", method="GET")
        self.assertEqual(status, 200)
        self.assertNoTraceback(process)
        longest = max(len(line) for line in process.lines)
        self.assertLess(longest, 20_000)
        self.assertEqual(process.stop(), 0)

    def test_consentFormCSRF(self) -> None:
        """
        The consent page's form posted back with a non-ASCII character in
        its CSRF token: a 400 page, nothing approved, no traceback.
        """
        process = self.start(AUTHORIZE_MODE="consent")
        url = process.url
        flow = Flow("http://127.0.0.1:3000", IAT)  # the default SERVER_URL
        self.assertEqual(flow.register(url)[0], 201)
        query = urllib.parse.urlencode({
            "response_type": "code", "client_id": flow.client["client_id"], "redirect_uri": REDIRECT,
            "code_challenge": flow.challenge, "code_challenge_method": "S256", "state": "s",
        })
        status, _, page = http(url + "/oauth/authorize?" + query, headers={"Accept": "text/html"})
        self.assertEqual(status, 200)
        fields: Dict[str, str] = {}
        for match in re.finditer(r'<input type="hidden" name="([^"]+)" value="([^"]*)"', page.decode()):
            fields.setdefault(html.unescape(match.group(1)), html.unescape(match.group(2)))
        token = fields["csrf_token"]
        for bad in (token[:30] + "\u00e9" + token[30:], "v1.\u00e9.x"):
            status, headers, body = http(url + "/oauth/authorize", method="POST",
                                         form=dict(fields, csrf_token=bad, decision="approve"),
                                         headers={"Accept": "text/html"})
            self.assertEqual(status, 400, str(body)[:300])
            self.assertNotIn("location", headers)
            self.assertIn("text/html", headers["content-type"])
        send(url + "/health", b"", method="GET")
        self.assertNoTraceback(process)
        self.assertEqual(process.stop(), 0)
