"""
Tests for L{mcpsvc.tools.core}.
"""

from typing import Any, Dict

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from mcpsvc.config import Config
from mcpsvc.tools.core import CalculationError, coreTools, evaluate
from mcpsvc.tools.interfaces import ToolContext, ToolPackContext
from mcpsvc.tools.registry import ToolRegistry


class EvaluateTests(SynchronousTestCase):
    def test_arithmetic(self) -> None:
        """
        Arithmetic, precedence, functions and constants work.
        """
        cases = {
            "1 + 2 * 3": 7,
            "(1 + 2) * 3": 9,
            "2 ** 10": 1024,
            "7 // 2": 3,
            "7 % 4": 3,
            "-3 + +4": 1,
            "10 / 4": 2.5,
            "sqrt(16)": 4.0,
            "max(1, 5, 3)": 5,
            "round(2.567, 2)": 2.57,
            "floor(pi)": 3,
            "abs(-2)": 2,
        }
        for expression, expected in cases.items():
            self.assertEqual(evaluate(expression), expected, expression)

    def test_refused(self) -> None:
        """
        Anything that is not arithmetic is refused; nothing is evaluated.
        """
        for expression in (
            "__import__('os').system('true')",
            "().__class__",
            "open('x')",
            "[1, 2]",
            "'a' * 3",
            "x",
            "lambda: 1",
            "1 if 1 else 2",
            "True + 1",
            "1j",
            "abs(x=1)",
            "",
            "1 +",
        ):
            self.assertRaises(CalculationError, evaluate, expression)

    def test_limits(self) -> None:
        """
        Exponents, result sizes, length and complexity are bounded.
        """
        for expression in (
            "9 ** 9 ** 9",
            "2 ** 100000",
            "10 ** 5000",
            "(2 ** 4000) * (2 ** 4000)",
            "10.0 ** 400",
            "1e308 * 10",
            "1" + "+1" * 600,
            "(" * 300 + "1" + ")" * 300,
            "1 / 0",
            "1 % 0",
            "sqrt(-1)",
            "(-8) ** 0.5",
        ):
            self.assertRaises(CalculationError, evaluate, expression)
        self.assertEqual(evaluate("2 ** 4000"), 2**4000)


class CoreToolsTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        pack = ToolPackContext(config=Config(), clock=self.clock, runInThread=lambda f, *a: f(*a))
        self.registry = ToolRegistry(coreTools(pack), clock=self.clock)
        self.context = ToolContext(clock=self.clock, subject="s", clientID="c")

    def call(self, name: str, arguments: Dict[str, Any]) -> Dict[str, Any]:
        tool = self.registry.get(name)
        assert tool is not None
        return self.successResultOf(self.registry.callTool(tool, arguments, self.context))

    def test_names(self) -> None:
        """
        The core pack has its three tools.
        """
        self.assertEqual(self.registry.names, ["calculate", "echo_message", "get_timestamp"])

    def test_echo(self) -> None:
        """
        C{echo_message} returns its message.
        """
        self.assertEqual(self.call("echo_message", {"message": "hi"})["content"][0]["text"], "hi")
        self.assertTrue(self.call("echo_message", {})["isError"])

    def test_calculate(self) -> None:
        """
        C{calculate} returns structured content; bad input is C{isError}.
        """
        result = self.call("calculate", {"expression": "6 * 7"})
        self.assertEqual(result["structuredContent"]["result"], 42)
        bad = self.call("calculate", {"expression": "__import__('os')"})
        self.assertTrue(bad["isError"])
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_calculateFloatOverflow(self) -> None:
        """
        An integer too large for a float meeting a float (C{2**4000*1.5})
        is an explained tool error, not an internal error with a logged
        traceback.
        """
        for expression in ("2**4000*1.5", "2**4000/3", "1.0-2**4000", "sqrt(2**4000)", "round(2**4000*1.0)"):
            result = self.call("calculate", {"expression": expression})
            self.assertTrue(result["isError"], expression)
            self.assertIn("too large for a floating-point number", result["content"][0]["text"])
        self.assertFalse(self.call("calculate", {"expression": "2**4000//3"}).get("isError"))
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_timestampUsesClockAndZone(self) -> None:
        """
        C{get_timestamp} reads the injected clock and honours the zone.
        """
        utc = self.call("get_timestamp", {})["structuredContent"]
        self.assertEqual(utc["unix"], 1_700_000_000)
        self.assertEqual(utc["iso"], "2023-11-14T22:13:20+00:00")
        paris = self.call("get_timestamp", {"timezone": "Europe/Paris"})["structuredContent"]
        self.assertEqual(paris["iso"], "2023-11-14T23:13:20+01:00")
        self.assertEqual(paris["utcOffsetSeconds"], 3600)

    def test_timestampBadZone(self) -> None:
        """
        Unknown or path-like zones are C{isError} results.
        """
        for zone in ("Mars/Olympus", "../../etc/passwd", "/etc/localtime"):
            result = self.call("get_timestamp", {"timezone": zone})
            self.assertTrue(result["isError"], zone)
        self.assertEqual(self.flushLoggedErrors(), [])
