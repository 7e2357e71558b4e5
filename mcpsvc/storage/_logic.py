# -*- test-case-name: mcpsvc.storage.test.test_memory -*-
"""
Backend-independent decisions shared by the memory and SQLite stores (the
Redis store runs the same rules in Lua: keep them in step).
"""

from __future__ import annotations

import hmac
import math
from typing import Optional, Tuple

import attrs

from mcpsvc.storage.interfaces import RateDecision, RefreshFamily, RotationOutcome

__all__ = ["hashEquals", "rotation", "takeFromBucket", "bucketFullAt"]


def hashEquals(a: Optional[str], b: Optional[str]) -> bool:
    """
    Constant-time comparison of two stored hashes; C{None} matches nothing.
    """
    if a is None or b is None:
        return False
    return hmac.compare_digest(a.encode("utf-8"), b.encode("utf-8"))


def rotation(
    family: RefreshFamily,
    presentedHash: str,
    newHash: str,
    sealedSuccessor: str,
    graceUntil: float,
    accessJTI: str,
    accessExpiresAt: float,
    now: float,
) -> Tuple[RotationOutcome, RefreshFamily]:
    """
    Decide a rotation of the live C{family} (see
    L{mcpsvc.storage.interfaces.IRefreshStore.rotateRefresh}).

    @return: the outcome and the family to store (for C{REUSED}, the family
        as it was: the caller revokes it).
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
        )
    if hashEquals(presentedHash, family.previousHash) and now < family.graceUntil:
        return RotationOutcome.GRACE, attrs.evolve(
            family, lastAccessJTI=accessJTI, lastAccessExpiresAt=accessExpiresAt
        )
    return RotationOutcome.REUSED, family


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
        tokens -= cost
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
