"""
Tests for L{mcpsvc.mcp.app}: the Streamable HTTP transport, sessions,
both protocol eras, and tool calls over HTTP.
"""

import gc
import json
import weakref
from typing import Any, Dict, List, Optional

from twisted.trial.unittest import SynchronousTestCase

from mcpsvc.config import Config
from mcpsvc.mcp.app import McpApp
from mcpsvc.mcp.test.helpers import (
    BOTH,
    MALLORY,
    MODERN,
    MODERN_META,
    Boom,
    Harness,
    parseSSE,
)
from mcpsvc.principal import Principal


def header(response: Any, name: str) -> Any:
    values = response.headers.getRawHeaders(name.encode("ascii"))
    return values[0] if values else None


class InitializeTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.h = Harness(self)

    def initialize(self, version: Any, headers: Any = None) -> Any:
        return self.h.post(self.h.call(1, "initialize", {
            "protocolVersion": version, "capabilities": {"sampling": {}},
            "clientInfo": {"name": "ServiceNow", "version": "zurich"}}), headers)

    def test_issuesSession(self) -> None:
        """
        C{initialize} answers JSON with capabilities, server info and a new
        visible-ASCII session id stored for the caller.
        """
        response, body = self.initialize("2025-06-18")
        self.assertEqual(response.code, 200)
        self.assertEqual(header(response, "content-type"), b"application/json")
        message = json.loads(body)
        self.assertEqual(message["id"], 1)
        result = message["result"]
        self.assertEqual(result["protocolVersion"], "2025-06-18")
        self.assertEqual(result["capabilities"], {"tools": {"listChanged": True}, "logging": {}})
        self.assertEqual(result["serverInfo"]["name"], "mcpsvc")
        self.assertIn("version", result["serverInfo"])
        self.assertIn("instructions", result)
        sessionID = header(response, "mcp-session-id").decode("ascii")
        self.assertGreaterEqual(len(sessionID), 32)
        self.assertTrue(all(0x21 <= ord(c) <= 0x7E for c in sessionID))
        record = self.successResultOf(self.h.store.getSession(sessionID, self.h.clock.seconds()))
        self.assertEqual((record.subject, record.clientID), ("alice", "client-1"))
        self.assertEqual(record.protocolVersion, "2025-06-18")
        self.assertEqual(record.data["capabilities"], {"sampling": {}})
        self.assertNotEqual(self.h.initialize(), sessionID)

    def test_negotiation(self) -> None:
        """
        A supported version is echoed; any other gets the newest.
        """
        for version in ("2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25"):
            _, body = self.initialize(version)
            self.assertEqual(json.loads(body)["result"]["protocolVersion"], version)
        for version in ("2099-01-01", MODERN, None):
            _, body = self.initialize(version)
            self.assertEqual(json.loads(body)["result"]["protocolVersion"], "2025-11-25")

    def test_versionHeaderIgnored(self) -> None:
        """
        C{initialize} is never refused for its C{MCP-Protocol-Version}.
        """
        response, _ = self.initialize("2025-06-18", {"MCP-Protocol-Version": "garbage"})
        self.assertEqual(response.code, 200)

    def test_trailingSlash(self) -> None:
        """
        C{/mcp/} serves the same endpoint, without a redirect.
        """
        response, body = self.h.post(self.h.call(1, "initialize", {"protocolVersion": "2025-06-18"}),
                                     path="/mcp/")
        self.assertEqual(response.code, 200)
        self.assertEqual(json.loads(body)["result"]["protocolVersion"], "2025-06-18")

    def test_stateless(self) -> None:
        """
        With sessions off no id is issued, requests need none, GET and
        DELETE get 405, and C{listChanged} is not offered.
        """
        h = Harness(self, Config(sessions=False))
        response, body = h.post(h.call(1, "initialize", {"protocolVersion": "2025-06-18"}))
        self.assertIsNone(header(response, "mcp-session-id"))
        self.assertEqual(json.loads(body)["result"]["capabilities"], {"tools": {"listChanged": False}})
        status, message = h.json(h.call(2, "tools/list"), {"MCP-Protocol-Version": "2025-06-18"})
        self.assertEqual(status, 200)
        self.assertEqual(len(message["result"]["tools"]), 7)
        status, message = h.json(h.call(3, "logging/setLevel", {"level": "info"}))
        self.assertEqual((status, message["error"]["code"]), (200, -32601))
        for method in ("GET", "DELETE"):
            response, body = h.request(method)
            self.assertEqual(response.code, 405, method)
            self.assertEqual(header(response, "allow"), b"POST")
            self.assertIn("error", json.loads(body))


class TransportTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.h = Harness(self)
        self.sid = self.h.initialize()
        self.headers = {"Mcp-Session-Id": self.sid, "MCP-Protocol-Version": "2025-06-18"}

    def test_notificationsAndResponses202(self) -> None:
        """
        Notifications and responses get 202 with no body.
        """
        for message in (
            {"jsonrpc": "2.0", "method": "notifications/initialized"},
            {"jsonrpc": "2.0", "method": "notifications/whatever", "params": {}},
            {"jsonrpc": "2.0", "id": 9, "result": {}},
            {"jsonrpc": "2.0", "id": 9, "error": {"code": -1, "message": "no"}},
        ):
            response, body = self.h.post(message, self.headers)
            self.assertEqual((response.code, body), (202, b""), message)

    def test_acceptLenient(self) -> None:
        """
        Missing, wildcard, single-type and duplicated C{Accept} headers are
        all answered with JSON.
        """
        for accept in (None, "*/*", "application/json", "application/json, text/event-stream",
                       "text/html"):
            response, body = self.h.post(self.h.call(1, "ping"), dict(self.headers, Accept=accept))
            self.assertEqual(response.code, 200, accept)
            self.assertEqual(header(response, "content-type"), b"application/json", accept)
            self.assertEqual(json.loads(body), {"jsonrpc": "2.0", "id": 1, "result": {}})
        d = self.h.stub.post(
            "http://127.0.0.1:3000/mcp", data=json.dumps(self.h.call(2, "ping")).encode(),
            headers={"Content-Type": ["application/json"],
                     "Accept": ["text/event-stream", "application/json, text/event-stream"],
                     "Mcp-Session-Id": [self.sid]},
        )
        self.h.stub.flush()
        response = self.successResultOf(d)
        self.assertEqual(response.code, 200)
        self.assertEqual(header(response, "content-type"), b"application/json")

    def test_onlySSE(self) -> None:
        """
        A client accepting only SSE gets the response as an SSE event.
        """
        response, body = self.h.post(self.h.call(1, "ping"), dict(self.headers, Accept="text/event-stream"))
        self.assertEqual(response.code, 200)
        self.assertEqual(header(response, "content-type"), b"text/event-stream")
        self.assertEqual(parseSSE(body), [{"jsonrpc": "2.0", "id": 1, "result": {}}])

    def test_contentType(self) -> None:
        """
        A body that is not JSON by content type gets 415.
        """
        response, body = self.h.post(None, dict(self.headers, **{"Content-Type": "text/plain"}),
                                     raw=b"{}")
        self.assertEqual(response.code, 415)
        self.assertEqual(json.loads(body)["jsonrpc"], "2.0")

    def test_parseError(self) -> None:
        """
        An unparsable body gets 400 with -32700 and a null id.
        """
        response, body = self.h.post(None, self.headers, raw=b'{"jsonrpc": "2.0", ')
        self.assertEqual(response.code, 400)
        message = json.loads(body)
        self.assertEqual((message["id"], message["error"]["code"]), (None, -32700))

    def test_invalidRequest(self) -> None:
        """
        A body that is not JSON-RPC gets 400 with -32600, echoing the id.
        """
        for body, id in (({"id": 3, "method": "ping"}, 3), ("hello", None), ({"jsonrpc": "2.0"}, None)):
            status, message = self.h.json(body, self.headers)
            self.assertEqual(status, 400, body)
            self.assertEqual((message["id"], message["error"]["code"]), (id, -32600), body)

    def test_batchRefused(self) -> None:
        """
        Batches are refused outside 2025-03-26 with 400 and -32600.
        """
        status, message = self.h.json([self.h.call(1, "ping")], self.headers)
        self.assertEqual(status, 400)
        self.assertEqual(message["error"]["code"], -32600)
        status, _ = self.h.json([], self.headers)
        self.assertEqual(status, 400)

    def test_batch20250326(self) -> None:
        """
        A 2025-03-26 session may batch: one response per request, 202 when
        there are none.
        """
        sid = self.h.initialize("2025-03-26")
        headers = {"Mcp-Session-Id": sid}
        status, responses = self.h.json(
            [self.h.call(1, "ping"), {"jsonrpc": "2.0", "method": "notifications/x"},
             self.h.call(2, "nope"), {"bad": True}, self.h.call(3, "initialize", {})],
            headers,
        )
        self.assertEqual(status, 200)
        self.assertEqual(responses[0], {"jsonrpc": "2.0", "id": 1, "result": {}})
        self.assertEqual(responses[1]["error"]["code"], -32601)
        self.assertEqual(responses[2]["error"]["code"], -32600)
        self.assertEqual((responses[3]["id"], responses[3]["error"]["code"]), (3, -32600))
        response, body = self.h.post([{"jsonrpc": "2.0", "method": "notifications/x"}], headers)
        self.assertEqual((response.code, body), (202, b""))

    def test_methodNotAllowed(self) -> None:
        """
        Other HTTP methods get 405 with C{Allow}.
        """
        response, _ = self.h.request("PUT", {}, self.headers)
        self.assertEqual(response.code, 405)
        self.assertIn(b"POST", header(response, "allow"))


class SessionTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.h = Harness(self, Config(sessionIdleTimeout=600))
        self.sid = self.h.initialize()

    def ping(self, **headers: Any) -> Any:
        response, body = self.h.post(self.h.call(5, "ping"), headers)
        return response.code, json.loads(body)

    def test_missingSession(self) -> None:
        """
        A request without the session header gets 400 (not 404).
        """
        code, message = self.ping()
        self.assertEqual(code, 400)
        self.assertEqual((message["id"], message["error"]["code"]), (5, -32600))

    def test_unknownSession(self) -> None:
        """
        An unknown or malformed session id gets 404.
        """
        for sid in ("nope", "x" * 300, "a b"):
            code, message = self.ping(**{"Mcp-Session-Id": sid})
            self.assertEqual(code, 404, sid)
            self.assertEqual(message["id"], 5)

    def test_boundToPrincipal(self) -> None:
        """
        Another subject presenting the id gets 404; the owner still works.
        """
        self.h.principal = MALLORY
        self.assertEqual(self.ping(**{"Mcp-Session-Id": self.sid})[0], 404)
        self.h.principal = Principal(subject="alice", clientID="other-client")
        self.assertEqual(self.ping(**{"Mcp-Session-Id": self.sid})[0], 404)
        self.h.principal = Principal(subject="alice", clientID="client-1")
        self.assertEqual(self.ping(**{"Mcp-Session-Id": self.sid})[0], 200)

    def test_idleExpiry(self) -> None:
        """
        Use keeps a session alive; idleness ends it.
        """
        for _ in range(3):
            self.h.pump(400)
            self.assertEqual(self.ping(**{"Mcp-Session-Id": self.sid})[0], 200)
        self.h.pump(601)
        self.assertEqual(self.ping(**{"Mcp-Session-Id": self.sid})[0], 404)

    def test_delete(self) -> None:
        """
        DELETE ends the session; the id then gets 404.
        """
        response, body = self.h.request("DELETE", headers={"Mcp-Session-Id": self.sid})
        self.assertEqual((response.code, body), (204, b""))
        self.assertEqual(self.ping(**{"Mcp-Session-Id": self.sid})[0], 404)
        response, _ = self.h.request("DELETE", headers={"Mcp-Session-Id": self.sid})
        self.assertEqual(response.code, 404)
        response, _ = self.h.request("DELETE")
        self.assertEqual(response.code, 400)

    def test_headIsNotDelete(self) -> None:
        """
        C{HEAD} is not one of the endpoint's methods: 405 with C{Allow},
        and the session lives on (it was once routed like C{DELETE}).
        """
        response, _ = self.h.request("HEAD", headers={"Mcp-Session-Id": self.sid})
        self.assertEqual(response.code, 405)
        self.assertEqual(header(response, "allow"), b"DELETE, GET, POST")
        self.assertEqual(self.ping(**{"Mcp-Session-Id": self.sid})[0], 200)

    def test_survivesRestart(self) -> None:
        """
        A session lives in the store: a new app on the same store (a
        restart, or another instance) serves it.
        """
        other = Harness(self, Config(sessionIdleTimeout=600), store=self.h.store, clock=self.h.clock)
        status, message = other.json(other.call(1, "tools/list"), {"Mcp-Session-Id": self.sid})
        self.assertEqual(status, 200)
        self.assertIn("tools", message["result"])

    def test_versionHeader(self) -> None:
        """
        An unsupported C{MCP-Protocol-Version} gets 400; a supported or
        absent one is accepted.
        """
        for version, expected in (("2025-06-18", 200), ("2025-03-26", 200), (None, 200),
                                  ("1999-01-01", 400), (MODERN + "x", 400)):
            headers = {"Mcp-Session-Id": self.sid}
            if version is not None:
                headers["MCP-Protocol-Version"] = version
            self.assertEqual(self.ping(**headers)[0], expected, version)


class StreamTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.h = Harness(self)
        self.sid = self.h.initialize()

    def test_getStream(self) -> None:
        """
        GET opens an SSE stream for the session that carries
        C{notifications/tools/list_changed}; only one per session; DELETE
        ends it.
        """
        response, chunks, done = self.h.open("GET", headers={
            "Mcp-Session-Id": self.sid, "Accept": "text/event-stream"})
        self.assertEqual(response.code, 200)
        self.assertEqual(header(response, "content-type"), b"text/event-stream")
        self.assertEqual(self.h.app.notifyToolsListChanged(), 1)
        self.h.pump()
        self.assertEqual(
            parseSSE(b"".join(chunks)),
            [{"jsonrpc": "2.0", "method": "notifications/tools/list_changed"}],
        )
        second, _ = self.h.request("GET", headers={"Mcp-Session-Id": self.sid})
        self.assertEqual(second.code, 409)
        self.h.pump(25)
        self.assertIn(b": keep-alive", b"".join(chunks))
        self.assertNoResult(done)
        self.h.request("DELETE", headers={"Mcp-Session-Id": self.sid})
        self.successResultOf(done)
        self.assertEqual(self.h.app.openStreams, 0)
        self.assertEqual(self.h.clock.getDelayedCalls(), [])

    def test_getNeedsSession(self) -> None:
        """
        GET without a session id gets 400; with an unknown one, 404.
        """
        self.assertEqual(self.h.request("GET")[0].code, 400)
        self.assertEqual(self.h.request("GET", headers={"Mcp-Session-Id": "x"})[0].code, 404)


class SecurityTests(SynchronousTestCase):
    def test_origin(self) -> None:
        """
        A present Origin that is neither configured nor our own gets 403;
        an absent one is fine.
        """
        h = Harness(self, Config(corsOrigins=("https://app.example",)))
        ping = h.call(1, "initialize", {"protocolVersion": "2025-06-18"})
        for origin, expected in ((None, 200), ("https://app.example", 200),
                                 ("http://127.0.0.1:3000", 200), ("http://localhost:3000", 200),
                                 ("http://[::1]:6274", 200), ("http://evil.example", 403),
                                 ("null", 403), ("https://app.example.evil", 403),
                                 ("http://localhost.evil.example", 403)):
            response, body = h.post(ping, {"Origin": origin})
            self.assertEqual(response.code, expected, origin)
            if expected == 403:
                self.assertEqual(json.loads(body)["jsonrpc"], "2.0")
        public = Harness(self, Config(serverURL="https://mcp.example.com"))
        for origin, expected in (("https://mcp.example.com", 200), ("https://mcp.example.com:443", 200),
                                 ("http://localhost:3000", 403), ("http://mcp.example.com", 403)):
            response, _ = public.post(ping, {"Origin": origin, "Host": "mcp.example.com"})
            self.assertEqual(response.code, expected, origin)

    def test_host(self) -> None:
        """
        The Host must be ours (any loopback host and port when we serve on
        loopback) or allowed; DNS-rebinding requests get a 4xx.
        """
        h = Harness(self)
        ping = h.call(1, "initialize", {"protocolVersion": "2025-06-18"})
        for host, expected in (("127.0.0.1:3000", 200), ("localhost:9999", 200), ("[::1]:1", 200),
                               ("evil", 421), ("evil.example:3000", 421)):
            response, _ = h.post(ping, {"Host": host, "Origin": None})
            self.assertEqual(response.code, expected, host)
        response, _ = h.post(ping, {"Host": "evil", "Origin": "http://evil"})
        self.assertTrue(400 <= response.code < 500)

        public = Harness(self, Config(serverURL="https://mcp.example.com",
                                      allowedHosts=("alias.example.com", "other.example:8443")))
        for host, expected in (("mcp.example.com", 200), ("mcp.example.com:443", 200),
                               ("MCP.example.com", 200), ("alias.example.com:1234", 200),
                               ("other.example:8443", 200), ("other.example", 421),
                               ("127.0.0.1:3000", 421), ("mcp.example.com:8443", 421)):
            response, _ = public.post(ping, {"Host": host})
            self.assertEqual(response.code, expected, host)

    def test_forwardedHost(self) -> None:
        """
        C{X-Forwarded-Host} counts only from a trusted proxy.
        """
        ping = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {}}
        untrusted = Harness(self, Config(serverURL="https://mcp.example.com"))
        response, _ = untrusted.post(ping, {"Host": "internal:8080", "X-Forwarded-Host": "mcp.example.com"})
        self.assertEqual(response.code, 421)
        trusted = Harness(self, Config(serverURL="https://mcp.example.com", trustedProxies=("0.0.0.0/0", "::/0")))
        response, _ = trusted.post(ping, {"Host": "internal:8080", "X-Forwarded-Host": "mcp.example.com"})
        self.assertEqual(response.code, 200)

    def test_everyMethodAuthenticated(self) -> None:
        """
        Every request is authenticated first: without credentials POST, GET
        and DELETE get 401 with C{WWW-Authenticate}, and nothing is stored.
        """
        h = Harness(self)
        sid = h.initialize()
        h.refuse = True
        for method, body in (("POST", h.call(1, "initialize", {})), ("POST", h.call(2, "ping")),
                             ("GET", None), ("DELETE", None)):
            response, content = h.request(method, body, {"Mcp-Session-Id": sid})
            self.assertEqual(response.code, 401, method)
            self.assertTrue(header(response, "www-authenticate"))
            self.assertEqual(json.loads(content)["jsonrpc"], "2.0")
        self.assertEqual(self.successResultOf(h.store.countSessions(h.clock.seconds())), 1)


class ToolCallTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.h = Harness(self, pageSize=4)
        self.sid = self.h.initialize()
        self.headers = {"Mcp-Session-Id": self.sid, "MCP-Protocol-Version": "2025-06-18"}

    def rpc(self, id: Any, method: str, params: Any = None, **headers: Any) -> Dict[str, Any]:
        status, message = self.h.json(self.h.call(id, method, params), dict(self.headers, **headers))
        self.assertEqual(status, 200)
        return message

    def test_unsupportedFeatures(self) -> None:
        """
        Undeclared features and unknown methods get -32601.
        """
        for method in ("resources/list", "resources/read", "prompts/list", "prompts/get",
                       "completion/complete", "sampling/createMessage", "server/discoverx"):
            message = self.rpc(1, method, {})
            self.assertEqual(message["error"]["code"], -32601, method)
            self.assertEqual(message["id"], 1)

    def test_listPages(self) -> None:
        """
        C{tools/list} pages through every tool in name order; a bad cursor
        gets -32602.
        """
        first = self.rpc(1, "tools/list")["result"]
        second = self.rpc(2, "tools/list", {"cursor": first["nextCursor"]})["result"]
        names = [t["name"] for t in first["tools"] + second["tools"]]
        self.assertEqual(names, sorted(names))
        self.assertEqual(len(names), 7)
        self.assertNotIn("nextCursor", second)
        self.assertEqual(self.rpc(3, "tools/list", {"cursor": "bogus"})["error"]["code"], -32602)

    def test_call(self) -> None:
        """
        A call returns the tool's content.
        """
        result = self.rpc(1, "tools/call", {"name": "echo", "arguments": {"text": "hi"}})["result"]
        self.assertEqual(result, {"content": [{"type": "text", "text": "hi"}]})

    def test_unknownTool(self) -> None:
        """
        An unknown tool or a malformed call is a -32602 error.
        """
        for params in ({"name": "nope"}, {}, {"name": "echo", "arguments": [1]}):
            self.assertEqual(self.rpc(1, "tools/call", params)["error"]["code"], -32602, params)

    def test_invalidArguments(self) -> None:
        """
        Invalid arguments are an C{isError} result, not a JSON-RPC error.
        """
        result = self.rpc(1, "tools/call", {"name": "echo", "arguments": {"text": 5}})["result"]
        self.assertTrue(result["isError"])

    def test_raisingTool(self) -> None:
        """
        A raising tool gives a generic C{isError} result, its traceback is
        logged, and the server keeps serving.
        """
        result = self.rpc(1, "tools/call", {"name": "boom"})["result"]
        self.assertTrue(result["isError"])
        self.assertNotIn("internal detail", json.dumps(result))
        self.assertEqual(len(self.flushLoggedErrors(Boom)), 1)
        self.assertEqual(self.rpc(2, "ping"), {"jsonrpc": "2.0", "id": 2, "result": {}})

    def test_insufficientScope(self) -> None:
        """
        A tool needing a scope the token lacks gets 403 with an
        C{insufficient_scope} challenge.
        """
        response, body = self.h.post(self.h.call(1, "tools/call", {"name": "admin"}), self.headers)
        self.assertEqual(response.code, 403)
        challenge = header(response, "www-authenticate").decode()
        self.assertIn('error="insufficient_scope"', challenge)
        self.assertIn('scope="mcp:tools mcp:read mcp:write"', challenge)
        self.assertIn("resource_metadata=", challenge)
        self.h.principal = Principal(subject="alice", clientID="client-1", scopes=frozenset({"mcp:write"}))
        self.assertEqual(self.rpc(2, "tools/call", {"name": "admin"})["result"]["content"][0]["text"], "ok")

    def test_missingClientCapability(self) -> None:
        """
        In the handshake era, a tool needing an undeclared client capability
        gives an C{isError} result.
        """
        result = self.rpc(1, "tools/call", {"name": "sampler"})["result"]
        self.assertTrue(result["isError"])
        self.assertIn("sampling", result["content"][0]["text"])
        sid = self.h.initialize(capabilities={"sampling": {}})
        result = self.rpc(2, "tools/call", {"name": "sampler"}, **{"Mcp-Session-Id": sid})["result"]
        self.assertNotIn("isError", result)

    def test_progress(self) -> None:
        """
        With a C{progressToken} and SSE accepted, progress notifications
        stream in order, strictly increasing, before the result; the
        stream then ends.
        """
        response, chunks, done = self.h.open("POST", self.h.call(
            7, "tools/call", {"name": "steps", "_meta": {"progressToken": "tok"}}), self.headers)
        self.assertEqual(response.code, 200)
        self.assertEqual(header(response, "content-type"), b"text/event-stream")
        self.assertEqual(len(parseSSE(b"".join(chunks))), 1)
        self.assertNoResult(done)
        self.h.pump(1)
        self.assertEqual(len(parseSSE(b"".join(chunks))), 2)
        self.h.pump(1)
        self.successResultOf(done)
        messages = parseSSE(b"".join(chunks))
        self.assertEqual(
            [m.get("params", {}).get("progress") for m in messages[:-1]], [1, 2, 3]
        )
        self.assertTrue(all(m["method"] == "notifications/progress" for m in messages[:-1]))
        self.assertEqual(messages[0]["params"], {"progressToken": "tok", "progress": 1, "total": 3,
                                                 "message": "one"})
        self.assertEqual(messages[-1], {"jsonrpc": "2.0", "id": 7, "result": {
            "content": [{"type": "text", "text": "finished"}]}})

    def test_progressJSONOnly(self) -> None:
        """
        A client that accepts only JSON gets the result without progress.
        """
        response, body = self.h.post(self.h.call(7, "tools/call", {
            "name": "echo", "arguments": {"text": "a"}, "_meta": {"progressToken": 1}}),
            dict(self.headers, Accept="application/json"))
        self.assertEqual(header(response, "content-type"), b"application/json")
        self.assertEqual(json.loads(body)["result"]["content"][0]["text"], "a")

    def test_logging(self) -> None:
        """
        After C{logging/setLevel}, tool log messages at or above the level
        stream as C{notifications/message}; invalid levels get -32602.
        """
        self.assertEqual(self.rpc(1, "logging/setLevel", {"level": "loud"})["error"]["code"], -32602)
        self.assertEqual(self.rpc(2, "logging/setLevel", {"level": "info"})["result"], {})
        response, chunks, done = self.h.open("POST", self.h.call(3, "tools/call", {"name": "steps"}),
                                             self.headers)
        self.h.pump(1)
        self.h.pump(1)
        self.successResultOf(done)
        messages = parseSSE(b"".join(chunks))
        logs = [m for m in messages if m.get("method") == "notifications/message"]
        self.assertEqual(logs, [{"jsonrpc": "2.0", "method": "notifications/message",
                                 "params": {"level": "warning", "logger": "steps", "data": "loud"}}])
        self.assertFalse(any(m.get("method") == "notifications/progress" for m in messages))

    def test_cancelled(self) -> None:
        """
        C{notifications/cancelled} cancels the running tool; no response is
        sent for the request, whose stream ends empty.
        """
        d = self.h.begin("POST", self.h.call("call-1", "tools/call", {"name": "slow"}), self.headers)
        self.assertNoResult(d)
        self.assertEqual(len(self.h.pending), 1)
        accepted, _ = self.h.post({"jsonrpc": "2.0", "method": "notifications/cancelled",
                                   "params": {"requestId": "call-1", "reason": "user"}},
                                  self.headers)
        self.assertEqual(accepted.code, 202)
        self.h.pump()
        self.assertEqual(self.h.cancelled, 1)
        response, body = self.h.finish(d)
        self.assertEqual(response.code, 200)
        self.assertEqual(header(response, "content-type"), b"text/event-stream")
        self.assertEqual(body, b"")
        self.assertEqual(self.h.app.dispatcher.inFlight, 0)
        self.assertEqual(self.rpc(9, "ping")["result"], {})

    def test_cancelledJSONOnly(self) -> None:
        """
        A JSON-only client's cancelled request ends with -32800.
        """
        d = self.h.begin("POST", self.h.call(4, "tools/call", {"name": "slow"}),
                         dict(self.headers, Accept="application/json"))
        self.h.post({"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 4}},
                    self.headers)
        response, body = self.h.finish(d)
        self.assertEqual(self.h.cancelled, 1)
        self.assertEqual(json.loads(body), {"jsonrpc": "2.0", "id": 4, "error": {
            "code": -32800, "message": "Request cancelled"}})

    def test_cancelScopedToSession(self) -> None:
        """
        Another session cannot cancel a request with the same id, and
        unknown ids are ignored.
        """
        d = self.h.begin("POST", self.h.call(4, "tools/call", {"name": "slow"}), self.headers)
        other = self.h.initialize()
        for headers in ({"Mcp-Session-Id": other}, self.headers):
            response, _ = self.h.post({"jsonrpc": "2.0", "method": "notifications/cancelled",
                                       "params": {"requestId": 99}}, headers)
            self.assertEqual(response.code, 202)
        self.h.post({"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 4}},
                    {"Mcp-Session-Id": other})
        self.h.pump()
        self.assertEqual(self.h.cancelled, 0)
        self.assertNoResult(d)
        self.h.pending[0].callback("late")
        _, body = self.h.finish(d)
        self.assertEqual(json.loads(body)["result"]["content"][0]["text"], "late")

    def test_timeout(self) -> None:
        """
        A tool call past its timeout is an C{isError} result.
        """
        d = self.h.begin("POST", self.h.call(4, "tools/call", {"name": "slow"}), self.headers)
        self.h.pump(29)
        self.assertNoResult(d)
        self.h.pump(1)
        _, body = self.h.finish(d)
        result = json.loads(body)["result"]
        self.assertTrue(result["isError"])
        self.assertEqual(self.h.cancelled, 1)


class ModernTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.h = Harness(self)

    def send(self, id: Any, method: str, params: Any = None, headers: Any = None) -> Any:
        message = self.h.call(id, method, params)
        if headers is None:
            headers = self.h.modernHeaders(method, (params or {}).get("name"))
        response, body = self.h.post(message, headers)
        return response, json.loads(body) if body else None

    def test_discover(self) -> None:
        """
        C{server/discover} answers statelessly with the modern versions,
        capabilities, C{resultType} and server info in C{_meta}.
        """
        response, message = self.send(1, "server/discover", {"_meta": MODERN_META})
        self.assertEqual(response.code, 200)
        self.assertIsNone(header(response, "mcp-session-id"))
        result = message["result"]
        self.assertEqual(result["supportedVersions"], [MODERN])
        self.assertIn("tools", result["capabilities"])
        # Delivered on subscriptions/listen, which needs no session.
        self.assertEqual(result["capabilities"]["tools"], {"listChanged": True})
        self.assertEqual(result["resultType"], "complete")
        self.assertEqual(result["_meta"]["io.modelcontextprotocol/serverInfo"]["name"], "mcpsvc")
        noInfo = {k: v for k, v in MODERN_META.items() if not k.endswith("clientInfo")}
        response, message = self.send(2, "server/discover", {"_meta": noInfo})
        self.assertEqual(response.code, 200)

    def test_metaRequired(self) -> None:
        """
        Missing C{_meta} members get 400 with -32602 and the request id.
        """
        for params in ({}, {"_meta": {"io.modelcontextprotocol/clientCapabilities": {}}},
                       {"_meta": {"io.modelcontextprotocol/protocolVersion": MODERN}}):
            response, message = self.send(101, "server/discover", params)
            self.assertEqual(response.code, 400, params)
            self.assertEqual((message["id"], message["error"]["code"]), (101, -32602), params)

    def test_versionErrors(self) -> None:
        """
        A header contradicting C{_meta} gets -32020; an unsupported version
        -32022 with the supported and requested versions; both at 400.
        """
        meta = dict(MODERN_META, **{"io.modelcontextprotocol/protocolVersion": "v999"})
        response, message = self.send(302, "server/discover", {"_meta": meta})
        self.assertEqual((response.code, message["error"]["code"], message["id"]), (400, -32020, 302))
        response, message = self.send(301, "server/discover", {"_meta": meta}, self.h.modernHeaders(
            "server/discover", **{"MCP-Protocol-Version": "v999"}))
        self.assertEqual((response.code, message["error"]["code"], message["id"]), (400, -32022, 301))
        self.assertEqual(message["error"]["data"], {"supported": [MODERN], "requested": "v999"})
        response, message = self.send(303, "server/discover", {"_meta": MODERN_META},
                                      {"Mcp-Method": "server/discover"})
        self.assertEqual((response.code, message["error"]["code"]), (400, -32020))

    def test_mirroredHeaders(self) -> None:
        """
        C{Mcp-Method} and C{Mcp-Name} must match the body (base64 values
        are decoded); otherwise 400 with -32020.
        """
        params = {"name": "echo", "arguments": {"text": "x"}, "_meta": MODERN_META}
        for headers, expected in (
            (self.h.modernHeaders("tools/call", "echo"), 200),
            (self.h.modernHeaders("tools/call", "=?base64?ZWNobw==?="), 200),
            (self.h.modernHeaders("tools/call", "other"), 400),
            (self.h.modernHeaders("tools/call"), 400),
            (self.h.modernHeaders("tools/list", "echo"), 400),
            (self.h.modernHeaders("tools/call", "=?base64?!!?="), 400),
            ({"MCP-Protocol-Version": MODERN, "Mcp-Name": "echo"}, 400),
        ):
            response, message = self.send(5, "tools/call", params, headers)
            self.assertEqual(response.code, expected, headers)
            if expected == 400:
                self.assertEqual(message["error"]["code"], -32020)

    def test_methodNotFound404(self) -> None:
        """
        Removed and unknown methods get 404 with -32601.
        """
        for method in ("initialize", "ping", "logging/setLevel", "resources/subscribe",
                       "unknown/method"):
            response, message = self.send(500, method, {"_meta": MODERN_META})
            self.assertEqual((response.code, message["error"]["code"], message["id"]),
                             (404, -32601, 500), method)

    def test_tools(self) -> None:
        """
        C{tools/list} carries C{ttlMs}, C{cacheScope} and C{resultType};
        C{tools/call} works without a session.
        """
        response, message = self.send(1, "tools/list", {"_meta": MODERN_META})
        result = message["result"]
        self.assertEqual((result["resultType"], result["cacheScope"]), ("complete", "private"))
        self.assertIsInstance(result["ttlMs"], int)
        response, message = self.send(2, "tools/call", {"name": "echo", "arguments": {"text": "x"},
                                                        "_meta": MODERN_META})
        self.assertEqual(message["result"]["content"], [{"type": "text", "text": "x"}])
        self.assertEqual(message["result"]["resultType"], "complete")

    def test_missingCapability(self) -> None:
        """
        A tool needing an undeclared client capability gets 400 with -32021
        naming it.
        """
        response, message = self.send(401, "tools/call", {"name": "sampler", "_meta": MODERN_META})
        self.assertEqual((response.code, message["error"]["code"], message["id"]), (400, -32021, 401))
        self.assertEqual(message["error"]["data"], {"requiredCapabilities": {"sampling": {}}})
        meta = dict(MODERN_META, **{"io.modelcontextprotocol/clientCapabilities": {"sampling": {}}})
        response, message = self.send(402, "tools/call", {"name": "sampler", "_meta": meta})
        self.assertEqual(response.code, 200)

    def test_loggingOnlyWhenAsked(self) -> None:
        """
        Log notifications are sent only when the request carries a
        C{logLevel}.
        """
        headers = self.h.modernHeaders("tools/call", "steps")
        d = self.h.begin("POST", self.h.call(1, "tools/call", {"name": "steps", "_meta": MODERN_META}),
                         headers)
        self.h.pump(1)
        self.h.pump(1)
        response, body = self.h.finish(d)
        self.assertEqual(header(response, "content-type"), b"application/json")
        self.assertEqual(json.loads(body)["result"]["content"][0]["text"], "finished")

        meta = dict(MODERN_META, **{"io.modelcontextprotocol/logLevel": "debug"})
        response, chunks, done = self.h.open(
            "POST", self.h.call(2, "tools/call", {"name": "steps", "_meta": meta}), headers)
        self.assertEqual(header(response, "content-type"), b"text/event-stream")
        self.h.pump(1)
        self.h.pump(1)
        self.successResultOf(done)
        messages = parseSSE(b"".join(chunks))
        self.assertEqual(
            [m["params"]["data"] for m in messages if m.get("method") == "notifications/message"],
            ["quiet", "loud"],
        )
        self.assertEqual(messages[-1]["id"], 2)

    def test_modernIgnoresSessions(self) -> None:
        """
        Modern requests need no session even when sessions are on, and
        ignore a session header.
        """
        response, message = self.send(1, "tools/list", {"_meta": MODERN_META},
                                      dict(self.h.modernHeaders("tools/list"), **{"Mcp-Session-Id": "junk"}))
        self.assertEqual(response.code, 200)


class ConstructionTests(SynchronousTestCase):
    def test_signature(self) -> None:
        """
        L{McpApp} is built from keyword arguments and serves a resource.
        """
        h = Harness(self)
        app = McpApp(config=h.config, store=h.store, clock=h.clock,
                     authenticate=h.authenticate, registry=h.registry)
        self.assertIsNotNone(app.resource())
        self.assertTrue(app.dispatcher.listChanged)


class DisconnectTests(SynchronousTestCase):
    def test_disconnectCancels(self) -> None:
        """
        When the client goes away mid-call (in the 2026-07-28 era, closing
        the response stream is the cancellation), the tool call is cancelled
        and nothing more is written.
        """
        from io import BytesIO

        from twisted.internet.error import ConnectionLost
        from twisted.python.failure import Failure
        from twisted.web.server import Request, Site
        from twisted.web.test.requesthelper import DummyChannel

        h = Harness(self)
        body = json.dumps(h.call(1, "tools/call", {"name": "slow", "_meta": MODERN_META})).encode()
        channel = DummyChannel()
        channel.site = Site(h.app.resource())
        request = Request(channel)
        request.content = BytesIO(body)
        for name, value in dict(h.modernHeaders("tools/call", "slow"), **{
                "Content-Type": "application/json", "Accept": BOTH,
                "Host": "127.0.0.1:3000"}).items():
            request.requestHeaders.setRawHeaders(name, [value])
        request.requestReceived(b"POST", b"/mcp", b"HTTP/1.1")
        self.assertEqual((len(h.pending), h.cancelled), (1, 0))
        self.assertEqual(h.app.dispatcher.inFlight, 1)
        written = channel.transport.written.getvalue()
        request.connectionLost(Failure(ConnectionLost()))
        self.assertEqual(h.cancelled, 1)
        self.assertEqual(h.app.dispatcher.inFlight, 0)
        self.assertEqual(channel.transport.written.getvalue(), written)


class ResourceTests(SynchronousTestCase):
    """
    L{McpResource}: the plain resource in front of L{McpApp.endpoint}.
    """

    def raw(self, h: Harness, head: bytes, body: bytes = b"", requests: Optional[List[Any]] = None) -> bytes:
        from twisted.internet.address import IPv4Address
        from twisted.internet.testing import StringTransport
        from twisted.web.http import HTTPChannel
        from twisted.web.server import Request, Site

        site = Site(h.app.resource())
        if requests is not None:
            class Recorded(Request):
                def __init__(self, *a: Any, **kw: Any) -> None:
                    super().__init__(*a, **kw)
                    requests.append(weakref.ref(self))

            site.requestFactory = Recorded
        channel = site.buildProtocol(None)
        transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 40000))
        channel.makeConnection(transport)
        channel.dataReceived(head + b"Content-Length: %d\r\n\r\n" % len(body) + body)
        out = transport.value()
        channel.connectionLost(None)
        return out

    def test_subPathNotFound(self) -> None:
        """
        Only C{/mcp} and C{/mcp/} are the endpoint: anything below is a
        JSON-RPC 404.
        """
        h = Harness(self)
        out = self.raw(h, b"POST /mcp/extra HTTP/1.1\r\nHost: 127.0.0.1:3000\r\n")
        self.assertTrue(out.startswith(b"HTTP/1.1 404 "), out[:80])
        self.assertIn(b'"jsonrpc": "2.0"', out.replace(b'":"', b'": "'))

    def test_unexpectedError(self) -> None:
        """
        An exception escaping the endpoint is logged with its traceback and
        answered with a generic JSON-RPC 500, nothing of the exception in
        it.
        """
        h = Harness(self)

        async def broken(request: Any) -> Any:
            raise ZeroDivisionError("secret detail")

        h.authenticate = broken  # type: ignore[method-assign]
        h.app = McpApp(config=h.config, store=h.store, clock=h.clock,
                       authenticate=broken, registry=h.registry)
        out = self.raw(h, b"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1:3000\r\nContent-Type: application/json\r\n",
                       b"{}")
        self.assertTrue(out.startswith(b"HTTP/1.1 500 "), out[:80])
        self.assertIn(b"-32603", out)
        self.assertNotIn(b"secret detail", out)
        self.assertNotIn(b"ZeroDivisionError", out)
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)

    def test_freedWithoutCollector(self) -> None:
        """
        A finished request is freed by reference counting alone: nothing in
        the path keeps it in a reference cycle for the cyclic garbage
        collector to find (under load those cycles made every request
        survive into the oldest generation, and full collections stalled
        the reactor).
        """
        h = Harness(self, Config(sessions=False))
        requests: List[Any] = []
        body = json.dumps(h.call(1, "tools/call", {"name": "echo", "arguments": {"text": "hi"}})).encode()
        gc.collect()
        gc.disable()
        self.addCleanup(gc.enable)
        out = self.raw(h, b"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1:3000\r\nContent-Type: application/json\r\n"
                          b"Accept: application/json, text/event-stream\r\n", body, requests)
        self.assertTrue(out.startswith(b"HTTP/1.1 200 "), out[:300])
        self.assertEqual(len(requests), 1)
        self.assertIsNone(requests[0](), "the request is only reachable through a reference cycle")


class ClientRequestTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.h = Harness(self)
        self.sid = self.h.initialize(capabilities={"elicitation": {}})
        self.headers = {"Mcp-Session-Id": self.sid, "MCP-Protocol-Version": "2025-11-25"}

    def test_elicitation(self) -> None:
        """
        A tool can ask the client on the call's SSE stream; the client's
        answer, POSTed as a response, resumes the tool, whose result ends
        the stream.
        """
        response, chunks, done = self.h.open(
            "POST", self.h.call(1, "tools/call", {"name": "ask"}), self.headers)
        self.assertEqual(header(response, "content-type"), b"text/event-stream")
        [ask] = parseSSE(b"".join(chunks))
        self.assertEqual(ask["method"], "elicitation/create")
        self.assertEqual(ask["params"]["message"], "Name?")
        self.assertNoResult(done)
        other = self.h.initialize(capabilities={"elicitation": {}})
        for headers in ({"Mcp-Session-Id": other}, self.headers):
            accepted, _ = self.h.post({"jsonrpc": "2.0", "id": ask["id"], "result": {
                "action": "accept", "content": {"name": "Ada"}}}, headers)
            self.assertEqual(accepted.code, 202)
            self.h.pump()
        self.successResultOf(done)
        messages = parseSSE(b"".join(chunks))
        self.assertEqual(messages[-1]["result"]["content"][0]["text"],
                         'answer: {"action": "accept", "content": {"name": "Ada"}}')
        self.assertEqual(len(messages), 2)

    def test_clientError(self) -> None:
        """
        A client error answer is an C{isError} result.
        """
        _, chunks, done = self.h.open("POST", self.h.call(1, "tools/call", {"name": "ask"}),
                                      self.headers)
        [ask] = parseSSE(b"".join(chunks))
        self.h.post({"jsonrpc": "2.0", "id": ask["id"], "error": {"code": -1, "message": "no"}},
                    self.headers)
        self.h.pump()
        self.successResultOf(done)
        result = parseSSE(b"".join(chunks))[-1]["result"]
        self.assertTrue(result["isError"])
        self.assertIn("refused", result["content"][0]["text"])

    def test_noStream(self) -> None:
        """
        A client that accepts no SSE cannot be asked: C{isError}.
        """
        status, message = self.h.json(self.h.call(1, "tools/call", {"name": "ask"}),
                                      dict(self.headers, Accept="application/json"))
        self.assertEqual(status, 200)
        self.assertTrue(message["result"]["isError"])

    def test_timeoutForgetsRequest(self) -> None:
        """
        An unanswered request ends with the tool's timeout and is forgotten.
        """
        _, chunks, done = self.h.open("POST", self.h.call(1, "tools/call", {"name": "ask"}),
                                      self.headers)
        self.h.pump(30)
        self.successResultOf(done)
        self.assertTrue(parseSSE(b"".join(chunks))[-1]["result"]["isError"])
        self.assertEqual(self.h.app.dispatcher._outgoing, {})


class StoreDownTests(SynchronousTestCase):
    def test_storeUnavailable(self) -> None:
        """
        When the session store cannot answer, requests fail closed with 503
        and C{Retry-After}.
        """
        from twisted.internet.defer import fail

        from mcpsvc.storage.interfaces import StoreUnavailable

        h = Harness(self)
        sid = h.initialize()
        h.store.getSession = lambda *a, **kw: fail(StoreUnavailable("down"))  # type: ignore[method-assign]
        h.store.createSession = lambda *a, **kw: fail(StoreUnavailable("down"))  # type: ignore[method-assign]
        for body, headers in ((h.call(1, "ping"), {"Mcp-Session-Id": sid}),
                              (h.call(2, "initialize", {"protocolVersion": "2025-06-18"}), {})):
            response, content = h.post(body, headers)
            self.assertEqual(response.code, 503)
            self.assertTrue(header(response, "retry-after"))
            self.assertEqual(json.loads(content)["jsonrpc"], "2.0")


from mcpsvc.mcp.test.helpers import ALICE  # noqa: E402


class RequestLogTests(SynchronousTestCase):
    """
    A C{tools/call} served by mcpsvc's site is logged once: its tool and
    outcome ride on the request's own event.
    """

    def call(self, harness: Harness, site: Any, tool: str, arguments: Dict[str, Any]) -> List[Dict[str, Any]]:
        from twisted.logger import capturedLogs

        from mcpsvc.test.fakes import rawRequest

        body = json.dumps({"jsonrpc": "2.0", "id": 7, "method": "tools/call",
                           "params": {"name": tool, "arguments": arguments}}).encode()
        data = (f"POST /mcp HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
                f"Accept: application/json, text/event-stream\r\nMCP-Protocol-Version: 2025-06-18\r\n"
                f"Content-Length: {len(body)}\r\n\r\n").encode() + body
        with capturedLogs() as events:
            status, _, answer, _ = rawRequest(site, data)
        self.assertEqual(status, 200, answer)
        return list(events)

    def test_oneEventPerToolCall(self) -> None:
        from mcpsvc.http.site import McpsvcSite

        harness = Harness(self, config=Config(sessions=False))
        site = McpsvcSite(harness.app.resource(), clock=harness.clock, logRequests=True)
        for tool, arguments, outcome in (("echo", {"text": "hi"}, "ok"), ("echo", {}, "error")):
            events = self.call(harness, site, tool, arguments)
            self.assertEqual([e.get("log_format") for e in events if "Tool {tool}" in str(e.get("log_format"))], [])
            requests = [e for e in events if e.get("eventType") == "request"]
            self.assertEqual(len(requests), 1)
            (event,) = requests
            self.assertEqual((event["tool"], event["toolOutcome"], event["status"]), (tool, outcome, 200))
            self.assertEqual((event["subject"], event["clientID"]), (ALICE.subject, ALICE.clientID))
            self.assertIn(f"tool={tool} {outcome}", event["log_format"].format(**event))

    def test_otherRequestsLogTheToolEvent(self) -> None:
        """
        Served without mcpsvc's site (no request log), the dispatcher logs
        the tool call itself.
        """
        from twisted.logger import capturedLogs

        harness = Harness(self, config=Config(sessions=False))
        with capturedLogs() as events:
            response = self.successResultOf(harness.stub.post(
                "http://localhost/mcp", json={"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                                              "params": {"name": "echo", "arguments": {"text": "x"}}},
                headers={"Accept": "application/json", "MCP-Protocol-Version": "2025-06-18"}))
        self.assertEqual(response.code, 200)
        self.assertEqual(len([e for e in events if str(e.get("log_format", "")).startswith("Tool {tool}")]), 1)
