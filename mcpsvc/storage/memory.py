# -*- test-case-name: mcpsvc.storage.test.test_memory -*-
"""
An in-memory L{IStore}: tests and throwaway development. Everything is lost
when the process ends.

Every method answers with an already-fired Deferred (L{succeed}/L{fail}),
so tests driving it need neither a reactor nor C{flush()}.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, TypeVar

import attrs
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from zope.interface import implementer

from mcpsvc.storage._logic import (
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
    SweepReport,
    TaskRecord,
    TERMINAL_TASK_STATUSES,
    TooManyTasks,
    familyRevocationID,
)

__all__ = ["MemoryStore"]

T = TypeVar("T")
log = Logger()


def _answer(f: Callable[[], T]) -> "Deferred[T]":
    try:
        return succeed(f())
    except Exception as e:
        return fail(e)


@attrs.define
class _Bucket:
    tokens: float
    updated: float
    capacity: int
    refillPerSecond: float


@implementer(IStore)
class MemoryStore:
    """
    L{IStore} in dictionaries, with expiry from the injected clock and the
    C{now} arguments.

    Revoked refresh families stay as tombstones until they expire, so a
    revoked family id can never be created again.
    """

    backendName = "memory"

    def __init__(self, clock: IReactorTime) -> None:
        self._clock = clock
        self._clients: Dict[str, ClientRecord] = {}
        self._codes: Dict[str, CodeRecord] = {}
        #: familyID -> (family, revoked)
        self._families: Dict[str, Tuple[RefreshFamily, bool]] = {}
        self._revoked: Dict[str, float] = {}
        self._sessions: Dict[str, SessionRecord] = {}
        self._tasks: Dict[str, TaskRecord] = {}
        self._buckets: Dict[str, _Bucket] = {}
        #: (clientID, jti) -> expiresAt of used client assertions
        self._assertions: Dict[Tuple[str, str], float] = {}

    # -- clients

    def createClient(self, record: ClientRecord) -> "Deferred[None]":
        def create() -> None:
            if record.clientID in self._clients:
                raise Conflict(record.clientID)
            self._clients[record.clientID] = record

        return _answer(create)

    def getClient(self, clientID: str) -> "Deferred[ClientRecord]":
        def get() -> ClientRecord:
            try:
                return self._clients[clientID]
            except KeyError:
                raise NoSuchClient(clientID) from None

        return _answer(get)

    def listClients(self) -> "Deferred[List[ClientRecord]]":
        return succeed([self._clients[k] for k in sorted(self._clients)])

    def updateClient(self, record: ClientRecord) -> "Deferred[None]":
        def update() -> None:
            if record.clientID not in self._clients:
                raise NoSuchClient(record.clientID)
            self._clients[record.clientID] = record

        return _answer(update)

    def deleteClient(self, clientID: str) -> "Deferred[None]":
        def delete() -> None:
            if self._clients.pop(clientID, None) is None:
                raise NoSuchClient(clientID)

        return _answer(delete)

    def removeIdleDocumentClients(self, staleBefore: float, now: float) -> "Deferred[int]":
        def remove() -> int:
            live = {f.clientID for f, revoked in self._families.values()
                    if not revoked and now < f.expiresAt}
            idle = [clientID for clientID, record in self._clients.items()
                    if clientID not in live and isIdleDocumentClient(record.metadata, staleBefore)]
            for clientID in idle:
                del self._clients[clientID]
            return len(idle)

        return _answer(remove)

    # -- codes

    def storeCode(self, record: CodeRecord) -> "Deferred[None]":
        def store() -> None:
            existing = self._codes.get(record.codeHash)
            if existing is not None and self._clock.seconds() < existing.expiresAt:
                raise Conflict(record.codeHash)
            self._codes[record.codeHash] = record

        return _answer(store)

    def consumeCode(
        self,
        codeHash: str,
        now: float,
        clientID: Optional[str] = None,
        codeChallenge: Optional[str] = None,
        redirectURI: Optional[str] = None,
    ) -> "Deferred[CodeRecord]":
        def consume() -> CodeRecord:
            record = self._codes.get(codeHash)
            if record is None or now >= record.expiresAt:
                raise NoSuchCode(codeHash)
            checkCode(record, clientID, codeChallenge, redirectURI)
            if record.used:
                raise AlreadyUsed(record)
            self._codes[codeHash] = attrs.evolve(record, used=True)
            return record

        return _answer(consume)

    # -- refresh families

    def _liveFamily(self, familyID: str, now: float) -> RefreshFamily:
        entry = self._families.get(familyID)
        if entry is None or entry[1] or now >= entry[0].expiresAt:
            raise NoSuchFamily(familyID)
        return entry[0]

    def createFamily(self, family: RefreshFamily) -> "Deferred[None]":
        def create() -> None:
            entry = self._families.get(family.familyID)
            if entry is not None and self._clock.seconds() < entry[0].expiresAt:
                raise Conflict(family.familyID)
            self._families[family.familyID] = (family, False)

        return _answer(create)

    def getFamily(self, familyID: str, now: float) -> "Deferred[RefreshFamily]":
        return _answer(lambda: self._liveFamily(familyID, now))

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
        def rotate() -> RotationResult:
            family = self._liveFamily(familyID, now)
            outcome, updated = rotation(
                family, presentedHash, newHash, sealedSuccessor, graceUntil,
                accessJTI, accessExpiresAt, now, issued, maxGraceReplays,
            )
            if outcome is RotationOutcome.REUSED:
                self._revoke(family, now)
            elif outcome is not RotationOutcome.UNKNOWN:
                self._families[familyID] = (updated, False)
            return RotationResult(outcome=outcome, family=updated)

        return _answer(rotate)

    def _revoke(self, family: RefreshFamily, now: float) -> None:
        self._families[family.familyID] = (family, True)
        if family.lastAccessJTI and now < family.lastAccessExpiresAt:
            self._denyList(family.lastAccessJTI, family.lastAccessExpiresAt)
        until = max(family.expiresAt, family.lastAccessExpiresAt)
        if now < until:
            self._denyList(familyRevocationID(family.familyID), until)

    def revokeFamily(self, familyID: str, now: float) -> "Deferred[Optional[RefreshFamily]]":
        def revoke() -> Optional[RefreshFamily]:
            try:
                family = self._liveFamily(familyID, now)
            except NoSuchFamily:
                return None
            self._revoke(family, now)
            return family

        return _answer(revoke)

    def listFamilies(self, clientID: Optional[str], now: float) -> "Deferred[List[RefreshFamily]]":
        return succeed(
            [
                family
                for familyID, (family, revoked) in sorted(self._families.items())
                if not revoked
                and now < family.expiresAt
                and (clientID is None or family.clientID == clientID)
            ]
        )

    # -- revocations

    def _denyList(self, jti: str, expiresAt: float) -> None:
        self._revoked[jti] = max(expiresAt, self._revoked.get(jti, expiresAt))

    def revokeJTI(self, jti: str, expiresAt: float) -> "Deferred[None]":
        return _answer(lambda: self._denyList(jti, expiresAt))

    def isRevoked(self, jti: str, now: float) -> "Deferred[bool]":
        return self.isAnyRevoked((jti,), now)

    def isAnyRevoked(self, ids: Sequence[str], now: float) -> "Deferred[bool]":
        for jti in ids:
            expiresAt = self._revoked.get(jti)
            if expiresAt is not None and now < expiresAt:
                return succeed(True)
        return succeed(False)

    # -- sessions

    def _liveSession(self, sessionID: str, now: float) -> SessionRecord:
        record = self._sessions.get(sessionID)
        if record is None or now >= record.expiresAt:
            raise NoSuchSession(sessionID)
        return record

    def createSession(self, record: SessionRecord, limit: Optional[int] = None) -> "Deferred[List[str]]":
        def create() -> List[str]:
            existing = self._sessions.get(record.sessionID)
            if existing is not None and self._clock.seconds() < existing.expiresAt:
                raise Conflict(record.sessionID)
            ended: List[str] = []
            if limit is not None:
                live = sorted(
                    (r for r in self._sessions.values()
                     if r.subject == record.subject and r.clientID == record.clientID
                     and r.sessionID != record.sessionID and record.createdAt < r.expiresAt),
                    key=lambda r: (r.expiresAt, r.createdAt, r.sessionID),
                )
                ended = [r.sessionID for r in live[:max(0, len(live) - max(0, limit - 1))]]
                for sessionID in ended:
                    del self._sessions[sessionID]
            self._sessions[record.sessionID] = record
            return ended

        return _answer(create)

    def getSession(self, sessionID: str, now: float) -> "Deferred[SessionRecord]":
        return _answer(lambda: self._liveSession(sessionID, now))

    def touchSession(self, sessionID: str, expiresAt: float, now: float) -> "Deferred[None]":
        def touch() -> None:
            record = self._liveSession(sessionID, now)
            self._sessions[sessionID] = attrs.evolve(record, expiresAt=expiresAt)

        return _answer(touch)

    def deleteSession(self, sessionID: str) -> "Deferred[bool]":
        def delete() -> bool:
            record = self._sessions.pop(sessionID, None)
            return record is not None and self._clock.seconds() < record.expiresAt

        return _answer(delete)

    def countSessions(self, now: float) -> "Deferred[int]":
        return succeed(sum(1 for r in self._sessions.values() if now < r.expiresAt))

    # -- tasks

    def _liveTask(self, taskID: str, now: float) -> TaskRecord:
        record = self._tasks.get(taskID)
        if record is None or now >= record.expiresAt:
            raise NoSuchTask(taskID)
        return record

    def createTask(self, record: TaskRecord, limit: Optional[int] = None) -> "Deferred[None]":
        def create() -> None:
            existing = self._tasks.get(record.taskID)
            if existing is not None and self._clock.seconds() < existing.expiresAt:
                raise Conflict(record.taskID)
            if limit is not None:
                live = sum(
                    1 for r in self._tasks.values()
                    if r.subject == record.subject and r.clientID == record.clientID
                    and r.status not in TERMINAL_TASK_STATUSES and record.createdAt < r.expiresAt
                    and (r.leaseUntil == 0 or record.createdAt < r.leaseUntil)
                )
                if live >= limit:
                    raise TooManyTasks(limit)
            self._tasks[record.taskID] = record

        return _answer(create)

    def getTask(self, taskID: str, now: float) -> "Deferred[TaskRecord]":
        return _answer(lambda: self._liveTask(taskID, now))

    def replaceTask(self, record: TaskRecord, now: float) -> "Deferred[bool]":
        def replace() -> bool:
            if self._liveTask(record.taskID, now).version != record.version - 1:
                return False
            self._tasks[record.taskID] = record
            return True

        return _answer(replace)

    # -- rate limits

    def takeToken(
        self, key: str, capacity: int, refillPerSecond: float, now: float, cost: int = 1
    ) -> "Deferred[RateDecision]":
        def take() -> RateDecision:
            bucket = self._buckets.get(key)
            tokens, updated, decision = takeFromBucket(
                None if bucket is None else bucket.tokens,
                now if bucket is None else bucket.updated,
                capacity, refillPerSecond, now, cost,
            )
            self._buckets[key] = _Bucket(tokens, updated, capacity, refillPerSecond)
            return decision

        return _answer(take)

    # -- client assertions

    def useAssertionID(self, clientID: str, jti: str, expiresAt: float, now: float) -> "Deferred[bool]":
        def use() -> bool:
            if expiresAt <= now:
                return True
            key = (clientID, jti)
            seen = self._assertions.get(key)
            if seen is not None and now < seen:
                return False
            self._assertions[key] = expiresAt
            return True

        return _answer(use)

    # -- operations

    def ping(self) -> "Deferred[None]":
        return succeed(None)

    def sweep(self, now: float) -> "Deferred[SweepReport]":
        def expired(mapping: Dict[str, Any], isExpired: Callable[[Any], bool]) -> int:
            keys = [k for k, v in mapping.items() if isExpired(v)]
            for k in keys:
                del mapping[k]
            return len(keys)

        removed = {
            "codes": expired(self._codes, lambda r: now >= r.expiresAt),
            "families": expired(self._families, lambda e: now >= e[0].expiresAt),
            "revocations": expired(self._revoked, lambda exp: now >= exp),
            "sessions": expired(self._sessions, lambda r: now >= r.expiresAt),
            "tasks": expired(self._tasks, lambda r: now >= r.expiresAt),
            "assertions": expired(self._assertions, lambda exp: now >= exp),
            "buckets": expired(
                self._buckets,
                lambda b: now >= bucketFullAt(b.tokens, b.updated, b.capacity, b.refillPerSecond),
            ),
        }
        return succeed(SweepReport(removed=removed))
