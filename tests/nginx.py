"""
Run a real nginx in front of mcpsvc for end-to-end tests, configured from
the shipped C{deploy/nginx/mcpsvc.conf}.

The shipped file is used as it is, except for the lines naming things that
only exist on a production machine: the C{listen} lines (loopback ports the
kernel picked), the C{ssl_certificate}/C{ssl_certificate_key} paths (a
self-signed certificate the test generated) and the upstream C{server} line
(the mcpsvc process under test). Each rewrite must match exactly as many
lines as expected, so editing the shipped file in a way the test no longer
understands fails loudly instead of testing something else.

nginx runs in the foreground as our child (C{daemon off}, C{master_process
off}: one process, nothing left behind), logging to stderr at C{notice}
level; we know it listens once it has written its start-up notices, which
it does after binding its sockets. Every wait is bounded and event-driven.
"""

from __future__ import annotations

import http.client
import os
import re
import select
import shutil
import signal
import socket
import ssl
import subprocess
import time
from typing import Callable, Dict, List, Mapping, Optional, Tuple

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHIPPED_CONF = os.path.join(HERE, "deploy", "nginx", "mcpsvc.conf")


def nginxBinary() -> Optional[str]:
    """
    The nginx executable (Debian installs it in /usr/sbin, which may not be
    on a non-root PATH), or C{None}.
    """
    return shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/usr/local/sbin")


def freePort() -> int:
    """
    A loopback TCP port that was free a moment ago.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _replace(pattern: str, replacement: str, text: str, count: int) -> str:
    new, n = re.subn(pattern, replacement, text, flags=re.MULTILINE)
    if n != count:
        raise AssertionError(
            f"deploy/nginx/mcpsvc.conf: expected {count} line(s) matching {pattern!r}, found {n}"
        )
    return new


def renderServerConf(
    shipped: str, *, upstream: str, httpsPort: int, httpPort: int, cert: str, key: str
) -> str:
    """
    Turn the shipped server configuration into one for loopback: IPv4
    C{listen} lines on the given ports, no IPv6 ones, the test's certificate
    and C{upstream} (C{host:port}) as the only upstream server.
    """
    text = _replace(r"^(\s*)listen\s+\[::\]:\d+[^;]*;\s*\n", "", shipped, 2)
    text = _replace(r"^(\s*)listen\s+443\b", rf"\1listen 127.0.0.1:{httpsPort}", text, 1)
    text = _replace(r"^(\s*)listen\s+80\b", rf"\1listen 127.0.0.1:{httpPort}", text, 1)
    text = _replace(r"^(\s*)ssl_certificate\s+\S+;", rf"\1ssl_certificate {cert};", text, 1)
    text = _replace(r"^(\s*)ssl_certificate_key\s+\S+;", rf"\1ssl_certificate_key {key};", text, 1)
    text = _replace(
        r"^(\s*)server\s+127\.0\.0\.1:3000\b([^;]*);", rf"\1server {upstream}\2;", text, 1
    )
    return text


MAIN_CONF = """\
master_process off;
worker_processes 1;
events {{ worker_connections 256; }}
http {{
    access_log {prefix}/access.log;
    client_body_temp_path {prefix}/tmp/body;
    proxy_temp_path {prefix}/tmp/proxy;
    fastcgi_temp_path {prefix}/tmp/fastcgi;
    uwsgi_temp_path {prefix}/tmp/uwsgi;
    scgi_temp_path {prefix}/tmp/scgi;
    default_type application/octet-stream;
    include {prefix}/mcpsvc.conf;
}}
"""


class NginxProxy:
    """
    nginx configured from the shipped file, terminating TLS on loopback and
    proxying to C{upstreamPort}. Use L{start}, then L{url}; always L{stop}
    in cleanup (it is idempotent).

    @ivar url: the public HTTPS URL, e.g. C{https://127.0.0.1:40123}; give
        it to mcpsvc as C{SERVER_URL}. Known before L{start}, so mcpsvc can
        be started first (or after).
    @ivar httpURL: the plain-HTTP listener (redirects to HTTPS).
    @ivar certPath: the self-signed certificate; trust it with L{sslContext}.
    @ivar lines: what nginx wrote to stderr.
    """

    def __init__(self, directory: str, upstreamPort: Optional[int] = None) -> None:
        from tests.process import makeCertificate

        self.prefix = os.path.abspath(directory)
        os.makedirs(os.path.join(self.prefix, "tmp"), exist_ok=True)
        self.keyPath, self.certPath = makeCertificate(self.prefix)
        self.upstreamPort = upstreamPort
        self.httpsPort = freePort()
        self.httpPort = freePort()
        self.url = f"https://127.0.0.1:{self.httpsPort}"
        self.httpURL = f"http://127.0.0.1:{self.httpPort}"
        self.proc: Optional[subprocess.Popen[bytes]] = None
        self.lines: List[str] = []
        self._partial = b""

    def writeConfig(self) -> str:
        assert self.upstreamPort is not None, "set upstreamPort first"
        with open(SHIPPED_CONF) as f:
            shipped = f.read()
        server = renderServerConf(
            shipped, upstream=f"127.0.0.1:{self.upstreamPort}",
            httpsPort=self.httpsPort, httpPort=self.httpPort,
            cert=self.certPath, key=self.keyPath,
        )
        with open(os.path.join(self.prefix, "mcpsvc.conf"), "w") as f:
            f.write(server)
        mainPath = os.path.join(self.prefix, "nginx.conf")
        with open(mainPath, "w") as f:
            f.write(MAIN_CONF.format(prefix=self.prefix))
        return mainPath

    def argv(self, *extra: str) -> List[str]:
        binary = nginxBinary()
        if binary is None:
            raise AssertionError("nginx is not installed (Debian package nginx; scripts/test.sh installs it)")
        return [
            binary, "-e", "stderr", "-p", self.prefix + "/", "-c", os.path.join(self.prefix, "nginx.conf"),
            "-g", f"daemon off; pid {self.prefix}/nginx.pid; error_log stderr notice;",
            *extra,
        ]

    def test(self) -> subprocess.CompletedProcess:
        """
        C{nginx -t} on the generated configuration.
        """
        self.writeConfig()
        return subprocess.run(self.argv("-t"), capture_output=True, text=True, timeout=30)

    def start(self, timeout: float = 15.0) -> "NginxProxy":
        self.writeConfig()
        self.proc = subprocess.Popen(
            self.argv(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        # ngx_os_status() logs "getrlimit(RLIMIT_NOFILE)" after the listening
        # sockets are bound, just before the pid file and the event loop.
        try:
            self._waitForLine(lambda line: "getrlimit(RLIMIT_NOFILE)" in line or "start worker" in line, timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _readLines(self, timeout: float) -> Optional[bool]:
        """
        Wait up to C{timeout} for output and collect the complete lines;
        C{None} on timeout, C{False} at end of file. Reads the raw pipe (a
        buffered reader would hide lines from C{select}).
        """
        assert self.proc is not None and self.proc.stderr is not None
        fd = self.proc.stderr.fileno()
        if not select.select([fd], [], [], max(0.0, timeout))[0]:
            return None
        chunk = os.read(fd, 65536)
        if not chunk:
            if self._partial:
                self.lines.append(self._partial.decode("utf-8", "replace"))
                self._partial = b""
            return False
        *complete, self._partial = (self._partial + chunk).split(b"\n")
        self.lines.extend(line.decode("utf-8", "replace") for line in complete)
        return True

    def _waitForLine(self, predicate: Callable[[str], bool], timeout: float) -> str:
        deadline = time.monotonic() + timeout
        seen = 0
        while True:
            for line in self.lines[seen:]:
                if predicate(line):
                    return line
            seen = len(self.lines)
            remaining = deadline - time.monotonic()
            got = self._readLines(remaining) if remaining > 0 else None
            if got is None:
                raise AssertionError("timed out waiting for nginx:\n" + "\n".join(self.lines[-40:]))
            if got is False:
                assert self.proc is not None
                raise AssertionError(
                    f"nginx exited ({self.proc.wait()}):\n" + "\n".join(self.lines[-40:])
                )

    def drain(self) -> None:
        """
        Collect whatever nginx has written so far without blocking.
        """
        if self.proc is None or self.proc.stderr is None or self.proc.stderr.closed:
            return
        while self._readLines(0):
            pass

    def stop(self, timeout: float = 10.0) -> Optional[int]:
        """
        Stop nginx (SIGQUIT: graceful), SIGKILL it if it lingers; return its
        exit status.
        """
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGQUIT)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        if self.proc.stderr is not None and not self.proc.stderr.closed:
            while self._readLines(0):  # the rest, up to end of file
                pass
            self.proc.stderr.close()
        return self.proc.returncode

    @property
    def output(self) -> str:
        self.drain()
        return "\n".join(self.lines)

    def sslContext(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=self.certPath)

    def request(
        self,
        method: str,
        path: str,
        body: Optional[bytes] = None,
        headers: Optional[Mapping[str, str]] = None,
        source: Optional[str] = None,
        https: bool = True,
        timeout: float = 10.0,
    ) -> Tuple[int, Dict[str, str], bytes]:
        """
        One request through nginx; returns (status, headers with lower-case
        names, body). C{source} binds the client socket to another loopback
        address (e.g. C{127.0.0.2}) so it differs from nginx's own.
        """
        address = (source, 0) if source else None
        conn: http.client.HTTPConnection
        if https:
            conn = http.client.HTTPSConnection(
                "127.0.0.1", self.httpsPort, timeout=timeout,
                context=self.sslContext(), source_address=address,
            )
        else:
            conn = http.client.HTTPConnection(
                "127.0.0.1", self.httpPort, timeout=timeout, source_address=address,
            )
        try:
            conn.request(method, path, body=body, headers=dict(headers or {}))
            response = conn.getresponse()
            data = response.read()
            return response.status, {k.lower(): v for k, v in response.getheaders()}, data
        finally:
            conn.close()
