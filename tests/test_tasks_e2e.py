"""
The tasks extension across instances: two C{twistd -n mcpsvc} processes
sharing one real C{redis-server}, on loopback. A task started on A is read
and cancelled on B, and the work running on A stops (A sees the
cancellation at its next poll of the store); a task waiting for input on
A is answered through B and completes on A. Task status notifications
(C{notifications/tasks} on C{subscriptions/listen}) cross instances
through the Redis change relay: a stream on B hears a task running on A
change, and a cancellation received by B reaches streams on both and the
work on A at once (not at A's next poll). An instance killed outright
(C{kill -9}) stops renewing its tasks' leases: once the lease passes, B
reports its task failed and the task no longer counts against
C{TASK_LIMIT}.
"""

from __future__ import annotations

import os
import time
from typing import Any, Dict, List, Optional, Tuple

from twisted.trial.unittest import SynchronousTestCase

from mcpsvc.testing.redis import RedisServer, freePort
from tests.flow import http
from tests.process import SECRET, McpsvcProcess
from tests.test_subscriptions_e2e import SSEClient

EXTENSION = "io.modelcontextprotocol/tasks"
META = {
    "io.modelcontextprotocol/protocolVersion": "2026-07-28",
    "io.modelcontextprotocol/clientCapabilities": {"extensions": {EXTENSION: {}},
                                                   "elicitation": {}},
    "io.modelcontextprotocol/clientInfo": {"name": "e2e", "version": "1"},
}


def rpc(base: str, method: str, params: Dict[str, Any], name: Optional[str] = None) -> Tuple[int, Any]:
    """
    One 2026-07-28 request; the status and the JSON-RPC message.
    """
    headers = {"Accept": "application/json, text/event-stream",
               "MCP-Protocol-Version": "2026-07-28", "Mcp-Method": method}
    if name is not None:
        headers["Mcp-Name"] = name
    body = {"jsonrpc": "2.0", "id": 1, "method": method, "params": dict(params, _meta=META)}
    status, _, message = http(base + "/mcp", "POST", body, headers)
    return status, message


class _TwoInstances(SynchronousTestCase):
    """
    Two instances, A and B, on one real Redis.
    """

    #: TASK_POLL_INTERVAL of both instances.
    pollInterval = "0.2"
    #: More settings of both instances.
    extraEnv: Dict[str, str] = {}

    def setUp(self) -> None:
        redis = RedisServer(os.path.abspath(self.mktemp())).start()
        self.addCleanup(redis.stop)
        env = {
            "STORE": "redis",
            "REDIS_URL": redis.url,
            "JWT_SECRET": SECRET,
            "AUTH_MODE": "none",
            "TOOL_PACKS": "core,conformance",
            "TASK_POLL_INTERVAL": self.pollInterval,
            **self.extraEnv,
        }
        self.processes: List[McpsvcProcess] = []
        ports = [freePort(), freePort()]
        for port in ports:
            workdir = os.path.abspath(self.mktemp())
            os.makedirs(workdir)
            process = McpsvcProcess(
                workdir, env=dict(env, SERVER_URL=f"http://localhost:{port}"),
                listen=[f"tcp:{port}:interface=127.0.0.1"],
            )
            self.addCleanup(process.kill)
            self.processes.append(process)
        for process in self.processes:
            process.start()

    def get(self, base: str, taskID: str) -> Dict[str, Any]:
        status, message = rpc(base, "tasks/get", {"taskId": taskID}, taskID)
        self.assertEqual(status, 200, message)
        return message["result"]


class TwoInstancesTasksTests(_TwoInstances):

    def test_startOnOneCancelOnOther(self) -> None:
        """
        A task started on A is visible on B; B's C{tasks/cancel} marks it
        cancelled for both, and the work on A stops (A logs its end).
        """
        a, b = self.processes
        status, message = rpc(a.url, "tools/call", {
            "name": "slow_compute", "arguments": {"seconds": 60, "label": "e2e"}}, "slow_compute")
        self.assertEqual(status, 200, message)
        created = message["result"]
        self.assertEqual(created["resultType"], "task")
        taskID = created["taskId"]
        self.assertEqual(self.get(b.url, taskID)["status"], "working")
        status, message = rpc(b.url, "tasks/cancel", {"taskId": taskID}, taskID)
        self.assertEqual((status, message["result"]["resultType"]), (200, "complete"))
        self.assertEqual(self.get(a.url, taskID)["status"], "cancelled")
        ended = a.waitFor(lambda r: "ended" in r.get("text", "") and r.get("taskID") == taskID[:12],
                          timeout=10)
        self.assertEqual(ended["status"], "cancelled")
        self.assertFalse([r for r in b.records if r.get("taskID") == taskID[:12]
                          and "ended" in r.get("text", "")])
        self.assertNotIn("Traceback", "\n".join(a.lines + b.lines))

    def test_stoppedInstance(self) -> None:
        """
        When the instance running a task stops (SIGTERM), the task ends
        C{failed}, as B reads it, rather than staying C{working}.
        """
        a, b = self.processes
        status, message = rpc(a.url, "tools/call", {
            "name": "slow_compute", "arguments": {"seconds": 60}}, "slow_compute")
        taskID = message["result"]["taskId"]
        self.assertEqual(a.stop(), 0)
        task = self.get(b.url, taskID)
        self.assertEqual(task["status"], "failed")
        self.assertEqual(task["error"]["message"], "The server stopped before the task finished")

    def test_answerThroughOther(self) -> None:
        """
        A task waiting for input on A shows its question on B; the answer
        given to B reaches the work on A, which completes.
        """
        a, b = self.processes
        status, message = rpc(a.url, "tools/call", {
            "name": "confirm_delete", "arguments": {"filename": "x.txt"}}, "confirm_delete")
        taskID = message["result"]["taskId"]
        asked = a.waitFor(lambda r: "asks the client" in r.get("text", "")
                          and r.get("taskID") == taskID[:12], timeout=10)
        self.assertEqual(asked["keys"], ["confirm"])
        task = self.get(b.url, taskID)
        self.assertEqual(task["status"], "input_required")
        self.assertEqual(list(task["inputRequests"]), ["confirm"])
        status, message = rpc(b.url, "tasks/update", {"taskId": taskID, "inputResponses": {
            "confirm": {"action": "accept", "content": {"confirm": True}}}}, taskID)
        self.assertEqual(status, 200, message)
        a.waitFor(lambda r: "ended" in r.get("text", "") and r.get("taskID") == taskID[:12],
                  timeout=10)
        task = self.get(b.url, taskID)
        self.assertEqual(task["status"], "completed")
        self.assertEqual(task["result"]["content"][0]["text"], "Deleted x.txt")


class TaskNotificationsAcrossInstancesTests(TwoInstancesTasksTests):
    """
    C{notifications/tasks} across two instances. The instances poll their
    running tasks' records only every 60 seconds here, so whatever
    happens within the test's timeouts came through the change relay.
    """

    pollInterval = "60"

    def listen(self, process: McpsvcProcess, taskID: str, id: str) -> SSEClient:
        assert process.port is not None
        client = SSEClient(process.port, "POST", {
            "jsonrpc": "2.0", "id": id, "method": "subscriptions/listen",
            "params": {"_meta": META, "notifications": {"taskIds": [taskID]}},
        }, {"Content-Type": "application/json", "Accept": "text/event-stream",
            "MCP-Protocol-Version": "2026-07-28", "Mcp-Method": "subscriptions/listen"})
        self.addCleanup(client.close)
        self.assertIn(" 200 ", client.head.splitlines()[0])
        ack = client.nextMessage()
        self.assertEqual(ack["method"], "notifications/subscriptions/acknowledged")
        self.assertEqual(ack["params"]["notifications"], {"taskIds": [taskID]})
        return client

    def statusUntil(self, client: SSEClient, final: str) -> List[Dict[str, Any]]:
        """
        The task notifications of C{client} up to the one with status
        C{final}.
        """
        seen = []
        while True:
            message = client.nextMessage()
            self.assertEqual(message["method"], "notifications/tasks", message)
            seen.append(message["params"])
            if message["params"]["status"] == final:
                return seen

    def test_runningOnOneHeardOnOther(self) -> None:
        """
        A stream on B follows a task running on A: it gets the task's
        state at once (waiting for input), then, as A writes them, the
        task working again and completed, result inlined, each tagged with
        the subscription id.
        """
        a, b = self.processes
        status, message = rpc(a.url, "tools/call", {
            "name": "confirm_delete", "arguments": {"filename": "y.txt"}}, "confirm_delete")
        taskID = message["result"]["taskId"]
        a.waitFor(lambda r: "asks the client" in r.get("text", "")
                  and r.get("taskID") == taskID[:12], timeout=10)
        client = self.listen(b, taskID, "on-b")
        [current] = self.statusUntil(client, "input_required")
        self.assertEqual(list(current["inputRequests"]), ["confirm"])
        status, message = rpc(a.url, "tasks/update", {"taskId": taskID, "inputResponses": {
            "confirm": {"action": "accept", "content": {"confirm": True}}}}, taskID)
        self.assertEqual(status, 200, message)
        seen = self.statusUntil(client, "completed")
        completed = seen[-1]
        self.assertEqual(completed["taskId"], taskID)
        self.assertEqual(completed["result"]["content"][0]["text"], "Deleted y.txt")
        self.assertEqual(completed["_meta"], {"io.modelcontextprotocol/subscriptionId": "on-b"})
        got = self.get(b.url, taskID)
        self.assertEqual(got["lastUpdatedAt"], completed["lastUpdatedAt"])
        self.assertNotIn("Traceback", "\n".join(a.lines + b.lines))

    def test_cancelOnOther(self) -> None:
        """
        B receives C{tasks/cancel} for a task running on A: streams on A
        and on B hear C{cancelled}, and the work on A ends at once (a poll
        is a minute away).
        """
        a, b = self.processes
        status, message = rpc(a.url, "tools/call", {
            "name": "slow_compute", "arguments": {"seconds": 60}}, "slow_compute")
        taskID = message["result"]["taskId"]
        onA, onB = self.listen(a, taskID, "on-a"), self.listen(b, taskID, "on-b")
        self.assertEqual(self.statusUntil(onA, "working")[-1]["taskId"], taskID)
        self.statusUntil(onB, "working")
        status, message = rpc(b.url, "tasks/cancel", {"taskId": taskID}, taskID)
        self.assertEqual(status, 200, message)
        self.assertEqual(self.statusUntil(onB, "cancelled")[-1]["taskId"], taskID)
        cancelled = self.statusUntil(onA, "cancelled")[-1]
        self.assertEqual(cancelled["_meta"], {"io.modelcontextprotocol/subscriptionId": "on-a"})
        ended = a.waitFor(lambda r: "ended" in r.get("text", "") and r.get("taskID") == taskID[:12],
                          timeout=10)
        self.assertEqual(ended["status"], "cancelled")
        self.assertNotIn("Traceback", "\n".join(a.lines + b.lines))


class KilledInstanceTests(_TwoInstances):
    """
    C{kill -9} of the instance running a task: nothing marks the task
    failed on the way out; its lease (2 s here) does.
    """

    extraEnv = {"TASK_LEASE": "2", "TASK_LIMIT": "1"}

    def test_killedInstance(self) -> None:
        """
        A runs a slow task and is killed. Until the lease passes the task
        is working and holds the principal's only place (B refuses another
        task with C{-32029}); then B takes a new task (the store's count,
        the Redis script, leaves the dead one out) and reports the dead one
        C{failed}, saying its instance stopped. Waits are polls with a
        deadline.
        """
        a, b = self.processes
        status, message = rpc(a.url, "tools/call", {
            "name": "slow_compute", "arguments": {"seconds": 60}}, "slow_compute")
        self.assertEqual(status, 200, message)
        taskID = message["result"]["taskId"]
        self.assertEqual(self.get(b.url, taskID)["status"], "working")
        a.kill()
        killedAt = time.monotonic()
        deadline = killedAt + 20
        while True:
            status, message = rpc(b.url, "tools/call", {
                "name": "slow_compute", "arguments": {"seconds": 60}}, "slow_compute")
            self.assertEqual(status, 200, message)
            if "result" in message:
                break
            self.assertEqual(message["error"]["code"], -32029, message)
            self.assertLess(time.monotonic(), deadline, "the dead task still counts")
            time.sleep(0.1)  # the next poll
        self.assertGreater(time.monotonic() - killedAt, 0.5)  # not at once: the lease ran on
        self.assertEqual(message["result"]["resultType"], "task")
        deadline = time.monotonic() + 10
        while True:
            task = self.get(b.url, taskID)
            if task["status"] != "working":
                break
            self.assertLess(time.monotonic(), deadline, "the dead task is still working")
            time.sleep(0.1)
        self.assertEqual(task["status"], "failed")
        self.assertEqual(task["statusMessage"], "The server instance running this task stopped")
        self.assertEqual(task["error"]["message"], "The server instance running this task stopped")
        b.waitFor(lambda r: "renewing its lease" in r.get("text", "")
                  and r.get("taskID") == taskID[:12], timeout=10)
        self.assertNotIn("Traceback", "\n".join(a.lines + b.lines))
