"""
Tests for L{mcpsvc.logs}: the observers and their per-turn line buffer.
"""

from __future__ import annotations

import io
import json
from typing import Any, Callable, List, Tuple

from twisted.internet.task import Clock
from twisted.logger import LogLevel, formatEventAsClassicLogText, textFileLogObserver
from twisted.trial.unittest import SynchronousTestCase

from mcpsvc.logs import LineBuffer, jsonObserver, textObserver


class CountingStream(io.StringIO):
    """
    A text stream that counts its writes and flushes.
    """

    def __init__(self) -> None:
        super().__init__()
        self.writes = 0
        self.flushes = 0

    def write(self, text: str) -> int:
        self.writes += 1
        return super().write(text)

    def flush(self) -> None:
        self.flushes += 1


class RunningReactor(Clock):
    """
    A L{Clock} standing in for a running reactor, with shutdown triggers.
    """

    running = True

    def __init__(self) -> None:
        super().__init__()
        self.triggers: List[Tuple[str, str, Callable[[], Any]]] = []

    def addSystemEventTrigger(self, phase: str, event: str, f: Callable[[], Any]) -> None:
        self.triggers.append((phase, event, f))


def event(level: LogLevel = LogLevel.info, **fields: Any) -> dict:
    base = {"log_level": level, "log_namespace": "test", "log_time": 1700000000.25,
            "log_format": "hello {who}", "who": "world", "log_source": None}
    base.update(fields)
    return base


class LineBufferTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.stream = CountingStream()
        self.reactor = RunningReactor()
        self.buffer = LineBuffer(self.stream, lambda: self.reactor)

    def test_oneWritePerTurn(self) -> None:
        """
        Lines written during one reactor turn go out together, in order,
        in one write and one flush when the turn ends.
        """
        for i in range(5):
            self.buffer.write(f"line {i}\n")
        self.assertEqual(self.stream.getvalue(), "")
        self.reactor.advance(0)
        self.assertEqual(self.stream.getvalue(), "".join(f"line {i}\n" for i in range(5)))
        self.assertEqual((self.stream.writes, self.stream.flushes), (1, 1))
        self.buffer.write("next\n")
        self.reactor.advance(0)
        self.assertEqual(self.stream.getvalue().splitlines()[-1], "next")
        self.assertEqual(self.stream.writes, 2)

    def test_urgentFlushesEverything(self) -> None:
        """
        An urgent line goes out at once, after the lines queued before it.
        """
        self.buffer.write("a\n")
        self.buffer.write("b\n", urgent=True)
        self.assertEqual(self.stream.getvalue(), "a\nb\n")
        self.reactor.advance(0)
        self.assertEqual(self.stream.getvalue(), "a\nb\n")

    def test_noReactor(self) -> None:
        """
        Without a running reactor every line is written at once.
        """
        stream = CountingStream()
        buffer = LineBuffer(stream, lambda: None)
        buffer.write("a\n")
        self.assertEqual(stream.getvalue(), "a\n")
        self.assertEqual(stream.flushes, 1)

    def test_flushedAfterShutdown(self) -> None:
        """
        The buffer registers one after-shutdown flush with the reactor, so
        lines of the last turn are not lost when the reactor stops.
        """
        self.buffer.write("a\n")
        self.buffer.write("b\n")
        self.reactor.advance(0)
        self.buffer.write("c\n")
        self.assertEqual([(p, e) for p, e, _ in self.reactor.triggers], [("after", "shutdown")])
        self.reactor.triggers[0][2]()
        self.assertEqual(self.stream.getvalue(), "a\nb\nc\n")


class JSONObserverTests(SynchronousTestCase):
    def test_recordsAndLevels(self) -> None:
        """
        One JSON object per line; below the level nothing; a warning is
        written at once.
        """
        stream = io.StringIO()
        reactor = RunningReactor()
        observer = jsonObserver(stream, level="info", reactor=lambda: reactor)
        observer(event(LogLevel.debug))
        observer(event(LogLevel.info, requestID="r1"))
        self.assertEqual(stream.getvalue(), "")
        observer(event(LogLevel.warn))
        records = [json.loads(line) for line in stream.getvalue().splitlines()]
        self.assertEqual([r["level"] for r in records], ["info", "warn"])
        self.assertEqual(records[0]["text"], "hello world")
        self.assertEqual(records[0]["requestID"], "r1")
        self.assertEqual(records[0]["time"], "2023-11-14T22:13:20.250Z")


class TextObserverTests(SynchronousTestCase):
    def test_sameLinesAsTwistd(self) -> None:
        """
        The text observer writes exactly what twistd's own text observer
        writes, filtered by level.
        """
        ours, theirs = io.StringIO(), io.StringIO()
        observer = textObserver(ours, level="info", reactor=lambda: None)
        reference = textFileLogObserver(theirs)
        from twisted.python.failure import Failure

        try:
            1 / 0
        except ZeroDivisionError:
            failure = Failure()
        for e in (event(LogLevel.info), event(LogLevel.error, log_format="bad {who}"),
                  event(log_format="two\nlines {who!r} {n:05d} {d[k]}", n=7, d={"k": "v"}),
                  event(log_system="sys"),
                  event(log_format="{missing}"), event(log_format=None), event(log_time=None),
                  event(LogLevel.critical, log_failure=failure, log_format="boom"),
                  event(log_format="call {f()}", f=lambda: "x")):
            observer(e)
            reference(e)
        self.assertEqual(ours.getvalue(), theirs.getvalue())
        self.assertIn("hello world", ours.getvalue())
        observer(event(LogLevel.debug))
        self.assertEqual(ours.getvalue(), theirs.getvalue())
        self.assertEqual(formatEventAsClassicLogText(event()).count("\n"), 1)


class BoundedTests(SynchronousTestCase):
    """
    Whatever reaches a log event, no line is large.
    """

    def test_jsonFields(self) -> None:
        stream = io.StringIO()
        observer = jsonObserver(stream, level="info", reactor=lambda: None)
        observer(event(LogLevel.warn, who="w" * 1_000_000, summary={"client_name": "n" * 500_000,
                                                                   "uris": ["u" * 10_000] * 500}))
        line = stream.getvalue()
        self.assertLess(len(line), 20_000)
        record = json.loads(line)
        self.assertIn("1000000 chars", record["who"])
        self.assertIn("1000006 chars", record["text"])

    def test_textLines(self) -> None:
        stream = io.StringIO()
        observer = textObserver(stream, level="info", reactor=lambda: None)
        observer(event(LogLevel.warn, who="w" * 1_000_000))
        self.assertLess(len(stream.getvalue()), 9_000)
        self.assertTrue(stream.getvalue().endswith("\n"))

    def test_tracebackKept(self) -> None:
        from twisted.python.failure import Failure

        try:
            raise ValueError("x" * 20_000)
        except ValueError:
            failure = Failure()
        stream = io.StringIO()
        observer = textObserver(stream, level="info", reactor=lambda: None)
        observer(event(LogLevel.critical, log_failure=failure))
        self.assertIn("x" * 20_000, stream.getvalue())
