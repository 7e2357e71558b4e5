# -*- test-case-name: mcpsvc.storage.test.test_memory -*-
"""
Backend-independent decisions shared by the memory and SQLite stores (the
Redis store runs the same rules in Lua: keep them in step).
"""

from __future__ import annotations

import hmac
import math
from typing import Any, Callable, List, Optional, Sequence, Tuple

import attrs
from twisted.internet.defer import Deferred

from mcpsvc.storage.interfaces import (
    CodeMismatch,
    CodeRecord,
    RateDecision,
    RefreshFamily,
    RotationOutcome,
)

__all__ = [
    "hashEquals",
    "checkCode",
    "rotation",
    "takeFromBucket",
    "bucketFullAt",
    "RevocationBatches",
]


def isIdleDocumentClient(metadata: Any, staleBefore: float) -> bool:
    """
    Whether a client's C{metadata} is a metadata document client's whose
    document went stale (C{cimd.fresh_until}) before C{staleBefore}: a
    record unused since then (its use after that time would have fetched
    the document again and renewed C{fresh_until}).
    """
    info = metadata.get("cimd") if hasattr(metadata, "get") else None
    if not hasattr(info, "get"):
        return False
    try:
        return float(info.get("fresh_until")) < staleBefore
    except (TypeError, ValueError):
        return False


def hashEquals(a: Optional[str], b: Optional[str]) -> bool:
    """
    Constant-time comparison of two stored hashes; C{None} matches nothing.
    """
    if a is None or b is None:
        return False
    return hmac.compare_digest(a.encode("utf-8"), b.encode("utf-8"))


def checkCode(
    record: CodeRecord,
    clientID: Optional[str],
    codeChallenge: Optional[str],
    redirectURI: Optional[str],
) -> None:
    """
    Raise L{CodeMismatch} when a presented code does not belong to the
    presenting client, verifier and redirect URI (see
    L{mcpsvc.storage.interfaces.ICodeStore.consumeCode}).
    """
    if clientID is not None and clientID != record.clientID:
        raise CodeMismatch("client_id")
    if redirectURI is not None and redirectURI != record.redirectURI:
        raise CodeMismatch("redirect_uri")
    if codeChallenge is not None and not hashEquals(codeChallenge, record.codeChallenge):
        raise CodeMismatch("code_verifier")


def rotation(
    family: RefreshFamily,
    presentedHash: str,
    newHash: str,
    sealedSuccessor: str,
    graceUntil: float,
    accessJTI: str,
    accessExpiresAt: float,
    now: float,
    issued: bool = False,
    maxGraceReplays: int = 1,
) -> Tuple[RotationOutcome, RefreshFamily]:
    """
    Decide a rotation of the live C{family} (see
    L{mcpsvc.storage.interfaces.IRefreshStore.rotateRefresh}).

    @return: the outcome and the family to store (for C{REUSED}, the family
        as it was: the caller revokes it; for C{UNKNOWN}, the family
        unchanged: the caller stores nothing).
    """
    if hashEquals(presentedHash, family.currentHash):
        return RotationOutcome.ROTATED, attrs.evolve(
            family,
            previousHash=family.currentHash,
            currentHash=newHash,
            sealedSuccessor=sealedSuccessor,
            graceUntil=graceUntil,
            lastAccessJTI=accessJTI,
            lastAccessExpiresAt=accessExpiresAt,
            rotations=family.rotations + 1,
            graceReplays=0,
        )
    previous = hashEquals(presentedHash, family.previousHash)
    if previous and now < family.graceUntil and family.graceReplays < maxGraceReplays:
        return RotationOutcome.GRACE, attrs.evolve(
            family,
            lastAccessJTI=accessJTI,
            lastAccessExpiresAt=accessExpiresAt,
            graceReplays=family.graceReplays + 1,
        )
    if previous or issued:
        return RotationOutcome.REUSED, family
    return RotationOutcome.UNKNOWN, family


def takeFromBucket(
    tokens: Optional[float],
    updated: float,
    capacity: int,
    refillPerSecond: float,
    now: float,
    cost: int,
) -> Tuple[float, float, RateDecision]:
    """
    Take C{cost} tokens from a bucket holding C{tokens} at time C{updated}
    (C{None}: a new, full bucket).

    @return: the new token count, the new update time and the decision.
    """
    if refillPerSecond <= 0:
        raise ValueError("refillPerSecond must be positive")
    if tokens is None:
        tokens = float(capacity)
        updated = now
    elif now > updated:
        tokens = min(float(capacity), tokens + (now - updated) * refillPerSecond)
        updated = now
    if tokens >= cost:
        # a negative cost gives tokens back, never beyond the capacity
        tokens = min(float(capacity), tokens - cost)
        decision = RateDecision(allowed=True, remaining=int(math.floor(tokens)), retryAfter=0.0)
    else:
        decision = RateDecision(
            allowed=False,
            remaining=int(math.floor(tokens)),
            retryAfter=(cost - tokens) / refillPerSecond,
        )
    return tokens, updated, decision


def bucketFullAt(tokens: float, updated: float, capacity: int, refillPerSecond: float) -> float:
    """
    When a bucket left alone is full again (and may be forgotten).
    """
    return updated + max(0.0, capacity - tokens) / refillPerSecond


#: A batch of revocation checks: each entry is the ids of one check and its
#: time.
RevocationBatch = List[Tuple[Tuple[str, ...], float]]


class RevocationBatches:
    """
    Coalesced revocation checks, for the stores that pay a round trip per
    call: a check asked while none is in flight goes at once, alone;
    checks asked while one is in flight wait for it and then go together.
    Each check is still read after it was asked (never an earlier
    answer), so a revocation made before a request arrives is always seen.

    @param check: reads one batch; fires with one C{bool} per entry (any of
        its ids deny-listed), or fails (every check of the batch fails).
    """

    def __init__(self, check: Callable[[RevocationBatch], "Deferred[List[bool]]"]) -> None:
        self._check = check
        self._queue: List[Tuple[Tuple[str, ...], float, "Deferred[bool]"]] = []
        self._busy = False

    def ask(self, ids: Sequence[str], now: float) -> "Deferred[bool]":
        d: Deferred[bool] = Deferred()
        self._queue.append((tuple(ids), now, d))
        if not self._busy:
            self._next()
        return d

    def _next(self) -> None:
        batch, self._queue = self._queue, []
        if not batch:
            self._busy = False
            return
        self._busy = True

        def answered(results: List[bool]) -> None:
            for (_, _, d), revoked in zip(batch, results):
                if not d.called:  # the caller may have cancelled it
                    d.callback(revoked)

        def failed(failure: Any) -> None:
            for _, _, d in batch:
                if not d.called:
                    d.errback(failure)

        running = self._check([(ids, now) for ids, now, _ in batch])
        running.addCallbacks(answered, failed)
        running.addBoth(lambda _: self._next())
