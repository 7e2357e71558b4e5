# -*- test-case-name: mcpsvc.http.test.test_jsonio -*-
"""
Reading and writing request and response bodies.

The request factory (L{mcpsvc.http.site}) already refuses, while reading,
any body larger than the largest limit; these helpers check the content
type and the per-type limit before parsing, and parse strictly.
"""

from __future__ import annotations

import json
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


def _refuseConstant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def strictLoads(data: bytes | str) -> Any:
    """
    Parse JSON strictly: no C{NaN}, C{Infinity} or C{-Infinity}; raises
    C{ValueError} on anything invalid, including bad UTF-8.
    """
    if isinstance(data, bytes):
        data = data.decode("utf-8")
    return json.loads(data, parse_constant=_refuseConstant)


def _isJSONType(media: str) -> bool:
    return media == "application/json" or (
        media.startswith("application/") and media.endswith("+json")
    )


def readJSON(request: IRequest, maxBytes: int = JSON_LIMIT) -> Any:
    """
    Return the parsed JSON body of C{request}.

    @raise UnsupportedMediaType: the content type is not JSON (415).
    @raise PayloadTooLarge: the body exceeds C{maxBytes} (413).
    @raise BadRequest: the body is not valid JSON (400).
    """
    if not _isJSONType(mediaType(request)):
        raise UnsupportedMediaType("Content-Type must be application/json")
    data = readBody(request, maxBytes)
    try:
        return strictLoads(data)
    except ValueError:
        raise BadRequest("Request body is not valid JSON", error="invalid_json")


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
        parsed = readJSON(request, maxBytes)
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
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
