"""
Scopes on C{/mcp}: every request method needs its scope (L{METHOD_SCOPES},
with the hierarchy C{mcp:write} > C{mcp:tools} > C{mcp:read}), a tool may
need one more (C{Tool.requiredScope}), and a token without them gets the
403 step-up challenge, in every protocol era and in batches.
"""

import json
from typing import Any, Dict, Iterable, List, Tuple

from twisted.internet.defer import succeed
from twisted.logger import capturedLogs
from twisted.trial.unittest import SynchronousTestCase

from mcpsvc.config import Config
from mcpsvc.mcp.app import McpApp
from mcpsvc.mcp.dispatcher import METHOD_SCOPES, TOKEN_ONLY_METHODS
from mcpsvc.mcp.tasks import TASK_METHODS, TASKS_EXTENSION
from mcpsvc.mcp.test.helpers import MODERN_META, Harness
from mcpsvc.principal import Principal
from mcpsvc.tools.conformance import conformanceFeatures
from mcpsvc.tools.features import FeatureSet
from mcpsvc.tools.interfaces import Tool, ToolPackContext
from mcpsvc.tools.registry import InvalidTool, ToolRegistry

PRM = "http://127.0.0.1:3000/.well-known/oauth-protected-resource/mcp"


def principal(*scopes: str) -> Principal:
    return Principal(subject="alice", clientID="client-1", scopes=frozenset(scopes))


def header(response: Any, name: str) -> Any:
    values = response.headers.getRawHeaders(name.encode("ascii"))
    return values[0].decode() if values else None


def challengeParams(value: str) -> Dict[str, str]:
    """
    The parameters of a C{Bearer} challenge.
    """
    import re

    scheme, _, rest = value.partition(" ")
    assert scheme == "Bearer", value
    return dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', rest))


class ScopedHarness(Harness):
    """
    The transport harness with resources, prompts and completions too (the
    conformance pack's), so that every method of L{METHOD_SCOPES} exists.
    """

    def __init__(self, testCase: SynchronousTestCase, config: Any = None) -> None:
        super().__init__(testCase, config=config)
        context = ToolPackContext(config=self.config, clock=self.clock,
                                  runInThread=lambda f, *a, **kw: succeed(f(*a, **kw)))
        self.registry = ToolRegistry(
            self.tools(), clock=self.clock,
            features=FeatureSet([conformanceFeatures(context)]),
        )
        self.app = McpApp(config=self.config, store=self.store, clock=self.clock,
                          authenticate=self.authenticate, registry=self.registry)
        from treq.testing import StubTreq

        self.stub = StubTreq(self.app.resource())


#: A request of each method that needs a scope, valid when the scope is held.
REQUESTS: Dict[str, Dict[str, Any]] = {
    "tools/list": {},
    "tools/call": {"name": "echo", "arguments": {"text": "hi"}},
    "resources/list": {},
    "resources/templates/list": {},
    "resources/read": {"uri": "test://static-text"},
    "resources/subscribe": {"uri": "test://static-text"},
    "resources/unsubscribe": {"uri": "test://static-text"},
    "prompts/list": {},
    "prompts/get": {"name": "test_simple_prompt"},
    "completion/complete": {
        "ref": {"type": "ref/prompt", "name": "test_prompt_with_arguments"},
        "argument": {"name": "arg1", "value": "a"}},
}

#: Likewise for the methods served in the 2026-07-28 era only (the skills
#: extension's).
MODERN_REQUESTS: Dict[str, Dict[str, Any]] = {
    "skills/list": {},
    "skills/get": {"uri": "skill://release-notes/SKILL.md"},
    "resources/directory/read": {"uri": "skill://release-notes"},
}


class HandshakeEraScopeTests(SynchronousTestCase):
    """
    Sessions (2024-11-05 .. 2025-11-25).
    """

    version = "2025-06-18"

    def setUp(self) -> None:
        self.h = ScopedHarness(self)
        self.sid = self.h.initialize(self.version)
        self.headers = {"Mcp-Session-Id": self.sid, "MCP-Protocol-Version": self.version}

    def send(self, scopes: Iterable[str], method: str, params: Any = None, id: Any = 1) -> Tuple[Any, Any]:
        self.h.principal = principal(*scopes)
        response, body = self.h.post(self.h.call(id, method, params), self.headers)
        return response, json.loads(body) if body else None

    def assertInsufficient(
        self, response: Any, message: Any, scope: str, missing: List[str], id: Any = 1
    ) -> None:
        self.assertEqual(response.code, 403, message)
        params = challengeParams(header(response, "www-authenticate"))
        self.assertEqual(params["error"], "insufficient_scope")
        self.assertEqual(params["scope"], scope)
        self.assertEqual(params["resource_metadata"], PRM)
        self.assertEqual(message["jsonrpc"], "2.0")
        self.assertEqual(message["id"], id)
        self.assertEqual(message["error"]["code"], -32600)
        self.assertEqual(message["error"]["data"]["missingScopes"], missing)

    def test_tableCoversEveryScopedMethod(self) -> None:
        """
        Every method the server offers needs a scope except C{ping} and
        C{logging/setLevel}; L{REQUESTS} exercises each of them.
        """
        self.assertEqual(TOKEN_ONLY_METHODS, {"ping", "logging/setLevel"})
        self.assertEqual(set(REQUESTS) | set(MODERN_REQUESTS)
                         | {"server/discover", "subscriptions/listen"} | set(TASK_METHODS),
                         set(METHOD_SCOPES))
        offered = set(self.h.app.dispatcher.methods(False)) | set(self.h.app.dispatcher.methods(True))
        self.assertLessEqual(set(METHOD_SCOPES) | TOKEN_ONLY_METHODS, offered)

    def test_unclassifiedMethodNeedsRead(self) -> None:
        """
        A method in neither table (added later, not yet classified) needs
        C{mcp:read}: the check fails closed.
        """
        async def handler(request: Any, context: Any) -> Dict[str, Any]:
            return {"ran": True}

        self.h.app.dispatcher._legacy["example/new"] = handler
        response, message = self.send(["openid"], "example/new", {})
        self.assertInsufficient(response, message, "mcp:read", ["mcp:read"])
        response, message = self.send(["mcp:read"], "example/new", {})
        self.assertEqual(message["result"], {"ran": True})

    def test_readMethodsNeedRead(self) -> None:
        """
        Listing and reading need C{mcp:read}, which C{mcp:tools} and
        C{mcp:write} include; a token with none of them (or only unknown
        scopes) gets 403 naming C{mcp:read}.
        """
        for method, params in REQUESTS.items():
            if method == "tools/call":
                continue
            for scopes in (["mcp:read"], ["mcp:tools"], ["mcp:write"]):
                response, message = self.send(scopes, method, params)
                self.assertEqual(response.code, 200, (method, scopes, message))
                self.assertIn("result", message, (method, scopes))
            response, message = self.send(["openid", "mcp"], method, params)
            self.assertInsufficient(response, message, "mcp:read", ["mcp:read"])

    def test_toolsCallNeedsTools(self) -> None:
        """
        C{tools/call} needs C{mcp:tools}: an C{mcp:read} token is refused
        before the tool runs; the challenge names what it holds and needs.
        """
        response, message = self.send(["mcp:read"], "tools/call", REQUESTS["tools/call"])
        self.assertInsufficient(response, message, "mcp:tools mcp:read", ["mcp:tools"])
        for scopes in (["mcp:tools"], ["mcp:write"]):
            response, message = self.send(scopes, "tools/call", REQUESTS["tools/call"])
            self.assertEqual(message["result"]["content"][0]["text"], "hi")

    def test_toolScope(self) -> None:
        """
        A tool declaring C{mcp:write} needs it on top of C{mcp:tools}; the
        challenge names everything so the client asks once.
        """
        response, message = self.send(["mcp:tools", "mcp:read"], "tools/call", {"name": "admin"})
        self.assertInsufficient(response, message, "mcp:tools mcp:read mcp:write", ["mcp:write"])
        self.assertEqual(message["error"]["data"]["requiredScopes"], ["mcp:tools", "mcp:write"])
        response, message = self.send(["mcp:read"], "tools/call", {"name": "admin"})
        self.assertInsufficient(response, message, "mcp:tools mcp:read mcp:write",
                                ["mcp:tools", "mcp:write"])
        response, message = self.send(["mcp:write"], "tools/call", {"name": "admin"})
        self.assertEqual(message["result"]["content"][0]["text"], "ok")

    def test_noScopeNeeded(self) -> None:
        """
        C{ping}, C{logging/setLevel}, notifications and C{initialize} need
        only a valid token.
        """
        response, message = self.send([], "ping")
        self.assertEqual(message["result"], {})
        response, message = self.send([], "logging/setLevel", {"level": "info"})
        self.assertEqual(message["result"], {})
        self.h.principal = principal()
        response, _ = self.h.post({"jsonrpc": "2.0", "method": "notifications/cancelled",
                                   "params": {"requestId": 9}}, self.headers)
        self.assertEqual(response.code, 202)
        response, _ = self.h.post(self.h.call(0, "initialize", {
            "protocolVersion": self.version, "capabilities": {},
            "clientInfo": {"name": "x", "version": "1"}}))
        self.assertEqual(response.code, 200)

    def test_unknownMethodStillNotFound(self) -> None:
        """
        An unknown method is -32601 whatever the token's scopes.
        """
        response, message = self.send([], "nope/nope")
        self.assertEqual(message["error"]["code"], -32601)

    def test_auditAndSessionKept(self) -> None:
        """
        A refusal is an audit event (which the metrics count), and the
        session keeps working.
        """
        with capturedLogs() as events:
            response, message = self.send(["mcp:read"], "tools/call", {"name": "admin"})
        self.assertEqual(response.code, 403)
        [event] = [e for e in events if e.get("event_type") == "audit"]
        self.assertEqual((event["action"], event["outcome"]), ("mcp.insufficient_scope", "denied"))
        self.assertEqual((event["method"], event["tool"]), ("tools/call", "admin"))
        self.assertEqual((event["missing"], event["subject"]), ("mcp:tools mcp:write", "alice"))
        response, message = self.send(["mcp:write"], "tools/call", {"name": "admin"})
        self.assertEqual(response.code, 200)


class OldestEraScopeTests(HandshakeEraScopeTests):
    version = "2024-11-05"


class NewestHandshakeEraScopeTests(HandshakeEraScopeTests):
    version = "2025-11-25"


class BatchScopeTests(SynchronousTestCase):
    """
    2025-03-26 batches: one element needing a scope the token lacks
    refuses the whole batch with one challenge, and nothing in it runs.
    """

    def setUp(self) -> None:
        self.h = ScopedHarness(self)
        self.sid = self.h.initialize("2025-03-26")
        self.headers = {"Mcp-Session-Id": self.sid}

    def test_batchRefusedWhole(self) -> None:
        self.h.principal = principal("mcp:read")
        batch = [
            self.h.call(1, "tools/list"),
            self.h.call(2, "tools/call", {"name": "echo", "arguments": {"text": "x"}}),
            self.h.call(3, "tools/call", {"name": "admin"}),
        ]
        with capturedLogs() as events:
            response, body = self.h.post(batch, self.headers)
        self.assertEqual(response.code, 403)
        params = challengeParams(header(response, "www-authenticate"))
        self.assertEqual((params["error"], params["scope"]),
                         ("insufficient_scope", "mcp:tools mcp:read mcp:write"))
        message = json.loads(body)
        self.assertEqual(message["error"]["data"]["missingScopes"], ["mcp:tools", "mcp:write"])
        self.assertFalse([e for e in events if "Tool" in str(e.get("log_format", ""))
                          and "called" in str(e.get("log_format", ""))])
        self.h.principal = principal("mcp:write")
        response, body = self.h.post(batch, self.headers)
        self.assertEqual(response.code, 200)
        self.assertEqual([m["id"] for m in json.loads(body)], [1, 2, 3])

    def test_batchWithinScope(self) -> None:
        """
        A batch whose requests the token covers runs as before.
        """
        self.h.principal = principal("mcp:read")
        response, body = self.h.post([self.h.call(1, "tools/list"), self.h.call(2, "ping")],
                                     self.headers)
        self.assertEqual(response.code, 200)
        self.assertEqual([("result" in m) for m in json.loads(body)], [True, True])


class ModernEraScopeTests(SynchronousTestCase):
    """
    The stateless 2026-07-28 era.
    """

    def setUp(self) -> None:
        self.h = ScopedHarness(self)

    def send(self, scopes: Iterable[str], method: str, params: Dict[str, Any]) -> Tuple[Any, Any]:
        self.h.principal = principal(*scopes)
        params = dict(params, _meta=MODERN_META)
        name = params.get("name") or params.get("uri")
        response, body = self.h.post(self.h.call(7, method, params),
                                     self.h.modernHeaders(method, name))
        return response, json.loads(body) if body else None

    def test_discoverNeedsRead(self) -> None:
        response, message = self.send([], "server/discover", {})
        self.assertEqual(response.code, 403)
        self.assertEqual(challengeParams(header(response, "www-authenticate"))["scope"], "mcp:read")
        self.assertEqual(message["id"], 7)
        response, message = self.send(["mcp:read"], "server/discover", {})
        self.assertEqual(response.code, 200)

    def test_tasksNeedTools(self) -> None:
        """
        The tasks extension's methods need C{mcp:tools}, like the tool
        calls they follow.
        """
        meta = dict(MODERN_META)
        meta["io.modelcontextprotocol/clientCapabilities"] = {"extensions": {TASKS_EXTENSION: {}}}
        for method in TASK_METHODS:
            self.h.principal = principal("mcp:read")
            params = {"taskId": "t-1", "inputResponses": {}, "_meta": meta}
            response, body = self.h.post(self.h.call(7, method, params),
                                         self.h.modernHeaders(method, "t-1"))
            self.assertEqual(response.code, 403, method)
            self.assertEqual(challengeParams(header(response, "www-authenticate"))["scope"],
                             "mcp:tools mcp:read")
            self.h.principal = principal("mcp:tools")
            response, body = self.h.post(self.h.call(7, method, params),
                                         self.h.modernHeaders(method, "t-1"))
            self.assertEqual(json.loads(body)["error"]["code"], -32602, method)

    def test_skillsNeedRead(self) -> None:
        """
        The skills extension's methods need C{mcp:read}, as
        C{resources/read} of the skill files does.
        """
        for method, params in MODERN_REQUESTS.items():
            for scopes in (["mcp:read"], ["mcp:tools"], ["mcp:write"]):
                response, message = self.send(scopes, method, params)
                self.assertEqual(response.code, 200, (method, scopes, message))
                self.assertIn("result", message, (method, scopes))
            response, message = self.send(["openid"], method, params)
            self.assertEqual(response.code, 403, method)
            self.assertEqual(challengeParams(header(response, "www-authenticate"))["scope"],
                             "mcp:read")

    def test_toolCall(self) -> None:
        response, message = self.send(["mcp:read"], "tools/call", {"name": "admin"})
        self.assertEqual(response.code, 403)
        params = challengeParams(header(response, "www-authenticate"))
        self.assertEqual((params["error"], params["scope"]),
                         ("insufficient_scope", "mcp:tools mcp:read mcp:write"))
        response, message = self.send(["mcp:write"], "tools/call", {"name": "admin"})
        self.assertEqual(response.code, 200)
        self.assertEqual(message["result"]["content"][0]["text"], "ok")
        response, message = self.send(["mcp:read"], "resources/read", {"uri": "test://static-text"})
        self.assertEqual(response.code, 200)


class ToolsListTests(SynchronousTestCase):
    """
    C{tools/list} lists every tool, also those the token cannot call.
    """

    def test_listsAll(self) -> None:
        h = ScopedHarness(self)
        sid = h.initialize()
        h.principal = principal("mcp:read")
        status, message = h.json(h.call(1, "tools/list"), {"Mcp-Session-Id": sid})
        names = [t["name"] for t in message["result"]["tools"]]
        self.assertIn("admin", names)
        self.assertIn("echo", names)


class RegistryScopeTests(SynchronousTestCase):
    """
    A tool may only declare a scope that the authorization server grants.
    """

    def tool(self, scope: Any) -> Tool:
        return Tool(name="t", description="d", inputSchema={"type": "object"},
                    call=lambda a, c: "ok", requiredScope=scope)

    def test_unknownScopeRefused(self) -> None:
        from twisted.internet.task import Clock

        e = self.assertRaises(InvalidTool, ToolRegistry, [self.tool("admin")], clock=Clock())
        self.assertIn("admin", str(e))
        self.assertIn("mcp:write", str(e))
        for scope in ("mcp:write", "mcp:tools", "mcp:read", None):
            ToolRegistry([self.tool(scope)], clock=Clock())

    def test_fileWriteNeedsWrite(self) -> None:
        """
        The files pack's C{file_write} declares C{mcp:write}; its readers
        declare nothing beyond C{mcp:tools}.
        """
        import os

        from twisted.internet.task import Clock

        from mcpsvc.tools.files import filesTools

        root = self.mktemp()
        os.makedirs(root)
        config = Config(filesRoot=root)
        tools = {t.name: t for t in filesTools(ToolPackContext(
            config=config, clock=Clock(), runInThread=lambda f, *a, **kw: succeed(f(*a, **kw))))}
        self.assertEqual(tools["file_write"].requiredScope, "mcp:write")
        self.assertIsNone(tools["file_read"].requiredScope)
        self.assertIsNone(tools["file_list"].requiredScope)
