"""
Tests for L{mcpsvc.oauth.bearer.BearerAuthenticator}.
"""

from __future__ import annotations

import base64
import json
from typing import Any, ClassVar, Dict, Optional

import jwt
from attrs import frozen
from klein import Klein
from treq.testing import StubTreq
from twisted.internet.defer import Deferred, fail
from twisted.python.filepath import FilePath
from twisted.web.iweb import IRequest
from twisted.web.test.requesthelper import DummyRequest

from mcpsvc.http.errors import BadRequest, Forbidden, Unauthorized, installErrorHandlers
from mcpsvc.oauth.bearer import BearerAuthenticator, challenge
from mcpsvc.oauth.test.helpers import EPOCH, SECRET, SERVER, OAuthTestCase, ecPEM, makeConfig
from mcpsvc.principal import Principal
from mcpsvc.storage.interfaces import StoreUnavailable

RESOURCE = SERVER + "/mcp"
PRM = SERVER + "/.well-known/oauth-protected-resource/mcp"
API_KEY = "api-key-0123456789abcdef"


def mcpRequest(headers: Optional[Dict[str, str]] = None, query: Optional[Dict[str, str]] = None) -> DummyRequest:
    request = DummyRequest([b"mcp"])
    request.path = b"/mcp"
    request.method = b"POST"
    for name, value in (headers or {}).items():
        request.requestHeaders.addRawHeader(name.encode(), value.encode())
    for name, value in (query or {}).items():
        request.args[name.encode()] = [value.encode()]
    return request


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class BearerTests(OAuthTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.client = self.registerConfidential()

    def authenticate(self, request: DummyRequest) -> "Deferred[Principal]":
        return Deferred.fromCoroutine(self.bearer.authenticate(request))

    def bearerRequest(self, token: str) -> DummyRequest:
        return mcpRequest({"Authorization": "Bearer " + token})

    def assertRefused(self, request: DummyRequest, exception: type = Unauthorized,
                      error: Optional[str] = "invalid_token") -> Any:
        failure = self.failureResultOf(self.authenticate(request), exception)
        err = failure.value
        value = err.headers["WWW-Authenticate"]
        self.assertTrue(value.startswith("Bearer "), value)
        self.assertIn(f'resource_metadata="{PRM}"', value)
        if error is None:
            self.assertNotIn("error=", value)
        else:
            self.assertIn(f'error="{error}"', value)
        return err

    def test_validToken(self) -> None:
        """
        A token we issued for this resource authenticates its subject,
        client and scopes.
        """
        tokens = self.obtainTokens(self.client)
        principal = self.successResultOf(self.authenticate(self.bearerRequest(tokens["access_token"])))
        self.assertEqual(
            (principal.clientID, principal.scopes, principal.method),
            (self.client["client_id"], frozenset({"mcp:tools", "mcp:read"}), "bearer"),
        )
        self.assertTrue(principal.subject.startswith("auto-"))
        # what a long-lived stream checks: the token, its client, its grant
        self.assertEqual(principal.revocationIDs[:2],
                         (principal.jti, "client:" + self.client["client_id"]))
        self.assertEqual(len(principal.revocationIDs), 3)

    def test_noToken(self) -> None:
        """
        No credentials: 401 with the resource_metadata challenge and no
        error code.
        """
        err = self.assertRefused(mcpRequest(), error=None)
        self.assertEqual(err.code, 401)
        self.assertIn('scope="mcp:tools mcp:read"', err.headers["WWW-Authenticate"])

    def test_otherScheme(self) -> None:
        """
        Basic credentials are not a bearer token.
        """
        self.assertRefused(mcpRequest({"Authorization": "Basic Zm9vOmJhcg=="}), error=None)

    def test_algNone(self) -> None:
        """
        An unsigned token is 401 invalid_token.
        """
        header = _b64(json.dumps({"alg": "none", "typ": "at+jwt"}).encode())
        body = _b64(json.dumps({"iss": SERVER, "aud": RESOURCE, "sub": "x", "exp": EPOCH + 99,
                                "iat": EPOCH, "jti": "j", "client_id": "c", "scope": "mcp:tools"}).encode())
        self.assertRefused(self.bearerRequest(f"{header}.{body}."))

    def test_hs256WhenAsymmetric(self) -> None:
        """
        With an EC key configured, a token signed with the HS256 secret is
        401 invalid_token (even one the server itself would have signed in
        HS256 mode).
        """
        hsToken = self.oauth.tokens.issue(now=EPOCH, subject="u", clientID="c", scope="mcp:tools").token
        path = FilePath(self.mktemp())
        path.setContent(ecPEM())
        self.configure(makeConfig(jwtPrivateKeyFile=path.path))
        self.assertRefused(self.bearerRequest(hsToken))
        forged = jwt.encode(
            {"iss": SERVER, "aud": RESOURCE, "sub": "x", "exp": int(EPOCH) + 99, "iat": int(EPOCH),
             "jti": "j", "client_id": "c", "scope": "mcp:tools"},
            SECRET.encode(), algorithm="HS256",
            headers={"typ": "at+jwt", "kid": self.oauth.tokens.keys.signing.kid},
        )
        self.assertRefused(self.bearerRequest(forged))
        good = self.oauth.tokens.issue(now=EPOCH, subject="u", clientID="c", scope="mcp:tools").token
        self.successResultOf(self.authenticate(self.bearerRequest(good)))

    def test_expired(self) -> None:
        """
        An expired token is 401 invalid_token.
        """
        tokens = self.obtainTokens(self.client)
        self.clock.advance(self.config.accessTokenLifetime + 60)
        err = self.assertRefused(self.bearerRequest(tokens["access_token"]))
        self.assertIn("expired", err.description)

    def test_wrongAudience(self) -> None:
        """
        A token of ours for another resource is 401 invalid_token.
        """
        token = self.oauth.tokens.issue(now=EPOCH, subject="u", clientID="c", scope="mcp:tools",
                                        audience="https://other.example.com/mcp").token
        self.assertRefused(self.bearerRequest(token))

    def test_revoked(self) -> None:
        """
        A revoked token is 401 invalid_token.
        """
        tokens = self.obtainTokens(self.client)
        self.request("POST", "/oauth/revoke", **self.clientAuth(self.client, {"token": tokens["access_token"]}))
        err = self.assertRefused(self.bearerRequest(tokens["access_token"]))
        self.assertIn("revoked", err.description)

    def test_familyRevokedRefusesEveryAccessToken(self) -> None:
        """
        Revoking a refresh token revokes its whole grant: every access
        token issued from the family is refused at once, the older ones
        too (not only the newest), and introspection calls them inactive;
        another grant of the same client is untouched.
        """
        first = self.obtainTokens(self.client)
        other = self.obtainTokens(self.client)
        response, second = self.refresh(self.client, first["refresh_token"])
        self.assertEqual(response.code, 200, second)
        for token in (first["access_token"], second["access_token"]):
            self.successResultOf(self.authenticate(self.bearerRequest(token)))
        self.request("POST", "/oauth/revoke",
                     **self.clientAuth(self.client, {"token": second["refresh_token"]}))
        for token in (first["access_token"], second["access_token"]):
            self.assertRefused(self.bearerRequest(token))
            response, body = self.request(
                "POST", "/oauth/introspect", **self.clientAuth(self.client, {"token": token}))
            self.assertEqual(body, {"active": False})
        self.successResultOf(self.authenticate(self.bearerRequest(other["access_token"])))

    def test_reuseRefusesEveryAccessToken(self) -> None:
        """
        A stale refresh token presented after the grace window revokes the
        family, and with it the access tokens already handed out.
        """
        first = self.obtainTokens(self.client)
        response, second = self.refresh(self.client, first["refresh_token"])
        self.assertEqual(response.code, 200, second)
        self.clock.advance(self.config.refreshGraceSeconds + 1)
        response, body = self.refresh(self.client, first["refresh_token"])
        self.assertEqual((response.code, body["error"]), (400, "invalid_grant"))
        for token in (first["access_token"], second["access_token"]):
            self.assertRefused(self.bearerRequest(token))

    def test_removedClientRefused(self) -> None:
        """
        A client's deny-list entry (written by C{mcpsvc clients remove})
        refuses all its access tokens, client credentials ones included.
        """
        from mcpsvc.storage.interfaces import clientRevocationID

        tokens = self.obtainTokens(self.client)
        self.successResultOf(self.store.revokeJTI(clientRevocationID(self.client["client_id"]), EPOCH + 7200))
        self.assertRefused(self.bearerRequest(tokens["access_token"]))

    def test_tokenInQueryString(self) -> None:
        """
        A token in the query string is refused (400), even a valid one
        also sent in the header.
        """
        tokens = self.obtainTokens(self.client)
        request = mcpRequest({"Authorization": "Bearer " + tokens["access_token"]},
                             query={"access_token": tokens["access_token"]})
        err = self.assertRefused(request, BadRequest, "invalid_request")
        self.assertEqual(err.code, 400)

    def test_storeUnavailable(self) -> None:
        """
        When the revocation list cannot be read, L{StoreUnavailable}
        propagates: never an accept.
        """
        tokens = self.obtainTokens(self.client)
        self.patch(self.store, "isAnyRevoked", lambda ids, now: fail(StoreUnavailable("down")))
        self.failureResultOf(self.authenticate(self.bearerRequest(tokens["access_token"])), StoreUnavailable)

    def test_apiKey(self) -> None:
        """
        MCP_API_KEY is accepted as a bearer token or in X-API-Key; a wrong
        key is refused; without MCP_API_KEY the key is just a bad token.
        """
        self.assertRefused(self.bearerRequest(API_KEY))
        self.configure(makeConfig(mcpAPIKey=API_KEY))
        for request in (self.bearerRequest(API_KEY), mcpRequest({"X-API-Key": API_KEY})):
            principal = self.successResultOf(self.authenticate(request))
            self.assertEqual(principal.method, "api-key")
            # The key is the operator's: every scope /mcp checks, mcp:write
            # included (an API-key client has no way to step up).
            self.assertEqual(principal.scopes, {"mcp:tools", "mcp:read", "mcp:write"})
        self.assertRefused(mcpRequest({"X-API-Key": API_KEY + "x"}))
        self.assertRefused(self.bearerRequest(API_KEY + "x"))

    def test_authModeNone(self) -> None:
        """
        AUTH_MODE=none lets everyone in as the anonymous principal.
        """
        self.configure(makeConfig(authMode="none"))
        principal = self.successResultOf(self.authenticate(mcpRequest()))
        self.assertEqual((principal.subject, principal.clientID, principal.method),
                         ("anonymous", "none", "none"))
        self.assertEqual(principal.scopes, {"mcp:tools", "mcp:read", "mcp:write"})

    def test_insufficientScope(self) -> None:
        """
        A principal without a needed scope gets 403 insufficient_scope
        naming the scopes needed.
        """
        principal = Principal(subject="u", clientID="c", scopes=frozenset({"mcp:read"}))
        self.bearer.requireScopes(principal, ["mcp:read"])
        e = self.assertRaises(Forbidden, self.bearer.requireScopes, principal, ["mcp:tools"])
        self.assertEqual((e.code, e.error), (403, "insufficient_scope"))
        value = e.headers["WWW-Authenticate"]
        self.assertIn('error="insufficient_scope"', value)
        self.assertIn('scope="mcp:tools mcp:read"', value)
        self.assertIn(f'resource_metadata="{PRM}"', value)
        # The hierarchy: mcp:write includes mcp:tools and mcp:read.
        self.bearer.requireScopes(
            Principal(subject="u", clientID="c", scopes=frozenset({"mcp:write"})),
            ["mcp:read", "mcp:tools", "mcp:write"])

    def test_challengeQuoting(self) -> None:
        """
        Challenge parameters are quoted and escaped.
        """
        value = challenge(makeConfig(), "invalid_token", 'bad "token"')
        self.assertIn('error_description="bad \\"token\\""', value)


@frozen
class _ProtectedApp:
    """
    A stand-in for the MCP endpoint: authenticates, then answers.
    """

    bearer: BearerAuthenticator
    app: ClassVar[Klein] = Klein()
    installErrorHandlers(app)

    @app.route("/mcp", methods=["POST"])
    async def mcp(self, request: IRequest) -> bytes:
        principal = await self.bearer.authenticate(request)
        return principal.clientID.encode()


class RenderedChallengeTests(OAuthTestCase):
    def test_401Rendered(self) -> None:
        """
        Through Klein and the shared error handlers, a request without a
        token gets 401 with the C{WWW-Authenticate} header.
        """
        stub = StubTreq(_ProtectedApp(self.bearer).app.resource())
        response = self.successResultOf(stub.post(SERVER + "/mcp", data=b"{}"))
        self.assertEqual(response.code, 401)
        [value] = response.headers.getRawHeaders("www-authenticate")
        self.assertEqual(value, f'Bearer resource_metadata="{PRM}", scope="mcp:tools mcp:read"')
        self.successResultOf(response.content())
