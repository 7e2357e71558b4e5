# -*- test-case-name: mcpsvc.oauth.test.test_privatekeyjwt -*-
"""
C{private_key_jwt} at the token, revocation and introspection endpoints:
the glue between a request's form, the client registry, the client's keys
(L{mcpsvc.oauth.clientkeys}), the checks (L{mcpsvc.oauth.assertion}) and
the store's single-use record of assertion ids.

L{AssertionAuthenticator.authenticate} is what L{mcpsvc.oauth.app.OAuthApp}
calls when a request carries C{client_assertion} or
C{client_assertion_type}. It works from the client record alone (its
C{token_endpoint_auth_method} and its C{jwks} or C{jwks_uri} metadata), so
clients registered by the command line, by dynamic registration or
described by a metadata document all authenticate the same way.

Every refusal is C{invalid_client} (401) with a short description, one log
line and one C{client.auth_failed} audit event naming the reason; a
replayed assertion is also C{client.assertion_replay}. A store that cannot
answer fails the request (503), never accepts it.
"""

from __future__ import annotations

from typing import Any, Awaitable, Callable, Dict, List, Mapping, Optional, Sequence

import attrs
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.web.iweb import IRequest

from mcpsvc.audit import audit
from mcpsvc.http.errors import OAuthError
from mcpsvc.http.jsonio import truncateForLog
from mcpsvc.oauth.assertion import (
    ALGORITHMS,
    AssertionPolicy,
    InvalidAssertion,
    parseAssertion,
    selectKey,
    verifyAssertion,
)
from mcpsvc.oauth.cimd import CIMDError
from mcpsvc.oauth.clientkeys import FetchJSON, JWKSCache, clientKeys
from mcpsvc.oauth.clients import PRIVATE_KEY_JWT, authMethod
from mcpsvc.storage.interfaces import ClientRecord, NoSuchClient

__all__ = [
    "AssertionAuthenticator",
    "carriesAssertion",
    "buildAssertionAuthenticator",
    "advertiseAssertions",
    "assertionAudiences",
    "ENDPOINT_PREFIXES",
]

#: The metadata prefixes of the endpoints that authenticate clients.
ENDPOINT_PREFIXES = ("token_endpoint", "revocation_endpoint", "introspection_endpoint")

METHOD = PRIVATE_KEY_JWT


def carriesAssertion(form: Mapping[str, str]) -> bool:
    """
    Whether a request tries C{private_key_jwt} (either parameter present).
    """
    return "client_assertion" in form or "client_assertion_type" in form


@attrs.define
class AssertionAuthenticator:
    """
    Authenticates clients by C{private_key_jwt}.

    @ivar store: answers C{useAssertionID}.
    @ivar clock: the time source.
    @ivar issuer: our issuer identifier (an accepted C{aud}).
    @ivar enabled: C{PRIVATE_KEY_JWT}; when off every assertion is refused.
    @ivar policy: the assertion limits.
    @ivar cache: fetches and caches C{jwks_uri} sets (C{None}: clients
        with a C{jwks_uri} cannot authenticate).
    """

    store: Any
    clock: IReactorTime
    issuer: str
    enabled: bool = True
    policy: AssertionPolicy = AssertionPolicy()
    cache: Optional[JWKSCache] = None
    log: Logger = attrs.field(factory=Logger, init=False, repr=False)

    @property
    def algorithms(self) -> Sequence[str]:
        """
        The signing algorithms to advertise.
        """
        return list(self.policy.algorithms or ALGORITHMS)

    def _refuse(
        self, request: IRequest, reason: str, description: str, clientID: Optional[str] = None
    ) -> OAuthError:
        audit("client.auth_failed", "denied", request=request,
              clientID=clientID[:200] if clientID else None, reason=reason, method=METHOD)
        self.log.warn(
            "Client authentication failed for {clientID} ({method}): {reason}",
            clientID=truncateForLog(clientID, 100) if clientID else None,
            method=METHOD, reason=reason,
        )
        return OAuthError("invalid_client", description, code=401)

    async def authenticate(
        self,
        request: IRequest,
        form: Mapping[str, str],
        *,
        audiences: Sequence[str],
        getClient: Callable[[str], Awaitable[ClientRecord]],
    ) -> ClientRecord:
        """
        Authenticate the client of C{request} by its assertion.

        @param audiences: the accepted C{aud} values: our issuer and the
            URL(s) of the endpoint being called.
        @param getClient: looks a client up by id, resolving a metadata
            document URL (fails with L{NoSuchClient}, or L{CIMDError} when
            the client's document is unusable).
        @return: the client's record.
        @raise OAuthError: C{invalid_client} (401), or C{invalid_request}
            when another authentication method is used as well.
        """
        header = request.getHeader("authorization") or ""
        if header[:6].lower() == "basic " or "client_secret" in form:
            audit("client.auth_failed", "denied", request=request, reason="two methods",
                  method=METHOD)
            raise OAuthError("invalid_request", "Use only one client authentication method")
        if not self.enabled:
            raise self._refuse(request, "private_key_jwt is off",
                               "private_key_jwt is not enabled on this server", form.get("client_id"))
        try:
            unverified = parseAssertion(
                form.get("client_assertion_type"), form.get("client_assertion"), self.policy
            )
        except InvalidAssertion as e:
            raise self._refuse(request, e.reason, e.description, form.get("client_id"))
        clientID = unverified.clientID
        bodyID = form.get("client_id")
        if bodyID is not None and bodyID != clientID:
            raise self._refuse(request, "client_id differs from the assertion's sub",
                               "client_id does not match the client assertion", bodyID)
        try:
            client = await getClient(clientID)
        except NoSuchClient:
            raise self._refuse(request, "unknown client", "Client authentication failed", clientID)
        except CIMDError as e:
            raise self._refuse(request, "client metadata document " + e.reason, e.message, clientID)
        registered = authMethod(client.metadata)
        if registered != METHOD:
            raise self._refuse(request, f"used {METHOD}, registered {registered}",
                               f"This client must authenticate with {registered}", clientID)
        now = self.clock.seconds()
        try:
            keys, source = await clientKeys(client, unverified.kid, self.cache)
            key = selectKey(keys, unverified.kid, unverified.alg)
            verified = verifyAssertion(
                unverified, key, clientID=client.clientID, audiences=audiences,
                now=self.clock.seconds(), policy=self.policy,
            )
        except InvalidAssertion as e:
            raise self._refuse(request, e.reason, e.description, clientID)
        # Kept past exp by the leeway: it is accepted until then.
        first = await self.store.useAssertionID(
            client.clientID, verified.jti, verified.expiresAt + self.policy.leeway, now
        )
        if not first:
            audit("client.assertion_replay", "denied", request=request, clientID=clientID,
                  jti=verified.jti[:64])
            raise self._refuse(request, "replayed assertion (jti used before)",
                               "client_assertion has been used already", clientID)
        self.log.debug("Client {clientID} authenticated by private_key_jwt ({alg}, keys from {source})",
                       clientID=clientID, alg=verified.alg, source=source)
        return client


def buildAssertionAuthenticator(
    config: Any, store: Any, clock: IReactorTime, fetchJSON: Optional[FetchJSON] = None
) -> AssertionAuthenticator:
    """
    The authenticator for C{config} (C{PRIVATE_KEY_JWT},
    C{CLIENT_ASSERTION_MAX_LIFETIME}, C{CLIENT_JWKS_CACHE_SECONDS}).

    @param fetchJSON: fetches a client's C{jwks_uri}; without it, clients
        registered with a C{jwks_uri} cannot authenticate.
    """
    cache = None
    if fetchJSON is not None:
        cache = JWKSCache(
            fetchJSON=fetchJSON, clock=clock, lifetime=float(config.clientJWKSCacheSeconds),
        )
    return AssertionAuthenticator(
        store=store,
        clock=clock,
        issuer=config.issuer,
        enabled=config.privateKeyJWT,
        policy=AssertionPolicy(maxLifetime=float(config.clientAssertionMaxLifetime)),
        cache=cache,
    )


def advertiseAssertions(metadata: Dict[str, Any], authenticator: AssertionAuthenticator) -> None:
    """
    Add C{private_key_jwt} and its signing algorithms to authorization
    server metadata (RFC 8414) for the token, revocation and introspection
    endpoints, when it is enabled.
    """
    if not authenticator.enabled:
        return
    for prefix in ENDPOINT_PREFIXES:
        methods: List[str] = list(metadata.get(prefix + "_auth_methods_supported") or [])
        if METHOD not in methods:
            methods.append(METHOD)
        metadata[prefix + "_auth_methods_supported"] = methods
        metadata[prefix + "_auth_signing_alg_values_supported"] = list(authenticator.algorithms)


def assertionAudiences(config: Any, request: IRequest) -> List[str]:
    """
    The C{aud} values accepted at the endpoint C{request} calls: our
    issuer, the endpoint's advertised URL (C{/oauth/...}) and the URL
    called (the un-prefixed alias, when that was called).
    """
    raw = request.path or b"/"
    path = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
    advertised = path if path.startswith("/oauth/") else "/oauth" + path
    return list(dict.fromkeys([config.issuer, config.serverURL + advertised, config.serverURL + path]))
