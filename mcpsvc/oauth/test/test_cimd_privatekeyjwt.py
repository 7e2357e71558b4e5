"""
Client ID Metadata Documents and C{private_key_jwt} together: a client
known only by the URL of its document, which declares
C{token_endpoint_auth_method: private_key_jwt} with inline C{jwks} or a
C{jwks_uri}, authenticates at the token, revocation and introspection
endpoints with client assertions; keys follow the document (and the key
set) once their cache lifetimes end; the rules for confidential,
self-asserted clients (introspection, C{client_credentials}) hold.

Everything is fetched through the real L{mcpsvc.oauth.fetch.SafeFetcher}
over a scripted agent (L{mcpsvc.oauth.test.fakehttp}), on a L{Clock}.
"""

from __future__ import annotations

from typing import Any, Dict, Tuple

from mcpsvc.oauth.test.fakehttp import document
from mcpsvc.oauth.test.helpers import SERVER, OAuthTestCase, basic
from mcpsvc.oauth.test.test_cimd import URL, WEB_REDIRECT, DocumentMixin, Events, clientDocument
from mcpsvc.storage.interfaces import NoSuchClient
from mcpsvc.testing.clientkeys import JWT_BEARER, ClientKey

JWKS_URL = "https://app.example.com/oauth/jwks.json"


class KeyDocumentTestCase(DocumentMixin, OAuthTestCase):
    """
    A document client with C{private_key_jwt}: every token, revocation and
    introspection request carries a fresh assertion signed with
    C{self.key}.
    """

    def setUp(self) -> None:
        super().setUp()
        self.configure(self.config.replace(cimdCacheMinSeconds=0, clientJWKSCacheSeconds=60))
        self.key = ClientKey("ES256", kid="k1")
        self.client = clientDocument(token_endpoint_auth_method="private_key_jwt")
        self.events = Events(self)

    def publish(self, maxAge: int = 300, **changes: Any) -> None:
        """
        Serve the client's document with inline keys (C{self.key} unless
        C{jwks} or C{jwks_uri} is given).
        """
        if "jwks_uri" not in changes:
            changes.setdefault("jwks", self.key.jwks())
        body = clientDocument(token_endpoint_auth_method="private_key_jwt", **changes)
        self.agent.serve(URL, document(body, Cache_Control=f"max-age={maxAge}"))

    def assertionForm(self, key: Any = None, aud: str = SERVER, **claims: Any) -> Dict[str, str]:
        return {
            "client_assertion_type": JWT_BEARER,
            "client_assertion": (key or self.key).assertion(
                URL, aud=aud, now=self.clock.seconds(), **claims),
        }

    def clientAuth(self, client: Dict[str, Any], form: Dict[str, str]) -> Dict[str, Any]:
        if client["client_id"] != URL:
            return super().clientAuth(client, form)
        return {"data": dict(form, **self.assertionForm(getattr(self, "signingKey", None)))}

    def post(self, path: str, form: Dict[str, str], key: Any = None) -> Tuple[Any, Any]:
        return self.request("POST", path, data=dict(form, **self.assertionForm(
            key, aud=SERVER + path)))

    def failedReasons(self) -> list:
        return [e.get("reason") for e in self.events.audits("client.auth_failed")]


class InlineKeysTests(KeyDocumentTestCase):
    def test_codeRefreshIntrospectRevoke(self) -> None:
        """
        Authorization code with PKCE, exchanged with an assertion (no
        client_id in the form); a refresh with a new assertion; the client
        introspects and revokes its tokens; nothing holds a secret.
        """
        self.publish()
        tokens = self.obtainTokens(self.client)
        claims = self.oauth.tokens.verify(tokens["access_token"], now=self.clock.seconds())
        self.assertEqual(claims.clientID, URL)
        response, refreshed = self.refresh(self.client, tokens["refresh_token"])
        self.assertEqual(response.code, 200, refreshed)
        response, body = self.post("/oauth/introspect", {"token": refreshed["access_token"]})
        self.assertEqual((response.code, body["active"], body["client_id"]), (200, True, URL))
        response, _ = self.post("/oauth/revoke", {"token": refreshed["refresh_token"]})
        self.assertEqual(response.code, 200)
        response, body = self.refresh(self.client, refreshed["refresh_token"])
        self.assertOAuthError(response, body, 400, "invalid_grant")
        record = self.successResultOf(self.store.getClient(URL))
        self.assertIsNone(record.secretHash)
        self.assertEqual(record.jwks, self.key.jwks())
        self.assertEqual(self.agent.count(URL), 1, "fresh for 300 seconds")

    def test_replayRefused(self) -> None:
        """
        An assertion presented twice is refused the second time
        (C{invalid_client}, audited as a replay).
        """
        self.publish()
        code = self.getCode(self.client)
        form = {"grant_type": "authorization_code", "code": code,
                "redirect_uri": WEB_REDIRECT, "code_verifier": "v" * 43 + "-._~0123456789",
                **self.assertionForm()}
        response, body = self.request("POST", "/oauth/token", data=form)
        self.assertEqual(response.code, 200, body)
        response, body = self.request("POST", "/oauth/token", data=dict(
            form, grant_type="refresh_token", refresh_token=body["refresh_token"]))
        self.assertOAuthError(response, body, 401, "invalid_client")
        self.assertIn("used already", body["error_description"])
        self.assertTrue(self.events.audits("client.assertion_replay"))

    def test_clientIDAloneOrWrongKeyRefused(self) -> None:
        """
        The client id alone, or an assertion signed by another key under
        the same C{kid}, is C{invalid_client}.
        """
        self.publish()
        code = self.getCode(self.client)
        response, body = self.request("POST", "/oauth/token", data={
            "grant_type": "authorization_code", "code": code, "client_id": URL,
            "code_verifier": "v" * 43 + "-._~0123456789", "redirect_uri": WEB_REDIRECT})
        self.assertOAuthError(response, body, 401, "invalid_client")
        self.signingKey = ClientKey("ES256", kid="k1")
        response, body = self.exchange(self.client, code)
        self.assertOAuthError(response, body, 401, "invalid_client")

    def test_firstContactAtTheTokenEndpoint(self) -> None:
        """
        An assertion from a document client this server has never seen
        (no authorization request before) resolves its document there; an
        unusable document is C{invalid_client} naming it.
        """
        self.publish()
        self.failureResultOf(self.store.getClient(URL), NoSuchClient)
        response, body = self.post("/oauth/introspect", {"token": "x"})
        self.assertEqual((response.code, body["active"]), (200, False))
        self.successResultOf(self.store.getClient(URL))
        self.clock.advance(300)
        self.agent.serve(URL, document({}, code=404))
        response, body = self.post("/oauth/introspect", {"token": "x"})
        self.assertOAuthError(response, body, 401, "invalid_client")
        self.assertIn("cannot be fetched", body["error_description"])
        self.assertTrue(any("metadata document" in (r or "") for r in self.failedReasons()))

    def test_rotatedKeyAfterDocumentLifetime(self) -> None:
        """
        The document replaces its key (new C{kid}): until its cache
        lifetime ends the stored copy's key is used (the new key is
        refused); then the new document applies: the new key works, the
        old key is refused.
        """
        self.publish(maxAge=300)
        tokens = self.obtainTokens(self.client)
        newKey = ClientKey("ES256", kid="k2")
        self.publish(maxAge=300, jwks=newKey.jwks())
        self.clock.advance(299)
        response, body = self.refresh(self.client, tokens["refresh_token"])
        self.assertEqual(response.code, 200, body)
        tokens = body
        self.signingKey = newKey
        response, body = self.refresh(self.client, tokens["refresh_token"])
        self.assertOAuthError(response, body, 401, "invalid_client")
        self.clock.advance(1)
        response, body = self.refresh(self.client, tokens["refresh_token"])
        self.assertEqual(response.code, 200, body)
        self.signingKey = self.key
        response, body = self.refresh(self.client, body["refresh_token"])
        self.assertOAuthError(response, body, 401, "invalid_client")
        self.assertEqual(self.agent.count(URL), 2)

    def test_selfAssertedRules(self) -> None:
        """
        Confidential, but self-asserted: the document's
        C{client_credentials} is not granted; another client's access
        token introspects as inactive (a registered confidential client
        may introspect it).
        """
        self.publish(grant_types=["authorization_code", "refresh_token", "client_credentials"])
        response, body = self.post("/oauth/token", {"grant_type": "client_credentials"})
        self.assertOAuthError(response, body, 400, "unauthorized_client")
        other = self.registerConfidential()
        theirs = self.obtainTokens(other)
        response, body = self.post("/oauth/introspect", {"token": theirs["access_token"]})
        self.assertEqual((response.code, body), (200, {"active": False}))
        response, body = self.request(
            "POST", "/oauth/introspect", data={"token": self.obtainTokens(self.client)["access_token"]},
            headers={"Authorization": basic(other["client_id"], other["client_secret"])})
        self.assertEqual((response.code, body["active"]), (200, True))

    def test_documentRefusedWhenPrivateKeyJWTOff(self) -> None:
        """
        With C{PRIVATE_KEY_JWT=off} a document naming C{private_key_jwt} is
        refused at the authorization endpoint already (it could never
        authenticate).
        """
        self.configure(self.config.replace(privateKeyJWT=False))
        self.publish()
        response, body = self.authorize(self.client)
        self.assertOAuthError(response, body, 400, "invalid_client")
        self.assertIn("private_key_jwt", body["error_description"])


class JWKSURITests(KeyDocumentTestCase):
    def test_codeRefreshWithKeysFromJWKSURI(self) -> None:
        """
        The document names a C{jwks_uri} on its own host: the keys are
        fetched through the same safe fetcher, once, and cached.
        """
        self.publish(jwks_uri=JWKS_URL)
        self.agent.serve(JWKS_URL, document(self.key.jwks()))
        tokens = self.obtainTokens(self.client)
        response, body = self.refresh(self.client, tokens["refresh_token"])
        self.assertEqual(response.code, 200, body)
        response, body = self.post("/oauth/introspect", {"token": body["access_token"]})
        self.assertEqual(body["active"], True)
        self.assertEqual(self.agent.count(JWKS_URL), 1)

    def test_rotatedSetAfterItsLifetime(self) -> None:
        """
        The set at the C{jwks_uri} replaces its key: the cached set is used
        for C{CLIENT_JWKS_CACHE_SECONDS}; then the new key works and the
        old one is refused.
        """
        self.publish(jwks_uri=JWKS_URL, maxAge=3600)
        self.agent.serve(JWKS_URL, document(self.key.jwks()))
        tokens = self.obtainTokens(self.client)
        newKey = ClientKey("ES256", kid="k2")
        self.agent.serve(JWKS_URL, document(newKey.jwks()))
        self.clock.advance(59)
        response, body = self.refresh(self.client, tokens["refresh_token"])
        self.assertEqual(response.code, 200, body)
        self.clock.advance(1)
        response, refused = self.refresh(self.client, body["refresh_token"])
        self.assertOAuthError(response, refused, 401, "invalid_client")
        self.signingKey = newKey
        response, body = self.refresh(self.client, body["refresh_token"])
        self.assertEqual(response.code, 200, body)

    def test_documentMovesItsJWKSURI(self) -> None:
        """
        A document that names a new C{jwks_uri} (holding a new key) applies
        once the document's lifetime ends: the old key is refused at once
        then, however long the old set was to be cached.
        """
        self.configure(self.config.replace(clientJWKSCacheSeconds=3600))
        self.publish(jwks_uri=JWKS_URL, maxAge=60)
        self.agent.serve(JWKS_URL, document(self.key.jwks()))
        tokens = self.obtainTokens(self.client)
        newKey = ClientKey("ES256", kid="k2")
        newURL = "https://app.example.com/oauth/jwks-2.json"
        self.agent.serve(newURL, document(newKey.jwks()))
        self.publish(jwks_uri=newURL, maxAge=60)
        self.clock.advance(60)
        response, body = self.refresh(self.client, tokens["refresh_token"])
        self.assertOAuthError(response, body, 401, "invalid_client")
        self.signingKey = newKey
        response, body = self.refresh(self.client, tokens["refresh_token"])
        self.assertEqual(response.code, 200, body)

    def test_jwksURIRefusedLikeTheDocument(self) -> None:
        """
        In production the key set URL obeys the fetcher's rules too: a
        C{jwks_uri} on a denied host is refused (C{invalid_client}) and
        never fetched.
        """
        self.configure(self.config.replace(cimdDeniedHosts=("keys.example.net",)))
        badURL = "https://keys.example.net/jwks.json"
        self.publish(jwks_uri=badURL)
        self.agent.serve(badURL, document(self.key.jwks()))
        code = self.getCode(self.client)
        response, body = self.exchange(self.client, code)
        self.assertOAuthError(response, body, 401, "invalid_client")
        self.assertEqual(self.agent.count(badURL), 0)
        self.flushLoggedErrors()
