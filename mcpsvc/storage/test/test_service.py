# -*- test-case-name: mcpsvc.storage.test.test_service -*-
"""
Tests for L{mcpsvc.storage.buildStoreService} and L{StoreService}.
"""

from __future__ import annotations

import os
import threading

from twisted.internet import reactor
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase, TestCase

from mcpsvc.config import Config
from mcpsvc.storage import MemoryStore, SQLiteStore, StoreService, buildStoreService
from mcpsvc.storage.interfaces import StoreUnavailable
from mcpsvc.storage.test.base import client
from mcpsvc.storage.test.test_redis import sharedServer


class BuildTests(SynchronousTestCase):
    def test_memory(self) -> None:
        clock = Clock()
        service = buildStoreService(Config(store="memory"), reactor=MemoryReactorClock(), clock=clock)
        self.assertIsInstance(service, StoreService)
        self.assertIsInstance(service.store, MemoryStore)
        self.successResultOf(service.store.createClient(client()))
        service.startService()
        self.assertIsNone(self.successResultOf(service.stopService()))

    def test_sqliteNoIO(self) -> None:
        """
        Building the SQLite service creates no file and no thread; until it
        is started, calls fail with L{StoreUnavailable}.
        """
        path = os.path.join(self.mktemp(), "db.sqlite3")
        threads = threading.active_count()
        service = buildStoreService(
            Config(store="sqlite", storePath=path), reactor=MemoryReactorClock(), clock=Clock()
        )
        self.assertIsInstance(service.store, SQLiteStore)
        self.assertEqual(service.store.backendName, "sqlite")
        self.failureResultOf(service.store.isRevoked("j", 0), StoreUnavailable)
        self.assertFalse(os.path.exists(os.path.dirname(path)))
        self.assertEqual(threading.active_count(), threads)
        self.assertIsNone(self.successResultOf(service.stopService()))

    def test_redisNoIO(self) -> None:
        service = buildStoreService(
            Config(store="redis", redisURL="redis://127.0.0.1:1/0"), reactor=MemoryReactorClock(), clock=Clock()
        )
        self.assertEqual(service.store.backendName, "redis")
        self.failureResultOf(service.store.ping(), StoreUnavailable)
        self.assertIsNone(self.successResultOf(service.stopService()))

    def test_unknown(self) -> None:
        self.assertRaises(
            ValueError, buildStoreService, Config(store="mongodb"), reactor=MemoryReactorClock(), clock=Clock()
        )


class LifecycleTests(TestCase):
    """
    Start and stop on the real reactor.
    """

    async def test_sqlite(self) -> None:
        path = os.path.join(self.mktemp(), "var", "db.sqlite3")
        service = buildStoreService(Config(store="sqlite", storePath=path), reactor=reactor, clock=reactor)
        service.startService()
        try:
            await service.store.createClient(client())
            self.assertTrue(os.path.exists(path))
            mainThread = threading.current_thread()
            names = [t.name for t in threading.enumerate() if t is not mainThread]
            self.assertTrue(any("mcpsvc-sqlite" in n for n in names), names)
        finally:
            await service.stopService()
        self.assertFalse(any("mcpsvc-sqlite" in t.name for t in threading.enumerate()))
        try:
            await service.store.getClient("client-1")
        except StoreUnavailable:
            pass
        else:
            self.fail("the store answered after stopService")
        # and the data is there for the next process
        again = buildStoreService(Config(store="sqlite", storePath=path), reactor=reactor, clock=reactor)
        again.startService()
        try:
            self.assertEqual((await again.store.getClient("client-1")).clientID, "client-1")
        finally:
            await again.stopService()

    async def test_redis(self) -> None:
        server = sharedServer()
        config = Config(
            store="redis", redisURL=None, redisHost="127.0.0.1", redisPort=server.port,
            redisPrefix="svc-test:", storeTimeout=2.0,
        )
        service = buildStoreService(config, reactor=reactor, clock=reactor)
        service.startService()
        try:
            await service.store.ping()
            await service.store.revokeJTI("svc-jti", reactor.seconds() + 60)
            self.assertEqual(server.command("EXISTS", "svc-test:revoked:svc-jti"), 1)
        finally:
            await service.stopService()
        try:
            await service.store.ping()
        except StoreUnavailable:
            pass
        else:
            self.fail("the store answered after stopService")
