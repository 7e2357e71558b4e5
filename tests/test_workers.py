"""
C{twistd -n mcpsvc --workers N} (issue 8, item 3): real processes, one
listening address, the SQLite store shared by the workers.
"""

from __future__ import annotations

import os
import signal
from typing import Any, Dict, List, Set

from twisted.trial.unittest import SynchronousTestCase

from mcpsvc.testing.redis import freePort
from tests.flow import Flow, http
from tests.process import SECRET, McpsvcProcess

IAT = "initial-access-token-" + "8" * 24


def gone(pid: int, timeout: float = 10.0) -> bool:
    """
    Whether C{pid} exits within C{timeout} seconds (waiting on a pidfd,
    which becomes readable when the process terminates, zombie or not).
    """
    import select

    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        return bool(poller.poll(timeout * 1000))
    finally:
        os.close(fd)


class WorkersTests(SynchronousTestCase):
    def startWorkers(self, count: int = 2, **extra: str) -> McpsvcProcess:
        port = freePort()
        self.serverURL = f"http://127.0.0.1:{port}"
        workdir = os.path.abspath(self.mktemp())
        os.makedirs(workdir)
        env: Dict[str, str] = {
            "STORE": "sqlite",
            "STORE_PATH": os.path.join(workdir, "mcpsvc.sqlite"),
            "JWT_SECRET": SECRET,
            "DCR_AUTH_TOKEN": IAT,
            "AUTHORIZE_MODE": "auto",
            "SERVER_URL": self.serverURL,
            **extra,
        }
        process = McpsvcProcess(
            workdir, env=env, listen=[f"tcp:{port}:interface=127.0.0.1"],
            args=["--workers", str(count)],
        )
        self.addCleanup(self.killAll, process)
        return process

    def killAll(self, process: McpsvcProcess) -> None:
        for pid in self.workerPIDs(process):
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        process.kill()

    def workerPIDs(self, process: McpsvcProcess) -> List[int]:
        return [
            int(r["pid"]) for r in process.records
            if str(r.get("text", "")).startswith("Started worker") and r.get("pid")
        ]

    def waitForWorkers(self, process: McpsvcProcess, count: int) -> None:
        def ready(record: Dict[str, Any]) -> bool:
            listening = [
                r for r in process.records
                if str(r.get("text", "")).startswith("mcpsvc listening on")
            ]
            return len(listening) >= count

        process.waitFor(ready, 60)

    def served(self, call: Any, until: Set[str], attempts: int = 400) -> Dict[str, List[Any]]:
        """
        Repeat C{call} (each on a new connection) until every worker in
        C{until} has answered one; return the answers by worker.
        """
        seen: Dict[str, List[Any]] = {}
        for _ in range(attempts):
            status, headers, body = call()
            seen.setdefault(headers.get("x-mcpsvc-worker", ""), []).append((status, body))
            if until <= set(seen):
                return seen
        self.fail(f"not every worker answered: {sorted(seen)}")

    def test_twoWorkersShareAddressAndStore(self) -> None:
        """
        Two workers serve one address (both answer /health, each with its
        own index); an OAuth token and an MCP session made through either
        work through the other, and a revocation is honoured by both; on
        SIGTERM every process exits 0.
        """
        process = self.startWorkers(2)
        process.start()
        self.waitForWorkers(process, 2)
        pids = self.workerPIDs(process)
        self.assertEqual(len(set(pids)), 2)
        self.assertNotIn(process.proc.pid, pids)  # type: ignore[union-attr]
        base = self.serverURL

        health = self.served(lambda: http(base + "/health"), {"1", "2"})
        for answers in health.values():
            self.assertTrue(all(status == 200 for status, _ in answers))

        flow = Flow(self.serverURL, IAT)
        self.assertEqual(flow.register(base)[0], 201)
        code = flow.authorize(base)
        status, _, tokens = flow.exchange(base, code)
        self.assertEqual(status, 200, tokens)
        status, _, body = flow.initialize(base)
        self.assertEqual(status, 200, body)

        calls = self.served(lambda: flow.callTool(base, "echo_message", {"message": "hi"}), {"1", "2"})
        for worker in ("1", "2"):
            for status, body in calls[worker]:
                self.assertEqual(status, 200, body)
                self.assertEqual(body["result"]["content"][0]["text"], "hi")

        self.assertEqual(flow.revoke(base, flow.tokens["access_token"])[0], 200)
        refused = self.served(lambda: flow.callTool(base, "echo_message", {"message": "x"}), {"1", "2"})
        for worker in ("1", "2"):
            self.assertEqual({status for status, _ in refused[worker]}, {401})

        self.assertEqual(process.stop(), 0)
        self.assertEqual(
            [r for r in process.records if "exited with status" in str(r.get("text", ""))], []
        )
        for pid in pids:
            self.assertRaises(ProcessLookupError, os.kill, pid, 0)

    def test_crashedWorkerRestarted(self) -> None:
        """
        A worker that dies is replaced, and the address keeps working.
        """
        process = self.startWorkers(2)
        process.start()
        self.waitForWorkers(process, 2)
        first = self.workerPIDs(process)
        os.kill(first[0], signal.SIGKILL)
        process.waitFor(lambda r: len(self.workerPIDs(process)) >= 3, 30)
        self.waitForWorkers(process, 3)
        self.served(lambda: http(self.serverURL + "/health"), {"1", "2"})
        self.assertEqual(process.stop(), 0)

    def test_orphanedWorkersStop(self) -> None:
        """
        When the parent dies without stopping its workers (C{SIGKILL}),
        each worker sees its lifeline end, stops gracefully and exits:
        nothing keeps serving the address unsupervised.
        """
        process = self.startWorkers(2)
        process.start()
        self.waitForWorkers(process, 2)
        pids = self.workerPIDs(process)
        self.served(lambda: http(self.serverURL + "/health"), {"1", "2"})
        process.signal(signal.SIGKILL)
        # The workers hold the same output pipe: it ends once both exited.
        self.assertEqual(process.wait(60), -signal.SIGKILL)
        texts = [str(r.get("text", "")) for r in process.records]
        self.assertEqual(
            texts.count("The --workers parent process is gone: stopping this worker"), 2, texts[-20:]
        )
        self.assertEqual(texts.count("mcpsvc stopped"), 2)
        for pid in pids:
            self.assertTrue(gone(pid), f"worker {pid} still running")
        self.assertRaises(OSError, http, self.serverURL + "/health")

    def test_memoryStoreRefused(self) -> None:
        """
        C{--workers 2} with C{STORE=memory} is refused before anything
        listens: the workers' state would diverge.
        """
        process = self.startWorkers(2, STORE="memory")
        process.start(expectListening=False)
        self.assertNotEqual(process.wait(), 0)
        self.assertIn("STORE=memory", process.output)


class WorkerOptionTests(SynchronousTestCase):
    """
    The pieces of C{--workers} that need no process.
    """

    def test_childArguments(self) -> None:
        from mcpsvc.workers import childArguments

        self.assertEqual(
            childArguments(["twistd", "--pidfile=p", "-n", "mcpsvc", "--workers", "3",
                            "--listen", "tcp:0", "--workers=2", "--store", "sqlite"]),
            ["--pidfile=p", "-n", "--pidfile=", "-n", "mcpsvc", "--listen", "tcp:0",
             "--store", "sqlite"],
        )

    def test_onlyTCP(self) -> None:
        from mcpsvc.workers import WorkerError, tcpAddress

        self.assertEqual(tcpAddress("tcp:3000:interface=127.0.0.1:backlog=9"), ("127.0.0.1", 3000, 9))
        for description in ("ssl:443:privateKey=k.pem", "unix:/tmp/s", "systemd:domain=INET:index=0"):
            self.assertRaises(WorkerError, tcpAddress, description)

    def test_lifeline(self) -> None:
        """
        L{ParentLifeline} reads its pipe without blocking, ignores data,
        and stops the reactor (once) when the write end closes; stopped
        first (a normal shutdown), it just lets go of the pipe.
        """
        from twisted.internet.main import CONNECTION_DONE
        from twisted.internet.testing import MemoryReactorClock
        from twisted.logger import capturedLogs

        from mcpsvc.workers import ParentLifeline, lifeline

        self.assertIsNone(lifeline(MemoryReactorClock(), environ={}))
        r, w = os.pipe()
        reactor = MemoryReactorClock()
        reactor.running = True
        watch = lifeline(reactor, environ={"MCPSVC_WORKER_LIFELINE": str(r)})
        assert isinstance(watch, ParentLifeline)
        watch.startService()
        self.assertIn(watch, reactor.getReaders())
        self.assertIsNone(watch.doRead())  # nothing to read: not the end
        os.write(w, b"x")
        self.assertIsNone(watch.doRead())
        os.close(w)
        self.assertIs(watch.doRead(), CONNECTION_DONE)
        with capturedLogs() as events:
            watch.connectionLost(CONNECTION_DONE)
        self.assertTrue(reactor.hasStopped)
        self.assertNotIn(watch, reactor.getReaders())
        self.assertIn("parent process is gone", " ".join(str(e.get("log_format")) for e in events))
        self.assertRaises(OSError, os.fstat, r)  # closed

        r, w = os.pipe()
        self.addCleanup(os.close, w)
        reactor = MemoryReactorClock()
        watch = ParentLifeline(r, reactor)
        watch.startService()
        watch.stopService()
        self.assertNotIn(watch, reactor.getReaders())
        self.assertFalse(reactor.hasStopped)
        self.assertRaises(OSError, os.fstat, r)

    def test_refused(self) -> None:
        from mcpsvc.workers import WorkerError, checkWorkers

        class C:
            store = "sqlite"
            metricsListen = ()
            listen = ("tcp:3000",)

        checkWorkers(C(), 2)
        memory = C()
        memory.store = "memory"  # type: ignore[misc]
        self.assertRaises(WorkerError, checkWorkers, memory, 2)
        metrics = C()
        metrics.metricsListen = ("tcp:9100",)  # type: ignore[misc,assignment]
        self.assertRaises(WorkerError, checkWorkers, metrics, 2)
