"""
Tests for L{mcpsvc.oauth.app.OAuthApp}, driven with L{StubTreq} over a
L{MemoryStore} and a L{Clock}.
"""

from __future__ import annotations

from typing import Any, Dict

import jwt
from twisted.python.filepath import FilePath

from mcpsvc.config import RateLimit
from mcpsvc.oauth.app import AutoApprover, canonicalURL
from mcpsvc.oauth.test.helpers import (
    IAT,
    SECRET,
    SERVER,
    SNOW,
    VERIFIER,
    GatedStore,
    OAuthTestCase,
    basic,
    ecPEM,
    makeConfig,
)
from mcpsvc.storage.hashing import hashSecret

RESOURCE = SERVER + "/mcp"


class MetadataTests(OAuthTestCase):
    def test_authorizationServerMetadata(self) -> None:
        """
        RFC 8414 metadata names the issuer exactly and every endpoint, at
        every alias.
        """
        for path in (
            "/.well-known/oauth-authorization-server",
            "/.well-known/oauth-authorization-server/mcp",
            "/.well-known/openid-configuration",
        ):
            response, body = self.request("GET", path)
            self.assertEqual(response.code, 200)
            self.assertEqual(self.header(response, "content-type"), "application/json")
            self.assertEqual(body["issuer"], SERVER)
            self.assertEqual(body["authorization_endpoint"], SERVER + "/oauth/authorize")
            self.assertEqual(body["token_endpoint"], SERVER + "/oauth/token")
            self.assertEqual(body["registration_endpoint"], SERVER + "/oauth/register")
            self.assertEqual(body["revocation_endpoint"], SERVER + "/oauth/revoke")
            self.assertEqual(body["introspection_endpoint"], SERVER + "/oauth/introspect")
            self.assertEqual(body["response_types_supported"], ["code"])
            self.assertEqual(body["code_challenge_methods_supported"], ["S256"])
            self.assertEqual(
                body["grant_types_supported"],
                ["authorization_code", "refresh_token", "client_credentials"],
            )
            self.assertEqual(
                sorted(body["token_endpoint_auth_methods_supported"]),
                ["client_secret_basic", "client_secret_post", "none", "private_key_jwt"],
            )
            self.assertIn("mcp:tools", body["scopes_supported"])
            self.assertIs(body["authorization_response_iss_parameter_supported"], True)
            self.assertNotIn("jwks_uri", body)

    def test_issuerWithPath(self) -> None:
        """
        An issuer with a path has its metadata at the well-known URI
        followed by that path (RFC 8414 section 3.1), the issuer named
        exactly; other paths there are 404.
        """
        self.configure(makeConfig(issuer=SERVER + "/tenant/a"))
        for path in (
            "/.well-known/oauth-authorization-server/tenant/a",
            "/.well-known/openid-configuration/tenant/a",
        ):
            response, body = self.request("GET", path)
            self.assertEqual(response.code, 200, path)
            self.assertEqual(self.header(response, "content-type"), "application/json")
            self.assertEqual(body["issuer"], SERVER + "/tenant/a")
            self.assertEqual(body["token_endpoint"], SERVER + "/oauth/token")
        for path in (
            "/.well-known/oauth-authorization-server/tenant",
            "/.well-known/oauth-authorization-server/tenant/a/",
            "/.well-known/openid-configuration/other",
        ):
            response, body = self.request("GET", path)
            self.assertEqual(response.code, 404, path)
        self.configure(makeConfig())
        response, _ = self.request("GET", "/.well-known/oauth-authorization-server/tenant")
        self.assertEqual(response.code, 404)

    def test_noRegistrationEndpointWhenClosed(self) -> None:
        """
        Without an initial access token or C{DCR_OPEN}, no registration
        endpoint is advertised and registration answers 403.
        """
        self.configure(makeConfig(dcrAuthToken=None))
        _, body = self.request("GET", "/.well-known/oauth-authorization-server")
        self.assertNotIn("registration_endpoint", body)
        response, body = self.request("POST", "/oauth/register", json={"redirect_uris": [SNOW]})
        self.assertOAuthError(response, body, 403, "access_denied")

    def test_protectedResourceMetadata(self) -> None:
        """
        RFC 9728 metadata names the MCP resource exactly, at both paths.
        """
        for path in ("/.well-known/oauth-protected-resource", "/.well-known/oauth-protected-resource/mcp"):
            response, body = self.request("GET", path)
            self.assertEqual(response.code, 200)
            self.assertEqual(body["resource"], RESOURCE)
            self.assertEqual(body["authorization_servers"], [SERVER])
            self.assertEqual(body["bearer_methods_supported"], ["header"])
            self.assertEqual(body["scopes_supported"], ["mcp:tools", "mcp:read", "mcp:write"])

    def test_jwks(self) -> None:
        """
        With an EC key the JWKS is served and advertised; with HS256 it is
        404.
        """
        response, _ = self.request("GET", "/.well-known/jwks.json")
        self.assertEqual(response.code, 404)
        path = FilePath(self.mktemp())
        path.setContent(ecPEM())
        self.configure(makeConfig(jwtPrivateKeyFile=path.path))
        response, body = self.request("GET", "/.well-known/jwks.json")
        self.assertEqual(response.code, 200)
        self.assertEqual(body["keys"][0]["alg"], "ES256")
        _, md = self.request("GET", "/.well-known/oauth-authorization-server")
        self.assertEqual(md["jwks_uri"], SERVER + "/.well-known/jwks.json")


class RegistrationTests(OAuthTestCase):
    def test_bearerInitialAccessToken(self) -> None:
        """
        C{Authorization: Bearer <iat>} registers a confidential client: 201
        with id, secret, issue time, C{client_secret_expires_at} 0 and the
        metadata; only the secret's hash is stored.
        """
        body = self.registerConfidential()
        self.assertEqual(body["client_secret_expires_at"], 0)
        self.assertEqual(body["client_id_issued_at"], int(self.clock.seconds()))
        self.assertEqual(body["redirect_uris"], [SNOW])
        self.assertEqual(body["token_endpoint_auth_method"], "client_secret_basic")
        record = self.successResultOf(self.store.getClient(body["client_id"]))
        self.assertEqual(record.secretHash, hashSecret(body["client_secret"]))
        self.assertNotIn(body["client_secret"], repr(record))

    def test_bareAndBodyInitialAccessToken(self) -> None:
        """
        The initial access token is also accepted bare in the header and as
        C{token_value} in the body (which is not stored).
        """
        self.register({"redirect_uris": [SNOW]}, how="bare")
        body = self.register({"redirect_uris": [SNOW]}, how="body")
        record = self.successResultOf(self.store.getClient(body["client_id"]))
        self.assertNotIn("token_value", record.metadata)

    def test_alsoAtRegister(self) -> None:
        """
        C{/register} is an alias.
        """
        response, body = self.request(
            "POST", "/register", json={"redirect_uris": [SNOW]}, headers={"Authorization": IAT}
        )
        self.assertEqual(response.code, 201, body)

    def test_publicClientHasNoSecret(self) -> None:
        """
        A public client gets no secret.
        """
        body = self.registerPublic()
        self.assertNotIn("client_secret", body)
        self.assertNotIn("client_secret_expires_at", body)

    def test_missingInitialAccessToken(self) -> None:
        """
        Registration without the initial access token is 401 invalid_token.
        """
        response, body = self.request("POST", "/oauth/register", json={"redirect_uris": [SNOW]})
        self.assertOAuthError(response, body, 401, "invalid_token")
        self.assertEqual(self.successResultOf(self.store.listClients()), [])

    def test_wrongInitialAccessToken(self) -> None:
        """
        A wrong initial access token (header or body) is 401 invalid_token.
        """
        for kw in (
            {"headers": {"Authorization": "Bearer " + IAT + "x"}, "json": {"redirect_uris": [SNOW]}},
            {"headers": {"Authorization": IAT[:-1]}, "json": {"redirect_uris": [SNOW]}},
            {"json": {"redirect_uris": [SNOW], "token_value": "nope"}},
        ):
            response, body = self.request("POST", "/oauth/register", **kw)
            self.assertOAuthError(response, body, 401, "invalid_token")
        self.assertEqual(self.successResultOf(self.store.listClients()), [])

    def test_openRegistration(self) -> None:
        """
        With C{DCR_OPEN} and no token, registration needs no credential.
        """
        self.configure(makeConfig(dcrAuthToken=None, dcrOpen=True))
        self.register({"redirect_uris": [SNOW]}, token=None)

    def test_openRegistrationIsSelfAsserted(self) -> None:
        """
        A client registered openly (anyone could have) cannot register
        C{client_credentials}; a confidential one it registers introspects
        its own access tokens but not another client's (a client registered
        with the initial access token still may); the registration response
        does not carry our marker.
        """
        trusted = self.registerConfidential()
        theirs = self.obtainTokens(trusted)
        self.configure(makeConfig(dcrOpen=True).replace(dcrAuthToken=None))
        response, body = self.request("POST", "/oauth/register", json={
            "redirect_uris": [SNOW], "grant_types": ["authorization_code", "client_credentials"]})
        self.assertOAuthError(response, body, 400, "invalid_client_metadata")
        self.assertIn("initial access token", body["error_description"])
        client = self.register({
            "client_name": "anyone", "redirect_uris": [SNOW],
            "grant_types": ["authorization_code", "refresh_token"]}, token=None)
        self.assertNotIn("registration", client)
        record = self.successResultOf(self.store.getClient(client["client_id"]))
        self.assertEqual(record.metadata["registration"], "open")
        own = self.obtainTokens(client)
        auth = {"Authorization": basic(client["client_id"], client["client_secret"])}
        for token, active in ((own["access_token"], True), (theirs["access_token"], False)):
            response, body = self.request("POST", "/oauth/introspect", data={"token": token},
                                          headers=auth)
            self.assertEqual((response.code, body["active"]), (200, active))
        response, body = self.request(
            "POST", "/oauth/introspect", data={"token": own["access_token"]},
            headers={"Authorization": basic(trusted["client_id"], trusted["client_secret"])})
        self.assertEqual(body["active"], True)
        # Granted by an operator later (a record edited by hand): still refused.
        self.successResultOf(self.store.updateClient(record.__class__(
            clientID=record.clientID, secretHash=record.secretHash, createdAt=record.createdAt,
            metadata=dict(record.metadata, grant_types=["authorization_code", "client_credentials"]))))
        response, body = self.request("POST", "/oauth/token", data={
            "grant_type": "client_credentials"}, headers=auth)
        self.assertOAuthError(response, body, 400, "unauthorized_client")

    def test_jwksURIHTTPSInProduction(self) -> None:
        """
        In production a C{jwks_uri} must be https, loopback or not (the
        fetcher would refuse it); development accepts http on loopback.
        """
        metadata = {"redirect_uris": [SNOW], "token_endpoint_auth_method": "private_key_jwt",
                    "jwks_uri": "http://127.0.0.1:8000/jwks.json"}
        self.register(dict(metadata))
        self.configure(self.config.replace(environment="production"))
        response, body = self.request("POST", "/oauth/register", json=metadata,
                                      headers={"Authorization": "Bearer " + IAT})
        self.assertOAuthError(response, body, 400, "invalid_client_metadata")
        self.assertIn("https", body["error_description"])

    def test_httpNonLoopbackRedirect(self) -> None:
        """
        An http redirect URI on a non-loopback host is 400
        invalid_redirect_uri.
        """
        response, body = self.request(
            "POST", "/oauth/register", json={"redirect_uris": ["http://dev12345.service-now.com/oauth_redirect.do"]},
            headers={"Authorization": "Bearer " + IAT},
        )
        self.assertOAuthError(response, body, 400, "invalid_redirect_uri")

    def test_redirectOutsideAllowList(self) -> None:
        """
        An https redirect URI outside the allow-list is refused, unless
        the ServiceNow instance is configured and it is on that host.
        """
        metadata = {"redirect_uris": ["https://acme.example.com/oauth_redirect.do"]}
        response, body = self.request("POST", "/oauth/register", json=metadata,
                                      headers={"Authorization": IAT})
        self.assertOAuthError(response, body, 400, "invalid_redirect_uri")
        self.configure(makeConfig(servicenowInstance="https://acme.example.com"))
        self.register(metadata)

    def test_privateKeyJWTWithoutKeys(self) -> None:
        """
        C{private_key_jwt} without C{jwks} or C{jwks_uri} is 400
        invalid_client_metadata.
        """
        response, body = self.request(
            "POST", "/oauth/register",
            json={"redirect_uris": [SNOW], "token_endpoint_auth_method": "private_key_jwt"},
            headers={"Authorization": IAT},
        )
        self.assertOAuthError(response, body, 400, "invalid_client_metadata")

    def test_notJSON(self) -> None:
        """
        A form body is 415; a JSON array is invalid_client_metadata.
        """
        response, _ = self.request("POST", "/oauth/register", data={"a": "b"}, headers={"Authorization": IAT})
        self.assertEqual(response.code, 415)
        response, body = self.request("POST", "/oauth/register", json=[1], headers={"Authorization": IAT})
        self.assertOAuthError(response, body, 400, "invalid_client_metadata")


class AuthorizeTests(OAuthTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.client = self.registerConfidential()

    def test_codeRedirect(self) -> None:
        """
        A valid request redirects to the redirect URI with code, state and
        iss; the code is stored hashed, bound to everything.
        """
        response, query = self.authorize(self.client)
        self.assertEqual(response.code, 302)
        location = self.header(response, "location")
        assert location is not None
        self.assertTrue(location.startswith(SNOW + "?"))
        self.assertEqual(sorted(query), ["code", "iss", "state"])
        self.assertEqual((query["state"], query["iss"]), ("st-123", SERVER))
        self.assertEqual(self.header(response, "cache-control"), "no-store")

    def test_postAlsoWorks(self) -> None:
        """
        The authorization endpoint also takes a form POST, at C{/authorize}.
        """
        response, _ = self.request("POST", "/authorize", data=self.authorizeParams(self.client))
        self.assertEqual(response.code, 302)

    def test_unknownClient(self) -> None:
        """
        An unknown client gets an error page (400 invalid_client), never a
        redirect.
        """
        response, body = self.request(
            "GET", "/oauth/authorize", params=self.authorizeParams(self.client, client_id="nope")
        )
        self.assertOAuthError(response, body, 400, "invalid_client")
        self.assertIsNone(self.header(response, "location"))

    def test_errorPageIsHTMLForBrowsers(self) -> None:
        """
        Browsers get an HTML page, escaped, that cannot be framed.
        """
        response, body = self.request(
            "GET", "/oauth/authorize",
            params=self.authorizeParams(self.client, redirect_uri="https://evil.example/<script>"),
            headers={"Accept": "text/html"},
        )
        self.assertEqual(response.code, 400)
        self.assertTrue(self.header(response, "content-type").startswith("text/html"))
        self.assertIn(b"invalid_request", body)
        self.assertNotIn(b"<script>", body)
        self.assertIn("frame-ancestors 'none'", self.header(response, "content-security-policy"))

    def test_redirectMismatches(self) -> None:
        """
        Every redirect URI trick gets a 400 invalid_request page, never a
        redirect.
        """
        for uri in (
            SNOW + "/extra",
            SNOW + "?next=https://evil.example",
            "https://evil.example@dev12345.service-now.com/oauth_redirect.do",
            "https://dev12345.service-now.com:8443/oauth_redirect.do",
            "http://dev12345.service-now.com/oauth_redirect.do",
            "https://evil.example/oauth_redirect.do",
        ):
            response, body = self.request(
                "GET", "/oauth/authorize", params=self.authorizeParams(self.client, redirect_uri=uri)
            )
            self.assertOAuthError(response, body, 400, "invalid_request")
            self.assertIsNone(self.header(response, "location"), uri)

    def test_redirectOmittedWithOneRegistered(self) -> None:
        """
        With exactly one registered redirect URI, it may be omitted.
        """
        response, _ = self.authorize(self.client, redirect_uri=None)
        self.assertEqual(response.code, 302)
        self.assertTrue(self.header(response, "location").startswith(SNOW + "?"))

    def test_loopbackAnyPort(self) -> None:
        """
        A loopback client may use any port.
        """
        client = self.registerPublic("http://127.0.0.1/callback")
        response, query = self.authorize(client, redirect_uri="http://127.0.0.1:49152/callback")
        self.assertEqual(response.code, 302)
        self.assertTrue(self.header(response, "location").startswith("http://127.0.0.1:49152/callback?code="))

    def assertRedirectError(self, error: str, **changes: Any) -> Dict[str, str]:
        response, query = self.authorize(self.client, **changes)
        self.assertEqual(response.code, 302, query)
        self.assertEqual(query["error"], error, query)
        self.assertEqual(query["iss"], SERVER)
        self.assertNotIn("code", query)
        return query

    def test_pkceMissing(self) -> None:
        """
        No code_challenge: redirect with invalid_request, state and iss.
        """
        query = self.assertRedirectError("invalid_request", code_challenge=None)
        self.assertEqual(query["state"], "st-123")

    def test_pkcePlain(self) -> None:
        """
        C{plain} is refused with invalid_request.
        """
        self.assertRedirectError("invalid_request", code_challenge_method="plain", code_challenge=VERIFIER)

    def test_pkceMethodMissing(self) -> None:
        """
        A challenge without a method (RFC 7636 default plain) is refused.
        """
        self.assertRedirectError("invalid_request", code_challenge_method=None)

    def test_responseType(self) -> None:
        """
        response_type token is unsupported_response_type; missing is
        invalid_request.
        """
        self.assertRedirectError("unsupported_response_type", response_type="token")
        self.assertRedirectError("invalid_request", response_type=None)

    def test_unknownResource(self) -> None:
        """
        A resource other than ours is invalid_target; ours in another case
        or with a trailing slash is fine.
        """
        self.assertRedirectError("invalid_target", resource="https://other.example.com/mcp")
        response, _ = self.authorize(self.client, resource="HTTPS://MCP.example.com/mcp/")
        self.assertEqual(response.code, 302)
        self.assertIn("code", self.header(response, "location"))

    def test_scopeWidening(self) -> None:
        """
        Asking for a known scope the client did not register is
        invalid_scope.
        """
        client = self.addAdminClient(scope="mcp:read")
        response, query = self.authorize(client, scope="mcp:tools")
        self.assertEqual(query["error"], "invalid_scope")

    def test_dynamicClientMayStepUp(self) -> None:
        """
        A dynamically registered client may ask for any scope, whatever it
        named at registration (the MCP SDK registers with the first
        challenge's scopes and must be able to step up later); without a
        scope it gets the default scopes only, never C{mcp:write}.
        """
        client = self.registerConfidential(scope="mcp:read")
        self.assertEqual(client["scope"], "mcp:tools mcp:read mcp:write")
        code = self.getCode(client, scope="mcp:read mcp:write")
        response, body = self.exchange(client, code)
        self.assertEqual((response.code, body["scope"]), (200, "mcp:read mcp:write"), body)
        response, body = self.exchange(client, self.getCode(client, scope=None))
        self.assertEqual(body["scope"], "mcp:tools mcp:read")
        response, body = self.exchange(client, self.getCode(client, scope="openid profile"))
        self.assertEqual(body["scope"], "mcp:tools mcp:read")

    def test_repeatedParameter(self) -> None:
        """
        A repeated parameter (after the client and redirect are known) is
        redirected as invalid_request.
        """
        params = list(self.authorizeParams(self.client).items()) + [("scope", "a"), ("scope", "b")]
        response, _ = self.request("GET", "/oauth/authorize", params=params)
        self.assertEqual(response.code, 302)
        self.assertIn("error=invalid_request", self.header(response, "location"))

    def test_clientWithoutCodeGrant(self) -> None:
        """
        A client_credentials-only client may not use the authorize endpoint.
        """
        client = self.register({"grant_types": ["client_credentials"], "redirect_uris": [SNOW]})
        response, query = self.authorize(client)
        self.assertEqual(query["error"], "unauthorized_client")

    def test_consentModeFailsClosed(self) -> None:
        """
        Until the consent page exists, C{AUTHORIZE_MODE=consent} answers
        temporarily_unavailable, never a code.
        """
        self.configure(makeConfig(authorizeMode="consent"))
        query = self.assertRedirectError("temporarily_unavailable")
        self.assertEqual(query["state"], "st-123")

    def test_autoSubjectIsStablePseudonym(self) -> None:
        """
        In auto mode the subject is stable per client and differs between
        clients.
        """
        approver = AutoApprover(secret=SECRET.encode())
        self.assertEqual(approver.subjectFor("a"), approver.subjectFor("a"))
        self.assertNotEqual(approver.subjectFor("a"), approver.subjectFor("b"))
        self.assertNotIn("a", approver.subjectFor("a")[5:6])


class CodeGrantTests(OAuthTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.client = self.registerConfidential()

    def test_exchange(self) -> None:
        """
        A code exchanges for a Bearer access token for our resource and a
        refresh token, with no-store caching.
        """
        code = self.getCode(self.client)
        response, body = self.exchange(self.client, code)
        self.assertEqual(response.code, 200, body)
        self.assertEqual(self.header(response, "cache-control"), "no-store")
        self.assertEqual(body["token_type"], "Bearer")
        self.assertEqual(body["expires_in"], 3600)
        self.assertEqual(body["scope"], "mcp:tools mcp:read")
        self.assertIn(".", body["refresh_token"])
        claims = self.oauth.tokens.verify(body["access_token"], now=self.clock.seconds())
        self.assertEqual((claims.clientID, claims.audience), (self.client["client_id"], (RESOURCE,)))

    def test_wrongVerifier(self) -> None:
        """
        A wrong code_verifier is invalid_grant.
        """
        response, body = self.exchange(self.client, self.getCode(self.client), code_verifier="w" * 43)
        self.assertOAuthError(response, body, 400, "invalid_grant")

    def test_missingVerifier(self) -> None:
        """
        A missing code_verifier is invalid_request, and the code survives.
        """
        code = self.getCode(self.client)
        response, body = self.exchange(self.client, code, code_verifier=None)
        self.assertOAuthError(response, body, 400, "invalid_request")
        response, body = self.exchange(self.client, code)
        self.assertEqual(response.code, 200)

    def test_codeReused(self) -> None:
        """
        A replayed code is invalid_grant and revokes what its first use
        issued: the refresh family and the access token.
        """
        code = self.getCode(self.client)
        _, first = self.exchange(self.client, code)
        response, body = self.exchange(self.client, code)
        self.assertOAuthError(response, body, 400, "invalid_grant")
        response, body = self.refresh(self.client, first["refresh_token"])
        self.assertOAuthError(response, body, 400, "invalid_grant")
        claims = self.oauth.tokens.verify(first["access_token"], now=self.clock.seconds())
        self.assertTrue(self.successResultOf(self.store.isRevoked(claims.jti, self.clock.seconds())))

    def test_codeReusedWithoutRefreshGrant(self) -> None:
        """
        For a client without refresh tokens, a replay still revokes the
        first access token.
        """
        client = self.registerConfidential(grant_types=["authorization_code"])
        code = self.getCode(client)
        _, first = self.exchange(client, code)
        self.assertNotIn("refresh_token", first)
        response, body = self.exchange(client, code)
        self.assertOAuthError(response, body, 400, "invalid_grant")
        claims = self.oauth.tokens.verify(first["access_token"], now=self.clock.seconds())
        self.assertTrue(self.successResultOf(self.store.isRevoked(claims.jti, self.clock.seconds())))

    def test_codeReplayRacingFirstUse(self) -> None:
        """
        A replay that arrives while the first use is still recording its
        grant makes both fail: the first use issues nothing.
        """
        code = self.getCode(self.client)
        gate = GatedStore(self.store, "createFamily")
        self.store = gate  # type: ignore[assignment]
        self.configure(self.config)
        gate.gated = True
        first = self.stub.request("POST", self.url("/oauth/token"), allow_redirects=False,
                                  **self.clientAuth(self.client, {
                                      "grant_type": "authorization_code", "code": code,
                                      "code_verifier": VERIFIER}))
        self.assertNoResult(first)
        self.assertEqual(len(gate.waiting), 1)
        gate.gated = False
        response, body = self.exchange(self.client, code)
        self.assertOAuthError(response, body, 400, "invalid_grant")
        gate.release()
        self.stub.flush()
        response = self.successResultOf(first)
        body = self.successResultOf(response.json())
        self.assertOAuthError(response, body, 400, "invalid_grant")

    def test_codeExpired(self) -> None:
        """
        A code past its lifetime is invalid_grant.
        """
        code = self.getCode(self.client)
        self.clock.advance(self.config.authorizationCodeLifetime)
        response, body = self.exchange(self.client, code)
        self.assertOAuthError(response, body, 400, "invalid_grant")

    def test_unknownCode(self) -> None:
        """
        A made-up code is invalid_grant.
        """
        response, body = self.exchange(self.client, "made-up")
        self.assertOAuthError(response, body, 400, "invalid_grant")

    def test_redirectMismatchAtToken(self) -> None:
        """
        A redirect_uri differing from the authorization request's is
        invalid_grant.
        """
        response, body = self.exchange(self.client, self.getCode(self.client), redirect_uri=SNOW + "/x")
        self.assertOAuthError(response, body, 400, "invalid_grant")

    def test_otherClientsCode(self) -> None:
        """
        A code issued to another client is invalid_grant.
        """
        other = self.registerConfidential()
        response, body = self.exchange(other, self.getCode(self.client))
        self.assertOAuthError(response, body, 400, "invalid_grant")

    def test_resourceMismatch(self) -> None:
        """
        Another resource at the token endpoint is invalid_target.
        """
        response, body = self.exchange(self.client, self.getCode(self.client), resource="https://x.example/mcp")
        self.assertOAuthError(response, body, 400, "invalid_target")

    def test_resourceOptional(self) -> None:
        """
        Without resource parameters the token is for our resource.
        """
        code = self.getCode(self.client, resource=None)
        response, body = self.exchange(self.client, code, resource=None)
        self.assertEqual(response.code, 200)
        self.assertEqual(jwt.decode(body["access_token"], options={"verify_signature": False})["aud"], RESOURCE)

    def test_publicClientFlow(self) -> None:
        """
        A public client authenticates with its client_id alone (PKCE still
        required).
        """
        client = self.registerPublic()
        tokens = self.obtainTokens(client)
        self.assertIn("refresh_token", tokens)

    def test_unsupportedGrant(self) -> None:
        """
        An unknown grant type is unsupported_grant_type; a known one the
        client did not register is unauthorized_client.
        """
        response, body = self.tokenRequest(self.client, {"grant_type": "password"})
        self.assertOAuthError(response, body, 400, "unsupported_grant_type")
        response, body = self.tokenRequest(self.client, {"grant_type": "client_credentials"})
        self.assertOAuthError(response, body, 400, "unauthorized_client")
        response, body = self.tokenRequest(self.client, {})
        self.assertOAuthError(response, body, 400, "invalid_request")


class ClientAuthTests(OAuthTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.client = self.registerConfidential()

    def test_unknownClient(self) -> None:
        """
        An unknown client is 401 invalid_client, with a Basic challenge when
        Basic was used.
        """
        response, body = self.request(
            "POST", "/oauth/token", data={"grant_type": "client_credentials"},
            headers={"Authorization": basic("nobody", "x")},
        )
        self.assertOAuthError(response, body, 401, "invalid_client")
        self.assertTrue(self.header(response, "www-authenticate").startswith("Basic"))
        response, body = self.request(
            "POST", "/oauth/token", data={"grant_type": "client_credentials", "client_id": "nobody"}
        )
        self.assertOAuthError(response, body, 401, "invalid_client")
        self.assertIsNone(self.header(response, "www-authenticate"))

    def test_wrongSecret(self) -> None:
        """
        A wrong secret is 401 invalid_client with C{WWW-Authenticate:
        Basic}.
        """
        response, body = self.exchange(
            dict(self.client, client_secret="wrong"), self.getCode(self.client)
        )
        self.assertOAuthError(response, body, 401, "invalid_client")
        self.assertTrue(self.header(response, "www-authenticate").startswith("Basic"))

    def test_methodEnforced(self) -> None:
        """
        A client_secret_basic client may not authenticate in the body, nor
        with no secret.
        """
        code = self.getCode(self.client)
        for method in ("client_secret_post", "none"):
            response, body = self.exchange(dict(self.client, token_endpoint_auth_method=method), code)
            self.assertOAuthError(response, body, 401, "invalid_client")
        response, body = self.exchange(self.client, code)
        self.assertEqual(response.code, 200, body)

    def test_clientIDInBodyAlongsideBasic(self) -> None:
        """
        client_id in the body alongside Basic is accepted when it matches,
        refused when it does not.
        """
        code = self.getCode(self.client)
        headers = {"Authorization": basic(self.client["client_id"], self.client["client_secret"])}
        form = {"grant_type": "authorization_code", "code": code, "code_verifier": VERIFIER,
                "client_id": "someone-else"}
        response, body = self.request("POST", "/oauth/token", data=form, headers=headers)
        self.assertOAuthError(response, body, 401, "invalid_client")
        form["client_id"] = self.client["client_id"]
        response, body = self.request("POST", "/oauth/token", data=form, headers=headers)
        self.assertEqual(response.code, 200, body)

    def test_malformedBasic(self) -> None:
        """
        Malformed Basic credentials are 401 invalid_client.
        """
        response, body = self.request(
            "POST", "/oauth/token", data={"grant_type": "client_credentials"},
            headers={"Authorization": "Basic !!!"},
        )
        self.assertOAuthError(response, body, 401, "invalid_client")

    def test_noCredentials(self) -> None:
        """
        No client identification at all is 401 invalid_client.
        """
        response, body = self.request("POST", "/oauth/token", data={"grant_type": "client_credentials"})
        self.assertOAuthError(response, body, 401, "invalid_client")

    def test_wrongContentType(self) -> None:
        """
        The token endpoint reads forms (and JSON); anything else is 415.
        """
        response, _ = self.request("POST", "/oauth/token", data=b"x", headers={"Content-Type": "text/plain"})
        self.assertEqual(response.code, 415)


class ClientCredentialsTests(OAuthTestCase):
    def test_grant(self) -> None:
        """
        A confidential client registered for client_credentials gets an
        access token (subject: itself) and no refresh token.
        """
        client = self.register({"grant_types": ["client_credentials"], "token_endpoint_auth_method": "client_secret_post"})
        response, body = self.tokenRequest(client, {"grant_type": "client_credentials", "scope": "mcp:read"})
        self.assertEqual(response.code, 200, body)
        self.assertNotIn("refresh_token", body)
        self.assertEqual(body["scope"], "mcp:read")
        claims = self.oauth.tokens.verify(body["access_token"], now=self.clock.seconds())
        self.assertEqual(claims.subject, client["client_id"])

    def test_wideningScope(self) -> None:
        """
        Asking for an unregistered known scope is invalid_scope.
        """
        client = self.addAdminClient(scope="mcp:read", grantTypes=["client_credentials"])
        response, body = self.tokenRequest(client, {"grant_type": "client_credentials", "scope": "mcp:tools"})
        self.assertOAuthError(response, body, 400, "invalid_scope")

    def test_scopes(self) -> None:
        """
        A client_credentials token carries the default scopes
        (C{mcp:tools mcp:read}) when none is named, C{mcp:write} only when
        asked for.
        """
        client = self.register({"grant_types": ["client_credentials"]})
        response, body = self.tokenRequest(client, {"grant_type": "client_credentials"})
        self.assertEqual((response.code, body["scope"]), (200, "mcp:tools mcp:read"))
        response, body = self.tokenRequest(
            client, {"grant_type": "client_credentials", "scope": "mcp:tools,mcp:write,openid"})
        self.assertEqual((response.code, body["scope"]), (200, "mcp:tools mcp:write"))


class RefreshTests(OAuthTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.client = self.registerConfidential()
        self.tokens = self.obtainTokens(self.client)

    def test_rotation(self) -> None:
        """
        A refresh returns a new access token and a new refresh token; the
        new one works.
        """
        response, body = self.refresh(self.client, self.tokens["refresh_token"])
        self.assertEqual(response.code, 200, body)
        self.assertNotEqual(body["refresh_token"], self.tokens["refresh_token"])
        self.assertNotEqual(body["access_token"], self.tokens["access_token"])
        self.assertEqual(self.header(response, "cache-control"), "no-store")
        response, again = self.refresh(self.client, body["refresh_token"])
        self.assertEqual(response.code, 200, again)

    def test_graceReturnsSameSuccessor(self) -> None:
        """
        Within the grace window the superseded token yields the same
        successor and a fresh access token.
        """
        _, first = self.refresh(self.client, self.tokens["refresh_token"])
        self.clock.advance(self.config.refreshGraceSeconds - 1)
        response, second = self.refresh(self.client, self.tokens["refresh_token"])
        self.assertEqual(response.code, 200, second)
        self.assertEqual(second["refresh_token"], first["refresh_token"])
        self.assertNotEqual(second["access_token"], first["access_token"])

    def test_reuseAfterGraceKillsFamily(self) -> None:
        """
        After the grace window the superseded token is invalid_grant and
        the whole family, including the newest token, is revoked.
        """
        _, first = self.refresh(self.client, self.tokens["refresh_token"])
        self.clock.advance(self.config.refreshGraceSeconds)
        response, body = self.refresh(self.client, self.tokens["refresh_token"])
        self.assertOAuthError(response, body, 400, "invalid_grant")
        response, body = self.refresh(self.client, first["refresh_token"])
        self.assertOAuthError(response, body, 400, "invalid_grant")
        claims = self.oauth.tokens.verify(first["access_token"], now=self.clock.seconds())
        self.assertTrue(self.successResultOf(self.store.isRevoked(claims.jti, self.clock.seconds())))

    def test_scopeMayOnlyNarrow(self) -> None:
        """
        A refresh may narrow the scope of the access token, never widen it
        beyond the grant.
        """
        response, body = self.refresh(self.client, self.tokens["refresh_token"], scope="mcp:read")
        self.assertEqual((response.code, body["scope"]), (200, "mcp:read"))
        code = self.getCode(self.client, scope="mcp:read")
        response, tokens = self.exchange(self.client, code)
        response, body = self.refresh(self.client, tokens["refresh_token"], scope="mcp:read mcp:tools")
        self.assertOAuthError(response, body, 400, "invalid_scope")

    def test_refreshKeepsWideScope(self) -> None:
        """
        A refresh that names no scope keeps the grant's whole scope,
        C{mcp:write} included (the default scopes apply to new grants only).
        """
        code = self.getCode(self.client, scope="mcp:tools mcp:write")
        response, tokens = self.exchange(self.client, code)
        response, body = self.refresh(self.client, tokens["refresh_token"])
        self.assertEqual((response.code, body["scope"]), (200, "mcp:tools mcp:write"))

    def test_otherClient(self) -> None:
        """
        Another client cannot use the refresh token, and does not rotate it.
        """
        other = self.registerConfidential()
        response, body = self.refresh(other, self.tokens["refresh_token"])
        self.assertOAuthError(response, body, 400, "invalid_grant")
        response, body = self.refresh(self.client, self.tokens["refresh_token"])
        self.assertEqual(response.code, 200)

    def test_resourceCarried(self) -> None:
        """
        The refresh keeps the resource; another is invalid_target.
        """
        response, body = self.refresh(self.client, self.tokens["refresh_token"], resource="https://x.example/mcp")
        self.assertOAuthError(response, body, 400, "invalid_target")
        response, body = self.refresh(self.client, self.tokens["refresh_token"], resource=RESOURCE)
        self.assertEqual(response.code, 200)

    def test_garbageAndExpired(self) -> None:
        """
        Malformed tokens and tokens past the refresh lifetime are
        invalid_grant.
        """
        response, body = self.refresh(self.client, "garbage")
        self.assertOAuthError(response, body, 400, "invalid_grant")
        self.clock.advance(self.config.refreshTokenLifetime)
        response, body = self.refresh(self.client, self.tokens["refresh_token"])
        self.assertOAuthError(response, body, 400, "invalid_grant")


class RevocationTests(OAuthTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.client = self.registerConfidential()
        self.tokens = self.obtainTokens(self.client)

    def revoke(self, client: Dict[str, Any], token: str, hint: str = "") -> Any:
        form = {"token": token}
        if hint:
            form["token_type_hint"] = hint
        response, body = self.request("POST", "/oauth/revoke", **self.clientAuth(client, form))
        return response, body

    def test_revokeRefreshKillsFamily(self) -> None:
        """
        Revoking a refresh token revokes the family (and its newest access
        token).
        """
        response, _ = self.revoke(self.client, self.tokens["refresh_token"], "refresh_token")
        self.assertEqual(response.code, 200)
        response, body = self.refresh(self.client, self.tokens["refresh_token"])
        self.assertOAuthError(response, body, 400, "invalid_grant")
        claims = self.oauth.tokens.verify(self.tokens["access_token"], now=self.clock.seconds())
        self.assertTrue(self.successResultOf(self.store.isRevoked(claims.jti, self.clock.seconds())))

    def test_revokeAccessToken(self) -> None:
        """
        Revoking an access token deny-lists its jti until it expires; the
        refresh token keeps working.
        """
        response, _ = self.revoke(self.client, self.tokens["access_token"], "access_token")
        self.assertEqual(response.code, 200)
        claims = self.oauth.tokens.verify(self.tokens["access_token"], now=self.clock.seconds())
        self.assertTrue(self.successResultOf(self.store.isRevoked(claims.jti, self.clock.seconds())))
        response, _ = self.refresh(self.client, self.tokens["refresh_token"])
        self.assertEqual(response.code, 200)

    def test_unknownTokenIs200(self) -> None:
        """
        Unknown tokens are 200 (RFC 7009), at C{/revoke} too.
        """
        for token in ("garbage", "a" * 22 + "." + "b" * 43):
            response, _ = self.revoke(self.client, token)
            self.assertEqual(response.code, 200)
        response, _ = self.request("POST", "/revoke", **self.clientAuth(self.client, {"token": "x"}))
        self.assertEqual(response.code, 200)

    def test_otherClientCannotRevoke(self) -> None:
        """
        Another client's revocation request answers 200 but revokes nothing.
        """
        other = self.registerConfidential()
        self.revoke(other, self.tokens["refresh_token"])
        response, _ = self.refresh(self.client, self.tokens["refresh_token"])
        self.assertEqual(response.code, 200)

    def test_requiresClientAuth(self) -> None:
        """
        Revocation without valid client credentials is 401 invalid_client.
        """
        response, body = self.revoke(dict(self.client, client_secret="wrong"), self.tokens["refresh_token"])
        self.assertOAuthError(response, body, 401, "invalid_client")
        response, body = self.request("POST", "/oauth/revoke", data={"token": "x"})
        self.assertOAuthError(response, body, 401, "invalid_client")


class IntrospectionTests(OAuthTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.client = self.registerConfidential()
        self.tokens = self.obtainTokens(self.client)

    def introspect(self, token: str, client: Any = None) -> Any:
        return self.request("POST", "/oauth/introspect", **self.clientAuth(client or self.client, {"token": token}))

    def test_activeAccessToken(self) -> None:
        """
        A valid access token is active, with its claims.
        """
        response, body = self.introspect(self.tokens["access_token"])
        self.assertEqual(response.code, 200)
        self.assertEqual(
            (body["active"], body["client_id"], body["aud"], body["token_type"]),
            (True, self.client["client_id"], RESOURCE, "Bearer"),
        )

    def test_activeRefreshToken(self) -> None:
        """
        A current refresh token is active for its own client.
        """
        _, body = self.introspect(self.tokens["refresh_token"])
        self.assertEqual((body["active"], body["token_type"]), (True, "refresh_token"))

    def test_inactive(self) -> None:
        """
        Garbage, expired and revoked tokens are C{active: false}.
        """
        _, body = self.introspect("garbage")
        self.assertEqual(body, {"active": False})
        self.request("POST", "/oauth/revoke", **self.clientAuth(self.client, {"token": self.tokens["access_token"]}))
        _, body = self.introspect(self.tokens["access_token"])
        self.assertEqual(body, {"active": False})
        self.clock.advance(4000)
        fresh = self.obtainTokens(self.client)
        self.clock.advance(4000)
        _, body = self.introspect(fresh["access_token"])
        self.assertEqual(body, {"active": False})

    def test_publicClientOnlyOwnTokens(self) -> None:
        """
        A public client, which proves nothing but its id, sees another
        client's access token as inactive; a confidential client sees it.
        """
        public = self.registerPublic()
        _, body = self.introspect(self.tokens["access_token"], public)
        self.assertEqual(body, {"active": False})
        other = self.registerConfidential()
        _, body = self.introspect(self.tokens["access_token"], other)
        self.assertTrue(body["active"])

    def test_requiresClientAuth(self) -> None:
        """
        Introspection needs client authentication.
        """
        response, body = self.request("POST", "/oauth/introspect", data={"token": "x"})
        self.assertOAuthError(response, body, 401, "invalid_client")


class RateLimitTests(OAuthTestCase):
    def test_registerPerAddress(self) -> None:
        """
        Registrations beyond the limit are 429 with Retry-After; the bucket
        refills with time.
        """
        self.configure(makeConfig(rateLimitRegister=RateLimit(count=2, seconds=60)))
        self.register({"redirect_uris": [SNOW]})
        self.register({"redirect_uris": [SNOW]})
        response, body = self.request("POST", "/oauth/register", json={"redirect_uris": [SNOW]},
                                      headers={"Authorization": IAT})
        self.assertEqual(response.code, 429)
        self.assertEqual(self.header(response, "retry-after"), "30")
        self.clock.advance(30)
        self.register({"redirect_uris": [SNOW]})

    def test_tokenPerAddress(self) -> None:
        """
        Token requests beyond the per-address limit are 429.
        """
        self.configure(makeConfig(rateLimitToken=RateLimit(count=3, seconds=300)))
        client = self.registerConfidential()
        form = {"grant_type": "refresh_token", "refresh_token": "x"}
        codes = [self.tokenRequest(client, form)[0].code for _ in range(4)]
        self.assertEqual(codes, [400, 400, 400, 429])

    def test_tokenPerClient(self) -> None:
        """
        Token requests are also limited per client: an exhausted client
        bucket is 429 while the address bucket is full.
        """
        self.configure(makeConfig(rateLimitToken=RateLimit(count=3, seconds=300)))
        client = self.registerConfidential()
        for _ in range(3):
            self.successResultOf(self.store.takeToken(
                "token:client:" + client["client_id"], 3, 0.01, self.clock.seconds()))
        form = {"grant_type": "refresh_token", "refresh_token": "x"}
        response, _ = self.tokenRequest(client, form)
        self.assertEqual(response.code, 429)
        self.assertIsNotNone(self.header(response, "retry-after"))

    def test_authorizeAndRevoke(self) -> None:
        """
        The authorization and revocation endpoints are limited too.
        """
        self.configure(makeConfig(rateLimitAuthorize=RateLimit(count=1, seconds=60),
                                  rateLimitRevoke=RateLimit(count=1, seconds=60)))
        client = self.registerConfidential()
        self.assertEqual(self.authorize(client)[0].code, 302)
        self.assertEqual(self.authorize(client)[0].code, 429)
        auth = self.clientAuth(client, {"token": "x"})
        self.assertEqual(self.request("POST", "/oauth/revoke", **auth)[0].code, 200)
        self.assertEqual(self.request("POST", "/oauth/revoke", **auth)[0].code, 429)


class CanonicalURLTests(OAuthTestCase):
    def test_canonical(self) -> None:
        """
        Scheme and host case, default ports and trailing slashes do not
        matter.
        """
        self.assertEqual(canonicalURL("HTTPS://Mcp.Example.com:443/mcp/"), "https://mcp.example.com/mcp")
        self.assertNotEqual(canonicalURL("https://mcp.example.com/MCP"), canonicalURL(RESOURCE))


class NoSecretsInLogsTests(OAuthTestCase):
    def test_flowLogsNoSecrets(self) -> None:
        """
        Registration, authorization, token, refresh, failed authentication
        and revocation log events (and audit events) that contain no
        initial access token, client secret, code or token.
        """
        from twisted.logger import capturedLogs, formatEvent

        with capturedLogs() as events:
            client = self.registerConfidential()
            code = self.getCode(client)
            _, tokens = self.exchange(client, code)
            _, refreshed = self.refresh(client, tokens["refresh_token"])
            self.exchange(client, code)  # replay
            self.exchange(dict(client, client_secret="wrong-secret-value"), "bad")
            self.request("POST", "/oauth/register", json={"redirect_uris": [SNOW]},
                         headers={"Authorization": "Bearer wrong-initial-access-token"})
            self.request("POST", "/oauth/revoke",
                         **self.clientAuth(client, {"token": refreshed["refresh_token"]}))
        self.assertTrue(any(e.get("action") == "token.issue" for e in events))
        secrets = [IAT, "wrong-initial-access-token", client["client_secret"], "wrong-secret-value",
                   code, tokens["access_token"], tokens["refresh_token"],
                   refreshed["access_token"], refreshed["refresh_token"]]
        for event in events:
            text = formatEvent(event) + repr(event)
            for secret in secrets:
                self.assertNotIn(secret, text, event.get("log_format"))
