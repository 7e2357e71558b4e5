# -*- test-case-name: mcpsvc.oauth.test.test_refresh -*-
"""
Opaque refresh tokens, C{<familyID>.<secret>}, and the sealing of a
rotated family's successor token.

A refresh token's secret is 256 random bits followed by a 128-bit tag,
HMAC-SHA256 of the family id and those bits under a key derived from
C{JWT_SECRET} (L{RefreshTokens}). The tag proves that this server minted
the token for this family, without storing anything: the store keeps only
the hashes of the current and the previous token, yet a superseded token of
any age is recognised as one the family really issued (reuse: the family is
revoked), while a token the server never minted, such as the family id read
from an access token's C{fid} claim followed by random bytes, is recognised
as a forgery and revokes nothing. (A bounded history of hashes in the store
would forget tokens older than its bound, and a thief holding the grant
could rotate that many times to push the victim's token out of it.)

When a refresh token rotates, its successor is stored encrypted under a key
derived from the token that was presented (HKDF-SHA256 of that token, then
AES-256-GCM with the family id as associated data). Only a client holding
the superseded token can open it, so a retry within the grace window (two
ServiceNow workers racing, a lost response) gets the same successor back
instead of forking the family; the store never sees a usable token.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import re
from typing import Optional, Tuple

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from mcpsvc.storage.hashing import newSecret

__all__ = [
    "RefreshTokens",
    "newFamilyID",
    "newRefreshToken",
    "splitRefreshToken",
    "sealSuccessor",
    "unsealSuccessor",
]

_PART = re.compile(r"[A-Za-z0-9_\-]{16,128}")
_INFO = b"mcpsvc refresh successor v1"


def newFamilyID() -> str:
    """
    A new refresh family id (128 bits, URL-safe, no dots).
    """
    return newSecret(16)


def newRefreshToken(familyID: str) -> str:
    """
    A new I{untagged} refresh token of family C{familyID}, with 256 bits of
    secret: the format before L{RefreshTokens}, still accepted while it is
    a family's current or previous token. Only for placeholders and tests.
    """
    return familyID + "." + newSecret(32)


_RANDOM = 32
_TAG = 16


class RefreshTokens:
    """
    Mints tagged refresh tokens and recognises the ones this server minted.

    @param secret: the operator's C{JWT_SECRET}; the key is derived from it
        for this use only.
    """

    def __init__(self, secret: str) -> None:
        self._key = hmac.new(
            secret.encode("utf-8"), b"mcpsvc refresh token tag v1", hashlib.sha256
        ).digest()

    def _tag(self, familyID: str, random: bytes) -> bytes:
        return hmac.new(
            self._key, familyID.encode("utf-8") + b"\x00" + random, hashlib.sha256
        ).digest()[:_TAG]

    def new(self, familyID: str) -> str:
        """
        A new refresh token of family C{familyID}.
        """
        random = os.urandom(_RANDOM)
        secret = base64.urlsafe_b64encode(random + self._tag(familyID, random))
        return familyID + "." + secret.rstrip(b"=").decode("ascii")

    def minted(self, token: str) -> bool:
        """
        Whether C{token} is one this server minted (for the family it
        names). Constant-time in the tag.
        """
        parts = splitRefreshToken(token)
        if parts is None:
            return False
        familyID, secret = parts
        try:
            data = base64.urlsafe_b64decode(secret + "=" * (-len(secret) % 4))
        except (ValueError, binascii.Error):
            return False
        if len(data) != _RANDOM + _TAG:
            return False
        return hmac.compare_digest(data[_RANDOM:], self._tag(familyID, data[:_RANDOM]))


def splitRefreshToken(token: str) -> Optional[Tuple[str, str]]:
    """
    Split a presented refresh token into family id and secret, or C{None}
    when it does not have our shape.
    """
    if not isinstance(token, str) or len(token) > 300:
        return None
    familyID, sep, secret = token.partition(".")
    if not sep or _PART.fullmatch(familyID) is None or _PART.fullmatch(secret) is None:
        return None
    return familyID, secret


def _key(presented: str) -> bytes:
    hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_INFO)
    return hkdf.derive(presented.encode("utf-8"))


def sealSuccessor(presented: str, successor: str, familyID: str) -> str:
    """
    Encrypt C{successor} under a key derived from C{presented}.
    """
    nonce = os.urandom(12)
    sealed = AESGCM(_key(presented)).encrypt(
        nonce, successor.encode("utf-8"), familyID.encode("utf-8")
    )
    return base64.urlsafe_b64encode(nonce + sealed).decode("ascii")


def unsealSuccessor(presented: str, sealed: str, familyID: str) -> Optional[str]:
    """
    Decrypt a successor sealed by L{sealSuccessor}, or C{None} when
    C{presented} is not the token it was sealed for (or C{sealed} is
    damaged).
    """
    try:
        data = base64.urlsafe_b64decode(sealed.encode("ascii"))
        plain = AESGCM(_key(presented)).decrypt(data[:12], data[12:], familyID.encode("utf-8"))
    except (ValueError, InvalidTag, UnicodeError):
        return None
    return plain.decode("utf-8")
