# -*- test-case-name: mcpsvc.test.test_logs -*-
"""
Log observers.

C{LOG_FORMAT=json} (or C{twistd --logger=mcpsvc.logs.jsonObserver}) writes
one JSON object per line to standard output:
C{{"time", "level", "namespace", "text", ...fields}}, filtered by
C{LOG_LEVEL}. Fields are the event's own keyword fields (C{requestID},
C{method}, C{status}, C{durationMs}, ...); Twisted's private C{log_*} keys
are dropped, and a failure's traceback is carried as C{traceback}.
"""

from __future__ import annotations

import json
import os
import sys
from datetime import datetime, timezone
from typing import IO, Any, Dict, Optional

from twisted.logger import (
    FilteringLogObserver,
    ILogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    formatEvent,
)
from zope.interface import provider

__all__ = ["jsonObserver", "eventAsRecord", "levelFromName"]

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


def _jsonable(value: Any) -> Any:
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return repr(value)


def eventAsRecord(event: Dict[str, Any]) -> Dict[str, Any]:
    """
    Turn a Twisted log event into the flat record we write.
    """
    level = event.get("log_level")
    record: Dict[str, Any] = {
        "time": datetime.fromtimestamp(event.get("log_time", 0), tz=timezone.utc)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z"),
        "level": level.name if level is not None else "info",
        "namespace": event.get("log_namespace", ""),
        "text": formatEvent(event),
    }
    for key, value in event.items():
        if key.startswith("log_") or key in ("format", "message", "isError", "system", "time"):
            continue
        if key in record:
            key = "field_" + key
        record[key] = _jsonable(value)
    failure = event.get("log_failure")
    if failure is not None:
        record["traceback"] = failure.getTraceback()
    return record


def jsonObserver(
    stream: Optional[IO[str]] = None, level: Optional[str] = None
) -> ILogObserver:
    """
    Return an observer writing one JSON object per line to C{stream}
    (default: standard output), keeping events at C{level} (default: the
    C{LOG_LEVEL} environment variable, else info) and above.
    """
    out = stream if stream is not None else sys.stdout
    if level is None:
        level = configuredLevel or os.environ.get("LOG_LEVEL")
    minimum = levelFromName(level)

    @provider(ILogObserver)
    def write(event: Dict[str, Any]) -> None:
        try:
            line = json.dumps(eventAsRecord(event), ensure_ascii=False)
        except Exception:  # pragma: no cover - never lose the event entirely
            line = json.dumps({"level": "error", "text": "unserialisable log event"})
        out.write(line + "\n")
        out.flush()

    return FilteringLogObserver(write, [LogLevelFilterPredicate(defaultLogLevel=minimum)])
