# -*- test-case-name: mcpsvc.storage.test.test_hashing -*-
"""
Hashing of high-entropy secrets before they reach a store.

Client secrets, refresh tokens and authorization codes are 256-bit random
values, so a fast keyed-free SHA-256 is the right hash: brute force over
2**256 is out of reach, and a slow password hash would only cost CPU on every
token request. (Human passwords, in login mode, use scrypt elsewhere.)
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os

__all__ = ["hashSecret", "secretMatches", "newSecret"]


def hashSecret(secret: str) -> str:
    """
    Return the storable hash of C{secret}: C{"sha256:"} and the hex digest.
    """
    return "sha256:" + hashlib.sha256(secret.encode("utf-8")).hexdigest()


def secretMatches(secret: str, storedHash: str) -> bool:
    """
    Compare C{secret} against a stored hash in constant time.
    """
    return hmac.compare_digest(hashSecret(secret).encode(), storedHash.encode())


def newSecret(nbytes: int = 32) -> str:
    """
    Return a new URL-safe random secret of C{nbytes} bytes of entropy.
    """
    return base64.urlsafe_b64encode(os.urandom(nbytes)).rstrip(b"=").decode("ascii")
