# -*- test-case-name: mcpsvc.storage.test.test_service -*-
"""
Storage: the contract (L{mcpsvc.storage.interfaces}), three backends
(memory, SQLite, Redis) and L{buildStoreService}, which builds the service
owning the configured store's threads or connections.

Importing this package imports neither txredisapi nor the reactor (the
plugin and C{tap} import it): the Redis backend is loaded on first use.
"""

from __future__ import annotations

from functools import partial
from typing import Any, Callable, Optional

from twisted.application.service import Service
from twisted.internet.defer import Deferred, fail, maybeDeferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from mcpsvc.storage.interfaces import (
    AlreadyUsed,
    ClientRecord,
    IAssertionStore,
    CodeRecord,
    Conflict,
    IClientStore,
    ICodeStore,
    IRateLimitStore,
    IRefreshStore,
    IRevocationStore,
    ISessionStore,
    IStore,
    NoSuchClient,
    NoSuchCode,
    NoSuchFamily,
    NoSuchSession,
    NotFound,
    RateDecision,
    RefreshFamily,
    RotationOutcome,
    RotationResult,
    SessionRecord,
    StoreError,
    StoreUnavailable,
    SweepReport,
)
from mcpsvc.storage.memory import MemoryStore
from mcpsvc.storage.sqlite import SQLiteStore

__all__ = [
    "buildStoreService",
    "StoreService",
    "MemoryStore",
    "SQLiteStore",
    "RedisStore",
    "RedisConnection",
    "StoreError",
    "StoreUnavailable",
    "NotFound",
    "NoSuchClient",
    "NoSuchCode",
    "NoSuchFamily",
    "NoSuchSession",
    "AlreadyUsed",
    "Conflict",
    "ClientRecord",
    "CodeRecord",
    "RefreshFamily",
    "RotationOutcome",
    "RotationResult",
    "SessionRecord",
    "RateDecision",
    "SweepReport",
    "IClientStore",
    "ICodeStore",
    "IRefreshStore",
    "IRevocationStore",
    "ISessionStore",
    "IRateLimitStore",
    "IAssertionStore",
    "IStore",
]

log = Logger()


def __getattr__(name: str) -> Any:
    # RedisStore and RedisConnection import txredisapi, which installs the
    # default reactor: load them only when asked for.
    if name in ("RedisStore", "RedisConnection"):
        from mcpsvc.storage import redis

        return getattr(redis, name)
    raise AttributeError(name)


class StoreService(Service):
    """
    Owns a store's resources: started, it opens them (thread pool, Redis
    connections); stopped, it closes them and its L{stopService} Deferred
    fires once they are really closed.

    @ivar store: the L{IStore}, usable right after construction; a backend
        needing resources fails with L{StoreUnavailable} until started.
    """

    def __init__(
        self,
        store: IStore,
        onStart: Optional[Callable[[], None]] = None,
        onStop: Optional[Callable[[], "Deferred[Any]"]] = None,
    ) -> None:
        self.store = store
        self._onStart = onStart
        self._onStop = onStop

    def startService(self) -> None:
        super().startService()
        log.info("Starting the {backend} store", backend=self.store.backendName)
        if self._onStart is not None:
            self._onStart()

    def stopService(self) -> "Deferred[None]":
        super().stopService()
        if self._onStop is None:
            return succeed(None)
        d: Deferred[Any] = maybeDeferred(self._onStop)
        return d.addCallback(lambda _: None)


def _sqliteService(config: Any, reactor: Any, clock: IReactorTime) -> StoreService:
    from twisted.internet.threads import deferToThreadPool
    from twisted.python.threadpool import ThreadPool

    # One thread: SQLite has one writer at a time anyway, and one thread
    # serialises our calls on one connection (see mcpsvc.storage.sqlite).
    pool = ThreadPool(minthreads=1, maxthreads=1, name="mcpsvc-sqlite")
    inPool = partial(deferToThreadPool, reactor, pool)

    def runInThread(f: Callable[[], Any]) -> "Deferred[Any]":
        if not pool.started or pool.joined:
            return fail(StoreUnavailable("the SQLite store is not running"))
        return inPool(f)

    store = SQLiteStore(config.storePath, clock, runInThread, timeout=config.storeTimeout)

    def stop() -> "Deferred[None]":
        def stopPool(result: Any) -> Any:
            pool.stop()
            return result

        if not pool.started:
            return succeed(None)
        return store.close().addBoth(stopPool)

    return StoreService(store, onStart=pool.start, onStop=stop)


def _redisService(config: Any, clock: IReactorTime) -> StoreService:
    from mcpsvc.storage.redis import RedisConnection, RedisStore, redisConnector

    connection = RedisConnection(
        redisConnector(
            url=config.redisURL,
            host=config.redisHost,
            port=config.redisPort,
            password=config.redisPassword,
            db=config.redisDB,
            sentinels=config.redisSentinels,
            sentinelMaster=config.redisSentinelMaster,
            timeout=config.storeTimeout,
        )
    )
    store = RedisStore(connection, clock, config.redisPrefix, config.storeTimeout)
    service = StoreService(store, onStart=connection.open, onStop=connection.close)
    # The change relay publishes through this pool (mcpsvc.mcp.changes).
    service.redisConnection = connection  # type: ignore[attr-defined]
    return service


def buildStoreService(config: Any, *, reactor: Any, clock: IReactorTime) -> StoreService:
    """
    Build the L{StoreService} for C{config.store} (C{memory}, C{sqlite} or
    C{redis}). Performs no I/O: files, threads and connections are opened
    by C{startService}.

    @param config: a L{mcpsvc.config.Config}.
    @param reactor: the reactor (the SQLite thread pool reports to it).
    @param clock: the time source of the store.
    """
    if config.store == "memory":
        return StoreService(MemoryStore(clock))
    if config.store == "sqlite":
        return _sqliteService(config, reactor, clock)
    if config.store == "redis":
        return _redisService(config, clock)
    raise ValueError(f"unknown store {config.store!r}")
