"""
Tests for L{mcpsvc.mcp.dispatcher}, without HTTP.
"""

from typing import Any, Dict, List

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from mcpsvc.mcp.dispatcher import Dispatcher, RequestCancelled, RequestContext
from mcpsvc.mcp.protocol import Notification, ProtocolError, Request
from mcpsvc.mcp.test.helpers import ALICE
from mcpsvc.tools.interfaces import Tool
from mcpsvc.tools.registry import ToolRegistry


class DispatcherTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.cancelled: List[bool] = []
        self.pending: Deferred[Any] = Deferred(lambda d: self.cancelled.append(True))

        def swallow(arguments: Any, context: Any) -> Any:
            # A tool that turns its cancellation into a value.
            d: Deferred[Any] = Deferred(lambda d: d.callback("ignored"))
            return d

        registry = ToolRegistry(
            [Tool(name="wait", description="Waits.", inputSchema={"type": "object"},
                  call=lambda a, c: self.pending),
             Tool(name="swallow", description="Swallows.", inputSchema={"type": "object"},
                  call=swallow)],
            clock=self.clock,
        )
        self.dispatcher = Dispatcher(registry, clock=self.clock)
        self.context = RequestContext(principal=ALICE, protocolVersion="2025-06-18", scope="s:1")

    def handle(self, id: Any, method: str, params: Any = None, context: Any = None) -> "Deferred[Dict[str, Any]]":
        return Deferred.fromCoroutine(self.dispatcher.handleRequest(
            Request(id=id, method=method, params=params or {}), context or self.context))

    def test_initialize(self) -> None:
        """
        C{initialize} negotiates and declares tools and logging only.
        """
        version, result = self.dispatcher.initialize({"protocolVersion": "2025-03-26"})
        self.assertEqual(version, "2025-03-26")
        self.assertEqual(set(result["capabilities"]), {"tools", "logging"})
        self.assertEqual(result["capabilities"]["tools"], {"listChanged": False})
        quiet = Dispatcher(self.dispatcher.registry, clock=self.clock, logging=False)
        self.assertEqual(quiet.initialize({})[1]["capabilities"], {"tools": {"listChanged": False}})
        self.assertIn("logging", quiet.capabilities(modern=True))

    def test_methodNotFound(self) -> None:
        """
        Unknown methods fail with -32601 carrying the id; modern-only
        methods are unknown in the handshake era and vice versa.
        """
        for method, modern in (("resources/list", False), ("server/discover", False),
                               ("ping", True), ("logging/setLevel", True)):
            context = RequestContext(principal=ALICE, protocolVersion="x", modern=modern)
            failure = self.failureResultOf(self.handle(3, method, context=context), ProtocolError)
            self.assertEqual((failure.value.code, failure.value.id), (-32601, 3))

    def test_cancel(self) -> None:
        """
        C{notifications/cancelled} cancels the named call of the same scope.
        """
        d = self.handle(1, "tools/call", {"name": "wait"})
        other = RequestContext(principal=ALICE, protocolVersion="2025-06-18", scope="s:2")
        self.dispatcher.handleNotification(
            Notification(method="notifications/cancelled", params={"requestId": 1}), other)
        self.assertNoResult(d)
        self.dispatcher.handleNotification(
            Notification(method="notifications/cancelled", params={"requestId": 1}), self.context)
        self.failureResultOf(d, RequestCancelled)
        self.assertEqual(self.cancelled, [True])
        self.assertEqual(self.dispatcher.inFlight, 0)

    def test_cancelSwallowed(self) -> None:
        """
        A cancelled call whose tool still produces a value gets no response.
        """
        d = self.handle(2, "tools/call", {"name": "swallow"})
        self.assertTrue(self.dispatcher.cancel("s:1", 2))
        self.failureResultOf(d, RequestCancelled)
        self.assertFalse(self.dispatcher.cancel("s:1", 2))

    def test_modernResults(self) -> None:
        """
        Modern results carry C{resultType} and the server info in C{_meta}.
        """
        context = RequestContext(principal=ALICE, protocolVersion="2026-07-28", modern=True)
        result = self.successResultOf(self.handle(1, "tools/list", context=context))
        self.assertEqual(result["resultType"], "complete")
        self.assertIn("io.modelcontextprotocol/serverInfo", result["_meta"])
        self.assertEqual(result["cacheScope"], "private")
