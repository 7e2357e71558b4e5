"""
Test doubles for the MCP endpoint: a harness around L{McpApp} with a
L{MemoryStore}, a L{Clock}, a fake authenticator and a small tool set.
"""

from __future__ import annotations

import json
from typing import Any, Dict, List, Mapping, Optional, Tuple

import treq
from treq.testing import StubTreq
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock, deferLater
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.iweb import IRequest

from mcpsvc.config import Config
from mcpsvc.http.errors import Unauthorized
from mcpsvc.mcp.app import McpApp
from mcpsvc.principal import Principal
from mcpsvc.storage.memory import MemoryStore
from mcpsvc.tools.interfaces import Tool, ToolContext
from mcpsvc.tools.registry import ToolRegistry

BASE = "http://127.0.0.1:3000"
ALICE = Principal(subject="alice", clientID="client-1", scopes=frozenset({"mcp:tools", "mcp:read"}))
MALLORY = Principal(subject="mallory", clientID="client-1", scopes=frozenset({"mcp:tools", "mcp:read"}))
BOTH = "application/json, text/event-stream"
MODERN = "2026-07-28"
MODERN_META = {
    "io.modelcontextprotocol/protocolVersion": MODERN,
    "io.modelcontextprotocol/clientCapabilities": {},
    "io.modelcontextprotocol/clientInfo": {"name": "test", "version": "1"},
}


class Boom(Exception):
    """
    Raised by the C{boom} tool.
    """


def parseSSE(data: bytes) -> List[Dict[str, Any]]:
    """
    Return the JSON messages of the C{data:} lines of an SSE body.
    """
    messages = []
    for event in data.split(b"\n\n"):
        for line in event.split(b"\n"):
            if line.startswith(b"data: "):
                messages.append(json.loads(line[6:]))
    return messages


class Harness:
    """
    An L{McpApp} under test.

    @ivar pending: Deferreds returned by running C{slow} calls.
    @ivar cancelled: how many C{slow} calls were cancelled.
    """

    def __init__(
        self,
        testCase: SynchronousTestCase,
        config: Optional[Config] = None,
        store: Optional[MemoryStore] = None,
        clock: Optional[Clock] = None,
        pageSize: int = 100,
        changes: Any = None,
    ) -> None:
        self.testCase = testCase
        self.clock = clock if clock is not None else Clock()
        if clock is None:
            self.clock.advance(1_000_000)
        self.config = config if config is not None else Config()
        self.store = store if store is not None else MemoryStore(self.clock)
        self.principal = ALICE
        self.refuse = False
        self.pending: List[Deferred[Any]] = []
        self.cancelled = 0
        self.registry = ToolRegistry(self.tools(), clock=self.clock, pageSize=pageSize)
        self.app = McpApp(
            config=self.config,
            store=self.store,
            clock=self.clock,
            authenticate=self.authenticate,
            registry=self.registry,
            changes=changes,
        )
        self.stub = StubTreq(self.app.resource())

    async def authenticate(self, request: IRequest) -> Principal:
        if self.refuse:
            raise Unauthorized(
                "Missing bearer token",
                headers={"WWW-Authenticate": 'Bearer resource_metadata="x"'},
            )
        return self.principal

    def tools(self) -> List[Tool]:
        harness = self

        def slow(arguments: Mapping[str, Any], context: ToolContext) -> "Deferred[str]":
            def cancel(d: Deferred[str]) -> None:
                harness.cancelled += 1

            d: Deferred[str] = Deferred(cancel)
            harness.pending.append(d)
            return d

        async def steps(arguments: Mapping[str, Any], context: ToolContext) -> str:
            context.reportProgress(1, 3, "one")
            await deferLater(context.clock, 1, lambda: None)
            context.reportProgress(1, 3, "repeated, dropped")
            context.reportProgress(2, 3)
            await deferLater(context.clock, 1, lambda: None)
            context.logMessage("debug", "quiet")
            context.logMessage("warning", "loud")
            context.reportProgress(3, 3)
            return "finished"

        def boom(arguments: Mapping[str, Any], context: ToolContext) -> str:
            raise Boom("internal detail")

        async def ask(arguments: Mapping[str, Any], context: ToolContext) -> Any:
            answer = await context.clientRequest(
                "elicitation/create", {"message": "Name?", "requestedSchema": {
                    "type": "object", "properties": {"name": {"type": "string"}}}})
            return f"answer: {json.dumps(answer, sort_keys=True)}"

        obj = {"type": "object"}
        return [
            Tool(name="ask", description="Asks the user.", inputSchema=obj, call=ask,
                 requiredClientCapabilities={"elicitation": {}}),
            Tool(name="echo", description="Echo.", inputSchema={
                "type": "object", "properties": {"text": {"type": "string"}},
                "required": ["text"]}, call=lambda a, c: a["text"]),
            Tool(name="slow", description="Never finishes.", inputSchema=obj, call=slow),
            Tool(name="steps", description="Reports progress.", inputSchema=obj, call=steps),
            Tool(name="boom", description="Raises.", inputSchema=obj, call=boom),
            Tool(name="admin", description="Needs a scope.", inputSchema=obj,
                 call=lambda a, c: "ok", requiredScope="mcp:write"),
            Tool(name="sampler", description="Needs sampling.", inputSchema=obj,
                 call=lambda a, c: "ok", requiredClientCapabilities={"sampling": {}}),
        ]

    def servePacks(self, config: Config, **kw: Any) -> None:
        """
        Serve the tool packs C{config} enables (L{buildToolRegistry}, with
        C{kw}) instead of the harness's own tools.
        """
        from mcpsvc.tools import buildToolRegistry

        registry = buildToolRegistry(config, clock=self.clock, **kw)
        self.app = McpApp(config=config, store=self.store, clock=self.clock,
                          authenticate=self.authenticate, registry=registry)
        self.stub = StubTreq(self.app.resource())

    # -- requests -------------------------------------------------------------

    def _headers(self, headers: Optional[Mapping[str, Any]], json_: bool = True) -> Dict[str, Any]:
        result: Dict[str, Any] = {"Accept": BOTH}
        if json_:
            result["Content-Type"] = "application/json"
        for name, value in (headers or {}).items():
            if value is None:
                result.pop(name, None)
            else:
                result[name] = value
        return result

    def request(
        self,
        method: str,
        body: Any = None,
        headers: Optional[Mapping[str, Any]] = None,
        path: str = "/mcp",
        raw: Optional[bytes] = None,
    ) -> Tuple[Any, bytes]:
        """
        Make a request that completes, and return the response and body.
        """
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        d = self.stub.request(
            method, BASE + path, data=data, headers=self._headers(headers, data is not None)
        )
        self.stub.flush()
        response = self.testCase.successResultOf(d)
        content = self.testCase.successResultOf(self.stub.content(response))
        return response, content

    def post(self, body: Any, headers: Optional[Mapping[str, Any]] = None, **kw: Any) -> Tuple[Any, bytes]:
        return self.request("POST", body, headers, **kw)

    def json(self, body: Any, headers: Optional[Mapping[str, Any]] = None, **kw: Any) -> Tuple[int, Any]:
        """
        POST and return the status and the decoded JSON body.
        """
        response, content = self.post(body, headers, **kw)
        return response.code, json.loads(content) if content else None

    def begin(
        self, method: str, body: Any = None, headers: Optional[Mapping[str, Any]] = None
    ) -> "Deferred[Any]":
        """
        Make a request whose response may not have started; return the
        Deferred of the response.
        """
        data = json.dumps(body).encode() if body is not None else None
        d = self.stub.request(
            method, BASE + "/mcp", data=data, headers=self._headers(headers, data is not None)
        )
        self.stub.flush()
        return d

    def finish(self, d: "Deferred[Any]") -> Tuple[Any, bytes]:
        """
        Return the response and body of a request begun with L{begin}.
        """
        self.stub.flush()
        response = self.testCase.successResultOf(d)
        return response, self.testCase.successResultOf(self.stub.content(response))

    def open(
        self, method: str, body: Any = None, headers: Optional[Mapping[str, Any]] = None
    ) -> Tuple[Any, List[bytes], "Deferred[None]"]:
        """
        Make a request whose response streams; return the response, the
        chunks received so far (growing) and a Deferred firing when the
        body ends.
        """
        data = json.dumps(body).encode() if body is not None else None
        d = self.stub.request(
            method, BASE + "/mcp", data=data, headers=self._headers(headers, data is not None)
        )
        self.stub.flush()
        response = self.testCase.successResultOf(d)
        chunks: List[bytes] = []
        done = treq.collect(response, chunks.append)
        self.stub.flush()
        return response, chunks, done

    def pump(self, seconds: float = 0) -> None:
        self.clock.advance(seconds)
        self.stub.flush()

    def initialize(self, version: str = "2025-06-18", capabilities: Optional[Dict[str, Any]] = None) -> str:
        """
        Initialize a session and return its id.
        """
        response, _ = self.post(
            {"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
                "protocolVersion": version, "capabilities": capabilities or {},
                "clientInfo": {"name": "test-client", "version": "1.0"}}}
        )
        [sessionID] = response.headers.getRawHeaders("mcp-session-id")
        self.post({"jsonrpc": "2.0", "method": "notifications/initialized"},
                  {"Mcp-Session-Id": sessionID})
        return str(sessionID)

    def call(self, id: Any, method: str, params: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
        message: Dict[str, Any] = {"jsonrpc": "2.0", "id": id, "method": method}
        if params is not None:
            message["params"] = params
        return message

    def modernHeaders(self, method: str, name: Optional[str] = None, **extra: Any) -> Dict[str, Any]:
        headers: Dict[str, Any] = {"MCP-Protocol-Version": MODERN, "Mcp-Method": method}
        if name is not None:
            headers["Mcp-Name"] = name
        headers.update(extra)
        return headers
