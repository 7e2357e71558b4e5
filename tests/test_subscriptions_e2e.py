"""
C{notifications/tools/list_changed} across instances: two C{twistd -n
mcpsvc} processes sharing one real C{redis-server}. A client listens on
instance B (C{subscriptions/listen}, 2026-07-28, and a handshake-era GET
stream); the tool set is reloaded on instance A (C{SIGHUP}), then through
C{mcpsvc tools reload}; B's listeners hear of both. With SQLite, a
C{SIGHUP} reaches the one instance's listeners.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from typing import Any, Dict, Optional

from twisted.trial.unittest import SynchronousTestCase

from mcpsvc.testing.redis import RedisServer, freePort
from tests.process import SECRET, McpsvcProcess

MODERN = "2026-07-28"
META = {
    "io.modelcontextprotocol/protocolVersion": MODERN,
    "io.modelcontextprotocol/clientCapabilities": {},
}
MCPSVC = os.path.join(os.path.dirname(sys.executable), "mcpsvc")


class SSEClient:
    """
    A streaming POST or GET on a raw socket, read event by event.
    """

    def __init__(self, port: int, method: str, body: Optional[Dict[str, Any]],
                 headers: Dict[str, str]) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        data = json.dumps(body).encode() if body is not None else b""
        lines = [f"{method} /mcp HTTP/1.1", f"Host: 127.0.0.1:{port}",
                 f"Content-Length: {len(data)}"]
        lines += [f"{k}: {v}" for k, v in headers.items()]
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode() + data)
        self.buffer = b""
        self.head = self._until(b"\r\n\r\n").decode("latin-1")

    def _until(self, marker: bytes) -> bytes:
        deadline = time.monotonic() + 15
        while marker not in self.buffer:
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting; got {self.buffer[-500:]!r}")
            chunk = self.sock.recv(65536)
            if not chunk:
                raise AssertionError(f"stream ended; got {self.buffer[-500:]!r}")
            self.buffer += chunk
        part, self.buffer = self.buffer.split(marker, 1)
        return part

    def nextMessage(self) -> Dict[str, Any]:
        """
        The next JSON message (skipping comments; chunked framing lines,
        which are not C{data:} lines, are skipped too).
        """
        while True:
            event = self._until(b"\n\n").decode("utf-8")
            for line in event.splitlines():
                if line.startswith("data: "):
                    return json.loads(line[6:])

    def close(self) -> None:
        self.sock.close()


class ListChangedAcrossInstancesTests(SynchronousTestCase):
    def instance(self, env: Dict[str, str]) -> McpsvcProcess:
        workdir = os.path.abspath(self.mktemp())
        os.makedirs(workdir)
        port = freePort()
        process = McpsvcProcess(workdir, env=dict(env, SERVER_URL=f"http://127.0.0.1:{port}"),
                                listen=[f"tcp:{port}:interface=127.0.0.1"])
        self.addCleanup(process.kill)
        return process.start()

    def listen(self, process: McpsvcProcess) -> SSEClient:
        assert process.port is not None
        client = SSEClient(process.port, "POST", {
            "jsonrpc": "2.0", "id": "sub-1", "method": "subscriptions/listen",
            "params": {"_meta": META, "notifications": {"toolsListChanged": True}},
        }, {"Content-Type": "application/json", "Accept": "text/event-stream",
            "MCP-Protocol-Version": MODERN, "Mcp-Method": "subscriptions/listen"})
        self.addCleanup(client.close)
        self.assertIn(" 200 ", client.head.splitlines()[0])
        ack = client.nextMessage()
        self.assertEqual(ack["method"], "notifications/subscriptions/acknowledged")
        self.assertEqual(ack["params"]["notifications"], {"toolsListChanged": True})
        return client

    def getStream(self, process: McpsvcProcess) -> SSEClient:
        import urllib.request

        request = urllib.request.Request(process.url + "/mcp", data=json.dumps({
            "jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
                "protocolVersion": "2025-06-18", "capabilities": {},
                "clientInfo": {"name": "t", "version": "1"}}}).encode(),
            headers={"Content-Type": "application/json",
                     "Accept": "application/json, text/event-stream"})
        with urllib.request.urlopen(request, timeout=10) as response:
            sessionID = response.headers["Mcp-Session-Id"]
        assert process.port is not None
        client = SSEClient(process.port, "GET", None, {
            "Accept": "text/event-stream", "Mcp-Session-Id": sessionID,
            "MCP-Protocol-Version": "2025-06-18"})
        self.addCleanup(client.close)
        self.assertIn(" 200 ", client.head.splitlines()[0])
        return client

    def test_redis(self) -> None:
        """
        A reload on A (SIGHUP) reaches B's listeners through Redis, tagged
        with the subscription id; so does C{mcpsvc tools reload}.
        """
        redis = RedisServer(os.path.abspath(self.mktemp())).start()
        self.addCleanup(redis.stop)
        env = {"STORE": "redis", "REDIS_URL": redis.url, "DEPLOYMENT_TYPE": "multi-server",
               "JWT_SECRET": SECRET, "AUTH_MODE": "none", "TOOL_PACKS": "core"}
        a = self.instance(env)
        b = self.instance(env)
        for process in (a, b):
            process.waitFor(lambda r: "Subscribed to the Redis change channel" in r.get("text", ""))
        listener = self.listen(b)
        legacy = self.getStream(b)

        a.signal(signal.SIGHUP)
        message = listener.nextMessage()
        self.assertEqual(message, {
            "jsonrpc": "2.0", "method": "notifications/tools/list_changed",
            "params": {"_meta": {"io.modelcontextprotocol/subscriptionId": "sub-1"}}})
        self.assertEqual(legacy.nextMessage()["method"], "notifications/tools/list_changed")
        a.waitFor(lambda r: "Tool packs reloaded" in r.get("text", ""))
        b.waitFor(lambda r: "Change received from instance" in r.get("text", ""))

        result = subprocess.run(
            [MCPSVC, "tools", "reload"], cwd=a.workdir, capture_output=True, text=True,
            timeout=60, env={"PATH": os.environ.get("PATH", ""), **env,
                             "SERVER_URL": "http://127.0.0.1:1"},
        )
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn("Asked 2 instance(s)", result.stdout)
        self.assertEqual(listener.nextMessage()["method"], "notifications/tools/list_changed")

        # Graceful shutdown of B ends the subscription with its result.
        b.signal(signal.SIGTERM)
        final = listener.nextMessage()
        self.assertEqual(final["id"], "sub-1")
        self.assertEqual(final["result"]["resultType"], "complete")
        self.assertEqual(b.wait(), 0)
        self.assertNotIn("Traceback", a.output + b.output)

    def test_sqlite(self) -> None:
        """
        With SQLite, SIGHUP reaches the instance's own listeners, and
        C{mcpsvc tools reload} says to send SIGHUP.
        """
        workdir = os.path.abspath(self.mktemp())
        env = {"STORE": "sqlite", "STORE_PATH": os.path.join(workdir + "-db.sqlite3"),
               "JWT_SECRET": SECRET, "AUTH_MODE": "none", "TOOL_PACKS": "core"}
        process = self.instance(env)
        listener = self.listen(process)
        process.signal(signal.SIGHUP)
        self.assertEqual(listener.nextMessage()["method"], "notifications/tools/list_changed")
        result = subprocess.run(
            [MCPSVC, "tools", "reload"], cwd=process.workdir, capture_output=True, text=True,
            timeout=60, env={"PATH": os.environ.get("PATH", ""), **env,
                             "SERVER_URL": "http://127.0.0.1:1"},
        )
        self.assertEqual(result.returncode, 1)
        self.assertIn("SIGHUP", result.stderr)
        self.assertNotIn("Traceback", process.output)

    def test_workers(self) -> None:
        """
        Under C{--workers 2}, SIGHUP to the parent reaches every worker:
        each reloads, and the listener (on whichever worker) is told.
        """
        workdir = os.path.abspath(self.mktemp())
        os.makedirs(workdir)
        port = freePort()
        process = McpsvcProcess(
            workdir, env={"STORE": "sqlite", "STORE_PATH": os.path.join(workdir, "db.sqlite3"),
                          "JWT_SECRET": SECRET, "AUTH_MODE": "none", "TOOL_PACKS": "core",
                          "SERVER_URL": f"http://127.0.0.1:{port}"},
            listen=[f"tcp:{port}:interface=127.0.0.1"], args=["--workers", "2"],
        )

        def killAll() -> None:
            for record in process.records:
                if str(record.get("text", "")).startswith("Started worker") and record.get("pid"):
                    try:
                        os.kill(int(record["pid"]), signal.SIGKILL)
                    except OSError:
                        pass
            process.kill()

        self.addCleanup(killAll)
        process.start()
        process.port = port
        process.waitFor(lambda r: len([
            x for x in process.records
            if str(x.get("text", "")).startswith("mcpsvc listening on")]) >= 2, 60)
        listener = self.listen(process)
        process.signal(signal.SIGHUP)
        self.assertEqual(listener.nextMessage()["method"], "notifications/tools/list_changed")
        process.waitFor(lambda r: len([
            x for x in process.records
            if str(x.get("text", "")).startswith("Tool packs reloaded")]) >= 2)
