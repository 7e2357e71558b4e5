# -*- test-case-name: tests.test_workers -*-
"""
C{twistd -n mcpsvc --workers N}: N worker processes behind one listening
address (issue 8, item 3).

The parent (L{WorkerSupervisor}) builds no application: it binds every
C{tcp:} listen description itself (in C{privilegedStartService}, so a
privileged port works before twistd sheds privileges), then spawns N
children running C{twistd -n mcpsvc} with the same options and
environment. Each child receives the listening sockets as file descriptors
3, 4, ... with C{MCPSVC_WORKER_FDS} set, and serves them through Twisted's
C{systemd:domain=INET:index=K} endpoint (which adopts a socket with
C{adoptStreamPort}): the kernel hands each new connection to one of them.

The store is what keeps workers consistent, so C{STORE=memory} is refused
(each process would have its own state); SQLite (WAL, one file, a busy
timeout) and Redis are shared. C{--metrics-listen} is refused too (each
worker would need its own port).

The parent supervises: a worker that dies unexpectedly is restarted after
a second, at most L{MAX_RESTARTS} times per L{RESTART_WINDOW} seconds for
the whole group (then the parent stops everything and logs a critical).
On SIGHUP it forwards SIGHUP (each worker reloads its tool packs).
On SIGTERM or SIGINT it forwards SIGTERM, so every worker drains its
in-flight requests as a single process would, and it exits once all
children have (killing stragglers after the drain timeout plus 10 s).

A worker answers with C{X-Mcpsvc-Worker: <index>} (1..N), so tests and
operators can see which one served a request (an index, not a pid).

Each worker also inherits the read end of a pipe whose write end only the
parent holds (its I{lifeline}, L{ParentLifeline}): if the parent dies
without stopping them (C{SIGKILL}, an OOM kill), the pipe reports end of
file and every worker stops gracefully, draining in-flight requests and
closing the inherited sockets, instead of serving on as orphans that no
supervisor manages.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
from typing import Any, Dict, List, Optional, Sequence, Tuple

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger

__all__ = [
    "WorkerSupervisor",
    "WorkerError",
    "WORKER_ENV",
    "workerIndex",
    "workerListen",
    "tcpAddress",
    "childArguments",
]

log = Logger()

#: Set in a worker's environment: its index, 1..N.
WORKER_ENV = "MCPSVC_WORKER"
#: Set in a worker's environment: how many sockets it inherits.
_COUNT_ENV = "MCPSVC_WORKER_FDS"
#: Set in a worker's environment: the descriptor of its lifeline.
_LIFELINE_ENV = "MCPSVC_WORKER_LIFELINE"
#: First inherited socket (as systemd's SD_LISTEN_FDS_START).
_FIRST_FD = 3
MAX_RESTARTS = 5
RESTART_WINDOW = 60.0
RESTART_DELAY = 1.0


class WorkerError(ValueError):
    """
    C{--workers} cannot be used with this configuration.
    """


def workerIndex(environ: Any = None) -> Optional[int]:
    """
    This process's worker index, or C{None} when it is not a worker.
    """
    value = (os.environ if environ is None else environ).get(WORKER_ENV)
    return int(value) if value and value.isdigit() else None


def workerListen(environ: Any = None) -> Tuple[str, ...]:
    """
    In a worker: the listen descriptions of the inherited sockets, served
    by Twisted's C{systemd:} endpoint (told where they are).
    """
    env = os.environ if environ is None else environ
    count = int(env.get(_COUNT_ENV, "0"))
    if environ is None:
        # Twisted's systemd: parser reads LISTEN_FDS once, on import; hand
        # it the inherited sockets (3, 4, ...) directly.
        from twisted.internet.endpoints import _SystemdParser  # type: ignore[attr-defined]
        from twisted.python.systemd import ListenFDs

        _SystemdParser._sddaemon = ListenFDs(
            list(range(_FIRST_FD, _FIRST_FD + count)),
            tuple(f"mcpsvc{i}" for i in range(count)),
        )
    return tuple(f"systemd:domain=INET:index={i}" for i in range(count))


def tcpAddress(description: str) -> Tuple[str, int, int]:
    """
    The interface, port and backlog of a C{tcp:} strports description.

    @raise WorkerError: for any other kind of listener.
    """
    from twisted.internet.endpoints import _parse  # type: ignore[attr-defined]

    try:
        args, kwargs = _parse(description)
        kind = str(args[0]).lower() if args else ""
        port = int(args[1] if len(args) > 1 else kwargs.get("port", ""))
    except Exception as e:
        raise WorkerError(f"cannot parse listen description {description!r}: {e}")
    if kind != "tcp":
        raise WorkerError(
            f"--workers supports tcp: listeners only (got {description!r}); "
            "terminate TLS in front of the workers"
        )
    return str(kwargs.get("interface", "")), port, int(kwargs.get("backlog", 50))


def _bind(interface: str, port: int, backlog: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in interface else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((interface or ("::" if family == socket.AF_INET6 else ""), port))
    sock.listen(backlog)
    sock.setblocking(False)
    return sock


def childArguments(argv: Sequence[str]) -> List[str]:
    """
    The twistd arguments of a worker: the parent's, without
    C{--workers}, without a pid file, in the foreground.
    """
    args = list(argv[1:])
    try:
        at = args.index("mcpsvc")
    except ValueError:
        raise WorkerError("--workers needs to be started as `twistd ... mcpsvc ...`")
    before, after = args[:at], args[at + 1:]
    rest: List[str] = []
    skip = False
    for arg in after:
        if skip:
            skip = False
            continue
        if arg == "--workers":
            skip = True
            continue
        if arg.startswith("--workers="):
            continue
        rest.append(arg)
    return [*before, "--pidfile=", "-n", "mcpsvc", *rest]


class _Worker(ProcessProtocol):
    def __init__(self, supervisor: "WorkerSupervisor", index: int) -> None:
        self.supervisor = supervisor
        self.index = index
        self.ended: Deferred[int] = Deferred()

    def processEnded(self, reason: Any) -> None:
        code = getattr(reason.value, "exitCode", None)
        signalled = getattr(reason.value, "signal", None)
        self.supervisor._ended(self, code if code is not None else -(signalled or 1))


class WorkerSupervisor(Service):
    """
    The parent of C{--workers N}.

    @param count: how many workers.
    @param descriptions: the C{tcp:} listen descriptions to share.
    @param argv: the parent's command line (C{sys.argv}).
    @param drainTimeout: the workers' drain timeout (seconds).
    """

    name = "workers"

    def __init__(
        self,
        count: int,
        descriptions: Sequence[str],
        *,
        reactor: Any,
        argv: Sequence[str],
        drainTimeout: float,
        environ: Optional[Dict[str, str]] = None,
    ) -> None:
        self.count = count
        self.addresses = [tcpAddress(d) for d in descriptions]
        self.reactor = reactor
        self.arguments = childArguments(argv)
        self.drainTimeout = drainTimeout
        self.environ = dict(os.environ if environ is None else environ)
        self.sockets: List[socket.socket] = []
        self.workers: Dict[int, _Worker] = {}
        self.restarts: List[float] = []
        self.stopping = False
        self._allEnded: Optional[Deferred[None]] = None

    def privilegedStartService(self) -> None:
        for interface, port, backlog in self.addresses:
            try:
                self.sockets.append(_bind(interface, port, backlog))
            except OSError as e:
                log.critical(
                    "Cannot listen on {address}: {reason}",
                    address=f"{interface or '*'}:{port}", reason=e.strerror or str(e),
                )
                raise SystemExit(1)
        super().privilegedStartService()

    def startService(self) -> None:
        super().startService()
        for sock in self.sockets:
            host, port = sock.getsockname()[:2]
            log.info(
                "mcpsvc workers listening on {address} ({count} workers)",
                address=f"{host}:{port}", count=self.count,
            )
        self._installHangUpHandler()
        for index in range(1, self.count + 1):
            self._spawn(index)
        self.reactor.callWhenRunning(self._installSignalHandlers)

    def _installSignalHandlers(self) -> None:
        """
        SIGTERM/SIGINT stop the reactor (hence L{stopService}: the workers
        get SIGTERM and drain) without twistd re-raising the signal, so a
        clean stop exits 0, as with one process.
        """
        reactor = self.reactor

        def stop(number: int, frame: Any) -> None:
            log.info("Received {signal}, stopping the workers", signal=signal.Signals(number).name)
            reactor.callFromThread(reactor.stop)

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)

    def _installHangUpHandler(self) -> None:
        # At once, before the workers exist: the default action of SIGHUP
        # would end the parent (and so the workers).
        reactor = self.reactor

        def hangUp(number: int, frame: Any) -> None:
            reactor.callFromThread(self.forwardHangUp)

        signal.signal(signal.SIGHUP, hangUp)

    def forwardHangUp(self) -> None:
        """
        Pass C{SIGHUP} (reload the tool packs) on to every worker.
        """
        log.info("Received SIGHUP, forwarding it to {count} worker(s)", count=len(self.workers))
        for worker in list(self.workers.values()):
            try:
                worker.transport.signalProcess("HUP")  # type: ignore[union-attr]
            except Exception:
                log.warn("Could not forward SIGHUP to worker {index}", index=worker.index)

    def _spawn(self, index: int) -> None:
        env = dict(self.environ)
        env[WORKER_ENV] = str(index)
        env[_COUNT_ENV] = str(len(self.sockets))
        for name in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
            env.pop(name, None)  # not systemd's: ours are described by _COUNT_ENV
        childFDs: Dict[int, Any] = {0: 0, 1: 1, 2: 2}
        for i, sock in enumerate(self.sockets):
            childFDs[_FIRST_FD + i] = sock.fileno()
        # A pipe the worker reads and only this process holds the write
        # end of (never written): its end of file tells the worker that
        # this process is gone.
        lifeline = _FIRST_FD + len(self.sockets)
        childFDs[lifeline] = "r"
        env[_LIFELINE_ENV] = str(lifeline)
        worker = _Worker(self, index)
        code = "import sys; from twisted.scripts.twistd import run; sys.argv[0] = 'twistd'; run()"
        self.reactor.spawnProcess(
            worker, sys.executable, [sys.executable, "-c", code, *self.arguments],
            env=env, childFDs=childFDs,
        )
        self.workers[index] = worker
        log.info("Started worker {index} (pid {pid})", index=index,
                 pid=getattr(worker.transport, "pid", None))

    def _ended(self, worker: _Worker, code: int) -> None:
        if self.workers.get(worker.index) is worker:
            del self.workers[worker.index]
        worker.ended.callback(code)
        if self.stopping:
            if code != 0:
                log.warn("Worker {index} exited with status {code}", index=worker.index, code=code)
            if not self.workers and self._allEnded is not None:
                d, self._allEnded = self._allEnded, None
                d.callback(None)
            return
        now = self.reactor.seconds()
        self.restarts = [t for t in self.restarts if now - t < RESTART_WINDOW] + [now]
        if len(self.restarts) > MAX_RESTARTS:
            log.critical(
                "Worker {index} exited with status {code}; more than {max} restarts in "
                "{window:.0f} s: stopping", index=worker.index, code=code,
                max=MAX_RESTARTS, window=RESTART_WINDOW,
            )
            self.reactor.stop()
            return
        log.error("Worker {index} exited with status {code}; restarting it",
                  index=worker.index, code=code)
        self.reactor.callLater(RESTART_DELAY, self._restart, worker.index)

    def _restart(self, index: int) -> None:
        if not self.stopping and index not in self.workers:
            self._spawn(index)

    def stopService(self) -> "Deferred[None]":
        super().stopService()
        self.stopping = True
        d: Deferred[None] = Deferred()
        if not self.workers:
            d.callback(None)
        else:
            self._allEnded = d
            for worker in list(self.workers.values()):
                try:
                    worker.transport.signalProcess("TERM")  # type: ignore[union-attr]
                except Exception:
                    pass
            killer = self.reactor.callLater(self.drainTimeout + 10.0, self._killAll)
            d.addBoth(lambda r: (killer.cancel() if killer.active() else None, r)[1])
        d.addBoth(lambda r: self._closeSockets())
        return d

    def _killAll(self) -> None:
        for worker in list(self.workers.values()):
            log.warn("Worker {index} did not stop in time: killing it", index=worker.index)
            try:
                worker.transport.signalProcess("KILL")  # type: ignore[union-attr]
            except Exception:
                pass

    def _closeSockets(self) -> None:
        for sock in self.sockets:
            sock.close()
        self.sockets = []


class ParentLifeline(Service):
    """
    In a worker: watch the lifeline pipe from the parent and stop the
    reactor (a graceful stop: the tree drains as on SIGTERM) when it ends,
    i.e. when the parent has exited, however it died.

    @param fd: the inherited read end of the pipe.
    @param reactor: the reactor to watch it with and to stop.
    """

    name = "lifeline"

    def __init__(self, fd: int, reactor: Any) -> None:
        self.fd = fd
        self.reactor = reactor

    def startService(self) -> None:
        super().startService()
        os.set_blocking(self.fd, False)
        self.reactor.addReader(self)

    def stopService(self) -> None:
        super().stopService()
        self._close()

    def _close(self) -> None:
        if self.fd >= 0:
            self.reactor.removeReader(self)
            os.close(self.fd)
            self.fd = -1

    # IReadDescriptor
    def fileno(self) -> int:
        return self.fd

    def logPrefix(self) -> str:
        return "lifeline"

    def doRead(self) -> Any:
        try:
            data = os.read(self.fd, 512)
        except BlockingIOError:
            return None
        except OSError:
            data = b""
        if data:
            return None  # the parent never writes; ignore it
        from twisted.internet.main import CONNECTION_DONE

        return CONNECTION_DONE

    def connectionLost(self, reason: Any) -> None:
        self._close()
        if not self.running:
            return
        log.warn("The --workers parent process is gone: stopping this worker")
        from twisted.internet.error import ReactorNotRunning

        try:
            self.reactor.stop()
        except ReactorNotRunning:
            pass  # already stopping


def lifeline(reactor: Any, environ: Any = None) -> Optional[ParentLifeline]:
    """
    In a worker: the L{ParentLifeline} for its inherited pipe (C{None}
    elsewhere).
    """
    value = (os.environ if environ is None else environ).get(_LIFELINE_ENV, "")
    return ParentLifeline(int(value), reactor) if value.isdigit() else None


def checkWorkers(config: Any, count: int) -> None:
    """
    Refuse C{--workers N} (N > 1) where workers would diverge.

    @raise WorkerError: saying why.
    """
    if config.store == "memory":
        raise WorkerError(
            "--workers needs a shared store: STORE=memory would give each worker its own state"
        )
    if getattr(config, "metricsListen", ()):
        raise WorkerError("--workers cannot be combined with --metrics-listen")
    for description in config.listen:
        tcpAddress(description)

