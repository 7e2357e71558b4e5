# -*- test-case-name: mcpsvc.mcp.test.test_subscriptions -*-
"""
C{subscriptions/listen} (2026-07-28, C{basic/patterns/subscriptions}): the
long-lived notification stream that replaces the handshake era's GET
stream and C{resources/subscribe}.

A client POSTs C{subscriptions/listen} with a C{notifications} filter; the
response is an SSE stream that stays open. Its first event is
C{notifications/subscriptions/acknowledged}, carrying the part of the
filter the server honours; every later notification carries the request's
JSON-RPC id as C{_meta["io.modelcontextprotocol/subscriptionId"]}, and only
the types the client asked for are ever sent. When the server ends the
stream (shutdown, the token expired or was revoked), it answers the
request with an empty C{complete} result, tagged the same way, and closes
the stream; a client that closes the stream ends the subscription.

Which changes exist is decided elsewhere: a L{Change} reaches
L{Subscriptions.deliver} (from L{mcpsvc.mcp.changes}, locally or from
another instance through Redis) and goes to every stream whose filter
wants it. mcpsvc's tool set can change at run time (a reload, a pack that
signals it), so C{toolsListChanged} is honoured; prompts and resources are
fixed for the life of the process, so C{promptsListChanged},
C{resourcesListChanged} and C{resourceSubscriptions} are left out of the
acknowledgement (the specification's way of saying "not supported").

Each stream is bound to its principal: C{STREAM_LIMIT} streams per subject
and client on an instance, C{STREAM_LIMIT_TOTAL} streams in all on an
instance (one more is refused with 429); the stream ends when the token
expires, and at the next keep-alive after the token, its grant (refresh
family) or its client is revoked. The
decisions (L{parseFilter}, L{SubscriptionFilter.wants}, L{tagged}) are
sans-I/O; L{ListenStream} writes them to the request.
"""

from __future__ import annotations

from typing import Any, Callable, ClassVar, Dict, FrozenSet, Iterable, Mapping, Optional, Tuple

from attrs import field, frozen
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest

from mcpsvc.http.errors import JSONRPCHTTPError
from mcpsvc.mcp.protocol import (
    INVALID_PARAMS,
    INVALID_REQUEST,
    ProtocolError,
    encode,
    notificationMessage,
)
from mcpsvc.principal import Principal
from mcpsvc.storage.interfaces import StoreUnavailable

__all__ = [
    "Change",
    "LISTEN_METHOD",
    "ACKNOWLEDGED",
    "META_SUBSCRIPTION_ID",
    "LIST_CHANGED",
    "MAX_RESOURCE_SUBSCRIPTIONS",
    "SubscriptionFilter",
    "parseFilter",
    "tagged",
    "ListenStream",
    "Subscriptions",
]

LISTEN_METHOD = "subscriptions/listen"
ACKNOWLEDGED = "notifications/subscriptions/acknowledged"
META_SUBSCRIPTION_ID = "io.modelcontextprotocol/subscriptionId"

#: The filter's boolean fields, the kind of change each names, and the
#: notification it receives.
LIST_CHANGED: Mapping[str, Tuple[str, str]] = {
    "toolsListChanged": ("tools", "notifications/tools/list_changed"),
    "promptsListChanged": ("prompts", "notifications/prompts/list_changed"),
    "resourcesListChanged": ("resources", "notifications/resources/list_changed"),
}
_METHOD_OF_KIND = {kind: method for kind, method in LIST_CHANGED.values()}

#: Most URIs one C{resourceSubscriptions} list may name, and the longest.
MAX_RESOURCE_SUBSCRIPTIONS = 100
_MAX_URI = 2048


@frozen
class Change:
    """
    Something listeners may be told about.

    @ivar kind: C{tools}, C{prompts} or C{resources} (the list changed), or
        C{resource} (the resource C{uri} was updated).
    @ivar uri: the updated resource, for C{resource}.
    """

    kind: str
    uri: Optional[str] = None

    def message(self) -> Dict[str, Any]:
        """
        The notification that announces this change (untagged).
        """
        if self.kind == "resource":
            return notificationMessage("notifications/resources/updated", {"uri": self.uri})
        return notificationMessage(_METHOD_OF_KIND[self.kind])


@frozen
class SubscriptionFilter:
    """
    What one stream receives.

    @ivar kinds: the list kinds (C{tools}, C{prompts}, C{resources}).
    @ivar uris: the resources whose updates it receives.
    """

    kinds: FrozenSet[str] = frozenset()
    uris: FrozenSet[str] = frozenset()

    def honoured(self, supported: Iterable[str]) -> "SubscriptionFilter":
        """
        The part of this filter the server honours: the list kinds in
        C{supported}; resource updates only when C{"resource"} is in it.
        """
        supportedSet = frozenset(supported)
        return SubscriptionFilter(
            kinds=self.kinds & supportedSet,
            uris=self.uris if "resource" in supportedSet else frozenset(),
        )

    def wants(self, change: Change) -> bool:
        if change.kind == "resource":
            return change.uri in self.uris
        return change.kind in self.kinds

    def asDict(self) -> Dict[str, Any]:
        """
        The C{SubscriptionFilter} object (for the acknowledgement).
        """
        out: Dict[str, Any] = {
            name: True for name, (kind, _) in LIST_CHANGED.items() if kind in self.kinds
        }
        if self.uris:
            out["resourceSubscriptions"] = sorted(self.uris)
        return out


def parseFilter(params: Mapping[str, Any]) -> SubscriptionFilter:
    """
    Read the C{notifications} filter of a C{subscriptions/listen} request.
    Unknown members are ignored (a later revision may add some).

    @raise ProtocolError: C{-32602} when the filter is missing or malformed.
    """
    notifications = params.get("notifications")
    if not isinstance(notifications, dict):
        raise ProtocolError(INVALID_PARAMS, 'subscriptions/listen needs a "notifications" object')
    kinds = set()
    for name, (kind, _) in LIST_CHANGED.items():
        value = notifications.get(name)
        if value is None:
            continue
        if not isinstance(value, bool):
            raise ProtocolError(INVALID_PARAMS, f'"notifications.{name}" must be a boolean')
        if value:
            kinds.add(kind)
    uris = notifications.get("resourceSubscriptions")
    if uris is None:
        uris = []
    if (
        not isinstance(uris, list)
        or len(uris) > MAX_RESOURCE_SUBSCRIPTIONS
        or not all(isinstance(u, str) and 0 < len(u) <= _MAX_URI for u in uris)
    ):
        raise ProtocolError(
            INVALID_PARAMS,
            f'"notifications.resourceSubscriptions" must be a list of at most '
            f"{MAX_RESOURCE_SUBSCRIPTIONS} URIs",
        )
    return SubscriptionFilter(kinds=frozenset(kinds), uris=frozenset(uris))


def tagged(message: Dict[str, Any], subscriptionID: Any) -> Dict[str, Any]:
    """
    C{message} (a notification) with C{subscriptionID} in C{params._meta}.
    """
    params = dict(message.get("params") or {})
    meta = dict(params.get("_meta") or {})
    meta[META_SUBSCRIPTION_ID] = subscriptionID
    params["_meta"] = meta
    return {**message, "params": params}


def _sseEvent(message: Dict[str, Any]) -> bytes:
    return b"event: message\ndata: " + encode(message) + b"\n\n"


class ListenStream:
    """
    One open C{subscriptions/listen} stream: the acknowledgement first,
    then the changes its filter wants, keep-alive comments between them,
    and a final C{complete} result when the server ends it.

    @ivar done: fires when the stream is over (either side ended it);
        cancelling it (the client went away) ends the stream without a
        response.
    """

    def __init__(
        self, owner: "Subscriptions", request: IRequest, principal: Principal,
        subscriptionID: Any, honoured: SubscriptionFilter,
    ) -> None:
        self.owner = owner
        self.request = request
        self.principal = principal
        self.subscriptionID = subscriptionID
        self.filter = honoured
        self.who = (principal.subject, principal.clientID)
        self.done: Deferred[bytes] = Deferred(lambda d: self._cleanup())
        self._keepalive = LoopingCall(self._ping)
        self._keepalive.clock = owner.clock
        self._closed = False
        self._expiry: Optional[IDelayedCall] = None

    def open(self) -> "Deferred[bytes]":
        request = self.request
        request.setResponseCode(200)
        request.setHeader("Content-Type", "text/event-stream")
        request.setHeader("Cache-Control", "no-cache, no-transform")
        request.setHeader("X-Accel-Buffering", "no")
        ack = notificationMessage(ACKNOWLEDGED, {"notifications": self.filter.asDict()})
        request.write(_sseEvent(tagged(ack, self.subscriptionID)))
        self._keepalive.start(self.owner.keepaliveInterval, now=False)
        if self.principal.expiresAt:
            # Ends when the token does, not at the next keep-alive after.
            delay = max(0.0, self.principal.expiresAt - self.owner.clock.seconds())
            self._expiry = self.owner.clock.callLater(delay, self._expired)
        return self.done

    def _expired(self) -> None:
        self._expiry = None
        self.owner.log.info(
            "Ended a subscriptions/listen stream: the token of client {clientID} expired",
            clientID=self.principal.clientID, subject=self.principal.subject,
        )
        self.close()

    def deliver(self, change: Change) -> bool:
        """
        Send C{change} if the filter wants it; return whether it was sent.
        """
        if self._closed or not self.filter.wants(change):
            return False
        self.request.write(_sseEvent(tagged(change.message(), self.subscriptionID)))
        return True

    def _ping(self) -> None:
        self.request.write(b": keep-alive\n\n")
        now = self.owner.clock.seconds()
        principal = self.principal
        if principal.expiresAt and now >= principal.expiresAt:
            self.owner.log.info(
                "Ended a subscriptions/listen stream: the token of client {clientID} expired",
                clientID=principal.clientID, subject=principal.subject,
            )
            self.close()
            return
        ids = principal.revocationIDs or ((principal.jti,) if principal.jti is not None else ())
        if ids and self.owner.store is not None:
            # The token, its grant (refresh family) and its client: any
            # revoked ends the stream.
            d = self.owner.store.isAnyRevoked(ids, now)
            d.addCallbacks(self._revocationChecked, self._checkFailed)

    def _revocationChecked(self, revoked: bool) -> None:
        if revoked:
            self.owner.log.info(
                "Ended a subscriptions/listen stream: the token of client {clientID} was revoked",
                clientID=self.principal.clientID, subject=self.principal.subject,
            )
            self.close()

    def _checkFailed(self, failure: Failure) -> None:
        # The store is unreachable: keep the stream (no request is served
        # on it); the next keep-alive checks again.
        if not failure.check(StoreUnavailable, CancelledError):
            self.owner.log.failure("Checking a listen stream's token failed", failure)

    def _cleanup(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._keepalive.running:
            self._keepalive.stop()
        if self._expiry is not None and self._expiry.active():
            self._expiry.cancel()
        self._expiry = None
        self.owner._forget(self)
        closers = getattr(getattr(self.request, "site", None), "streamClosers", None)
        if closers is not None:
            closers.discard(self.close)

    def close(self) -> None:
        """
        End the subscription from the server side: answer the
        C{subscriptions/listen} request with an empty C{complete} result
        (a graceful end, which the client may tell from a dropped
        connection), then finish the response.
        """
        if self._closed:
            return
        self._cleanup()
        result = {
            "jsonrpc": "2.0",
            "id": self.subscriptionID,
            "result": {
                "resultType": "complete",
                "_meta": {META_SUBSCRIPTION_ID: self.subscriptionID},
            },
        }
        self.done.callback(_sseEvent(result))


@frozen(kw_only=True)
class Subscriptions:
    """
    The open C{subscriptions/listen} streams of this instance.

    @ivar clock: the time source (keep-alives, token expiry).
    @ivar store: answers C{isRevoked} (or C{None}: not checked).
    @ivar streamLimit: streams per principal (C{STREAM_LIMIT}).
    @ivar totalLimit: streams on this instance, whoever opens them
        (C{STREAM_LIMIT_TOTAL}).
    @ivar otherStreams: how many other streams (the handshake era's GET
        streams) count against C{totalLimit}.
    @ivar supported: the change kinds honoured (see L{Change}).
    @ivar keepaliveInterval: seconds between keep-alive comments.
    """

    log: ClassVar[Logger] = Logger()

    clock: IReactorTime
    store: Any = None
    streamLimit: int = 5
    totalLimit: int = 1000
    otherStreams: Callable[[], int] = lambda: 0
    supported: FrozenSet[str] = frozenset({"tools"})
    keepaliveInterval: float = 25.0
    _streams: Dict[int, ListenStream] = field(factory=dict, init=False)
    _counts: Dict[Tuple[str, str], int] = field(factory=dict, init=False)

    async def listen(
        self, request: IRequest, principal: Principal, subscriptionID: Any,
        params: Mapping[str, Any], acceptsSSE: bool,
    ) -> bytes:
        """
        Serve one C{subscriptions/listen} request: open its stream and
        return (the last bytes to write) once it ends.

        @raise JSONRPCHTTPError: 400 when the client does not accept SSE, 429 when
            the principal already has C{streamLimit} streams here.
        @raise ProtocolError: C{-32602} for a malformed filter.
        """
        requested = parseFilter(params)
        if not acceptsSSE:
            raise JSONRPCHTTPError(
                400, INVALID_REQUEST,
                "subscriptions/listen answers with a stream: Accept must list text/event-stream",
                id=subscriptionID,
            )
        who = (principal.subject, principal.clientID)
        if len(self._streams) + self.otherStreams() >= self.totalLimit:
            self.log.warn(
                "Refused a subscriptions/listen stream for client {clientID}: {limit} streams "
                "already open on this instance (STREAM_LIMIT_TOTAL)",
                clientID=principal.clientID, subject=principal.subject, limit=self.totalLimit,
                requestID=getattr(request, "requestID", None),
            )
            raise JSONRPCHTTPError(
                429, INVALID_REQUEST,
                "Too many open streams on this server: try again later", id=subscriptionID,
            )
        if self._counts.get(who, 0) >= self.streamLimit:
            self.log.warn(
                "Refused a subscriptions/listen stream for client {clientID}: {limit} already "
                "open (STREAM_LIMIT)",
                clientID=principal.clientID, subject=principal.subject, limit=self.streamLimit,
                requestID=getattr(request, "requestID", None),
            )
            raise JSONRPCHTTPError(
                429, INVALID_REQUEST,
                f"Too many open streams for this client (STREAM_LIMIT is {self.streamLimit}): "
                "close one first", id=subscriptionID,
            )
        stream = ListenStream(
            self, request, principal, subscriptionID, requested.honoured(self.supported)
        )
        self._streams[id(stream)] = stream
        self._counts[who] = self._counts.get(who, 0) + 1
        closers = getattr(getattr(request, "site", None), "streamClosers", None)
        if closers is not None:
            closers.add(stream.close)
        self.log.debug(
            "Opened a subscriptions/listen stream for client {clientID}: {filter}",
            clientID=principal.clientID, subject=principal.subject,
            filter=stream.filter.asDict(),
        )
        return await stream.open()

    def _forget(self, stream: ListenStream) -> None:
        if self._streams.pop(id(stream), None) is stream:
            self._counts[stream.who] -= 1
            if self._counts[stream.who] <= 0:
                del self._counts[stream.who]

    def deliver(self, change: Change) -> int:
        """
        Send C{change} to every stream that wants it; return how many got
        it.
        """
        sent = 0
        for stream in list(self._streams.values()):
            if stream.deliver(change):
                sent += 1
        return sent

    def closeAll(self) -> None:
        """
        End every stream gracefully (as on shutdown).
        """
        for stream in list(self._streams.values()):
            stream.close()

    @property
    def open(self) -> int:
        return len(self._streams)

    def openFor(self, principal: Principal) -> int:
        return self._counts.get((principal.subject, principal.clientID), 0)

