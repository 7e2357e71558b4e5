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
wants it. mcpsvc's tools and prompts can change at run time (a reload, a
pack that signals it), so C{toolsListChanged} and C{promptsListChanged}
are honoured (as configured by L{McpApp<mcpsvc.mcp.app.McpApp>});
resources are fixed for the life of the process, so
C{resourcesListChanged} and C{resourceSubscriptions} are left out of the
acknowledgement (the specification's way of saying "not supported").

Task status notifications (the tasks extension, SEP-2663): a filter's
C{taskIds} names tasks; the acknowledgement keeps those that are live and
the caller's own (read from the store at once; the others are dropped, as
an unknown id would be), the stream then gets the current state of each,
and a C{notifications/tasks} with the task's C{DetailedTask} (what
C{tasks/get} would answer) every time one of them is written, on any
instance. A C{task} L{Change} either carries the record just written on
this instance, or is a hint from another instance (id only) that makes
this one read the task from the store: the content, and the check that
the stream's principal owns the task, always come from the store. A
stream never receives an older version of a task than one it was sent.
Asking for C{taskIds} without declaring the extension is C{-32021}.

Each stream is bound to its principal: C{STREAM_LIMIT} streams per subject
and client on an instance, C{STREAM_LIMIT_TOTAL} streams in all on an
instance (one more is refused with 429); the stream ends when the token
expires, and at the next keep-alive after the token, its grant (refresh
family) or its client is revoked. The
decisions (L{parseFilter}, L{SubscriptionFilter.wants}, L{tagged}) are
sans-I/O; L{ListenStream} writes them to the request.
"""

from __future__ import annotations

from typing import Any, Awaitable, Callable, ClassVar, Dict, FrozenSet, Iterable, Mapping, Optional, Set, Tuple

from attrs import field, frozen
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.web.iweb import IRequest

from mcpsvc.http.errors import JSONRPCHTTPError
from mcpsvc.mcp.protocol import (
    INVALID_PARAMS,
    INVALID_REQUEST,
    ProtocolError,
    notificationMessage,
)
from mcpsvc.mcp.streams import TokenBoundStream, sseEvent
from mcpsvc.mcp.tasks import MAX_TASK_ID, missingExtension, ownedBy, taskView
from mcpsvc.principal import Principal
from mcpsvc.storage.interfaces import NoSuchTask, StoreUnavailable, TaskRecord

__all__ = [
    "Change",
    "LISTEN_METHOD",
    "ACKNOWLEDGED",
    "META_SUBSCRIPTION_ID",
    "LIST_CHANGED",
    "MAX_RESOURCE_SUBSCRIPTIONS",
    "MAX_TASK_SUBSCRIPTIONS",
    "TASK_STATUS",
    "taskChange",
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
#: Most task ids one C{taskIds} list may name.
MAX_TASK_SUBSCRIPTIONS = 100
#: The task status notification (SEP-2663).
TASK_STATUS = "notifications/tasks"


@frozen
class Change:
    """
    Something listeners may be told about.

    @ivar kind: C{tools}, C{prompts} or C{resources} (the list changed),
        C{resource} (the resource C{uri} was updated), or C{task} (the task
        C{taskID} was written).
    @ivar uri: the updated resource, for C{resource}.
    @ivar taskID: the task, for C{task}.
    @ivar record: for C{task}, the record this instance just wrote; C{None}
        for a hint from another instance (the listener reads the store).
        Never sent between instances.
    """

    kind: str
    uri: Optional[str] = None
    taskID: Optional[str] = None
    record: Optional[TaskRecord] = field(default=None, eq=False, repr=False)

    @property
    def coalescible(self) -> bool:
        """
        Whether repeats of this change may be merged: a list or resource
        change says "read it again", so one delivery covers several; a
        task change is one write (or a hint to read one) that must each
        be seen, and equal ones may carry different records.
        """
        return self.kind != "task"

    def message(self) -> Dict[str, Any]:
        """
        The notification that announces this change (untagged); not for a
        C{task}, whose notification is built per stream
        (L{ListenStream.deliverTask}).
        """
        if self.kind == "resource":
            return notificationMessage("notifications/resources/updated", {"uri": self.uri})
        return notificationMessage(_METHOD_OF_KIND[self.kind])


def taskChange(record: TaskRecord) -> Change:
    """
    The L{Change} announcing that this instance wrote C{record}.
    """
    return Change("task", taskID=record.taskID, record=record)


@frozen
class SubscriptionFilter:
    """
    What one stream receives.

    @ivar kinds: the list kinds (C{tools}, C{prompts}, C{resources}).
    @ivar uris: the resources whose updates it receives.
    @ivar taskIDs: the tasks whose status notifications it receives.
    """

    kinds: FrozenSet[str] = frozenset()
    uris: FrozenSet[str] = frozenset()
    taskIDs: FrozenSet[str] = frozenset()

    def honoured(self, supported: Iterable[str]) -> "SubscriptionFilter":
        """
        The part of this filter the server honours: the list kinds in
        C{supported}; resource updates only when C{"resource"} is in it,
        task ids only when C{"task"} is (the caller then keeps only the
        tasks the principal owns).
        """
        supportedSet = frozenset(supported)
        return SubscriptionFilter(
            kinds=self.kinds & supportedSet,
            uris=self.uris if "resource" in supportedSet else frozenset(),
            taskIDs=self.taskIDs if "task" in supportedSet else frozenset(),
        )

    def wants(self, change: Change) -> bool:
        if change.kind == "resource":
            return change.uri in self.uris
        if change.kind == "task":
            return change.taskID in self.taskIDs
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
        if self.taskIDs:
            out["taskIds"] = sorted(self.taskIDs)
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
    taskIDs = notifications.get("taskIds")
    if taskIDs is None:
        taskIDs = []
    if (
        not isinstance(taskIDs, list)
        or len(taskIDs) > MAX_TASK_SUBSCRIPTIONS
        or not all(isinstance(t, str) and 0 < len(t) <= MAX_TASK_ID for t in taskIDs)
    ):
        raise ProtocolError(
            INVALID_PARAMS,
            f'"notifications.taskIds" must be a list of at most {MAX_TASK_SUBSCRIPTIONS} task ids',
        )
    return SubscriptionFilter(
        kinds=frozenset(kinds), uris=frozenset(uris), taskIDs=frozenset(taskIDs)
    )


def tagged(message: Dict[str, Any], subscriptionID: Any) -> Dict[str, Any]:
    """
    C{message} (a notification) with C{subscriptionID} in C{params._meta}.
    """
    params = dict(message.get("params") or {})
    meta = dict(params.get("_meta") or {})
    meta[META_SUBSCRIPTION_ID] = subscriptionID
    params["_meta"] = meta
    return {**message, "params": params}


class ListenStream(TokenBoundStream):
    """
    One open C{subscriptions/listen} stream: the acknowledgement first,
    then the changes its filter wants, keep-alive comments between them,
    and a final C{complete} result when the server ends it.

    @ivar done: fires when the stream is over (either side ended it);
        cancelling it (the client went away) ends the stream without a
        response.
    """

    checkFailedMessage = "Checking a listen stream's token failed"

    def __init__(
        self, owner: "Subscriptions", request: IRequest, principal: Principal,
        subscriptionID: Any, honoured: SubscriptionFilter,
    ) -> None:
        super().__init__(
            request, owner.clock, principal, owner.store, owner.keepaliveInterval, owner.log,
        )
        self.owner = owner
        self.principal = principal
        self.subscriptionID = subscriptionID
        self.filter = honoured
        self.who = (principal.subject, principal.clientID)
        #: The version of each task last sent (at most one per filter id).
        self._sentVersions: Dict[str, int] = {}

    def open(self, current: Iterable[TaskRecord] = ()) -> "Deferred[bytes]":
        """
        Start the stream: the acknowledgement, then the C{current} state of
        the tasks it follows.
        """
        self._begin()
        ack = notificationMessage(ACKNOWLEDGED, {"notifications": self.filter.asDict()})
        self.request.write(sseEvent(tagged(ack, self.subscriptionID)))
        for record in current:
            self.deliverTask(record)
        return self.done

    def _tokenEnded(self, why: str) -> None:
        self.owner.log.info(
            "Ended a subscriptions/listen stream: the token of client {clientID} " + why,
            clientID=self.principal.clientID, subject=self.principal.subject,
        )
        self.close()

    def deliver(self, change: Change) -> bool:
        """
        Send C{change} if the filter wants it; return whether it was sent.
        A C{task} change is sent only with its record, through
        L{deliverTask} (owner and version checks).
        """
        if change.kind == "task":
            return change.record is not None and self.deliverTask(change.record)
        if self._closed or not self.filter.wants(change):
            return False
        self.request.write(sseEvent(tagged(change.message(), self.subscriptionID)))
        return True

    def deliverTask(self, record: TaskRecord) -> bool:
        """
        Send the C{notifications/tasks} of C{record} (as read from the
        store, or just written to it) if this stream follows the task, its
        principal owns it, and no newer version was sent; return whether
        it was sent.
        """
        if self._closed or record.taskID not in self.filter.taskIDs:
            return False
        if not ownedBy(record, self.principal):
            self.owner.log.warn(
                "Did not send task {taskID} to client {clientID}: another principal's task",
                taskID=record.taskID[:12], clientID=self.principal.clientID,
                subject=self.principal.subject,
            )
            return False
        last = self._sentVersions.get(record.taskID)
        if last is not None and record.version <= last:
            return False
        self._sentVersions[record.taskID] = record.version
        message = notificationMessage(TASK_STATUS, taskView(record))
        self.request.write(sseEvent(tagged(message, self.subscriptionID)))
        return True

    def _check(self, now: float) -> None:
        principal = self.principal
        if principal.expiresAt and now >= principal.expiresAt:
            self._tokenEnded("expired")
            return
        self._checkRevoked(now)

    def _forget(self) -> None:
        self.owner._forget(self)
        self._sentVersions.clear()

    def _final(self) -> bytes:
        """
        End the subscription from the server side: answer the
        C{subscriptions/listen} request with an empty C{complete} result
        (a graceful end, which the client may tell from a dropped
        connection).
        """
        result = {
            "jsonrpc": "2.0",
            "id": self.subscriptionID,
            "result": {
                "resultType": "complete",
                "_meta": {META_SUBSCRIPTION_ID: self.subscriptionID},
            },
        }
        return sseEvent(result)


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
    @ivar supported: the change kinds honoured (see L{Change}); C{task}
        needs C{store} (an C{ITaskStore}).
    @ivar keepaliveInterval: seconds between keep-alive comments.
    @ivar readTask: reads a task for a stream (C{readTask(taskID)}, a
        coroutine function; L{mcpsvc.mcp.tasks.TaskManager.read}, which
        settles a task whose instance died as C{failed}); C{None}: read
        from C{store} as it is.
    """

    log: ClassVar[Logger] = Logger()

    clock: IReactorTime
    store: Any = None
    streamLimit: int = 5
    totalLimit: int = 1000
    otherStreams: Callable[[], int] = lambda: 0
    supported: FrozenSet[str] = frozenset({"tools"})
    keepaliveInterval: float = 25.0
    readTask: Optional[Callable[[str], Awaitable[Any]]] = None
    _streams: Dict[int, ListenStream] = field(factory=dict, init=False)
    _counts: Dict[Tuple[str, str], int] = field(factory=dict, init=False)
    #: The streams following each task id.
    _byTask: Dict[str, Set[ListenStream]] = field(factory=dict, init=False)

    async def listen(
        self, request: IRequest, principal: Principal, subscriptionID: Any,
        params: Mapping[str, Any], acceptsSSE: bool, tasksDeclared: bool = False,
    ) -> bytes:
        """
        Serve one C{subscriptions/listen} request: open its stream and
        return (the last bytes to write) once it ends.

        @param tasksDeclared: whether the request declared the tasks
            extension (needed for C{taskIds}).
        @raise JSONRPCHTTPError: 400 when the client does not accept SSE, 429 when
            the principal already has C{streamLimit} streams here.
        @raise ProtocolError: C{-32602} for a malformed filter; C{-32021} for
            C{taskIds} without the tasks extension.
        @raise StoreUnavailable: the tasks named cannot be read.
        """
        requested = parseFilter(params)
        if requested.taskIDs and not tasksDeclared:
            raise missingExtension()
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
        honoured = requested.honoured(self.supported)
        current = await self._ownTasks(honoured.taskIDs, principal)
        if self._counts.get(who, 0) >= self.streamLimit:
            # Another stream opened while the tasks were read.
            raise JSONRPCHTTPError(
                429, INVALID_REQUEST,
                f"Too many open streams for this client (STREAM_LIMIT is {self.streamLimit}): "
                "close one first", id=subscriptionID,
            )
        honoured = SubscriptionFilter(
            kinds=honoured.kinds, uris=honoured.uris,
            taskIDs=frozenset(record.taskID for record in current),
        )
        stream = ListenStream(self, request, principal, subscriptionID, honoured)
        self._streams[id(stream)] = stream
        self._counts[who] = self._counts.get(who, 0) + 1
        for taskID in honoured.taskIDs:
            self._byTask.setdefault(taskID, set()).add(stream)
        self.log.debug(
            "Opened a subscriptions/listen stream for client {clientID}: {filter}",
            clientID=principal.clientID, subject=principal.subject,
            filter=stream.filter.asDict(),
        )
        return await stream.open(current)

    async def _readTask(self, taskID: str) -> Any:
        if self.readTask is not None:
            return await self.readTask(taskID)
        return await self.store.getTask(taskID, self.clock.seconds())

    async def _ownTasks(self, taskIDs: FrozenSet[str], principal: Principal) -> list:
        """
        The live records of the tasks C{taskIDs} that C{principal} owns
        (the others are left out, as unknown ones are).
        """
        owned = []
        for taskID in sorted(taskIDs):
            try:
                record = await self._readTask(taskID)
            except NoSuchTask:
                continue
            if ownedBy(record, principal):
                owned.append(record)
            else:
                self.log.warn(
                    "Client {clientID} asked to follow a task of another principal",
                    clientID=principal.clientID, subject=principal.subject,
                )
        return owned

    def _forget(self, stream: ListenStream) -> None:
        if self._streams.pop(id(stream), None) is stream:
            self._counts[stream.who] -= 1
            if self._counts[stream.who] <= 0:
                del self._counts[stream.who]
            for taskID in stream.filter.taskIDs:
                following = self._byTask.get(taskID)
                if following is not None:
                    following.discard(stream)
                    if not following:
                        del self._byTask[taskID]

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

    def following(self, taskID: str) -> int:
        """
        How many streams here follow the task C{taskID}.
        """
        return len(self._byTask.get(taskID, ()))

    async def deliverTask(self, change: Change) -> int:
        """
        Send a C{task} change to the streams following the task; return
        how many got it. The record is the change's (just written here) or,
        for a hint from another instance, read from the store, once for
        all the streams, and only when some stream here follows the task.
        A store that cannot answer loses this notification (logged); the
        next change of the task, or C{tasks/get}, brings the state.
        """
        assert change.kind == "task" and change.taskID is not None
        if not self._byTask.get(change.taskID):
            return 0
        record = change.record
        if record is None:
            try:
                record = await self._readTask(change.taskID)
            except NoSuchTask:
                return 0
            except StoreUnavailable as e:
                self.log.warn(
                    "Could not read task {taskID} for its status notification: {why}",
                    taskID=change.taskID[:12], why=str(e),
                )
                return 0
        sent = 0
        for stream in list(self._byTask.get(change.taskID, ())):
            if stream.deliverTask(record):
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

