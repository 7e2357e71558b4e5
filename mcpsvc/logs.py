# -*- test-case-name: mcpsvc.test.test_logs -*-
"""
Log observers.

C{LOG_FORMAT=json} (or C{twistd --logger=mcpsvc.logs.jsonObserver}) writes
one JSON object per line to standard output:
C{{"time", "level", "namespace", "text", ...fields}}, filtered by
C{LOG_LEVEL}. Fields are the event's own keyword fields (C{requestID},
C{method}, C{status}, C{durationMs}, ...); Twisted's private C{log_*} keys
are dropped, and a failure's traceback is carried as C{traceback}.

C{LOG_FORMAT=text} (the default) with the log on standard output uses
L{textObserver}: twistd's own line format, filtered by C{LOG_LEVEL}.

Both write through a L{LineBuffer}: while the reactor runs, the lines of
one reactor turn go out in one write and one flush at the end of the turn
(the request log is one line per request, and a write plus a flush per
line cost a few per cent of the reactor under load). A warning or worse
flushes at once, with everything before it, and so does a line written
while the reactor is not running (start-up, shutdown); the buffer is also
flushed after the reactor shuts down. What a C{SIGKILL} can lose is the
info lines of the turn in progress.
"""

from __future__ import annotations

import atexit
import json
import os
import sys
from datetime import datetime, timezone
from typing import IO, Any, Dict, List, Optional

from twisted.logger import (
    FilteringLogObserver,
    ILogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    formatEvent,
    formatEventAsClassicLogText,
    formatTime,
)
from zope.interface import provider

__all__ = ["jsonObserver", "textObserver", "LineBuffer", "eventAsRecord", "levelFromName"]

_LEVELS = {
    "debug": LogLevel.debug,
    "info": LogLevel.info,
    "warn": LogLevel.warn,
    "warning": LogLevel.warn,
    "error": LogLevel.error,
    "critical": LogLevel.critical,
}


#: The level chosen by C{twistd mcpsvc} from C{.env}, options and the
#: environment, when it selects L{jsonObserver} (C{None}: read C{LOG_LEVEL}).
configuredLevel: Optional[str] = None


def levelFromName(name: Optional[str]) -> LogLevel:
    return _LEVELS.get((name or "info").strip().lower(), LogLevel.info)


def infoEnabled() -> bool:
    """
    Whether info events (the request log) are kept at the configured level
    (C{configuredLevel}, else C{LOG_LEVEL}, else info).
    """
    level = levelFromName(configuredLevel or os.environ.get("LOG_LEVEL"))
    return level <= LogLevel.info


_lastSecond: list = [None, ""]


def _isoTime(when: float) -> str:
    """
    C{when} as C{2026-01-02T03:04:05.678Z} (the formatted second is
    cached: request events come many per second).
    """
    second = int(when)
    if _lastSecond[0] != second:
        _lastSecond[0] = second
        _lastSecond[1] = datetime.fromtimestamp(second, tz=timezone.utc).strftime(
            "%Y-%m-%dT%H:%M:%S"
        )
    millis = int((when - second) * 1000)
    return f"{_lastSecond[1]}.{millis:03d}Z"


def _jsonable(value: Any) -> Any:
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return repr(value)


def _text(event: Dict[str, Any]) -> str:
    """
    L{formatEvent}, with a fast path: a format without Twisted's call
    syntax (C{{name()}}) is C{str.format_map} over the event, which gives
    the same text; anything else (or any error) takes L{formatEvent}.
    """
    fmt = event.get("log_format")
    if type(fmt) is str and "()" not in fmt:
        try:
            return fmt.format_map(event)
        except Exception:
            pass
    return formatEvent(event)


#: Longest string field, and longest text, written: whatever reaches a log
#: event (a client name, a refused body's summary), no line grows past a
#: few kilobytes per field.
FIELD_LIMIT = 2000
TEXT_LIMIT = 4000
#: Longest line written in the text format (a failure's traceback is kept).
LINE_LIMIT = 8000


def _cut(value: str, limit: int = FIELD_LIMIT) -> str:
    return value[:limit] + f"...({len(value)} chars)"


#: Inside a structured field: longest string, most items, deepest level.
ITEM_LIMIT = 200
ITEMS = 20
DEPTH = 4


def _bounded(value: Any, depth: int = 0) -> Any:
    """
    A JSON-able value cut to a few kilobytes: strings inside it to
    L{ITEM_LIMIT} characters, containers to L{ITEMS} items and L{DEPTH}
    levels.
    """
    if type(value) is str:
        return _cut(value, ITEM_LIMIT) if len(value) > ITEM_LIMIT else value
    if isinstance(value, (list, dict)) and depth >= DEPTH:
        return "..."
    if isinstance(value, list):
        items = [_bounded(v, depth + 1) for v in value[:ITEMS]]
        if len(value) > ITEMS:
            items.append(f"...({len(value)} items)")
        return items
    if isinstance(value, dict):
        out = {k[:ITEM_LIMIT]: _bounded(v, depth + 1) for k, v in list(value.items())[:ITEMS]}
        if len(value) > ITEMS:
            out["..."] = f"({len(value)} entries)"
        return out
    return value


_SKIPPED = frozenset(("format", "message", "isError", "system", "time"))
_PLAIN = frozenset((str, int, float, bool, type(None)))


def eventAsRecord(event: Dict[str, Any]) -> Dict[str, Any]:
    """
    Turn a Twisted log event into the flat record we write.
    """
    level = event.get("log_level")
    record: Dict[str, Any] = {
        "time": _isoTime(event.get("log_time", 0)),
        "level": level.name if level is not None else "info",
        "namespace": event.get("log_namespace", ""),
        "text": _text(event),
    }
    for key, value in event.items():
        if key.startswith("log_") or key in _SKIPPED:
            continue
        if key in record:
            key = "field_" + key
        if type(value) in _PLAIN:
            if type(value) is str and len(value) > FIELD_LIMIT:
                value = _cut(value)
            record[key] = value
        else:
            record[key] = _bounded(_jsonable(value))
    if len(record["text"]) > TEXT_LIMIT:
        record["text"] = _cut(record["text"], TEXT_LIMIT)
    failure = event.get("log_failure")
    if failure is not None:
        record["traceback"] = failure.getTraceback()
    return record


def _runningReactor() -> Any:
    """
    The global reactor if it is installed and running, else C{None}
    (never installs one).
    """
    reactor = sys.modules.get("twisted.internet.reactor")
    if reactor is not None and getattr(reactor, "running", False):
        return reactor
    return None


class LineBuffer:
    """
    Lines for a stream, written and flushed once per reactor turn.

    @param stream: where the lines go.
    @param reactor: a callable returning the running reactor (an object
        with C{callLater}, and optionally C{addSystemEventTrigger}) or
        C{None} when none runs; the default finds the global reactor
        without installing one.
    """

    def __init__(self, stream: IO[str], reactor: Any = _runningReactor) -> None:
        self.stream = stream
        self._reactor = reactor
        self._pending: List[str] = []
        self._scheduled = False
        self._triggered: Any = None
        atexit.register(self.flush)

    def write(self, line: str, urgent: bool = False) -> None:
        """
        Queue C{line} (with its newline); with C{urgent}, or when no
        reactor runs, write everything queued now.
        """
        self._pending.append(line)
        if urgent:
            self.flush()
            return
        if self._scheduled:
            return
        reactor = self._reactor()
        if reactor is None:
            self.flush()
            return
        self._scheduled = True
        if self._triggered is not reactor:
            self._triggered = reactor
            add = getattr(reactor, "addSystemEventTrigger", None)
            if add is not None:
                add("after", "shutdown", self.flush)
        reactor.callLater(0, self.flush)

    def flush(self) -> None:
        self._scheduled = False
        if not self._pending:
            return
        text = "".join(self._pending)
        self._pending.clear()
        try:
            self.stream.write(text)
            self.stream.flush()
        except (OSError, ValueError):  # pragma: no cover - closed or broken stream
            pass


def _minimum(level: Optional[str]) -> LogLevel:
    if level is None:
        level = configuredLevel or os.environ.get("LOG_LEVEL")
    return levelFromName(level)


def jsonObserver(
    stream: Optional[IO[str]] = None, level: Optional[str] = None, reactor: Any = _runningReactor
) -> ILogObserver:
    """
    Return an observer writing one JSON object per line to C{stream}
    (default: standard output), keeping events at C{level} (default: the
    C{LOG_LEVEL} environment variable, else info) and above, through a
    L{LineBuffer}.
    """
    out = LineBuffer(stream if stream is not None else sys.stdout, reactor)

    @provider(ILogObserver)
    def write(event: Dict[str, Any]) -> None:
        try:
            line = json.dumps(eventAsRecord(event), ensure_ascii=False)
        except Exception:  # pragma: no cover - never lose the event entirely
            line = json.dumps({"level": "error", "text": "unserialisable log event"})
        level = event.get("log_level")
        out.write(line + "\n", urgent=level is not None and level >= LogLevel.warn)

    return FilteringLogObserver(write, [LogLevelFilterPredicate(defaultLogLevel=_minimum(level))])


_lastLocalSecond: list = [None, ""]


def _localTime(when: Optional[float]) -> str:
    """
    L{twisted.logger.formatTime} (local time, RFC 3339 to the second),
    cached per second: the text has no fraction of a second, and a time
    zone offset changes only on a whole second.
    """
    if when is None:
        return "-"
    second = int(when // 1)
    if _lastLocalSecond[0] != second:
        _lastLocalSecond[0] = second
        _lastLocalSecond[1] = formatTime(when)
    return _lastLocalSecond[1]


def classicLine(event: Dict[str, Any]) -> Optional[str]:
    """
    L{formatEventAsClassicLogText}, with the fast paths of L{_text} and
    L{_localTime}; an event with a failure takes Twisted's own formatter
    (for its traceback).
    """
    if "log_failure" in event:
        return formatEventAsClassicLogText(event, formatTime=_localTime)
    try:
        text = _text(event)
    except Exception:
        return formatEventAsClassicLogText(event, formatTime=_localTime)
    if not text:
        return None
    system = event.get("log_system")
    if system is None:
        level = event.get("log_level")
        system = f"{event.get('log_namespace', '-')}#{level.name if level is not None else '-'}"
    else:
        try:
            system = str(system)
        except Exception:
            system = "UNFORMATTABLE"
    line = f"{_localTime(event.get('log_time'))} [{system}] {text}"
    if "\n" in line:
        line = line.replace("\n", "\n\t")
    return line + "\n"


def textObserver(
    stream: Optional[IO[str]] = None, level: Optional[str] = None, reactor: Any = _runningReactor
) -> ILogObserver:
    """
    Return an observer writing twistd's classic text lines (the format of
    L{twisted.logger.textFileLogObserver}) to C{stream} (default: standard
    output), filtered like L{jsonObserver}, through a L{LineBuffer}.
    """
    out = LineBuffer(stream if stream is not None else sys.stdout, reactor)

    @provider(ILogObserver)
    def write(event: Dict[str, Any]) -> None:
        text = classicLine(event)
        if text and len(text) > LINE_LIMIT and event.get("log_failure") is None:
            # Whatever reached the event (a refused body's summary), no
            # line grows past a few kilobytes; a traceback is kept whole.
            text = _cut(text.rstrip("\n"), LINE_LIMIT) + "\n"
        if text:
            level = event.get("log_level")
            out.write(text, urgent=level is not None and level >= LogLevel.warn)

    return FilteringLogObserver(write, [LogLevelFilterPredicate(defaultLogLevel=_minimum(level))])
