"""
Tests of the deployment files in C{deploy/}: the systemd units are checked
statically (C{systemd-analyze verify} and C{security} when the machine has
them, structure always) and the socket-activated command line is run for
real with a socket passed the systemd way; the Dockerfile is checked
statically and its HEALTHCHECK run against a real mcpsvc; the nginx
configuration is run for real: nginx on loopback with a self-signed
certificate in front of a real mcpsvc process whose public URL is nginx's.
The supervisor block is in L{tests.test_deploy_supervisor}.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import urllib.request
from typing import Dict, List, Optional, Tuple

from twisted.trial.unittest import SynchronousTestCase

from mcpsvc.config import VARIABLES
from tests.nginx import NginxProxy, nginxBinary
from tests.process import HERE, SECRET, TWISTD, McpsvcProcess

DEPLOY = os.path.join(HERE, "deploy")
SHIPPED_TWISTD = "/opt/mcpsvc/.venv/bin/twistd"
SHUTDOWN_TIMEOUT_DEFAULT = int(VARIABLES["SHUTDOWN_TIMEOUT"][0])


def read(*path: str) -> str:
    with open(os.path.join(DEPLOY, *path)) as f:
        return f.read()


def parseUnit(text: str) -> Dict[str, Dict[str, List[str]]]:
    """
    Parse a systemd unit file into section -> key -> values (keys may
    repeat, values may continue over lines ending in a backslash).
    """
    sections: Dict[str, Dict[str, List[str]]] = {}
    current: Optional[Dict[str, List[str]]] = None
    pending = ""
    for raw in text.splitlines():
        line = pending + raw.strip()
        pending = ""
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None, f"assignment outside a section: {line!r}"
        key, sep, value = line.partition("=")
        assert sep, f"not an assignment: {line!r}"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def seconds(value: str) -> float:
    """
    A systemd time span (C{30s}, C{1min 30s}, C{90}) in seconds.
    """
    units = {"": 1, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "ms": 0.001}
    total = 0.0
    for number, unit in re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]*)", value):
        total += float(number) * units[unit]
    return total


def getJSON(url: str, context: Optional[ssl.SSLContext] = None) -> Tuple[int, object]:
    try:
        with urllib.request.urlopen(url, timeout=10, context=context) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


class WorkdirMixin:
    def workdir(self) -> str:
        path = os.path.abspath(self.mktemp())  # type: ignore[attr-defined]
        os.makedirs(path)
        return path


class SystemdTests(WorkdirMixin, SynchronousTestCase):
    """
    C{deploy/systemd}: the plain unit, and the socket + service pair for
    socket activation.
    """

    UNITS = ("mcpsvc.service", "mcpsvc.socket", "mcpsvc-socket.service")

    def unit(self, name: str) -> Dict[str, Dict[str, List[str]]]:
        return parseUnit(read("systemd", name))

    def localUnits(self) -> str:
        """
        Copies of the units whose twistd is this virtualenv's, so that
        C{systemd-analyze} can check the command exists.
        """
        directory = self.workdir()
        for name in self.UNITS:
            text = read("systemd", name)
            with open(os.path.join(directory, name), "w") as f:
                f.write(text.replace(SHIPPED_TWISTD, TWISTD))
        return directory

    def assertService(self, name: str, extra: List[str]) -> None:
        service = self.unit(name)["Service"]
        self.assertEqual(len(service["ExecStart"]), 1)
        argv = shlex.split(service["ExecStart"][0])
        self.assertEqual(argv, [SHIPPED_TWISTD, "--pidfile=", "-n", "mcpsvc", *extra])
        self.assertEqual(service["EnvironmentFile"], ["/etc/mcpsvc/mcpsvc.env"])
        self.assertNotIn(service.get("User", ["root"])[-1], ("root", "0"))
        self.assertEqual(service["Restart"], ["on-failure"])
        self.assertEqual(service["KillSignal"], ["SIGTERM"])
        self.assertGreater(seconds(service["TimeoutStopSec"][-1]), SHUTDOWN_TIMEOUT_DEFAULT + 5)
        for key, value in [
            ("NoNewPrivileges", "yes"), ("ProtectSystem", "strict"), ("PrivateTmp", "yes"),
            ("ProtectHome", "yes"), ("RestrictSUIDSGID", "yes"), ("CapabilityBoundingSet", ""),
        ]:
            self.assertEqual(service.get(key), [value], key)
        # The only writable place is the state directory, where it runs.
        self.assertEqual(service["WorkingDirectory"], ["/var/lib/mcpsvc"])
        self.assertEqual(service["ReadWritePaths"], ["/var/lib/mcpsvc"])
        self.assertEqual(service["StateDirectory"], ["mcpsvc"])
        self.assertIn("LOG_FORMAT=json", service["Environment"][0].split())

    def test_service(self) -> None:
        """
        mcpsvc.service runs C{twistd --pidfile= -n mcpsvc} as a dedicated
        user with the environment file, restarts on failure, stops with
        SIGTERM and waits longer than the drain, and is hardened.
        """
        self.assertService("mcpsvc.service", [])
        self.assertEqual(self.unit("mcpsvc.service")["Install"]["WantedBy"], ["multi-user.target"])

    def test_socketActivation(self) -> None:
        """
        mcpsvc.socket listens on loopback and activates mcpsvc-socket.service,
        which serves the passed socket with C{--listen systemd:...}.
        """
        socketUnit = self.unit("mcpsvc.socket")
        self.assertEqual(socketUnit["Socket"]["ListenStream"], ["127.0.0.1:3000"])
        self.assertEqual(socketUnit["Socket"]["Service"], ["mcpsvc-socket.service"])
        self.assertService("mcpsvc-socket.service", ["--listen", "systemd:domain=INET:index=0"])
        unit = self.unit("mcpsvc-socket.service")["Unit"]
        self.assertIn("mcpsvc.socket", unit["Requires"][0].split())
        self.assertIn("mcpsvc.service", unit["Conflicts"][0].split())

    def test_systemdAnalyzeVerify(self) -> None:
        """
        C{systemd-analyze verify} accepts the three units without a single
        warning; without systemd-analyze the structural checks above stand
        alone.
        """
        analyze = shutil.which("systemd-analyze")
        if analyze is None:
            # No systemd here: check what verify would, structurally (the
            # settings themselves are checked by the tests above).
            expected = {
                "mcpsvc.service": ["Unit", "Service", "Install"],
                "mcpsvc.socket": ["Unit", "Socket", "Install"],
                "mcpsvc-socket.service": ["Unit", "Service", "Install"],
            }
            for name, sections in expected.items():
                unit = self.unit(name)
                self.assertEqual(list(unit), sections, name)
                for section in unit.values():
                    for key in section:
                        self.assertRegex(key, r"^[A-Z][A-Za-z0-9]+$", name)
            return
        directory = self.localUnits()
        result = subprocess.run(
            [analyze, "verify", "--man=no", *[os.path.join(directory, n) for n in self.UNITS]],
            capture_output=True, text=True, timeout=60,
        )
        self.assertEqual((result.returncode, result.stderr.strip()), (0, ""), result.stdout)

    def test_systemdAnalyzeSecurity(self) -> None:
        """
        C{systemd-analyze security --offline} rates both services' exposure
        at most 2.0 ("OK") when the machine's systemd can do it (252+).
        """
        analyze = shutil.which("systemd-analyze")
        if analyze is None:
            return
        directory = self.localUnits()
        for name in ("mcpsvc.service", "mcpsvc-socket.service"):
            result = subprocess.run(
                [analyze, "security", "--offline=yes", "--threshold=20", os.path.join(directory, name)],
                capture_output=True, text=True, timeout=60,
            )
            if "--offline" in result.stderr and "unrecognized" in result.stderr:
                return  # systemd older than 252
            self.assertEqual(result.returncode, 0, result.stdout[-2000:] + result.stderr)

    def test_socketActivatedProcessServes(self) -> None:
        """
        The socket-activated command line, given a listening socket the way
        systemd passes it (fd 3, C{LISTEN_FDS=1}, C{LISTEN_PID}), serves
        C{/health} on it and exits 0 on SIGTERM.
        """
        argv = shlex.split(self.unit("mcpsvc-socket.service")["Service"]["ExecStart"][0])
        argv[0] = TWISTD
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.addCleanup(listener.close)
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        port = listener.getsockname()[1]
        fd = listener.fileno()
        # As systemd does: the socket on fd 3, LISTEN_FDS, LISTEN_FDNAMES
        # (Twisted insists on it; systemd 227+ always sets it) and LISTEN_PID,
        # the pid of this small exec wrapper, which twistd keeps.
        move = f"os.dup2({fd}, 3)\nos.close({fd})\n" if fd != 3 else ""
        wrapper = (
            "import os, sys\n" + move
            + "os.environ.update(LISTEN_PID=str(os.getpid()), LISTEN_FDS='1', LISTEN_FDNAMES='mcpsvc.socket')\n"
            "os.execv(sys.argv[1], sys.argv[1:])\n"
        )
        shell = [sys.executable, "-c", wrapper, *argv]
        process = ActivatedProcess(self.workdir(), env={"JWT_SECRET": SECRET}, argv=shell, passFds=(fd,))
        self.addCleanup(process.kill)
        process.start(expectListening=False)
        listener.close()  # only the child holds it now
        # The socket already listens: the request waits in the backlog
        # until mcpsvc accepts it, with no race against start-up.
        status, body = getJSON(f"http://127.0.0.1:{port}/health")
        self.assertEqual((status, body["status"]), (200, "healthy"))  # type: ignore[index]
        record = process.waitFor(lambda r: "listening on" in r.get("text", ""))
        self.assertEqual(record["address"], f"127.0.0.1:{port}")
        self.assertEqual(process.stop(), 0)


class ActivatedProcess(McpsvcProcess):
    """
    An L{McpsvcProcess} started with an explicit command line and inherited
    file descriptors.
    """

    def __init__(self, workdir: str, env: Dict[str, str], argv: List[str], passFds: Tuple[int, ...]) -> None:
        super().__init__(workdir, env=env)
        self.argv = argv
        self.passFds = passFds

    def start(self, expectListening: bool = True, timeout: float = 30.0) -> "McpsvcProcess":
        self.proc = subprocess.Popen(
            self.argv, cwd=self.workdir, env=self.env, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True, bufsize=1, pass_fds=self.passFds,
        )
        return self


class DockerfileTests(WorkdirMixin, SynchronousTestCase):
    """
    C{deploy/Dockerfile}, checked statically (there is no Docker engine
    here to build it); its HEALTHCHECK command is run for real.
    """

    def instructions(self) -> List[Tuple[str, str]]:
        text = read("Dockerfile")
        joined: List[Tuple[str, str]] = []
        pending = ""
        for raw in text.splitlines():
            if raw.lstrip().startswith("#"):
                continue
            line = pending + raw.rstrip()
            if line.endswith("\\"):
                pending = line[:-1] + " "
                continue
            pending = ""
            if line.strip():
                keyword, _, rest = line.strip().partition(" ")
                joined.append((keyword.upper(), rest.strip()))
        return joined

    def test_image(self) -> None:
        """
        python:3.11-slim; installs the package with a plain C{pip install .}
        and then writes Twisted's plugin cache; runs as a non-root user; listens on 0.0.0.0:3000;
        starts C{twistd --pidfile= -n mcpsvc}.
        """
        steps = self.instructions()
        keywords = [k for k, _ in steps]
        self.assertEqual(steps[0], ("FROM", "python:3.11-slim"))
        runs = [i for i, (k, v) in enumerate(steps) if k == "RUN" and "pip install" in v]
        self.assertEqual(len(runs), 1)
        pip = steps[runs[0]][1]
        # The plain install a user would type: a regular (non-editable)
        # install of the copied checkout, no config settings.
        self.assertRegex(pip, r"(^|&& )pip install \.( |$)")
        self.assertNotIn("--config-settings", pip)
        self.assertNotIn("editable", pip)
        self.assertNotRegex(pip, r"pip install (-e|--editable)")
        regenerate = 'python -c "from twisted.plugin import IPlugin, getPlugins; list(getPlugins(IPlugin))"'
        self.assertIn(regenerate, pip)
        self.assertLess(pip.index("pip install"), pip.index(regenerate))
        users = [v for k, v in steps if k == "USER"]
        self.assertTrue(users, "no USER")
        self.assertNotIn(users[-1].split(":")[0], ("root", "0"))
        self.assertLess(keywords.index("USER"), keywords.index("CMD"))
        env = " ".join(v for k, v in steps if k == "ENV").split()
        self.assertIn("HOST=0.0.0.0", env)
        self.assertIn("PORT=3000", env)
        self.assertIn(("EXPOSE", "3000"), steps)
        self.assertEqual([json.loads(v) for k, v in steps if k == "CMD"], [["twistd", "--pidfile=", "-n", "mcpsvc"]])
        self.assertEqual(keywords.count("HEALTHCHECK"), 1)

    def healthcheck(self) -> List[str]:
        (value,) = [v for k, v in self.instructions() if k == "HEALTHCHECK"]
        self.assertIn("/health", value)
        argv = json.loads(value[value.index("CMD ") + 4:])
        self.assertEqual(argv[0], "python")
        return [sys.executable, *argv[1:]]

    def test_healthcheckCommand(self) -> None:
        """
        The HEALTHCHECK command, run against a real mcpsvc on C{$PORT},
        succeeds; with nothing listening there it fails.
        """
        argv = self.healthcheck()
        process = McpsvcProcess(self.workdir(), env={"JWT_SECRET": SECRET})
        self.addCleanup(process.kill)
        process.start()
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PORT": str(process.port)}
        ok = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=30)
        self.assertEqual(ok.returncode, 0, ok.stderr)
        self.assertEqual(process.stop(), 0)
        down = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=30)
        self.assertNotEqual(down.returncode, 0)


class NginxConfigTests(SynchronousTestCase):
    """
    Static properties of C{deploy/nginx/mcpsvc.conf} that the end-to-end
    tests cannot observe cheaply.
    """

    def block(self, text: str, opener: str) -> str:
        start = text.index(opener)
        depth = 0
        for i in range(text.index("{", start), len(text)):
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            if depth == 0:
                return text[start:i + 1]
        raise AssertionError(f"unbalanced braces after {opener!r}")

    def conf(self) -> str:
        return re.sub(r"#[^\n]*", "", read("nginx", "mcpsvc.conf"))

    def test_mcpIsNotBuffered(self) -> None:
        """
        C{location /mcp} turns buffering, caching and gzip off and allows
        long-lived streams; no location sets its own C{proxy_set_header}
        (which would drop every forwarded header the server sets).
        """
        text = self.conf()
        mcp = self.block(text, "location /mcp")
        for directive in ("proxy_buffering off;", "proxy_cache off;", "gzip off;", "proxy_pass http://mcpsvc;"):
            self.assertIn(directive, mcp)
        timeout = re.search(r"proxy_read_timeout\s+(\d+)([smh]?);", mcp)
        assert timeout is not None
        self.assertGreaterEqual(int(timeout.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[timeout.group(2)], 600)
        for match in re.finditer(r"location\s+[^{]+\{", text):
            self.assertNotIn("proxy_set_header", self.block(text, match.group(0)))
        self.assertIn("client_max_body_size 1m;", text)
        for header in ("X-Forwarded-For $proxy_add_x_forwarded_for", "X-Forwarded-Proto $scheme",
                       "X-Forwarded-Host $http_host"):
            self.assertIn(f"proxy_set_header {header};", text)


class StubUpstream:
    """
    A one-connection HTTP upstream on loopback that records the request
    nginx sends it and answers with a server-sent event stream: one event
    at once, the next only when L{release} is set. Through a buffering
    proxy the first event would not arrive until the second was sent.
    """

    def __init__(self) -> None:
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(4)
        self.listener.settimeout(15)
        self.port = self.listener.getsockname()[1]
        self.requestLine = ""
        self.headers: Dict[str, str] = {}
        self.release = threading.Event()
        self.error: Optional[BaseException] = None
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        try:
            conn, _ = self.listener.accept()
            with conn:
                conn.settimeout(15)
                data = b""
                while b"\r\n\r\n" not in data:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    data += chunk
                head = data.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
                self.requestLine = head[0]
                for line in head[1:]:
                    name, _, value = line.partition(":")
                    self.headers[name.strip().lower()] = value.strip()

                def chunked(payload: bytes) -> bytes:
                    return b"%x\r\n%s\r\n" % (len(payload), payload)

                conn.sendall(
                    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                    b"Cache-Control: no-cache\r\nTransfer-Encoding: chunked\r\n\r\n"
                    + chunked(b"event: message\ndata: first\n\n")
                )
                self.release.wait(15)
                conn.sendall(chunked(b"event: message\ndata: second\n\n") + b"0\r\n\r\n")
        except BaseException as e:  # reported by the test
            self.error = e

    def stop(self) -> None:
        self.release.set()
        self.listener.close()
        self.thread.join(20)


class NginxTests(WorkdirMixin, SynchronousTestCase):
    """
    nginx, configured from C{deploy/nginx/mcpsvc.conf}, terminating TLS on
    loopback in front of a real mcpsvc whose public URL is nginx's.
    """

    def setUp(self) -> None:
        if nginxBinary() is None:
            self.fail("nginx is not installed: scripts/test.sh installs the Debian package nginx")

    def startStack(self, env: Optional[Dict[str, str]] = None) -> Tuple[NginxProxy, McpsvcProcess]:
        proxy = NginxProxy(self.workdir())
        self.addCleanup(proxy.stop)
        process = McpsvcProcess(self.workdir(), env={
            "ENVIRONMENT": "production",
            "JWT_SECRET": SECRET,
            "SERVER_URL": proxy.url,
            "TRUSTED_PROXIES": "127.0.0.1",
            **(env or {}),
        })
        self.addCleanup(process.kill)
        process.start()
        proxy.upstreamPort = process.port
        proxy.start()
        return proxy, process

    def requestRecord(self, process: McpsvcProcess, requestID: str) -> Dict[str, object]:
        return process.waitFor(lambda r: r.get("eventType") == "request" and r.get("requestID") == requestID, 15)

    def test_health(self) -> None:
        """
        C{GET /health} through nginx over HTTPS is mcpsvc's answer, with
        its headers, nginx's HSTS, and the request id passed through.
        """
        proxy, process = self.startStack()
        status, headers, body = proxy.request("GET", "/health", headers={"X-Request-ID": "deploy-health-1"})
        self.assertEqual(status, 200, body)
        self.assertEqual(json.loads(body)["status"], "healthy")
        self.assertEqual(headers.get("x-request-id"), "deploy-health-1")
        self.assertEqual(headers.get("x-content-type-options"), "nosniff")
        self.assertIn("max-age=", headers.get("strict-transport-security", ""))
        self.assertEqual(headers.get("server"), "nginx")  # server_tokens off
        record = self.requestRecord(process, "deploy-health-1")
        self.assertEqual((record["path"], record["status"]), ("/health", 200))
        # Without an X-Request-ID, nginx makes one and mcpsvc logs it.
        status, headers, _ = proxy.request("GET", "/ready")
        self.assertEqual(status, 200)
        self.assertRegex(headers.get("x-request-id", ""), r"^[0-9a-f]{32}$")
        self.requestRecord(process, headers["x-request-id"])
        self.assertEqual(process.stop(), 0)

    def test_forwardedFor(self) -> None:
        """
        mcpsvc's request log records the client's address as nginx saw it
        (from X-Forwarded-For, nginx being a trusted proxy), and a client
        cannot forge it: an X-Forwarded-For it sends itself is ignored.
        Directly, from an untrusted address, the header is ignored too.
        """
        proxy, process = self.startStack()
        # The client comes from 127.0.0.2, nginx connects from 127.0.0.1.
        status, _, _ = proxy.request("GET", "/health", headers={"X-Request-ID": "xff-1"}, source="127.0.0.2")
        self.assertEqual(status, 200)
        self.assertEqual(self.requestRecord(process, "xff-1")["clientAddress"], "127.0.0.2")
        status, _, _ = proxy.request(
            "GET", "/health", source="127.0.0.2",
            headers={"X-Request-ID": "xff-2", "X-Forwarded-For": "203.0.113.9"},
        )
        self.assertEqual(status, 200)
        self.assertEqual(self.requestRecord(process, "xff-2")["clientAddress"], "127.0.0.2")
        import http.client

        direct = http.client.HTTPConnection("127.0.0.1", process.port, timeout=10, source_address=("127.0.0.2", 0))
        self.addCleanup(direct.close)
        direct.request("GET", "/health", headers={"X-Request-ID": "xff-3", "X-Forwarded-For": "203.0.113.9"})
        self.assertEqual(direct.getresponse().status, 200)
        self.assertEqual(self.requestRecord(process, "xff-3")["clientAddress"], "127.0.0.2")
        self.assertEqual(process.stop(), 0)

    def test_authorizationServerMetadata(self) -> None:
        """
        The OAuth metadata fetched through nginx names nginx's public URL as
        issuer and endpoints.
        """
        proxy, process = self.startStack()
        status, _, body = proxy.request("GET", "/.well-known/oauth-authorization-server")
        self.assertEqual(status, 200, body[:500])
        metadata = json.loads(body)
        self.assertEqual(metadata["issuer"], proxy.url)
        self.assertTrue(metadata["token_endpoint"].startswith(proxy.url + "/"), metadata["token_endpoint"])
        status, _, body = proxy.request("GET", "/.well-known/oauth-protected-resource/mcp")
        self.assertEqual(status, 200, body[:500])
        self.assertEqual(json.loads(body)["resource"], proxy.url + "/mcp")
        self.assertEqual(process.stop(), 0)

    def test_httpRedirectsToHttps(self) -> None:
        """
        Plain HTTP is answered by nginx alone with a permanent redirect to
        the same path over HTTPS.
        """
        proxy, process = self.startStack()
        status, headers, _ = proxy.request("GET", "/health?probe=1", https=False)
        self.assertEqual(status, 301)
        self.assertEqual(headers["location"], "https://127.0.0.1/health?probe=1")
        self.assertEqual([r for r in process.records if r.get("eventType") == "request"], [])
        self.assertEqual(process.stop(), 0)

    def test_bodyLimit(self) -> None:
        """
        nginx refuses a body over 1 MB with 413 before it reaches mcpsvc,
        and keeps serving.
        """
        proxy, process = self.startStack()
        body = b'{"pad": "' + b"a" * (1024 * 1024 + 10) + b'"}'
        try:
            status, _, _ = proxy.request("POST", "/mcp", body=body, headers={"Content-Type": "application/json"})
        except (ConnectionResetError, BrokenPipeError):
            status = 413  # nginx answered and closed while we were sending
        self.assertEqual(status, 413)
        self.assertEqual(proxy.request("GET", "/health")[0], 200)
        self.assertEqual(process.stop(), 0)

    def test_forwardedHeadersAndStreaming(self) -> None:
        """
        What nginx sends upstream for C{POST /mcp}: HTTP/1.1 keep-alive, the
        public C{Host} (port included, as in SERVER_URL), C{X-Forwarded-For}
        / C{-Proto} / C{-Host}, a request id. And the SSE answer is not
        buffered: the first event reaches the client while the upstream is
        still holding the second back.
        """
        upstream = StubUpstream()
        self.addCleanup(upstream.stop)
        proxy = NginxProxy(self.workdir(), upstreamPort=upstream.port)
        self.addCleanup(proxy.stop)
        proxy.start()
        import http.client

        conn = http.client.HTTPSConnection(
            "127.0.0.1", proxy.httpsPort, timeout=10, context=proxy.sslContext(),
            source_address=("127.0.0.2", 0),
        )
        self.addCleanup(conn.close)
        conn.request("POST", "/mcp", body=b'{"jsonrpc":"2.0","id":1,"method":"ping"}', headers={
            "Content-Type": "application/json", "Accept": "application/json, text/event-stream",
            "X-Forwarded-For": "203.0.113.9",
        })
        response = conn.getresponse()
        self.assertEqual(response.status, 200)
        self.assertEqual(response.getheader("Content-Type"), "text/event-stream")
        first = b""
        while b"\n\n" not in first:
            chunk = response.read1(65536)  # times out (10 s) if nginx buffers
            self.assertTrue(chunk, "stream ended early")
            first += chunk
        self.assertEqual(first, b"event: message\ndata: first\n\n")
        upstream.release.set()
        self.assertEqual(response.read(), b"event: message\ndata: second\n\n")
        upstream.thread.join(10)
        self.assertIsNone(upstream.error)

        self.assertEqual(upstream.requestLine, "POST /mcp HTTP/1.1")
        headers = upstream.headers
        public = f"127.0.0.1:{proxy.httpsPort}"
        self.assertEqual(headers["host"], public)
        self.assertEqual(headers["x-forwarded-host"], public)
        self.assertEqual(headers["x-forwarded-proto"], "https")
        self.assertEqual(headers["x-forwarded-port"], str(proxy.httpsPort))
        self.assertEqual(headers["x-forwarded-for"], "203.0.113.9, 127.0.0.2")
        self.assertEqual(headers["x-real-ip"], "127.0.0.2")
        self.assertRegex(headers["x-request-id"], r"^[0-9a-f]{32}$")
        self.assertNotIn("connection", headers)  # keep-alive to the upstream
        self.assertEqual(headers["accept"], "application/json, text/event-stream")


class NginxFullFlowTests(WorkdirMixin, SynchronousTestCase):
    """
    The whole OAuth + MCP flow through nginx (issue 7, item 5): the
    official MCP SDK client, knowing only nginx's public HTTPS URL, does
    discovery, registration (with the initial access token), PKCE
    authorization (C{AUTHORIZE_MODE=auto}), token exchange, tools/list and
    tools/call, and later a refresh; a tool call with a C{progressToken}
    answers C{text/event-stream}, and its events arrive through nginx as
    they are sent, not buffered to the end. (Two defences give that:
    C{proxy_buffering off} in the shipped configuration and mcpsvc's
    C{X-Accel-Buffering: no}; with both removed this test fails, the
    events all arriving with the result.)
    """

    def setUp(self) -> None:
        if nginxBinary() is None:
            self.fail("nginx is not installed: scripts/test.sh installs the Debian package nginx")

    def test_sdkThroughNginx(self) -> None:
        import asyncio
        import http.client
        import time

        import httpx2
        from mcp import Client
        from mcp.client.streamable_http import streamable_http_client

        from tests.test_sdk_e2e import IAT, BrowserStandIn, MemoryStorage, SDKEndToEndTests

        proxy = NginxProxy(self.workdir())
        self.addCleanup(proxy.stop)
        process = McpsvcProcess(self.workdir(), env={
            "ENVIRONMENT": "production",
            "JWT_SECRET": SECRET,
            "SERVER_URL": proxy.url,
            "TRUSTED_PROXIES": "127.0.0.1",
            "DCR_AUTH_TOKEN": IAT,
            "AUTHORIZE_MODE": "auto",
            # auto approval in production: only with metadata documents off
            "CIMD": "off",
            "TOOL_PACKS": "core,conformance",
        })
        self.addCleanup(process.kill)
        process.start()
        proxy.upstreamPort = process.port
        proxy.start()
        context = proxy.sslContext()
        url = proxy.url

        class TLSBrowser(BrowserStandIn):
            async def redirectHandler(self, authorizationURL: str) -> None:
                assert authorizationURL.startswith(url + "/"), authorizationURL
                async with httpx2.AsyncClient(verify=context) as browser:
                    response = await browser.get(authorizationURL, follow_redirects=False)
                assert response.status_code in (302, 303), response.text
                self.location = response.headers["location"]

        storage = MemoryStorage()
        provider = SDKEndToEndTests.provider(self, url, storage, TLSBrowser())  # type: ignore[arg-type]

        async def session() -> Dict[str, object]:
            async with httpx2.AsyncClient(auth=provider, verify=context) as client:
                async with Client(streamable_http_client(url + "/mcp", http_client=client), mode="legacy") as mcp:
                    tools = await mcp.list_tools()
                    echoed = await mcp.call_tool("echo_message", {"message": "through nginx"})
                    return {"tools": [t.name for t in tools.tools], "echo": echoed}

        result = asyncio.run(session())
        self.assertIn("echo_message", result["tools"])
        echo = result["echo"]
        self.assertFalse(echo.is_error)  # type: ignore[attr-defined]
        self.assertIn("through nginx", json.dumps(echo.model_dump(mode="json")))  # type: ignore[attr-defined]
        assert storage.tokens is not None and storage.clientInfo is not None
        first = storage.tokens
        # Every step reached mcpsvc through nginx (from nginx's address).
        for method, path, status in (
            ("GET", "/.well-known/oauth-protected-resource/mcp", 200),
            ("GET", "/.well-known/oauth-authorization-server", 200),
            ("POST", "/oauth/register", 201),
            ("GET", "/oauth/authorize", 302),
            ("POST", "/oauth/token", 200),
            ("POST", "/mcp", 200),
        ):
            process.waitFor(
                lambda r: (r.get("eventType"), r.get("method"), r.get("path"), r.get("status"))
                == ("request", method, path, status), 10
            )

        # Refresh, through nginx too.
        provider.context.token_expiry_time = 1.0
        result = asyncio.run(session())
        self.assertFalse(result["echo"].is_error)  # type: ignore[attr-defined]
        assert storage.tokens is not None
        self.assertNotEqual(storage.tokens.refresh_token, first.refresh_token)
        self.assertNotEqual(storage.tokens.access_token, first.access_token)

        # SSE through nginx, unbuffered: the tool reports progress at once
        # and answers 100 ms later; the first event must arrive well before
        # the result (a buffering proxy delivers them together).
        from tests.flow import Flow

        flow = Flow(url, IAT, context=context)
        flow.tokens = {"access_token": storage.tokens.access_token}
        status, _, body = flow.initialize(url)
        self.assertEqual(status, 200, body)
        assert flow.sessionID is not None
        conn = http.client.HTTPSConnection("127.0.0.1", proxy.httpsPort, timeout=10, context=context)
        self.addCleanup(conn.close)
        conn.request("POST", "/mcp", body=json.dumps({
            "jsonrpc": "2.0", "id": 7, "method": "tools/call",
            "params": {"name": "test_tool_with_progress", "arguments": {}, "_meta": {"progressToken": "p-1"}},
        }).encode(), headers={
            "Authorization": "Bearer " + storage.tokens.access_token,
            "Content-Type": "application/json", "Accept": "application/json, text/event-stream",
            "MCP-Protocol-Version": "2025-06-18", "Mcp-Session-Id": flow.sessionID,
        })
        sent = time.monotonic()
        response = conn.getresponse()
        self.assertEqual(response.status, 200)
        self.assertTrue(response.getheader("Content-Type", "").startswith("text/event-stream"))
        arrivals: List[Tuple[float, dict]] = []
        buffer = b""
        while not any(m.get("id") == 7 for _, m in arrivals):
            chunk = response.read1(65536)
            self.assertTrue(chunk, f"stream ended before the result: {arrivals}")
            at = time.monotonic() - sent
            buffer += chunk
            while b"\n\n" in buffer:
                event, buffer = buffer.split(b"\n\n", 1)
                data = "\n".join(line[5:].strip() for line in event.decode().splitlines()
                                 if line.startswith("data:"))
                if data:
                    arrivals.append((at, json.loads(data)))
        progress = [(at, m) for at, m in arrivals if m.get("method") == "notifications/progress"]
        self.assertEqual([m["params"]["progress"] for _, m in progress], [0, 50, 100])
        self.assertEqual({m["params"]["progressToken"] for _, m in progress}, {"p-1"})
        resultAt = arrivals[-1][0]
        self.assertFalse(arrivals[-1][1]["result"].get("isError"))
        self.assertGreater(resultAt - progress[0][0], 0.05, arrivals)
        print(f"\n[nginx sse] first progress at {progress[0][0]:.3f}s, result at {resultAt:.3f}s",
              file=sys.stderr)
        conn.close()
        self.assertEqual(process.stop(), 0)
