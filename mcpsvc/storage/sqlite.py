# -*- test-case-name: mcpsvc.storage.test.test_sqlite -*-
"""
The SQLite L{IStore}: the default, for one machine.

Durability: WAL journal with C{synchronous=FULL}, so a write is on disk
(fsynced) before its Deferred fires; an acknowledged write survives
C{kill -9} and, as far as SQLite and the disk allow, power loss.

Threading: every call goes through the injected C{runInThread}, so the
reactor never waits on the disk. The store keeps B{one} connection, used
under a lock. In production C{runInThread} is a dedicated thread pool of
size 1 owned by the store service (L{mcpsvc.storage.StoreService}), which
serialises every call in one thread:
  - SQLite admits one writer at a time anyway; several of our own writer
    threads would only queue on the database lock (and turn contention into
    C{SQLITE_BUSY} waits) instead of on a cheap in-process queue;
  - each operation is a short transaction (well under a millisecond
    besides the fsync), so reads gain little from parallelism;
  - one long-lived connection needs no per-thread bookkeeping and closes
    deterministically in C{stopService}.
The lock keeps the store correct if it is handed a bigger pool anyway.
Other processes using the same file (admin commands) are handled by
SQLite's own locking: C{BEGIN IMMEDIATE} plus the busy timeout; a lock held
past that timeout fails the call with L{StoreUnavailable}.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from typing import Any, Callable, List, Optional, Sequence, TypeVar

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from zope.interface import implementer

from mcpsvc.storage._codec import fieldKinds, fromRow, toRow
from mcpsvc.storage._logic import (
    RevocationBatch,
    RevocationBatches,
    bucketFullAt,
    checkCode,
    isIdleDocumentClient,
    rotation,
    takeFromBucket,
)
from mcpsvc.storage.interfaces import (
    AlreadyUsed,
    ClientRecord,
    CodeRecord,
    Conflict,
    IStore,
    NoSuchClient,
    NoSuchCode,
    NoSuchFamily,
    NoSuchSession,
    NoSuchTask,
    RateDecision,
    RefreshFamily,
    RotationOutcome,
    RotationResult,
    SessionRecord,
    TaskRecord,
    TERMINAL_TASK_STATUSES,
    TooManyTasks,
    StoreError,
    StoreUnavailable,
    SweepReport,
    familyRevocationID,
)

__all__ = ["SQLiteStore", "MIGRATIONS", "RunInThread"]

T = TypeVar("T")
RunInThread = Callable[[Callable[[], Any]], "Deferred[Any]"]
log = Logger()


#: Forward migrations: step C{i} brings the schema from version C{i} to
#: C{i + 1}. Append only; never edit a released step.
MIGRATIONS: List[Sequence[str]] = [
    (
        """CREATE TABLE clients (
            clientID TEXT PRIMARY KEY,
            secretHash TEXT,
            metadata TEXT NOT NULL,
            createdAt REAL NOT NULL,
            secretExpiresAt REAL NOT NULL DEFAULT 0
        )""",
        """CREATE TABLE codes (
            codeHash TEXT PRIMARY KEY,
            clientID TEXT NOT NULL,
            redirectURI TEXT NOT NULL,
            codeChallenge TEXT NOT NULL,
            codeChallengeMethod TEXT NOT NULL,
            scope TEXT NOT NULL,
            resource TEXT NOT NULL,
            subject TEXT NOT NULL,
            familyID TEXT NOT NULL,
            expiresAt REAL NOT NULL,
            used INTEGER NOT NULL DEFAULT 0
        )""",
        "CREATE INDEX codesExpiry ON codes (expiresAt)",
        """CREATE TABLE families (
            familyID TEXT PRIMARY KEY,
            clientID TEXT NOT NULL,
            subject TEXT NOT NULL,
            scope TEXT NOT NULL,
            resource TEXT NOT NULL,
            currentHash TEXT NOT NULL,
            createdAt REAL NOT NULL,
            expiresAt REAL NOT NULL,
            previousHash TEXT,
            graceUntil REAL NOT NULL DEFAULT 0,
            sealedSuccessor TEXT,
            lastAccessJTI TEXT,
            lastAccessExpiresAt REAL NOT NULL DEFAULT 0,
            rotations INTEGER NOT NULL DEFAULT 0,
            revoked INTEGER NOT NULL DEFAULT 0
        )""",
        "CREATE INDEX familiesClient ON families (clientID)",
        "CREATE INDEX familiesExpiry ON families (expiresAt)",
        """CREATE TABLE revocations (
            jti TEXT PRIMARY KEY,
            expiresAt REAL NOT NULL
        )""",
        "CREATE INDEX revocationsExpiry ON revocations (expiresAt)",
        """CREATE TABLE sessions (
            sessionID TEXT PRIMARY KEY,
            subject TEXT NOT NULL,
            clientID TEXT NOT NULL,
            protocolVersion TEXT NOT NULL,
            createdAt REAL NOT NULL,
            expiresAt REAL NOT NULL,
            data TEXT NOT NULL
        )""",
        "CREATE INDEX sessionsExpiry ON sessions (expiresAt)",
        """CREATE TABLE buckets (
            key TEXT PRIMARY KEY,
            tokens REAL NOT NULL,
            updated REAL NOT NULL,
            fullAt REAL NOT NULL
        )""",
        "CREATE INDEX bucketsFull ON buckets (fullAt)",
    ),
    (
        # replays answered in the grace window since the last rotation
        "ALTER TABLE families ADD COLUMN graceReplays INTEGER NOT NULL DEFAULT 0",
        # a principal's sessions (createSession's limit).
        "CREATE INDEX sessionsPrincipal ON sessions (subject, clientID)",
    ),
    (
        # tasks: the 2026-07-28 tasks extension (one row per task, the
        # status-specific state as JSON in payload).
        """CREATE TABLE tasks (
            taskID TEXT PRIMARY KEY,
            subject TEXT NOT NULL,
            clientID TEXT NOT NULL,
            method TEXT NOT NULL,
            name TEXT NOT NULL,
            status TEXT NOT NULL,
            statusMessage TEXT,
            createdAt REAL NOT NULL,
            updatedAt REAL NOT NULL,
            expiresAt REAL NOT NULL,
            pollInterval REAL NOT NULL,
            version INTEGER NOT NULL,
            payload TEXT NOT NULL
        )""",
        "CREATE INDEX tasksExpiry ON tasks (expiresAt)",
    ),
    (
        # private_key_jwt: the jti of each client assertion used, until it
        # expires (replays are refused).
        """CREATE TABLE assertions (
            clientID TEXT NOT NULL,
            jti TEXT NOT NULL,
            expiresAt REAL NOT NULL,
            PRIMARY KEY (clientID, jti)
        )""",
        "CREATE INDEX assertionsExpiry ON assertions (expiresAt)",
    ),
    (
        # tasks limit: a principal's live tasks are counted (TASK_LIMIT).
        "CREATE INDEX tasksPrincipal ON tasks (subject, clientID)",
    ),
    (
        # task leases: until when the instance running a task vouches for
        # it (0: no lease); a task not over past its lease is dead.
        "ALTER TABLE tasks ADD COLUMN leaseUntil REAL NOT NULL DEFAULT 0",
    ),
]


def _columns(cls: type) -> List[str]:
    return [name for name, _ in fieldKinds(cls)]


def _insert(table: str, cls: type, verb: str = "INSERT") -> str:
    columns = _columns(cls)
    return "{} INTO {} ({}) VALUES ({})".format(
        verb, table, ", ".join(columns), ", ".join(":" + c for c in columns)
    )


_INSERT_CLIENT = _insert("clients", ClientRecord)
_INSERT_CODE = _insert("codes", CodeRecord, "INSERT OR REPLACE")
_INSERT_FAMILY = _insert("families", RefreshFamily, "INSERT OR REPLACE")
_INSERT_SESSION = _insert("sessions", SessionRecord, "INSERT OR REPLACE")
_INSERT_TASK = _insert("tasks", TaskRecord, "INSERT OR REPLACE")
_REPLACE_TASK = "UPDATE tasks SET {} WHERE taskID = :taskID AND version = :expected AND expiresAt > :now".format(
    ", ".join(f"{c} = :{c}" for c in _columns(TaskRecord) if c != "taskID")
)
_UPDATE_CLIENT = "UPDATE clients SET {} WHERE clientID = :clientID".format(
    ", ".join(f"{c} = :{c}" for c in _columns(ClientRecord) if c != "clientID")
)
_UPDATE_FAMILY = "UPDATE families SET {} WHERE familyID = :familyID".format(
    ", ".join(f"{c} = :{c}" for c in _columns(RefreshFamily) if c != "familyID")
)


@implementer(IStore)
class SQLiteStore:
    """
    L{IStore} in an SQLite database file.

    @param path: the database file; its directory is created if missing.
    @param clock: the time source (for C{storeCode} and other calls taking
        no C{now}).
    @param runInThread: runs a callable off the reactor thread and returns a
        Deferred of its result.
    @param timeout: seconds to wait for a database lock held by another
        connection before failing with L{StoreUnavailable}.
    """

    backendName = "sqlite"

    def __init__(
        self, path: str, clock: IReactorTime, runInThread: RunInThread, timeout: float = 5.0
    ) -> None:
        self.path = path
        self._clock = clock
        self._runInThread = runInThread
        self._timeout = timeout
        self._lock = threading.Lock()
        self._connection: Optional[sqlite3.Connection] = None
        self._closed = False
        #: Revocation checks, coalesced (see isRevoked).
        self._revocations = RevocationBatches(self._checkRevocations)

    # -- plumbing (these run in the thread)

    def _connect(self) -> sqlite3.Connection:
        if self._closed:
            raise StoreUnavailable("the SQLite store is closed")
        if self._connection is None:
            directory = os.path.dirname(os.path.abspath(self.path))
            os.makedirs(directory, exist_ok=True)
            connection = sqlite3.connect(
                self.path, timeout=self._timeout, isolation_level=None, check_same_thread=False
            )
            try:
                connection.row_factory = sqlite3.Row
                mode = connection.execute("PRAGMA journal_mode=WAL").fetchone()[0]
                if mode.lower() != "wal":  # pragma: no cover - e.g. some network filesystems
                    log.warn("SQLite refused WAL mode for {path}: {mode}", path=self.path, mode=mode)
                connection.execute("PRAGMA synchronous=FULL")
                connection.execute(f"PRAGMA busy_timeout={int(self._timeout * 1000)}")
                self._migrate(connection)
            except BaseException:
                connection.close()
                raise
            self._connection = connection
        return self._connection

    def _migrate(self, connection: sqlite3.Connection) -> None:
        connection.execute("BEGIN IMMEDIATE")
        try:
            connection.execute("CREATE TABLE IF NOT EXISTS schemaVersion (version INTEGER NOT NULL)")
            row = connection.execute("SELECT version FROM schemaVersion").fetchone()
            version = 0 if row is None else row[0]
            if row is None:
                connection.execute("INSERT INTO schemaVersion (version) VALUES (0)")
            if version > len(MIGRATIONS):
                raise StoreUnavailable(
                    f"{self.path} has schema version {version}, newer than this mcpsvc "
                    f"({len(MIGRATIONS)}); refusing to use it"
                )
            for step in range(version, len(MIGRATIONS)):
                for statement in MIGRATIONS[step]:
                    connection.execute(statement)
                connection.execute("UPDATE schemaVersion SET version = ?", (step + 1,))
                log.info("Migrated {path} to schema version {version}", path=self.path, version=step + 1)
            connection.execute("COMMIT")
        except BaseException:
            if connection.in_transaction:
                connection.execute("ROLLBACK")
            raise

    def _run(self, f: Callable[[sqlite3.Connection], T], write: bool = True) -> "Deferred[T]":
        """
        Run C{f(connection)} in the thread, inside a transaction (C{BEGIN
        IMMEDIATE} for writes, so read-modify-write sequences are atomic
        against every other connection).
        """

        def inThread() -> T:
            with self._lock:
                try:
                    connection = self._connect()
                    connection.execute("BEGIN IMMEDIATE" if write else "BEGIN")
                    try:
                        result = f(connection)
                    except BaseException:
                        if connection.in_transaction:
                            connection.execute("ROLLBACK")
                        raise
                    connection.execute("COMMIT")
                    return result
                except StoreError:
                    raise
                except sqlite3.DatabaseError as e:
                    # locked/busy past the timeout, I/O errors, a corrupt
                    # or unreadable file: fail closed
                    raise StoreUnavailable(f"SQLite {self.path}: {e}") from e
                except OSError as e:
                    raise StoreUnavailable(f"SQLite {self.path}: {e}") from e

        return self._runInThread(inThread)

    def close(self) -> "Deferred[None]":
        """
        Close the connection (in the thread). Later calls fail with
        L{StoreUnavailable}.
        """

        def closeInThread() -> None:
            with self._lock:
                self._closed = True
                if self._connection is not None:
                    self._connection.close()
                    self._connection = None

        return self._runInThread(closeInThread)

    # -- clients

    def createClient(self, record: ClientRecord) -> "Deferred[None]":
        def create(c: sqlite3.Connection) -> None:
            try:
                c.execute(_INSERT_CLIENT, toRow(record))
            except sqlite3.IntegrityError:
                raise Conflict(record.clientID) from None

        return self._run(create)

    def getClient(self, clientID: str) -> "Deferred[ClientRecord]":
        def get(c: sqlite3.Connection) -> ClientRecord:
            row = c.execute("SELECT * FROM clients WHERE clientID = ?", (clientID,)).fetchone()
            if row is None:
                raise NoSuchClient(clientID)
            return fromRow(ClientRecord, row)

        return self._run(get, write=False)

    def listClients(self) -> "Deferred[List[ClientRecord]]":
        def list_(c: sqlite3.Connection) -> List[ClientRecord]:
            rows = c.execute("SELECT * FROM clients ORDER BY clientID").fetchall()
            return [fromRow(ClientRecord, row) for row in rows]

        return self._run(list_, write=False)

    def updateClient(self, record: ClientRecord) -> "Deferred[None]":
        def update(c: sqlite3.Connection) -> None:
            if c.execute(_UPDATE_CLIENT, toRow(record)).rowcount == 0:
                raise NoSuchClient(record.clientID)

        return self._run(update)

    def deleteClient(self, clientID: str) -> "Deferred[None]":
        def delete(c: sqlite3.Connection) -> None:
            if c.execute("DELETE FROM clients WHERE clientID = ?", (clientID,)).rowcount == 0:
                raise NoSuchClient(clientID)

        return self._run(delete)

    def removeIdleDocumentClients(self, staleBefore: float, now: float) -> "Deferred[int]":
        def remove(c: sqlite3.Connection) -> int:
            # Document clients' ids are URLs: the others are not decoded.
            rows = c.execute(
                "SELECT * FROM clients WHERE clientID LIKE 'http%' AND clientID NOT IN "
                "(SELECT clientID FROM families WHERE revoked = 0 AND expiresAt > ?)", (now,)
            ).fetchall()
            removed = 0
            for row in rows:
                record = fromRow(ClientRecord, row)
                if isIdleDocumentClient(record.metadata, staleBefore):
                    removed += c.execute("DELETE FROM clients WHERE clientID = ?",
                                         (record.clientID,)).rowcount
            return removed

        return self._run(remove)

    # -- codes

    def storeCode(self, record: CodeRecord) -> "Deferred[None]":
        now = self._clock.seconds()

        def store(c: sqlite3.Connection) -> None:
            existing = c.execute(
                "SELECT 1 FROM codes WHERE codeHash = ? AND expiresAt > ?", (record.codeHash, now)
            ).fetchone()
            if existing is not None:
                raise Conflict(record.codeHash)
            c.execute(_INSERT_CODE, toRow(record))

        return self._run(store)

    def consumeCode(
        self,
        codeHash: str,
        now: float,
        clientID: Optional[str] = None,
        codeChallenge: Optional[str] = None,
        redirectURI: Optional[str] = None,
    ) -> "Deferred[CodeRecord]":
        def consume(c: sqlite3.Connection) -> CodeRecord:
            row = c.execute("SELECT * FROM codes WHERE codeHash = ?", (codeHash,)).fetchone()
            if row is None or now >= row["expiresAt"]:
                raise NoSuchCode(codeHash)
            record = fromRow(CodeRecord, row)
            checkCode(record, clientID, codeChallenge, redirectURI)
            if record.used:
                raise AlreadyUsed(record)
            c.execute("UPDATE codes SET used = 1 WHERE codeHash = ?", (codeHash,))
            return record

        return self._run(consume)

    # -- refresh families

    @staticmethod
    def _liveFamily(c: sqlite3.Connection, familyID: str, now: float) -> RefreshFamily:
        row = c.execute(
            "SELECT * FROM families WHERE familyID = ? AND revoked = 0 AND expiresAt > ?",
            (familyID, now),
        ).fetchone()
        if row is None:
            raise NoSuchFamily(familyID)
        return fromRow(RefreshFamily, row)

    @staticmethod
    def _revoke(c: sqlite3.Connection, family: RefreshFamily, now: float) -> None:
        c.execute("UPDATE families SET revoked = 1 WHERE familyID = ?", (family.familyID,))
        if family.lastAccessJTI and now < family.lastAccessExpiresAt:
            SQLiteStore._denyList(c, family.lastAccessJTI, family.lastAccessExpiresAt)
        until = max(family.expiresAt, family.lastAccessExpiresAt)
        if now < until:
            SQLiteStore._denyList(c, familyRevocationID(family.familyID), until)

    @staticmethod
    def _denyList(c: sqlite3.Connection, jti: str, expiresAt: float) -> None:
        c.execute(
            "INSERT INTO revocations (jti, expiresAt) VALUES (?, ?) ON CONFLICT (jti) "
            "DO UPDATE SET expiresAt = max(expiresAt, excluded.expiresAt)",
            (jti, expiresAt),
        )

    def createFamily(self, family: RefreshFamily) -> "Deferred[None]":
        now = self._clock.seconds()

        def create(c: sqlite3.Connection) -> None:
            existing = c.execute(
                "SELECT 1 FROM families WHERE familyID = ? AND expiresAt > ?", (family.familyID, now)
            ).fetchone()
            if existing is not None:
                raise Conflict(family.familyID)
            row = toRow(family)
            c.execute(_INSERT_FAMILY, row)
            c.execute("UPDATE families SET revoked = 0 WHERE familyID = ?", (family.familyID,))

        return self._run(create)

    def getFamily(self, familyID: str, now: float) -> "Deferred[RefreshFamily]":
        return self._run(lambda c: self._liveFamily(c, familyID, now), write=False)

    def rotateRefresh(
        self,
        familyID: str,
        presentedHash: str,
        newHash: str,
        sealedSuccessor: str,
        graceUntil: float,
        accessJTI: str,
        accessExpiresAt: float,
        now: float,
        issued: bool = False,
        maxGraceReplays: int = 1,
    ) -> "Deferred[RotationResult]":
        def rotate(c: sqlite3.Connection) -> RotationResult:
            family = self._liveFamily(c, familyID, now)
            outcome, updated = rotation(
                family, presentedHash, newHash, sealedSuccessor, graceUntil,
                accessJTI, accessExpiresAt, now, issued, maxGraceReplays,
            )
            if outcome is RotationOutcome.REUSED:
                self._revoke(c, family, now)
            elif outcome is not RotationOutcome.UNKNOWN:
                c.execute(_UPDATE_FAMILY, toRow(updated))
            return RotationResult(outcome=outcome, family=updated)

        return self._run(rotate)

    def revokeFamily(self, familyID: str, now: float) -> "Deferred[Optional[RefreshFamily]]":
        def revoke(c: sqlite3.Connection) -> Optional[RefreshFamily]:
            try:
                family = self._liveFamily(c, familyID, now)
            except NoSuchFamily:
                return None
            self._revoke(c, family, now)
            return family

        return self._run(revoke)

    def listFamilies(self, clientID: Optional[str], now: float) -> "Deferred[List[RefreshFamily]]":
        def list_(c: sqlite3.Connection) -> List[RefreshFamily]:
            query = "SELECT * FROM families WHERE revoked = 0 AND expiresAt > ?"
            args: List[Any] = [now]
            if clientID is not None:
                query += " AND clientID = ?"
                args.append(clientID)
            rows = c.execute(query + " ORDER BY familyID", args).fetchall()
            return [fromRow(RefreshFamily, row) for row in rows]

        return self._run(list_, write=False)

    # -- revocations

    def revokeJTI(self, jti: str, expiresAt: float) -> "Deferred[None]":
        return self._run(lambda c: self._denyList(c, jti, expiresAt))

    def isRevoked(self, jti: str, now: float) -> "Deferred[bool]":
        """
        Coalesced: checks that arrive while one is in the thread wait for it
        and then go together, in one transaction. Each check still reads
        the database after it was asked (never an earlier answer), so a
        revocation committed before a request arrives is always seen.
        """
        return self.isAnyRevoked((jti,), now)

    def isAnyRevoked(self, ids: Sequence[str], now: float) -> "Deferred[bool]":
        return self._revocations.ask(ids, now)

    def _checkRevocations(self, batch: RevocationBatch) -> "Deferred[List[bool]]":
        def check(c: sqlite3.Connection) -> List[bool]:
            return [
                any(
                    c.execute(
                        "SELECT 1 FROM revocations WHERE jti = ? AND expiresAt > ?", (jti, now)
                    ).fetchone() is not None
                    for jti in ids
                )
                for ids, now in batch
            ]

        return self._run(check, write=False)

    # -- sessions

    @staticmethod
    def _liveSession(c: sqlite3.Connection, sessionID: str, now: float) -> SessionRecord:
        row = c.execute(
            "SELECT * FROM sessions WHERE sessionID = ? AND expiresAt > ?", (sessionID, now)
        ).fetchone()
        if row is None:
            raise NoSuchSession(sessionID)
        return fromRow(SessionRecord, row)

    def createSession(self, record: SessionRecord, limit: Optional[int] = None) -> "Deferred[List[str]]":
        now = self._clock.seconds()

        def create(c: sqlite3.Connection) -> List[str]:
            # One write transaction (BEGIN IMMEDIATE): the eviction and the
            # insert are atomic.
            existing = c.execute(
                "SELECT 1 FROM sessions WHERE sessionID = ? AND expiresAt > ?",
                (record.sessionID, now),
            ).fetchone()
            if existing is not None:
                raise Conflict(record.sessionID)
            ended: List[str] = []
            if limit is not None:
                # sessionsPrincipal (subject, clientID) finds the candidates.
                rows = c.execute(
                    "SELECT sessionID FROM sessions WHERE subject = ? AND clientID = ? "
                    "AND expiresAt > ? AND sessionID != ? "
                    "ORDER BY expiresAt DESC, createdAt DESC, sessionID DESC LIMIT -1 OFFSET ?",
                    (record.subject, record.clientID, record.createdAt, record.sessionID,
                     max(0, limit - 1)),
                ).fetchall()
                ended = [row[0] for row in reversed(rows)]
                c.executemany("DELETE FROM sessions WHERE sessionID = ?", [(i,) for i in ended])
            c.execute(_INSERT_SESSION, toRow(record))
            return ended

        return self._run(create)

    def getSession(self, sessionID: str, now: float) -> "Deferred[SessionRecord]":
        return self._run(lambda c: self._liveSession(c, sessionID, now), write=False)

    def touchSession(self, sessionID: str, expiresAt: float, now: float) -> "Deferred[None]":
        def touch(c: sqlite3.Connection) -> None:
            updated = c.execute(
                "UPDATE sessions SET expiresAt = ? WHERE sessionID = ? AND expiresAt > ?",
                (expiresAt, sessionID, now),
            ).rowcount
            if updated == 0:
                raise NoSuchSession(sessionID)

        return self._run(touch)

    def deleteSession(self, sessionID: str) -> "Deferred[bool]":
        now = self._clock.seconds()

        def delete(c: sqlite3.Connection) -> bool:
            row = c.execute(
                "DELETE FROM sessions WHERE sessionID = ? RETURNING expiresAt", (sessionID,)
            ).fetchone()
            return row is not None and now < row[0]

        return self._run(delete)

    def countSessions(self, now: float) -> "Deferred[int]":
        return self._run(
            lambda c: c.execute("SELECT count(*) FROM sessions WHERE expiresAt > ?", (now,)).fetchone()[0],
            write=False,
        )

    # -- rate limits

    # -- tasks

    @staticmethod
    def _liveTask(c: sqlite3.Connection, taskID: str, now: float) -> TaskRecord:
        row = c.execute(
            "SELECT * FROM tasks WHERE taskID = ? AND expiresAt > ?", (taskID, now)
        ).fetchone()
        if row is None:
            raise NoSuchTask(taskID)
        return fromRow(TaskRecord, row)

    def createTask(self, record: TaskRecord, limit: Optional[int] = None) -> "Deferred[None]":
        now = self._clock.seconds()

        def create(c: sqlite3.Connection) -> None:
            # One write transaction (BEGIN IMMEDIATE): the count and the
            # insert are atomic.
            existing = c.execute(
                "SELECT 1 FROM tasks WHERE taskID = ? AND expiresAt > ?", (record.taskID, now)
            ).fetchone()
            if existing is not None:
                raise Conflict(record.taskID)
            if limit is not None:
                (live,) = c.execute(
                    "SELECT COUNT(*) FROM tasks WHERE subject = ? AND clientID = ? "
                    "AND expiresAt > ? AND (leaseUntil = 0 OR leaseUntil > ?) "
                    "AND status NOT IN ({})".format(
                        ", ".join("?" * len(TERMINAL_TASK_STATUSES))),
                    (record.subject, record.clientID, record.createdAt, record.createdAt,
                     *sorted(TERMINAL_TASK_STATUSES)),
                ).fetchone()
                if live >= limit:
                    raise TooManyTasks(limit)
            c.execute(_INSERT_TASK, toRow(record))

        return self._run(create)

    def getTask(self, taskID: str, now: float) -> "Deferred[TaskRecord]":
        return self._run(lambda c: self._liveTask(c, taskID, now), write=False)

    def replaceTask(self, record: TaskRecord, now: float) -> "Deferred[bool]":
        def replace(c: sqlite3.Connection) -> bool:
            values = toRow(record)
            values.update(expected=record.version - 1, now=now)
            if c.execute(_REPLACE_TASK, values).rowcount == 1:
                return True
            self._liveTask(c, record.taskID, now)  # NoSuchTask, or a lost race
            return False

        return self._run(replace)

    def takeToken(
        self, key: str, capacity: int, refillPerSecond: float, now: float, cost: int = 1
    ) -> "Deferred[RateDecision]":
        def take(c: sqlite3.Connection) -> RateDecision:
            row = c.execute("SELECT tokens, updated FROM buckets WHERE key = ?", (key,)).fetchone()
            tokens, updated, decision = takeFromBucket(
                None if row is None else row[0],
                now if row is None else row[1],
                capacity, refillPerSecond, now, cost,
            )
            c.execute(
                "INSERT OR REPLACE INTO buckets (key, tokens, updated, fullAt) VALUES (?, ?, ?, ?)",
                (key, tokens, updated, bucketFullAt(tokens, updated, capacity, refillPerSecond)),
            )
            return decision

        return self._run(take)

    # -- client assertions

    def useAssertionID(self, clientID: str, jti: str, expiresAt: float, now: float) -> "Deferred[bool]":
        def use(c: sqlite3.Connection) -> bool:
            if expiresAt <= now:
                return True
            # One write transaction (BEGIN IMMEDIATE): an expired entry is
            # replaced, a live one is kept and the use is a replay.
            c.execute(
                "DELETE FROM assertions WHERE clientID = ? AND jti = ? AND expiresAt <= ?",
                (clientID, jti, now),
            )
            inserted = c.execute(
                "INSERT OR IGNORE INTO assertions (clientID, jti, expiresAt) VALUES (?, ?, ?)",
                (clientID, jti, expiresAt),
            ).rowcount
            return inserted == 1

        return self._run(use)

    # -- operations

    def ping(self) -> "Deferred[None]":
        return self._run(lambda c: c.execute("SELECT 1").fetchone() and None, write=False)

    def sweep(self, now: float) -> "Deferred[SweepReport]":
        def sweep(c: sqlite3.Connection) -> SweepReport:
            removed = {}
            for kind, query in (
                ("codes", "DELETE FROM codes WHERE expiresAt <= ?"),
                ("families", "DELETE FROM families WHERE expiresAt <= ?"),
                ("revocations", "DELETE FROM revocations WHERE expiresAt <= ?"),
                ("sessions", "DELETE FROM sessions WHERE expiresAt <= ?"),
                ("tasks", "DELETE FROM tasks WHERE expiresAt <= ?"),
                ("assertions", "DELETE FROM assertions WHERE expiresAt <= ?"),
                ("buckets", "DELETE FROM buckets WHERE fullAt <= ?"),
            ):
                removed[kind] = c.execute(query, (now,)).rowcount
            return SweepReport(removed=removed)

        return self._run(sweep)

    # -- admin helpers

    def integrityCheck(self) -> "Deferred[List[str]]":
        """
        Run C{PRAGMA integrity_check}; fires with its messages (C{["ok"]}
        for a sound database).
        """
        return self._run(
            lambda c: [row[0] for row in c.execute("PRAGMA integrity_check").fetchall()],
            write=False,
        )
