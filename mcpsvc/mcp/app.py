# -*- test-case-name: mcpsvc.mcp.test.test_app -*-
"""
The MCP endpoint: Streamable HTTP on C{/mcp} and C{/mcp/} (no redirect).

Every request is checked for C{Origin} and C{Host}, then authenticated,
then served in one of two eras:

  - the handshake era (2024-11-05 to 2025-11-25): C{initialize} issues an
    C{Mcp-Session-Id} (unless C{SESSIONS=off}); the session lives in the
    store, bound to the caller's subject and client, with an idle expiry;
    GET opens a notification stream for a session, DELETE ends it;
  - the stateless 2026-07-28 era: requests carrying
    C{_meta["io.modelcontextprotocol/protocolVersion"]} (or
    C{server/discover}) are served without a session, with the
    C{Mcp-Method}/C{Mcp-Name} header checks; C{subscriptions/listen}
    replaces the GET stream (L{mcpsvc.mcp.subscriptions}).

L{McpApp.changed} tells both kinds of stream about a change (the tool
list changed: L{mcpsvc.mcp.changes}).

A request is answered with C{application/json}, or with
C{text/event-stream} when the client accepts only SSE, or when it accepts
SSE and the request can produce notifications (a C{progressToken}, or
logging enabled for a tool call). The stream starts lazily, with the first
notification; a call that produces none is answered with JSON when the
client accepts JSON.

Each request's method (and tool) needs its scope
(L{mcpsvc.mcp.dispatcher.METHOD_SCOPES}); a token without it gets the 403
C{insufficient_scope} step-up challenge. Per principal (subject and
client), C{SESSION_LIMIT} sessions live (a new one ends the least recently
used, in the store step that creates it), C{STREAM_LIMIT} GET streams are
open on an instance (one more is refused with 429), and C{initialize} is
rate limited (C{RATE_LIMIT_INITIALIZE}).

Only live streams and in-flight calls are kept in memory; every session
record is in the store, so a session survives a restart and works on any
instance.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import ipaddress
import secrets
from typing import Any, Awaitable, Callable, ClassVar, Dict, List, Optional, Set, Tuple
from urllib.parse import urlsplit

import attrs
from attrs import Factory, field, frozen
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource, Resource
from twisted.web.server import NOT_DONE_YET

from mcpsvc.http.errors import (
    Forbidden,
    HTTPError,
    JSONRPCHTTPError,
    MethodNotAllowed,
    NotFoundError,
    UnsupportedMediaType,
    renderError,
    renderFailure,
)
from mcpsvc.http.jsonio import JSON_LIMIT, mediaType, readBody, truncateForLog
from mcpsvc.mcp.dispatcher import (
    Dispatcher,
    InsufficientScope,
    RequestCancelled,
    RequestContext,
    ServerInfo,
)
from mcpsvc.mcp.protocol import (
    BATCH_VERSIONS,
    DEFAULT_HEADER_VERSION,
    HANDSHAKE_VERSIONS,
    HEADER_MISMATCH,
    INVALID_PARAMS,
    INVALID_REQUEST,
    LOG_LEVELS,
    META_CLIENT_CAPABILITIES,
    META_LOG_LEVEL,
    META_PROTOCOL_VERSION,
    METHOD_NOT_FOUND,
    MODERN_VERSIONS,
    REQUEST_CANCELLED,
    UNSUPPORTED_PROTOCOL_VERSION,
    Message,
    Notification,
    ProtocolError,
    Request,
    Response,
    encode,
    errorMessage,
    isModern,
    notificationMessage,
    parseJSON,
    parseMessage,
    progressToken,
    resultMessage,
)
from mcpsvc.mcp.mrtr import deriveStateKey
from mcpsvc.mcp.tasks import TASK_METHODS, TaskManager, buildTaskManager, optedIn
from mcpsvc.mcp.streams import TokenBoundStream, sseEvent, startEventStream
from mcpsvc.mcp.subscriptions import LISTEN_METHOD, Change, Subscriptions, taskChange
from mcpsvc.audit import audit
from mcpsvc.oauth.bearer import insufficientScope
from mcpsvc.principal import Principal
from mcpsvc.storage.interfaces import NoSuchSession, SessionRecord, StoreUnavailable
from mcpsvc.tools.registry import ToolRegistry

__all__ = ["McpApp", "Accept", "SESSION_NOT_FOUND", "KEEPALIVE_INTERVAL"]

#: JSON-RPC code for an unknown session (the TypeScript and C# SDKs' use).
SESSION_NOT_FOUND = -32001
#: Seconds between keep-alive comments on a GET stream.
KEEPALIVE_INTERVAL = 25.0
#: Largest JSON size of what we keep from the client's initialize params.
_MAX_SESSION_DATA = 4096
_LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
_MAX_SESSION_ID = 256


def _isJSONType(media: str) -> bool:
    return media == "application/json" or (
        media.startswith("application/") and media.endswith("+json")
    )


@frozen
class Accept:
    """
    What the client accepts, read leniently: a missing header, C{*/*},
    duplicated headers and lists with either type all work.

    @ivar json: C{application/json} is acceptable.
    @ivar sse: C{text/event-stream} is explicitly acceptable.
    """

    json: bool
    sse: bool

    @classmethod
    def fromRequest(cls, request: IRequest) -> "Accept":
        lines = request.requestHeaders.getRawHeaders(b"accept") or []
        types: Set[str] = set()
        for line in lines:
            for part in line.decode("latin-1").split(","):
                media, _, params = part.strip().partition(";")
                media = media.strip().lower()
                if not media:
                    continue
                if any(
                    p.strip().replace(" ", "") in ("q=0", "q=0.0", "q=0.00", "q=0.000")
                    for p in params.split(";")
                ):
                    continue
                types.add(media)
        if not types:
            return cls(json=True, sse=False)
        sse = "text/event-stream" in types or "text/*" in types
        json_ = bool(types & {"application/json", "application/*", "*/*"})
        if not sse and not json_:
            # Nothing we can produce is listed: answer JSON anyway.
            json_ = True
        return cls(json=json_, sse=sse)


def _decodeHeaderValue(value: str) -> Optional[str]:
    """
    Decode an C{Mcp-*} header value (C{=?base64?...?=} for non-ASCII);
    C{None} when it is malformed.
    """
    if value.startswith("=?base64?") and value.endswith("?="):
        try:
            return base64.b64decode(value[9:-2], validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError, ValueError):
            return None
    return value


def _headerMatches(header: str, value: Any, kind: str) -> bool:
    """
    Whether an C{Mcp-Param-*} header value (decoded) stands for the body
    value C{value} of a parameter of type C{kind}.
    """
    if kind == "boolean":
        return isinstance(value, bool) and header == ("true" if value else "false")
    if kind == "integer":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        try:
            # Compared numerically ("42.0" and 42 are equal).
            return float(header) == float(value)
        except (ValueError, OverflowError):
            return False
    return isinstance(value, str) and header == value


class _Responder:
    """
    Writes the answer to one POSTed request: JSON, or an SSE stream
    started by the first notification.
    """

    def __init__(self, request: IRequest, accept: Accept, wantStream: bool) -> None:
        self.request = request
        self.accept = accept
        self.wantStream = wantStream
        self.started = False
        self.gone = False
        request.notifyFinish().addBoth(self._finished)

    def _finished(self, result: Any) -> None:
        self.gone = True

    @property
    def send(self) -> Optional[Callable[[Dict[str, Any]], None]]:
        """
        Sends a message on the response stream (starting it), when the
        client accepts SSE.
        """
        return self._send if self.accept.sse else None

    def start(self, flush: bool = False) -> None:
        """
        Start the SSE response; with C{flush}, send its headers now.
        """
        if self.started:
            return
        self.started = True
        startEventStream(self.request)
        if flush and not self.gone:
            self.request.write(b"")

    def _send(self, message: Dict[str, Any]) -> None:
        if self.gone:
            return
        self.start()
        self.request.write(sseEvent(message))

    def final(self, message: Dict[str, Any], status: int = 200) -> bytes:
        """
        Return the body that ends the exchange with C{message}.
        """
        if self.gone:
            return b""
        if self.started or (not self.accept.json and status == 200):
            self.start()
            return sseEvent(message)
        request = self.request
        request.setResponseCode(status)
        request.setHeader("Content-Type", "application/json")
        return encode(message)

    def cancelled(self, id: Any) -> bytes:
        """
        End the exchange of a cancelled request: no response is sent for
        it. A stream (or a client that accepts one) gets an SSE stream that
        ends without a message; a JSON-only client gets a -32800 error it
        will ignore, because it no longer waits for that id.
        """
        if self.gone:
            return b""
        if self.started or self.accept.sse:
            self.start()
            return b""
        return self.final(errorMessage(id, REQUEST_CANCELLED, "Request cancelled"))


class _EventStream(TokenBoundStream):
    """
    A live GET stream of one session.
    """

    checkFailedMessage = "Checking a stream's session failed"

    def __init__(
        self, app: "McpApp", request: IRequest, sessionID: str,
        principal: Tuple[str, str] = ("", ""), token: Optional[Principal] = None,
    ) -> None:
        # The caller is C{token}: the stream ends with it (expiry, revocation).
        super().__init__(request, app.clock, token, app.store, KEEPALIVE_INTERVAL, app.log)
        self.app = app
        self.sessionID = sessionID
        self.principal = principal

    def open(self) -> "Deferred[None]":
        self._begin()
        self.request.write(b": stream opened\n\n")
        return self.done

    def _tokenEnded(self, why: str) -> None:
        self.app.log.info("Closed the stream of a session: its token {why}", why=why,
                          sessionID=self.sessionID)
        self.close()

    def _check(self, now: float) -> None:
        # A session ended elsewhere (DELETE or SESSION_LIMIT on another
        # instance, idle expiry) ends its stream by the next keep-alive;
        # so does a revoked token, grant (refresh family) or client.
        d = self.app.store.getSession(self.sessionID, now)
        d.addCallbacks(lambda record: None, self._checkFailed)
        self._checkRevoked(now)

    def _checkFailed(self, failure: Failure) -> None:
        if failure.check(NoSuchSession):
            self.app.log.info("Closed the stream of an ended session", sessionID=self.sessionID)
            self.close()
        elif not failure.check(StoreUnavailable, CancelledError):
            self.app.log.failure(self.checkFailedMessage, failure, sessionID=self.sessionID)
        # The store is unreachable: keep the stream; the next keep-alive
        # checks again.

    def send(self, message: Dict[str, Any]) -> None:
        if not self._closed:
            self.request.write(sseEvent(message))

    def _forget(self) -> None:
        if self.app._streams.pop(self.sessionID, None) is self:
            counts = self.app._streamCounts
            counts[self.principal] -= 1
            if counts[self.principal] <= 0:
                del counts[self.principal]


def _hostPort(value: str, defaultPort: int) -> Optional[Tuple[str, int]]:
    """
    Split a C{Host} value into a lower-cased host and a port.
    """
    value = value.strip().lower()
    if not value:
        return None
    try:
        parts = urlsplit("//" + value)
        host = parts.hostname
        port = parts.port or defaultPort
    except ValueError:
        return None
    if not host:
        return None
    return host, port


def _origin(url: str) -> Optional[str]:
    try:
        parts = urlsplit(url.strip())
        scheme = parts.scheme.lower()
        host = parts.hostname
        port = parts.port
    except ValueError:
        return None
    if scheme not in ("http", "https") or not host:
        return None
    default = 443 if scheme == "https" else 80
    hostPart = f"[{host}]" if ":" in host else host
    return f"{scheme}://{hostPart}" + ("" if port in (None, default) else f":{port}")


def _parseNetworks(entries: Any) -> Tuple[Any, ...]:
    networks = []
    for entry in entries:
        try:
            networks.append(ipaddress.ip_network(entry, strict=False))
        except ValueError:
            continue
    return tuple(networks)


@frozen(kw_only=True)
class McpApp:
    """
    The MCP endpoint.

    @ivar config: the L{mcpsvc.config.Config}.
    @ivar store: an L{mcpsvc.storage.interfaces.ISessionStore}.
    @ivar clock: the time source.
    @ivar authenticate: C{async (request) -> Principal}; raises
        L{mcpsvc.http.errors.Unauthorized} or C{Forbidden} (with
        C{WWW-Authenticate} set) or C{StoreUnavailable}.
    @ivar registry: the enabled tools.
    @ivar httpClient: handed to tools (treq-compatible).
    @ivar runInThread: handed to tools.
    @ivar serverInfo: the C{serverInfo} we announce.
    @ivar makeSessionID: returns a new session id (visible ASCII).
    @ivar tasks: the tasks extension's L{TaskManager} (by default one on
        C{store}).
    @ivar changes: the L{mcpsvc.mcp.changes.ChangeBus} the task records
        written here are published on (so that other instances hear of
        them), or C{None}: they go straight to L{changed}. The bus's sinks
        must include L{changed}.
    """

    log: ClassVar[Logger] = Logger()

    config: Any
    store: Any
    clock: IReactorTime
    authenticate: Callable[[IRequest], Awaitable[Principal]]
    registry: ToolRegistry
    httpClient: Any = None
    runInThread: Optional[Callable[..., Any]] = None
    serverInfo: ServerInfo = ServerInfo()
    makeSessionID: Callable[[], str] = lambda: secrets.token_urlsafe(32)
    tasks: Optional[TaskManager] = None
    changes: Any = None
    dispatcher: Dispatcher = field(
        default=Factory(
            lambda self: Dispatcher(
                self.registry,
                clock=self.clock,
                serverInfo=self.serverInfo,
                listChanged=bool(self.config.sessions),
                logging=bool(self.config.sessions),
                httpClient=self.httpClient,
                runInThread=self.runInThread,
                stateKey=(
                    deriveStateKey(self.config.jwtSecret)
                    if getattr(self.config, "jwtSecret", "") else None
                ),
                tasks=(self.tasks if self.tasks is not None
                       else buildTaskManager(self.config, self.store, self.clock)),
            ),
            takes_self=True,
        )
    )
    #: The open C{subscriptions/listen} streams (2026-07-28).
    subscriptions: Subscriptions = field(
        default=Factory(
            lambda self: Subscriptions(
                clock=self.clock, store=self.store, streamLimit=self.config.streamLimit,
                totalLimit=self.config.streamLimitTotal,
                otherStreams=lambda: len(self._streams),
                keepaliveInterval=KEEPALIVE_INTERVAL,
                supported=frozenset({"tools", "prompts", "task"}),
                readTask=self.dispatcher.tasks.read if self.dispatcher.tasks is not None else None,
            ),
            takes_self=True,
        )
    )
    _streams: Dict[str, _EventStream] = field(factory=dict, init=False)

    def __attrs_post_init__(self) -> None:
        tasks = self.dispatcher.tasks
        if tasks is not None:
            tasks.listeners.append(self._taskWritten)

    def _taskWritten(self, record: Any) -> None:
        """
        A task record was written here: announce it (on the bus, which
        also relays a hint to the other instances, or straight to this
        instance's streams).
        """
        change = taskChange(record)
        if self.changes is not None:
            self.changes.publish(change)
        else:
            self.changed(change)
    #: Open streams by principal (subject, client), for C{STREAM_LIMIT}.
    _streamCounts: Dict[Tuple[str, str], int] = field(factory=dict, init=False)
    _trusted: Tuple[Any, ...] = field(
        default=Factory(lambda self: _parseNetworks(self.config.trustedProxies), takes_self=True),
        init=False,
    )

    def resource(self) -> IResource:
        """
        The resource serving C{/mcp} and C{/mcp/} (see L{McpResource}).
        """
        return McpResource(self)

    # -- routing --------------------------------------------------------------

    async def endpoint(self, request: IRequest) -> Any:
        """
        Answer one request to C{/mcp} (C{POST}, C{GET} or C{DELETE}):
        the response body, or an L{HTTPError} (or L{StoreUnavailable})
        raised for L{McpResource} to render.
        """
        self._checkOrigin(request)
        self._checkHost(request)
        principal = await self.authenticate(request)
        method = request.method
        if method == b"POST":
            return await self._post(request, principal)
        if method == b"GET":
            return await self._get(request, principal)
        return await self._delete(request, principal)

    # -- origin and host ------------------------------------------------------

    def _checkOrigin(self, request: IRequest) -> None:
        raw = request.getHeader("origin")
        if raw is None:
            return
        origin = _origin(raw)
        allowed = {_origin(o) for o in self.config.allowedOrigins}
        allowed.add(_origin(self.config.serverURL))
        allowed.discard(None)
        if origin is not None and origin not in allowed and self._loopbackServer():
            # Served on loopback: local tools (MCP Inspector...) on any
            # loopback origin may call; remote pages still may not.
            if (urlsplit(origin).hostname or "").lower() in _LOOPBACK_HOSTS:
                return
        if origin is None or origin not in allowed:
            self.log.warn(
                "Refused MCP request from origin {origin}", origin=raw[:200],
                requestID=getattr(request, "requestID", None),
            )
            raise Forbidden("Origin not allowed", jsonrpcCode=INVALID_REQUEST)

    def _loopbackServer(self) -> bool:
        return (urlsplit(self.config.serverURL).hostname or "").lower() in _LOOPBACK_HOSTS

    def _requestHost(self, request: IRequest) -> Optional[str]:
        host = request.getHeader("host")
        if self._trusted:
            peer = getattr(request.getClientAddress(), "host", None)
            try:
                trusted = peer is not None and any(
                    ipaddress.ip_address(peer) in n for n in self._trusted
                )
            except ValueError:
                trusted = False
            forwarded = request.getHeader("x-forwarded-host")
            if trusted and forwarded:
                host = forwarded.split(",")[0].strip()
        return host

    def _checkHost(self, request: IRequest) -> None:
        raw = self._requestHost(request)
        if raw is None:
            return
        server = urlsplit(self.config.serverURL)
        defaultPort = 443 if server.scheme == "https" else 80
        given = _hostPort(raw, defaultPort)
        serverHost = (server.hostname or "").lower()
        serverPort = server.port or defaultPort
        if given is not None:
            host, port = given
            if (host, port) == (serverHost, serverPort):
                return
            if serverHost in _LOOPBACK_HOSTS and host in _LOOPBACK_HOSTS:
                return
            for entry in self.config.allowedHosts:
                allowedHost = _hostPort(entry, defaultPort)
                if allowedHost is None:
                    continue
                if ":" in entry.strip().rsplit("]", 1)[-1]:
                    if allowedHost == (host, port):
                        return
                elif allowedHost[0] == host:
                    return
        self.log.warn(
            "Refused MCP request for host {host}", host=raw[:200],
            requestID=getattr(request, "requestID", None),
        )
        raise HTTPError(
            "Misdirected request: unknown host", code=421, error="misdirected_request",
            jsonrpcCode=INVALID_REQUEST,
        )

    # -- sessions -------------------------------------------------------------

    def _scope(self, principal: Principal, record: Optional[SessionRecord]) -> str:
        if record is not None:
            return "s:" + record.sessionID
        return f"p:{principal.subject}\x00{principal.clientID}"

    async def _session(
        self, request: IRequest, principal: Principal, id: Any = None
    ) -> Optional[SessionRecord]:
        """
        Return the caller's session (C{None} in stateless mode).

        @raise JSONRPCHTTPError: 400 when the header is missing, 404 when the
            session is unknown, ended, expired or someone else's.
        """
        if not self.config.sessions:
            return None
        sessionID = request.getHeader("mcp-session-id")
        if sessionID is None:
            raise JSONRPCHTTPError(
                400, INVALID_REQUEST, "Bad Request: Mcp-Session-Id header is required", id=id
            )
        notFound = JSONRPCHTTPError(404, SESSION_NOT_FOUND, "Session not found", id=id)
        if not sessionID or len(sessionID) > _MAX_SESSION_ID or not all(
            0x21 <= ord(c) <= 0x7E for c in sessionID
        ):
            raise notFound
        now = self.clock.seconds()
        try:
            record: SessionRecord = await self.store.getSession(sessionID, now)
        except NoSuchSession:
            raise notFound from None
        if record.subject != principal.subject or record.clientID != principal.clientID:
            self.log.warn(
                "Session presented by another principal (subject {subject}, client {clientID})",
                subject=principal.subject, clientID=principal.clientID,
                requestID=getattr(request, "requestID", None),
            )
            raise notFound
        idle = float(self.config.sessionIdleTimeout)
        granularity = min(60.0, idle / 10)
        if record.expiresAt - now < idle - granularity:
            try:
                await self.store.touchSession(sessionID, now + idle, now)
            except NoSuchSession:
                raise notFound from None
        return record

    async def _updateSessionData(self, record: SessionRecord, **changes: Any) -> None:
        """
        Store new C{data} members for a session (the session store has no
        update, so the record is replaced).
        """
        now = self.clock.seconds()
        try:
            current: SessionRecord = await self.store.getSession(record.sessionID, now)
        except NoSuchSession:
            return
        data = dict(current.data)
        data.update(changes)
        await self.store.deleteSession(record.sessionID)
        await self.store.createSession(attrs.evolve(current, data=data))

    # -- POST -----------------------------------------------------------------

    async def _post(self, request: IRequest, principal: Principal) -> bytes:
        if not _isJSONType(mediaType(request)):
            raise UnsupportedMediaType("Content-Type must be application/json")
        accept = Accept.fromRequest(request)
        body = readBody(request, JSON_LIMIT)
        try:
            payload = parseJSON(body)
        except ProtocolError as e:
            raise self._httpError(e, 400)
        headerVersion = request.getHeader("mcp-protocol-version")
        if isinstance(payload, list):
            return await self._batch(request, principal, payload, headerVersion)
        try:
            message = parseMessage(payload)
        except ProtocolError as e:
            raise self._httpError(e, 400)
        if isinstance(message, (Request, Notification)) and isModern(
            message.method, message.params, headerVersion
        ):
            return await self._modern(request, principal, message, accept, headerVersion)
        return await self._legacy(request, principal, message, accept, headerVersion)

    def _httpError(self, error: ProtocolError, status: int) -> JSONRPCHTTPError:
        return JSONRPCHTTPError(
            error.httpStatus or status, error.code, error.message, id=error.id, data=error.data
        )

    def _accepted(self, request: IRequest) -> bytes:
        request.setResponseCode(202)
        request.defaultContentType = None  # type: ignore[attr-defined]
        return b""

    def _checkLegacyVersion(self, headerVersion: Optional[str], id: Any) -> None:
        if headerVersion is not None and headerVersion not in HANDSHAKE_VERSIONS:
            raise JSONRPCHTTPError(
                400, INVALID_REQUEST,
                f"Bad Request: unsupported MCP-Protocol-Version {headerVersion[:40]!r}",
                id=id, data={"supported": list(HANDSHAKE_VERSIONS)},
            )

    def _legacyContext(
        self, principal: Principal, record: Optional[SessionRecord], headerVersion: Optional[str]
    ) -> RequestContext:
        data = record.data if record is not None else {}
        capabilities = data.get("capabilities")
        logLevel = data.get("logLevel")
        setLogLevel = None
        if record is not None:
            async def setLogLevel(level: str) -> None:
                await self._updateSessionData(record, logLevel=level)

        return RequestContext(
            principal=principal,
            protocolVersion=headerVersion
            or (record.protocolVersion if record is not None else DEFAULT_HEADER_VERSION),
            modern=False,
            scope=self._scope(principal, record),
            clientCapabilities=capabilities if isinstance(capabilities, dict) else {},
            logLevel=logLevel if logLevel in LOG_LEVELS else None,
            setLogLevel=setLogLevel,
        )

    async def _legacy(
        self,
        request: IRequest,
        principal: Principal,
        message: Message,
        accept: Accept,
        headerVersion: Optional[str],
    ) -> bytes:
        id = message.id if isinstance(message, (Request, Response)) else None
        if isinstance(message, Request) and message.method == "initialize":
            return await self._initialize(request, principal, message, accept)
        self._checkLegacyVersion(headerVersion, id)
        record = await self._session(request, principal, id)
        context = self._legacyContext(principal, record, headerVersion)
        if isinstance(message, Notification):
            self.dispatcher.handleNotification(message, context)
            return self._accepted(request)
        if isinstance(message, Response):
            self.dispatcher.handleResponse(message, context)
            return self._accepted(request)
        return await self._answer(request, message, context, accept)

    async def _initialize(
        self, request: IRequest, principal: Principal, message: Request, accept: Accept
    ) -> bytes:
        params = message.params
        version, result = self.dispatcher.initialize(params)
        clientInfo = params.get("clientInfo")
        info: Dict[str, Any] = {}
        if isinstance(clientInfo, dict):
            info = {k: str(clientInfo[k])[:200] for k in ("name", "version", "title") if k in clientInfo}
        capabilities = params.get("capabilities")
        if not isinstance(capabilities, dict) or len(encode(capabilities)) > _MAX_SESSION_DATA:
            capabilities = {}
        await self._limitInitialize(request, principal, message.id)
        sessionID = None
        if self.config.sessions:
            now = self.clock.seconds()
            sessionID = self.makeSessionID()
            ended = await self.store.createSession(
                SessionRecord(
                    sessionID=sessionID,
                    subject=principal.subject,
                    clientID=principal.clientID,
                    protocolVersion=version,
                    createdAt=now,
                    expiresAt=now + float(self.config.sessionIdleTimeout),
                    data={"clientInfo": info, "capabilities": capabilities},
                ),
                limit=self.config.sessionLimit,
            )
            self._sessionsEnded(request, principal, ended)
            request.setHeader("Mcp-Session-Id", sessionID)
        self.log.info(
            "MCP initialize from {clientName} {clientVersion}: requested {requested}, "
            "negotiated {version}",
            clientName=truncateForLog(info.get("name"), 100),
            clientVersion=truncateForLog(info.get("version"), 100),
            requested=str(params.get("protocolVersion"))[:40], version=version,
            capabilities=sorted(capabilities), clientID=principal.clientID,
            sessionID=sessionID, requestID=getattr(request, "requestID", None),
        )
        responder = _Responder(request, accept, wantStream=False)
        return responder.final(resultMessage(message.id, result))

    async def _limitInitialize(self, request: IRequest, principal: Principal, id: Any) -> None:
        """
        C{RATE_LIMIT_INITIALIZE}: a token bucket per principal, in the
        store (so shared by every instance).

        @raise JSONRPCHTTPError: 429 with C{Retry-After}.
        """
        limit = self.config.rateLimitInitialize
        who = hashlib.sha256(
            (principal.subject + "\0" + principal.clientID).encode("utf-8")
        ).hexdigest()[:32]
        decision = await self.store.takeToken(
            "initialize:principal:" + who, limit.count, limit.refillPerSecond, self.clock.seconds()
        )
        if decision.allowed:
            return
        seconds = max(1, int(decision.retryAfter + 0.999))
        audit("rate_limit.hit", "denied", request=request, clientID=principal.clientID,
              subject=principal.subject, endpoint="initialize")
        self.log.warn(
            "Rate limit hit on initialize for client {clientID} (RATE_LIMIT_INITIALIZE)",
            clientID=principal.clientID, subject=principal.subject,
            requestID=getattr(request, "requestID", None),
        )
        raise JSONRPCHTTPError(
            429, INVALID_REQUEST,
            f"Too many initialize requests for this client: retry in {seconds} s",
            id=id, data={"retryAfter": seconds}, headers={"Retry-After": str(seconds)},
        )

    def _sessionsEnded(self, request: IRequest, principal: Principal, ended: List[str]) -> None:
        """
        C{SESSION_LIMIT}: the store ended these least recently used sessions
        of the principal in the same step as it created the new one; close
        their streams on this instance (those elsewhere close at their next
        keep-alive) and log them.
        """
        for sessionID in ended:
            stream = self._streams.get(sessionID)
            if stream is not None:
                stream.close()
        if ended:
            self.log.info(
                "Ended {count} least recently used session(s) of client {clientID}: "
                "SESSION_LIMIT is {limit}",
                count=len(ended), clientID=principal.clientID, subject=principal.subject,
                limit=self.config.sessionLimit, sessionIDs=ended,
                requestID=getattr(request, "requestID", None),
            )

    async def _answer(
        self, request: IRequest, message: Request, context: RequestContext, accept: Accept
    ) -> bytes:
        wantStream = accept.sse and (
            not accept.json
            or progressToken(message.params) is not None
            or (context.logLevel is not None and message.method == "tools/call")
        )
        responder = _Responder(request, accept, wantStream)
        # mcpsvc's request log (McpsvcRequest.logFields) carries the tool
        # call's outcome; other request types get the dispatcher's own event.
        logFields: Optional[Dict[str, Any]] = None
        if hasattr(type(request), "logFields"):
            logFields = request.logFields = {}  # type: ignore[attr-defined]
        context = attrs.evolve(context, send=responder.send, logFields=logFields)
        try:
            running = Deferred.fromCoroutine(self.dispatcher.handleRequest(message, context))
            if wantStream and not running.called:
                # Validation is over and the work is under way: send the
                # stream's headers now rather than with the first event.
                responder.start(flush=True)
            result = await running
        except ProtocolError as e:
            status = e.httpStatus or 200
            if context.modern and e.code == METHOD_NOT_FOUND:
                status = 404
            if status != 200 and not responder.started:
                raise self._httpError(e.withID(message.id), status)
            return responder.final(e.withID(message.id).toMessage())
        except RequestCancelled:
            return responder.cancelled(message.id)
        except InsufficientScope as e:
            raise self._insufficientScope(request, context.principal, e, message.id)
        return responder.final(resultMessage(message.id, result))

    def _insufficientScope(
        self, request: IRequest, principal: Principal, e: InsufficientScope, id: Any
    ) -> JSONRPCHTTPError:
        """
        The 403 for a request whose token lacks a scope: the step-up
        challenge (C{WWW-Authenticate: Bearer error="insufficient_scope",
        scope=<held and needed>, resource_metadata=...}), a JSON-RPC error
        body naming the scopes, an audit event (and so a metric).
        """
        audit(
            "mcp.insufficient_scope", "denied", request=request,
            clientID=principal.clientID, subject=principal.subject,
            method=e.method, tool=e.tool, needed=" ".join(e.needed),
            missing=" ".join(e.missing), held=" ".join(sorted(principal.scopes)),
        )
        forbidden = insufficientScope(self.config, principal, e.needed, e.missing)
        return JSONRPCHTTPError(
            403, INVALID_REQUEST, forbidden.description, id=id,
            data={"error": "insufficient_scope", "requiredScopes": e.needed,
                  "missingScopes": e.missing},
            headers=forbidden.headers,
        )

    async def _batch(
        self, request: IRequest, principal: Principal, payload: List[Any],
        headerVersion: Optional[str],
    ) -> bytes:
        if not payload:
            raise JSONRPCHTTPError(400, INVALID_REQUEST, "Invalid Request: empty batch")
        self._checkLegacyVersion(headerVersion, None)
        record = await self._session(request, principal)
        context = self._legacyContext(principal, record, headerVersion)
        if context.protocolVersion not in BATCH_VERSIONS:
            raise JSONRPCHTTPError(
                400, INVALID_REQUEST,
                "Invalid Request: batches are only accepted in protocol version 2025-03-26",
            )
        messages: List[Any] = []
        for item in payload:
            try:
                messages.append(parseMessage(item))
            except ProtocolError as e:
                messages.append(e)
        self._checkBatchScopes(request, principal, messages, context)
        responses: List[Dict[str, Any]] = []
        for message in messages:
            if isinstance(message, ProtocolError):
                responses.append(message.toMessage())
                continue
            if isinstance(message, Notification):
                self.dispatcher.handleNotification(message, context)
            elif isinstance(message, Response):
                self.dispatcher.handleResponse(message, context)
            elif isinstance(message, Request):
                if message.method == "initialize":
                    responses.append(
                        errorMessage(message.id, INVALID_REQUEST, "initialize must not be batched")
                    )
                    continue
                try:
                    result = await self.dispatcher.handleRequest(message, context)
                except ProtocolError as e:
                    responses.append(e.withID(message.id).toMessage())
                except RequestCancelled:
                    continue
                except InsufficientScope as e:  # pragma: no cover - checked above
                    responses.append(errorMessage(message.id, INVALID_REQUEST, str(e)))
                else:
                    responses.append(resultMessage(message.id, result))
        if not responses:
            return self._accepted(request)
        request.setResponseCode(200)
        request.setHeader("Content-Type", "application/json")
        return encode(responses)

    def _checkBatchScopes(
        self, request: IRequest, principal: Principal, messages: List[Any],
        context: RequestContext,
    ) -> None:
        """
        Before any element of a batch runs, check every request's scopes:
        one element needing a scope the token lacks answers the whole batch
        with one 403 step-up challenge naming everything the batch needs,
        and nothing runs (no half-done batch whose results are lost).
        """
        needed: List[str] = []
        missing: List[str] = []
        methods: List[str] = []
        tools: List[str] = []
        for message in messages:
            if not isinstance(message, Request) or message.method == "initialize":
                continue
            try:
                self.dispatcher.checkScopes(message, context)
            except InsufficientScope as e:
                needed += [s for s in e.needed if s not in needed]
                missing += [s for s in e.missing if s not in missing]
                methods.append(e.method)
                if e.tool:
                    tools.append(e.tool)
        if missing:
            raise self._insufficientScope(
                request, principal,
                InsufficientScope(needed, missing, ",".join(methods)[:200],
                                  ",".join(tools)[:200] or None),
                None,
            )

    # -- the 2026-07-28 era ---------------------------------------------------

    async def _modern(
        self,
        request: IRequest,
        principal: Principal,
        message: Any,
        accept: Accept,
        headerVersion: Optional[str],
    ) -> bytes:
        id = message.id if isinstance(message, Request) else None
        meta = message.params.get("_meta")
        capabilities = meta.get(META_CLIENT_CAPABILITIES) if isinstance(meta, dict) else None
        if (
            not isinstance(meta, dict)
            or not isinstance(meta.get(META_PROTOCOL_VERSION), str)
            or not isinstance(capabilities, dict)
        ):
            raise JSONRPCHTTPError(
                400, INVALID_PARAMS,
                "Invalid params: _meta must carry io.modelcontextprotocol/protocolVersion "
                "and io.modelcontextprotocol/clientCapabilities",
                id=id,
            )
        version = meta[META_PROTOCOL_VERSION]
        if headerVersion is None:
            raise JSONRPCHTTPError(
                400, HEADER_MISMATCH, "Missing required header MCP-Protocol-Version", id=id
            )
        if headerVersion != version:
            raise JSONRPCHTTPError(
                400, HEADER_MISMATCH,
                "The MCP-Protocol-Version header does not match _meta", id=id,
            )
        if version not in MODERN_VERSIONS:
            raise JSONRPCHTTPError(
                400, UNSUPPORTED_PROTOCOL_VERSION, "Unsupported protocol version", id=id,
                data={"supported": list(MODERN_VERSIONS), "requested": version},
            )
        self._checkMirroredHeaders(request, message, id)
        logLevel = meta.get(META_LOG_LEVEL)
        context = RequestContext(
            principal=principal,
            protocolVersion=version,
            modern=True,
            scope=self._scope(principal, None),
            clientCapabilities=capabilities,
            logLevel=logLevel if logLevel in LOG_LEVELS else None,
        )
        if isinstance(message, Notification):
            self.dispatcher.handleNotification(message, context)
            return self._accepted(request)
        if message.method == LISTEN_METHOD:
            return await self._listen(request, message, context, accept)
        return await self._answer(request, message, context, accept)

    async def _listen(
        self, request: IRequest, message: Request, context: RequestContext, accept: Accept
    ) -> bytes:
        """
        C{subscriptions/listen}: a stream that lasts until either side ends
        it (L{mcpsvc.mcp.subscriptions}).
        """
        try:
            self.dispatcher.checkScopes(message, context)
        except InsufficientScope as e:
            raise self._insufficientScope(request, context.principal, e, message.id)
        try:
            return await self.subscriptions.listen(
                request, context.principal, message.id, message.params, accept.sse,
                tasksDeclared=optedIn(context.clientCapabilities),
            )
        except ProtocolError as e:
            raise self._httpError(e.withID(message.id), 400)

    def _checkMirroredHeaders(self, request: IRequest, message: Any, id: Any) -> None:
        rawMethod = request.getHeader("mcp-method")
        method = _decodeHeaderValue(rawMethod) if rawMethod is not None else None
        if method is None or method != message.method:
            raise JSONRPCHTTPError(
                400, HEADER_MISMATCH,
                "The Mcp-Method header is missing or does not match the body", id=id,
            )
        key = {
            "tools/call": "name", "prompts/get": "name", "resources/read": "uri",
            # the tasks extension (SEP-2663): routed by task id
            **{method: "taskId" for method in TASK_METHODS},
        }.get(message.method)
        if key is not None:
            rawName = request.getHeader("mcp-name")
            name = _decodeHeaderValue(rawName) if rawName is not None else None
            if name is None or name != message.params.get(key):
                raise JSONRPCHTTPError(
                    400, HEADER_MISMATCH,
                    "The Mcp-Name header is missing or does not match the body", id=id,
                )
        if message.method == "tools/call" and isinstance(message.params.get("name"), str):
            self._checkParamHeaders(request, message, id)

    def _checkParamHeaders(self, request: IRequest, message: Any, id: Any) -> None:
        """
        Every C{x-mcp-header} parameter present in the arguments has its
        C{Mcp-Param-*} header, and the header (decoded) matches (SEP-2243).
        """
        arguments = message.params.get("arguments")
        for parameter in self.registry.headerParameters(message.params["name"]):
            value: Any = arguments
            for step in parameter.path:
                value = value.get(step) if isinstance(value, dict) else None
            raw = request.getHeader("mcp-param-" + parameter.header.lower())
            if value is None:
                # Absent or null: no header is expected.
                continue
            decoded = _decodeHeaderValue(raw.strip(" \t")) if raw is not None else None
            if decoded is None or not _headerMatches(decoded, value, parameter.type):
                raise JSONRPCHTTPError(
                    400, HEADER_MISMATCH,
                    f"The Mcp-Param-{parameter.header} header is missing, malformed or does "
                    "not match the arguments", id=id,
                )

    # -- GET and DELETE -------------------------------------------------------

    async def _get(self, request: IRequest, principal: Principal) -> Any:
        if not self.config.sessions:
            raise MethodNotAllowed(["POST"], "No stream is offered without sessions")
        self._checkLegacyVersion(request.getHeader("mcp-protocol-version"), None)
        record = await self._session(request, principal)
        assert record is not None
        if record.sessionID in self._streams:
            raise HTTPError(
                "A stream is already open for this session", code=409, error="conflict",
                jsonrpcCode=INVALID_REQUEST,
            )
        who = (principal.subject, principal.clientID)
        limit = self.config.streamLimit
        if len(self._streams) + self.subscriptions.open >= self.config.streamLimitTotal:
            self.log.warn(
                "Refused a stream for client {clientID}: {limit} streams already open on this "
                "instance (STREAM_LIMIT_TOTAL)", clientID=principal.clientID,
                subject=principal.subject, limit=self.config.streamLimitTotal,
                requestID=getattr(request, "requestID", None),
            )
            raise HTTPError(
                "Too many open streams on this server: use the responses to POST requests",
                code=429, error="too_many_streams", jsonrpcCode=INVALID_REQUEST,
            )
        if self._streamCounts.get(who, 0) >= limit:
            self.log.warn(
                "Refused a stream for client {clientID}: {limit} already open (STREAM_LIMIT)",
                clientID=principal.clientID, subject=principal.subject, limit=limit,
                requestID=getattr(request, "requestID", None),
            )
            raise HTTPError(
                f"Too many open streams for this client (STREAM_LIMIT is {limit}): close one "
                "(DELETE its session) or use the responses to POST requests",
                code=429, error="too_many_streams", jsonrpcCode=INVALID_REQUEST,
            )
        stream = _EventStream(self, request, record.sessionID, who, principal)
        self._streams[record.sessionID] = stream
        self._streamCounts[who] = self._streamCounts.get(who, 0) + 1
        self.log.debug("Opened a notification stream for a session", sessionID=record.sessionID)
        await stream.open()
        return b""

    async def _delete(self, request: IRequest, principal: Principal) -> bytes:
        if not self.config.sessions:
            raise MethodNotAllowed(["POST"], "There are no sessions to end")
        record = await self._session(request, principal)
        assert record is not None
        await self.store.deleteSession(record.sessionID)
        stream = self._streams.get(record.sessionID)
        if stream is not None:
            stream.close()
        self.log.info("MCP session ended by the client", sessionID=record.sessionID)
        request.setResponseCode(204)
        request.defaultContentType = None  # type: ignore[attr-defined]
        return b""

    # -- server-initiated notifications ---------------------------------------

    def notifyToolsListChanged(self) -> int:
        """
        Send C{notifications/tools/list_changed} on every open stream of
        this instance; return how many streams got it.
        """
        message = notificationMessage("notifications/tools/list_changed")
        streams = list(self._streams.values())
        for stream in streams:
            stream.send(message)
        return len(streams)

    def changed(self, change: Change) -> None:
        """
        Tell this instance's listeners about C{change}: the
        C{subscriptions/listen} streams whose filter wants it and, for the
        tool list, the handshake era's GET streams. A C{task} change goes
        to the streams following the task, and, when it comes from another
        instance, to the task's running work here (L{TaskManager.hinted}).
        """
        if change.kind == "task":
            assert change.taskID is not None
            tasks = self.dispatcher.tasks
            if change.record is None and tasks is not None:
                tasks.hinted(change.taskID)
            d = Deferred.fromCoroutine(self.subscriptions.deliverTask(change))
            d.addCallback(self._taskDelivered, change.taskID)
            d.addErrback(lambda f: self.log.failure("Delivering a task notification failed", f))
            return
        delivered = self.subscriptions.deliver(change)
        if change.kind == "tools":
            delivered += self.notifyToolsListChanged()
        self.log.info("Notified {count} stream(s) of a {kind} change",
                      count=delivered, kind=change.kind)

    def _taskDelivered(self, count: int, taskID: str) -> None:
        if count:
            self.log.debug("Notified {count} stream(s) of task {taskID}",
                           count=count, taskID=taskID[:12])

    @property
    def openStreams(self) -> int:
        return len(self._streams)


class McpResource(Resource):
    """
    C{/mcp} and C{/mcp/} as a plain C{twisted.web} leaf: the hot path of
    every tool call, so it skips Klein (route matching, a per-request
    adapter and callback closures that keep each request alive in
    reference cycles until the garbage collector's next full pass).

    Only C{POST}, C{GET} and C{DELETE} reach L{McpApp.endpoint}; anything
    else (C{HEAD} included) is 405 with C{Allow}. Errors are rendered
    like the Klein apps' (L{renderFailure}). When the client goes away
    first, the endpoint's work is cancelled and nothing is written.
    """

    isLeaf = True
    _methods = (b"DELETE", b"GET", b"POST")
    _paths = (b"/mcp", b"/mcp/")

    def __init__(self, app: McpApp) -> None:
        super().__init__()
        self.app = app

    def render(self, request: IRequest) -> Any:
        if request.path not in self._paths:
            return renderError(request, NotFoundError("No such resource"))
        if request.method not in self._methods:
            return renderError(request, MethodNotAllowed([m.decode() for m in self._methods]))
        d = Deferred.fromCoroutine(self.app.endpoint(request))
        d.addCallbacks(_respond, _failed, callbackArgs=(request,), errbackArgs=(request,))
        if not d.called:
            request.notifyFinish().addErrback(_abandoned, d)
        return NOT_DONE_YET


def _respond(body: bytes, request: IRequest) -> None:
    if request.finished or getattr(request, "_disconnected", False):
        return
    if body:
        request.write(body)
    request.finish()


def _failed(failure: Failure, request: IRequest) -> None:
    if getattr(request, "_disconnected", False) or request.finished:
        if not failure.check(CancelledError):
            McpApp.log.failure("Error after the client went away", failure,
                               requestID=getattr(request, "requestID", None))
        return
    _respond(renderFailure(request, failure), request)


def _abandoned(reason: Failure, d: "Deferred[Any]") -> None:
    # The connection closed before the response was finished.
    d.cancel()
