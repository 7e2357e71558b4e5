# -*- test-case-name: mcpsvc.storage.test.test_durability -*-
"""
Acknowledged writes survive C{kill -9}: a child process writes and reports
each acknowledged write on stdout; it is killed mid-stream; a fresh store
must see every write it reported.
"""

from __future__ import annotations

import os
import select
import signal
import sqlite3
import subprocess
import sys
import time

from typing import List

from twisted.internet import reactor
from twisted.internet.defer import maybeDeferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase

from mcpsvc.storage.sqlite import SQLiteStore
from mcpsvc.storage.test.test_redis import openStore
from mcpsvc.testing.redis import RedisServer

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
#: the child is killed once it has acknowledged this many iterations
KILL_AFTER = 25
#: and would otherwise stop after this many (it must not get there)
MAXIMUM = 100_000


def runAndKill(testCase: SynchronousTestCase, backend: str, where: str, deadline: float = 60.0) -> List[int]:
    """
    Run the child, SIGKILL it after L{KILL_AFTER} acknowledgements, and
    return every iteration it acknowledged (including lines already in the
    pipe when it died).
    """
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    child = subprocess.Popen(
        [sys.executable, "-m", "mcpsvc.storage.test.durability_child", backend, where, str(MAXIMUM)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        cwd=ROOT,
    )
    testCase.addCleanup(lambda: child.poll() is None and child.kill())
    acked: List[int] = []
    buffer = b""
    end = time.monotonic() + deadline
    assert child.stdout is not None
    fd = child.stdout.fileno()
    while len(acked) < KILL_AFTER:
        remaining = end - time.monotonic()
        if remaining <= 0:
            child.kill()
            testCase.fail(f"child acknowledged only {len(acked)} writes in {deadline}s")
        ready, _, _ = select.select([fd], [], [], remaining)
        if not ready:
            continue
        chunk = os.read(fd, 65536)
        if not chunk:
            child.wait()
            assert child.stderr is not None
            testCase.fail(f"child exited ({child.returncode}) early: {child.stderr.read().decode()}")
        buffer += chunk
        *lines, buffer = buffer.split(b"\n")
        acked += [int(line.split()[1]) for line in lines if line.startswith(b"ack ")]
    os.kill(child.pid, signal.SIGKILL)
    rest, _ = child.communicate(timeout=deadline)
    buffer += rest
    acked += [int(line.split()[1]) for line in buffer.split(b"\n") if line.startswith(b"ack ")]
    testCase.assertEqual(child.returncode, -signal.SIGKILL)
    testCase.assertLess(len(acked), MAXIMUM)
    testCase.assertEqual(acked, list(range(len(acked))))
    return acked


class SQLiteDurabilityTests(SynchronousTestCase):
    def test_killed(self) -> None:
        path = os.path.abspath(os.path.join(self.mktemp(), "durable.sqlite3"))
        acked = runAndKill(self, "sqlite", path)
        store = SQLiteStore(path, Clock(), maybeDeferred, timeout=5.0)
        self.addCleanup(store.close)
        self.assertEqual(self.successResultOf(store.integrityCheck()), ["ok"])
        clients = {c.clientID for c in self.successResultOf(store.listClients())}
        missing = [i for i in acked if f"c-{i}" not in clients]
        self.assertEqual(missing, [])
        now = reactor.seconds()  # the child used the real clock
        for i in acked:
            self.assertTrue(self.successResultOf(store.isRevoked(f"j-{i}", now)), i)
        raw = sqlite3.connect(path)
        self.addCleanup(raw.close)
        self.assertEqual(raw.execute("PRAGMA integrity_check").fetchall(), [("ok",)])


class RedisDurabilityTests(TestCase):
    timeout = 90

    async def test_killed(self) -> None:
        """
        With C{appendonly yes} and C{appendfsync always}: kill the mcpsvc
        child, then kill redis-server itself and start it again from its
        AOF; every acknowledged write is there.
        """
        server = RedisServer(self.mktemp(), appendonly=True, appendfsync="always").start()
        self.addCleanup(server.stop)
        self.assertEqual(server.command("CONFIG", "GET", "appendfsync"), ["appendfsync", "always"])
        acked = runAndKill(self, "redis", server.url)
        server.kill()
        server.start()
        self.assertEqual(server.command("CONFIG", "GET", "appendonly"), ["appendonly", "yes"])
        store = openStore(self, server.url, reactor, prefix="durable:")
        clients = {c.clientID for c in await store.listClients()}
        self.assertEqual([i for i in acked if f"c-{i}" not in clients], [])
        now = reactor.seconds()
        for i in acked:
            self.assertTrue(await store.isRevoked(f"j-{i}", now), i)
