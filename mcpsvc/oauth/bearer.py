# -*- test-case-name: mcpsvc.oauth.test.test_bearer -*-
"""
Protecting C{/mcp}: every request needs an access token we issued for this
resource (C{Authorization: Bearer}), or C{MCP_API_KEY} when it is set.

Failures raise L{Unauthorized} (401) or L{Forbidden} (403) carrying the
C{WWW-Authenticate} challenge MCP requires (RFC 6750 section 3 and RFC 9728
section 5.1); the MCP app's error handlers render them in the JSON-RPC
family. A store that cannot answer the revocation check raises
L{StoreUnavailable} (503): never an accept.
"""

from __future__ import annotations

import hmac
from typing import Any, ClassVar, Iterable, List, Optional

from attrs import field, frozen
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.web.iweb import IRequest

from mcpsvc.config import Config
from mcpsvc.http.errors import BadRequest, Forbidden, Unauthorized
from mcpsvc.oauth.scopes import DEFAULT_SCOPES, RESOURCE_SCOPES, formatScope, missingScopes
from mcpsvc.oauth.tokens import AccessClaims, AccessTokens, InvalidToken
from mcpsvc.principal import Principal
from mcpsvc.storage.interfaces import clientRevocationID, familyRevocationID

__all__ = ["BearerAuthenticator", "challenge", "insufficientScope", "requireScopes"]


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def challenge(
    config: Config,
    error: Optional[str] = None,
    description: Optional[str] = None,
    scope: Optional[str] = None,
) -> str:
    """
    The C{WWW-Authenticate} value for C{/mcp}: C{Bearer} with
    C{resource_metadata} (the absolute path-inserted PRM URL), and C{error},
    C{error_description} and C{scope} when given (else the default
    scopes: what a client needs to list and call the ordinary tools; a tool
    that needs more says so with a 403 C{insufficient_scope}).
    """
    params = [
        ("resource_metadata", config.serverURL + "/.well-known/oauth-protected-resource/mcp")
    ]
    if error:
        params.append(("error", error))
    if description:
        params.append(("error_description", description))
    params.append(("scope", scope if scope is not None else formatScope(DEFAULT_SCOPES)))
    return "Bearer " + ", ".join(f"{name}={_quote(value)}" for name, value in params)


def requireScopes(config: Config, principal: Principal, required: Iterable[str]) -> None:
    """
    Check that C{principal} holds every scope in C{required} (with the
    hierarchy: C{mcp:tools} includes C{mcp:read}, C{mcp:write} both).

    @raise Forbidden: 403 C{insufficient_scope}, whose challenge names the
        scopes needed (what the principal holds plus what is missing, so a
        client stepping up asks for all of them at once).
    """
    needed = list(required)
    missing = missingScopes(principal.scopes, needed)
    if not missing:
        return
    raise insufficientScope(config, principal, needed, missing)


def insufficientScope(
    config: Config, principal: Principal, needed: Iterable[str], missing: Iterable[str],
    jsonrpcCode: Optional[int] = None,
) -> Forbidden:
    """
    The 403 C{insufficient_scope} (RFC 6750 section 3.1, MCP 2025-11-25
    step-up authorization): its challenge's C{scope} names what the
    principal holds plus what is needed, so a client stepping up asks for
    all of them at once and loses nothing it had.
    """
    missing = list(missing)
    scope = formatScope(set(principal.scopes) | set(needed))
    description = "This request needs scope " + " ".join(missing)
    kw = {} if jsonrpcCode is None else {"jsonrpcCode": jsonrpcCode}
    return Forbidden(
        description,
        error="insufficient_scope",
        headers={"WWW-Authenticate": challenge(config, "insufficient_scope", description, scope)},
        **kw,
    )


@frozen(kw_only=True)
class BearerAuthenticator:
    """
    Authenticates requests to C{/mcp}.

    @ivar config: the configuration (C{authMode}, C{mcpAPIKey}, URLs).
    @ivar store: answers C{isRevoked}.
    @ivar clock: time source.
    @ivar verifier: verifies access tokens (L{AccessTokens}).
    """

    log: ClassVar[Logger] = Logger()

    #: Not in the repr: L{Config}'s carries the secrets, and this object is
    #: the C{log_source} of our log events.
    config: Config = field(repr=False)
    store: Any
    clock: IReactorTime
    verifier: AccessTokens

    def _unauthorized(self, description: str, presented: bool) -> Unauthorized:
        error = "invalid_token" if presented else None
        return Unauthorized(
            description,
            error="invalid_token" if presented else "unauthorized",
            headers={"WWW-Authenticate": challenge(self.config, error, description if presented else None)},
        )

    def _apiKeyMatches(self, value: str) -> bool:
        key = self.config.mcpAPIKey
        if not key:
            return False
        return hmac.compare_digest(value.encode("utf-8"), key.encode("utf-8"))

    def _apiKeyPrincipal(self) -> Principal:
        return Principal(
            subject="api-key",
            clientID="api-key",
            scopes=frozenset(RESOURCE_SCOPES),
            method="api-key",
        )

    def requireScopes(self, principal: Principal, required: Iterable[str]) -> None:
        """
        L{requireScopes} with this authenticator's configuration.
        """
        requireScopes(self.config, principal, required)

    async def authenticate(self, request: IRequest) -> Principal:
        """
        Authenticate C{request}.

        @return: the caller.
        @raise Unauthorized: 401 with the C{WWW-Authenticate} challenge.
        @raise BadRequest: 400 for a token in the query string or a
            malformed C{Authorization} header.
        @raise StoreUnavailable: the revocation list cannot be read.
        """
        if self.config.authMode == "none":
            # No authentication at all: nothing to check scopes against.
            return Principal(subject="anonymous", clientID="none",
                             scopes=frozenset(RESOURCE_SCOPES), method="none")
        if b"access_token" in (request.args or {}):
            self.log.warn("Refused an access token in the query string of {path}",
                          path=request.path.decode("latin-1"))
            raise BadRequest(
                "Access tokens must be sent in the Authorization header, not the URL",
                headers={"WWW-Authenticate": challenge(self.config, "invalid_request",
                                                       "token in query string")},
            )
        headers = request.requestHeaders
        authorizations = headers.getRawHeaders(b"authorization") or []
        apiKeys = headers.getRawHeaders(b"x-api-key") or []
        if len(authorizations) > 1 or len(apiKeys) > 1:
            raise BadRequest(
                "Only one Authorization or X-API-Key header is allowed",
                headers={"WWW-Authenticate": challenge(self.config, "invalid_request")},
            )
        if apiKeys:
            value = apiKeys[0].decode("latin-1").strip()
            if self._apiKeyMatches(value):
                return self._apiKeyPrincipal()
            if not authorizations:
                self.log.warn("Refused a wrong X-API-Key")
                raise self._unauthorized("The API key is not valid", True)
        if not authorizations:
            raise self._unauthorized("Authorization required", False)
        raw = authorizations[0].decode("latin-1").strip()
        scheme, _, token = raw.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise self._unauthorized("Use the Bearer authentication scheme", False)
        if self._apiKeyMatches(token):
            return self._apiKeyPrincipal()
        now = self.clock.seconds()
        try:
            claims = self.verifier.verify(token, now=now)
        except InvalidToken as e:
            self.log.info("Refused an access token: {reason}", reason=str(e))
            raise self._unauthorized(str(e), True)
        if await self.store.isAnyRevoked(revocationIDs(claims), now):
            self.log.info("Refused a revoked access token {jti}", jti=claims.jti)
            raise self._unauthorized("token has been revoked", True)
        return Principal(
            subject=claims.subject,
            clientID=claims.clientID,
            scopes=claims.scopes,
            jti=claims.jti,
            expiresAt=claims.expiresAt,
            method="bearer",
            revocationIDs=tuple(revocationIDs(claims)),
        )


def revocationIDs(claims: AccessClaims) -> List[str]:
    """
    The deny-list ids that refuse an access token: its own C{jti}, its
    client's (removed with C{mcpsvc clients remove}) and, when it was
    issued from a refresh family (claim C{fid}), the family's (revoked as
    a whole: at C{/oauth/revoke}, on reuse of a stale refresh token, by
    C{mcpsvc tokens revoke} or C{mcpsvc grants revoke}).
    """
    ids = [claims.jti, clientRevocationID(claims.clientID)]
    if claims.familyID:
        ids.append(familyRevocationID(claims.familyID))
    return ids
