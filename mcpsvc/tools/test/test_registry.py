"""
Tests for L{mcpsvc.tools.registry}.
"""

from typing import Any, List

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from mcpsvc.mcp.protocol import INVALID_PARAMS, ProtocolError
from mcpsvc.tools.interfaces import Tool, ToolContext, ToolError, ToolResult
from mcpsvc.tools.registry import InvalidTool, ToolRegistry

OBJECT = {"type": "object"}


def tool(name: str, call: Any = lambda a, c: "ok", **kw: Any) -> Tool:
    kw.setdefault("inputSchema", OBJECT)
    return Tool(name=name, description=f"The {name} tool.", call=call, **kw)


class Boom(Exception):
    pass


class DefinitionTests(SynchronousTestCase):
    def test_badNames(self) -> None:
        """
        Names outside C{[A-Za-z0-9_.-]{1,64}} are refused.
        """
        for name in ("", "a b", "a/b", "x" * 65, "é", "a,b"):
            self.assertRaises(InvalidTool, ToolRegistry, [tool(name)], clock=Clock())
        ToolRegistry([tool("A-z_0.9"), tool("x" * 64)], clock=Clock())

    def test_duplicate(self) -> None:
        """
        Two tools with one name are refused.
        """
        self.assertRaises(InvalidTool, ToolRegistry, [tool("a"), tool("a")], clock=Clock())

    def test_descriptionRequired(self) -> None:
        """
        A tool needs a description.
        """
        bad = Tool(name="a", description=" ", inputSchema=OBJECT, call=lambda a, c: "")
        self.assertRaises(InvalidTool, ToolRegistry, [bad], clock=Clock())

    def test_schemas(self) -> None:
        """
        Schemas must be valid 2020-12 schemas with an object root.
        """
        for schema in (
            {"type": "string"},
            {"type": "object", "properties": {"a": {"type": "nope"}}},
            {"type": "object", "$schema": "http://json-schema.org/draft-04/schema#"},
            None,
        ):
            self.assertRaises(
                InvalidTool, ToolRegistry, [tool("a", inputSchema=schema)], clock=Clock()
            )
        self.assertRaises(
            InvalidTool, ToolRegistry, [tool("a", outputSchema={"type": "array"})], clock=Clock()
        )


class ListTests(SynchronousTestCase):
    def test_orderAndPages(self) -> None:
        """
        Tools are listed by name, a page at a time, with an opaque cursor.
        """
        registry = ToolRegistry(
            [tool(n) for n in ("delta", "alpha", "echo", "charlie", "bravo")],
            clock=Clock(), pageSize=2,
        )
        names: List[str] = []
        cursor = None
        pages = 0
        while True:
            page, cursor = registry.listTools(cursor)
            names.extend(t["name"] for t in page)
            pages += 1
            if cursor is None:
                break
            self.assertNotIn(cursor, ("2", "4"))
        self.assertEqual(names, ["alpha", "bravo", "charlie", "delta", "echo"])
        self.assertEqual(pages, 3)

    def test_invalidCursor(self) -> None:
        """
        A cursor we did not issue fails with -32602.
        """
        registry = ToolRegistry([tool("a"), tool("b")], clock=Clock(), pageSize=1)
        _, good = registry.listTools()
        for cursor in ("", "nope", 5, "MTox", good + "x"):
            e = self.assertRaises(ProtocolError, registry.listTools, cursor)
            self.assertEqual(e.code, INVALID_PARAMS)
        other = ToolRegistry([tool("a"), tool("c")], clock=Clock(), pageSize=1)
        self.assertRaises(ProtocolError, other.listTools, good)

    def test_descriptor(self) -> None:
        """
        Descriptors carry the declared members only.
        """
        registry = ToolRegistry(
            [tool("a", title="A", outputSchema=OBJECT, annotations={"readOnlyHint": True})],
            clock=Clock(),
        )
        [descriptor], _ = registry.listTools()
        self.assertEqual(
            descriptor,
            {"name": "a", "title": "A", "description": "The a tool.", "inputSchema": OBJECT,
             "outputSchema": OBJECT, "annotations": {"readOnlyHint": True}},
        )


class CallTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.context = ToolContext(clock=self.clock, subject="s", clientID="c")

    def call(self, t: Tool, arguments: Any = None, **kw: Any) -> "Deferred[Any]":
        registry = ToolRegistry([t], clock=self.clock, **kw)
        return registry.callTool(t, arguments if arguments is not None else {}, self.context)

    def test_text(self) -> None:
        """
        A string result is one text block.
        """
        result = self.successResultOf(self.call(tool("a", lambda a, c: "hi")))
        self.assertEqual(result, {"content": [{"type": "text", "text": "hi"}]})

    def test_invalidArguments(self) -> None:
        """
        Arguments failing the schema give an C{isError} result naming the
        problem, and the tool is not called.
        """
        called = []
        schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
        t = tool("a", lambda a, c: called.append(a), inputSchema=schema)
        result = self.successResultOf(self.call(t, {"n": "x"}))
        self.assertTrue(result["isError"])
        self.assertIn("Invalid arguments", result["content"][0]["text"])
        self.assertIn("n:", result["content"][0]["text"])
        self.assertEqual(called, [])

    def test_structured(self) -> None:
        """
        With an output schema, the value is C{structuredContent} plus a text
        block of its JSON.
        """
        schema = {"type": "object", "properties": {"x": {"type": "integer"}}, "required": ["x"]}
        result = self.successResultOf(self.call(tool("a", lambda a, c: {"x": 1}, outputSchema=schema)))
        self.assertEqual(
            result, {"content": [{"type": "text", "text": '{"x": 1}'}], "structuredContent": {"x": 1}}
        )

    def test_invalidOutput(self) -> None:
        """
        Output not matching the declared schema is an C{isError} result.
        """
        schema = {"type": "object", "required": ["x"]}
        result = self.successResultOf(self.call(tool("a", lambda a, c: {"y": 1}, outputSchema=schema)))
        self.assertTrue(result["isError"])
        self.assertNotIn("structuredContent", result)

    def test_toolResult(self) -> None:
        """
        A L{ToolResult} is passed through.
        """
        value = ToolResult(content=[{"type": "image", "data": "AA==", "mimeType": "image/png"}])
        result = self.successResultOf(self.call(tool("a", lambda a, c: value)))
        self.assertEqual(result, {"content": [{"type": "image", "data": "AA==", "mimeType": "image/png"}]})

    def test_toolError(self) -> None:
        """
        L{ToolError} becomes an C{isError} result with its message, unlogged.
        """

        def fail(a: Any, c: Any) -> None:
            raise ToolError("no such thing")

        result = self.successResultOf(self.call(tool("a", fail)))
        self.assertEqual(result, {"content": [{"type": "text", "text": "no such thing"}], "isError": True})
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_unexpectedException(self) -> None:
        """
        Any other exception is logged with its traceback and reported with
        a generic message.
        """

        async def fail(a: Any, c: Any) -> None:
            raise Boom("secret detail")

        result = self.successResultOf(self.call(tool("a", fail)))
        self.assertTrue(result["isError"])
        self.assertNotIn("secret", result["content"][0]["text"])
        self.assertEqual(len(self.flushLoggedErrors(Boom)), 1)

    def test_timeout(self) -> None:
        """
        A call running past its timeout is cancelled and reported.
        """
        cancelled = []
        pending: Deferred[Any] = Deferred(lambda d: cancelled.append(True))
        d = self.call(tool("a", lambda a, c: pending, timeout=5))
        self.clock.advance(4.9)
        self.assertNoResult(d)
        self.clock.advance(0.2)
        result = self.successResultOf(d)
        self.assertTrue(result["isError"])
        self.assertIn("timed out after 5 seconds", result["content"][0]["text"])
        self.assertEqual(cancelled, [True])

    def test_defaultTimeout(self) -> None:
        """
        Without a per-tool timeout, the registry default applies.
        """
        d = self.call(tool("a", lambda a, c: Deferred()), defaultTimeout=30)
        self.clock.advance(29)
        self.assertNoResult(d)
        self.clock.advance(1)
        self.assertTrue(self.successResultOf(d)["isError"])

    def test_cancel(self) -> None:
        """
        Cancelling the call cancels the tool's Deferred and fails with
        L{CancelledError}.
        """
        cancelled = []
        pending: Deferred[Any] = Deferred(lambda d: cancelled.append(True))
        d = self.call(tool("a", lambda a, c: pending))
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.assertEqual(cancelled, [True])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_cancelInsideGather(self) -> None:
        """
        A tool cancelled while awaiting C{gatherResults} (which fails with
        L{FirstError} around the L{CancelledError}) is cancelled, not an
        internal error; a L{ToolError} inside one is the tool's error.
        """
        from twisted.internet.defer import fail, gatherResults

        async def waits(arguments: Any, context: Any) -> str:
            await gatherResults([Deferred(), Deferred()], consumeErrors=True)
            return "never"

        async def refuses(arguments: Any, context: Any) -> str:
            await gatherResults([fail(ToolError("no such thing")), Deferred()], consumeErrors=True)
            return "never"

        d = self.call(tool("a", waits))
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.assertEqual(self.flushLoggedErrors(), [])
        result = self.successResultOf(self.call(tool("b", refuses)))
        self.assertEqual(result, {"content": [{"type": "text", "text": "no such thing"}], "isError": True})
