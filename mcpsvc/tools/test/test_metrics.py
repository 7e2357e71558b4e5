"""
Tests for the tool-call metric fed by L{mcpsvc.tools.registry.ToolRegistry}.
"""

from typing import Any

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from mcpsvc.config import Config
from mcpsvc.metrics import Metrics
from mcpsvc.tools import buildToolRegistry
from mcpsvc.tools.interfaces import Tool, ToolContext, ToolError, ToolResult
from mcpsvc.tools.registry import OUTCOMES, UNKNOWN_TOOL_LABEL, ToolRegistry


class Boom(Exception):
    pass


def tool(name: str, call: Any, **kw: Any) -> Tool:
    kw.setdefault("inputSchema", {"type": "object"})
    return Tool(name=name, description=f"The {name} tool.", call=call, **kw)


def fail(exception: Exception) -> Any:
    def call(a: Any, c: Any) -> None:
        raise exception

    return call


class ToolCallMetricTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.metrics = Metrics()
        self.context = ToolContext(clock=self.clock, subject="s", clientID="c")

    def registry(self, *tools: Tool, **kw: Any) -> ToolRegistry:
        return ToolRegistry(list(tools), clock=self.clock, metrics=self.metrics, **kw)

    def value(self, tool: str, outcome: str) -> float:
        return self.metrics.registry.get_sample_value(
            "mcpsvc_tool_calls_total", {"tool": tool, "outcome": outcome}
        ) or 0.0

    def outcomes(self) -> dict:
        found = {}
        for metric in self.metrics.registry.collect():
            for sample in metric.samples:
                if sample.name == "mcpsvc_tool_calls_total" and sample.value:
                    found[(sample.labels["tool"], sample.labels["outcome"])] = sample.value
        return found

    def invoke(self, registry: ToolRegistry, t: Tool, arguments: Any = None) -> Any:
        return registry.callTool(t, arguments if arguments is not None else {}, self.context)

    def test_outcomes(self) -> None:
        """
        Every finished call is counted once, by tool and outcome.
        """
        ok = tool("ok", lambda a, c: "fine")
        structured = tool(
            "structured", lambda a, c: {"x": 1},
            outputSchema={"type": "object", "required": ["x"]},
        )
        badOutput = tool(
            "bad_output", lambda a, c: {"y": 1}, outputSchema={"type": "object", "required": ["x"]}
        )
        toolError = tool("tool_error", fail(ToolError("nope")))
        crash = tool("crash", fail(Boom()))
        isError = tool("is_error", lambda a, c: ToolResult(content=[], isError=True))
        strict = tool("strict", lambda a, c: "", inputSchema={"type": "object", "required": ["x"]})
        slow = tool("slow", lambda a, c: Deferred(), timeout=1)
        registry = self.registry(ok, structured, badOutput, toolError, crash, isError, strict, slow)
        for t in (ok, ok, structured, badOutput, toolError, crash, isError, strict):
            self.successResultOf(self.invoke(registry, t))
        timedOut = self.invoke(registry, slow)
        self.clock.advance(1)
        self.assertTrue(self.successResultOf(timedOut)["isError"])
        cancelled = self.invoke(registry, slow)
        cancelled.cancel()
        self.failureResultOf(cancelled, CancelledError)
        self.flushLoggedErrors(Boom)
        self.assertEqual(
            self.outcomes(),
            {
                ("ok", "ok"): 2,
                ("structured", "ok"): 1,
                ("bad_output", "error"): 1,
                ("tool_error", "error"): 1,
                ("crash", "error"): 1,
                ("is_error", "error"): 1,
                ("strict", "invalid_arguments"): 1,
                ("slow", "timeout"): 1,
                ("slow", "cancelled"): 1,
            },
        )
        for _, outcome in self.outcomes():
            self.assertIn(outcome, OUTCOMES)

    def test_unknownTool(self) -> None:
        """
        A C{tools/call} lookup of a name no tool has is counted under one
        fixed label, never the requested name.
        """
        registry = self.registry(tool("ok", lambda a, c: ""))
        self.assertIsNone(registry.get("no-such-tool"))
        self.assertIsNone(registry.get("another"))
        self.assertIsNotNone(registry.get("ok"))
        self.assertEqual(self.outcomes(), {(UNKNOWN_TOOL_LABEL, "unknown_tool"): 2})

    def test_noMetrics(self) -> None:
        """
        Without metrics, calls work as before.
        """
        t = tool("ok", lambda a, c: "fine")
        registry = ToolRegistry([t], clock=self.clock)
        self.assertIsNone(registry.metrics)
        self.assertEqual(self.successResultOf(self.invoke(registry, t)), {"content": [{"type": "text", "text": "fine"}]})
        self.assertIsNone(registry.get("nope"))

    def test_brokenMetricsDoNotBreakCalls(self) -> None:
        """
        A failure recording the metric is logged; the call's result stands.
        """

        class Broken:
            def toolCall(self, tool: str, outcome: str) -> None:
                raise Boom()

        t = tool("ok", lambda a, c: "fine")
        registry = ToolRegistry([t], clock=self.clock, metrics=Broken())
        self.assertEqual(self.successResultOf(self.invoke(registry, t)), {"content": [{"type": "text", "text": "fine"}]})
        self.assertEqual(len(self.flushLoggedErrors(Boom)), 1)

    def test_built(self) -> None:
        """
        L{buildToolRegistry} passes C{metrics} to the registry.
        """
        registry = buildToolRegistry(Config(), clock=self.clock, metrics=self.metrics)
        self.assertIs(registry.metrics, self.metrics)
        echo = registry.get("echo_message")
        assert echo is not None
        self.successResultOf(self.invoke(registry, echo, {"message": "hi"}))
        self.assertEqual(self.value("echo_message", "ok"), 1)
