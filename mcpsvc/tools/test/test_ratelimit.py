"""
Tests for L{mcpsvc.tools.ratelimit} and the rate limit of tool calls in
L{mcpsvc.tools.registry.ToolRegistry}.
"""

from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from mcpsvc.config import ConfigError, RateLimit, loadConfig
from mcpsvc.metrics import Metrics
from mcpsvc.tools import buildToolRegistry
from mcpsvc.tools.interfaces import Tool, ToolContext
from mcpsvc.tools.ratelimit import TokenBuckets, retryAfter
from mcpsvc.tools.registry import ToolRegistry


def tool(name: str = "a", call: Any = lambda a, c: "ok", **kw: Any) -> Tool:
    kw.setdefault("inputSchema", {"type": "object"})
    return Tool(name=name, description=f"The {name} tool.", call=call, **kw)


class TokenBucketsTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.buckets = TokenBuckets(3, 60, self.clock)

    def test_burstThenRefuse(self) -> None:
        """
        A full bucket allows C{count} calls at once; the next is refused
        with the seconds until a token is back.
        """
        self.assertEqual([self.buckets.take("k") for _ in range(3)], [None, None, None])
        self.assertAlmostEqual(self.buckets.take("k"), 20.0)

    def test_refill(self) -> None:
        """
        Tokens come back at C{count / seconds} per second, up to C{count}.
        """
        for _ in range(3):
            self.buckets.take("k")
        self.clock.advance(19.9)
        self.assertIsNotNone(self.buckets.take("k"))
        self.clock.advance(0.1)
        self.assertIsNone(self.buckets.take("k"))
        self.assertIsNotNone(self.buckets.take("k"))
        # A long pause refills to the burst size, not beyond.
        self.clock.advance(3600)
        self.assertEqual([self.buckets.take("k") for _ in range(3)], [None, None, None])
        self.assertIsNotNone(self.buckets.take("k"))

    def test_refusedCallsTakeNothing(self) -> None:
        """
        Refused calls do not push the next token further away.
        """
        for _ in range(3):
            self.buckets.take("k")
        for _ in range(10):
            self.assertIsNotNone(self.buckets.take("k"))
            self.clock.advance(1)
        self.clock.advance(10)
        self.assertIsNone(self.buckets.take("k"))

    def test_keysIndependent(self) -> None:
        """
        Each key has its own bucket.
        """
        for _ in range(3):
            self.buckets.take(("alice", "c1"))
        self.assertIsNotNone(self.buckets.take(("alice", "c1")))
        self.assertIsNone(self.buckets.take(("alice", "c2")))
        self.assertIsNone(self.buckets.take(("bob", "c1")))

    def test_sweep(self) -> None:
        """
        Buckets that refilled completely are dropped, at most once per
        window, so memory is bounded by the recently active keys.
        """
        for n in range(100):
            self.buckets.take(n)
        self.assertEqual(len(self.buckets), 100)
        self.clock.advance(30)
        self.buckets.take("fresh")
        self.assertEqual(len(self.buckets), 101)
        self.clock.advance(30)
        self.buckets.take("fresh")
        self.assertEqual(len(self.buckets), 1)

    def test_invalid(self) -> None:
        """
        A limit needs a positive count and window.
        """
        self.assertRaises(ValueError, TokenBuckets, 0, 60, self.clock)
        self.assertRaises(ValueError, TokenBuckets, 1, 0, self.clock)

    def test_retryAfter(self) -> None:
        """
        Retry hints are whole seconds, at least one.
        """
        self.assertEqual([retryAfter(s) for s in (0.01, 1.0, 1.2, 20.0)], [1, 1, 2, 20])


class RegistryRateLimitTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.calls = []
        self.metrics = Metrics()
        self.tool = tool("a", lambda a, c: self.calls.append(a) or "ok")
        self.registry = ToolRegistry(
            [self.tool], clock=self.clock, rateLimit=RateLimit(count=2, seconds=10),
            metrics=self.metrics,
        )

    def call(self, subject: str = "alice", clientID: str = "c1") -> Any:
        context = ToolContext(clock=self.clock, subject=subject, clientID=clientID)
        return self.successResultOf(self.registry.callTool(self.tool, {}, context))

    def count(self, outcome: str) -> float:
        value = self.metrics.registry.get_sample_value(
            "mcpsvc_tool_calls_total", {"tool": "a", "outcome": outcome}
        )
        return value or 0.0

    def test_overTheLimit(self) -> None:
        """
        Past the limit, a call is an C{isError} result saying so, with a
        retry hint; the tool does not run; the refusal is counted.
        """
        self.assertEqual(self.call(), {"content": [{"type": "text", "text": "ok"}]})
        self.call()
        result = self.call()
        self.assertTrue(result["isError"])
        self.assertEqual(
            result["content"][0]["text"],
            "Rate limit exceeded: at most 2 tool calls per 10 seconds. Try again in 5 seconds.",
        )
        self.assertEqual(result["_meta"], {"io.mcpsvc/retryAfter": 5})
        self.assertEqual(len(self.calls), 2)
        self.assertEqual(self.count("rate_limited"), 1)
        self.assertEqual(self.count("ok"), 2)
        self.clock.advance(5)
        self.assertNotIn("isError", self.call())
        self.assertEqual(len(self.calls), 3)

    def test_perSubjectAndClient(self) -> None:
        """
        The bucket is per subject and client.
        """
        self.call()
        self.call()
        self.assertTrue(self.call()["isError"])
        self.assertNotIn("isError", self.call(subject="bob"))
        self.assertNotIn("isError", self.call(clientID="c2"))

    def test_invalidArgumentsCount(self) -> None:
        """
        Calls with invalid arguments take a token too (they are checked
        first): validation is work a client could otherwise repeat freely.
        """
        strict = tool("a", inputSchema={"type": "object", "required": ["x"]})
        registry = ToolRegistry([strict], clock=self.clock, rateLimit=RateLimit(count=1, seconds=10))
        context = ToolContext(clock=self.clock, subject="s", clientID="c")
        first = self.successResultOf(registry.callTool(strict, {}, context))
        self.assertIn("Invalid arguments", first["content"][0]["text"])
        second = self.successResultOf(registry.callTool(strict, {"x": 1}, context))
        self.assertIn("Rate limit exceeded", second["content"][0]["text"])

    def test_noLimit(self) -> None:
        """
        Without a rate limit, calls are not limited.
        """
        registry = ToolRegistry([self.tool], clock=self.clock)
        self.assertIsNone(registry.rateLimit)
        context = ToolContext(clock=self.clock, subject="s", clientID="c")
        for _ in range(1000):
            self.assertNotIn("isError", self.successResultOf(registry.callTool(self.tool, {}, context)))

    def test_pendingCallsCount(self) -> None:
        """
        Calls still running hold their tokens: a client cannot get around
        the limit with slow calls.
        """
        slow = tool("a", lambda a, c: Deferred())
        registry = ToolRegistry([slow], clock=self.clock, rateLimit=RateLimit(count=2, seconds=10))
        context = ToolContext(clock=self.clock, subject="s", clientID="c")
        first = registry.callTool(slow, {}, context)
        registry.callTool(slow, {}, context)
        self.assertTrue(self.successResultOf(registry.callTool(slow, {}, context))["isError"])
        first.cancel()
        self.failureResultOf(first)


class RateLimitConfigTests(SynchronousTestCase):
    SECRET = {"JWT_SECRET": "s" * 32}

    def test_default(self) -> None:
        """
        By default a principal may make 600 tool calls a minute per
        instance, and the built registry enforces it.
        """
        config = loadConfig(self.SECRET)
        self.assertEqual(config.toolRateLimit, RateLimit(count=600, seconds=60))
        registry = buildToolRegistry(config, clock=Clock())
        assert registry.rateLimit is not None
        self.assertEqual((registry.rateLimit.count, registry.rateLimit.seconds), (600, 60))

    def test_setAndOff(self) -> None:
        """
        C{TOOL_RATE_LIMIT} is C{COUNT/SECONDS}, or C{off}.
        """
        config = loadConfig(dict(self.SECRET, TOOL_RATE_LIMIT="10/1.5"))
        self.assertEqual(config.toolRateLimit, RateLimit(count=10, seconds=1.5))
        config = loadConfig(dict(self.SECRET, TOOL_RATE_LIMIT="off"))
        self.assertIsNone(config.toolRateLimit)
        self.assertIsNone(buildToolRegistry(config, clock=Clock()).rateLimit)

    def test_invalid(self) -> None:
        """
        Anything else is a configuration error naming the variable.
        """
        for value in ("lots", "0/60", "10/0", "10"):
            with self.assertRaises(ConfigError) as cm:
                loadConfig(dict(self.SECRET, TOOL_RATE_LIMIT=value))
            self.assertIn("TOOL_RATE_LIMIT", cm.exception.errors[0])
