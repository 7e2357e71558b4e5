"""
The tasks extension (L{mcpsvc.mcp.tasks}): the pure transitions and the
wire shapes, then the methods through the transport on a L{Clock} and a
L{MemoryStore}, including two instances sharing one store.
"""

from __future__ import annotations

import json
from typing import Any, Dict, List, Mapping, Optional, Tuple

from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.task import Clock, deferLater
from twisted.logger import capturedLogs
from twisted.trial.unittest import SynchronousTestCase

from mcpsvc.config import Config
from mcpsvc.mcp.protocol import INTERNAL_ERROR
from mcpsvc.mcp.tasks import (
    MAX_TASK_ANSWERS_BYTES,
    MAX_TASK_RESULT_BYTES,
    TASKS_EXTENSION,
    LEASE_LAPSED_MESSAGE,
    TOO_MANY_TASKS,
    TaskManager,
    answered,
    asking,
    cancelled,
    createResult,
    finished,
    lapsed,
    leaseLapsed,
    renewed,
    taken,
    taskView,
)
from mcpsvc.mcp.test.helpers import MALLORY, MODERN_META, Harness
from mcpsvc.storage.interfaces import NoSuchTask, StoreUnavailable, TaskRecord
from mcpsvc.storage.memory import MemoryStore
from mcpsvc.storage.test.base import EPOCH, task
from mcpsvc.tools.interfaces import Tool, ToolContext, ToolProtocolError
from mcpsvc.tools.registry import InvalidTool, ToolRegistry

CAPS = "io.modelcontextprotocol/clientCapabilities"
EXT_META = dict(MODERN_META, **{CAPS: {"extensions": {TASKS_EXTENSION: {}}, "elicitation": {}}})
PLAIN_META = dict(MODERN_META, **{CAPS: {"elicitation": {}}})


def form(message: str) -> Dict[str, Any]:
    return {"message": message, "requestedSchema": {
        "type": "object", "properties": {"name": {"type": "string"}}}}


class TransitionTests(SynchronousTestCase):
    """
    The pure transitions and the wire shapes.
    """

    def test_createResultFlat(self) -> None:
        """
        A C{CreateTaskResult} is the task, flat, with C{resultType: "task"},
        integer C{ttlMs} and C{pollIntervalMs}, ISO 8601 times, and none of
        C{result}, C{error}, C{inputRequests} or C{requestState}.
        """
        record = task(createdAt=EPOCH, updatedAt=EPOCH + 1.5, expiresAt=EPOCH + 3600,
                      pollInterval=0.25)
        result = createResult(record)
        self.assertEqual(result, {
            "resultType": "task", "taskId": "task-1", "status": "working",
            "createdAt": "2023-11-14T22:13:20.000Z", "lastUpdatedAt": "2023-11-14T22:13:21.500Z",
            "ttlMs": 3_600_000, "pollIntervalMs": 250,
        })

    def test_viewByStatus(self) -> None:
        """
        C{tasks/get} inlines C{inputRequests} (input_required), C{result}
        (completed) or C{error} (failed), and nothing else.
        """
        payload = {"inputRequests": {"a": {"method": "elicitation/create", "params": {}}},
                   "result": {"content": []}, "error": {"code": 1, "message": "x"}}
        views = {status: taskView(task(status=status, payload=payload))
                 for status in ("working", "input_required", "completed", "failed", "cancelled")}
        extra = {s: sorted(set(v) & {"result", "error", "inputRequests", "resultType"})
                 for s, v in views.items()}
        self.assertEqual(extra, {"working": [], "input_required": ["inputRequests"],
                                 "completed": ["result"], "failed": ["error"], "cancelled": []})

    def test_askAnswerTake(self) -> None:
        """
        Questions make the task C{input_required}; a partial answer keeps
        it so with the rest outstanding; answers to unknown keys change
        nothing; the last answer makes it C{working}; the work takes the
        answers.
        """
        record = task(payload={})
        record = asking(record, {"a": {"method": "m"}, "b": {"method": "m"}}, EPOCH + 1)
        assert record is not None
        self.assertEqual((record.status, record.version), ("input_required", 2))
        self.assertIsNone(answered(record, {"zzz": {}}, EPOCH + 2))
        record = answered(record, {"a": {"x": 1}, "zzz": {}}, EPOCH + 2)
        assert record is not None
        self.assertEqual(record.status, "input_required")
        self.assertEqual(list(record.payload["inputRequests"]), ["b"])
        self.assertEqual(record.payload["inputResponses"], {"a": {"x": 1}})
        record = answered(record, {"b": {"y": 2}}, EPOCH + 3)
        assert record is not None
        self.assertEqual((record.status, record.payload["inputRequests"]), ("working", {}))
        record = taken(record, ["a", "b"], EPOCH + 4)
        assert record is not None
        self.assertEqual(record.payload["inputResponses"], {})
        self.assertEqual(record.payload["keys"], ["a", "b"])
        self.assertIsNone(taken(record, ["a"], EPOCH + 5))

    def test_terminalStays(self) -> None:
        """
        Nothing changes a task that is over: a cancellation wins over a
        result that comes later, and cancelling twice changes nothing.
        """
        record = cancelled(task(), EPOCH + 1)
        assert record is not None
        self.assertEqual((record.status, record.payload.get("inputRequests")), ("cancelled", None))
        self.assertIsNone(cancelled(record, EPOCH + 2))
        self.assertIsNone(finished(record, EPOCH + 2, result={"content": []}))
        self.assertIsNone(answered(record, {"a": {}}, EPOCH + 2))
        self.assertIsNone(asking(record, {"c": {}}, EPOCH + 2))
        failed = finished(task(), EPOCH + 1, error={"code": INTERNAL_ERROR, "message": "x"})
        assert failed is not None
        self.assertEqual((failed.status, failed.payload["error"]["code"]), ("failed", INTERNAL_ERROR))


class LeaseTransitionTests(SynchronousTestCase):
    """
    The pure lease transitions: L{leaseLapsed}, L{lapsed}, L{renewed}.
    """

    def test_lapsedOnlyWhenNotOverAndPassed(self) -> None:
        """
        A task is lapsed from its C{leaseUntil} on, only while not over,
        and never without a lease (C{0}).
        """
        leased = task(leaseUntil=EPOCH + 10)
        self.assertFalse(leaseLapsed(leased, EPOCH + 9.999))
        self.assertTrue(leaseLapsed(leased, EPOCH + 10))
        self.assertTrue(leaseLapsed(task(status="input_required", leaseUntil=EPOCH + 10),
                                    EPOCH + 11))
        self.assertFalse(leaseLapsed(task(), EPOCH + 10**6))
        for status in ("completed", "failed", "cancelled"):
            self.assertFalse(leaseLapsed(task(status=status, leaseUntil=EPOCH + 10), EPOCH + 11))
            self.assertIsNone(lapsed(task(status=status, leaseUntil=EPOCH + 10), EPOCH + 11))
        self.assertIsNone(lapsed(leased, EPOCH + 9))

    def test_lapsedIsFailed(self) -> None:
        """
        A lapsed task becomes C{failed} (version + 1, updated now), saying
        its instance stopped, its questions withdrawn.
        """
        record = task(status="input_required", leaseUntil=EPOCH + 10, version=4, payload={
            "inputRequests": {"a": {}}, "inputResponses": {"b": {}}, "keys": ["a", "b"]})
        dead = lapsed(record, EPOCH + 12)
        assert dead is not None
        self.assertEqual((dead.status, dead.version, dead.updatedAt),
                         ("failed", 5, EPOCH + 12))
        self.assertEqual(dead.statusMessage, LEASE_LAPSED_MESSAGE)
        self.assertEqual(dead.statusMessage, "The server instance running this task stopped")
        view = taskView(dead)
        self.assertEqual(view["error"], {"code": INTERNAL_ERROR, "message": LEASE_LAPSED_MESSAGE})
        self.assertNotIn("inputRequests", dead.payload)
        self.assertNotIn("inputResponses", dead.payload)

    def test_renewedAfterAThird(self) -> None:
        """
        A lease is renewed (a full lease from now, version + 1, C{updatedAt}
        kept: not a change the client sees) once a third of it has gone,
        not before; a task over is not renewed; a lease already passed is
        not renewed but failed.
        """
        record = task(leaseUntil=EPOCH + 30, updatedAt=EPOCH)
        self.assertIsNone(renewed(record, EPOCH + 9.9, 30))
        again = renewed(record, EPOCH + 10, 30)
        assert again is not None
        self.assertEqual((again.leaseUntil, again.version, again.updatedAt, again.status),
                         (EPOCH + 40, 2, EPOCH, "working"))
        self.assertIsNone(renewed(task(status="completed", leaseUntil=EPOCH + 30), EPOCH + 20, 30))
        late = renewed(record, EPOCH + 30, 30)
        assert late is not None
        self.assertEqual((late.status, late.statusMessage), ("failed", LEASE_LAPSED_MESSAGE))
        # no lease yet: one is taken
        fresh = renewed(task(), EPOCH + 1, 30)
        assert fresh is not None
        self.assertEqual(fresh.leaseUntil, EPOCH + 31)


class TaskInputsTests(SynchronousTestCase):
    """
    C{clientRequest} inside a task.
    """

    def test_publishTogetherAnswerEach(self) -> None:
        """
        Requests asked in one turn are published together on the next;
        each answer fires its own request; a key is never used twice; a
        method the client cannot answer fails at once.
        """
        from twisted.internet.task import Clock

        from mcpsvc.mcp.tasks import TaskInputs
        from mcpsvc.tools.interfaces import ClientRequestError

        clock = Clock()
        inputs = TaskInputs({"elicitation": {}}, clock)
        published: List[Dict[str, Any]] = []
        inputs.publish = published.append
        first = inputs.clientRequest("elicitation/create", form("a"), key="a")
        second = inputs.clientRequest("elicitation/create", form("b"))
        self.assertEqual(published, [])
        clock.advance(0)
        self.assertEqual([sorted(p) for p in published], [["a", "input-2"]])
        self.failureResultOf(inputs.clientRequest("elicitation/create", form("a"), key="a"),
                             ClientRequestError)
        self.failureResultOf(inputs.clientRequest("sampling/createMessage", {}), ClientRequestError)
        self.failureResultOf(inputs.clientRequest("tools/call", {}), ClientRequestError)
        self.assertEqual(inputs.deliver({"a": {"x": 1}, "zzz": {}}), ["a"])
        self.assertEqual(self.successResultOf(first), {"x": 1})
        self.assertNoResult(second)
        failures: List[Any] = []
        second.addErrback(failures.append)  # as the tool's await would
        inputs.close()
        self.assertEqual([f.type.__name__ for f in failures], ["CancelledError"])


class TaskHarness(Harness):
    """
    The transport harness with tools that run as tasks.

    @ivar jobs: the Deferreds of running C{job} calls.
    @ivar jobsCancelled: how many C{job} calls were cancelled.
    """

    def __init__(self, testCase: SynchronousTestCase, **kw: Any) -> None:
        self.jobs: List[Deferred[str]] = []
        self.jobsCancelled = 0
        super().__init__(testCase, **kw)

    def tools(self) -> List[Tool]:
        harness = self

        def job(arguments: Mapping[str, Any], context: ToolContext) -> "Deferred[str]":
            def cancel(d: Deferred[str]) -> None:
                harness.jobsCancelled += 1

            d: Deferred[str] = Deferred(cancel)
            harness.jobs.append(d)
            return d

        async def must(arguments: Mapping[str, Any], context: ToolContext) -> str:
            await deferLater(context.clock, 1)
            return "done"

        async def quiz(arguments: Mapping[str, Any], context: ToolContext) -> str:
            first, second = await gatherResults([
                context.clientRequest("elicitation/create", form("First?"), key="first"),
                context.clientRequest("elicitation/create", form("Second?"), key="second"),
            ], consumeErrors=True)
            return f"{first['content']['name']} and {second['content']['name']}"

        def bad(arguments: Mapping[str, Any], context: ToolContext) -> str:
            raise ToolProtocolError(INTERNAL_ERROR, "broken on purpose", {"why": "test"})

        async def composed(arguments: Mapping[str, Any], context: ToolContext) -> str:
            answer = await context.clientRequest("elicitation/create", form("Name?"), key="name")
            inTask = await context.startTask()
            await deferLater(context.clock, 1)
            return f"Hello, {answer['content']['name']} (task: {inTask})"

        obj = {"type": "object"}
        return super().tools() + [
            Tool(name="job", description="Runs until told.", inputSchema=obj, call=job,
                 taskSupport="optional"),
            Tool(name="must", description="Only as a task.", inputSchema=obj, call=must,
                 taskSupport="required"),
            Tool(name="quiz", description="Asks twice.", inputSchema=obj, call=quiz,
                 taskSupport="optional"),
            Tool(name="bad", description="A protocol error.", inputSchema=obj, call=bad,
                 taskSupport="optional"),
            Tool(name="composed", description="Asks, then becomes a task.", inputSchema=obj,
                 call=composed, taskSupport="optional", startsTaskItself=True),
        ]

    def rpc(
        self, method: str, params: Dict[str, Any], meta: Mapping[str, Any] = EXT_META,
        name: Optional[str] = None,
    ) -> Tuple[int, Dict[str, Any]]:
        params = dict(params, _meta=meta)
        if name is None:
            name = params.get("name") or params.get("taskId")
        d = self.begin("POST", self.call(1, method, params), self.modernHeaders(method, name))
        self.pump()  # a round asking for input ends on the next turn
        response, body = self.finish(d)
        return response.code, json.loads(body)

    def result(self, method: str, params: Dict[str, Any], **kw: Any) -> Dict[str, Any]:
        status, message = self.rpc(method, params, **kw)
        self.testCase.assertEqual(status, 200, message)
        self.testCase.assertIn("result", message)
        return message["result"]

    def error(self, method: str, params: Dict[str, Any], **kw: Any) -> Dict[str, Any]:
        status, message = self.rpc(method, params, **kw)
        self.testCase.assertIn("error", message, message)
        return message["error"]

    def start(self, name: str, arguments: Optional[Dict[str, Any]] = None) -> str:
        created = self.result("tools/call", {"name": name, "arguments": arguments or {}})
        self.testCase.assertEqual(created["resultType"], "task", created)
        return str(created["taskId"])

    def get(self, taskID: str) -> Dict[str, Any]:
        return self.result("tasks/get", {"taskId": taskID})


class TasksTests(SynchronousTestCase):
    """
    The tasks extension through the transport.
    """

    def setUp(self) -> None:
        self.h = TaskHarness(self)

    def test_taskLifecycle(self) -> None:
        """
        A task-supporting tool called by a client declaring the extension
        answers with a C{CreateTaskResult} once the task is in the store;
        C{tasks/get} shows it working, then completed with the result.
        """
        created = self.h.result("tools/call", {"name": "job", "arguments": {}})
        self.assertEqual((created["resultType"], created["status"]), ("task", "working"))
        self.assertEqual(created["ttlMs"], 3_600_000)
        self.assertEqual(created["pollIntervalMs"], 1000)
        self.assertNotIn("requestState", created)
        stored = self.successResultOf(self.h.store.getTask(created["taskId"], self.h.clock.seconds()))
        self.assertEqual((stored.subject, stored.clientID, stored.name), ("alice", "client-1", "job"))
        got = self.h.get(created["taskId"])
        self.assertEqual((got["status"], got["resultType"]), ("working", "complete"))
        self.h.jobs[0].callback("the answer")
        self.h.pump()
        got = self.h.get(created["taskId"])
        self.assertEqual(got["status"], "completed")
        self.assertEqual(got["result"]["content"], [{"type": "text", "text": "the answer"}])

    def test_withoutExtension(self) -> None:
        """
        Without the extension, an optional-task tool answers in the
        request, a required-task tool gets C{-32021} naming the extension,
        and the C{tasks/*} methods get C{-32021}.
        """
        result = self.h.result("tools/call", {"name": "echo", "arguments": {"text": "x"}},
                               meta=PLAIN_META)
        self.assertEqual(result["resultType"], "complete")
        status, message = self.h.rpc("tools/call", {"name": "must", "arguments": {}},
                                     meta=PLAIN_META)
        self.assertEqual(status, 400)
        self.assertEqual(message["error"]["code"], -32021)
        self.assertEqual(message["error"]["data"],
                         {"requiredCapabilities": {"extensions": {TASKS_EXTENSION: {}}}})
        d = self.h.begin("POST", self.h.call(1, "tools/call", {
            "name": "job", "arguments": {}, "_meta": PLAIN_META}),
            self.h.modernHeaders("tools/call", "job"))
        self.h.jobs[0].callback("in the request")
        response, body = self.h.finish(d)
        self.assertEqual(json.loads(body)["result"]["content"][0]["text"], "in the request")
        for method in ("tasks/get", "tasks/update", "tasks/cancel"):
            error = self.h.error(method, {"taskId": "x", "inputResponses": {}}, meta=PLAIN_META)
            self.assertEqual(error["code"], -32021, method)
        self.assertEqual(self.successResultOf(self.h.store.sweep(self.h.clock.seconds()))
                         .removed["tasks"], 0)

    def test_discoverOffersToDeclaringClients(self) -> None:
        """
        C{server/discover} lists the extension to a client that declares
        it, and only then; never a C{tasks} capability.
        """
        offered = self.h.result("server/discover", {})["capabilities"]
        self.assertEqual(offered["extensions"], {TASKS_EXTENSION: {}})
        self.assertNotIn("tasks", offered)
        plain = self.h.result("server/discover", {}, meta=PLAIN_META)["capabilities"]
        self.assertNotIn("extensions", plain)

    def test_boundToPrincipal(self) -> None:
        """
        Another principal's C{tasks/get}, C{tasks/update} and
        C{tasks/cancel} get the "not found" of an unknown id, and change
        nothing.
        """
        taskID = self.h.start("job")
        unknown = self.h.error("tasks/get", {"taskId": "no-such-task"})
        self.h.principal = MALLORY
        with capturedLogs() as events:
            for method in ("tasks/get", "tasks/update", "tasks/cancel"):
                error = self.h.error(method, {"taskId": taskID, "inputResponses": {}})
                self.assertEqual((error["code"], error["message"]),
                                 (unknown["code"], unknown["message"]), method)
        self.assertEqual(unknown["code"], -32602)
        self.assertTrue([e for e in events if "another principal" in e.get("log_format", "")])
        refusals = [e for e in events if e.get("action") == "task.access"]
        self.assertEqual([(e["outcome"], e["method"]) for e in refusals],
                         [("denied", m) for m in ("tasks/get", "tasks/update", "tasks/cancel")])
        self.assertNotIn(taskID, json.dumps([{k: str(v) for k, v in e.items()} for e in refusals]))
        self.assertEqual(self.h.jobsCancelled, 0)
        self.h.principal = Harness(self).principal
        self.assertEqual(self.h.get(taskID)["status"], "working")

    def test_cancel(self) -> None:
        """
        C{tasks/cancel} acknowledges with an empty result, marks the task
        cancelled and cancels the running work at once; cancelling again
        (a task over) is acknowledged the same way.
        """
        seen: List[TaskRecord] = []
        self.h.app.dispatcher.tasks.listeners.append(seen.append)
        taskID = self.h.start("job")
        ack = self.h.result("tasks/cancel", {"taskId": taskID})
        self.assertEqual(set(ack) - {"_meta"}, {"resultType"})
        # Every write reaches the listeners (notifications/tasks), once.
        self.assertEqual([(r.taskID, r.status) for r in seen],
                         [(taskID, "working"), (taskID, "cancelled")])
        self.assertEqual(self.h.jobsCancelled, 1)
        self.assertEqual(self.h.get(taskID)["status"], "cancelled")
        self.assertEqual(self.h.app.dispatcher.tasks.runningCount(), 0)
        ack = self.h.result("tasks/cancel", {"taskId": taskID})
        self.assertEqual(ack["resultType"], "complete")
        self.assertEqual(self.h.get(taskID)["status"], "cancelled")

    def test_inputInsideTask(self) -> None:
        """
        A task's questions appear in C{tasks/get} (C{input_required}); a
        partial C{tasks/update} leaves the other outstanding; the last
        answer resumes the work, which completes with both answers.
        """
        taskID = self.h.start("quiz")
        self.h.pump()
        got = self.h.get(taskID)
        self.assertEqual(got["status"], "input_required")
        self.assertEqual(sorted(got["inputRequests"]), ["first", "second"])
        self.assertEqual(got["inputRequests"]["first"]["method"], "elicitation/create")
        answer = {"action": "accept", "content": {"name": "Ada"}}
        ack = self.h.result("tasks/update", {"taskId": taskID, "inputResponses": {
            "first": answer, "unknown": {"x": 1}}})
        self.assertEqual(set(ack) - {"_meta"}, {"resultType"})
        got = self.h.get(taskID)
        self.assertEqual((got["status"], list(got["inputRequests"])), ("input_required", ["second"]))
        self.h.result("tasks/update", {"taskId": taskID, "inputResponses": {
            "second": {"action": "accept", "content": {"name": "Bob"}}}})
        self.h.pump()
        got = self.h.get(taskID)
        self.assertEqual(got["status"], "completed")
        self.assertEqual(got["result"]["content"][0]["text"], "Ada and Bob")

    def test_updateWrongShape(self) -> None:
        """
        An answer to an outstanding question that is not a result of the
        question's method is C{-32602} naming the key, and changes
        nothing; the right answer is then accepted.
        """
        taskID = self.h.start("quiz")
        self.h.pump()
        for answer in ({"action": "accept", "content": "Ada"}, {"name": "Ada"}, {"action": "ok"}):
            error = self.h.error("tasks/update", {"taskId": taskID, "inputResponses": {
                "first": answer}})
            self.assertEqual(error["code"], -32602, answer)
            self.assertIn("first", error["message"])
        got = self.h.get(taskID)
        self.assertEqual(sorted(got["inputRequests"]), ["first", "second"])
        self.h.result("tasks/update", {"taskId": taskID, "inputResponses": {
            "first": {"action": "accept", "content": {"name": "Ada"}}}})
        self.assertEqual(list(self.h.get(taskID)["inputRequests"]), ["second"])

    def test_oversizeResult(self) -> None:
        """
        A task whose result is larger than the store may keep ends
        C{failed} with an error saying so (the result is not stored).
        """
        taskID = self.h.start("job")
        self.h.jobs[0].callback("x" * (MAX_TASK_RESULT_BYTES + 10))
        self.h.pump()
        got = self.h.get(taskID)
        self.assertEqual(got["status"], "failed")
        self.assertIn("too large", got["error"]["message"])
        stored = self.successResultOf(self.h.store.getTask(taskID, self.h.clock.seconds()))
        self.assertLess(len(json.dumps(stored.payload)), 4096)

    def test_unstorableResult(self) -> None:
        """
        A result the store could not encode (nested deeper than the JSON
        encoder goes) ends the task C{failed}, not an unhandled error.
        """
        taskID = self.h.start("job")
        deep: Any = "x"
        for _ in range(5000):
            deep = [deep]
        from mcpsvc.tools.interfaces import ToolResult

        self.h.jobs[0].callback(ToolResult(content=[{"type": "text", "text": "deep"}],
                                           structuredContent={"deep": deep}))
        self.h.pump()
        got = self.h.get(taskID)
        self.assertEqual(got["status"], "failed")
        self.assertEqual(self.h.app.dispatcher.tasks.runningCount(), 0)

    def test_oversizeAnswers(self) -> None:
        """
        Answers are bounded too: C{tasks/update} answers whose encoding is
        larger than L{MAX_TASK_ANSWERS_BYTES} are C{-32602} and not stored.
        """
        taskID = self.h.start("quiz")
        self.h.pump()
        big = {"action": "accept", "content": {"name": "x" * (MAX_TASK_ANSWERS_BYTES + 10)}}
        error = self.h.error("tasks/update", {"taskId": taskID, "inputResponses": {"first": big}})
        self.assertEqual(error["code"], -32602)
        self.assertEqual(sorted(self.h.get(taskID)["inputRequests"]), ["first", "second"])

    def test_inputsNotLogged(self) -> None:
        """
        A task's arguments and the client's answers never reach the log
        (only the task id's prefix, the tool, the question keys).
        """
        with capturedLogs() as events:
            taskID = self.h.start("quiz", {"password": "hunter2-argument"})
            self.h.pump()
            for key in ("first", "second"):
                self.h.result("tasks/update", {"taskId": taskID, "inputResponses": {
                    key: {"action": "accept", "content": {"name": "hunter2-answer"}}}})
            self.h.pump()
        self.assertEqual(self.h.get(taskID)["status"], "completed")
        text = repr(events)
        self.assertNotIn("hunter2", text)
        self.assertNotIn(taskID, text)

    def test_protocolError(self) -> None:
        """
        A tool raising L{ToolProtocolError} ends its task C{failed} with
        that JSON-RPC error; in a request it is the request's error.
        """
        taskID = self.h.start("bad")
        self.h.pump()
        got = self.h.get(taskID)
        self.assertEqual(got["status"], "failed")
        self.assertEqual(got["error"], {"code": INTERNAL_ERROR, "message": "broken on purpose",
                                        "data": {"why": "test"}})
        self.assertNotIn("result", got)
        error = self.h.error("tools/call", {"name": "bad", "arguments": {}}, meta=PLAIN_META)
        self.assertEqual((error["code"], error["message"]), (INTERNAL_ERROR, "broken on purpose"))

    def test_composition(self) -> None:
        """
        A tool that starts its task itself asks through MRTR first (no
        task id); on the retry with the answer it becomes a task, whose
        result carries the answer.
        """
        first = self.h.result("tools/call", {"name": "composed", "arguments": {}})
        self.assertEqual(first["resultType"], "input_required")
        self.assertNotIn("taskId", first)
        second = self.h.result("tools/call", {
            "name": "composed", "arguments": {}, "requestState": first["requestState"],
            "inputResponses": {"name": {"action": "accept", "content": {"name": "Alice"}}}})
        self.assertEqual(second["resultType"], "task")
        self.assertNotIn("requestState", second)
        self.assertEqual(self.h.get(second["taskId"])["status"], "working")
        self.h.pump(1)
        got = self.h.get(second["taskId"])
        self.assertEqual(got["status"], "completed")
        self.assertEqual(got["result"]["content"][0]["text"], "Hello, Alice (task: True)")
        # Without the extension the same tool finishes in the request.
        d = self.h.begin("POST", self.h.call(1, "tools/call", {
            "name": "composed", "arguments": {}, "requestState": first["requestState"],
            "inputResponses": {"name": {"action": "accept", "content": {"name": "Bo"}}},
            "_meta": PLAIN_META}), self.h.modernHeaders("tools/call", "composed"))
        self.h.pump(1)
        response, body = self.h.finish(d)
        self.assertEqual(json.loads(body)["result"]["content"][0]["text"],
                         "Hello, Bo (task: False)")

    def test_routingHeader(self) -> None:
        """
        C{tasks/*} requests carry C{Mcp-Name: <taskId>}; a missing or
        different one is C{-32020} with HTTP 400.
        """
        taskID = self.h.start("job")
        for name in ("other", ""):
            status, message = self.h.rpc("tasks/get", {"taskId": taskID}, name=name)
            self.assertEqual((status, message["error"]["code"]), (400, -32020))
        status, message = self.h.json(
            self.h.call(1, "tasks/get", {"taskId": taskID, "_meta": EXT_META}),
            self.h.modernHeaders("tasks/get"))
        self.assertEqual((status, message["error"]["code"]), (400, -32020))

    def test_removedMethods(self) -> None:
        """
        C{tasks/result} and C{tasks/list} do not exist (C{-32601}).
        """
        for method in ("tasks/result", "tasks/list"):
            status, message = self.h.rpc(method, {"taskId": "x"}, name=None)
            self.assertEqual(message["error"]["code"], -32601, method)

    def test_badParams(self) -> None:
        """
        An overlong C{taskId}, or C{inputResponses} that are not an object
        of objects, are C{-32602}; a C{taskId} that is not a string cannot
        match its C{Mcp-Name} (C{-32020}).
        """
        error = self.h.error("tasks/get", {"taskId": "x" * 200})
        self.assertEqual(error["code"], -32602)
        status, message = self.h.rpc("tasks/get", {"taskId": 7}, name="7")
        self.assertEqual((status, message["error"]["code"]), (400, -32020))
        taskID = self.h.start("job")
        for responses in ([], {"a": 1}):
            error = self.h.error("tasks/update", {"taskId": taskID, "inputResponses": responses})
            self.assertEqual(error["code"], -32602)

    def test_expiry(self) -> None:
        """
        A task is forgotten C{TASK_TTL} seconds after its creation; a
        running one is then cancelled, and the sweep removes it.
        """
        h = TaskHarness(self, config=Config(taskTTL=30.0, taskPollInterval=5.0))
        taskID = h.start("job")
        for _ in range(5):  # polls every 5 s (renewing the lease)
            h.pump(5)
        self.assertEqual(h.get(taskID)["status"], "working")
        h.pump(5)
        self.assertEqual(h.error("tasks/get", {"taskId": taskID})["code"], -32602)
        self.assertEqual(h.jobsCancelled, 1)
        self.assertEqual(h.app.dispatcher.tasks.runningCount(), 0)

    def test_limitPerPrincipal(self) -> None:
        """
        A principal with C{TASK_LIMIT} live tasks is refused another with
        a JSON-RPC error naming the limit, a log line and an audit event,
        and the tool does not run; another principal is not affected; a
        task over (cancelled) frees its place.
        """
        h = TaskHarness(self, config=Config(taskLimit=2))
        first = h.start("job")
        h.start("job")
        with capturedLogs() as events:
            status, message = h.rpc("tools/call", {"name": "job", "arguments": {}})
        self.assertEqual(status, 200)
        self.assertEqual(message["error"]["code"], TOO_MANY_TASKS)
        self.assertIn("2", message["error"]["message"])
        self.assertEqual(message["error"]["data"], {"limit": 2})
        self.assertEqual(len(h.jobs), 2)
        self.assertTrue([e for e in events if "task limit" in e.get("log_format", "")])
        self.assertTrue([e for e in events if e.get("action") == "task.limit"])
        h.principal = MALLORY
        h.start("job")
        h.principal = Harness(self).principal
        h.result("tasks/cancel", {"taskId": first})
        h.start("job")
        self.assertEqual(len(h.jobs), 4)

    def test_limitWhenTheToolStartsItsTask(self) -> None:
        """
        A tool that starts its task itself, at the limit, gets the same
        C{-32029} error for its request, and nothing logs a traceback.
        """
        h = TaskHarness(self, config=Config(taskLimit=1))
        h.start("job")
        first = h.result("tools/call", {"name": "composed", "arguments": {}})
        with capturedLogs() as events:
            error = h.error("tools/call", {
                "name": "composed", "arguments": {}, "requestState": first["requestState"],
                "inputResponses": {"name": {"action": "accept", "content": {"name": "Alice"}}}})
            h.pump(1)
        self.assertEqual(error["code"], TOO_MANY_TASKS)
        self.assertEqual([e for e in events if e.get("log_failure") is not None], [])
        self.assertEqual(h.app.dispatcher.tasks.runningCount(), 1)
        # The store down: 503 (fail closed), no traceback either.
        from twisted.internet.defer import fail

        h.store.createTask = lambda *a, **kw: fail(StoreUnavailable("down"))  # type: ignore
        with capturedLogs() as events:
            status, message = h.rpc("tools/call", {
                "name": "composed", "arguments": {}, "requestState": first["requestState"],
                "inputResponses": {"name": {"action": "accept", "content": {"name": "Alice"}}}})
        self.assertEqual(status, 503, message)
        self.assertEqual([e for e in events if e.get("log_failure") is not None], [])

    def test_storeDownMidTask(self) -> None:
        """
        When the store goes down while a task runs, its questions cannot be
        published: the tool's requests fail (it is not left waiting for
        answers nobody can see); its outcome is written once the store is
        back (the poll retries it), and nothing is lost or left working.
        """
        from twisted.internet.defer import fail

        h = self.h
        real = (h.store.getTask, h.store.replaceTask)

        def down(*a: Any, **kw: Any) -> Any:
            return fail(StoreUnavailable("down"))

        h.store.getTask = down  # type: ignore[method-assign]
        h.store.replaceTask = down  # type: ignore[method-assign]
        with capturedLogs() as events:
            taskID = h.start("quiz")  # created; its questions cannot be published
            h.pump(1)
        self.assertTrue([e for e in events if "Publishing" in e.get("log_format", "")])
        self.assertEqual(h.app.dispatcher.tasks.runningCount(), 1)  # outcome not written yet
        for method, params in (("tasks/get", {}), ("tasks/cancel", {}),
                               ("tasks/update", {"inputResponses": {}})):
            status, message = h.rpc(method, dict(params, taskId=taskID))
            self.assertEqual(status, 503, (method, message))
            self.assertIn("error", message)
        h.store.getTask, h.store.replaceTask = real  # type: ignore[method-assign]
        h.pump(1)
        got = h.get(taskID)
        self.assertEqual(got["status"], "completed")
        self.assertTrue(got["result"]["isError"])
        self.assertIn("could not be asked", got["result"]["content"][0]["text"])
        self.assertEqual(h.app.dispatcher.tasks.runningCount(), 0)

    def test_storeDownAtCreation(self) -> None:
        """
        When the store cannot create the task, the call fails closed
        (503) and the tool does not run.
        """
        def down(record: TaskRecord, limit: Any = None) -> Any:
            from twisted.internet.defer import fail

            return fail(StoreUnavailable("down"))

        self.h.store.createTask = down  # type: ignore[method-assign]
        status, message = self.h.rpc("tools/call", {"name": "job", "arguments": {}})
        self.assertEqual(status, 503)
        self.assertEqual(self.h.jobs, [])


class StopTests(SynchronousTestCase):
    """
    Stopping an instance ends the tasks running on it.
    """

    def test_stopMarksFailed(self) -> None:
        """
        The running work is cancelled and its task ends C{failed} with a
        message saying the server stopped; the service's stop waits for
        that write.
        """
        from mcpsvc.mcp.tasks import TaskService

        h = TaskHarness(self)
        taskID = h.start("job")
        service = TaskService(h.app.dispatcher.tasks)
        service.startService()
        with capturedLogs():
            self.successResultOf(service.stopService())
        self.assertEqual(h.jobsCancelled, 1)
        got = h.get(taskID)
        self.assertEqual(got["status"], "failed")
        self.assertEqual(got["error"]["message"], "The server stopped before the task finished")
        self.successResultOf(h.app.dispatcher.tasks.stop())

    def test_stopStoreDown(self) -> None:
        """
        When the outcome cannot be written, the stop still ends after its
        timeout, and says so.
        """
        h = TaskHarness(self)
        h.start("job")

        def down(record: TaskRecord, now: float) -> Any:
            from twisted.internet.defer import fail

            return fail(StoreUnavailable("down"))

        h.store.replaceTask = down  # type: ignore[method-assign]
        with capturedLogs() as events:
            d = h.app.dispatcher.tasks.stop(timeout=5)
            self.assertNoResult(d)
            h.clock.advance(5)
            self.successResultOf(d)
        self.assertTrue([e for e in events if "could not be marked" in e.get("log_format", "")])


class TwoInstancesTests(SynchronousTestCase):
    """
    Two instances sharing one store: the task runs where it started; any
    instance reads it; a cancellation or an answer written by the other
    reaches the work within one poll interval.
    """

    def setUp(self) -> None:
        self.a = TaskHarness(self, config=Config(taskPollInterval=2.0))
        self.b = TaskHarness(self, config=Config(taskPollInterval=2.0),
                             store=self.a.store, clock=self.a.clock)

    def test_cancelFromOther(self) -> None:
        taskID = self.a.start("job")
        self.assertEqual(self.b.get(taskID)["status"], "working")
        self.b.result("tasks/cancel", {"taskId": taskID})
        self.assertEqual(self.a.get(taskID)["status"], "cancelled")
        self.assertEqual(self.a.jobsCancelled, 0)
        self.a.pump(1.9)
        self.assertEqual(self.a.jobsCancelled, 0)
        self.a.pump(0.1)
        self.assertEqual(self.a.jobsCancelled, 1)
        self.assertEqual(self.a.app.dispatcher.tasks.runningCount(), 0)
        self.assertEqual(self.b.get(taskID)["status"], "cancelled")

    def test_answerFromOther(self) -> None:
        taskID = self.a.start("quiz")
        self.a.pump()
        self.assertEqual(self.b.get(taskID)["status"], "input_required")
        answer = {"action": "accept", "content": {"name": "X"}}
        self.b.result("tasks/update", {"taskId": taskID, "inputResponses": {
            "first": answer, "second": answer}})
        self.assertEqual(self.b.get(taskID)["status"], "working")
        self.a.pump(2)
        got = self.b.get(taskID)
        self.assertEqual(got["status"], "completed")
        self.assertEqual(got["result"]["content"][0]["text"], "X and X")
        stored = self.successResultOf(self.a.store.getTask(taskID, self.a.clock.seconds()))
        self.assertNotIn("inputResponses", stored.payload)


class LeaseTests(SynchronousTestCase):
    """
    Two instances sharing one store, each on its own clock. Instance A
    runs the task; a frozen clock on A is an A that died (C{kill -9}): it
    never polls again, so never renews the lease. B's clock goes on.
    """

    def setUp(self) -> None:
        config = Config(taskPollInterval=1.0, taskLease=6.0)
        self.a = TaskHarness(self, config=config)
        clockB = Clock()
        clockB.advance(self.a.clock.seconds())
        self.b = TaskHarness(self, config=config, store=self.a.store, clock=clockB)

    def pumpBoth(self, seconds: float, step: float = 1.0) -> None:
        for _ in range(int(seconds / step)):
            self.a.pump(step)
            self.b.pump(step)

    def test_renewedWhileRunning(self) -> None:
        """
        While A runs the task it renews the lease from its poll, once a
        third of it has gone (one write per 2 s here, not per poll), and
        nobody notices: B sees it working long past the first lease; the
        renewals change neither C{lastUpdatedAt} nor the notifications.
        """
        taskID = self.a.start("job")
        first = self.successResultOf(self.a.store.getTask(taskID, self.a.clock.seconds()))
        self.assertEqual(first.leaseUntil, self.a.clock.seconds() + 6.0)
        written: List[TaskRecord] = []
        self.a.app.dispatcher.tasks.listeners.append(written.append)
        self.pumpBoth(20)
        record = self.successResultOf(self.a.store.getTask(taskID, self.a.clock.seconds()))
        self.assertEqual(record.status, "working")
        self.assertEqual(record.version, 1 + 10)  # renewed every 2 s for 20 s
        self.assertGreater(record.leaseUntil, self.b.clock.seconds() + 3)
        self.assertEqual(written, [])
        got = self.b.get(taskID)
        self.assertEqual((got["status"], got["lastUpdatedAt"]),
                         ("working", createResult(first)["lastUpdatedAt"]))
        self.assertEqual(self.a.jobsCancelled, 0)

    def test_deadInstanceFailedAfterLease(self) -> None:
        """
        A stops (its clock frozen): B sees the task working until the lease
        passes, then C{failed}, saying the instance stopped; one write
        (the version goes up once however many read it), with a log line;
        a stream on B following the task hears it.
        """
        taskID = self.a.start("job")
        self.b.pump(5.9)
        self.assertEqual(self.b.get(taskID)["status"], "working")
        response, chunks, done = self.b.open("POST", self.b.call(7, "subscriptions/listen", {
            "_meta": EXT_META, "notifications": {"taskIds": [taskID]}}),
            self.b.modernHeaders("subscriptions/listen"))
        self.b.pump(0.1)
        with capturedLogs() as events:
            got = self.b.get(taskID)
        self.assertEqual(got["status"], "failed")
        self.assertEqual(got["statusMessage"], "The server instance running this task stopped")
        self.assertEqual(got["error"], {"code": INTERNAL_ERROR, "message": LEASE_LAPSED_MESSAGE})
        [line] = [e for e in events if "renewing its lease" in e.get("log_format", "")]
        self.assertEqual(line["taskID"], taskID[:12])
        version = self.successResultOf(self.b.store.getTask(taskID, self.b.clock.seconds())).version
        self.assertEqual(self.b.get(taskID), got)
        self.b.result("tasks/cancel", {"taskId": taskID})  # over already: nothing changes
        self.assertEqual(self.b.get(taskID), got)
        self.assertEqual(self.successResultOf(
            self.b.store.getTask(taskID, self.b.clock.seconds())).version, version)
        from mcpsvc.mcp.test.helpers import parseSSE

        statuses = [m["params"]["status"] for m in parseSSE(b"".join(chunks))
                    if m.get("method") == "notifications/tasks"]
        self.assertEqual(statuses, ["working", "failed"])

    def test_listenSettlesLapsed(self) -> None:
        """
        A stream opened on B after the lease passed gets the task
        C{failed} as its current state.
        """
        taskID = self.a.start("job")
        self.b.pump(7)
        response, chunks, done = self.b.open("POST", self.b.call(7, "subscriptions/listen", {
            "_meta": EXT_META, "notifications": {"taskIds": [taskID]}}),
            self.b.modernHeaders("subscriptions/listen"))
        from mcpsvc.mcp.test.helpers import parseSSE

        [current] = [m for m in parseSSE(b"".join(chunks)) if m.get("method") == "notifications/tasks"]
        self.assertEqual((current["params"]["status"], current["params"]["statusMessage"]),
                         ("failed", LEASE_LAPSED_MESSAGE))

    def test_updateAndCancelSeeFailed(self) -> None:
        """
        C{tasks/update} on a lapsed task waiting for input answers nothing
        (the task is failed, its questions withdrawn); C{tasks/cancel}
        leaves it failed.
        """
        taskID = self.a.start("quiz")
        self.a.pump()
        self.assertEqual(self.b.get(taskID)["status"], "input_required")
        self.b.pump(6)
        answer = {"action": "accept", "content": {"name": "X"}}
        self.b.result("tasks/update", {"taskId": taskID, "inputResponses": {"first": answer}})
        got = self.b.get(taskID)
        self.assertEqual((got["status"], got["statusMessage"]), ("failed", LEASE_LAPSED_MESSAGE))
        self.assertNotIn("inputRequests", got)
        other = self.a.start("job")
        self.b.pump(6)
        self.b.result("tasks/cancel", {"taskId": other})
        self.assertEqual(self.b.get(other)["status"], "failed")

    def test_limitFreedAfterLease(self) -> None:
        """
        A dead instance's tasks stop counting against C{TASK_LIMIT} once
        their lease has passed, even before anyone reads them.
        """
        config = Config(taskPollInterval=1.0, taskLease=6.0, taskLimit=1)
        a = TaskHarness(self, config=config)
        clockB = Clock()
        clockB.advance(a.clock.seconds())
        b = TaskHarness(self, config=config, store=a.store, clock=clockB)
        a.start("job")
        b.pump(5)
        self.assertEqual(b.error("tools/call", {"name": "job", "arguments": {}})["code"],
                         TOO_MANY_TASKS)
        b.pump(1)
        b.start("job")

    def test_stalledInstanceStopsItsWork(self) -> None:
        """
        An instance that stalled past its lease (its task reported failed
        by another) does not renew it back to life: its next poll cancels
        the work, and the task stays failed.
        """
        taskID = self.a.start("job")
        self.b.pump(7)
        self.assertEqual(self.b.get(taskID)["status"], "failed")
        self.a.pump(7)  # A wakes up: one late poll
        self.assertEqual(self.a.jobsCancelled, 1)
        self.assertEqual(self.a.app.dispatcher.tasks.runningCount(), 0)
        self.assertEqual(self.b.get(taskID)["statusMessage"], LEASE_LAPSED_MESSAGE)

    def test_ownPollSettlesLapsed(self) -> None:
        """
        The running instance itself, late with its renewal (a long stall
        with nobody else reading), finds the lease passed: it writes the
        task failed and cancels the work rather than renew.
        """
        taskID = self.a.start("job")
        self.a.pump(7)
        self.assertEqual(self.a.jobsCancelled, 1)
        self.assertEqual(self.b.get(taskID)["status"], "failed")

    def test_exactlyOneWriter(self) -> None:
        """
        Two managers settling the same lapsed task at once: one write wins,
        the other reads the result; both answer failed.
        """
        store = self.a.store
        clock = self.b.clock
        managers = [TaskManager(store, clock, pollInterval=1.0, lease=6.0) for _ in range(2)]
        heard: List[List[TaskRecord]] = [[], []]
        for manager, log in zip(managers, heard):
            manager.listeners.append(log.append)
        taskID = self.a.start("job")
        clock.advance(6)
        results = [self.successResultOf(Deferred.fromCoroutine(m.read(taskID))) for m in managers]
        self.assertEqual([r.status for r in results], ["failed", "failed"])
        self.assertEqual(results[0], results[1])
        self.assertEqual([len(h) for h in heard], [1, 0])


class RegistryTaskSupportTests(SynchronousTestCase):
    def test_invalidDeclarations(self) -> None:
        """
        The registry refuses an unknown C{taskSupport}, and
        C{startsTaskItself} on a tool that cannot be a task.
        """
        from twisted.internet.task import Clock

        obj = {"type": "object"}
        for kw in ({"taskSupport": "sometimes"}, {"startsTaskItself": True}):
            tool = Tool(name="t", description="d", inputSchema=obj, call=lambda a, c: "", **kw)
            self.assertRaises(InvalidTool, ToolRegistry, [tool], clock=Clock())


class _Link:
    """
    Stands for the Redis relay between two instances' change buses: what
    one publishes, the other receives (as the channel message).
    """

    def __init__(self) -> None:
        self.to: Any = None
        self.messages: List[str] = []

    def publish(self, message: str) -> None:
        self.messages.append(message)
        self.to.received(message)


class TaskNotificationTests(SynchronousTestCase):
    """
    C{notifications/tasks} on C{subscriptions/listen} streams (SEP-2663).
    """

    def setUp(self) -> None:
        self.h = TaskHarness(self)

    def listen(
        self, h: TaskHarness, taskIDs: List[str], id: Any = 41, meta: Mapping[str, Any] = EXT_META,
    ) -> Tuple[Any, List[bytes], "Deferred[None]"]:
        return h.open("POST", h.call(id, "subscriptions/listen", {
            "_meta": meta, "notifications": {"taskIds": taskIDs}}),
            h.modernHeaders("subscriptions/listen"))

    def messages(self, chunks: List[bytes]) -> List[Dict[str, Any]]:
        from mcpsvc.mcp.test.helpers import parseSSE

        return parseSSE(b"".join(chunks))

    def test_statusChanges(self) -> None:
        """
        The acknowledgement names the followed task; the stream then gets
        the task's current state, and a C{notifications/tasks} at each
        change, each tagged with the subscription id and equal to what
        C{tasks/get} answers at that moment (the result inlined).
        """
        from mcpsvc.mcp.subscriptions import META_SUBSCRIPTION_ID

        taskID = self.h.start("job")
        response, chunks, done = self.listen(self.h, [taskID])
        self.assertEqual(response.code, 200)
        ack, current = self.messages(chunks)
        self.assertEqual(ack["params"]["notifications"], {"taskIds": [taskID]})
        self.assertEqual(current["method"], "notifications/tasks")
        self.assertEqual(current["params"]["status"], "working")
        self.assertEqual(current["params"]["_meta"], {META_SUBSCRIPTION_ID: 41})
        self.h.jobs[0].callback("done")
        self.h.pump()
        [completed] = self.messages(chunks)[2:]
        view = self.h.get(taskID)
        del view["resultType"]
        self.assertEqual(completed["params"], dict(view, _meta={META_SUBSCRIPTION_ID: 41}))
        self.assertEqual(completed["params"]["status"], "completed")
        taskID = self.h.start("quiz")
        response, chunks, done = self.listen(self.h, [taskID], id="s2")
        ack, asking = self.messages(chunks)
        self.assertEqual(asking["params"]["status"], "input_required")
        self.assertEqual(sorted(asking["params"]["inputRequests"]), ["first", "second"])
        answer = {"action": "accept", "content": {"name": "Y"}}
        self.h.result("tasks/update", {"taskId": taskID, "inputResponses": {
            "first": answer, "second": answer}})
        self.h.pump()
        statuses = [m["params"]["status"] for m in self.messages(chunks)[3:]]
        self.assertEqual(statuses[0], "working")
        self.assertEqual(statuses[-1], "completed")
        last = self.messages(chunks)[-1]["params"]
        self.assertEqual(last["result"]["content"], [{"type": "text", "text": "Y and Y"}])
        self.assertEqual(last["_meta"], {META_SUBSCRIPTION_ID: "s2"})
        self.assertNoResult(done)

    def test_onlyTheOwnersTasks(self) -> None:
        """
        Another principal naming a task gets no notification for it: the
        acknowledgement leaves it out, as it leaves out an unknown id, and
        its changes never reach that stream.
        """
        taskID = self.h.start("job")
        self.h.principal = MALLORY
        with capturedLogs() as events:
            response, chunks, done = self.listen(self.h, [taskID, "no-such-task"])
        self.assertTrue([e for e in events if "another principal" in e.get("log_format", "")])
        [ack] = self.messages(chunks)
        self.assertEqual(ack["params"]["notifications"], {})
        self.h.jobs[0].callback("done")
        self.h.pump()
        self.assertEqual(len(self.messages(chunks)), 1)
        self.assertEqual(self.h.app.subscriptions.following(taskID), 0)

    def test_principalCheckedAtDelivery(self) -> None:
        """
        At each delivery the owner is checked again on the record read
        from the store: a record that names another principal is not sent.
        """
        from mcpsvc.mcp.subscriptions import Change

        taskID = self.h.start("job")
        response, chunks, done = self.listen(self.h, [taskID])
        self.assertEqual(len(self.messages(chunks)), 2)
        now = self.h.clock.seconds()
        stored = self.successResultOf(self.h.store.getTask(taskID, now))
        import attrs

        self.assertTrue(self.successResultOf(self.h.store.replaceTask(
            attrs.evolve(stored, subject="mallory", version=stored.version + 1), now)))
        sent = self.successResultOf(Deferred.fromCoroutine(
            self.h.app.subscriptions.deliverTask(Change("task", taskID=taskID))))
        self.assertEqual(sent, 0)
        self.assertEqual(len(self.messages(chunks)), 2)

    def test_neverOlder(self) -> None:
        """
        A hint read after a newer version was sent sends nothing: a stream
        never goes back to an older state, nor repeats one.
        """
        from mcpsvc.mcp.subscriptions import Change

        taskID = self.h.start("job")
        response, chunks, done = self.listen(self.h, [taskID])
        old = self.successResultOf(self.h.store.getTask(taskID, self.h.clock.seconds()))
        self.h.jobs[0].callback("done")
        self.h.pump()
        self.assertEqual(self.messages(chunks)[-1]["params"]["status"], "completed")
        count = len(self.messages(chunks))
        subscriptions = self.h.app.subscriptions
        for change in (Change("task", taskID=taskID), Change("task", taskID=taskID, record=old)):
            self.assertEqual(self.successResultOf(
                Deferred.fromCoroutine(subscriptions.deliverTask(change))), 0)
        self.assertEqual(len(self.messages(chunks)), count)

    def test_needsTheExtension(self) -> None:
        """
        C{taskIds} from a request that does not declare the extension is
        C{-32021}; more than 100 ids, or ids that are not strings, are
        C{-32602}.
        """
        taskID = self.h.start("job")
        response, chunks, done = self.listen(self.h, [taskID], meta=PLAIN_META)
        self.assertEqual(response.code, 400)
        self.successResultOf(done)
        error = json.loads(b"".join(chunks))["error"]
        self.assertEqual(error["code"], -32021)
        self.assertEqual(error["data"]["requiredCapabilities"],
                         {"extensions": {TASKS_EXTENSION: {}}})
        for ids in (["t"] * 101, [1], [""], ["x" * 129]):
            response, chunks, done = self.listen(self.h, ids)  # type: ignore[arg-type]
            self.successResultOf(done)
            self.assertEqual(json.loads(b"".join(chunks))["error"]["code"], -32602, ids)

    def test_needsTheTasksScope(self) -> None:
        """
        Following tasks needs the scope of C{tasks/get} (C{mcp:tools}), on
        top of C{mcp:read}: a token without it gets the 403
        C{insufficient_scope} challenge; without C{taskIds}, C{mcp:read}
        is enough.
        """
        from mcpsvc.principal import Principal

        taskID = self.h.start("job")
        self.h.principal = Principal(subject="alice", clientID="client-1",
                                     scopes=frozenset({"mcp:read"}))
        response, chunks, done = self.listen(self.h, [taskID])
        self.assertEqual(response.code, 403)
        self.assertIn("insufficient_scope",
                      response.headers.getRawHeaders("www-authenticate")[0])
        response, chunks, done = self.listen(self.h, [])
        self.assertEqual(response.code, 200)

    def test_storeDown(self) -> None:
        """
        When the store cannot answer, a listen naming tasks fails closed
        (503); a hint that cannot be read is dropped with a warning, and
        the next change of the task is delivered.
        """
        from twisted.internet.defer import fail

        from mcpsvc.mcp.subscriptions import Change

        taskID = self.h.start("job")
        response, chunks, done = self.listen(self.h, [taskID])
        getTask = self.h.store.getTask
        self.h.store.getTask = lambda *a: fail(StoreUnavailable("down"))  # type: ignore
        failed, _, failedDone = self.listen(self.h, [taskID], id=42)
        self.assertEqual(failed.code, 503)
        with capturedLogs() as events:
            sent = self.successResultOf(Deferred.fromCoroutine(
                self.h.app.subscriptions.deliverTask(Change("task", taskID=taskID))))
        self.assertEqual(sent, 0)
        self.assertTrue([e for e in events if "Could not read task" in e.get("log_format", "")])
        self.h.store.getTask = getTask  # type: ignore[method-assign]
        self.h.jobs[0].callback("done")
        self.h.pump()
        self.assertEqual(self.messages(chunks)[-1]["params"]["status"], "completed")

    def test_closedStreamForgotten(self) -> None:
        """
        A stream that ends stops following its tasks.
        """
        taskID = self.h.start("job")
        response, chunks, done = self.listen(self.h, [taskID])
        self.assertEqual(self.h.app.subscriptions.following(taskID), 1)
        self.h.app.subscriptions.closeAll()
        self.h.pump()
        self.successResultOf(done)
        self.assertEqual(self.h.app.subscriptions.following(taskID), 0)
        self.h.jobs[0].callback("done")
        self.h.pump()


class TaskNotificationsAcrossInstancesTests(SynchronousTestCase):
    """
    Two instances sharing a store, their change buses linked as the Redis
    relay links them: a status change written on either reaches a stream
    on the other, read from the store.
    """

    def setUp(self) -> None:
        from mcpsvc.mcp.changes import ChangeBus

        self.busA, self.busB = ChangeBus("a"), ChangeBus("b")
        self.a = TaskHarness(self, config=Config(taskPollInterval=2.0), changes=self.busA)
        self.b = TaskHarness(self, config=Config(taskPollInterval=2.0), changes=self.busB,
                             store=self.a.store, clock=self.a.clock)
        self.busA.subscribe(self.a.app.changed)
        self.busB.subscribe(self.b.app.changed)
        toB, toA = _Link(), _Link()
        toB.to, toA.to = self.busB, self.busA
        self.busA.relay, self.busB.relay = toB, toA  # type: ignore[assignment]
        self.toB = toB

    def listenOn(self, h: TaskHarness, taskID: str) -> List[bytes]:
        response, chunks, done = h.open("POST", h.call(7, "subscriptions/listen", {
            "_meta": EXT_META, "notifications": {"taskIds": [taskID]}}),
            h.modernHeaders("subscriptions/listen"))
        self.assertEqual(response.code, 200)
        return chunks

    def statuses(self, chunks: List[bytes]) -> List[str]:
        from mcpsvc.mcp.test.helpers import parseSSE

        return [m["params"]["status"] for m in parseSSE(b"".join(chunks))
                if m.get("method") == "notifications/tasks"]

    def test_finishedOnOther(self) -> None:
        """
        A task running on A completes: a stream on B gets the completed
        task, result inlined; the relayed message names the task only.
        """
        taskID = self.a.start("job")
        chunks = self.listenOn(self.b, taskID)
        self.a.jobs[0].callback("from A")
        self.a.pump()
        self.b.pump()
        self.assertEqual(self.statuses(chunks), ["working", "completed"])
        self.assertEqual(json.loads(self.toB.messages[-1]),
                         {"v": 1, "origin": "a", "kind": "task", "task": taskID})

    def test_cancelOnOther(self) -> None:
        """
        C{tasks/cancel} received by B: streams on A and on B hear
        C{cancelled}, and the work on A is cancelled at once (the hint),
        not at its next poll.
        """
        taskID = self.a.start("job")
        onA, onB = self.listenOn(self.a, taskID), self.listenOn(self.b, taskID)
        self.b.result("tasks/cancel", {"taskId": taskID})
        self.assertEqual(self.a.jobsCancelled, 1)
        self.a.pump()
        self.b.pump()
        self.assertEqual(self.statuses(onA), ["working", "cancelled"])
        self.assertEqual(self.statuses(onB), ["working", "cancelled"])
        self.assertEqual(self.a.app.dispatcher.tasks.runningCount(), 0)
