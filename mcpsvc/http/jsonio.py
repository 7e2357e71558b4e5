# -*- test-case-name: mcpsvc.http.test.test_jsonio -*-
"""
Reading and writing request and response bodies, and the one JSON decoder.

The request factory (L{mcpsvc.http.site}) already refuses, while reading,
any body larger than the largest limit; these helpers check the content
type and the per-type limit before parsing, and parse strictly.

L{decodeJSON} is the only way mcpsvc parses JSON that came from outside:
request bodies (OAuth, MCP), token parts (JWT header and payload, sealed
cookies and form values) and anything else a client can influence. It
bounds size and nesting depth, refuses lone surrogates (C{"\\ud800"}: valid
JSON text, but no UTF-8 string can hold one), C{NaN}/C{Infinity} and
numbers that overflow to infinity, and raises one typed error,
L{InvalidJSON}, that each caller maps to its own format.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any, Dict, Optional
from urllib.parse import parse_qsl

from twisted.web.iweb import IRequest

from mcpsvc.http.errors import BadRequest, PayloadTooLarge, UnsupportedMediaType

__all__ = [
    "JSON_LIMIT",
    "FORM_LIMIT",
    "mediaType",
    "readBody",
    "readJSON",
    "readForm",
    "writeJSON",
    "strictLoads",
    "decodeJSON",
    "InvalidJSON",
    "MAX_DEPTH",
    "truncateForLog",
    "dumpJSON",
]

#: Largest JSON body accepted (bytes).
JSON_LIMIT = 1024 * 1024
#: Largest form-encoded body accepted (bytes).
FORM_LIMIT = 100 * 1024


def mediaType(request: IRequest) -> str:
    """
    Return the request's media type, lower-cased, without parameters
    (C{""} when there is no C{Content-Type}).
    """
    raw = request.getHeader("content-type") or ""
    return raw.split(";", 1)[0].strip().lower()


def readBody(request: IRequest, maxBytes: int) -> bytes:
    """
    Return the request body, refusing one larger than C{maxBytes} with 413.
    """
    content = request.content
    if content is None:
        return b""
    content.seek(0, 2)
    size = content.tell()
    if size > maxBytes:
        raise PayloadTooLarge(f"Request body exceeds {maxBytes} bytes")
    content.seek(0)
    data: bytes = content.read()
    return data


#: Deepest nesting of arrays and objects accepted (a JSON-RPC request with
#: tool arguments needs well under 20; CPython's parser recurses per level
#: and fails near 1000).
MAX_DEPTH = 64


class InvalidJSON(ValueError):
    """
    Text that L{decodeJSON} refuses.

    @ivar reason: a short explanation, safe to show the client.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _refuseConstant(name: str) -> Any:
    raise InvalidJSON(f"{name} is not valid JSON")


def _parseFloat(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise InvalidJSON("a number is out of range")
    return value


#: A \\uD800-\\uDFFF escape: the only way a surrogate gets into parsed JSON
#: (strict UTF-8 decoding refuses encoded surrogates).
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def _check(value: Any, maxDepth: int, surrogates: bool) -> None:
    """
    Walk C{value} without recursion: refuse nesting deeper than
    C{maxDepth} and (when C{surrogates}) lone surrogates in strings.
    """
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            if depth > maxDepth:
                raise InvalidJSON(f"nested deeper than {maxDepth} levels")
            for key, child in item.items():
                if surrogates and _LONE_SURROGATE.search(key):
                    raise InvalidJSON("a string holds a lone surrogate")
                stack.append((child, depth + 1))
        elif isinstance(item, list):
            if depth > maxDepth:
                raise InvalidJSON(f"nested deeper than {maxDepth} levels")
            stack.extend((child, depth + 1) for child in item)
        elif surrogates and isinstance(item, str) and _LONE_SURROGATE.search(item):
            raise InvalidJSON("a string holds a lone surrogate")


def decodeJSON(
    data: bytes | str,
    *,
    maxBytes: Optional[int] = JSON_LIMIT,
    maxDepth: int = MAX_DEPTH,
) -> Any:
    """
    Parse JSON from outside, strictly and within bounds.

    Refuses (with L{InvalidJSON}): more than C{maxBytes} (C{None}: no
    limit), bytes that are not UTF-8, invalid JSON, C{NaN} and
    C{Infinity}, numbers that overflow to infinity or have more digits
    than Python converts, nesting deeper than C{maxDepth}, and lone
    surrogates in any string or key. Never raises anything else.
    """
    if not isinstance(data, (bytes, str)):
        raise InvalidJSON("not text")
    if maxBytes is not None and len(data) > maxBytes:
        raise InvalidJSON(f"more than {maxBytes} bytes")
    if isinstance(data, bytes):
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidJSON("not valid UTF-8")
    else:
        text = data
        if _LONE_SURROGATE.search(text):
            raise InvalidJSON("a string holds a lone surrogate")
    try:
        value = json.loads(text, parse_constant=_refuseConstant, parse_float=_parseFloat)
    except InvalidJSON:
        raise
    except RecursionError:
        raise InvalidJSON(f"nested deeper than {maxDepth} levels")
    except ValueError as e:
        # JSONDecodeError, and int() refusing more than 4300 digits.
        raise InvalidJSON(str(e).split(":", 1)[0] if isinstance(e, json.JSONDecodeError)
                          else "a number has too many digits")
    surrogates = _SURROGATE_ESCAPE.search(text) is not None
    # Nesting cannot exceed the number of brackets: skip the walk when
    # there are too few to matter (str.count is fast).
    if surrogates or text.count("[") + text.count("{") > maxDepth:
        _check(value, maxDepth, surrogates)
    return value


def strictLoads(data: bytes | str) -> Any:
    """
    L{decodeJSON} with its default limits (kept for existing callers).
    """
    return decodeJSON(data)


def truncateForLog(value: Any, limit: int = 200) -> Any:
    """
    A bounded copy of C{value} for a log event: strings cut to C{limit}
    characters, containers to their first 20 items and 3 levels, so that
    no request can make a log line large.
    """

    def cut(item: Any, depth: int) -> Any:
        if isinstance(item, str):
            return item if len(item) <= limit else item[:limit] + f"...({len(item)} chars)"
        if isinstance(item, (bool, int, float)) or item is None:
            if isinstance(item, int) and not isinstance(item, bool) and abs(item) > 10**18:
                return "(large number)"
            return item
        if depth >= 3:
            return "..."
        if isinstance(item, dict):
            out = {cut(str(k), depth + 1): cut(v, depth + 1) for k, v in list(item.items())[:20]}
            if len(item) > 20:
                out["..."] = f"({len(item)} entries)"
            return out
        if isinstance(item, (list, tuple, set, frozenset)):
            items = list(item)
            out2 = [cut(v, depth + 1) for v in items[:20]]
            if len(items) > 20:
                out2.append(f"...({len(items)} items)")
            return out2
        return cut(repr(item), depth)

    return cut(value, 0)


def _isJSONType(media: str) -> bool:
    return media == "application/json" or (
        media.startswith("application/") and media.endswith("+json")
    )


def readJSON(request: IRequest, maxBytes: int = JSON_LIMIT, error: str = "invalid_json") -> Any:
    """
    Return the parsed JSON body of C{request}, decoded by L{decodeJSON}.

    @param error: the C{error} code of the 400 (OAuth routes pass
        C{invalid_request} or C{invalid_client_metadata}).

    @raise UnsupportedMediaType: the content type is not JSON (415).
    @raise PayloadTooLarge: the body exceeds C{maxBytes} (413).
    @raise BadRequest: the body is not valid JSON (400).
    """
    if not _isJSONType(mediaType(request)):
        raise UnsupportedMediaType("Content-Type must be application/json")
    data = readBody(request, maxBytes)
    try:
        return decodeJSON(data, maxBytes=None)
    except InvalidJSON as e:
        raise BadRequest(f"Request body is not valid JSON: {e.reason}", error=error)


def readForm(
    request: IRequest, maxBytes: int = FORM_LIMIT, allowJSON: bool = False
) -> Dict[str, str]:
    """
    Return the C{application/x-www-form-urlencoded} body as a dict.

    A parameter given twice is refused, as RFC 6749 section 3.1 requires.

    @param allowJSON: also accept a JSON object body (some clients send one
        to OAuth endpoints); its values are converted to strings.
    @raise UnsupportedMediaType: another content type (415).
    @raise PayloadTooLarge: the body exceeds C{maxBytes} (413).
    @raise BadRequest: a repeated parameter, or bad encoding.
    """
    media = mediaType(request)
    if allowJSON and _isJSONType(media):
        parsed = readJSON(request, maxBytes, error="invalid_request")
        if not isinstance(parsed, dict):
            raise BadRequest("Request body must be a JSON object")
        return {
            str(k): v if isinstance(v, str) else json.dumps(v)
            for k, v in parsed.items()
            if v is not None
        }
    if media != "application/x-www-form-urlencoded":
        raise UnsupportedMediaType(
            "Content-Type must be application/x-www-form-urlencoded"
        )
    data = readBody(request, maxBytes)
    try:
        pairs = parse_qsl(
            data.decode("utf-8"), keep_blank_values=True, strict_parsing=False
        )
    except (UnicodeDecodeError, ValueError):
        raise BadRequest("Request body is not valid form encoding")
    result: Dict[str, str] = {}
    for key, value in pairs:
        if key in result:
            raise BadRequest(f"Parameter {key!r} is repeated")
        result[key] = value
    return result


def writeJSON(
    request: IRequest,
    obj: Any,
    code: int = 200,
    headers: Optional[Dict[str, str]] = None,
) -> bytes:
    """
    Set status and C{Content-Type: application/json} on C{request} and
    return C{obj} encoded (compact, UTF-8).
    """
    request.setResponseCode(code)
    request.setHeader("Content-Type", "application/json")
    for name, value in (headers or {}).items():
        request.setHeader(name, value)
    return dumpJSON(obj)


def dumpJSON(obj: Any) -> bytes:
    """
    C{obj} as compact UTF-8 JSON. A string that UTF-8 cannot hold (a lone
    surrogate that reached a response some other way than through
    L{decodeJSON}) is written escaped instead of failing the response.
    """
    try:
        return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(obj, separators=(",", ":")).encode("ascii")
