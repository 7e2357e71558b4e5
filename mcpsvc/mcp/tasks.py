# -*- test-case-name: mcpsvc.mcp.test.test_tasks -*-
"""
The tasks extension of the 2026-07-28 era (C{io.modelcontextprotocol/tasks},
SEP-2663): a C{tools/call} answered with a task handle
(C{resultType: "task"}) while the tool goes on running; the client polls
C{tasks/get}, answers the task's questions with C{tasks/update} and may
C{tasks/cancel} it.

Negotiation is per request: a request declares the extension in
C{_meta["io.modelcontextprotocol/clientCapabilities"].extensions}. Only
such a request may get a task, and only such a request may use the
C{tasks/*} methods (C{-32021} otherwise). Which calls become tasks is the
tool's declaration (C{Tool.taskSupport}, C{Tool.startsTaskItself}).

Where things live:
  - the task's state (L{TaskRecord}) is in the store
    (L{mcpsvc.storage.interfaces.ITaskStore}), created before the
    C{CreateTaskResult} is sent, so any instance answers C{tasks/get};
    every change is a compare-and-set on the record's version, made by
    the pure transitions below and retried when another write came first;
  - the running work lives on the instance that started it
    (L{TaskManager}); it writes its questions and its outcome to the store;
  - C{tasks/update} and C{tasks/cancel} are written to the store by
    whichever instance receives them. The instance running the task reads
    its running tasks' records every C{pollInterval} seconds (on the
    injected clock) and so sees answers and cancellations written
    elsewhere; one received on the running instance itself is acted on at
    once, and so is one announced by another instance through the change
    relay (C{STORE=redis}: L{TaskManager.hinted}). Polling needs nothing but the store (any backend, no second Redis
    connection), and costs one read per running task per interval.

A task is bound to its principal (subject and client): anyone else asking
about it gets the same C{-32602} "task not found" as for an unknown id.
Task ids are 192 random bits.

C{tasks/cancel} marks the task C{cancelled} in the store at once (so the
status is final even when the instance running it is gone), and the
running work is cancelled when its instance sees it.

Leases: the instance running a task vouches for it in the record itself
(C{leaseUntil}, C{TASK_LEASE} seconds ahead), renewed by compare-and-set
from the poll it already makes, once a third of the lease has gone (so one
write per task every C{TASK_LEASE / 3} seconds, whatever the poll
interval). An instance that dies without ending its tasks (C{kill -9},
a lost machine) stops renewing: whoever next reads such a task (C{tasks/get},
C{tasks/update}, C{tasks/cancel}, C{subscriptions/listen}, the instance's
own poll) finds it not over with its lease passed, and writes it
C{failed} ("The server instance running this task stopped") by
compare-and-set, so exactly one writer wins and announces it; the stores
leave it out of the C{TASK_LIMIT} count from the moment the lease passes
(L{lapsed}). A lease is never renewed once it has passed (L{renewed}
fails the task instead): a task every other instance may already have
reported failed stays failed, and its work, if its instance was only
stalled, is cancelled at that instance's next poll. Instances compare
each other's clocks through C{leaseUntil}: keep them synchronised (NTP)
to well within a third of the lease.
"""

from __future__ import annotations

import hmac
import json
import secrets
from datetime import datetime, timezone
from typing import Any, Callable, Dict, List, Mapping, Optional

import attrs
from twisted.internet.defer import CancelledError, Deferred, fail, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.application.service import Service
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from mcpsvc.mcp.mrtr import (
    ClientRequests,
    MAX_INPUTS,
    InputRound,
    answerProblem,
    parseInputResponses,
)
from mcpsvc.mcp.protocol import (
    INTERNAL_ERROR,
    INVALID_PARAMS,
    MISSING_CLIENT_CAPABILITY,
    ProtocolError,
    Request,
)
from mcpsvc.audit import audit
from mcpsvc.principal import Principal
from mcpsvc.storage.interfaces import (
    NoSuchTask,
    TERMINAL_TASK_STATUSES,
    StoreUnavailable,
    TaskRecord,
    TooManyTasks,
)
from mcpsvc.tools.interfaces import ClientRequestError, ToolProtocolError, _noClientRequests

__all__ = [
    "TASKS_EXTENSION",
    "TASK_METHODS",
    "TOO_MANY_TASKS",
    "DEFAULT_TASK_LIMIT",
    "MAX_TASK_RESULT_BYTES",
    "MAX_TASK_ANSWERS_BYTES",
    "DEFAULT_TASK_TTL",
    "DEFAULT_POLL_INTERVAL",
    "DEFAULT_TASK_LEASE",
    "defaultLease",
    "LEASE_LAPSED_MESSAGE",
    "TaskManager",
    "TaskService",
    "buildTaskManager",
    "TaskCall",
    "TaskInputs",
    "optedIn",
    "ownedBy",
    "missingExtension",
    "taskView",
    "createResult",
    "answered",
    "asking",
    "cancelled",
    "finished",
    "taken",
    "leaseLapsed",
    "lapsed",
    "renewed",
]

#: The extension's identifier.
TASKS_EXTENSION = "io.modelcontextprotocol/tasks"
#: The methods the extension adds.
TASK_METHODS = ("tasks/get", "tasks/update", "tasks/cancel")
#: Seconds a task is kept after its creation (C{TASK_TTL}).
DEFAULT_TASK_TTL = 3600.0
#: Seconds between polls, suggested to clients and used by the instance
#: running a task to read its record (C{TASK_POLL_INTERVAL}).
DEFAULT_POLL_INTERVAL = 1.0
#: Seconds the instance running a task vouches for it at each renewal,
#: when C{TASK_LEASE} is not set: the larger of this and five poll
#: intervals (L{defaultLease}).
DEFAULT_TASK_LEASE = 10.0
#: Why a task whose instance stopped renewing its lease failed (its
#: C{statusMessage} and its error's message).
LEASE_LAPSED_MESSAGE = "The server instance running this task stopped"
#: Most live (not over) tasks of one principal (C{TASK_LIMIT}).
DEFAULT_TASK_LIMIT = 20
#: The JSON-RPC error of a C{tools/call} refused because its principal
#: has C{TASK_LIMIT} live tasks (an implementation-defined server error).
TOO_MANY_TASKS = -32029
#: Largest result (or error) a task keeps, in bytes of JSON: a larger one
#: ends the task C{failed} saying so.
MAX_TASK_RESULT_BYTES = 1024 * 1024
#: Largest total of the answers a task keeps for its work to take, in
#: bytes of JSON (C{tasks/update} beyond it is C{-32602}).
MAX_TASK_ANSWERS_BYTES = 256 * 1024
#: Compare-and-set attempts before a change is given up.
MAX_ATTEMPTS = 16
#: Longest task id accepted in a request.
MAX_TASK_ID = 128


# -- negotiation and the wire ------------------------------------------------


def optedIn(clientCapabilities: Mapping[str, Any]) -> bool:
    """
    Whether a request's capabilities declare the tasks extension.
    """
    extensions = clientCapabilities.get("extensions")
    return isinstance(extensions, dict) and isinstance(extensions.get(TASKS_EXTENSION), dict)


def ownedBy(record: TaskRecord, principal: Principal) -> bool:
    """
    Whether C{record} is a task of C{principal} (subject and client,
    compared in constant time).
    """
    subject = hmac.compare_digest(
        record.subject.encode("utf-8"), principal.subject.encode("utf-8"))
    client = hmac.compare_digest(
        record.clientID.encode("utf-8"), principal.clientID.encode("utf-8"))
    return subject and client


def missingExtension() -> ProtocolError:
    """
    The C{-32021} error of a request that needs the extension and did not
    declare it.
    """
    return ProtocolError(
        MISSING_CLIENT_CAPABILITY,
        "Missing required client capability",
        data={"requiredCapabilities": {"extensions": {TASKS_EXTENSION: {}}}},
        httpStatus=400,
    )


def _jsonSize(value: Any) -> int:
    """
    Bytes of C{value} as compact JSON (what the store keeps).
    """
    try:
        return len(json.dumps(value, separators=(",", ":"), ensure_ascii=False,
                              allow_nan=False).encode("utf-8", "surrogatepass"))
    except (TypeError, ValueError, RecursionError):
        return MAX_TASK_RESULT_BYTES + 1  # not JSON (or too deep to encode): never kept


def _iso(seconds: float) -> str:
    moment = datetime.fromtimestamp(seconds, timezone.utc)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def createResult(record: TaskRecord) -> Dict[str, Any]:
    """
    The C{CreateTaskResult} of a new task: the task's fields, flat, with
    C{resultType: "task"}, and none of the status-specific fields.
    """
    out: Dict[str, Any] = {
        "resultType": "task",
        "taskId": record.taskID,
        "status": record.status,
        "createdAt": _iso(record.createdAt),
        "lastUpdatedAt": _iso(record.updatedAt),
        "ttlMs": max(1, int(round((record.expiresAt - record.createdAt) * 1000))),
        "pollIntervalMs": max(1, int(round(record.pollInterval * 1000))),
    }
    if record.statusMessage:
        out["statusMessage"] = record.statusMessage
    return out


def taskView(record: TaskRecord) -> Dict[str, Any]:
    """
    The C{DetailedTask} of C{tasks/get} (and of C{notifications/tasks}):
    the task, plus its C{result} (completed), C{error} (failed) or
    C{inputRequests} (input_required).
    """
    out = createResult(record)
    del out["resultType"]
    payload = record.payload
    if record.status == "completed":
        out["result"] = payload.get("result") or {"content": []}
    elif record.status == "failed":
        out["error"] = payload.get("error") or {"code": INTERNAL_ERROR, "message": "Failed"}
    elif record.status == "input_required":
        out["inputRequests"] = dict(payload.get("inputRequests") or {})
    return out


# -- transitions (pure: a record in, the next record or None out) ------------


def _next(record: TaskRecord, now: float, **changes: Any) -> TaskRecord:
    return attrs.evolve(record, version=record.version + 1, updatedAt=now, **changes)


def _payload(record: TaskRecord, **changes: Any) -> Dict[str, Any]:
    payload = dict(record.payload)
    for key, value in changes.items():
        if value is None:
            payload.pop(key, None)
        else:
            payload[key] = value
    return payload


def asking(record: TaskRecord, requests: Mapping[str, Any], now: float) -> Optional[TaskRecord]:
    """
    The running work asks the client: C{requests} join the outstanding
    C{inputRequests} and the task is C{input_required}. C{None} for a task
    already over.
    """
    if record.status in TERMINAL_TASK_STATUSES or not requests:
        return None
    outstanding = dict(record.payload.get("inputRequests") or {})
    outstanding.update(requests)
    keys = list(record.payload.get("keys") or [])
    keys += [k for k in requests if k not in keys]
    return _next(
        record, now, status="input_required", statusMessage="Waiting for the client's input",
        payload=_payload(record, inputRequests=outstanding, keys=keys),
    )


def answered(record: TaskRecord, responses: Mapping[str, Any], now: float) -> Optional[TaskRecord]:
    """
    C{tasks/update}: the answers to outstanding requests move to
    C{inputResponses} (for the running work to take); answers to keys not
    outstanding are ignored. With nothing left outstanding the task is
    C{working} again. C{None} when nothing changes.
    """
    if record.status in TERMINAL_TASK_STATUSES:
        return None
    outstanding = dict(record.payload.get("inputRequests") or {})
    accepted = {k: v for k, v in responses.items() if k in outstanding}
    if not accepted:
        return None
    for key in accepted:
        del outstanding[key]
    answers = dict(record.payload.get("inputResponses") or {})
    answers.update(accepted)
    changes: Dict[str, Any] = {}
    if not outstanding and record.status == "input_required":
        changes.update(status="working", statusMessage=None)
    return _next(
        record, now, payload=_payload(record, inputRequests=outstanding, inputResponses=answers),
        **changes,
    )


def taken(record: TaskRecord, keys: List[str], now: float) -> Optional[TaskRecord]:
    """
    The running work took the answers C{keys}: they leave
    C{inputResponses}. C{None} when none was there.
    """
    answers = dict(record.payload.get("inputResponses") or {})
    if not any(k in answers for k in keys):
        return None
    for key in keys:
        answers.pop(key, None)
    return _next(record, now, payload=_payload(record, inputResponses=answers))


def cancelled(record: TaskRecord, now: float) -> Optional[TaskRecord]:
    """
    C{tasks/cancel}: a task not over yet is C{cancelled}, its questions
    withdrawn. C{None} for a task already over (cancelling is idempotent).
    """
    if record.status in TERMINAL_TASK_STATUSES:
        return None
    return _next(
        record, now, status="cancelled", statusMessage="Cancelled at the client's request",
        payload=_payload(record, inputRequests=None, inputResponses=None),
    )


def finished(
    record: TaskRecord, now: float, result: Optional[Mapping[str, Any]] = None,
    error: Optional[Mapping[str, Any]] = None, message: Optional[str] = None,
) -> Optional[TaskRecord]:
    """
    The work ended: C{completed} with its C{result}, or C{failed} with the
    JSON-RPC C{error}. C{None} for a task already over (a cancellation
    that came first stands).
    """
    if record.status in TERMINAL_TASK_STATUSES:
        return None
    status = "failed" if error is not None else "completed"
    return _next(
        record, now, status=status, statusMessage=message,
        payload=_payload(
            record, inputRequests=None, inputResponses=None,
            result=dict(result) if result is not None else None,
            error=dict(error) if error is not None else None,
        ),
    )


def leaseLapsed(record: TaskRecord, now: float) -> bool:
    """
    Whether C{record} is a task not over whose lease has passed: the
    instance running it stopped without ending it.
    """
    return record.status not in TERMINAL_TASK_STATUSES and 0 < record.leaseUntil <= now


def lapsed(record: TaskRecord, now: float) -> Optional[TaskRecord]:
    """
    A task whose lease has passed (L{leaseLapsed}) is C{failed}: the
    instance running it stopped. C{None} for any other task.
    """
    if not leaseLapsed(record, now):
        return None
    return finished(
        record, now, error={"code": INTERNAL_ERROR, "message": LEASE_LAPSED_MESSAGE},
        message=LEASE_LAPSED_MESSAGE,
    )


def renewed(record: TaskRecord, now: float, lease: float) -> Optional[TaskRecord]:
    """
    The instance running the task vouches for it C{lease} more seconds, once
    a third of its lease has gone (at most one write per C{lease / 3}
    seconds). Not a change of state: C{updatedAt} stays. C{None} for a task
    over, or with more than two thirds of its lease left. A lease already
    passed is not renewed: the task is L{lapsed} (others may have reported
    it failed already).
    """
    if record.status in TERMINAL_TASK_STATUSES:
        return None
    if leaseLapsed(record, now):
        return lapsed(record, now)
    if record.leaseUntil - now > lease * 2 / 3:
        return None
    return attrs.evolve(record, version=record.version + 1, leaseUntil=now + lease)


def _visible(before: TaskRecord, after: TaskRecord) -> bool:
    """
    Whether C{after} differs from C{before} in more than its version and
    lease (what a client sees, and is notified of).
    """
    return attrs.evolve(after, version=before.version, leaseUntil=before.leaseUntil) != before


def defaultLease(pollInterval: float) -> float:
    """
    The lease when C{TASK_LEASE} is not set: L{DEFAULT_TASK_LEASE} seconds,
    or five poll intervals if longer.
    """
    return max(DEFAULT_TASK_LEASE, 5 * pollInterval)


# -- the running side --------------------------------------------------------


class TaskInputs(ClientRequests):
    """
    C{clientRequest} inside a task: each request gets a key (unique over the
    task's life), is published in the task's C{inputRequests} (those asked
    in the same turn of the reactor together), and its Deferred fires when
    the answer reaches this instance (L{deliver}).
    """

    def __init__(self, clientCapabilities: Mapping[str, Any], clock: IReactorTime) -> None:
        self.clientCapabilities = clientCapabilities
        self.clock = clock
        self.waiting: Dict[str, Deferred[Any]] = {}
        self.keys: set = set()
        self.publish: Callable[[Dict[str, Any]], None] = lambda requests: None
        self._unpublished: Dict[str, Any] = {}
        self._count = 0

    def clientRequest(
        self, method: str, params: Mapping[str, Any], key: Optional[str] = None
    ) -> "Deferred[Any]":
        key, refusal = self._admit(method, key)
        if refusal is not None:
            return fail(refusal)
        if key in self.keys or len(self.waiting) >= MAX_INPUTS:
            return fail(ClientRequestError(f"The input request {key!r} is repeated or one too many"))
        self.keys.add(key)

        def forget(d: "Deferred[Any]") -> None:
            self.waiting.pop(key, None)
            self._unpublished.pop(key, None)

        d: Deferred[Any] = Deferred(forget)
        self.waiting[key] = d
        self._unpublished[key] = {"method": method, "params": dict(params)}
        if len(self._unpublished) == 1:
            self.clock.callLater(0, self._flush)
        return d

    def _flush(self) -> None:
        requests, self._unpublished = self._unpublished, {}
        if requests:
            self.publish(requests)

    def deliver(self, answers: Mapping[str, Any]) -> List[str]:
        """
        Fire the requests C{answers} answers; return their keys.
        """
        delivered = []
        for key, answer in answers.items():
            d = self.waiting.pop(key, None)
            if d is not None:
                delivered.append(key)
                d.callback(answer)
        return delivered

    def unasked(self, keys: List[str], why: str) -> None:
        """
        The requests C{keys} could not be published (the store): they fail
        with L{ClientRequestError} rather than wait for answers nobody
        can give.
        """
        for key in keys:
            d = self.waiting.pop(key, None)
            if d is not None:
                d.errback(ClientRequestError(why))

    def close(self) -> None:
        """
        The work is over: cancel what still waits.
        """
        waiting, self.waiting = self.waiting, {}
        self._unpublished = {}
        for d in waiting.values():
            d.cancel()
            d.addErrback(lambda f: f.trap(CancelledError))


class TaskCall:
    """
    One C{tools/call} from a request that declared the extension: it is, or
    may become (L{startTask}), a task.

    Until the task exists, the tool's C{clientRequest} is the request's
    multi round-trip round; afterwards, the task's L{TaskInputs}.

    @ivar record: the task, once created.
    @ivar started: fires when the task exists (with its record), or could
        not be created (with C{None}; L{failure} says why).
    @ivar failure: why the task could not be created.
    """

    def __init__(
        self, manager: "TaskManager", principal: Principal, name: str,
        clientCapabilities: Mapping[str, Any], inputRound: Optional[InputRound],
    ) -> None:
        self.manager = manager
        self.principal = principal
        self.name = name
        self.inputs = TaskInputs(clientCapabilities, manager.clock)
        self.inputRound = inputRound
        self.record: Optional[TaskRecord] = None
        self.started: Deferred[Optional[TaskRecord]] = Deferred()
        self.failure: Optional[Failure] = None
        self._waiters: List[Deferred[bool]] = []

    def clientRequest(
        self, method: str, params: Mapping[str, Any], key: Optional[str] = None
    ) -> "Deferred[Any]":
        if self.record is not None:
            return self.inputs.clientRequest(method, params, key)
        if self.inputRound is not None:
            return self.inputRound.clientRequest(method, params, key)
        return _noClientRequests(method, params, key)  # pragma: no cover - modern calls have a round

    def startTask(self) -> "Deferred[bool]":
        """
        Create the task (durably); fires with C{True} once it exists.
        """
        if self.record is not None:
            return succeed(True)
        d: Deferred[bool] = Deferred()
        self._waiters.append(d)
        if len(self._waiters) == 1:
            Deferred.fromCoroutine(self._start()).addBoth(self._startedAll)
        return d

    def toolStartTask(self) -> "Deferred[bool]":
        """
        L{startTask} as the tool sees it (C{ToolContext.startTask}): a task
        that cannot be created fails with L{ToolProtocolError}, which the
        tool lets through quietly; the request's answer is L{failure}
        itself (the dispatcher's part).
        """

        def quietly(failure: Failure) -> Failure:
            if failure.check(ProtocolError):
                e = failure.value
                return Failure(ToolProtocolError(e.code, e.message, e.data))
            return Failure(ToolProtocolError(INTERNAL_ERROR, "The task could not be created"))

        return self.startTask().addErrback(quietly)

    async def _start(self) -> bool:
        try:
            record = await self.manager.create(self.principal, "tools/call", self.name)
        except BaseException:
            self.failure = Failure()
            self.started.callback(None)
            raise
        self.record = record
        self.started.callback(record)
        return True

    def _startedAll(self, result: Any) -> None:
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            if isinstance(result, Failure):
                d.errback(result)
            else:
                d.callback(result)


class _Running:
    """
    A task running on this instance.
    """

    def __init__(self, call: TaskCall, deferred: "Deferred[Dict[str, Any]]") -> None:
        self.call = call
        self.deferred = deferred
        #: the record change still to write when the work ended (retried)
        self.outcome: Optional[Callable[[TaskRecord, float], Optional[TaskRecord]]] = None
        self.cancelledByClient = False
        self.stopping = False
        self.checking = False
        self.again = False


class TaskManager:
    """
    Creates tasks, runs them on this instance, and answers C{tasks/*}.

    @ivar store: an L{mcpsvc.storage.interfaces.ITaskStore}.
    @ivar clock: the time source (expiry, polls).
    @ivar ttl: seconds a task is kept after its creation.
    @ivar pollInterval: seconds between polls (suggested to clients, and
        between this instance's reads of its running tasks).
    @ivar limit: the most live tasks of one principal (C{None}: no
        limit), counted by the store atomically with the creation.
    @ivar lease: seconds this instance vouches for a task it runs at each
        renewal (C{TASK_LEASE}); a task not renewed for that long is
        failed by whoever reads it next.
    @ivar listeners: called with every task record this instance writes
        (C{listener(record)}): the MCP endpoint publishes each as a C{task}
        change (L{mcpsvc.mcp.subscriptions.taskChange}) for
        C{notifications/tasks}, whose params are L{taskView}C{(record)}.
    """

    log = Logger()

    def __init__(
        self, store: Any, clock: IReactorTime, *, ttl: float = DEFAULT_TASK_TTL,
        pollInterval: float = DEFAULT_POLL_INTERVAL,
        makeTaskID: Callable[[], str] = lambda: secrets.token_urlsafe(24),
        limit: Optional[int] = DEFAULT_TASK_LIMIT,
        lease: Optional[float] = None,
    ) -> None:
        self.store = store
        self.lease = lease if lease is not None else defaultLease(pollInterval)
        self.limit = limit
        self.clock = clock
        self.ttl = ttl
        self.pollInterval = pollInterval
        self.makeTaskID = makeTaskID
        self.listeners: List[Callable[[TaskRecord], None]] = []
        self._running: Dict[str, _Running] = {}
        self._poller: Optional[LoopingCall] = None
        self._idle: List[Deferred[None]] = []

    # -- the methods -----------------------------------------------------------

    def handlers(self) -> Dict[str, Callable[[Request, Any], Any]]:
        """
        The C{tasks/*} request handlers, by method, for the dispatcher's
        2026-07-28 table.
        """
        return {"tasks/get": self._get, "tasks/update": self._update, "tasks/cancel": self._cancel}

    def _taskID(self, request: Request, context: Any) -> str:
        if not optedIn(context.clientCapabilities):
            raise missingExtension()
        taskID = request.params.get("taskId")
        if not isinstance(taskID, str) or not taskID or len(taskID) > MAX_TASK_ID:
            raise ProtocolError(INVALID_PARAMS, f'{request.method} needs a string "taskId"')
        return taskID

    async def owned(self, taskID: str, principal: Principal, method: str = "") -> TaskRecord:
        """
        The live task C{taskID} of C{principal}.

        @raise ProtocolError: C{-32602} when it is unknown, expired, or
            someone else's (the same answer).
        """
        try:
            record: Optional[TaskRecord] = await self.read(taskID)
        except NoSuchTask:
            record = None
        if record is not None and not ownedBy(record, principal):
            self.log.warn(
                "Client {clientID} asked about a task of another principal",
                clientID=principal.clientID, subject=principal.subject,
            )
            audit("task.access", "denied", clientID=principal.clientID, subject=principal.subject,
                  method=method[:40] or None, reason="another principal's task")
            record = None
        if record is None:
            raise ProtocolError(INVALID_PARAMS, "Task not found", data={"taskId": taskID[:MAX_TASK_ID]})
        return record

    async def _get(self, request: Request, context: Any) -> Dict[str, Any]:
        taskID = self._taskID(request, context)
        return taskView(await self.owned(taskID, context.principal, request.method))

    async def _update(self, request: Request, context: Any) -> Dict[str, Any]:
        taskID = self._taskID(request, context)
        responses = parseInputResponses(request.params)
        await self.owned(taskID, context.principal, request.method)

        def answer(current: TaskRecord, now: float) -> Optional[TaskRecord]:
            # Checked against the record written, inside the compare-and-set.
            outstanding = current.payload.get("inputRequests") or {}
            for key, value in responses.items():
                asked = outstanding.get(key)
                if isinstance(asked, dict):
                    method = str(asked.get("method"))
                    problem = answerProblem(method, value)
                    if problem is not None:
                        raise ProtocolError(INVALID_PARAMS, (
                            f"inputResponses[{str(key)[:64]!r}] is not a {method[:64]} result: "
                            f"{problem}"))
            record = answered(current, responses, now)
            if record is not None:
                size = _jsonSize(record.payload.get("inputResponses"))
                if size > MAX_TASK_ANSWERS_BYTES:
                    raise ProtocolError(INVALID_PARAMS, (
                        f"inputResponses too large: the task keeps at most "
                        f"{MAX_TASK_ANSWERS_BYTES} bytes of answers"))
            return record

        record = await self._change(taskID, answer)
        if record is not None:
            self._poke(taskID, record)
        return {}

    async def _cancel(self, request: Request, context: Any) -> Dict[str, Any]:
        taskID = self._taskID(request, context)
        await self.owned(taskID, context.principal, request.method)
        record = await self._change(taskID, cancelled)
        if record is not None:
            self.log.info(
                "Task {taskID} ({tool}) cancelled by client {clientID}",
                taskID=taskID[:12], tool=record.name, clientID=context.principal.clientID,
                subject=context.principal.subject,
            )
            self._poke(taskID, record)
        return {}

    # -- the store -------------------------------------------------------------

    async def read(self, taskID: str) -> TaskRecord:
        """
        The live task C{taskID}, settled: one whose lease has passed is
        first written C{failed} (L{lapsed}; by compare-and-set, so of the
        instances reading it at once exactly one writes and announces it).
        Every reader of a task for a client reads it here.

        @raise NoSuchTask: it is unknown or expired.
        @raise StoreUnavailable: the store cannot answer.
        """
        for _ in range(MAX_ATTEMPTS):
            now = self.clock.seconds()
            record = await self.store.getTask(taskID, now)
            dead = lapsed(record, now)
            if dead is None:
                return record
            if await self.store.replaceTask(dead, now):
                self.log.warn(
                    "Task {taskID} ({tool}) failed: the instance running it stopped renewing "
                    "its lease {ago:.1f} s ago", taskID=taskID[:12], tool=record.name,
                    ago=now - record.leaseUntil, clientID=record.clientID, subject=record.subject,
                )
                self._notify(dead)
                return dead
        raise StoreUnavailable(f"task {taskID[:12]}: too many concurrent writes")

    async def create(self, principal: Principal, method: str, name: str) -> TaskRecord:
        """
        Create a C{working} task for C{principal}, durably (it is in the
        store when this returns).
        """
        now = self.clock.seconds()
        record = TaskRecord(
            taskID=self.makeTaskID(), subject=principal.subject, clientID=principal.clientID,
            method=method, name=name, status="working", createdAt=now, updatedAt=now,
            expiresAt=now + self.ttl, pollInterval=self.pollInterval, leaseUntil=now + self.lease,
        )
        try:
            await self.store.createTask(record, limit=self.limit)
        except TooManyTasks as e:
            audit("task.limit", "denied", clientID=principal.clientID, subject=principal.subject,
                  tool=name[:100], limit=e.limit)
            self.log.warn(
                "Client {clientID} refused a task of {tool}: at the task limit ({limit})",
                clientID=principal.clientID, subject=principal.subject, tool=name[:100],
                limit=e.limit,
            )
            raise ProtocolError(
                TOO_MANY_TASKS,
                f"Too many tasks: at most {e.limit} may be working or waiting for input at once"
                "; wait for one to finish, or cancel one",
                data={"limit": e.limit},
            ) from None
        self.log.info(
            "Task {taskID} started: {tool} for client {clientID}", taskID=record.taskID[:12],
            tool=name, clientID=principal.clientID, subject=principal.subject,
        )
        self._notify(record)
        return record

    async def _change(
        self, taskID: str, transition: Callable[[TaskRecord, float], Optional[TaskRecord]]
    ) -> Optional[TaskRecord]:
        """
        Apply C{transition} to the stored task (as L{read} settles it)
        with compare-and-set, reading again when another write came first.
        Returns the record written, or C{None} when the transition had
        nothing to change. The listeners hear of every write but a mere
        lease renewal.

        @raise ProtocolError: C{-32602} when the task has gone.
        @raise StoreUnavailable: the store cannot answer.
        """
        for _ in range(MAX_ATTEMPTS):
            try:
                current = await self.read(taskID)
                now = self.clock.seconds()
                record = transition(current, now)
                if record is None:
                    return None
                if await self.store.replaceTask(record, now):
                    if _visible(current, record):
                        self._notify(record)
                    return record
            except NoSuchTask:
                raise ProtocolError(INVALID_PARAMS, "Task not found") from None
        raise StoreUnavailable(f"task {taskID[:12]}: too many concurrent writes")

    def _notify(self, record: TaskRecord) -> None:
        for listener in list(self.listeners):
            try:
                listener(record)
            except Exception:
                self.log.failure("A task listener failed")

    # -- running ---------------------------------------------------------------

    def run(self, call: TaskCall, deferred: "Deferred[Dict[str, Any]]") -> None:
        """
        Watch the work of the task C{call} created: its questions, its
        cancellation, its outcome.
        """
        assert call.record is not None
        taskID = call.record.taskID
        running = _Running(call, deferred)
        self._running[taskID] = running
        def publish(requests: Dict[str, Any]) -> None:
            def unasked(failure: Failure) -> Failure:
                call.inputs.unasked(list(requests), (
                    "The question could not be asked: " + failure.getErrorMessage()[:200]))
                return failure

            d = Deferred.fromCoroutine(self._ask(taskID, requests))
            d.addErrback(unasked)
            d.addErrback(self._backgroundFailed,
                         "Publishing the questions of task {taskID} failed", taskID)

        call.inputs.publish = publish
        deferred.addBoth(self._ended, running, taskID)
        if self._poller is None:
            self._poller = LoopingCall(self._poll)
            self._poller.clock = self.clock
            self._poller.start(self.pollInterval, now=False).addErrback(
                lambda f: self.log.failure("The task poller stopped", f)
            )

    async def _ask(self, taskID: str, requests: Dict[str, Any]) -> None:
        record = await self._change(taskID, lambda r, now: asking(r, requests, now))
        if record is not None:
            self.log.info("Task {taskID} ({tool}) asks the client for input: {keys}",
                          taskID=taskID[:12], tool=record.name, keys=sorted(requests))

    def runningCount(self) -> int:
        """
        How many tasks this instance is running.
        """
        return len(self._running)

    def _backgroundFailed(self, failure: Failure, message: str, taskID: str) -> None:
        if failure.check(StoreUnavailable, ProtocolError):
            self.log.warn(message + ": {why}", taskID=taskID[:12], why=failure.getErrorMessage())
        else:
            self.log.failure(message, failure, taskID=taskID[:12])

    def _ended(self, outcome: Any, running: _Running, taskID: str) -> None:
        running.call.inputs.close()
        name = running.call.name
        if not isinstance(outcome, Failure):
            result = outcome
            size = _jsonSize(result)
            if size > MAX_TASK_RESULT_BYTES:
                self.log.warn("Task {taskID} ({tool}): its result is too large to keep ({size} bytes)",
                              taskID=taskID[:12], tool=name, size=size)
                tooLarge = {"code": INTERNAL_ERROR, "message": (
                    f"The result of the tool {name} is too large to keep "
                    f"({size} bytes; at most {MAX_TASK_RESULT_BYTES})")}
                running.outcome = lambda r, now: finished(r, now, error=tooLarge)
            else:
                running.outcome = lambda r, now: finished(r, now, result=result)
        elif outcome.check(ToolProtocolError):
            e = outcome.value
            error: Dict[str, Any] = {"code": e.code, "message": str(e.message)[:1000]}
            if e.data is not None and _jsonSize(e.data) <= MAX_TASK_RESULT_BYTES:
                error["data"] = e.data
            running.outcome = lambda r, now: finished(r, now, error=error)
        elif outcome.check(CancelledError):
            if running.cancelledByClient:
                running.outcome = cancelled
            else:
                why = ("The server stopped before the task finished" if running.stopping
                       else "The task was stopped")
                running.outcome = lambda r, now: finished(
                    r, now, error={"code": INTERNAL_ERROR, "message": why},
                )
        else:
            self.log.failure("Task {taskID} ({tool}) failed", outcome, taskID=taskID[:12], tool=name)
            running.outcome = lambda r, now: finished(
                r, now, error={"code": INTERNAL_ERROR, "message": f"The tool {name} failed"},
            )
        self._check(taskID)

    def _poll(self) -> None:
        for taskID in list(self._running):
            self._check(taskID)

    def hinted(self, taskID: str) -> None:
        """
        Another instance wrote the task C{taskID} (a hint relayed between
        instances): if it runs here, read it now (an answer or a
        cancellation acts at once) rather than at the next poll.
        """
        if taskID in self._running:
            self._check(taskID)

    def _poke(self, taskID: str, record: TaskRecord) -> None:
        """
        A change written on this instance to a task it may be running: act
        on it now rather than at the next poll.
        """
        if taskID in self._running:
            self._check(taskID, record)

    def _check(self, taskID: str, record: Optional[TaskRecord] = None) -> None:
        running = self._running.get(taskID)
        if running is None:
            return
        if running.checking:
            running.again = True
            return
        running.checking = True
        d = Deferred.fromCoroutine(self._checkOnce(taskID, running, record))
        d.addErrback(self._backgroundFailed, "Checking task {taskID} failed", taskID)
        d.addBoth(self._checked, taskID, running)

    def _checked(self, ignored: Any, taskID: str, running: _Running) -> None:
        running.checking = False
        if running.again:
            running.again = False
            self._check(taskID)

    async def _checkOnce(
        self, taskID: str, running: _Running, record: Optional[TaskRecord]
    ) -> None:
        if running.outcome is not None:
            try:
                written = await self._change(taskID, running.outcome)
            except ProtocolError:
                written = None  # expired meanwhile: nothing to write
            self._forget(taskID)
            status = (written.status if written is not None
                      else "cancelled" if running.cancelledByClient else "(already over)")
            self.log.info("Task {taskID} ({tool}) ended: {status}", taskID=taskID[:12],
                          tool=running.call.name, status=status)
            return
        if record is None or leaseLapsed(record, self.clock.seconds()):
            try:
                record = await self.read(taskID)
            except NoSuchTask:
                running.cancelledByClient = False
                running.deferred.cancel()
                return
        if record.status in TERMINAL_TASK_STATUSES:
            # cancelled by the client; or failed by another instance that
            # found this one's lease passed (this instance stalled)
            running.cancelledByClient = record.status == "cancelled"
            running.deferred.cancel()
            return
        answers = dict(record.payload.get("inputResponses") or {})
        mine = {k: v for k, v in answers.items() if k in running.call.inputs.waiting}
        if mine:
            keys = running.call.inputs.deliver(mine)
            await self._change(taskID, lambda r, now: taken(r, keys, now))
        if renewed(record, self.clock.seconds(), self.lease) is not None:
            lease = self.lease
            written = await self._change(taskID, lambda r, now: renewed(r, now, lease))
            if written is not None and written.status in TERMINAL_TASK_STATUSES:
                running.cancelledByClient = written.status == "cancelled"
                running.deferred.cancel()

    def _forget(self, taskID: str) -> None:
        self._running.pop(taskID, None)
        if not self._running:
            if self._poller is not None:
                poller, self._poller = self._poller, None
                if poller.running:
                    poller.stop()
            idle, self._idle = self._idle, []
            for d in idle:
                d.callback(None)

    def stop(self, timeout: float = 5.0) -> "Deferred[None]":
        """
        This instance is stopping: cancel the work of its running tasks,
        which end C{failed} ("The server stopped before the task
        finished") rather than stay C{working} until they expire. Fires
        once their outcome is written, or after C{timeout} seconds (the
        store may be gone).
        """
        if not self._running:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._idle.append(d)
        self.log.info("Stopping {count} running task(s)", count=len(self._running))
        for running in list(self._running.values()):
            running.stopping = True
            if not running.deferred.called:
                running.deferred.cancel()
        def giveUp() -> None:
            if not d.called:
                self.log.warn("{count} task(s) could not be marked as stopped",
                              count=len(self._running))
                self._idle.remove(d)
                d.callback(None)

        timer = self.clock.callLater(timeout, giveUp)

        def done(result: None) -> None:
            if timer.active():
                timer.cancel()

        d.addCallback(done)
        return d


def buildTaskManager(config: Any, store: Any, clock: IReactorTime) -> TaskManager:
    """
    The L{TaskManager} of a configuration (C{TASK_TTL},
    C{TASK_POLL_INTERVAL}, C{TASK_LIMIT}, C{TASK_LEASE}).
    """
    return TaskManager(
        store, clock,
        ttl=getattr(config, "taskTTL", DEFAULT_TASK_TTL),
        pollInterval=getattr(config, "taskPollInterval", DEFAULT_POLL_INTERVAL),
        limit=getattr(config, "taskLimit", DEFAULT_TASK_LIMIT),
        lease=getattr(config, "taskLease", None),
    )


class TaskService(Service):
    """
    Stops the tasks running on this instance when it stops (after HTTP has
    drained, before the store closes).
    """

    name = "tasks"

    def __init__(self, manager: TaskManager) -> None:
        self.manager = manager

    def stopService(self) -> "Deferred[None]":
        Service.stopService(self)
        return self.manager.stop()
