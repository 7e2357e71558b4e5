"""
Tests for the shared HTTP layer: L{mcpsvc.http.site}, L{mcpsvc.http.app},
L{mcpsvc.http.errors} and L{mcpsvc.http.jsonio}, driven through a real
L{HTTPChannel} over an in-memory transport (no sockets).
"""

from __future__ import annotations

import json
from typing import Any, ClassVar, List

from attrs import frozen
from klein import Klein
from twisted.internet.task import Clock
from twisted.logger import LogLevel, capturedLogs
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.iweb import IRequest

from mcpsvc import __version__
from mcpsvc.http.app import Dispatcher, RootApp
from mcpsvc.http.errors import BadRequest, OAuthError, installErrorHandlers
from mcpsvc.http.jsonio import readForm, readJSON, writeJSON
from mcpsvc.http.site import McpsvcSite, redactAuthorization
from mcpsvc.test.fakes import PingStore, rawRequest

EPOCH = 1_750_000_000.0


class Boom(Exception):
    pass


@frozen
class EchoApp:
    """
    Routes that exercise the error families and body readers.
    """

    app: ClassVar[Klein] = Klein()
    installErrorHandlers(app)

    def resource(self) -> Any:
        return self.app.resource()

    @app.route("/mcp", methods=["POST"])
    def mcp(self, request: IRequest) -> bytes:
        raise BadRequest("bad message")

    @app.route("/oauth/token", methods=["POST"])
    def token(self, request: IRequest) -> bytes:
        form = readForm(request)
        if form.get("grant_type") != "x":
            raise OAuthError("unsupported_grant_type", "no such grant")
        return writeJSON(request, form)

    @app.route("/json", methods=["POST"])
    def json(self, request: IRequest) -> bytes:
        return writeJSON(request, {"got": readJSON(request)})

    @app.route("/boom")
    def boom(self, request: IRequest) -> bytes:
        raise Boom("secret internals")


def makeSite(store: PingStore | None = None, **kw: Any) -> McpsvcSite:
    clock = Clock()
    clock.advance(EPOCH)
    echo = EchoApp().resource()
    root = RootApp(clock=clock, ping=(store or PingStore()).ping)
    dispatcher = Dispatcher(
        [("/mcp", echo), ("/oauth/", echo), ("/json", echo), ("/boom", echo)],
        root.resource(),
    )
    kw.setdefault("allowedOrigins", ["https://dev1.service-now.com"])
    return McpsvcSite(dispatcher, clock=clock, **kw)


def get(path: str, headers: str = "") -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: localhost\r\n{headers}\r\n".encode()


def post(path: str, body: bytes, contentType: str = "application/json", headers: str = "") -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: {contentType}\r\n"
        f"Content-Length: {len(body)}\r\n{headers}\r\n"
    ).encode() + body


class HealthTests(SynchronousTestCase):
    def test_health(self) -> None:
        """
        C{GET /health} answers 200 with status, mcpsvc's version and an ISO
        8601 timestamp.
        """
        status, headers, body, _ = rawRequest(makeSite(), get("/health"))
        self.assertEqual(status, 200)
        self.assertEqual(headers["content-type"], ["application/json"])
        self.assertEqual(
            json.loads(body),
            {"status": "healthy", "version": __version__, "timestamp": "2025-06-15T15:06:40.000Z"},
        )

    def test_ready(self) -> None:
        """
        C{GET /ready} is 200 while the store answers and 503 with a reason
        and C{Retry-After} when it does not.
        """
        store = PingStore()
        site = makeSite(store)
        status, _, body, _ = rawRequest(site, get("/ready"))
        self.assertEqual((status, json.loads(body)["status"]), (200, "ready"))
        store.up = False
        with capturedLogs():
            status, headers, body, _ = rawRequest(site, get("/ready"))
        self.assertEqual(status, 503)
        self.assertEqual(headers["retry-after"], ["5"])
        self.assertIn("unavailable", json.loads(body)["reasons"]["store"])

    def test_readyKeepsStoreErrorsInTheLog(self) -> None:
        """
        The store's error text (host names, file paths, a server's message)
        is logged, never returned: C{/ready} answers anyone.
        """
        from twisted.internet.defer import fail

        from mcpsvc.storage.interfaces import StoreUnavailable

        for error in (
            StoreUnavailable("Redis redis-master.internal:6379: NOAUTH secret-ish detail"),
            ValueError("/srv/mcpsvc/var/mcpsvc.sqlite3: disk I/O error"),
        ):
            store = PingStore()
            store.ping = lambda error=error: fail(error)  # type: ignore[method-assign]
            site = makeSite(store)
            with capturedLogs() as events:
                status, _, body, _ = rawRequest(site, get("/ready"))
            self.assertEqual(status, 503)
            answer = json.loads(body)
            self.assertEqual(answer["reasons"], {"store": "unavailable"})
            self.assertNotIn(str(error).encode(), body)
            logged = " ".join(
                str(e.get("reasons")) for e in events if e.get("log_format") == "Not ready: {reasons}"
            )
            self.assertIn(str(error), logged)


class ReadyAbortTests(SynchronousTestCase):
    def test_proberGoneIsNotUnready(self) -> None:
        """
        A readiness probe whose client disconnects while the store is
        being pinged logs no "Not ready" warning (the store is not down).
        """
        from twisted.internet.defer import Deferred
        from twisted.internet.error import ConnectionLost
        from twisted.internet.testing import StringTransport
        from twisted.python.failure import Failure
        from twisted.web.http import HTTPChannel

        store = PingStore()
        store.ping = lambda: Deferred()  # type: ignore[method-assign]
        site = makeSite(store)
        channel = HTTPChannel()
        channel.site = site
        channel.requestFactory = site.requestFactory
        channel.makeConnection(StringTransport())
        with capturedLogs() as events:
            channel.dataReceived(get("/ready"))
            channel.connectionLost(Failure(ConnectionLost()))
        self.assertEqual([e for e in events if e.get("log_level") == LogLevel.warn], [])
        (event,) = [e for e in events if e.get("eventType") == "request"]
        self.assertEqual(event["status"], 499)


class BodyLimitTests(SynchronousTestCase):
    """
    Bodies beyond the limit are refused while reading.
    """

    def test_announcedTooLarge(self) -> None:
        """
        A Content-Length over the limit is answered 413 before any body is
        read, and the connection is closed.
        """
        site = makeSite()
        head = (
            b"POST /json HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
            b"Content-Length: 2147483648\r\nExpect: 100-continue\r\n\r\n"
        )
        status, headers, body, transport = rawRequest(site, head)
        self.assertEqual(status, 413)
        self.assertNotIn(b"100 Continue", transport.value())
        self.assertEqual(headers["connection"], ["close"])
        self.assertTrue(transport.disconnecting)
        self.assertEqual(json.loads(body)["error"], "payload_too_large")
        self.assertEqual(site.inFlight, set())

    def test_chunkedTooLarge(self) -> None:
        """
        A chunked body is cut off once it passes the limit.
        """
        site = makeSite(bodyLimit=1000)
        head = (
            b"POST /mcp HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
        )
        chunk = b"200\r\n" + b"x" * 0x200 + b"\r\n"
        status, _, body, transport = rawRequest(site, head + chunk + chunk + chunk)
        self.assertEqual(status, 413)
        self.assertEqual(json.loads(body)["error"]["code"], -32600)
        self.assertTrue(transport.disconnecting)

    def test_underLimitServed(self) -> None:
        """
        A body within the limit is served.
        """
        status, _, body, _ = rawRequest(makeSite(), post("/json", b'{"a": 1}'))
        self.assertEqual((status, json.loads(body)), (200, {"got": {"a": 1}}))

    def test_formLimit(self) -> None:
        """
        Form bodies are limited to 100 KB (413), below the JSON limit.
        """
        body = b"grant_type=x&pad=" + b"a" * (100 * 1024)
        status, _, out, _ = rawRequest(makeSite(), post("/oauth/token", body, "application/x-www-form-urlencoded"))
        self.assertEqual(status, 413)
        self.assertEqual(json.loads(out)["error"], "payload_too_large")


class ContentTests(SynchronousTestCase):
    def test_wrongContentType(self) -> None:
        """
        A JSON route refuses another content type with 415.
        """
        status, _, body, _ = rawRequest(makeSite(), post("/json", b"a=1", "text/plain"))
        self.assertEqual(status, 415)

    def test_malformedJSON(self) -> None:
        """
        Malformed JSON is a 400.
        """
        status, _, body, _ = rawRequest(makeSite(), post("/json", b"{nope"))
        self.assertEqual(status, 400)
        self.assertEqual(json.loads(body)["error"], "invalid_json")

    def test_strictJSON(self) -> None:
        """
        NaN and Infinity are not JSON.
        """
        for text in (b"NaN", b'{"a": Infinity}', b"[-Infinity]"):
            status, _, _, _ = rawRequest(makeSite(), post("/json", text))
            self.assertEqual(status, 400, text)

    def test_repeatedFormParameter(self) -> None:
        """
        A repeated form parameter is refused.
        """
        status, _, body, _ = rawRequest(
            makeSite(), post("/oauth/token", b"grant_type=x&grant_type=y", "application/x-www-form-urlencoded")
        )
        self.assertEqual(status, 400)
        self.assertEqual(json.loads(body)["error"], "invalid_request")


class ErrorFamilyTests(SynchronousTestCase):
    """
    Errors take the format of the path's family.
    """

    def test_jsonrpc(self) -> None:
        status, _, body, _ = rawRequest(makeSite(), post("/mcp", b"{}"))
        self.assertEqual(status, 400)
        self.assertEqual(
            json.loads(body),
            {"jsonrpc": "2.0", "id": None, "error": {"code": -32600, "message": "bad message"}},
        )

    def test_oauth(self) -> None:
        status, headers, body, _ = rawRequest(
            makeSite(), post("/oauth/token", b"grant_type=y", "application/x-www-form-urlencoded")
        )
        self.assertEqual(status, 400)
        self.assertEqual(json.loads(body), {"error": "unsupported_grant_type", "error_description": "no such grant"})
        self.assertEqual(headers["cache-control"], ["no-store"])

    def test_plainNotFound(self) -> None:
        """
        An unknown path is a JSON 404 with request id and timestamp.
        """
        status, headers, body, _ = rawRequest(makeSite(), get("/nowhere", "X-Request-ID: abc-123\r\n"))
        self.assertEqual(status, 404)
        self.assertEqual(
            json.loads(body),
            {"error": "not_found", "message": "No such resource", "request_id": "abc-123",
             "timestamp": "2025-06-15T15:06:40Z"},
        )

    def test_methodNotAllowed(self) -> None:
        """
        A known path with the wrong method is a JSON 405 with C{Allow}.
        """
        status, headers, body, _ = rawRequest(makeSite(), post("/health", b"{}"))
        self.assertEqual(status, 405)
        self.assertEqual(headers["allow"], ["GET, HEAD"])
        self.assertEqual(json.loads(body)["error"], "method_not_allowed")

    def test_unexpected(self) -> None:
        """
        An unexpected exception is a generic 500; the traceback is logged,
        never sent.
        """
        with capturedLogs() as events:
            status, _, body, _ = rawRequest(makeSite(), get("/boom"))
        self.assertEqual(status, 500)
        self.assertNotIn(b"secret internals", body)
        self.assertNotIn(b"Traceback", body)
        self.assertEqual(json.loads(body)["error"], "server_error")
        failures = [e for e in events if e.get("log_failure") is not None]
        self.assertEqual(len(failures), 1)
        self.assertIsInstance(failures[0]["log_failure"].value, Boom)
        self.flushLoggedErrors(Boom)


class HeaderTests(SynchronousTestCase):
    def test_securityHeaders(self) -> None:
        """
        Every response, errors included, carries nosniff and no-referrer.
        """
        for request in (get("/health"), get("/nowhere"), post("/mcp", b"{}")):
            _, headers, _, _ = rawRequest(makeSite(), request)
            self.assertEqual(headers["x-content-type-options"], ["nosniff"])
            self.assertEqual(headers["referrer-policy"], ["no-referrer"])

    def test_requestIDGenerated(self) -> None:
        """
        Without a sane X-Request-ID an id (random process prefix, counter)
        is generated and echoed; no two requests share one.
        """
        seen = set()
        for extra in ("", "X-Request-ID: <script>\r\n", "X-Request-ID: " + "a" * 200 + "\r\n"):
            _, headers, _, _ = rawRequest(makeSite(), get("/health", extra))
            (rid,) = headers["x-request-id"]
            self.assertRegex(rid, r"^[0-9a-f]{16}-[0-9a-f]+$")
            seen.add(rid)
        self.assertEqual(len(seen), 3)

    def test_requestIDEchoed(self) -> None:
        """
        A sane X-Request-ID is echoed.
        """
        _, headers, _, _ = rawRequest(makeSite(), get("/health", "X-Request-ID: req.42\r\n"))
        self.assertEqual(headers["x-request-id"], ["req.42"])


class CORSTests(SynchronousTestCase):
    ORIGIN = "https://dev1.service-now.com"

    def test_allowedOrigin(self) -> None:
        """
        An allowed origin gets exact CORS headers, never C{*}.
        """
        _, headers, _, _ = rawRequest(makeSite(), get("/health", f"Origin: {self.ORIGIN}\r\n"))
        self.assertEqual(headers["access-control-allow-origin"], [self.ORIGIN])
        self.assertEqual(headers["access-control-allow-credentials"], ["true"])
        self.assertIn("Mcp-Session-Id", headers["access-control-expose-headers"][0])
        self.assertIn("WWW-Authenticate", headers["access-control-expose-headers"][0])
        self.assertEqual(headers["vary"], ["Origin"])

    def test_disallowedOrigin(self) -> None:
        """
        An origin not on the list gets no CORS headers.
        """
        _, headers, _, _ = rawRequest(makeSite(), get("/health", "Origin: https://evil.example\r\n"))
        self.assertNotIn("access-control-allow-origin", headers)
        self.assertNotIn("access-control-allow-credentials", headers)

    def test_preflight(self) -> None:
        """
        A preflight from an allowed origin is answered 204 with methods and
        headers; from another origin, 204 without them.
        """
        preflight = (
            "OPTIONS /mcp HTTP/1.1\r\nHost: localhost\r\nOrigin: {origin}\r\n"
            "Access-Control-Request-Method: POST\r\n"
            "Access-Control-Request-Headers: authorization, mcp-session-id\r\n\r\n"
        )
        status, headers, body, _ = rawRequest(makeSite(), preflight.format(origin=self.ORIGIN).encode())
        self.assertEqual(status, 204)
        self.assertEqual(body, b"")
        self.assertEqual(headers["access-control-allow-methods"], ["GET, POST, DELETE, OPTIONS"])
        allowHeaders = headers["access-control-allow-headers"][0]
        for name in ("Content-Type", "Authorization", "Mcp-Session-Id", "MCP-Protocol-Version", "Last-Event-ID"):
            self.assertIn(name, allowHeaders)
        self.assertEqual(headers["vary"], ["Origin"])
        status, headers, _, _ = rawRequest(makeSite(), preflight.format(origin="https://evil.example").encode())
        self.assertEqual(status, 204)
        self.assertNotIn("access-control-allow-origin", headers)
        self.assertNotIn("access-control-allow-methods", headers)


class RequestLogTests(SynchronousTestCase):
    def test_oneEventPerRequest(self) -> None:
        """
        Each request logs one structured event with id, method, path,
        status, duration and client address.
        """
        with capturedLogs() as events:
            rawRequest(makeSite(), get("/health", "X-Request-ID: r1\r\n"), peer=("10.1.2.3", 5555))
        requests = [e for e in events if e.get("eventType") == "request"]
        self.assertEqual(len(requests), 1)
        event = requests[0]
        self.assertEqual(event["log_level"], LogLevel.info)
        for key, value in dict(requestID="r1", method="GET", path="/health", status=200,
                               clientAddress="10.1.2.3", durationMs=0.0).items():
            self.assertEqual(event[key], value)

    def test_authorizationRedacted(self) -> None:
        """
        The Authorization header is logged as its scheme and a short prefix.
        """
        token = "eyJhbGciOiJIUzI1NiJ9.payload.signature"
        with capturedLogs() as events:
            rawRequest(makeSite(verbose=True), get("/health", f"Authorization: Bearer {token}\r\n"))
        text = repr(events)
        self.assertNotIn(token, text)
        self.assertNotIn("payload", text)
        (event,) = [e for e in events if e.get("eventType") == "request"]
        self.assertEqual(event["authorization"], "Bearer eyJh...")

    def test_levelOff(self) -> None:
        """
        When info events are dropped by the configured level, no request
        event is built at all.
        """
        with capturedLogs() as events:
            rawRequest(makeSite(logRequests=False), get("/health"))
        self.assertEqual([e for e in events if e.get("eventType") == "request"], [])

    def test_levelFromConfiguration(self) -> None:
        """
        By default the site asks L{mcpsvc.logs.infoEnabled}, which follows
        the configured level.
        """
        from mcpsvc import logs

        self.patch(logs, "configuredLevel", "warn")
        self.assertFalse(makeSite().logRequests)
        self.patch(logs, "configuredLevel", "debug")
        self.assertTrue(makeSite().logRequests)

    def test_abortedBeforeResponse(self) -> None:
        """
        A request the client abandons before any response was written is
        logged as aborted with status 499, not the default 200.
        """
        from twisted.internet.error import ConnectionLost
        from twisted.python.failure import Failure
        from twisted.web.server import NOT_DONE_YET

        from mcpsvc.http.site import CLIENT_CLOSED

        class Hanging:
            isLeaf = True

            def render(self, request: Any) -> Any:
                return NOT_DONE_YET

        site = McpsvcSite(Hanging(), clock=Clock())  # type: ignore[arg-type]
        from twisted.internet.testing import StringTransport
        from twisted.web.http import HTTPChannel

        channel = HTTPChannel()
        channel.site = site
        channel.requestFactory = site.requestFactory
        channel.makeConnection(StringTransport())
        with capturedLogs() as events:
            channel.dataReceived(get("/slow"))
            channel.connectionLost(Failure(ConnectionLost()))
        (event,) = [e for e in events if e.get("eventType") == "request"]
        self.assertEqual((event["status"], event["aborted"]), (CLIENT_CLOSED, True))

    def test_formStillParsed(self) -> None:
        """
        Skipping Twisted's slow Content-Type parse for non-form bodies keeps
        form bodies parsed into C{request.args}, and JSON bodies out of it.
        """
        seen: List[Any] = []

        class Capture:
            isLeaf = True

            def render(self, request: Any) -> bytes:
                seen.append(dict(request.args))
                return b"ok"

        site = McpsvcSite(Capture(), clock=Clock())  # type: ignore[arg-type]
        rawRequest(site, post("/x", b"a=1", "Application/X-WWW-Form-Urlencoded; charset=utf-8"))
        rawRequest(site, post("/x", b"a=1", "application/json"))
        self.assertEqual(seen, [{b"a": [b"1"]}, {}])

    def test_redaction(self) -> None:
        self.assertEqual(redactAuthorization("Basic dXNlcjpwYXNz"), "Basic dXNl...")
        self.assertEqual(redactAuthorization("rawsecretvalue"), "(credential)")
        self.assertIsNone(redactAuthorization(None))

    def test_forwardedForOnlyFromTrustedProxies(self) -> None:
        """
        X-Forwarded-For is honoured only from a trusted proxy.
        """
        header = "X-Forwarded-For: 203.0.113.9, 10.0.0.5\r\n"
        for trusted, peer, expected in (
            ([], "10.0.0.5", "10.0.0.5"),
            (["10.0.0.0/8"], "10.0.0.5", "203.0.113.9"),
            (["10.0.0.0/8"], "192.0.2.1", "192.0.2.1"),
        ):
            with capturedLogs() as events:
                rawRequest(makeSite(trustedProxies=trusted), get("/health", header), peer=(peer, 1))
            (event,) = [e for e in events if e.get("eventType") == "request"]
            self.assertEqual(event["clientAddress"], expected)
