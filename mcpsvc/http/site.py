# -*- test-case-name: mcpsvc.http.test.test_site -*-
"""
The HTTP layer every route shares: the request class and the site.

L{McpsvcRequest} does, for every request, what no route should have to:

  - refuses a body larger than the largest limit I{while reading it} (a
    client that announces or sends 2 GB is answered 413 and cut off at the
    limit, never buffered);
  - gives the request an id (a sane C{X-Request-ID}, else a new one from a
    random per-process prefix and a counter), echoed in the response;
  - adds C{X-Content-Type-Options: nosniff} and C{Referrer-Policy:
    no-referrer} to every response, and CORS headers for allowed origins;
    answers CORS preflights with 204;
  - logs one structured event per request (id, method, path, status,
    duration, client address), with the C{Authorization} header reduced to
    its scheme and a short prefix; none is built when the configured level
    drops info events. A request the client abandoned is logged with
    C{aborted: true} and the status actually sent, or L{CLIENT_CLOSED}
    (499) when no response had started.

L{McpsvcSite} counts in-flight requests so that shutdown can drain them.
"""

from __future__ import annotations

import ipaddress
import itertools
import json
import re
import secrets
from typing import Any, Callable, Dict, Iterable, Optional, Set, Tuple

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.web.http import HTTPChannel
from twisted.web.http_headers import Headers
from twisted.web.resource import IResource
from twisted.web.server import Request, Site

from mcpsvc.http.errors import errorFamily

__all__ = [
    "McpsvcRequest",
    "McpsvcSite",
    "clientAddress",
    "redactAuthorization",
    "BODY_LIMIT",
    "CORS_ALLOW_HEADERS",
    "CORS_EXPOSE_HEADERS",
]

#: Largest body read from any request; per-type limits (JSON 1 MB, form
#: 100 KB) are checked again by L{mcpsvc.http.jsonio}.
BODY_LIMIT = 1024 * 1024

CORS_ALLOW_METHODS = "GET, POST, DELETE, OPTIONS"
CORS_ALLOW_HEADERS = (
    "Content-Type, Authorization, Mcp-Session-Id, MCP-Protocol-Version, "
    "Last-Event-ID, Mcp-Method, Mcp-Name, X-Request-ID, X-API-Key"
)
CORS_EXPOSE_HEADERS = "Mcp-Session-Id, WWW-Authenticate, X-Request-ID"

_SANE_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")

#: Request ids we make: a random per-process prefix and a counter. Unique
#: (the prefix has 64 random bits, the counter never repeats in a process)
#: and cheap; they are identifiers, not secrets.
_ID_PREFIX = secrets.token_hex(8)
_idCounter = itertools.count(1)

#: Logged as the status of a request the client abandoned before any
#: response was sent (nginx's "client closed request").
CLIENT_CLOSED = 499


def newRequestID() -> str:
    """
    A new request id, e.g. C{"5f0c3a9e2b7d4c61-1a"}.
    """
    return f"{_ID_PREFIX}-{next(_idCounter):x}"


def redactAuthorization(value: Optional[str]) -> Optional[str]:
    """
    Reduce an C{Authorization} header value to its scheme and a four
    character prefix of the credential, e.g. C{"Bearer eyJh..."}.
    """
    if not value:
        return None
    scheme, _, credential = value.strip().partition(" ")
    if not credential:
        # A bare credential (no scheme): show nothing of it.
        return "(credential)"
    return f"{scheme} {credential.strip()[:4]}..."


def _parseNetworks(entries: Iterable[str]) -> Tuple[Any, ...]:
    return tuple(ipaddress.ip_network(e, strict=False) for e in entries)


def clientAddress(request: Any, trustedProxies: Tuple[Any, ...] = ()) -> str:
    """
    Return the address of the client: the peer's, or, when the peer is a
    trusted proxy, the right-most address in C{X-Forwarded-For} that is not
    itself a trusted proxy.
    """
    peer = request.getClientAddress()
    host = getattr(peer, "host", None) or "unknown"
    if not trustedProxies:
        return str(host)

    def trusted(address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in network for network in trustedProxies)

    if not trusted(host):
        return str(host)
    forwarded = request.requestHeaders.getRawHeaders(b"x-forwarded-for") or []
    hops = [
        hop.strip().decode("latin-1")
        for line in forwarded
        for hop in line.split(b",")
        if hop.strip()
    ]
    for hop in reversed(hops):
        if not trusted(hop):
            return hop
    return hops[0] if hops else str(host)


class LenientHeaders(Headers):
    """
    Request headers whose values, asked for by a C{str} name, are decoded
    as UTF-8 when they are and as ISO-8859-1 otherwise (RFC 9110 allows
    any octet in a field value), never raising. Twisted's own decode is
    strict UTF-8, so a single C{0xff} byte in any header read by name
    would otherwise fail the request with a 500.
    """

    def getRawHeaders(self, name: Any, default: Any = None) -> Any:
        if not isinstance(name, str):
            return super().getRawHeaders(name, default)
        values = super().getRawHeaders(name.encode("ascii", "replace"), None)
        if not values:
            return default
        decoded = []
        for value in values:
            try:
                decoded.append(value.decode("utf-8"))
            except UnicodeDecodeError:
                decoded.append(value.decode("latin-1"))
        return decoded


class McpsvcRequest(Request):
    """
    A request that enforces the body limit while reading, carries a request
    id, adds the common headers and logs itself when done.

    @ivar requestID: the request id, echoed as C{X-Request-ID}.
    @ivar receivedAt: when the request arrived, from the site's clock.
    @ivar logFields: fields a resource adds to this request's log event
        (C{None} until one does), e.g. the tool a C{tools/call} ran.
    """

    log = Logger()
    requestID: str = ""
    receivedAt: float = 0.0
    logFields: Optional[Dict[str, Any]] = None
    _bodyBytes = 0
    _rejected = False
    _logged = False

    def __init__(self, channel: HTTPChannel, queued: Any = None) -> None:
        super().__init__(channel)
        self.requestHeaders = LenientHeaders()
        factory = getattr(channel, "site", None)
        # Kept here: twisted.web drops the channel once the request is done.
        self._mcpsvcSite = factory if isinstance(factory, McpsvcSite) else None
        site = self._mcpsvcSite
        self.receivedAt = site.clock.seconds() if site is not None else 0.0
        # In flight from its first line: a request still uploading its body
        # when shutdown begins is drained too.
        if site is not None:
            site.inFlight.add(self)
        self.notifyFinish().addBoth(self._finished)

    def _site(self) -> Optional["McpsvcSite"]:
        return self._mcpsvcSite

    # -- body limit ---------------------------------------------------------

    def gotLength(self, length: Optional[int]) -> None:
        site = self._site()
        limit = site.bodyLimit if site is not None else BODY_LIMIT
        if length is not None and length > limit:
            # Do not let HTTPChannel answer "100 Continue" after our 413.
            self.requestHeaders.removeHeader(b"expect")
            self._reject(limit)
            return
        super().gotLength(length)

    def handleContentChunk(self, data: bytes) -> None:
        if self._rejected:
            return
        site = self._site()
        limit = site.bodyLimit if site is not None else BODY_LIMIT
        self._bodyBytes += len(data)
        if self._bodyBytes > limit:
            self._reject(limit)
            return
        super().handleContentChunk(data)

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        if self._rejected:
            return
        # twisted.web parses the Content-Type of every POST with
        # email.headerregistry (slow) only to find form bodies. Let it do so
        # only when the header could name a form type; for JSON and the
        # rest, the outcome (no form arguments) is the same without it.
        ctype = self.requestHeaders.getRawHeaders(b"content-type")
        if not ctype or b"form" not in ctype[0].lower():
            self._parsePOSTFormSubmission = False
        super().requestReceived(command, path, version)

    def _reject(self, limit: int) -> None:
        """
        Answer 413 on the raw transport and close the connection, without
        reading the rest of the body.
        """
        if self._rejected:
            return
        self._rejected = True
        channel = self.channel
        path = getattr(channel, "_path", b"") or b""
        path = path.split(b"?", 1)[0]
        method = getattr(channel, "_command", b"") or b""
        self._assignRequestID()
        message = f"Request body exceeds {limit} bytes"
        family = errorFamily(path)
        body: Dict[str, Any]
        if family == "jsonrpc":
            body = {"jsonrpc": "2.0", "id": None, "error": {"code": -32600, "message": message}}
        elif family == "oauth":
            body = {"error": "invalid_request", "error_description": message}
        else:
            body = {
                "error": "payload_too_large",
                "message": message,
                "request_id": self.requestID,
                "timestamp": _isoTime(self.receivedAt),
            }
        payload = json.dumps(body).encode("utf-8")
        head = (
            b"HTTP/1.1 413 Request Entity Too Large\r\n"
            b"Content-Type: application/json\r\n"
            b"Content-Length: " + str(len(payload)).encode("ascii") + b"\r\n"
            b"X-Request-ID: " + self.requestID.encode("ascii") + b"\r\n"
            b"X-Content-Type-Options: nosniff\r\n"
            b"Referrer-Policy: no-referrer\r\n"
            b"Connection: close\r\n\r\n"
        )
        if channel is not None and channel.transport is not None:
            channel.transport.write(head + payload)
            channel.transport.loseConnection()
        self._logRequest(
            method=method.decode("latin-1"),
            path=path.decode("latin-1", "replace"),
            status=413,
        )

    # -- processing ---------------------------------------------------------

    def _assignRequestID(self) -> None:
        if self.requestID:
            return
        given = self.getHeader("x-request-id")
        if given and _SANE_REQUEST_ID.fullmatch(given):
            self.requestID = given
        else:
            self.requestID = newRequestID()

    def process(self) -> None:
        self._assignRequestID()
        self.setHeader(b"X-Request-ID", self.requestID.encode("ascii"))
        site = self._site()
        if site is not None and site.worker is not None:
            self.setHeader(b"X-Mcpsvc-Worker", site.worker)
        self.setHeader(b"X-Content-Type-Options", b"nosniff")
        self.setHeader(b"Referrer-Policy", b"no-referrer")
        if site is not None and self._cors(site):
            return
        super().process()

    def _cors(self, site: "McpsvcSite") -> bool:
        """
        Add CORS headers for an allowed C{Origin}; answer a preflight.
        Returns C{True} when the request has been answered.
        """
        origin = self.getHeader("origin")
        allowed = origin is not None and origin in site.allowedOrigins
        if allowed:
            assert origin is not None
            self.setHeader(b"Access-Control-Allow-Origin", origin.encode("latin-1"))
            self.setHeader(b"Access-Control-Allow-Credentials", b"true")
            self.setHeader(b"Access-Control-Expose-Headers", CORS_EXPOSE_HEADERS.encode())
        if origin is not None:
            self.setHeader(b"Vary", b"Origin")
        isPreflight = (
            self.method == b"OPTIONS"
            and self.getHeader("access-control-request-method") is not None
        )
        if not isPreflight:
            return False
        if allowed:
            self.setHeader(b"Access-Control-Allow-Methods", CORS_ALLOW_METHODS.encode())
            self.setHeader(b"Access-Control-Allow-Headers", CORS_ALLOW_HEADERS.encode())
            self.setHeader(b"Access-Control-Max-Age", b"600")
        self.setResponseCode(204)
        self.finish()
        return True

    def _finished(self, result: Any) -> None:
        site = self._site()
        if site is not None:
            site.inFlight.discard(self)
            site.requestDone()
        if self._rejected:
            return
        aborted = not self.finished
        status = self.code
        if aborted and not self.startedWriting:
            # Nothing was sent: do not log the default 200.
            status = CLIENT_CLOSED
        self._logRequest(
            # Both are None when the connection was lost before the request
            # line was complete.
            method=(self.method or b"").decode("latin-1"),
            path=(self.path or b"").decode("latin-1", "replace"),
            status=status,
            aborted=aborted,
        )

    def _logRequest(self, method: str, path: str, status: int, aborted: bool = False) -> None:
        if self._logged:
            return
        self._logged = True
        self._assignRequestID()
        site = self._site()
        now = site.clock.seconds() if site is not None else self.receivedAt
        if site is not None and site.metrics is not None:
            site.metrics.observeRequest(path, method, status, now - self.receivedAt)
        if site is not None and not site.logRequests:
            return
        trusted = site.trustedProxies if site is not None else ()
        try:
            address = clientAddress(self, trusted)
        except Exception:  # pragma: no cover - transport already gone
            address = "unknown"
        fields: Dict[str, Any] = dict(
            requestID=self.requestID,
            method=method,
            path=path,
            status=status,
            durationMs=round((now - self.receivedAt) * 1000, 3),
            clientAddress=address,
            aborted=aborted,
        )
        if site is not None and site.verbose:
            fields["userAgent"] = self.getHeader("user-agent")
            fields["authorization"] = redactAuthorization(self.getHeader("authorization"))
        extra = self.logFields
        if extra and "tool" in extra:
            # One event per request: the tool call's outcome rides on it.
            fields.update((k, v) for k, v in extra.items() if k not in fields)
            self.log.info(
                "{method} {path} {status} {durationMs}ms id={requestID} tool={tool} {toolOutcome}",
                eventType="request",
                **fields,
            )
            return
        if extra:
            fields.update((k, v) for k, v in extra.items() if k not in fields)
        self.log.info(
            "{method} {path} {status} {durationMs}ms id={requestID}",
            eventType="request",
            **fields,
        )


def _isoTime(when: float) -> str:
    from datetime import datetime, timezone

    return datetime.fromtimestamp(when, tz=timezone.utc).isoformat().replace("+00:00", "Z")


class McpsvcSite(Site):
    """
    The site serving mcpsvc's root resource.

    @ivar clock: time source for request timing.
    @ivar inFlight: requests being processed (for graceful drain).
    @ivar allowedOrigins: exact CORS origins.
    @ivar trustedProxies: networks whose C{X-Forwarded-For} is honoured.
    @ivar verbose: log user agent and redacted authorization too.
    """

    requestFactory = McpsvcRequest
    # Our request log replaces the combined access log.
    noisy = False

    def __init__(
        self,
        resource: IResource,
        *,
        clock: IReactorTime,
        allowedOrigins: Iterable[str] = (),
        trustedProxies: Iterable[str] = (),
        verbose: bool = False,
        bodyLimit: int = BODY_LIMIT,
        metrics: Any = None,
        logRequests: Optional[bool] = None,
    ) -> None:
        super().__init__(resource)
        if logRequests is None:
            from mcpsvc.logs import infoEnabled

            logRequests = infoEnabled()
        self.metrics = metrics
        self.clock = clock
        self.allowedOrigins = frozenset(allowedOrigins)
        self.trustedProxies = _parseNetworks(trustedProxies)
        self.verbose = verbose
        #: Request events are info events: build none when the configured
        #: level drops them.
        self.logRequests = logRequests
        self.bodyLimit = bodyLimit
        from mcpsvc.workers import workerIndex

        index = workerIndex()
        #: C{X-Mcpsvc-Worker} (the worker index) under C{--workers N}.
        self.worker: Optional[bytes] = None if index is None else str(index).encode()
        self.inFlight: Set[McpsvcRequest] = set()
        self._idleWaiters: list[Deferred[None]] = []
        self.streamClosers: Set[Callable[[], None]] = set()

    def log(self, request: Any) -> None:
        """
        Do nothing: every request is logged by L{McpsvcRequest} as a
        structured event instead of the combined log format.
        """

    def requestDone(self) -> None:
        if not self.inFlight:
            waiters, self._idleWaiters = self._idleWaiters, []
            for waiter in waiters:
                waiter.callback(None)

    def whenIdle(self) -> Deferred[None]:
        """
        Return a Deferred that fires once no request is in flight.
        """
        if not self.inFlight:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._idleWaiters.append(d)
        return d

    def closeStreams(self) -> None:
        """
        End every open long-lived stream (SSE), so that draining can finish.
        """
        for closer in list(self.streamClosers):
            self.streamClosers.discard(closer)
            try:
                closer()
            except Exception:  # pragma: no cover - a closer must not stop shutdown
                Logger().failure("Closing a stream failed")
