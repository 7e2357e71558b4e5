# -*- test-case-name: mcpsvc.oauth.test.test_pkce -*-
"""
PKCE (RFC 7636), the C{S256} method only: OAuth 2.1 and MCP require it, and
C{plain} is refused everywhere.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from typing import Optional

__all__ = [
    "S256",
    "isValidVerifier",
    "isValidChallenge",
    "challengeFor",
    "checkChallenge",
    "verifierMatches",
]

#: The only code challenge method we accept.
S256 = "S256"

# RFC 7636 section 4.1: 43 to 128 characters of [A-Z] / [a-z] / [0-9] / "-" /
# "." / "_" / "~".
_VERIFIER = re.compile(r"[A-Za-z0-9\-._~]{43,128}")
# An S256 challenge is the unpadded base64url encoding of 32 bytes.
_CHALLENGE = re.compile(r"[A-Za-z0-9\-_]{43}")


def isValidVerifier(verifier: str) -> bool:
    """
    Whether C{verifier} has the syntax RFC 7636 section 4.1 requires.
    """
    return _VERIFIER.fullmatch(verifier) is not None


def isValidChallenge(challenge: str) -> bool:
    """
    Whether C{challenge} looks like an C{S256} challenge (43 base64url
    characters).
    """
    return _CHALLENGE.fullmatch(challenge) is not None


def challengeFor(verifier: str) -> str:
    """
    Return the C{S256} challenge of C{verifier}.
    """
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def checkChallenge(challenge: Optional[str], method: Optional[str]) -> Optional[str]:
    """
    Check the PKCE parameters of an authorization request.

    @param challenge: the C{code_challenge} parameter, or C{None}.
    @param method: the C{code_challenge_method} parameter, or C{None}. RFC
        7636 makes C{plain} the default when it is absent; we refuse
        C{plain}, so an absent method is refused too.
    @return: C{None} when acceptable, else a description for an
        C{invalid_request} error.
    """
    if not challenge:
        return "code_challenge is required (PKCE with S256)"
    if not method:
        return "code_challenge_method is required and must be S256"
    if method != S256:
        return "code_challenge_method must be S256 (plain is not supported)"
    if not isValidChallenge(challenge):
        return "code_challenge is not a valid S256 challenge"
    return None


def verifierMatches(verifier: Optional[str], challenge: str, method: str = S256) -> bool:
    """
    Whether C{verifier} answers C{challenge}, compared in constant time.
    Any method but C{S256}, or a verifier of the wrong syntax, never
    matches.
    """
    if method != S256 or not verifier or not isValidVerifier(verifier):
        return False
    return hmac.compare_digest(challengeFor(verifier).encode(), challenge.encode())
