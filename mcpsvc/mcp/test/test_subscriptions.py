"""
Tests for L{mcpsvc.mcp.subscriptions}: C{subscriptions/listen} (2026-07-28)
through the MCP endpoint, and its sans-I/O decisions.
"""

from __future__ import annotations

import json
from typing import Any, Dict, List, Optional, Tuple

from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase

from mcpsvc.config import Config
from mcpsvc.mcp.protocol import ProtocolError
from mcpsvc.mcp.subscriptions import (
    ACKNOWLEDGED,
    META_SUBSCRIPTION_ID,
    Change,
    SubscriptionFilter,
    parseFilter,
    tagged,
)
from mcpsvc.mcp.test.helpers import ALICE, MODERN_META, Harness, parseSSE
from mcpsvc.principal import Principal


class FilterTests(SynchronousTestCase):
    """
    Reading the filter, and what a stream receives.
    """

    def test_parse(self) -> None:
        """
        The booleans name list kinds; C{resourceSubscriptions} names URIs;
        false and absent fields subscribe to nothing; unknown ones are
        ignored.
        """
        parsed = parseFilter({"notifications": {
            "toolsListChanged": True, "promptsListChanged": False,
            "resourceSubscriptions": ["file:///a"], "somethingNew": 1}})
        self.assertEqual(parsed, SubscriptionFilter(frozenset({"tools"}), frozenset({"file:///a"})))
        self.assertEqual(parseFilter({"notifications": {}}), SubscriptionFilter())

    def test_malformed(self) -> None:
        """
        A missing filter, a non-boolean flag or a bad URI list is -32602.
        """
        for params in (
            {}, {"notifications": []}, {"notifications": {"toolsListChanged": "yes"}},
            {"notifications": {"resourceSubscriptions": "file:///a"}},
            {"notifications": {"resourceSubscriptions": [1]}},
            {"notifications": {"resourceSubscriptions": [""]}},
            {"notifications": {"resourceSubscriptions": ["u"] * 101}},
        ):
            e = self.assertRaises(ProtocolError, parseFilter, params)
            self.assertEqual(e.code, -32602, params)

    def test_honouredAndWants(self) -> None:
        """
        Only supported kinds are honoured; resource URIs only when
        C{resource} is supported; a stream wants only what it honours.
        """
        requested = SubscriptionFilter(frozenset({"tools", "prompts"}), frozenset({"file:///a"}))
        honoured = requested.honoured({"tools"})
        self.assertEqual(honoured, SubscriptionFilter(frozenset({"tools"})))
        self.assertEqual(honoured.asDict(), {"toolsListChanged": True})
        self.assertTrue(honoured.wants(Change("tools")))
        self.assertFalse(honoured.wants(Change("prompts")))
        self.assertFalse(honoured.wants(Change("resource", "file:///a")))
        withResources = requested.honoured({"tools", "resource"})
        self.assertTrue(withResources.wants(Change("resource", "file:///a")))
        self.assertFalse(withResources.wants(Change("resource", "file:///b")))
        self.assertEqual(withResources.asDict(),
                         {"toolsListChanged": True, "resourceSubscriptions": ["file:///a"]})

    def test_tagged(self) -> None:
        """
        The subscription id goes into C{params._meta}, next to what is
        there; the original message is not changed.
        """
        message = {"jsonrpc": "2.0", "method": "m", "params": {"x": 1, "_meta": {"k": "v"}}}
        out = tagged(message, 7)
        self.assertEqual(out["params"], {"x": 1, "_meta": {"k": "v", META_SUBSCRIPTION_ID: 7}})
        self.assertEqual(message["params"]["_meta"], {"k": "v"})
        self.assertEqual(tagged({"jsonrpc": "2.0", "method": "m"}, "s")["params"],
                         {"_meta": {META_SUBSCRIPTION_ID: "s"}})


LISTEN = "subscriptions/listen"


class ListenTests(SynchronousTestCase):
    """
    C{subscriptions/listen} through L{mcpsvc.mcp.app.McpApp}.
    """

    def setUp(self) -> None:
        self.h = Harness(self)

    def listen(
        self, notifications: Dict[str, Any], id: Any = 41, accept: Optional[str] = None,
    ) -> Tuple[Any, List[bytes], "Deferred[None]"]:
        headers = self.h.modernHeaders(LISTEN)
        if accept is not None:
            headers["Accept"] = accept
        return self.h.open("POST", self.h.call(
            id, LISTEN, {"_meta": MODERN_META, "notifications": notifications}), headers)

    def messages(self, chunks: List[bytes]) -> List[Dict[str, Any]]:
        return parseSSE(b"".join(chunks))

    def test_acknowledgedThenTagged(self) -> None:
        """
        The first event is the acknowledgement, tagged with the request id
        and naming the honoured part of the filter; a tool list change then
        arrives tagged the same way; other kinds never arrive.
        """
        response, chunks, done = self.listen(
            {"toolsListChanged": True, "resourcesListChanged": True,
             "resourceSubscriptions": ["test://x"]})
        self.assertEqual(response.code, 200)
        self.assertEqual(response.headers.getRawHeaders("content-type"), ["text/event-stream"])
        self.assertEqual(response.headers.getRawHeaders("x-accel-buffering"), ["no"])
        [ack] = self.messages(chunks)
        self.assertEqual(ack, {"jsonrpc": "2.0", "method": ACKNOWLEDGED, "params": {
            "_meta": {META_SUBSCRIPTION_ID: 41}, "notifications": {"toolsListChanged": True}}})
        self.h.app.changed(Change("prompts"))
        self.h.app.changed(Change("resources"))
        self.h.app.changed(Change("resource", "test://x"))
        self.h.app.changed(Change("tools"))
        self.h.pump()
        self.assertEqual(self.messages(chunks)[1:], [{
            "jsonrpc": "2.0", "method": "notifications/tools/list_changed",
            "params": {"_meta": {META_SUBSCRIPTION_ID: 41}}}])
        self.assertNoResult(done)

    def test_filterHonoured(self) -> None:
        """
        A stream that asked for prompts only gets the acknowledgement
        naming them, no tool list change, and a prompt list change; one
        that asked for resources only (they never change) gets an empty
        acknowledgement.
        """
        response, chunks, done = self.listen({"promptsListChanged": True}, id="p")
        self.h.app.changed(Change("tools"))
        self.h.app.changed(Change("prompts"))
        self.h.pump()
        self.assertEqual(self.messages(chunks), [{
            "jsonrpc": "2.0", "method": ACKNOWLEDGED,
            "params": {"_meta": {META_SUBSCRIPTION_ID: "p"},
                       "notifications": {"promptsListChanged": True}}}, {
            "jsonrpc": "2.0", "method": "notifications/prompts/list_changed",
            "params": {"_meta": {META_SUBSCRIPTION_ID: "p"}}}])
        response, chunks, done = self.listen({"resourcesListChanged": True}, id="r")
        self.assertEqual(self.messages(chunks)[0]["params"]["notifications"], {})

    def test_keepAliveAndGracefulEnd(self) -> None:
        """
        A keep-alive comment every 25 seconds; when the server ends the
        stream (shutdown), it answers the request with an empty
        C{complete} result tagged with the subscription id, and leaves no
        timer behind.
        """
        response, chunks, done = self.listen({"toolsListChanged": True})
        self.h.pump(25)
        self.assertIn(b": keep-alive", b"".join(chunks))
        self.assertEqual(self.h.app.subscriptions.open, 1)
        self.h.app.subscriptions.closeAll()
        self.h.pump()
        self.successResultOf(done)
        self.assertEqual(self.messages(chunks)[-1], {
            "jsonrpc": "2.0", "id": 41,
            "result": {"resultType": "complete", "_meta": {META_SUBSCRIPTION_ID: 41}}})
        self.assertEqual(self.h.app.subscriptions.open, 0)
        self.assertEqual(self.h.clock.getDelayedCalls(), [])
        self.h.app.changed(Change("tools"))  # nothing is written any more

    def rawListen(self, id: Any = 1) -> Tuple[Any, Any]:
        """
        A listen request on a real L{twisted.web.server.Request} (so the
        connection can be lost), served by a site with C{streamClosers}.
        """
        from io import BytesIO

        from twisted.web.server import Request, Site
        from twisted.web.test.requesthelper import DummyChannel

        channel = DummyChannel()
        channel.site = Site(self.h.app.resource())
        channel.site.streamClosers = set()  # type: ignore[attr-defined]
        request = Request(channel)
        request.content = BytesIO(json.dumps(self.h.call(
            id, LISTEN, {"_meta": MODERN_META, "notifications": {"toolsListChanged": True}}
        )).encode())
        for name, value in dict(self.h.modernHeaders(LISTEN), **{
                "Content-Type": "application/json", "Accept": "text/event-stream",
                "Host": "127.0.0.1:3000"}).items():
            request.requestHeaders.setRawHeaders(name, [value])
        request.requestReceived(b"POST", b"/mcp", b"HTTP/1.1")
        return request, channel

    def test_clientGoesAway(self) -> None:
        """
        A client that closes the stream ends the subscription: it is
        forgotten, its keep-alive stops, nothing more is written.
        """
        from twisted.internet.error import ConnectionLost
        from twisted.python.failure import Failure

        request, channel = self.rawListen()
        self.assertEqual(self.h.app.subscriptions.open, 1)
        self.assertEqual(len(channel.site.streamClosers), 1)
        written = channel.transport.written.getvalue()
        self.assertIn(ACKNOWLEDGED.encode(), written)
        request.connectionLost(Failure(ConnectionLost()))
        self.assertEqual(self.h.app.subscriptions.open, 0)
        self.assertEqual(channel.site.streamClosers, set())
        self.assertEqual(self.h.clock.getDelayedCalls(), [])
        self.h.app.changed(Change("tools"))
        self.assertEqual(channel.transport.written.getvalue(), written)

    def test_shutdownClosesStreams(self) -> None:
        """
        On shutdown the site's stream closers end each subscription with
        its final result, and the response finishes (so draining can end).
        """
        request, channel = self.rawListen(id="s1")
        for closer in list(channel.site.streamClosers):
            closer()
        self.assertTrue(request.finished)
        written = channel.transport.written.getvalue()
        self.assertIn(b'"result":{"resultType":"complete"', written.replace(b" ", b""))
        self.assertEqual(self.h.app.subscriptions.open, 0)

    def test_streamLimit(self) -> None:
        """
        C{STREAM_LIMIT} streams per principal: one more is refused with 429
        (a JSON-RPC error carrying the request id); another principal is
        not affected; a stream that ends makes room.
        """
        limit = self.h.config.streamLimit
        for i in range(limit):
            self.assertEqual(self.listen({"toolsListChanged": True}, id=i)[0].code, 200)
        response, body = self.h.post(
            self.h.call(99, LISTEN, {"_meta": MODERN_META, "notifications": {}}),
            self.h.modernHeaders(LISTEN))
        self.assertEqual(response.code, 429)
        self.assertEqual(json.loads(body)["id"], 99)
        self.h.principal = Principal(subject="bob", clientID="client-1",
                                     scopes=frozenset({"mcp:read"}))
        self.assertEqual(self.listen({})[0].code, 200)
        self.h.principal = ALICE
        stream = next(s for s in self.h.app.subscriptions._streams.values()
                      if s.principal == ALICE)
        stream.close()
        self.h.pump()
        self.assertEqual(self.listen({})[0].code, 200)

    def test_needsRead(self) -> None:
        """
        Listening needs C{mcp:read}: without it, the 403 step-up challenge.
        """
        self.h.principal = Principal(subject="alice", clientID="client-1",
                                     scopes=frozenset({"openid"}))
        response, body = self.h.post(
            self.h.call(5, LISTEN, {"_meta": MODERN_META, "notifications": {}}),
            self.h.modernHeaders(LISTEN))
        self.assertEqual(response.code, 403)
        self.assertIn("insufficient_scope", response.headers.getRawHeaders("www-authenticate")[0])
        self.assertEqual(self.h.app.subscriptions.open, 0)

    def test_badRequests(self) -> None:
        """
        A malformed filter is a 400 with -32602; a client that does not
        accept SSE gets a 400 saying so; neither opens a stream.
        """
        response, body = self.h.post(
            self.h.call(6, LISTEN, {"_meta": MODERN_META, "notifications": {"toolsListChanged": 1}}),
            self.h.modernHeaders(LISTEN))
        self.assertEqual((response.code, json.loads(body)["error"]["code"]), (400, -32602))
        headers = self.h.modernHeaders(LISTEN)
        headers["Accept"] = "application/json"
        response, body = self.h.post(
            self.h.call(7, LISTEN, {"_meta": MODERN_META, "notifications": {}}), headers)
        self.assertEqual(response.code, 400)
        self.assertIn("text/event-stream", json.loads(body)["error"]["message"])
        self.assertEqual(self.h.app.subscriptions.open, 0)

    def test_legacyEraHasNoListen(self) -> None:
        """
        In the handshake era the method does not exist (the GET stream
        does that job).
        """
        sid = self.h.initialize()
        response, body = self.h.post(self.h.call(8, LISTEN, {"notifications": {}}),
                                     {"Mcp-Session-Id": sid})
        self.assertEqual(json.loads(body)["error"]["code"], -32601)

    def test_endsWhenTokenExpires(self) -> None:
        """
        The stream is bound to its token: at the first keep-alive after the
        token expires, the stream ends (gracefully).
        """
        now = self.h.clock.seconds()
        self.h.principal = Principal(subject="alice", clientID="client-1",
                                     scopes=frozenset({"mcp:read"}), expiresAt=now + 30)
        response, chunks, done = self.listen({"toolsListChanged": True})
        self.h.pump(25)
        self.assertNoResult(done)
        self.h.pump(25)
        self.successResultOf(done)
        self.assertEqual(self.messages(chunks)[-1]["result"]["resultType"], "complete")

    def test_endsWhenTokenRevoked(self) -> None:
        """
        A revoked token's stream ends at the next keep-alive.
        """
        self.h.principal = Principal(subject="alice", clientID="client-1",
                                     scopes=frozenset({"mcp:read"}), jti="jti-1")
        response, chunks, done = self.listen({"toolsListChanged": True})
        self.h.pump(25)
        self.assertNoResult(done)
        self.h.store.revokeJTI("jti-1", self.h.clock.seconds() + 3600)
        self.h.pump(25)
        self.successResultOf(done)

    def test_endsAtExpiryNotAfter(self) -> None:
        """
        A stream ends when its token expires, not at the next keep-alive
        after that.
        """
        now = self.h.clock.seconds()
        self.h.principal = Principal(subject="alice", clientID="client-1",
                                     scopes=frozenset({"mcp:read"}), expiresAt=now + 10)
        response, chunks, done = self.listen({"toolsListChanged": True})
        self.h.pump(9)
        self.assertNoResult(done)
        self.h.pump(1)
        self.successResultOf(done)
        self.assertEqual(self.h.app.subscriptions.open, 0)

    def test_endsWhenGrantOrClientRevoked(self) -> None:
        """
        Revoking the token's grant (its refresh family) or removing its
        client, not only the token itself, ends the stream at the next
        keep-alive.
        """
        for n, revoked in enumerate(("family:f-1", "client:client-2")):
            self.h.principal = Principal(
                subject="alice", clientID=f"client-{n + 1}", scopes=frozenset({"mcp:read"}),
                jti="jti-2", revocationIDs=("jti-2", f"client:client-{n + 1}", f"family:f-{n + 1}"))
            response, chunks, done = self.listen({"toolsListChanged": True})
            self.h.pump(25)
            self.assertNoResult(done)
            self.h.store.revokeJTI(revoked, self.h.clock.seconds() + 3600)
            self.h.pump(25)
            self.successResultOf(done)

    def test_totalLimit(self) -> None:
        """
        C{STREAM_LIMIT_TOTAL} bounds the streams open on the instance,
        whoever opens them: one more is refused with 429, the JSON-RPC
        error carrying the request id.
        """
        self.h = Harness(self, config=Config(streamLimitTotal=3))
        for i in range(3):
            self.h.principal = Principal(subject=f"user-{i}", clientID="client-1",
                                         scopes=frozenset({"mcp:read"}))
            self.assertEqual(self.listen({})[0].code, 200)
        self.h.principal = Principal(subject="user-9", clientID="client-9",
                                     scopes=frozenset({"mcp:read"}))
        response, body = self.h.post(
            self.h.call(98, LISTEN, {"_meta": MODERN_META, "notifications": {}}),
            self.h.modernHeaders(LISTEN))
        self.assertEqual(response.code, 429)
        self.assertEqual(json.loads(body)["id"], 98)
        self.assertEqual(self.h.app.subscriptions.open, 3)

    def test_legacyStreamEndsWithItsToken(self) -> None:
        """
        The handshake era's GET stream is bound to its token too: it ends
        when the token expires, and at the next keep-alive after the token,
        its grant or its client is revoked (not only when its session
        ends).
        """
        now = self.h.clock.seconds()
        self.h.principal = Principal(subject="alice", clientID="client-1",
                                     scopes=frozenset({"mcp:read"}), expiresAt=now + 10)
        sid = self.h.initialize()
        response, chunks, done = self.h.open("GET", headers={
            "Mcp-Session-Id": sid, "Accept": "text/event-stream"})
        self.h.pump(9)
        self.assertNoResult(done)
        self.h.pump(1)
        self.successResultOf(done)
        self.h.principal = Principal(
            subject="alice", clientID="client-1", scopes=frozenset({"mcp:read"}), jti="jti-9",
            revocationIDs=("jti-9", "client:client-1", "family:f-9"))
        sid = self.h.initialize()
        response, chunks, done = self.h.open("GET", headers={
            "Mcp-Session-Id": sid, "Accept": "text/event-stream"})
        self.h.pump(25)
        self.assertNoResult(done)
        self.h.store.revokeJTI("family:f-9", self.h.clock.seconds() + 3600)
        self.h.pump(25)
        self.successResultOf(done)

    def test_legacyStreamsToo(self) -> None:
        """
        A tool list change also reaches the handshake era's GET streams.
        """
        sid = self.h.initialize()
        response, chunks, done = self.h.open("GET", headers={
            "Mcp-Session-Id": sid, "Accept": "text/event-stream"})
        self.h.app.changed(Change("tools"))
        self.h.app.changed(Change("prompts"))
        self.h.pump()
        self.assertEqual(self.messages(chunks),
                         [{"jsonrpc": "2.0", "method": "notifications/tools/list_changed"}])
