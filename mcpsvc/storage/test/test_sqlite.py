# -*- test-case-name: mcpsvc.storage.test.test_sqlite -*-
"""
Tests for L{mcpsvc.storage.sqlite}: the conformance suite with a synchronous
C{runInThread} (fast) and with a real thread pool on the real reactor, plus
SQLite specifics (pragmas, migrations, lock timeouts).
"""

from __future__ import annotations

import os
import sqlite3
from functools import partial
from typing import Any, List

from twisted.internet import reactor
from twisted.internet.defer import maybeDeferred
from twisted.internet.task import Clock
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool
from twisted.trial.unittest import SynchronousTestCase, TestCase

from mcpsvc.storage.interfaces import (
    AlreadyUsed, CodeRecord, RotationOutcome, StoreUnavailable, TaskRecord,
    TooManyTasks,
)
from mcpsvc.storage._codec import toRow
from mcpsvc.storage.sqlite import MIGRATIONS, SQLiteStore
from mcpsvc.storage.test.base import EPOCH, StoreTestsMixin, SweepCountTestsMixin, client, code, family, task


def synchronous(f: Any) -> Any:
    return maybeDeferred(f)


class SQLiteStoreTests(StoreTestsMixin, SweepCountTestsMixin, SynchronousTestCase):
    """
    The suite against a real database file, every call run synchronously.
    """

    def makeStore(self) -> SQLiteStore:
        self.path = os.path.join(self.mktemp(), "sub", "store.sqlite3")
        store = SQLiteStore(self.path, self.clock, synchronous, timeout=1.0)
        self.addCleanup(store.close)
        return store


class ThreadedSQLiteStoreTests(StoreTestsMixin, TestCase):
    """
    The suite with a real one-thread pool on the real reactor, as in
    production; concurrent calls really are in flight together.
    """

    def makeStore(self) -> SQLiteStore:
        self.path = os.path.join(self.mktemp(), "store.sqlite3")
        return self.makeThreadedStore(self.path)

    def makeThreadedStore(self, path: str) -> SQLiteStore:
        pool = ThreadPool(minthreads=1, maxthreads=1, name="test-sqlite")
        pool.start()
        store = SQLiteStore(path, self.clock, partial(deferToThreadPool, reactor, pool), timeout=5.0)

        async def cleanup() -> None:
            try:
                await store.close()
            finally:
                pool.stop()

        self.addCleanup(cleanup)
        return store

    async def test_twoConnectionsConsume(self) -> None:
        """
        Two stores on one file (two connections, two threads: as two
        processes would): exactly one consumer wins.
        """
        other = self.makeThreadedStore(self.path)
        await self.store.storeCode(code())
        now = self.now()
        results = await self.gather(
            *[s.consumeCode(code().codeHash, now) for s in (self.store, other) * 3]
        )
        self.assertEqual(sum(isinstance(r, CodeRecord) for r in results), 1, results)
        self.assertEqual(sum(isinstance(r, AlreadyUsed) for r in results), 5, results)

    async def test_twoConnectionsRotate(self) -> None:
        other = self.makeThreadedStore(self.path)
        await self.store.createFamily(family())
        now = self.now()
        results = await self.gather(
            self.rotate("sha256:r0", "sha256:a", now),
            other.rotateRefresh("fam-1", "sha256:r0", "sha256:b", "s", now + 60, "j", now + 60, now),
        )
        self.assertEqual(
            sorted(r.outcome.value for r in results),
            [RotationOutcome.GRACE.value, RotationOutcome.ROTATED.value],
        )


def _columnsOf(raw: sqlite3.Connection, table: str) -> List[str]:
    return [row[1] for row in raw.execute(f"PRAGMA table_info({table})").fetchall()]


class SQLiteSpecificTests(SynchronousTestCase):
    """
    Pragmas, migrations and failure mapping.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(EPOCH)
        self.path = os.path.join(self.mktemp(), "store.sqlite3")

    def store(self, timeout: float = 1.0) -> SQLiteStore:
        store = SQLiteStore(self.path, self.clock, synchronous, timeout=timeout)
        self.addCleanup(store.close)
        return store

    def test_noIOInConstructor(self) -> None:
        SQLiteStore(self.path, self.clock, synchronous)
        self.assertFalse(os.path.exists(os.path.dirname(self.path)))

    def test_pragmas(self) -> None:
        store = self.store(timeout=2.5)
        self.successResultOf(store.ping())
        connection = store._connection
        assert connection is not None
        self.assertEqual(connection.execute("PRAGMA journal_mode").fetchone()[0], "wal")
        self.assertEqual(connection.execute("PRAGMA synchronous").fetchone()[0], 2)  # FULL
        self.assertEqual(connection.execute("PRAGMA busy_timeout").fetchone()[0], 2500)
        self.assertEqual(self.successResultOf(store.integrityCheck()), ["ok"])

    def test_schemaVersion(self) -> None:
        self.successResultOf(self.store().createClient(client()))
        raw = sqlite3.connect(self.path)
        self.addCleanup(raw.close)
        self.assertEqual(raw.execute("SELECT version FROM schemaVersion").fetchall(), [(len(MIGRATIONS),)])
        # reopening applies nothing twice and keeps the data
        self.assertEqual(self.successResultOf(self.store().getClient("client-1")), client())

    def test_migrationsAppliedInOrder(self) -> None:
        self.patch(
            __import__("mcpsvc.storage.sqlite", fromlist=["MIGRATIONS"]),
            "MIGRATIONS",
            MIGRATIONS + [("CREATE TABLE extra (x INTEGER)",), ("INSERT INTO extra VALUES (7)",)],
        )
        self.successResultOf(self.store().ping())
        raw = sqlite3.connect(self.path)
        self.addCleanup(raw.close)
        self.assertEqual(raw.execute("SELECT x FROM extra").fetchall(), [(7,)])
        self.assertEqual(raw.execute("SELECT version FROM schemaVersion").fetchone()[0], len(MIGRATIONS) + 2)

    def test_familiesFromVersionOne(self) -> None:
        """
        A database written by schema version 1 (families without
        C{graceReplays}) is migrated: its families are kept, with no replay
        counted yet, and rotate as before.
        """
        self.patch(
            __import__("mcpsvc.storage.sqlite", fromlist=["MIGRATIONS"]), "MIGRATIONS", MIGRATIONS[:1]
        )
        old = self.store()
        self.successResultOf(old.ping())
        raw = sqlite3.connect(self.path)
        columns = [c for c in _columnsOf(raw, "families") if c not in ("graceReplays",)]
        row = {k: v for k, v in toRow(family()).items() if k in columns}
        raw.execute(
            "INSERT INTO families ({}) VALUES ({})".format(
                ", ".join(row), ", ".join(":" + k for k in row)
            ),
            row,
        )
        raw.commit()
        raw.close()
        self.successResultOf(old.close())
        self.patch(
            __import__("mcpsvc.storage.sqlite", fromlist=["MIGRATIONS"]), "MIGRATIONS", MIGRATIONS
        )
        store = self.store()
        self.assertEqual(self.successResultOf(store.getFamily("fam-1", EPOCH)), family())
        result = self.successResultOf(
            store.rotateRefresh("fam-1", "sha256:r0", "sha256:r1", "s", EPOCH + 60, "j", EPOCH + 60, EPOCH)
        )
        self.assertEqual(result.outcome, RotationOutcome.ROTATED)

    def test_assertionsFromEarlierVersion(self) -> None:
        """
        A database written before the private_key_jwt migration gains the
        assertions table, keeps its clients, and records assertion ids.
        """
        module = __import__("mcpsvc.storage.sqlite", fromlist=["MIGRATIONS"])
        before = next(i for i, step in enumerate(MIGRATIONS)
                      if any("CREATE TABLE assertions" in s for s in step))
        self.patch(module, "MIGRATIONS", MIGRATIONS[:before])
        old = self.store()
        self.successResultOf(old.createClient(client()))
        self.successResultOf(old.close())
        self.patch(module, "MIGRATIONS", MIGRATIONS)
        store = self.store()
        self.assertEqual(self.successResultOf(store.getClient("client-1")), client())
        self.assertIs(self.successResultOf(store.useAssertionID("client-1", "j", EPOCH + 60, EPOCH)), True)
        self.assertIs(self.successResultOf(store.useAssertionID("client-1", "j", EPOCH + 60, EPOCH)), False)

    def test_tasksLimitFromEarlierVersion(self) -> None:
        """
        A database written before the tasks limit migration gains the index
        of a principal's tasks and keeps its tasks, which count.
        """
        store = self.upgradedWithOldTask("tasksPrincipal")
        self.failureResultOf(store.createTask(task("new"), limit=1), TooManyTasks)
        raw = sqlite3.connect(self.path)
        indexes = [r[0] for r in raw.execute("SELECT name FROM sqlite_master WHERE type = 'index'")]
        raw.close()
        self.assertIn("tasksPrincipal", indexes)

    def upgradedWithOldTask(self, marker: str) -> Any:
        """
        A store opened on a database written by the schema before the
        migration step mentioning C{marker}, holding the task C{old}
        written as that version did.
        """
        module = __import__("mcpsvc.storage.sqlite", fromlist=["MIGRATIONS"])
        before = next(i for i, step in enumerate(MIGRATIONS) if any(marker in s for s in step))
        self.patch(module, "MIGRATIONS", MIGRATIONS[:before])
        old = self.store()
        self.successResultOf(old.ping())
        self.successResultOf(old.close())
        self.insertOld(task("old"))
        self.patch(module, "MIGRATIONS", MIGRATIONS)
        return self.store()

    def insertOld(self, record: TaskRecord) -> None:
        """
        Write C{record} as a version without the lease column did.
        """
        row = toRow(record)
        del row["leaseUntil"]
        raw = sqlite3.connect(self.path)
        raw.execute("INSERT INTO tasks ({}) VALUES ({})".format(
            ", ".join(row), ", ".join(":" + c for c in row)), row)
        raw.commit()
        raw.close()

    def test_taskLeasesFromEarlierVersion(self) -> None:
        """
        A database written before the task leases migration keeps its
        tasks: they read back with no lease (C{leaseUntil} 0), and count.
        """
        store = self.upgradedWithOldTask("leaseUntil")
        self.assertEqual(self.successResultOf(store.getTask("old", task().createdAt)), task("old"))
        self.failureResultOf(store.createTask(task("new"), limit=1), TooManyTasks)

    def test_newerSchemaRefused(self) -> None:
        self.successResultOf(self.store().ping())
        raw = sqlite3.connect(self.path)
        raw.execute("UPDATE schemaVersion SET version = 999")
        raw.commit()
        raw.close()
        failure = self.failureResultOf(self.store().ping(), StoreUnavailable)
        self.assertIn("999", str(failure.value))

    def test_lockedIsUnavailable(self) -> None:
        """
        A write lock held by another connection past the busy timeout fails
        the call with L{StoreUnavailable}, and the store works once it is
        released.
        """
        store = self.store(timeout=0.05)
        self.successResultOf(store.ping())
        other = sqlite3.connect(self.path, isolation_level=None)
        self.addCleanup(other.close)
        other.execute("BEGIN IMMEDIATE")
        failure = self.failureResultOf(store.createClient(client()), StoreUnavailable)
        self.assertIn("locked", str(failure.value))
        other.execute("ROLLBACK")
        self.successResultOf(store.createClient(client()))

    def test_unopenableIsUnavailable(self) -> None:
        os.makedirs(self.path)  # a directory where the file should be
        self.failureResultOf(self.store().isRevoked("jti", EPOCH), StoreUnavailable)
        self.failureResultOf(self.store().ping(), StoreUnavailable)

    def test_closedIsUnavailable(self) -> None:
        store = self.store()
        self.successResultOf(store.ping())
        self.successResultOf(store.close())
        self.failureResultOf(store.isRevoked("jti", EPOCH), StoreUnavailable)

    def test_mappingsAsJSON(self) -> None:
        store = self.store()
        self.successResultOf(store.createClient(client()))
        raw = sqlite3.connect(self.path)
        self.addCleanup(raw.close)
        text = raw.execute("SELECT metadata FROM clients").fetchone()[0]
        self.assertIsInstance(text, str)
        self.assertIn('"grant_types":["authorization_code","refresh_token"]', text)

    def test_persists(self) -> None:
        first = self.store()
        self.successResultOf(first.createFamily(family()))
        self.successResultOf(first.close())
        got: List[Any] = [self.successResultOf(self.store().getFamily("fam-1", EPOCH))]
        self.assertEqual(got, [family()])


class RevocationCoalescingTests(SynchronousTestCase):
    """
    Revocation checks asked while one is in the thread go together in the
    next thread call, and each reads the database after it was asked.
    """

    def test_coalesced(self) -> None:
        from twisted.internet.defer import Deferred

        calls: List[Any] = []

        def manual(f: Any) -> Any:
            d: Deferred[Any] = Deferred()
            calls.append((f, d))
            return d

        def runNext() -> None:
            f, d = calls.pop(0)
            d.callback(f())

        path = os.path.join(self.mktemp(), "store.sqlite3")
        store = SQLiteStore(path, Clock(), manual, timeout=1.0)
        self.addCleanup(lambda: (calls.clear(), store.close()))
        first = store.isRevoked("a", EPOCH)
        self.assertEqual(len(calls), 1)
        # Asked while the first is in flight: they wait, revoked meanwhile.
        store.revokeJTI("b", EPOCH + 100)
        second = store.isRevoked("b", EPOCH)
        third = store.isRevoked("c", EPOCH)
        cancelled = store.isRevoked("d", EPOCH)
        cancelled.cancel()
        self.failureResultOf(cancelled)
        runNext()  # the first check
        self.assertIs(self.successResultOf(first), False)
        # one call for the revocation write, one for both waiting checks
        self.assertEqual(len(calls), 2)
        runNext()  # revokeJTI
        runNext()  # b, c (and d, whose answer is dropped)
        self.assertEqual(calls, [])
        self.assertIs(self.successResultOf(second), True)
        self.assertIs(self.successResultOf(third), False)
