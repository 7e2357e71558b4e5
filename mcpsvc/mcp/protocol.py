# -*- test-case-name: mcpsvc.mcp.test.test_protocol -*-
"""
JSON-RPC 2.0 and MCP message handling, without I/O.

Parsing turns a decoded JSON value into a L{Request}, L{Notification} or
L{Response}, or raises L{ProtocolError} carrying the JSON-RPC error to send
(and the request id, when it could be read). Building turns results and
errors back into JSON-serialisable dictionaries.
"""

from __future__ import annotations

from typing import Any, Dict, Mapping, Optional, Sequence, Tuple, Union

from attrs import field, frozen

from mcpsvc.http.jsonio import InvalidJSON, decodeJSON, dumpJSON

__all__ = [
    "HANDSHAKE_VERSIONS",
    "MODERN_VERSIONS",
    "SUPPORTED_VERSIONS",
    "LATEST_HANDSHAKE_VERSION",
    "DEFAULT_HEADER_VERSION",
    "BATCH_VERSIONS",
    "META_PREFIX",
    "META_PROTOCOL_VERSION",
    "META_CLIENT_CAPABILITIES",
    "META_CLIENT_INFO",
    "META_LOG_LEVEL",
    "META_SERVER_INFO",
    "PARSE_ERROR",
    "INVALID_REQUEST",
    "METHOD_NOT_FOUND",
    "INVALID_PARAMS",
    "INTERNAL_ERROR",
    "REQUEST_CANCELLED",
    "RESOURCE_NOT_FOUND",
    "HEADER_MISMATCH",
    "MISSING_CLIENT_CAPABILITY",
    "UNSUPPORTED_PROTOCOL_VERSION",
    "LOG_LEVELS",
    "ProtocolError",
    "Request",
    "Notification",
    "Response",
    "Message",
    "RequestID",
    "parseJSON",
    "parseMessage",
    "negotiateVersion",
    "isModern",
    "resultMessage",
    "errorMessage",
    "notificationMessage",
    "progressToken",
    "encode",
]

#: Versions answered by C{initialize} (the handshake era), oldest first.
HANDSHAKE_VERSIONS: Tuple[str, ...] = (
    "2024-11-05",
    "2025-03-26",
    "2025-06-18",
    "2025-11-25",
)
#: Versions served statelessly, per request, through C{_meta}.
MODERN_VERSIONS: Tuple[str, ...] = ("2026-07-28",)
SUPPORTED_VERSIONS: Tuple[str, ...] = HANDSHAKE_VERSIONS + MODERN_VERSIONS
LATEST_HANDSHAKE_VERSION = HANDSHAKE_VERSIONS[-1]
#: What a missing C{MCP-Protocol-Version} header means without a session.
DEFAULT_HEADER_VERSION = "2025-03-26"
#: The only version whose clients may POST JSON-RPC batches.
BATCH_VERSIONS: Tuple[str, ...] = ("2025-03-26",)

META_PREFIX = "io.modelcontextprotocol/"
META_PROTOCOL_VERSION = META_PREFIX + "protocolVersion"
META_CLIENT_CAPABILITIES = META_PREFIX + "clientCapabilities"
META_CLIENT_INFO = META_PREFIX + "clientInfo"
META_LOG_LEVEL = META_PREFIX + "logLevel"
META_SERVER_INFO = META_PREFIX + "serverInfo"

PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603
#: Not an MCP code: the LSP's "request cancelled", used only to finish the
#: HTTP exchange of a cancelled request whose client accepts no SSE.
REQUEST_CANCELLED = -32800
#: Handshake era only; 2026-07-28 uses -32602.
RESOURCE_NOT_FOUND = -32002
HEADER_MISMATCH = -32020
MISSING_CLIENT_CAPABILITY = -32021
UNSUPPORTED_PROTOCOL_VERSION = -32022

#: RFC 5424 severities, least severe first (MCP logging).
LOG_LEVELS: Tuple[str, ...] = (
    "debug",
    "info",
    "notice",
    "warning",
    "error",
    "critical",
    "alert",
    "emergency",
)

RequestID = Union[str, int]


class ProtocolError(Exception):
    """
    A JSON-RPC error to answer with.

    @ivar code: the JSON-RPC error code.
    @ivar message: a short description, safe to show the client.
    @ivar data: optional structured detail.
    @ivar id: the id of the request it answers, when known.
    @ivar httpStatus: the HTTP status to use, when the transport must not
        answer 200 (C{None}: the transport decides).
    """

    def __init__(
        self,
        code: int,
        message: str,
        *,
        data: Any = None,
        id: Optional[RequestID] = None,
        httpStatus: Optional[int] = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.data = data
        self.id = id
        self.httpStatus = httpStatus

    def withID(self, id: Optional[RequestID]) -> "ProtocolError":
        """
        Return a copy answering request C{id}.
        """
        return ProtocolError(
            self.code, self.message, data=self.data, id=id, httpStatus=self.httpStatus
        )

    def toMessage(self) -> Dict[str, Any]:
        """
        Return the JSON-RPC error response for this error.
        """
        return errorMessage(self.id, self.code, self.message, self.data)


@frozen(kw_only=True)
class Request:
    """
    A JSON-RPC request.

    @ivar id: a string or an integer, never C{None}.
    @ivar params: the params object (empty when absent).
    """

    id: RequestID
    method: str
    params: Mapping[str, Any] = field(factory=dict)

    @property
    def meta(self) -> Mapping[str, Any]:
        meta = self.params.get("_meta")
        return meta if isinstance(meta, dict) else {}


@frozen(kw_only=True)
class Notification:
    """
    A JSON-RPC notification (no id, never answered).
    """

    method: str
    params: Mapping[str, Any] = field(factory=dict)

    @property
    def meta(self) -> Mapping[str, Any]:
        meta = self.params.get("_meta")
        return meta if isinstance(meta, dict) else {}


@frozen(kw_only=True)
class Response:
    """
    A JSON-RPC response sent by the client (to a server-initiated request).
    """

    id: Optional[RequestID]
    result: Any = None
    error: Any = None


Message = Union[Request, Notification, Response]


def parseJSON(body: bytes) -> Any:
    """
    Decode a request body with L{mcpsvc.http.jsonio.decodeJSON} (UTF-8,
    no C{NaN}/C{Infinity}, bounded depth, no lone surrogates).

    @raise ProtocolError: C{-32700} when C{body} is not acceptable JSON.
    """
    try:
        return decodeJSON(body, maxBytes=None)
    except InvalidJSON:
        raise ProtocolError(PARSE_ERROR, "Parse error", httpStatus=400) from None


def _validID(value: Any) -> bool:
    # bool is an int subclass; JSON true/false are not ids.
    return (isinstance(value, str) or isinstance(value, int)) and not isinstance(
        value, bool
    )


def parseMessage(obj: Any) -> Message:
    """
    Validate one decoded JSON-RPC 2.0 message.

    @raise ProtocolError: C{-32600} (with the request id when it could be
        read) when C{obj} is not a valid request, notification or response.
    """

    def invalid(why: str, id: Optional[RequestID] = None) -> ProtocolError:
        return ProtocolError(
            INVALID_REQUEST, f"Invalid Request: {why}", id=id, httpStatus=400
        )

    if not isinstance(obj, dict):
        raise invalid("a message must be a JSON object")
    rawID = obj.get("id")
    id = rawID if _validID(rawID) else None
    if obj.get("jsonrpc") != "2.0":
        raise invalid('"jsonrpc" must be "2.0"', id)
    if "method" in obj:
        method = obj["method"]
        if not isinstance(method, str) or not method:
            raise invalid('"method" must be a non-empty string', id)
        params = obj.get("params", {})
        if params is None:
            params = {}
        if not isinstance(params, dict):
            # MCP params are always objects.
            raise invalid('"params" must be an object', id)
        if "id" not in obj:
            return Notification(method=method, params=params)
        if id is None:
            raise invalid('"id" must be a string or an integer', None)
        return Request(id=id, method=method, params=params)
    if "result" in obj or "error" in obj:
        if ("result" in obj) == ("error" in obj):
            raise invalid('a response has exactly one of "result" and "error"', id)
        if rawID is not None and id is None:
            raise invalid('"id" must be a string or an integer')
        return Response(id=id, result=obj.get("result"), error=obj.get("error"))
    raise invalid('no "method", "result" or "error"', id)


def negotiateVersion(requested: Any) -> str:
    """
    Choose the protocol version for C{initialize}: the client's if it is a
    handshake version we speak, otherwise our newest.
    """
    if isinstance(requested, str) and requested in HANDSHAKE_VERSIONS:
        return requested
    return LATEST_HANDSHAKE_VERSION


def isModern(method: str, params: Mapping[str, Any], headerVersion: Optional[str]) -> bool:
    """
    Decide whether a message belongs to the stateless (2026-07-28) era:
    C{server/discover}, anything whose C{_meta} carries an
    C{io.modelcontextprotocol/...} key, or anything but C{initialize}
    announced by a modern C{MCP-Protocol-Version} header.
    """
    if method == "server/discover":
        return True
    meta = params.get("_meta")
    if isinstance(meta, dict) and any(
        isinstance(key, str) and key.startswith(META_PREFIX) for key in meta
    ):
        return True
    return method != "initialize" and headerVersion in MODERN_VERSIONS


def progressToken(params: Mapping[str, Any]) -> Optional[RequestID]:
    """
    Return C{params._meta.progressToken} when it is a string or an integer.
    """
    meta = params.get("_meta")
    if not isinstance(meta, dict):
        return None
    token = meta.get("progressToken")
    return token if _validID(token) else None


def resultMessage(id: RequestID, result: Mapping[str, Any]) -> Dict[str, Any]:
    """
    Build a JSON-RPC success response.
    """
    return {"jsonrpc": "2.0", "id": id, "result": result}


def errorMessage(
    id: Optional[RequestID], code: int, message: str, data: Any = None
) -> Dict[str, Any]:
    """
    Build a JSON-RPC error response (C{id} C{None} when unknown).
    """
    error: Dict[str, Any] = {"code": code, "message": message}
    if data is not None:
        error["data"] = data
    return {"jsonrpc": "2.0", "id": id, "error": error}


def notificationMessage(method: str, params: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
    """
    Build a JSON-RPC notification.
    """
    message: Dict[str, Any] = {"jsonrpc": "2.0", "method": method}
    if params is not None:
        message["params"] = params
    return message


def encode(message: Union[Mapping[str, Any], Sequence[Any]]) -> bytes:
    """
    Encode a message (or a batch) as compact UTF-8 JSON.
    """
    return dumpJSON(message)
