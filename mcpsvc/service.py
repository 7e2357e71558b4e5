# -*- test-case-name: mcpsvc.test.test_service -*-
"""
The composition root: L{buildService} turns a L{Config} into the service
tree, performing no I/O.

    OrderedMultiService "mcpsvc"
      |- store service   "store"    (started first, stopped last)
      |- TimerService    "sweeper"  (injected clock; catches its own failures)
      |- TaskService     "tasks"    (on stop, the tasks running here end "failed")
      |- RedisChangeRelay "changes" (STORE=redis only: tool list changes between instances)
      '- HTTPService     "http"     (one listener per --listen; drains on stop)
"""

from __future__ import annotations

import gc
import signal
from typing import Any, Callable, List, Optional, Sequence

from twisted.application import strports
from twisted.application.internet import TimerService
from twisted.application.service import IService, MultiService, Service
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.web.resource import IResource

from mcpsvc.config import Config, summary
from mcpsvc.http.site import McpsvcSite
from mcpsvc.metrics import Metrics

__all__ = [
    "OrderedMultiService",
    "HTTPService",
    "Sweeper",
    "buildService",
    "buildRootResource",
]

log = Logger()


def freezeHeap() -> None:
    """
    Move every object alive once start-up is over (modules, classes,
    functions, the configuration, compiled validators: some 67,000 objects
    that live as long as the process) out of the cyclic garbage
    collector's reach, so that a full collection scans only what requests
    allocate. Without this each full collection walked the whole heap,
    about 30-50 ms with the reactor stalled, several times a second under
    load: most of the p99 latency at 64 connections (bench/run.py).

    No collection first: it would stall start-up by about 30 ms to free
    about a hundred objects of start-up garbage, which stay frozen
    instead. Frozen objects that become garbage later are still freed by
    reference counting (only cycles among them would be kept).
    """
    gc.freeze()
    log.debug("Froze {count} start-up objects out of the cyclic GC", count=gc.get_freeze_count())


class OrderedMultiService(MultiService):
    """
    A L{MultiService} that stops its children one at a time, in reverse
    order, each only after the previous one has really stopped. A child
    that fails to stop is logged and the others still stop.
    """

    def __init__(self, reactor: Any = None, handleSignals: bool = False) -> None:
        super().__init__()
        self._reactor = reactor
        self._handleSignals = handleSignals

    metrics: Optional[Metrics] = None
    #: What C{SIGHUP} calls: reload the tool packs and tell listeners (on
    #: every instance sharing the Redis).
    reloadTools: Optional[Callable[[], None]] = None

    def privilegedStartService(self) -> None:
        if self._handleSignals and self._reactor is not None:
            # SIGHUP before anything listens (the reactor installs no
            # handler of its own for it): its default action would end a
            # process that already accepts connections.
            self._installHangUpHandler()
        super().privilegedStartService()

    def startService(self) -> None:
        if self.metrics is not None:
            from mcpsvc.audit import setAuditHook

            setAuditHook(self.metrics.auditHook())
        if self._handleSignals and self._reactor is not None:
            self._installHangUpHandler()
        super().startService()
        if self._handleSignals and self._reactor is not None:
            self._reactor.callWhenRunning(self._installSignalHandlers)
            self._reactor.callWhenRunning(freezeHeap)

    def _installSignalHandlers(self) -> None:
        """
        Replace the reactor's SIGTERM/SIGINT handlers with ones that stop
        the reactor without recording an exit signal: after a clean,
        graceful stop the process exits 0, as a supervised daemon should
        (twistd otherwise re-raises the signal and exits 143).
        """
        reactor = self._reactor

        def stop(number: int, frame: Any) -> None:
            log.info(
                "Received {signal}, shutting down gracefully",
                signal=signal.Signals(number).name,
            )
            reactor.callFromThread(reactor.stop)

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)

    def _installHangUpHandler(self) -> None:
        """
        SIGHUP reloads the tool packs (L{reloadTools}) and tells listening
        clients; without L{reloadTools} it is ignored.
        """
        reactor = self._reactor
        reload = self.reloadTools
        pending = [False]

        def reloadOnce() -> None:
            pending[0] = False
            assert reload is not None
            reload()

        def hangUp(number: int, frame: Any) -> None:
            # A storm of signals is one reload: none is asked for while
            # one is waiting for the reactor thread.
            if reload is None or pending[0]:
                return
            pending[0] = True
            log.info("Received SIGHUP, reloading the tool packs")
            reactor.callFromThread(reloadOnce)

        signal.signal(signal.SIGHUP, hangUp)

    async def _stopInOrder(self) -> None:
        for child in reversed(list(self)):
            try:
                await maybeDeferred(child.stopService)
            except Exception:
                log.failure("Stopping {name} failed", name=child.name)
        if self.metrics is not None:
            from mcpsvc.audit import setAuditHook

            setAuditHook(None)
        log.info("mcpsvc stopped")

    def stopService(self) -> "Deferred[None]":
        Service.stopService(self)
        return Deferred.fromCoroutine(self._stopInOrder())


class HTTPService(MultiService):
    """
    Serves one site on every listen description, and on stop: stops
    listening, ends long-lived streams, then waits (at most
    C{drainTimeout} seconds) for in-flight requests to finish.
    """

    def __init__(
        self,
        site: McpsvcSite,
        descriptions: Sequence[str],
        *,
        reactor: Any,
        clock: IReactorTime,
        drainTimeout: float,
        banner: Optional[dict] = None,
    ) -> None:
        super().__init__()
        self.setName("http")
        self.site = site
        self.clock = clock
        self.drainTimeout = drainTimeout
        self.banner = banner or {}
        self.endpointServices: List[Any] = []
        for description in descriptions:
            svc = strports.service(description, site, reactor=reactor)
            svc.setName(description)
            svc.setServiceParent(self)
            self.endpointServices.append(svc)

    def privilegedStartService(self) -> None:
        try:
            super().privilegedStartService()
        except CannotListenError as e:
            log.critical(
                "Cannot listen on {address}: {reason}",
                address=f"{e.interface or '*'}:{e.port}",
                reason=_reason(e),
            )
            raise SystemExit(1)

    def startService(self) -> None:
        super().startService()
        for svc in self.endpointServices:
            port = getattr(svc, "_waitingForPort", None)
            if port is None:
                continue
            port.addCallback(self._announce, svc.name)
            port.addErrback(self._listenFailed, svc.name)

    def _announce(self, port: Any, description: str) -> Any:
        address = port.getHost()
        log.info(
            "mcpsvc listening on {address} ({description}); environment={environment} store={store}",
            address=f"{getattr(address, 'host', address)}:{getattr(address, 'port', '')}",
            description=description,
            **self.banner,
        )
        return port

    def _listenFailed(self, failure: Any, description: str) -> None:
        log.critical(
            "Cannot listen on {description}: {reason}",
            description=description,
            reason=failure.getErrorMessage(),
        )

    async def _drain(self) -> None:
        for svc in reversed(self.endpointServices):
            try:
                await maybeDeferred(svc.stopService)
            except Exception:
                log.failure("Stopping listener {name} failed", name=svc.name)
        pending = len(self.site.inFlight)
        if pending:
            log.info("Draining {count} in-flight request(s)", count=pending)
        self.site.closeStreams()
        idle = self.site.whenIdle()
        idle.addTimeout(self.drainTimeout, self.clock)
        try:
            await idle
        except Exception:
            log.warn(
                "Shutdown timeout ({seconds}s) reached with {count} request(s) in flight",
                seconds=self.drainTimeout,
                count=len(self.site.inFlight),
            )
            for request in list(self.site.inFlight):
                try:
                    request.channel.transport.abortConnection()
                except Exception:  # pragma: no cover
                    pass

    def stopService(self) -> "Deferred[None]":
        Service.stopService(self)
        return Deferred.fromCoroutine(self._drain())


def _reason(error: CannotListenError) -> str:
    socketError = error.socketError
    return getattr(socketError, "strerror", None) or str(socketError)


class Sweeper(TimerService):
    """
    Every C{interval} seconds, remove expired records from the store and
    (with C{metrics}) set the active-sessions gauge from
    C{store.countSessions}. Counting here rather than on scrape keeps
    C{/metrics} free of store I/O: a scrape never waits on (or adds load
    to) Redis, and the gauge is at most one interval old. A failed sweep
    or count is logged and the next one still runs.
    """

    def __init__(self, interval: float, store: Any, clock: IReactorTime,
                 metrics: Optional[Metrics] = None, documentClientIdle: float = 0) -> None:
        super().__init__(interval, self.sweepOnce)
        self.clock = clock
        self.store = store
        self.metrics = metrics
        #: C{CIMD_IDLE_RETENTION}: metadata document clients unused for this
        #: long (and with no live grant) are removed; 0: never. That pass
        #: reads every document client's record, so it runs at most every
        #: L{DOCUMENT_SWEEP_INTERVAL} seconds (retention is days).
        self.documentClientIdle = documentClientIdle
        self._lastDocumentSweep: Optional[float] = None
        self.setName("sweeper")

    #: Least seconds between two passes over metadata document clients.
    DOCUMENT_SWEEP_INTERVAL = 3600.0

    async def sweepOnce(self) -> None:
        with log.failuresHandled("Sweep failed; the next one runs in {interval}s", interval=self.step):
            now = self.clock.seconds()
            report = await self.store.sweep(now)
            removed = dict(report.removed)
            last = self._lastDocumentSweep
            if self.documentClientIdle > 0 and (
                    last is None or now - last >= self.DOCUMENT_SWEEP_INTERVAL):
                self._lastDocumentSweep = now
                removed["documentClients"] = await self.store.removeIdleDocumentClients(
                    now - self.documentClientIdle, now)
            total = sum(removed.values())
            if total:
                log.info(
                    "Sweep removed {total} expired record(s): {removed}",
                    total=total,
                    removed=removed,
                )
        if self.metrics is not None:
            with log.failuresHandled("Counting sessions failed; the next count runs in {interval}s",
                                     interval=self.step):
                self.metrics.activeSessions.set(await self.store.countSessions(self.clock.seconds()))


def buildRootResource(config: Config, *, store: Any, clock: IReactorTime, reactor: Any,
                      runInThread: Callable[..., Any], metrics: Metrics,
                      httpClient: Any = None, tasks: Any = None,
                      changes: Any = None, fetcher: Any = None) -> IResource:
    """
    Build the whole HTTP resource tree for C{config}.

    @param tasks: the L{mcpsvc.mcp.tasks.TaskManager} (by default, one on
        C{store}).
    @param changes: the L{mcpsvc.mcp.changes.ChangeBus} (a new one by
        default): tool set changes reload the registry and reach the MCP
        endpoint's listeners; task records written here are published on it
        (C{notifications/tasks}, on this and the other instances).
    @param fetcher: the L{mcpsvc.oauth.fetch.SafeFetcher} for documents
        named by clients (by default one built from C{config}).
    """
    from mcpsvc.mcp.changes import ChangeBus, ToolSetReloader

    if changes is None:
        changes = ChangeBus()
    from mcpsvc.http.app import Dispatcher, RootApp
    from mcpsvc.http.metrics import buildMetrics

    from mcpsvc.authpage import buildApprover
    from mcpsvc.mcp.app import McpApp
    from mcpsvc.oauth import buildOAuth
    from mcpsvc.tools import buildToolRegistry

    approver = buildApprover(config, store=store, clock=clock, runInThread=runInThread)
    oauthApp, bearer = buildOAuth(
        config, store=store, clock=clock, runInThread=runInThread, approver=approver,
        reactor=reactor, fetcher=fetcher,
    )
    oauthResource = oauthApp.resource()
    registry = buildToolRegistry(
        config, clock=clock, runInThread=runInThread, httpClient=httpClient, metrics=metrics,
        toolsChanged=changes.toolsChanged, promptsChanged=changes.promptsChanged,
    )
    mcpApp = McpApp(
        config=config, store=store, clock=clock, authenticate=bearer.authenticate,
        registry=registry, tasks=tasks, changes=changes,
    )
    # In order: the registry takes the new tool set, then listeners hear.
    changes.subscribe(ToolSetReloader(registry))
    changes.subscribe(mcpApp.changed)
    metrics.watchStreams(lambda: mcpApp.subscriptions.open, lambda: mcpApp.openStreams)
    root = RootApp(clock=clock, ping=store.ping, metrics=buildMetrics(config, metrics.registry))
    routes: List[Any] = [("/mcp", mcpApp.resource())]
    for path in ("/oauth/", "/.well-known/", "/authorize", "/token", "/register", "/revoke"):
        routes.append((path, oauthResource))
    return Dispatcher(routes, root.resource())


def buildService(
    config: Config,
    *,
    reactor: Any,
    storeService: Optional[IService] = None,
    runInThread: Optional[Callable[..., Any]] = None,
    httpClient: Any = None,
    handleSignals: bool = False,
) -> OrderedMultiService:
    """
    Construct the whole service tree for C{config}. Performs no I/O: every
    socket, thread and connection is opened when the tree starts.

    @param reactor: the reactor (time, TCP, threads), injected.
    @param storeService: a ready-made store service (tests); by default one
        is built from C{config}.
    @param runInThread: runs a blocking callable off the reactor thread.
    @param handleSignals: stop on SIGTERM/SIGINT with exit status 0.
    """
    clock: IReactorTime = reactor
    if runInThread is None:
        from twisted.internet.threads import deferToThreadPool

        def runInThread(f: Callable[..., Any], *a: Any, **kw: Any) -> Any:
            return deferToThreadPool(reactor, reactor.getThreadPool(), f, *a, **kw)

    if storeService is None:
        from mcpsvc.storage import buildStoreService

        storeService = buildStoreService(config, reactor=reactor, clock=clock)
    from mcpsvc.storage.metered import MeteredStore

    metrics = Metrics()
    # Everything but the store service itself uses the measured store.
    store = MeteredStore(storeService.store, metrics, clock)  # type: ignore[attr-defined]

    root = OrderedMultiService(reactor=reactor, handleSignals=handleSignals)
    root.setName("mcpsvc")
    storeService.setName("store")
    storeService.setServiceParent(root)
    Sweeper(config.sweepInterval, store, clock, metrics,
            documentClientIdle=config.cimdIdleRetention).setServiceParent(root)
    from mcpsvc.mcp.tasks import TaskService, buildTaskManager

    # Stops after HTTP has drained, before the store: running tasks end
    # "failed" rather than stay "working" until they expire.
    tasks = buildTaskManager(config, store, clock)
    TaskService(tasks).setServiceParent(root)

    from mcpsvc.mcp.changes import ChangeBus, buildChangeRelay

    changes = ChangeBus(clock=clock)
    relay = buildChangeRelay(config, changes, storeService, reactor=reactor)
    if relay is not None:
        # After the store (it publishes through the store's connection),
        # before HTTP (which drains first on stop).
        relay.setServiceParent(root)
    root.metrics = metrics
    root.reloadTools = changes.toolsChanged
    resource = buildRootResource(
        config, store=store, clock=clock, reactor=reactor,
        runInThread=runInThread, metrics=metrics, httpClient=httpClient, tasks=tasks,
        changes=changes,
    )
    site = McpsvcSite(
        resource,
        clock=clock,
        allowedOrigins=config.allowedOrigins,
        trustedProxies=config.trustedProxies,
        verbose=not config.production or config.logLevel == "debug",
        metrics=metrics,
    )
    HTTPService(
        site,
        config.listen,
        reactor=reactor,
        clock=clock,
        drainTimeout=config.shutdownTimeout,
        banner={"environment": config.environment, "store": config.store},
    ).setServiceParent(root)
    if config.metricsListen:
        from mcpsvc.http.app import RootApp
        from mcpsvc.http.metrics import buildMetrics

        metricsApp = RootApp(
            clock=clock, ping=store.ping,
            metrics=buildMetrics(config, metrics.registry, requireToken=False),
        )
        metricsService = HTTPService(
            McpsvcSite(metricsApp.resource(), clock=clock),
            config.metricsListen, reactor=reactor, clock=clock,
            drainTimeout=config.shutdownTimeout,
            banner={"environment": config.environment, "store": config.store},
        )
        metricsService.setName("metrics")
        metricsService.setServiceParent(root)
    log.info("Configuration: {summary}", summary=summary(config))
    for notice in config.notices:
        log.warn("{notice}", notice=notice)
    from mcpsvc.authpage import startupWarnings

    for warning in startupWarnings(config):
        log.warn("{warning}", warning=warning)
    return root
