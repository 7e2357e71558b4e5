# -*- test-case-name: mcpsvc.http.test.test_errors -*-
"""
HTTP errors, and the one place where exceptions become responses.

Route code raises an L{HTTPError} (or a domain error such as
L{StoreUnavailable}); L{installErrorHandlers} registers, on a Klein app, the
handlers that turn it into a body of the right family for the request path:

  - C{/mcp}: a JSON-RPC 2.0 error object (C{id} null);
  - C{/oauth/...} and the un-prefixed OAuth aliases: C{{"error",
    "error_description"}} (RFC 6749 section 5.2);
  - anything else: C{{"error", "message", "request_id", "timestamp"}}.

An unexpected exception becomes a generic 500; its traceback goes to the
server log only.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any, Dict, Mapping, Optional

from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from werkzeug.exceptions import MethodNotAllowed as WerkzeugMethodNotAllowed
from werkzeug.exceptions import NotFound as WerkzeugNotFound

from mcpsvc.storage.interfaces import StoreUnavailable

__all__ = [
    "HTTPError",
    "renderFailure",
    "BadRequest",
    "Unauthorized",
    "Forbidden",
    "NotFoundError",
    "MethodNotAllowed",
    "NotAcceptable",
    "PayloadTooLarge",
    "UnsupportedMediaType",
    "TooManyRequests",
    "ServiceUnavailable",
    "OAuthError",
    "JSONRPCHTTPError",
    "errorFamily",
    "renderError",
    "installErrorHandlers",
    "OAUTH_PATHS",
]

log = Logger()

#: Paths (and prefixes ending in "/") whose errors use the OAuth format.
OAUTH_PATHS = ("/oauth/", "/authorize", "/token", "/register", "/revoke")

#: Default JSON-RPC error code by HTTP status, for errors raised under /mcp
#: that do not name their own.
_JSONRPC_CODE_BY_STATUS = {400: -32600, 404: -32001, 413: -32600, 415: -32600}


class HTTPError(Exception):
    """
    An error with an HTTP status, rendered in the family of the request path.

    @ivar code: the HTTP status.
    @ivar error: a short machine-readable code (C{"invalid_request"},
        C{"not_found"}, ...); the OAuth C{error} in the OAuth family.
    @ivar description: a human-readable explanation, safe to show a client.
    @ivar headers: extra response headers.
    @ivar jsonrpcCode: the JSON-RPC error code to use under C{/mcp}.
    @ivar extra: extra members merged into the body (all families).
    """

    code = 500
    error = "server_error"

    def __init__(
        self,
        description: str = "",
        *,
        code: Optional[int] = None,
        error: Optional[str] = None,
        headers: Optional[Mapping[str, str]] = None,
        jsonrpcCode: Optional[int] = None,
        extra: Optional[Mapping[str, Any]] = None,
    ) -> None:
        super().__init__(description)
        if code is not None:
            self.code = code
        if error is not None:
            self.error = error
        self.description = description
        self.headers: Dict[str, str] = dict(headers or {})
        self.jsonrpcCode = jsonrpcCode
        self.extra: Dict[str, Any] = dict(extra or {})


class BadRequest(HTTPError):
    code = 400
    error = "invalid_request"


class Unauthorized(HTTPError):
    code = 401
    error = "unauthorized"


class Forbidden(HTTPError):
    code = 403
    error = "forbidden"


class NotFoundError(HTTPError):
    code = 404
    error = "not_found"


class MethodNotAllowed(HTTPError):
    code = 405
    error = "method_not_allowed"

    def __init__(self, allowed: "list[str]", description: str = "") -> None:
        super().__init__(
            description or "Method not allowed",
            headers={"Allow": ", ".join(allowed)},
        )


class NotAcceptable(HTTPError):
    code = 406
    error = "not_acceptable"


class PayloadTooLarge(HTTPError):
    code = 413
    error = "payload_too_large"


class UnsupportedMediaType(HTTPError):
    code = 415
    error = "unsupported_media_type"


class TooManyRequests(HTTPError):
    code = 429
    error = "rate_limited"

    def __init__(self, retryAfter: float, description: str = "") -> None:
        seconds = max(1, int(retryAfter + 0.999))
        super().__init__(
            description or "Too many requests",
            headers={"Retry-After": str(seconds)},
        )
        self.retryAfter = seconds


class ServiceUnavailable(HTTPError):
    code = 503
    error = "temporarily_unavailable"

    def __init__(self, description: str = "", retryAfter: int = 5) -> None:
        super().__init__(
            description or "Service temporarily unavailable",
            headers={"Retry-After": str(retryAfter)},
        )


class OAuthError(HTTPError):
    """
    An RFC 6749 error response: C{error} is one of the registered codes
    (C{invalid_request}, C{invalid_client}, C{invalid_grant},
    C{unauthorized_client}, C{unsupported_grant_type}, C{invalid_scope},
    C{invalid_target}, C{invalid_redirect_uri}, C{invalid_client_metadata},
    C{invalid_token}, ...).
    """

    code = 400

    def __init__(
        self,
        error: str,
        description: str = "",
        *,
        code: int = 400,
        headers: Optional[Mapping[str, str]] = None,
    ) -> None:
        super().__init__(description, code=code, error=error, headers=headers)


class JSONRPCHTTPError(HTTPError):
    """
    A JSON-RPC error that must travel with a non-200 status (for example a
    parse error: 400 with C{-32700}), answering request C{id}.
    """

    def __init__(
        self,
        code: int,
        jsonrpcCode: int,
        message: str,
        *,
        id: Any = None,
        data: Any = None,
        headers: Optional[Mapping[str, str]] = None,
    ) -> None:
        super().__init__(
            message, code=code, error="jsonrpc_error", headers=headers,
            jsonrpcCode=jsonrpcCode,
        )
        self.id = id
        self.data = data


def errorFamily(path: bytes | str) -> str:
    """
    Return C{"jsonrpc"}, C{"oauth"} or C{"plain"} for a request path.
    """
    if isinstance(path, bytes):
        path = path.decode("latin-1")
    if path == "/mcp" or path.startswith("/mcp/"):
        return "jsonrpc"
    for prefix in OAUTH_PATHS:
        if path == prefix.rstrip("/") or path.startswith(prefix):
            return "oauth"
    return "plain"


def _timestamp(request: IRequest) -> str:
    when = getattr(request, "receivedAt", None)
    if when is None:  # pragma: no cover - requests made by our Site have it
        when = 0.0
    return datetime.fromtimestamp(when, tz=timezone.utc).isoformat().replace(
        "+00:00", "Z"
    )


def renderError(request: IRequest, err: HTTPError) -> bytes:
    """
    Set status, headers and content type on C{request} for C{err}, and
    return the encoded body in the family of the request path.
    """
    request.setResponseCode(err.code)
    for name, value in err.headers.items():
        request.setHeader(name, value)
    family = errorFamily(request.path)
    body: Dict[str, Any]
    if family == "jsonrpc":
        rpcError: Dict[str, Any] = {
            "code": err.jsonrpcCode
            if err.jsonrpcCode is not None
            else _JSONRPC_CODE_BY_STATUS.get(err.code, -32000),
            "message": err.description or err.error,
        }
        data = getattr(err, "data", None)
        if data is not None:
            rpcError["data"] = data
        body = {"jsonrpc": "2.0", "id": getattr(err, "id", None), "error": rpcError}
    elif family == "oauth":
        body = {"error": err.error}
        if err.description:
            body["error_description"] = err.description
        body.update(err.extra)
    else:
        body = {
            "error": err.error,
            "message": err.description or err.error,
            "request_id": getattr(request, "requestID", None),
            "timestamp": _timestamp(request),
        }
        body.update(err.extra)
    request.setHeader("Content-Type", "application/json")
    if err.code in (401, 403) or family == "oauth":
        request.setHeader("Cache-Control", "no-store")
    return json.dumps(body).encode("utf-8")


def installErrorHandlers(app: Any) -> None:
    """
    Register mcpsvc's error handlers on the Klein C{app}, in order: our
    L{HTTPError}s, Klein's routing errors (JSON 404 and 405 with C{Allow}),
    store unavailability (503 with C{Retry-After}), and last the catch-all
    that logs the traceback and answers a generic 500.

    The handlers accept the bound instance first, as Klein passes it for
    apps used as class attributes.
    """

    @app.handle_errors(HTTPError)
    def _httpError(instance: Any, request: IRequest, failure: Failure) -> bytes:
        return renderError(request, failure.value)

    @app.handle_errors(WerkzeugNotFound)
    def _notFound(instance: Any, request: IRequest, failure: Failure) -> bytes:
        return renderError(request, NotFoundError("No such resource"))

    @app.handle_errors(WerkzeugMethodNotAllowed)
    def _notAllowed(instance: Any, request: IRequest, failure: Failure) -> bytes:
        allowed = sorted(failure.value.valid_methods or [])
        return renderError(request, MethodNotAllowed(allowed))

    @app.handle_errors(StoreUnavailable)
    def _storeDown(instance: Any, request: IRequest, failure: Failure) -> bytes:
        return renderFailure(request, failure)

    @app.handle_errors(Exception)
    def _unexpected(instance: Any, request: IRequest, failure: Failure) -> bytes:
        return renderFailure(request, failure)


def renderFailure(request: IRequest, failure: Failure) -> bytes:
    """
    Answer C{request} for C{failure} (what L{installErrorHandlers} does
    for a Klein app, for the resources that are not Klein's): an
    L{HTTPError} as itself; L{StoreUnavailable} logged and answered 503
    with C{Retry-After} (fail closed); anything else logged with its
    traceback and answered with a generic 500 (no traceback reaches the
    client).
    """
    if failure.check(HTTPError):
        return renderError(request, failure.value)
    if failure.check(StoreUnavailable):
        log.error(
            "Store unavailable for {method} {path}: {why}",
            method=request.method.decode("latin-1"),
            path=request.path.decode("latin-1"),
            why=str(failure.value),
            requestID=getattr(request, "requestID", None),
        )
        return renderError(
            request, ServiceUnavailable("The service is temporarily unavailable")
        )
    log.failure(
        "Unhandled error for {method} {path}",
        failure,
        method=request.method.decode("latin-1"),
        path=request.path.decode("latin-1"),
        requestID=getattr(request, "requestID", None),
    )
    return renderError(
        request,
        HTTPError(
            "An internal error occurred",
            code=500,
            error="server_error",
            jsonrpcCode=-32603,
        ),
    )
