"""
Run a real C{twistd -n mcpsvc} process for end-to-end tests.

The process listens on a port the kernel picks (C{tcp:0} on loopback); we
learn it from the JSON log line announcing the listener. Every wait is
bounded and event-driven (reading the child's output), never a sleep.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TWISTD = os.path.join(os.path.dirname(sys.executable), "twistd")
SECRET = "e2e-secret-" + "x" * 32


def makeCertificate(directory: str, host: str = "127.0.0.1", ca: bool = False) -> Tuple[str, str]:
    """
    A self-signed certificate for C{host} (an IP address or a DNS name,
    the only name it is valid for), written with its key into
    C{directory}: the key and certificate file paths. With C{ca}, it is
    marked a CA (some clients insist on that for a certificate they are
    told to trust).
    """
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    try:
        altName: Any = x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        altName = x509.DNSName(host)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)])
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([altName]), critical=False)
    )
    if ca:
        builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=None),
                                        critical=True)
    cert = builder.sign(key, hashes.SHA256())
    keyPath = os.path.join(directory, "key.pem")
    certPath = os.path.join(directory, "cert.pem")
    with open(keyPath, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    with open(certPath, "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    return keyPath, certPath


class McpsvcProcess:
    """
    A running mcpsvc. Use L{start}, then L{url}; always L{stop} (or
    L{kill}) in cleanup.

    @ivar lines: every line the process wrote (stdout and stderr merged).
    @ivar records: the lines that parsed as JSON log records.
    """

    def __init__(
        self,
        workdir: str,
        env: Optional[Dict[str, str]] = None,
        listen: Sequence[str] = ("tcp:0:interface=127.0.0.1",),
        args: Sequence[str] = (),
        inheritEnv: bool = False,
        twistd: str = TWISTD,
    ) -> None:
        self.workdir = workdir
        self.twistd = twistd
        base = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": os.environ.get("HOME", "/root"),
            "LOG_FORMAT": "json",
            "PYTHONUNBUFFERED": "1",
        }
        if inheritEnv:
            base.update(os.environ)
        base.update(env or {})
        self.env = base
        self.listen = list(listen)
        self.args = list(args)
        self.lines: List[str] = []
        self.records: List[Dict[str, Any]] = []
        self._proc: Optional[subprocess.Popen[bytes]] = None
        self.port: Optional[int] = None
        self._lastRecord: Optional[Dict[str, Any]] = None
        self._queue: "queue.Queue[Optional[str]]" = queue.Queue()
        self._eof = False

    def start(self, expectListening: bool = True, timeout: float = 30.0) -> "McpsvcProcess":
        argv = [self.twistd, "--pidfile=", "-n", "mcpsvc"]
        for description in self.listen:
            argv += ["--listen", description]
        argv += self.args
        self.proc = subprocess.Popen(
            argv,
            cwd=self.workdir,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            bufsize=0,
        )
        if expectListening:
            record = self.waitFor(lambda r: "listening on" in r.get("text", ""), timeout)
            self.port = int(str(record["address"]).rsplit(":", 1)[1])
        return self

    @property
    def proc(self) -> Optional["subprocess.Popen[bytes]"]:
        return self._proc

    @proc.setter
    def proc(self, proc: Optional["subprocess.Popen[bytes]"]) -> None:
        """
        Attach a started child (subclasses start theirs differently) and
        begin reading its output.
        """
        self._proc = proc
        if proc is not None and proc.stdout is not None:
            threading.Thread(target=self._pump, name="mcpsvc-output", daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _pump(self) -> None:
        """
        Read the child's output continuously (in a thread), so that a busy
        child never blocks on a full pipe while a test is doing something
        else.
        """
        assert self.proc is not None and self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        buffer = b""
        while True:
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                chunk = b""
            if not chunk:
                if buffer:
                    self._queue.put(buffer.decode("utf-8", "replace"))
                self._queue.put(None)
                return
            buffer += chunk
            *lines, buffer = buffer.split(b"\n")
            for raw in lines:
                self._queue.put(raw.decode("utf-8", "replace"))

    def _readLine(self, deadline: float) -> Optional[str]:
        """
        Return the next line of output, C{""} at end of file, or C{None}
        at the deadline.
        """
        if self._eof:
            return ""
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return None
        try:
            item = self._queue.get(timeout=remaining)
        except queue.Empty:
            return None
        if item is None:
            self._eof = True
            return ""
        line = item
        self.lines.append(line)
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        self._lastRecord = record if isinstance(record, dict) else None
        if self._lastRecord is not None:
            self.records.append(self._lastRecord)
        return line

    def waitFor(self, predicate: Any, timeout: float = 30.0) -> Dict[str, Any]:
        """
        Read output until a JSON record satisfies C{predicate}; return it.
        """
        for record in self.records:
            if predicate(record):
                return record
        deadline = time.monotonic() + timeout
        while True:
            line = self._readLine(deadline)
            if line is None:
                raise AssertionError(
                    "timed out waiting for the process; output so far:\n" + "\n".join(self.lines[-40:])
                )
            if line == "":
                raise AssertionError(
                    f"process exited ({self.proc.wait()}) first; output:\n" + "\n".join(self.lines[-40:])
                )
            if self._lastRecord is not None and predicate(self._lastRecord):
                return self._lastRecord

    def wait(self, timeout: float = 30.0) -> int:
        """
        Read the rest of the output and return the exit status.
        """
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while True:
            line = self._readLine(deadline)
            if line == "":
                break
            if line is None:
                raise AssertionError("process did not exit; output:\n" + "\n".join(self.lines[-40:]))
        return self.proc.wait(timeout=max(0.1, deadline - time.monotonic()))

    def signal(self, number: int = signal.SIGTERM) -> None:
        assert self.proc is not None
        self.proc.send_signal(number)

    def stop(self, timeout: float = 30.0) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.signal(signal.SIGTERM)
        try:
            return self.wait(timeout)
        except AssertionError:
            self.kill()
            raise

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        if self.proc is not None and self.proc.stdout is not None:
            self.proc.stdout.close()

    @property
    def output(self) -> str:
        return "\n".join(self.lines)


def startInstances(
    case: Any, count: int, iat: str, **extra: str,
) -> Tuple[str, List[McpsvcProcess]]:
    """
    Start a real C{redis-server} and C{count} instances of one service on
    it (C{STORE=redis}, C{DEPLOYMENT_TYPE=multi-server}, one C{JWT_SECRET},
    C{DCR_AUTH_TOKEN} C{iat}, C{AUTHORIZE_MODE=auto}, and C{extra}), all on
    loopback, stopped in C{case}'s cleanup.

    @param case: the test case (its C{mktemp} and C{addCleanup}).
    @return: the public URL of the service (the first instance's, standing
        in for the load balancer's: the issuer and audience) and the
        processes.
    """
    from mcpsvc.testing.redis import RedisServer, freePort

    redis = RedisServer(os.path.abspath(case.mktemp())).start()
    case.addCleanup(redis.stop)
    ports = [freePort() for _ in range(count)]
    serverURL = f"http://127.0.0.1:{ports[0]}"
    env: Dict[str, str] = {
        "STORE": "redis",
        "REDIS_URL": redis.url,
        "DEPLOYMENT_TYPE": "multi-server",
        "JWT_SECRET": SECRET,
        "DCR_AUTH_TOKEN": iat,
        "AUTHORIZE_MODE": "auto",
        "SERVER_URL": serverURL,
        **extra,
    }
    processes = []
    for port in ports:
        workdir = os.path.abspath(case.mktemp())
        os.makedirs(workdir)
        process = McpsvcProcess(workdir, env=env, listen=[f"tcp:{port}:interface=127.0.0.1"])
        case.addCleanup(process.kill)
        processes.append(process)
    for process in processes:
        process.start()
    return serverURL, processes
