"""
The attacks of issue 12 section 3 ("no request makes a handler crash") and
section 4 (labels and logs that grow), each against the whole site in
memory: every one answered a 500 with a critical traceback, or grew the
metrics or the log without bound, before the fixes.

The same attacks against a real process are in C{tests/test_inputs_e2e.py}.
"""

from __future__ import annotations

import base64
import json
import urllib.parse
from typing import Any, Dict, List, Sequence, Tuple

from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from mcpsvc.test.test_fuzz import IAT, REDIRECT, LogWatch, _service, raw, send

DEEP = b"[" * 5000 + b"]" * 5000
DEEP_OBJECT = b'{"a":' * 3000 + b"1" + b"}" * 3000


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class SiteTestCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.service = _service(type(self))
        self.watch = LogWatch()
        self.events: List[Dict[str, Any]] = []
        globalLogPublisher.addObserver(self.watch)
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.watch)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def post(self, path: str, body: bytes, headers: Sequence[Tuple[bytes, bytes]] = (),
             ctype: bytes = b"application/json", site: Any = None, method: bytes = b"POST") -> Tuple[int, Dict[str, List[str]], Any]:
        allHeaders = [(b"Content-Type", ctype)] + list(headers) if ctype else list(headers)
        status, responseHeaders, responseBody, _ = send(
            site or self.service.auto, raw(method, path.encode("latin-1"), allHeaders, body))
        self.assertEqual(self.watch.take(), [])
        try:
            parsed = json.loads(responseBody)
        except ValueError:
            parsed = responseBody
        return status, responseHeaders, parsed

    def assertOAuth(self, result: Tuple[int, Any, Any], status: int, error: str) -> None:
        self.assertEqual((result[0], result[2]["error"]), (status, error), result)
        self.assertIsInstance(result[2].get("error_description"), str)


class JSONBodyTests(SiteTestCase):
    iat = [(b"Authorization", b"Bearer " + IAT.encode())]

    def test_deepRegistration(self) -> None:
        """
        JSON nested thousands deep is refused on /oauth/register as client
        metadata that is not valid, not answered 500.
        """
        for body in (DEEP, DEEP_OBJECT):
            self.assertOAuth(self.post("/oauth/register", body, self.iat), 400, "invalid_client_metadata")

    def test_deepTokenAndIntrospection(self) -> None:
        """
        /oauth/token, /oauth/revoke and /oauth/introspect accept JSON
        bodies: nesting thousands deep is an C{invalid_request}.
        """
        for path in ("/oauth/token", "/token", "/oauth/introspect", "/oauth/revoke"):
            self.assertOAuth(self.post(path, DEEP), 400, "invalid_request")

    def test_loneSurrogate(self) -> None:
        """
        A lone surrogate (valid JSON text, but no UTF-8 string can hold
        it) in the client name, the initial access token or any token
        request field is refused with a 400 in the OAuth format.
        """
        name = b'{"client_name":"\\ud800","redirect_uris":["' + REDIRECT.encode() + b'"]}'
        self.assertOAuth(self.post("/oauth/register", name, self.iat), 400, "invalid_client_metadata")
        iat = b'{"client_name":"x","redirect_uris":["' + REDIRECT.encode() + b'"],"token_value":"\\udfff"}'
        self.assertOAuth(self.post("/oauth/register", iat), 400, "invalid_client_metadata")
        self.assertOAuth(self.post("/oauth/token", b'{"grant_type":"\\ud800"}'), 400, "invalid_request")

    def test_mcpBody(self) -> None:
        """
        Under /mcp the same bodies are JSON-RPC parse errors (-32700),
        with status 400.
        """
        for body in (DEEP, b'{"jsonrpc":"2.0","id":"\\ud800","method":"tools/list"}',
                     b'{"jsonrpc":"2.0","id":1,"method":"tools/list","params":{"x":1e999}}'):
            status, _, parsed = self.post("/mcp", body, self.service.mcpHeaders(), ctype=b"")
            self.assertEqual((status, parsed["error"]["code"]), (400, -32700), parsed)

    def test_nonUTF8Header(self) -> None:
        """
        A header value that is not UTF-8 is read as ISO-8859-1, not a 500:
        here an initial access token that simply does not match.
        """
        body = json.dumps({"client_name": "x", "redirect_uris": [REDIRECT]}).encode()
        self.assertOAuth(self.post("/oauth/register", body, [(b"Authorization", b"Bearer \xff\xfe")]),
                         401, "invalid_token")
        status, _, _ = self.post("/health", b"", [(b"X-Request-ID", b"\xff"), (b"Origin", b"\xff")],
                                 ctype=b"", method=b"GET")
        self.assertEqual(status, 200)

    def test_undecodablePath(self) -> None:
        """
        A percent-encoded path that is not UTF-8 is a 400 in the path's
        format (Klein logged a traceback for it).
        """
        self.assertOAuth(self.post("/oauth/token%ff", b"{}"), 400, "invalid_request")
        status, _, parsed = self.post("/health%ff", b"", ctype=b"", method=b"GET")
        self.assertEqual((status, parsed["error"]), (400, "invalid_request"))


class TokenPartTests(SiteTestCase):
    def test_deepJWTHeaderOnMCP(self) -> None:
        """
        A bearer token whose header decodes to deeply nested JSON is a 401
        with the C{WWW-Authenticate} challenge (it was a 500 without one).
        """
        token = b64(b"[" * 3000 + b"]" * 3000) + ".e30.c2ln"
        headers = [h for h in self.service.mcpHeaders() if h[0] != b"Authorization"]
        status, responseHeaders, parsed = self.post(
            "/mcp", b'{"jsonrpc":"2.0","id":1,"method":"tools/list"}',
            headers + [(b"Authorization", b"Bearer " + token.encode())], ctype=b"")
        self.assertEqual(status, 401)
        challenge = responseHeaders["www-authenticate"][0]
        self.assertIn('error="invalid_token"', challenge)
        self.assertIn("resource_metadata=", challenge)
        self.assertEqual(parsed["jsonrpc"], "2.0")

    def test_deepJWTElsewhere(self) -> None:
        """
        The same token at revocation and introspection is simply not a
        token of ours.
        """
        client = self.service.client
        token = b64(b'{"a":' * 2000 + b"1" + b"}" * 2000) + "." + b64(b"[" * 2000 + b"]" * 2000) + ".c2ln"
        form = urllib.parse.urlencode({"token": token, "client_id": client["client_id"],
                                       "client_secret": client["client_secret"]}).encode()
        status, _, parsed = self.post("/oauth/introspect", form, ctype=b"application/x-www-form-urlencoded")
        self.assertEqual((status, parsed), (200, {"active": False}))
        status, _, _ = self.post("/oauth/revoke", form, ctype=b"application/x-www-form-urlencoded")
        self.assertEqual(status, 200)

    def test_nonASCIICSRFToken(self) -> None:
        """
        A consent form whose C{csrf_token} holds a non-ASCII character is
        refused with the 400 page, not a 500.
        """
        fields = dict(self.service.consentFields, decision="approve")
        token = fields["csrf_token"]
        for bad in (token[:40] + "\u00e9" + token[40:], "v1.\u00e9.x", "v1.x.\u00e9", "\u00e9"):
            body = urllib.parse.urlencode(dict(fields, csrf_token=bad)).encode()
            status, responseHeaders, page = self.post(
                "/oauth/authorize", body, ctype=b"application/x-www-form-urlencoded",
                site=self.service.consent)
            self.assertEqual(status, 400, page)
            self.assertIn("text/html", responseHeaders["content-type"][0])
            self.assertNotIn("location", responseHeaders)


class ToolTests(SiteTestCase):
    def call(self, name: str, arguments: Dict[str, Any]) -> Dict[str, Any]:
        body = json.dumps({"jsonrpc": "2.0", "id": 5, "method": "tools/call",
                           "params": {"name": name, "arguments": arguments}}).encode()
        status, _, parsed = self.post("/mcp", body, self.service.mcpHeaders(), ctype=b"")
        self.assertEqual(status, 200, parsed)
        return parsed["result"]  # type: ignore[no-any-return]

    def test_calculateOverflow(self) -> None:
        """
        C{2**4000*1.5} (and the other ways of overflowing a float) is an
        explained tool error, not "internal error" with a traceback.
        """
        for expression in ("2**4000*1.5", "2**4000/3", "2**4000+1.0", "sqrt(2**4000)",
                           "round(2**4000*1.0)", "2**4000//0.5", "2**4000%1.5"):
            result = self.call("calculate", {"expression": expression})
            self.assertTrue(result["isError"], result)
            text = result["content"][0]["text"]
            self.assertIn("too large for a floating-point number", text)
            self.assertNotIn("internal error", text)


class BoundsTests(SiteTestCase):
    def test_inventedMethodsOneSeries(self) -> None:
        """
        Invented HTTP methods (any token is legal) are counted under
        C{method="other"}: a thousand of them add no series.
        """
        metrics = self.service.metrics

        def series() -> set:
            return {tuple(sorted(s.labels.items())) for m in metrics.requests.collect() for s in m.samples}

        send(self.service.auto, raw(b"BREW0", b"/health", [], b""))
        before = series()
        for i in range(200):
            send(self.service.auto, raw(f"BREW{i}".encode(), b"/health", [], b""))
            send(self.service.auto, raw(f"X{i}".encode(), f"/nowhere/{i}".encode(), [], b""))
        after = series()
        methods = {dict(labels)["method"] for labels in after}
        self.assertFalse({m for m in methods if m.startswith(("BREW", "X"))})
        self.assertIn("other", methods)
        self.assertLessEqual(len(after - before), 2)

    def test_refusedRegistrationLogBounded(self) -> None:
        """
        A refused registration of about 1 MB is logged in a few kilobytes,
        not whole.
        """
        body = json.dumps({
            "client_name": "n" * 400_000, "redirect_uris": ["https://x.example/" + "r" * 300_000],
            "grant_types": ["g" * 1000] * 200, **{f"k{i}": 1 for i in range(5000)},
        }).encode()
        self.assertGreater(len(body), 700_000)
        for headers in ([], [(b"Authorization", b"Bearer " + IAT.encode())]):
            del self.events[:]
            status, _, _ = self.post("/oauth/register", body, headers)
            self.assertEqual(status // 100, 4)
            from twisted.logger import formatEvent

            for event in self.events:
                size = len(repr({k: v for k, v in event.items() if not k.startswith("log_")}))
                self.assertLess(size, 8000, formatEvent(event)[:200])

    def test_clientIDLogBounded(self) -> None:
        """
        A 90 KB client id in a failed client authentication is logged cut.
        """
        form = urllib.parse.urlencode({"grant_type": "client_credentials", "client_id": "c" * 90_000,
                                       "client_secret": "s"}).encode()
        del self.events[:]
        status, _, _ = self.post("/oauth/token", form, ctype=b"application/x-www-form-urlencoded")
        self.assertEqual(status, 401)
        for event in self.events:
            size = len(repr({k: v for k, v in event.items() if not k.startswith("log_")}))
            self.assertLess(size, 8000)
