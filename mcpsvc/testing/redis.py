# -*- test-case-name: mcpsvc.storage.test.test_redis -*-
"""
A real, throwaway C{redis-server} for tests.

Usage::

    server = RedisServer(self.mktemp()).start()   # blocks until PING answers
    self.addCleanup(server.stop)
    config = config.replace(store="redis", redisURL=server.url)
    ...
    server.stop()      # outage (or server.kill(): SIGKILL)
    server.start()     # back on the same port, same directory (AOF reloaded)

The server binds 127.0.0.1 only, on a free port picked at construction (or
the one given), writes everything under its directory (config, log, AOF),
never saves RDB snapshots, and is stopped with bounded waits. With
C{sentinelFor=(name, masterPort)} it runs as a Sentinel monitoring that
master instead, with C{quorum} (default 1) Sentinels needed to agree that
the master is down: with three Sentinels, give each C{quorum=2}. C{appendonly}
turns on the AOF with C{appendfsync} (default C{always}: every acknowledged
write is on disk).

If C{redis-server} is not installed, L{RedisServer.start} raises
L{RedisServerError} saying so: tests using it fail, they do not skip.

The helper blocks (it is meant for test fixtures and subprocess-driven
tests); it uses the wall clock only to bound its waits.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from typing import Any, List, Optional, Tuple

__all__ = ["RedisServer", "RedisServerError", "freePort"]


class RedisServerError(Exception):
    """
    The test Redis server could not be started, stopped or queried.
    """


def freePort(host: str = "127.0.0.1") -> int:
    """
    Return a TCP port that is free on C{host} right now.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class RedisServer:
    """
    A C{redis-server} child process on loopback.

    @ivar port: the port, fixed for the life of the object (restarts reuse it).
    @ivar directory: where the config, log and AOF live.
    """

    host = "127.0.0.1"

    def __init__(
        self,
        directory: str,
        port: Optional[int] = None,
        appendonly: bool = False,
        appendfsync: str = "always",
        password: Optional[str] = None,
        executable: Optional[str] = None,
        startTimeout: float = 10.0,
        sentinelFor: Optional[Tuple[str, int]] = None,
        quorum: int = 1,
    ) -> None:
        self.directory = os.path.abspath(directory)
        self.port = port if port is not None else freePort(self.host)
        self.appendonly = appendonly
        self.appendfsync = appendfsync
        self.password = password
        self.executable = executable or shutil.which("redis-server") or "/usr/bin/redis-server"
        self.startTimeout = startTimeout
        self.sentinelFor = sentinelFor
        self.quorum = quorum
        self.process: Optional[subprocess.Popen[bytes]] = None

    @property
    def url(self) -> str:
        """
        A C{redis://} URL for this server (database 0).
        """
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}{self.host}:{self.port}/0"

    @property
    def logPath(self) -> str:
        return os.path.join(self.directory, "redis.log")

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def _writeConfig(self) -> str:
        os.makedirs(self.directory, exist_ok=True)
        if self.sentinelFor is not None:
            name, masterPort = self.sentinelFor
            lines = [
                f"port {self.port}",
                f"bind {self.host}",
                f"dir {self.directory}",
                f"logfile {self.logPath}",
                f"sentinel monitor {name} {self.host} {masterPort} {self.quorum}",
                f"sentinel down-after-milliseconds {name} 5000",
            ]
            path = os.path.join(self.directory, "sentinel.conf")
            with open(path, "w") as f:
                f.write("\n".join(lines) + "\n")
            return path
        lines = [
            f"port {self.port}",
            f"bind {self.host}",
            f"dir {self.directory}",
            f"logfile {self.logPath}",
            'save ""',
            "daemonize no",
            "protected-mode yes",
            f"appendonly {'yes' if self.appendonly else 'no'}",
            f"appendfsync {self.appendfsync}",
        ]
        if self.password:
            quoted = self.password.replace("\\", "\\\\").replace('"', '\\"')
            lines.append(f'requirepass "{quoted}"')
        path = os.path.join(self.directory, "redis.conf")
        with open(path, "w") as f:
            f.write("\n".join(lines) + "\n")
        return path

    def start(self) -> "RedisServer":
        """
        Start the server and wait (bounded) until it answers C{PING}.

        @raise RedisServerError: if C{redis-server} is missing, exits, or does
            not answer within C{startTimeout} seconds.
        """
        if self.running:
            return self
        if not os.access(self.executable, os.X_OK):
            raise RedisServerError(
                f"redis-server not found ({self.executable!r}): these tests need a real "
                "Redis 6+ server; install it (e.g. apt-get install redis-server)"
            )
        config = self._writeConfig()
        with open(os.path.join(self.directory, "redis.out"), "ab") as output:
            self.process = subprocess.Popen(
                [self.executable, config] + (["--sentinel"] if self.sentinelFor else []),
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                cwd=self.directory,
            )
        deadline = time.monotonic() + self.startTimeout
        lastError: Optional[BaseException] = None
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RedisServerError(
                    f"redis-server exited with {self.process.returncode}: {self._logTail()}"
                )
            try:
                if self.command("PING", timeout=0.5) == "PONG":
                    return self
            except (OSError, RedisServerError) as e:
                lastError = e
            time.sleep(0.01)  # bounded by the deadline: waiting on an external process
        self.kill()
        raise RedisServerError(
            f"redis-server did not answer on port {self.port} within {self.startTimeout}s "
            f"({lastError}): {self._logTail()}"
        )

    def _logTail(self) -> str:
        tail = []
        for path in (os.path.join(self.directory, "redis.out"), self.logPath):
            try:
                with open(path, errors="replace") as f:
                    tail += f.readlines()[-10:]
            except OSError:
                pass
        return "".join(tail) or "(no output)"

    def _wait(self, timeout: float) -> None:
        assert self.process is not None
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout)

    def stop(self, timeout: float = 10.0) -> None:
        """
        Stop the server gracefully (SIGTERM: the AOF is flushed) and wait
        for it to exit. Does nothing if it is not running.
        """
        if self.running:
            assert self.process is not None
            self.process.terminate()
            self._wait(timeout)
        self.process = None

    def kill(self, timeout: float = 10.0) -> None:
        """
        Kill the server with SIGKILL (a crash) and wait for it to exit.
        """
        if self.running:
            assert self.process is not None
            self.process.send_signal(signal.SIGKILL)
            self._wait(timeout)
        self.process = None

    def restart(self) -> "RedisServer":
        """
        Stop, then start again on the same port and directory.
        """
        self.stop()
        return self.start()

    def command(self, *args: Any, timeout: float = 5.0) -> Any:
        """
        Send one command over a fresh connection and return the decoded
        reply (C{str}, C{int}, C{None} or lists of them).

        @raise RedisServerError: for an error reply.
        """
        with socket.create_connection((self.host, self.port), timeout=timeout) as s:
            reader = s.makefile("rb")
            if self.password:
                s.sendall(_encode(["AUTH", self.password]))
                _readReply(reader)
            s.sendall(_encode(list(args)))
            return _readReply(reader)


def _encode(args: List[Any]) -> bytes:
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg if isinstance(arg, bytes) else str(arg).encode("utf-8")
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


def _readReply(reader: Any) -> Any:
    line = reader.readline()
    if not line:
        raise RedisServerError("connection closed")
    kind, rest = line[:1], line[1:-2]
    if kind == b"+":
        return rest.decode("utf-8")
    if kind == b"-":
        raise RedisServerError(rest.decode("utf-8"))
    if kind == b":":
        return int(rest)
    if kind == b"$":
        n = int(rest)
        if n < 0:
            return None
        data = reader.read(n + 2)[:-2]
        return data.decode("utf-8", "replace")
    if kind == b"*":
        n = int(rest)
        if n < 0:
            return None
        return [_readReply(reader) for _ in range(n)]
    raise RedisServerError(f"unexpected reply {line!r}")
