"""
End-to-end tests of the real C{twistd -n mcpsvc} process on loopback.
"""

from __future__ import annotations

import json
import os
import socket
import ssl
import urllib.request

from twisted.trial.unittest import SynchronousTestCase

from tests.process import SECRET, TWISTD, McpsvcProcess, makeCertificate


def getJSON(url: str, context: "ssl.SSLContext | None" = None) -> tuple:
    try:
        with urllib.request.urlopen(url, timeout=10, context=context) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


class ProcessTests(SynchronousTestCase):
    def workdir(self) -> str:
        path = os.path.abspath(self.mktemp())
        os.makedirs(path)
        return path

    def startServer(self, env: "dict | None" = None, **kw: object) -> McpsvcProcess:
        process = McpsvcProcess(self.workdir(), env=env, **kw)  # type: ignore[arg-type]
        self.addCleanup(process.kill)
        return process.start()

    def test_freshStartAndHealth(self) -> None:
        """
        With no .env and no configuration at all, the server starts on the
        embedded SQLite store, says it generated development secrets, and
        C{/health} answers.
        """
        process = self.startServer()
        status, body = getJSON(process.url + "/health")
        self.assertEqual(status, 200)
        self.assertEqual(body["status"], "healthy")
        self.assertIn("T", body["timestamp"])
        self.assertTrue(os.path.exists(os.path.join(process.workdir, "var", "jwt_secret")))
        self.assertTrue(os.path.exists(os.path.join(process.workdir, "var", "mcpsvc.sqlite3")))
        self.assertIn("generated a development value", process.output)
        status, body = getJSON(process.url + "/ready")
        self.assertEqual((status, body["status"]), (200, "ready"))
        self.assertEqual(process.stop(), 0)

    def test_oversizedBodyThenKeepsServing(self) -> None:
        """
        A 2 MB JSON body gets 413 and the server keeps serving.
        """
        process = self.startServer({"JWT_SECRET": SECRET})
        body = b'{"pad": "' + b"a" * (2 * 1024 * 1024) + b'"}'
        request = urllib.request.Request(
            process.url + "/mcp", data=body, method="POST",
            headers={"Content-Type": "application/json"},
        )
        try:
            urllib.request.urlopen(request, timeout=10)
            status = 200
        except urllib.error.HTTPError as e:
            status = e.code
        except (ConnectionResetError, BrokenPipeError, urllib.error.URLError):
            status = 413  # the server closed while we were still sending; checked below
        self.assertEqual(status, 413)
        self.assertTrue(any(r.get("status") == 413 for r in [process.waitFor(lambda r: r.get("status") == 413)]))
        self.assertEqual(getJSON(process.url + "/health")[0], 200)
        self.assertEqual(process.stop(), 0)

    def test_sigtermDrainsInFlight(self) -> None:
        """
        SIGTERM while a request is in flight lets it complete, then the
        process exits 0.
        """
        process = self.startServer({"JWT_SECRET": SECRET})
        conn = socket.create_connection(("127.0.0.1", process.port), timeout=10)
        self.addCleanup(conn.close)
        # A first, complete request proves the connection is being served.
        conn.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        first = b""
        while b'"healthy"' not in first:
            chunk = conn.recv(65536)
            self.assertTrue(chunk, "connection closed early")
            first += chunk
        body = b'{"jsonrpc": "2.0", "id": 1, "method": "ping"}'
        conn.sendall(
            b"POST /health HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body[:10]
        )
        process.signal()
        process.waitFor(lambda r: "shutting down" in r.get("text", ""))
        conn.sendall(body[10:])
        response = b""
        while b"\r\n\r\n" not in response:
            chunk = conn.recv(65536)
            if not chunk:
                break
            response += chunk
        self.assertTrue(response.startswith(b"HTTP/1.1 405"), response[:200])
        self.assertEqual(process.wait(), 0)
        self.assertIn("mcpsvc stopped", process.output)

    def test_portInUse(self) -> None:
        """
        A second instance on the same port fails with one clear line and a
        non-zero exit, not a traceback.
        """
        first = self.startServer({"JWT_SECRET": SECRET})
        second = McpsvcProcess(
            self.workdir(), env={"JWT_SECRET": SECRET},
            listen=[f"tcp:{first.port}:interface=127.0.0.1"],
        )
        self.addCleanup(second.kill)
        second.start(expectListening=False)
        self.assertNotEqual(second.wait(), 0)
        self.assertIn(f"Cannot listen on 127.0.0.1:{first.port}", second.output)
        self.assertIn("Address already in use", second.output)
        self.assertNotIn("Traceback", second.output)
        self.assertEqual(first.stop(), 0)

    def test_productionWithoutSecret(self) -> None:
        """
        In production a missing JWT_SECRET is an error: the process lists
        it, exits non-zero and never listens.
        """
        process = McpsvcProcess(
            self.workdir(),
            env={"ENVIRONMENT": "production", "SERVER_URL": "https://mcp.example.com"},
        )
        self.addCleanup(process.kill)
        process.start(expectListening=False)
        self.assertNotEqual(process.wait(), 0)
        self.assertIn("JWT_SECRET is required", process.output)
        self.assertNotIn("listening on", process.output)
        self.assertNotIn("Traceback", process.output)
        self.assertFalse(os.path.exists(os.path.join(process.workdir, "var", "jwt_secret")))

    def test_tls(self) -> None:
        """
        A TLS listener answers C{/health} over HTTPS with a certificate the
        test generated.
        """
        directory = self.workdir()
        keyPath, certPath = makeCertificate(directory)
        process = self.startServer(
            {"JWT_SECRET": SECRET},
            listen=[f"ssl:0:interface=127.0.0.1:privateKey={keyPath}:certKey={certPath}"],
        )
        context = ssl.create_default_context(cafile=certPath)
        status, body = getJSON(f"https://127.0.0.1:{process.port}/health", context)
        self.assertEqual((status, body["status"]), (200, "healthy"))
        self.assertEqual(process.stop(), 0)

    def test_twistdListsPlugin(self) -> None:
        """
        After the README's install, C{twistd --help} lists mcpsvc.
        """
        import subprocess

        out = subprocess.run([TWISTD, "--help"], capture_output=True, text=True, timeout=60)
        self.assertIn("mcpsvc", out.stdout)
