# -*- test-case-name: mcpsvc.oauth.test.test_app -*-
"""
The OAuth 2.1 authorization server: metadata (RFC 8414, RFC 9728), dynamic
client registration (RFC 7591), the authorization and token endpoints,
revocation (RFC 7009) and introspection (RFC 7662).

L{OAuthApp} is a thin adapter: it reads the request, asks the sans-IO
modules (L{pkce}, L{redirects}, L{clients}, L{scopes}, L{tokens},
L{refresh}) for decisions and awaits the store. Routes are absolute paths;
the root dispatcher hands it C{/oauth/...}, C{/.well-known/...} and the
un-prefixed C{/authorize}, C{/token}, C{/register} and C{/revoke}.

The decision to approve an authorization request is delegated to an
L{IApprover} (the seam where the consent and login pages plug in);
L{AutoApprover} approves directly (C{AUTHORIZE_MODE=auto}).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from typing import Any, ClassVar, Dict, List, Mapping, Optional, Protocol, Set, Tuple, Union
from urllib.parse import unquote_plus, urlencode, urlsplit

from attrs import Factory, field, frozen
from klein import Klein
from twisted.internet.defer import CancelledError
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource

from mcpsvc.audit import audit
from mcpsvc.config import Config, RateLimit
from mcpsvc.http.errors import HTTPError, OAuthError, TooManyRequests, installErrorHandlers
from mcpsvc.http.jsonio import readForm, readJSON, truncateForLog, writeJSON
from mcpsvc.oauth import pkce
from mcpsvc.oauth.bearer import revocationIDs
from mcpsvc.oauth.clientauth import (
    AssertionAuthenticator,
    advertiseAssertions,
    assertionAudiences,
    buildAssertionAuthenticator,
    carriesAssertion,
)
from mcpsvc.oauth.cimd import CIMDError, isDocumentClient
from mcpsvc.oauth.clients import (
    OPEN_REGISTRATION,
    ClientMetadataError,
    authMethod,
    clientScopes,
    grantTypes,
    isConfidential,
    isSelfAsserted,
    newClientID,
    normalizeMetadata,
    redirectURIs,
    registrationResponse,
    usesSecret,
)
from mcpsvc.oauth.redirects import findRegistered
from mcpsvc.oauth.refresh import (
    RefreshTokens,
    newFamilyID,
    newRefreshToken,
    sealSuccessor,
    splitRefreshToken,
    unsealSuccessor,
)
from mcpsvc.oauth.scopes import (
    DEFAULT_SCOPES,
    KNOWN_SCOPES,
    RESOURCE_SCOPES,
    InvalidScope,
    grantScope,
)
from mcpsvc.oauth.tokens import AccessTokens, InvalidToken, IssuedToken
from mcpsvc.storage._logic import hashEquals
from mcpsvc.storage.hashing import hashSecret, newSecret, secretMatches
from mcpsvc.storage.interfaces import (
    AlreadyUsed,
    ClientRecord,
    CodeMismatch,
    CodeRecord,
    Conflict,
    NoSuchClient,
    NoSuchCode,
    NoSuchFamily,
    RefreshFamily,
    RotationOutcome,
    StoreUnavailable,
)

__all__ = [
    "OAuthApp",
    "AuthorizationRequest",
    "Approval",
    "Denial",
    "IApprover",
    "AutoApprover",
    "UnavailableApprover",
    "canonicalURL",
    "requestAddress",
    "mayIntrospectAny",
]

#: Headers of every response that carries a token or credential.
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}

#: Registration request fields worth logging (never secrets or keys).
_LOGGED_REGISTRATION_FIELDS = (
    "client_name",
    "redirect_uris",
    "grant_types",
    "response_types",
    "token_endpoint_auth_method",
    "jwks_uri",
    "scope",
    "software_id",
    "software_version",
    "application_type",
)


def requestAddress(request: IRequest) -> str:
    """
    The client address used for rate limits and logs. The one place to
    change how it is found: it honours C{TRUSTED_PROXIES} through the site
    when the request came through L{mcpsvc.http.site}.
    """
    from mcpsvc.http.site import clientAddress

    site = getattr(request, "_mcpsvcSite", None)
    return clientAddress(request, getattr(site, "trustedProxies", ()) if site is not None else ())


def canonicalURL(url: str) -> str:
    """
    A URL in the form we compare resource indicators in: lower-case scheme
    and host, default port dropped, no trailing slash, no fragment.
    """
    parts = urlsplit(url.strip())
    scheme = parts.scheme.lower()
    netloc = parts.netloc.lower()
    for default in ((":443", "https"), (":80", "http")):
        if netloc.endswith(default[0]) and scheme == default[1]:
            netloc = netloc[: -len(default[0])]
    path = parts.path.rstrip("/")
    query = "?" + parts.query if parts.query else ""
    return f"{scheme}://{netloc}{path}{query}"


# --------------------------------------------------------------------------
# The approval seam


@frozen(kw_only=True)
class AuthorizationRequest:
    """
    A validated authorization request, waiting for a decision.

    @ivar client: the registered client.
    @ivar redirectURI: where the answer goes (already matched).
    @ivar state: the client's C{state}, echoed back.
    @ivar scope: the scope that would be granted.
    @ivar resource: the canonical resource the token will be for.
    @ivar params: every request parameter, for a page that re-posts them.
    """

    client: ClientRecord
    redirectURI: str
    state: Optional[str]
    scope: str
    resource: str
    codeChallenge: str
    codeChallengeMethod: str
    params: Mapping[str, str] = field(factory=dict)


@frozen(kw_only=True)
class Approval:
    """
    The request is approved for C{subject}, with C{scope} (C{None}: as
    requested; a consent page may narrow it).
    """

    subject: str
    scope: Optional[str] = None


@frozen(kw_only=True)
class Denial:
    """
    The request is refused; the client is told with C{error}.
    """

    error: str = "access_denied"
    description: str = "The request was denied"


class IApprover(Protocol):
    """
    Decides authorization requests. A consent or login page implements
    this: on a GET it may write a page (return its bytes), and on the
    page's POST return an L{Approval} or a L{Denial}.
    """

    async def approve(
        self, request: IRequest, authz: AuthorizationRequest
    ) -> Union[Approval, Denial, bytes]:
        ...


@frozen(kw_only=True)
class AutoApprover:
    """
    C{AUTHORIZE_MODE=auto}: approve every valid request at once. The subject
    is a stable pseudonym of the client (an HMAC of its id under
    C{JWT_SECRET}), so tokens of one client share a subject and different
    clients never do.
    """

    secret: bytes = field(repr=False)

    def subjectFor(self, clientID: str) -> str:
        digest = hmac.new(self.secret, b"auto-subject:" + clientID.encode("utf-8"), hashlib.sha256)
        return "auto-" + digest.hexdigest()[:32]

    async def approve(
        self, request: IRequest, authz: AuthorizationRequest
    ) -> Union[Approval, Denial, bytes]:
        return Approval(subject=self.subjectFor(authz.client.clientID))


@frozen(kw_only=True)
class UnavailableApprover:
    """
    Stands in for an authorization page that is not built yet: fails
    closed, telling the client C{temporarily_unavailable}.
    """

    mode: str

    async def approve(
        self, request: IRequest, authz: AuthorizationRequest
    ) -> Union[Approval, Denial, bytes]:
        return Denial(
            error="temporarily_unavailable",
            description=f"AUTHORIZE_MODE={self.mode} is not available on this server",
        )


# --------------------------------------------------------------------------
# Errors shown on our own page (never redirected)


class AuthorizePageError(OAuthError):
    """
    An authorization request error that must not be redirected (bad client
    or redirect URI): an HTML page for browsers, OAuth JSON for clients
    that ask for JSON.

    @ivar page: which explanation the page gives (a key of L{_PAGES}).
    """

    def __init__(self, error: str, description: str, page: str) -> None:
        super().__init__(error, description)
        self.page = page


#: The error pages of the authorization endpoint: heading, what went wrong,
#: what the person can do, what to tell the administrator. C{{client}} is
#: the client id, C{{host}} the host of the requested redirect URI.
_PAGES: Dict[str, Tuple[str, str, str, str]] = {
    "bad_link": (
        "This sign-in link is not valid",
        "The link that brought you here is damaged or incomplete: {reason}.",
        "Go back to the application and start the connection again.",
        "If it happens again, the application builds its authorization links wrongly: tell "
        "the administrator of the application, with these details.",
    ),
    "unknown_client": (
        "This application is not registered here",
        "The application that sent you here is not registered with this server (client ID "
        "{client}), or its registration was removed.",
        "You cannot connect it now. Tell the person who set up the application.",
        "The client ID is unknown to this server: register the application again (dynamic "
        "registration, or mcpsvc clients add), then reconnect it. Details:",
    ),
    "bad_redirect": (
        "This application's return address is not registered",
        "The application asked to send you back to {host}, which is not one of the addresses "
        "registered for it. For your safety you were not sent there.",
        "Do not try again from this link. Tell the person who set up the application.",
        "The redirect URI in the request does not match one registered for client {client}: "
        "fix the application's redirect URI or its registration. Details:",
    ),
    "no_redirect": (
        "This sign-in link is incomplete",
        "The link does not say where to send you back, and the application has several "
        "registered return addresses.",
        "Go back to the application and start the connection again.",
        "The request has no redirect_uri and client {client} registered several: the "
        "application must send one. Details:",
    ),
    "rate_limited": (
        "Too many attempts",
        "This server received too many authorization requests from here in a short time.",
        "Wait {retry} seconds, then go back to the application and start again.",
        "If this happens in normal use, the authorization rate limit may be too low. Details:",
    ),
    "unavailable": (
        "The service is temporarily unavailable",
        "This server cannot reach its storage right now, so it cannot authorize anything.",
        "Wait a minute, then go back to the application and start again.",
        "The store (SQLite or Redis) is unreachable: see /ready and the server log. Details:",
    ),
    "bad_request": (
        "This request could not be handled",
        "{reason}.",
        "Go back to the application and start the connection again.",
        "If it happens again, tell the administrator of this server, with these details:",
    ),
    "bad_document": (
        "This application's published information cannot be used",
        "The application identifies itself by the address {client}, but its published "
        "information there cannot be used: {reason}.",
        "You cannot connect it now. Try again later; if it keeps failing, tell the people "
        "who make the application.",
        "The client_id is a Client ID Metadata Document URL; fetching or validating the "
        "document failed (see the server log by request ID). Details:",
    ),
    "internal": (
        "Something went wrong on this server",
        "The server failed while handling your authorization request. Nothing was approved.",
        "Go back to the application and try again later.",
        "An unexpected error was logged with its traceback: find it by the request ID. Details:",
    ),
}


def _acceptQuality(accept: str, wanted: str) -> float:
    """
    The quality C{accept} gives the media type C{wanted} when it names it
    (exactly, or as C{type/*}); 0 when it does not (C{*/*} alone does not
    count: C{curl} sends it).
    """
    kind = wanted.split("/", 1)[0] + "/*"
    best = 0.0
    for item in accept.split(","):
        mediaType, *params = [p.strip() for p in item.split(";")]
        if mediaType.lower() not in (wanted, kind):
            continue
        quality = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        if quality == quality:  # not NaN
            best = max(best, min(quality, 1.0))
    return best


def _wantsHTML(request: IRequest) -> bool:
    """
    Whether the authorization endpoint answers C{request} with an HTML page
    rather than OAuth JSON: browsers name C{text/html} in C{Accept} (on
    every navigation and form post); clients that send no C{Accept},
    C{*/*}, or prefer C{application/json}, get JSON.
    """
    accept = (request.getHeader("accept") or "").lower()
    html_ = max(_acceptQuality(accept, "text/html"), _acceptQuality(accept, "application/xhtml+xml"))
    return html_ > 0 and html_ >= _acceptQuality(accept, "application/json")


def mayIntrospectAny(client: ClientRecord) -> bool:
    """
    Whether C{client} may introspect access tokens issued to other clients
    (a resource server or an operator's tool): a confidential client
    (secret or C{private_key_jwt}) that an operator or the initial access
    token admitted. A public client proves only its id, and a
    self-asserted client (L{isSelfAsserted}: a metadata document, anyone
    can publish one with keys of their own, or open registration) proves
    only that someone made it: they may introspect their own tokens only.
    """
    return isConfidential(client.metadata) and not isSelfAsserted(client.metadata)


def _invalidClient(description: str, basic: bool) -> OAuthError:
    headers = {"WWW-Authenticate": 'Basic realm="mcpsvc"'} if basic else None
    return OAuthError("invalid_client", description, code=401, headers=headers)


# --------------------------------------------------------------------------
# The app


@frozen(kw_only=True)
class OAuthApp:
    """
    The authorization server's HTTP endpoints.

    @ivar config: the configuration.
    @ivar store: the L{mcpsvc.storage.interfaces.IStore}.
    @ivar clock: time source.
    @ivar tokens: issues and verifies access tokens.
    @ivar approver: decides authorization requests.
    """

    app: ClassVar[Klein] = Klein()
    log: ClassVar[Logger] = Logger()

    #: Not in the repr: L{Config}'s carries the secrets, and this object is
    #: the C{log_source} of our log events.
    config: Config = field(repr=False)
    store: Any
    clock: IReactorTime
    tokens: AccessTokens
    approver: IApprover
    #: Resolves Client ID Metadata Document client ids (C{CIMD=on});
    #: C{None} when they are off.
    clientDocuments: Any = None
    #: The L{mcpsvc.oauth.fetch.SafeFetcher} for documents named by clients
    #: (metadata documents, key sets); built whether or not CIMD is on.
    fetcher: Any = None
    #: Mints refresh tokens and recognises the ones we minted.
    refreshTokens: RefreshTokens = field(
        init=False, repr=False,
        default=Factory(lambda self: RefreshTokens(self.config.jwtSecret), takes_self=True),
    )
    #: Authenticates clients by C{private_key_jwt} (L{mcpsvc.oauth.clientauth}).
    assertions: AssertionAuthenticator = field(
        repr=False,
        default=Factory(
            lambda self: buildAssertionAuthenticator(self.config, self.store, self.clock),
            takes_self=True,
        ),
    )

    def resource(self) -> IResource:
        return self.app.resource()  # type: ignore[no-any-return]

    installErrorHandlers(app)

    # -- helpers

    def _now(self) -> float:
        return self.clock.seconds()

    def _url(self, path: str) -> str:
        return self.config.serverURL + path

    async def _rateLimit(
        self, request: IRequest, name: str, limit: RateLimit, clientID: Optional[str] = None
    ) -> None:
        if clientID is None:
            key = f"{name}:addr:{requestAddress(request)}"
        else:
            key = f"{name}:client:{clientID}"
        decision = await self.store.takeToken(
            key, limit.count, limit.refillPerSecond, self._now()
        )
        if not decision.allowed:
            audit("rate_limit.hit", "denied", request=request, clientID=clientID, endpoint=name)
            self.log.warn(
                "Rate limit hit on {endpoint} for {who}",
                endpoint=name,
                who="client " + clientID if clientID else "address " + requestAddress(request),
            )
            raise TooManyRequests(decision.retryAfter)

    def _resourceFor(self, value: Optional[str]) -> Optional[str]:
        """
        The canonical resource for a C{resource} parameter (RFC 8707):
        absent means ours; our MCP URL and our origin are ours (compared
        canonically); anything else is C{None} (C{invalid_target}).
        """
        if value is None:
            return self.config.resourceURL
        wanted = canonicalURL(value)
        if wanted in (canonicalURL(self.config.resourceURL), canonicalURL(self.config.serverURL)):
            return self.config.resourceURL
        return None

    async def _getClient(self, clientID: str, request: IRequest) -> ClientRecord:
        """
        The client C{clientID}: resolved from its metadata document when it
        is a document URL (L{mcpsvc.oauth.cimd}), else registered.

        @raise NoSuchClient: not registered.
        @raise CIMDError: the document is unusable (logged and audited).
        """
        if self.clientDocuments is not None and self.clientDocuments.handles(clientID):
            return await self.clientDocuments.resolve(clientID, request)  # type: ignore[no-any-return]
        client: ClientRecord = await self.store.getClient(clientID)
        if self.clientDocuments is None and isDocumentClient(client):
            # Resolved while CIMD was on: with it off, never fetched again,
            # so never used.
            raise NoSuchClient(clientID)
        return client

    def _redirectPatterns(self) -> Tuple[str, ...]:
        return self.config.redirectPatterns

    @property
    def _registrationEnabled(self) -> bool:
        return bool(self.config.dcrAuthToken) or self.config.dcrOpen

    # -- metadata

    def authorizationServerMetadata(self) -> Dict[str, Any]:
        """
        The RFC 8414 document.
        """
        methods = ["client_secret_basic", "client_secret_post", "none"]
        md: Dict[str, Any] = {
            "issuer": self.config.issuer,
            "authorization_endpoint": self._url("/oauth/authorize"),
            "token_endpoint": self._url("/oauth/token"),
        }
        if self._registrationEnabled:
            md["registration_endpoint"] = self._url("/oauth/register")
        md.update(
            {
                "revocation_endpoint": self._url("/oauth/revoke"),
                "introspection_endpoint": self._url("/oauth/introspect"),
                "response_types_supported": ["code"],
                "response_modes_supported": ["query"],
                "grant_types_supported": [
                    "authorization_code",
                    "refresh_token",
                    "client_credentials",
                ],
                "code_challenge_methods_supported": [pkce.S256],
                "token_endpoint_auth_methods_supported": methods,
                "revocation_endpoint_auth_methods_supported": methods,
                "introspection_endpoint_auth_methods_supported": methods,
                "scopes_supported": list(KNOWN_SCOPES),
                "authorization_response_iss_parameter_supported": True,
            }
        )
        if self.config.cimd and self.clientDocuments is not None:
            md["client_id_metadata_document_supported"] = True
        if self.tokens.keys.asymmetric:
            md["jwks_uri"] = self._url("/.well-known/jwks.json")
        advertiseAssertions(md, self.assertions)
        return md

    def protectedResourceMetadata(self) -> Dict[str, Any]:
        """
        The RFC 9728 document for C{/mcp}.
        """
        return {
            "resource": self.config.resourceURL,
            "authorization_servers": [self.config.issuer],
            "bearer_methods_supported": ["header"],
            "scopes_supported": list(RESOURCE_SCOPES),
            "resource_name": "mcpsvc",
        }

    @app.route("/.well-known/oauth-authorization-server", methods=["GET", "HEAD"])
    @app.route("/.well-known/oauth-authorization-server/mcp", methods=["GET", "HEAD"])
    @app.route("/.well-known/openid-configuration", methods=["GET", "HEAD"])
    @app.route("/.well-known/openid-configuration/mcp", methods=["GET", "HEAD"])
    def asMetadata(self, request: IRequest) -> bytes:
        return writeJSON(
            request, self.authorizationServerMetadata(), headers={"Cache-Control": "max-age=300"}
        )

    @app.route("/.well-known/oauth-authorization-server/<path:issuerPath>", methods=["GET", "HEAD"])
    @app.route("/.well-known/openid-configuration/<path:issuerPath>", methods=["GET", "HEAD"])
    def asMetadataForIssuerPath(self, request: IRequest, issuerPath: str) -> bytes:
        """
        An issuer with a path (C{JWT_ISSUER}) has its metadata at the
        well-known URI followed by that path (RFC 8414 section 3.1).
        """
        if "/" + issuerPath != urlsplit(self.config.issuer).path:
            from mcpsvc.http.errors import NotFoundError

            raise NotFoundError("No authorization server metadata here")
        return self.asMetadata(request)

    @app.route("/.well-known/oauth-protected-resource", methods=["GET", "HEAD"])
    @app.route("/.well-known/oauth-protected-resource/mcp", methods=["GET", "HEAD"])
    def prMetadata(self, request: IRequest) -> bytes:
        return writeJSON(
            request, self.protectedResourceMetadata(), headers={"Cache-Control": "max-age=300"}
        )

    @app.route("/.well-known/jwks.json", methods=["GET", "HEAD"])
    def jwks(self, request: IRequest) -> bytes:
        document = self.tokens.jwks(self._now())
        if document is None:
            from mcpsvc.http.errors import NotFoundError

            raise NotFoundError("No asymmetric signing keys are configured")
        return writeJSON(request, document, headers={"Cache-Control": "max-age=300"})

    # -- client authentication

    async def _authenticateClient(
        self, request: IRequest, form: Mapping[str, str]
    ) -> ClientRecord:
        """
        Authenticate the client of a token, revocation or introspection
        request with the method it registered. A request carrying a client
        assertion (C{private_key_jwt}) is decided by C{self.assertions}
        (L{mcpsvc.oauth.clientauth}) from the client record alone; the
        record of a metadata document client is resolved (fetched again
        once stale) by both paths, so a changed document (new keys, a
        method) applies to assertions as it does to the other methods.

        @raise OAuthError: C{invalid_client} (401, with C{WWW-Authenticate:
            Basic} when Basic was tried) or C{invalid_request}.
        """
        if carriesAssertion(form):
            return await self.assertions.authenticate(
                request, form, audiences=assertionAudiences(self.config, request),
                getClient=lambda clientID: self._getClient(clientID, request),
            )
        header = request.getHeader("authorization") or ""
        basic: Optional[Tuple[str, str]] = None
        triedBasic = header[:6].lower() == "basic "
        bodyID = form.get("client_id")
        bodySecret = form.get("client_secret")

        def malformed(reason: str, description: str, method: str,
                      clientID: Optional[str] = None) -> OAuthError:
            audit("client.auth_failed", "denied", request=request,
                  clientID=clientID[:100] if clientID else None, reason=reason, method=method)
            return _invalidClient(description, triedBasic)

        if triedBasic:
            try:
                decoded = base64.b64decode(header[6:].strip(), validate=True).decode("utf-8")
            except (binascii.Error, ValueError):
                raise malformed("malformed Basic credentials", "Malformed Basic credentials",
                                "client_secret_basic")
            user, sep, password = decoded.partition(":")
            if not sep or not user:
                raise malformed("malformed Basic credentials", "Malformed Basic credentials",
                                "client_secret_basic")
            basic = (unquote_plus(user), unquote_plus(password))
        secret: Optional[str]
        if basic is not None:
            if bodySecret is not None:
                raise OAuthError(
                    "invalid_request", "Use only one client authentication method"
                )
            if bodyID is not None and bodyID != basic[0]:
                raise malformed("client_id does not match the Basic credentials",
                                "client_id does not match the Basic credentials",
                                "client_secret_basic", basic[0])
            used = "client_secret_basic"
            clientID, secret = basic
        elif bodySecret is not None:
            if not bodyID:
                raise malformed("no client_id", "client_id is required", "client_secret_post")
            used = "client_secret_post"
            clientID, secret = bodyID, bodySecret
        elif bodyID:
            used = "none"
            clientID, secret = bodyID, None
        else:
            raise malformed("no credentials", "Client authentication is required", "none")

        def failed(reason: str, description: str) -> OAuthError:
            audit("client.auth_failed", "denied", request=request, clientID=clientID,
                  reason=reason, method=used)
            self.log.warn(
                "Client authentication failed for {clientID} ({method}): {reason}",
                clientID=truncateForLog(clientID, 100), method=used, reason=reason,
            )
            return _invalidClient(description, triedBasic)

        try:
            client: ClientRecord = await self._getClient(clientID, request)
        except NoSuchClient:
            raise failed("unknown client", "Client authentication failed")
        except CIMDError as e:
            raise failed("client metadata document " + e.reason, e.message)
        registered = authMethod(client.metadata)
        if used != registered:
            raise failed(
                f"used {used}, registered {registered}",
                f"This client must authenticate with {registered}",
            )
        if used != "none":
            assert secret is not None
            if client.secretHash is None or not secretMatches(secret, client.secretHash):
                raise failed("wrong secret", "Client authentication failed")
            if client.secretExpiresAt and self._now() >= client.secretExpiresAt:
                raise failed("secret expired", "Client authentication failed")
        return client

    # -- registration

    def _registrationAuthorized(self, request: IRequest, body: Mapping[str, Any]) -> str:
        """
        Check the initial access token. Returns how it was presented.

        @raise OAuthError: 401 C{invalid_token} when missing or wrong, 403
            C{access_denied} when registration is closed.
        """
        expected = self.config.dcrAuthToken
        if not expected:
            if self.config.dcrOpen:
                return "open"
            raise OAuthError(
                "access_denied", "Dynamic client registration is disabled", code=403
            )
        candidates: List[Tuple[str, str]] = []
        header = (request.getHeader("authorization") or "").strip()
        if header:
            if header[:7].lower() == "bearer ":
                candidates.append(("bearer", header[7:].strip()))
            else:
                candidates.append(("bare", header))
        tokenValue = body.get("token_value")
        if isinstance(tokenValue, str) and tokenValue:
            candidates.append(("token_value", tokenValue))
        if not candidates:
            raise OAuthError(
                "invalid_token",
                "An initial access token is required to register",
                code=401,
                headers={"WWW-Authenticate": 'Bearer realm="mcpsvc"'},
            )
        matched = None
        for how, value in candidates:
            if hmac.compare_digest(value.encode("utf-8"), expected.encode("utf-8")):
                matched = matched or how
        if matched is None:
            raise OAuthError(
                "invalid_token",
                "The initial access token is not valid",
                code=401,
                headers={"WWW-Authenticate": 'Bearer realm="mcpsvc", error="invalid_token"'},
            )
        return matched

    @app.route("/oauth/register", methods=["POST"])
    @app.route("/register", methods=["POST"])
    async def register(self, request: IRequest) -> bytes:
        await self._rateLimit(request, "register", self.config.rateLimitRegister)
        body = readJSON(request, error="invalid_client_metadata")
        if not isinstance(body, dict):
            raise OAuthError("invalid_client_metadata", "Client metadata must be a JSON object")
        # Bounded: a refused 1 MB registration must not become a 1 MB log line.
        summary = truncateForLog({k: body[k] for k in _LOGGED_REGISTRATION_FIELDS if k in body})
        fieldNames = truncateForLog(sorted(body)[:20], limit=40)
        try:
            how = self._registrationAuthorized(request, body)
        except OAuthError as e:
            self.log.warn(
                "Registration refused ({error}) from {address}: {summary}",
                error=e.error, address=requestAddress(request), summary=summary,
                fields=fieldNames,
            )
            audit("client.register", "denied", request=request, reason=e.error)
            raise
        self.log.info(
            "Registration request from {address} (initial access: {how}): {summary}",
            address=requestAddress(request), how=how, summary=summary, fields=fieldNames,
        )
        try:
            metadata = normalizeMetadata(
                body, patterns=self._redirectPatterns(),
                privateKeyJWT=self.assertions.enabled, production=self.config.production,
            )
            if how == "open":
                # Anyone may register: a grant no person approves is not
                # for such clients (see clients.isSelfAsserted).
                if "client_credentials" in metadata["grant_types"]:
                    raise ClientMetadataError(
                        "invalid_client_metadata",
                        "client_credentials needs registration with an initial access token "
                        "(or mcpsvc clients add)")
                metadata["registration"] = OPEN_REGISTRATION
        except ClientMetadataError as e:
            self.log.warn("Registration rejected: {error}: {description}",
                          error=e.error, description=e.description)
            audit("client.register", "failure", request=request, reason=e.error)
            raise OAuthError(e.error, e.description)
        now = self._now()
        clientID = newClientID()
        secret = newSecret(32) if usesSecret(metadata) else None
        record = ClientRecord(
            clientID=clientID,
            secretHash=hashSecret(secret) if secret is not None else None,
            metadata=metadata,
            createdAt=now,
        )
        await self.store.createClient(record)
        audit("client.register", "success", request=request, clientID=clientID,
              method=metadata["token_endpoint_auth_method"])
        self.log.info(
            "Registered client {clientID} ({clientName}) method={method} redirects={redirectURIs}",
            clientID=clientID, clientName=metadata.get("client_name"),
            method=metadata["token_endpoint_auth_method"],
            redirectURIs=metadata["redirect_uris"],
        )
        return writeJSON(
            request, registrationResponse(clientID, metadata, now, secret), code=201,
            headers=NO_STORE,
        )

    # -- authorization

    def _authorizeParams(self, request: IRequest) -> Tuple[Dict[str, str], Set[str]]:
        if request.method == b"POST":
            return readForm(request), set()
        params: Dict[str, str] = {}
        repeated: Set[str] = set()
        for rawKey, values in (request.args or {}).items():
            try:
                key = rawKey.decode("utf-8")
                decoded = [v.decode("utf-8") for v in values]
            except UnicodeDecodeError:
                raise AuthorizePageError("invalid_request", "Parameters must be UTF-8", "bad_link")
            if len(decoded) > 1:
                repeated.add(key)
            params[key] = decoded[0]
        return params, repeated

    def _redirect(self, request: IRequest, redirectURI: str, params: Mapping[str, Optional[str]]) -> bytes:
        query = urlencode([(k, v) for k, v in params.items() if v is not None])
        separator = "&" if "?" in redirectURI else "?"
        if redirectURI.endswith(("?", "&")):
            separator = ""
        request.setResponseCode(302)
        request.setHeader("Location", redirectURI + separator + query)
        request.setHeader("Cache-Control", "no-store")
        return b""

    @app.route("/oauth/authorize", methods=["GET", "POST"])
    @app.route("/authorize", methods=["GET", "POST"])
    async def authorize(self, request: IRequest) -> bytes:
        """
        The authorization endpoint. Errors that are not sent back to the
        client's (verified) redirect URI are shown: to a browser as a page
        (L{_authorizeErrorPage}), to a client asking for JSON as OAuth JSON
        (the app's error handlers).
        """
        seen: Dict[str, str] = {}
        try:
            return await self._authorize(request, seen)
        except CancelledError:
            raise  # the client went away: nobody to show a page to
        except Exception:
            if not _wantsHTML(request):
                raise
            return await self._authorizeErrorPage(request, Failure(), seen)

    async def _authorizeErrorPage(
        self, request: IRequest, failure: Failure, params: Mapping[str, str]
    ) -> bytes:
        """
        The HTML page for an authorization error shown here: the same look
        and security headers as the consent page, the right status, what
        went wrong, and what to tell the administrator. Never a redirect.
        """
        from mcpsvc.authpage import page

        err = failure.value
        clientID = params.get("client_id")
        requestedRedirect = params.get("redirect_uri") or ""
        retry = ""
        status = 400
        headers: Dict[str, str] = {}
        if isinstance(err, AuthorizePageError):
            key, error, reason = err.page, err.error, err.description
        elif isinstance(err, TooManyRequests):
            key, error, reason, status = "rate_limited", err.error, err.description, 429
            retry = str(err.retryAfter)
            headers = dict(err.headers)
        elif isinstance(err, StoreUnavailable):
            self.log.error("Store unavailable for the authorization endpoint: {why}",
                           why=str(err), requestID=getattr(request, "requestID", None))
            key, error, reason, status = "unavailable", "temporarily_unavailable", "", 503
            headers = {"Retry-After": "5"}
        elif isinstance(err, HTTPError):
            key, error, reason, status = "bad_request", err.error, err.description, err.code
            headers = dict(err.headers)
        else:
            self.log.failure("Unhandled error for the authorization endpoint", failure,
                             requestID=getattr(request, "requestID", None))
            key, error, reason, status = "internal", "server_error", "", 500
        heading, message, advice, admin = _PAGES[key]
        values = {
            "client": clientID or "none",
            "host": urlsplit(requestedRedirect).netloc.rpartition("@")[2] or "an unknown address",
            "reason": (reason or error).rstrip("."),
            "retry": retry,
        }
        request.setResponseCode(status)
        for name, value in headers.items():
            request.setHeader(name, value)
        page.securityHeaders(request, None)
        request.setHeader("Content-Type", "text/html; charset=utf-8")
        tag = page.errorPage(
            self.config.authorizePageTitle,
            heading,
            message.format(**values),
            advice=advice.format(**values),
            admin=admin.format(**values),
            reference=page.reference(
                request, error, Client_ID=clientID,
                Redirect_URI=requestedRedirect if key == "bad_redirect" else None,
            ),
        )
        return await page.render(tag)

    async def _authorize(self, request: IRequest, seen: Dict[str, str]) -> bytes:
        await self._rateLimit(request, "authorize", self.config.rateLimitAuthorize)
        params, repeated = self._authorizeParams(request)
        # For the error page: which client and address the request named.
        seen.update(params)
        clientID = params.get("client_id")
        if not clientID or "client_id" in repeated:
            raise AuthorizePageError("invalid_request", "client_id is required (exactly once)", "bad_link")
        try:
            client: ClientRecord = await self._getClient(clientID, request)
        except NoSuchClient:
            self.log.warn("Authorization request for unknown client {clientID}",
                          clientID=truncateForLog(clientID, 100))
            raise AuthorizePageError("invalid_client", "Unknown client", "unknown_client")
        except CIMDError as e:
            raise AuthorizePageError("invalid_client", e.message, "bad_document")
        registered = redirectURIs(client.metadata)
        requested = params.get("redirect_uri")
        if "redirect_uri" in repeated:
            raise AuthorizePageError("invalid_request", "redirect_uri is repeated", "bad_link")
        redirectURI: Optional[str]
        if requested is None:
            if len(registered) != 1:
                raise AuthorizePageError("invalid_request", "redirect_uri is required", "no_redirect")
            redirectURI = registered[0]
        else:
            redirectURI = findRegistered(requested, registered)
            if redirectURI is None:
                self.log.warn(
                    "Authorization request for {clientID} with an unregistered redirect URI",
                    clientID=clientID,
                )
                audit("authorize.redirect_mismatch", "denied", request=request, clientID=clientID)
                raise AuthorizePageError(
                    "invalid_request", "redirect_uri does not match a registered redirect URI",
                    "bad_redirect",
                )
        state = params.get("state")
        iss = self.config.issuer

        def fail(error: str, description: str, action: str = "authorize.error") -> bytes:
            assert redirectURI is not None
            audit(action, "denied", request=request, clientID=clientID, error=error)
            return self._redirect(
                request,
                redirectURI,
                {"error": error, "error_description": description, "state": state, "iss": iss},
            )

        if repeated:
            return fail("invalid_request", "Repeated parameter: " + ", ".join(sorted(repeated)))
        if "authorization_code" not in grantTypes(client.metadata):
            return fail("unauthorized_client", "This client may not use the authorization code grant")
        responseType = params.get("response_type")
        if not responseType:
            return fail("invalid_request", "response_type is required")
        if responseType != "code":
            return fail("unsupported_response_type", "Only response_type=code is supported")
        problem = pkce.checkChallenge(
            params.get("code_challenge"), params.get("code_challenge_method")
        )
        if problem is not None:
            return fail("invalid_request", problem)
        try:
            scope = grantScope(params.get("scope"), clientScopes(client.metadata), DEFAULT_SCOPES)
        except InvalidScope as e:
            return fail("invalid_scope", str(e))
        resource = self._resourceFor(params.get("resource"))
        if resource is None:
            return fail("invalid_target", "Unknown resource")

        authz = AuthorizationRequest(
            client=client,
            redirectURI=redirectURI,
            state=state,
            scope=scope,
            resource=resource,
            codeChallenge=params["code_challenge"],
            codeChallengeMethod=params["code_challenge_method"],
            params=params,
        )
        decision = await self.approver.approve(request, authz)
        if isinstance(decision, bytes):
            return decision
        if isinstance(decision, Denial):
            return fail(decision.error, decision.description, "authorize.deny")
        grantedScope = scope
        if decision.scope is not None:
            try:
                grantedScope = grantScope(decision.scope, frozenset(scope.split()))
            except InvalidScope as e:
                return fail("invalid_scope", str(e))
        # Per client, only codes actually issued count: anyone can send
        # authorization requests naming a client (its id is in every
        # authorization URL), and counting those would let a bystander
        # lock every user of the client out of authorizing.
        await self._rateLimit(request, "authorize", self.config.rateLimitAuthorize, clientID)
        now = self._now()
        code = newSecret(32)
        record = CodeRecord(
            codeHash=hashSecret(code),
            clientID=client.clientID,
            redirectURI=redirectURI,
            codeChallenge=authz.codeChallenge,
            codeChallengeMethod=authz.codeChallengeMethod,
            scope=grantedScope,
            resource=resource,
            subject=decision.subject,
            familyID=newFamilyID(),
            expiresAt=now + self.config.authorizationCodeLifetime,
        )
        await self.store.storeCode(record)
        audit("authorize.approve", "success", request=request, clientID=client.clientID,
              subject=decision.subject, scope=grantedScope)
        return self._redirect(request, redirectURI, {"code": code, "state": state, "iss": iss})

    # -- token

    def _tokenResponse(
        self, request: IRequest, access: IssuedToken, refresh: Optional[str]
    ) -> bytes:
        body: Dict[str, Any] = {
            "access_token": access.token,
            "token_type": "Bearer",
            "expires_in": max(0, int(access.expiresAt - self._now())),
            "scope": access.scope,
        }
        if refresh is not None:
            body["refresh_token"] = refresh
        return writeJSON(request, body, headers=NO_STORE)

    @app.route("/oauth/token", methods=["POST"])
    @app.route("/token", methods=["POST"])
    async def token(self, request: IRequest) -> bytes:
        await self._rateLimit(request, "token", self.config.rateLimitToken)
        form = readForm(request, allowJSON=True)
        client = await self._authenticateClient(request, form)
        await self._rateLimit(request, "token", self.config.rateLimitToken, client.clientID)
        grant = form.get("grant_type")
        try:
            if not grant:
                raise OAuthError("invalid_request", "grant_type is required")
            handlers = {
                "authorization_code": self._authorizationCodeGrant,
                "refresh_token": self._refreshTokenGrant,
                "client_credentials": self._clientCredentialsGrant,
            }
            handler = handlers.get(grant)
            if handler is None:
                raise OAuthError("unsupported_grant_type", f"Grant type {grant[:50]!r} is not supported")
            if grant not in grantTypes(client.metadata):
                raise OAuthError("unauthorized_client", f"This client may not use the {grant} grant")
            return await handler(request, form, client)
        except OAuthError as e:
            # Every refused token request of an authenticated client is on
            # the trail (detections such as reuse add their own event).
            audit("token.refresh" if grant == "refresh_token" else "token.issue", "failure",
                  request=request, clientID=client.clientID,
                  grantType=(grant or "")[:50] or None, error=e.error)
            if not isConfidential(client.metadata):
                # A public client proves only its id, which anyone can read
                # from its access tokens: its refused requests are not its
                # own, so they do not use up its limit (a bystander could
                # otherwise make its refreshes fail, and the MCP SDK client
                # drops its grant when a refresh fails).
                limit = self.config.rateLimitToken
                await self.store.takeToken(
                    f"token:client:{client.clientID}", limit.count, limit.refillPerSecond,
                    self._now(), -1,
                )
            raise

    async def _authorizationCodeGrant(
        self, request: IRequest, form: Mapping[str, str], client: ClientRecord
    ) -> bytes:
        code = form.get("code")
        if not code:
            raise OAuthError("invalid_request", "code is required")
        verifier = form.get("code_verifier")
        if not verifier:
            raise OAuthError("invalid_request", "code_verifier is required (PKCE)")
        if not pkce.isValidVerifier(verifier):
            audit("token.pkce_failed", "denied", request=request, clientID=client.clientID)
            raise OAuthError("invalid_grant", "code_verifier does not match the code challenge")
        now = self._now()
        try:
            # The store checks client, redirect URI and verifier before it
            # consumes the code, atomically: a code presented by anyone but
            # the client it was issued to, with its verifier, is neither
            # used up nor treated as a replay.
            record: CodeRecord = await self.store.consumeCode(
                hashSecret(code), now, clientID=client.clientID,
                codeChallenge=pkce.challengeFor(verifier), redirectURI=form.get("redirect_uri"),
            )
        except NoSuchCode:
            raise OAuthError("invalid_grant", "The authorization code is invalid or has expired")
        except CodeMismatch as e:
            if e.field == "code_verifier":
                audit("token.pkce_failed", "denied", request=request, clientID=client.clientID)
                raise OAuthError("invalid_grant", "code_verifier does not match the code challenge")
            audit("token.code_refused", "denied", request=request, clientID=client.clientID,
                  mismatch=e.field)
            if e.field == "client_id":
                raise OAuthError("invalid_grant", "The authorization code was issued to another client")
            raise OAuthError("invalid_grant", "redirect_uri does not match the authorization request")
        except AlreadyUsed as e:
            outcome = await self._revokeGrant(e.record, now)
            audit("token.code_replay", "denied", request=request, clientID=client.clientID,
                  familyID=e.record.familyID, revoked=outcome == "revoked", grant=outcome)
            self.log.warn(
                "Authorization code replayed by client {clientID}: " + {
                    "revoked": "revoked family {familyID}",
                    "preempted": "family {familyID} blocked before its first use issued it",
                    "none": "family {familyID} was already revoked",
                }[outcome],
                clientID=client.clientID, familyID=e.record.familyID,
            )
            raise OAuthError("invalid_grant", "The authorization code has already been used")
        if isDocumentClient(client) and findRegistered(record.redirectURI,
                                                       redirectURIs(client.metadata)) is None:
            # The metadata document changed since the code was issued and
            # no longer lists where it went: its publisher withdrew it.
            audit("token.code_refused", "denied", request=request, clientID=client.clientID,
                  mismatch="redirect_uri withdrawn")
            raise OAuthError("invalid_grant", "The client's metadata document no longer lists "
                                              "the redirect_uri of this authorization")
        if "resource" in form:
            resource = self._resourceFor(form["resource"])
            if resource is None or resource != record.resource:
                raise OAuthError("invalid_target", "resource does not match the authorization request")

        access = self.tokens.issue(
            now=now, subject=record.subject, clientID=client.clientID,
            scope=record.scope, audience=record.resource, familyID=record.familyID,
        )
        refresh: Optional[str] = None
        if "refresh_token" in grantTypes(client.metadata):
            refresh = self.refreshTokens.new(record.familyID)
            currentHash = hashSecret(refresh)
            expiresAt = now + self.config.refreshTokenLifetime
        else:
            # No refresh token, but the grant is still recorded, so that a
            # replayed code can revoke the access token its first use issued.
            currentHash = hashSecret(newRefreshToken(record.familyID))
            expiresAt = float(access.expiresAt)
        try:
            await self.store.createFamily(
                RefreshFamily(
                    familyID=record.familyID,
                    clientID=client.clientID,
                    subject=record.subject,
                    scope=record.scope,
                    resource=record.resource,
                    currentHash=currentHash,
                    createdAt=now,
                    expiresAt=expiresAt,
                    lastAccessJTI=access.jti,
                    lastAccessExpiresAt=access.expiresAt,
                )
            )
        except Conflict:
            # A replay of this code got in between our consumeCode and
            # now, and left the grant revoked: issue nothing.
            await self.store.revokeJTI(access.jti, float(access.expiresAt))
            raise OAuthError("invalid_grant", "The authorization code has already been used")
        audit("token.issue", "success", request=request, clientID=client.clientID,
              subject=record.subject, grantType="authorization_code", jti=access.jti,
              familyID=record.familyID)
        return self._tokenResponse(request, access, refresh)

    async def _revokeGrant(self, record: CodeRecord, now: float) -> str:
        """
        Revoke what the first use of a replayed code issued. If the first
        use has not recorded its grant yet (the two requests raced), leave a
        revoked tombstone under the grant's family id, so that the first
        use fails instead of issuing tokens.

        @return: what happened, for the audit trail: C{"revoked"} (a live
            grant was revoked), C{"preempted"} (the first use had not
            recorded its grant: it will issue nothing) or C{"none"} (the
            grant was revoked already, e.g. by an earlier replay).
        """
        if await self.store.revokeFamily(record.familyID, now) is not None:
            return "revoked"
        tombstone = RefreshFamily(
            familyID=record.familyID,
            clientID=record.clientID,
            subject=record.subject,
            scope=record.scope,
            resource=record.resource,
            currentHash=hashSecret(newSecret(32)),
            createdAt=now,
            expiresAt=now + self.config.accessTokenLifetime + self.config.authorizationCodeLifetime,
        )
        try:
            await self.store.createFamily(tombstone)
        except Conflict:
            # Revoked already (an earlier replay), or the first use has just
            # recorded it: revoke again, idempotently.
            if await self.store.revokeFamily(record.familyID, now) is not None:
                return "revoked"
            return "none"
        await self.store.revokeFamily(record.familyID, now)
        return "preempted"

    async def _refreshTokenGrant(
        self, request: IRequest, form: Mapping[str, str], client: ClientRecord
    ) -> bytes:
        presented = form.get("refresh_token")
        if not presented:
            raise OAuthError("invalid_request", "refresh_token is required")
        parts = splitRefreshToken(presented)
        if parts is None:
            raise OAuthError("invalid_grant", "The refresh token is invalid")
        familyID = parts[0]
        now = self._now()
        try:
            family: RefreshFamily = await self.store.getFamily(familyID, now)
        except NoSuchFamily:
            raise OAuthError("invalid_grant", "The refresh token is invalid, expired or revoked")
        if family.clientID != client.clientID:
            raise OAuthError("invalid_grant", "The refresh token was issued to another client")
        try:
            scope = grantScope(form.get("scope"), frozenset(family.scope.split()))
        except InvalidScope as e:
            raise OAuthError("invalid_scope", str(e))
        if "resource" in form:
            resource = self._resourceFor(form["resource"])
            if resource is None or resource != family.resource:
                raise OAuthError("invalid_target", "resource does not match the grant")
        access = self.tokens.issue(
            now=now, subject=family.subject, clientID=client.clientID,
            scope=scope, audience=family.resource, familyID=familyID,
        )
        successor = self.refreshTokens.new(familyID)
        try:
            result = await self.store.rotateRefresh(
                familyID,
                hashSecret(presented),
                hashSecret(successor),
                sealSuccessor(presented, successor, familyID),
                now + self.config.refreshGraceSeconds,
                access.jti,
                float(access.expiresAt),
                now,
                # Only a token we minted for this family can count as
                # reuse: a forgery (the family id from an access token's
                # fid claim plus random bytes) revokes nothing.
                issued=self.refreshTokens.minted(presented),
                maxGraceReplays=self.config.refreshGraceReplays,
            )
        except NoSuchFamily:
            raise OAuthError("invalid_grant", "The refresh token is invalid, expired or revoked")
        if result.outcome is RotationOutcome.UNKNOWN:
            audit("token.refresh_unknown", "denied", request=request, clientID=client.clientID,
                  familyID=familyID, revoked=False)
            self.log.warn(
                "Refresh token not issued by family {familyID} presented by client {clientID}: "
                "refused, nothing revoked",
                clientID=client.clientID, familyID=familyID,
            )
            raise OAuthError("invalid_grant", "The refresh token is invalid, expired or revoked")
        if result.outcome is RotationOutcome.REUSED:
            before = result.family  # as the atomic rotation saw it
            previous = hashEquals(hashSecret(presented), before.previousHash)
            reason = "older" if not previous else (
                "late" if now >= before.graceUntil else "replays")
            audit("token.reuse_detected", "denied", request=request, clientID=client.clientID,
                  subject=family.subject, familyID=familyID, revoked=True, reason=reason)
            self.log.warn(
                "Superseded refresh token reused by client {clientID}: revoked family {familyID}",
                clientID=client.clientID, familyID=familyID,
            )
            raise OAuthError("invalid_grant", "The refresh token has been used already; the grant is revoked")
        if result.outcome is RotationOutcome.GRACE:
            sealed = result.family.sealedSuccessor
            opened = unsealSuccessor(presented, sealed, familyID) if sealed else None
            if opened is None:
                raise OAuthError("invalid_grant", "The refresh token is invalid")
            successor = opened
        audit("token.refresh", "success", request=request, clientID=client.clientID,
              subject=family.subject, jti=access.jti, familyID=familyID,
              rotation=result.outcome.value)
        return self._tokenResponse(request, access, successor)

    async def _clientCredentialsGrant(
        self, request: IRequest, form: Mapping[str, str], client: ClientRecord
    ) -> bytes:
        if not isConfidential(client.metadata):
            raise OAuthError("unauthorized_client", "client_credentials requires a confidential client")
        if isSelfAsserted(client.metadata):
            # Never stored in such a client's grants (cimd.py, register);
            # kept here too, as the rule is about who vouches for it.
            raise OAuthError("unauthorized_client",
                             "client_credentials is not available to a client that anyone could "
                             "have made (a metadata document, or open registration)")
        try:
            scope = grantScope(form.get("scope"), clientScopes(client.metadata), DEFAULT_SCOPES)
        except InvalidScope as e:
            raise OAuthError("invalid_scope", str(e))
        resource = self._resourceFor(form.get("resource"))
        if resource is None:
            raise OAuthError("invalid_target", "Unknown resource")
        access = self.tokens.issue(
            now=self._now(), subject=client.clientID, clientID=client.clientID,
            scope=scope, audience=resource,
        )
        audit("token.issue", "success", request=request, clientID=client.clientID,
              subject=client.clientID, grantType="client_credentials", jti=access.jti)
        return self._tokenResponse(request, access, None)

    # -- revocation and introspection

    async def _liveRefreshFamily(
        self, presented: str, client: ClientRecord
    ) -> Optional[RefreshFamily]:
        """
        The live family C{presented} belongs to, if it is the family's
        current token (or its predecessor within the grace window) and was
        issued to C{client}.
        """
        parts = splitRefreshToken(presented)
        if parts is None:
            return None
        now = self._now()
        try:
            family: RefreshFamily = await self.store.getFamily(parts[0], now)
        except NoSuchFamily:
            return None
        if family.clientID != client.clientID:
            return None
        presentedHash = hashSecret(presented)
        if hashEquals(presentedHash, family.currentHash) or (
            hashEquals(presentedHash, family.previousHash)
            and now < family.graceUntil
            and family.graceReplays < self.config.refreshGraceReplays
        ):
            return family
        return None

    @app.route("/oauth/revoke", methods=["POST"])
    @app.route("/revoke", methods=["POST"])
    async def revoke(self, request: IRequest) -> bytes:
        await self._rateLimit(request, "revoke", self.config.rateLimitRevoke)
        form = readForm(request, allowJSON=True)
        client = await self._authenticateClient(request, form)
        await self._rateLimit(request, "revoke", self.config.rateLimitRevoke, client.clientID)
        token = form.get("token")
        if not token:
            raise OAuthError("invalid_request", "token is required")
        now = self._now()
        revoked = False
        if splitRefreshToken(token) is not None:
            kind = "refresh"
            family = await self._liveRefreshFamily(token, client)
            if family is not None:
                await self.store.revokeFamily(family.familyID, now)
                revoked = True
                audit("token.revoke", "success", request=request, clientID=client.clientID,
                      subject=family.subject, familyID=family.familyID, kind=kind)
        else:
            kind = "access"
            try:
                claims = self.tokens.verify(token, now=now)
            except InvalidToken:
                claims = None
            if claims is not None and claims.clientID == client.clientID:
                await self.store.revokeJTI(claims.jti, claims.expiresAt)
                revoked = True
                audit("token.revoke", "success", request=request, clientID=client.clientID,
                      subject=claims.subject, jti=claims.jti, kind=kind)
        if not revoked:
            # RFC 7009 answers 200 all the same; the trail says nothing
            # was revoked (unknown, expired, or another client's token).
            audit("token.revoke", "ignored", request=request, clientID=client.clientID, kind=kind)
        request.setResponseCode(200)
        for name, value in NO_STORE.items():
            request.setHeader(name, value)
        return b""

    # Introspection: who may inspect whose tokens is decided by
    # mayIntrospectAny (module level).

    @app.route("/oauth/introspect", methods=["POST"])
    async def introspect(self, request: IRequest) -> bytes:
        await self._rateLimit(request, "token", self.config.rateLimitToken)
        form = readForm(request, allowJSON=True)
        client = await self._authenticateClient(request, form)
        token = form.get("token")
        if not token:
            raise OAuthError("invalid_request", "token is required")
        now = self._now()
        body: Dict[str, Any] = {"active": False}
        if splitRefreshToken(token) is not None:
            family = await self._liveRefreshFamily(token, client)
            if family is not None:
                body = {
                    "active": True,
                    "token_type": "refresh_token",
                    "client_id": family.clientID,
                    "sub": family.subject,
                    "scope": family.scope,
                    "aud": family.resource,
                    "iss": self.config.issuer,
                    "exp": int(family.expiresAt),
                    "iat": int(family.createdAt),
                }
        else:
            try:
                claims = self.tokens.verify(token, now=now)
            except InvalidToken:
                claims = None
            if (
                claims is not None
                and not mayIntrospectAny(client)
                and claims.clientID != client.clientID
            ):
                # See mayIntrospectAny: a public client, or one anyone could
                # stand up (a metadata document), may inspect only its own
                # tokens.
                claims = None
            if claims is not None and not await self.store.isAnyRevoked(revocationIDs(claims), now):
                body = {
                    "active": True,
                    "token_type": "Bearer",
                    "client_id": claims.clientID,
                    "sub": claims.subject,
                    "scope": claims.scope,
                    "aud": claims.audience[0] if len(claims.audience) == 1 else list(claims.audience),
                    "iss": claims.issuer,
                    "exp": int(claims.expiresAt),
                    "iat": int(claims.issuedAt),
                    "jti": claims.jti,
                }
        return writeJSON(request, body, headers=NO_STORE)
