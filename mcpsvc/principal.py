# -*- test-case-name: mcpsvc.oauth.test.test_bearer -*-
"""
Who is calling: the result of authenticating a request to C{/mcp}.
"""

from __future__ import annotations

from typing import FrozenSet, Optional, Tuple

from attrs import frozen

__all__ = ["Principal"]


@frozen(kw_only=True)
class Principal:
    """
    An authenticated caller.

    @ivar subject: the token's C{sub} (an account, or a pseudonymous id).
    @ivar clientID: the OAuth client the token was issued to.
    @ivar scopes: the token's scopes.
    @ivar jti: the access token id (C{None} for API-key and no-auth callers).
    @ivar expiresAt: the token's C{exp} (0 when it has none).
    @ivar method: C{"bearer"}, C{"api-key"} or C{"none"}.
    @ivar revocationIDs: the deny-list ids any of which, revoked, refuses
        the token (its C{jti}, its client's, its grant's); a long-lived
        stream checks them all. Empty: just C{jti}, if any.
    """

    subject: str
    clientID: str
    scopes: FrozenSet[str] = frozenset()
    jti: Optional[str] = None
    expiresAt: float = 0
    method: str = "bearer"
    revocationIDs: Tuple[str, ...] = ()
