# -*- test-case-name: mcpsvc.oauth.test -*-
"""
mcpsvc's OAuth 2.1 authorization server and the bearer protection of
C{/mcp}.

Importing this package imports neither Klein nor the reactor; L{buildOAuth}
loads them when called.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Optional, Tuple

if TYPE_CHECKING:  # pragma: no cover
    from twisted.internet.interfaces import IReactorTime

    from mcpsvc.config import Config
    from mcpsvc.oauth.app import IApprover, OAuthApp
    from mcpsvc.oauth.bearer import BearerAuthenticator
    from mcpsvc.oauth.tokens import AccessTokens

__all__ = ["buildOAuth", "buildAccessTokens", "approverFor"]


def buildAccessTokens(config: "Config") -> "AccessTokens":
    """
    The access token issuer/verifier for C{config}: loads the signing keys
    (C{JWT_PRIVATE_KEY_FILE}, C{JWT_KEYS_DIR}, else HS256 C{JWT_SECRET}).

    @raise mcpsvc.oauth.tokens.KeyLoadError: a key file is unusable.
    """
    from mcpsvc.oauth.tokens import AccessTokens, loadKeyRing

    keys = loadKeyRing(config.jwtSecret, config.jwtPrivateKeyFile, config.jwtKeysDir,
                       publishDelay=config.jwtKeyPublishDelay)
    return AccessTokens(
        keys=keys,
        issuer=config.issuer,
        audience=config.resourceURL,
        lifetime=config.accessTokenLifetime,
    )


def approverFor(config: "Config") -> "IApprover":
    """
    The approver for C{config.authorizeMode}: C{auto} approves directly;
    C{consent} and C{login} fail closed (C{temporarily_unavailable}) until
    the authorization page is built.
    """
    from mcpsvc.oauth.app import AutoApprover, UnavailableApprover

    if config.authorizeMode == "auto":
        return AutoApprover(secret=config.jwtSecret.encode("utf-8"))
    return UnavailableApprover(mode=config.authorizeMode)


def buildOAuth(
    config: "Config",
    *,
    store: Any,
    clock: "IReactorTime",
    runInThread: Optional[Callable[..., Any]] = None,
    approver: Optional["IApprover"] = None,
    fetchJSON: Optional[Callable[[str], Any]] = None,
    reactor: Any = None,
    fetcher: Any = None,
) -> Tuple["OAuthApp", "BearerAuthenticator"]:
    """
    Build the authorization server app and the C{/mcp} authenticator, which
    share one L{AccessTokens}. Reads the key files; performs no other I/O.

    @param runInThread: reserved for slow work (password hashing in login
        mode); unused for now.
    @param approver: decides authorization requests (default:
        L{approverFor}).
    @param fetchJSON: fetches a C{private_key_jwt} client's C{jwks_uri}
        (a Deferred of the parsed JSON); by default through C{fetcher}.
    @param reactor: connects the metadata document fetcher (C{CIMD=on});
        default: the global reactor.
    @param fetcher: a L{mcpsvc.oauth.fetch.SafeFetcher} to use instead of
        one built from C{config} (tests).
    @raise mcpsvc.oauth.tokens.KeyLoadError: a key file is unusable.
    """
    from mcpsvc.oauth.app import OAuthApp
    from mcpsvc.oauth.bearer import BearerAuthenticator
    from mcpsvc.oauth.clientauth import buildAssertionAuthenticator

    tokens = buildAccessTokens(config)
    if fetcher is None:
        # No I/O until a fetch: connections and lookups happen then.
        from mcpsvc.oauth.fetch import SafeFetcher

        if reactor is None:
            from twisted.internet import reactor as globalReactor

            reactor = globalReactor
        fetcher = SafeFetcher.forConfig(config, reactor=reactor, clock=clock,
                                        runInThread=runInThread)
    if fetchJSON is None:
        from mcpsvc.oauth.clientkeys import jwksFetch

        fetchJSON = jwksFetch(fetcher)
    clientDocuments = None
    if config.cimd:
        from mcpsvc.oauth.cimd import CIMDSettings, ClientDocuments

        clientDocuments = ClientDocuments(
            store=store, fetcher=fetcher, clock=clock, settings=CIMDSettings.fromConfig(config)
        )
    app = OAuthApp(
        config=config,
        store=store,
        clock=clock,
        tokens=tokens,
        approver=approver if approver is not None else approverFor(config),
        assertions=buildAssertionAuthenticator(config, store, clock, fetchJSON),
        clientDocuments=clientDocuments,
        fetcher=fetcher,
    )
    bearer = BearerAuthenticator(config=config, store=store, clock=clock, verifier=tokens)
    return app, bearer
