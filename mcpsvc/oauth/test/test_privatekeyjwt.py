"""
C{private_key_jwt} at the authorization server's endpoints: registration,
metadata, the token, revocation and introspection endpoints, refusals.
"""

from __future__ import annotations

from typing import Any, Dict, List, Tuple

from treq.testing import StubTreq
from twisted.internet.defer import Deferred, fail

from mcpsvc.config import Config
from mcpsvc.oauth import buildOAuth
from mcpsvc.oauth.admin import AdminError, addClient, rotateSecret
from mcpsvc.oauth.test.helpers import IAT, SERVER, SNOW, OAuthTestCase, makeConfig
from mcpsvc.oauth.test.test_clientkeys import FakeFetcher
from mcpsvc.oauth.test.test_grants import AuditCapture
from mcpsvc.storage.interfaces import StoreUnavailable
from mcpsvc.testing.clientkeys import JWT_BEARER, ClientKey

JWKS_URL = "https://client.example.com/jwks.json"


class PrivateKeyJWTTestCase(OAuthTestCase):
    def setUp(self) -> None:
        self.fetch = FakeFetcher()
        super().setUp()
        self.audits = AuditCapture(self)
        self.key = ClientKey("ES256", kid="k1")

    def configure(self, config: Config) -> None:
        self.config = config
        self.oauth, self.bearer = buildOAuth(
            config, store=self.store, clock=self.clock, fetchJSON=self.fetch
        )
        self.stub = StubTreq(self.oauth.resource())

    def registerKeyClient(self, **extra: Any) -> Dict[str, Any]:
        metadata: Dict[str, Any] = {
            "client_name": "agent",
            "redirect_uris": [SNOW],
            "token_endpoint_auth_method": "private_key_jwt",
            "grant_types": ["authorization_code", "refresh_token", "client_credentials"],
            "jwks": self.key.jwks(),
        }
        metadata.update(extra)
        return self.register({k: v for k, v in metadata.items() if v is not None})

    def assertionForm(self, client: Dict[str, Any], aud: Any = SERVER, **claims: Any) -> Dict[str, str]:
        return {
            "client_assertion_type": JWT_BEARER,
            "client_assertion": self.key.assertion(
                client["client_id"], aud=aud, now=self.clock.seconds(), **claims),
        }

    def clientAuth(self, client: Dict[str, Any], form: Dict[str, str]) -> Dict[str, Any]:
        if client["token_endpoint_auth_method"] == "private_key_jwt":
            return {"data": dict(form, **self.assertionForm(client))}
        return super().clientAuth(client, form)

    def post(self, path: str, form: Dict[str, str], **kw: Any) -> Tuple[Any, Any]:
        return self.request("POST", path, data=form, **kw)

    def failedReasons(self) -> list:
        return [e.get("reason") for e in self.audits.of("client.auth_failed")]


class RegistrationTests(PrivateKeyJWTTestCase):
    def test_registerWithJWKS(self) -> None:
        """
        Dynamic registration accepts C{private_key_jwt} with inline public
        keys: no secret is issued, the keys are echoed and kept.
        """
        body = self.registerKeyClient()
        self.assertEqual(body["token_endpoint_auth_method"], "private_key_jwt")
        self.assertNotIn("client_secret", body)
        self.assertEqual(body["jwks"], self.key.jwks())
        record = self.successResultOf(self.store.getClient(body["client_id"]))
        self.assertIsNone(record.secretHash)
        self.assertEqual(record.jwks, self.key.jwks())
        self.assertIsNone(record.jwksURI)

    def test_registerWithJWKSURI(self) -> None:
        """
        Or with a C{jwks_uri}.
        """
        body = self.registerKeyClient(jwks=None, jwks_uri=JWKS_URL)
        record = self.successResultOf(self.store.getClient(body["client_id"]))
        self.assertEqual((record.jwksURI, record.jwks), (JWKS_URL, None))

    def test_registrationRefusals(self) -> None:
        """
        Both C{jwks} and C{jwks_uri}, a private key, a non-https
        C{jwks_uri}: 400 invalid_client_metadata saying why.
        """
        for extra, fragment in (
            ({"jwks_uri": JWKS_URL}, "must not both"),
            ({"jwks": {"keys": [self.key.privateJWK()]}}, "private members"),
            ({"jwks": None, "jwks_uri": "http://client.example.com/jwks"}, "https"),
            ({"jwks": None, "jwks_uri": "https://user:pw@client.example.com/jwks"}, "credentials"),
            ({"jwks": None, "jwks_uri": "/jwks"}, "absolute"),
            ({"jwks": None}, "requires jwks or jwks_uri"),
        ):
            metadata = {
                "redirect_uris": [SNOW], "token_endpoint_auth_method": "private_key_jwt",
                "jwks": self.key.jwks(),
            }
            metadata.update(extra)
            response, body = self.request(
                "POST", "/oauth/register", json={k: v for k, v in metadata.items() if v is not None},
                headers={"Authorization": "Bearer " + IAT},
            )
            self.assertOAuthError(response, body, 400, "invalid_client_metadata")
            self.assertIn(fragment, body["error_description"])

    def test_secretClientsUnchanged(self) -> None:
        """
        A client_secret_basic registration still gets a secret, and keys
        sent along are not kept.
        """
        body = self.registerConfidential(jwks=self.key.jwks())
        self.assertIn("client_secret", body)
        self.assertNotIn("jwks", body)

    def test_adminAddClient(self) -> None:
        """
        C{mcpsvc clients add --auth-method private_key_jwt} registers a
        client with keys and no secret; it has no secret to rotate.
        """
        record, secret = self.successResultOf(Deferred.fromCoroutine(addClient(
            self.store, self.clock.seconds(), "agent", [SNOW], authMethod="private_key_jwt",
            jwks=self.key.jwks(),
        )))
        self.assertIsNone(secret)
        self.assertEqual(record.jwks, self.key.jwks())
        failure = self.failureResultOf(
            Deferred.fromCoroutine(rotateSecret(self.store, record.clientID)), AdminError)
        self.assertIn("private_key_jwt", str(failure.value))
        failure = self.failureResultOf(Deferred.fromCoroutine(addClient(
            self.store, self.clock.seconds(), "agent", [SNOW], authMethod="private_key_jwt",
        )), AdminError)
        self.assertIn("jwks", str(failure.value))
        failure = self.failureResultOf(Deferred.fromCoroutine(addClient(
            self.store, self.clock.seconds(), "agent", [SNOW], authMethod="private_key_jwt",
            jwks=self.key.jwks(), privateKeyJWT=False,
        )), AdminError)
        self.assertIn("not supported", str(failure.value))


class MetadataTests(PrivateKeyJWTTestCase):
    def test_advertised(self) -> None:
        """
        The metadata lists private_key_jwt and its signing algorithms for
        the token, revocation and introspection endpoints.
        """
        _, body = self.request("GET", "/.well-known/oauth-authorization-server")
        for prefix in ("token_endpoint", "revocation_endpoint", "introspection_endpoint"):
            self.assertIn("private_key_jwt", body[prefix + "_auth_methods_supported"])
            self.assertIn("client_secret_basic", body[prefix + "_auth_methods_supported"])
            self.assertEqual(body[prefix + "_auth_signing_alg_values_supported"],
                             ["RS256", "PS256", "ES256", "EdDSA"])

    def test_off(self) -> None:
        """
        With C{PRIVATE_KEY_JWT=off}: not advertised, not registrable, and
        an assertion from a client registered before is refused.
        """
        client = self.registerKeyClient()
        self.configure(makeConfig(privateKeyJWT=False))
        _, body = self.request("GET", "/.well-known/oauth-authorization-server")
        self.assertNotIn("private_key_jwt", body["token_endpoint_auth_methods_supported"])
        self.assertNotIn("token_endpoint_auth_signing_alg_values_supported", body)
        response, body = self.request(
            "POST", "/oauth/register", headers={"Authorization": "Bearer " + IAT},
            json={"redirect_uris": [SNOW], "token_endpoint_auth_method": "private_key_jwt",
                  "jwks": self.key.jwks()},
        )
        self.assertOAuthError(response, body, 400, "invalid_client_metadata")
        response, body = self.post("/oauth/token", dict(
            self.assertionForm(client), grant_type="client_credentials"))
        self.assertOAuthError(response, body, 401, "invalid_client")
        self.assertIn("private_key_jwt is off", self.failedReasons())


class EndpointTests(PrivateKeyJWTTestCase):
    def test_authorizationCodeRefreshRevoke(self) -> None:
        """
        A private_key_jwt client exchanges a code (PKCE), refreshes,
        introspects and revokes, each request with a fresh assertion.
        """
        client = self.registerKeyClient()
        tokens = self.obtainTokens(client)
        response, refreshed = self.refresh(client, tokens["refresh_token"])
        self.assertEqual(response.code, 200, refreshed)
        form = dict(self.assertionForm(client, aud=SERVER + "/oauth/introspect"),
                    token=refreshed["access_token"])
        response, body = self.post("/oauth/introspect", form)
        self.assertEqual((response.code, body["active"], body["client_id"]),
                         (200, True, client["client_id"]))
        form = dict(self.assertionForm(client, aud=SERVER + "/oauth/revoke"),
                    token=refreshed["refresh_token"])
        response, _ = self.post("/oauth/revoke", form)
        self.assertEqual(response.code, 200)
        response, body = self.refresh(client, refreshed["refresh_token"])
        self.assertOAuthError(response, body, 400, "invalid_grant")

    def test_clientCredentials(self) -> None:
        """
        A private_key_jwt client is confidential: it may use the
        client_credentials grant, with no client_id in the form (RFC 7523
        section 3), at the un-prefixed alias with that alias as C{aud}.
        """
        client = self.registerKeyClient()
        response, body = self.post("/token", dict(
            self.assertionForm(client, aud=SERVER + "/token"), grant_type="client_credentials"))
        self.assertEqual(response.code, 200, body)
        claims = self.oauth.tokens.verify(body["access_token"], now=self.clock.seconds())
        self.assertEqual(claims.subject, client["client_id"])

    def test_introspectAnyToken(self) -> None:
        """
        Like a secret client, a private_key_jwt client (a resource server)
        may introspect another client's access token.
        """
        other = self.registerConfidential()
        tokens = self.obtainTokens(other)
        client = self.registerKeyClient()
        response, body = self.post("/oauth/introspect", dict(
            self.assertionForm(client), token=tokens["access_token"]))
        self.assertEqual((response.code, body["active"]), (200, True))

    def test_replayRefused(self) -> None:
        """
        An assertion is used once: the same one again is 401 invalid_client,
        with an audit event; a fresh one works.
        """
        client = self.registerKeyClient()
        form = dict(self.assertionForm(client), grant_type="client_credentials")
        response, _ = self.post("/oauth/token", form)
        self.assertEqual(response.code, 200)
        response, body = self.post("/oauth/token", form)
        self.assertOAuthError(response, body, 401, "invalid_client")
        self.assertIn("used already", body["error_description"])
        [event] = self.audits.of("client.assertion_replay")
        self.assertEqual(event["clientID"], client["client_id"])
        response, _ = self.post("/oauth/introspect", dict(form, token="x"))
        self.assertEqual(response.code, 401)
        response, _ = self.post("/oauth/token", dict(
            self.assertionForm(client), grant_type="client_credentials"))
        self.assertEqual(response.code, 200)

    def test_badAssertions(self) -> None:
        """
        Bad assertions are 401 invalid_client (never 500), each with a
        log line and a C{client.auth_failed} audit event naming why.
        """
        client = self.registerKeyClient()
        now = self.clock.seconds()
        impostor = ClientKey("ES256", kid="k1")
        cases = [
            (self.assertionForm(client, aud="https://elsewhere.example"), "aud is not this server"),
            (self.assertionForm(client, aud=SERVER + "/oauth/revoke"), "aud is not this server"),
            (self.assertionForm(client, lifetime=3600), "exp too far ahead"),
            ({"client_assertion_type": JWT_BEARER, "client_assertion": impostor.assertion(
                client["client_id"], aud=SERVER, now=now)}, "bad signature"),
            ({"client_assertion_type": JWT_BEARER, "client_assertion": "not.a.jwt"}, "not a JWT"),
            ({"client_assertion": self.assertionForm(client)["client_assertion"]}, "not jwt-bearer"),
            ({"client_assertion_type": JWT_BEARER}, "no client_assertion"),
            ({"client_assertion_type": JWT_BEARER, "client_assertion": self.key.assertion(
                "nobody", aud=SERVER, now=now)}, "unknown client"),
            (dict(self.assertionForm(client), client_id="other"), "client_id differs"),
        ]
        for form, reason in cases:
            response, body = self.post("/oauth/token", dict(form, grant_type="client_credentials"))
            self.assertOAuthError(response, body, 401, "invalid_client")
            self.assertIn(reason, self.failedReasons()[-1])
        self.assertEqual(len(self.failedReasons()), len(cases))

    def test_headerKeysIgnored(self) -> None:
        """
        C{jwk}, C{jku} and C{x5u} in an assertion's header are never used
        nor fetched: an impostor's assertion carrying its own key is
        refused; the client's own assertion carrying them is verified with
        the registered key alone.
        """
        client = self.registerKeyClient()
        now = self.clock.seconds()
        impostor = ClientKey("ES256", kid="k1")
        for header in ({"jwk": impostor.publicJWK()}, {"jku": "https://127.0.0.1:9/jwks"},
                       {"x5u": "https://127.0.0.1:9/cert"}):
            forged = impostor.assertion(client["client_id"], aud=SERVER, now=now, headers=header)
            response, body = self.post("/oauth/token", {
                "client_assertion_type": JWT_BEARER, "client_assertion": forged,
                "grant_type": "client_credentials"})
            self.assertOAuthError(response, body, 401, "invalid_client")
            own = self.key.assertion(client["client_id"], aud=SERVER, now=now, headers=header)
            response, body = self.post("/oauth/token", {
                "client_assertion_type": JWT_BEARER, "client_assertion": own,
                "grant_type": "client_credentials"})
            self.assertEqual(response.code, 200, body)
        self.assertEqual(self.fetch.calls, [])

    def test_audienceTricks(self) -> None:
        """
        C{aud} must name this server: the issuer (with or without one
        trailing slash) or the endpoint called. A list with one value that
        is not, another endpoint's URL, a prefix, or several trailing
        slashes are refused.
        """
        client = self.registerKeyClient()
        for aud in (SERVER + "/", [SERVER, SERVER + "/oauth/token"]):
            response, body = self.post("/oauth/token", dict(
                self.assertionForm(client, aud=aud), grant_type="client_credentials"))
            self.assertEqual(response.code, 200, (aud, body))
        for aud in ([SERVER, "https://elsewhere.example"], SERVER + "/oauth/introspect",
                    SERVER + "//", SERVER + "/oauth", SERVER + ".evil",
                    SERVER.upper(), [], [SERVER, 7]):
            response, body = self.post("/oauth/token", dict(
                self.assertionForm(client, aud=aud), grant_type="client_credentials"))
            self.assertOAuthError(response, body, 401, "invalid_client")

    def test_replayAcrossEndpoints(self) -> None:
        """
        An assertion addressed to the issuer and used at the token endpoint
        is refused at the introspection and revocation endpoints (one use,
        whatever the endpoint).
        """
        client = self.registerKeyClient()
        form = self.assertionForm(client)
        response, _ = self.post("/oauth/token", dict(form, grant_type="client_credentials"))
        self.assertEqual(response.code, 200)
        for path in ("/oauth/introspect", "/oauth/revoke", "/revoke"):
            response, body = self.post(path, dict(form, token="x"))
            self.assertOAuthError(response, body, 401, "invalid_client")
        self.assertEqual(len(self.audits.of("client.assertion_replay")), 3)

    def test_usedWhenTheGrantFails(self) -> None:
        """
        An assertion is used up once it authenticated the client, even when
        the request fails afterwards (here: an unknown grant type, a scope
        the client may not have): retrying with it is a replay. One refused
        before it was verified (a bad signature, a wrong C{aud}) uses
        nothing up: the client's genuine assertion with that C{jti} still
        works.
        """
        client = self.registerKeyClient()
        form = self.assertionForm(client, jti="once")
        response, body = self.post("/oauth/token", dict(form, grant_type="password"))
        self.assertOAuthError(response, body, 400, "unsupported_grant_type")
        response, body = self.post("/oauth/token", dict(form, grant_type="client_credentials"))
        self.assertOAuthError(response, body, 401, "invalid_client")
        self.assertIn("used already", body["error_description"])
        impostor = ClientKey("ES256", kid="k1")
        forged = impostor.assertion(client["client_id"], aud=SERVER, now=self.clock.seconds(),
                                    jti="twice")
        response, _ = self.post("/oauth/token", {
            "client_assertion_type": JWT_BEARER, "client_assertion": forged,
            "grant_type": "client_credentials"})
        self.assertEqual(response.code, 401)
        response, _ = self.post("/oauth/token", dict(
            self.assertionForm(client, aud="https://elsewhere.example", jti="twice"),
            grant_type="client_credentials"))
        self.assertEqual(response.code, 401)
        response, body = self.post("/oauth/token", dict(
            self.assertionForm(client, jti="twice"), grant_type="client_credentials"))
        self.assertEqual(response.code, 200, body)

    def test_failuresRateLimited(self) -> None:
        """
        Failed assertion authentication counts against the endpoint's
        per-address limit (taken before the client is known): past it, 429.
        """
        from mcpsvc.config import RateLimit

        self.configure(self.config.replace(rateLimitToken=RateLimit(count=3, seconds=60)))
        client = self.registerKeyClient()
        impostor = ClientKey("ES256", kid="k1")
        codes = []
        for _ in range(5):
            forged = impostor.assertion(client["client_id"], aud=SERVER, now=self.clock.seconds())
            response, _ = self.post("/oauth/token", {
                "client_assertion_type": JWT_BEARER, "client_assertion": forged,
                "grant_type": "client_credentials"})
            codes.append(response.code)
        self.assertEqual(codes, [401, 401, 401, 429, 429])

    def test_nothingSecretLogged(self) -> None:
        """
        Neither the assertion (nor its signature, nor its claims as a
        whole) nor key material reaches the log or the audit trail, on
        success, refusal or replay.
        """
        from twisted.logger import capturedLogs, formatEvent

        client = self.registerKeyClient()
        form = dict(self.assertionForm(client, aud="https://elsewhere.example"),
                    grant_type="client_credentials")
        good = dict(self.assertionForm(client), grant_type="client_credentials")
        with capturedLogs() as events:
            self.post("/oauth/token", form)
            self.post("/oauth/token", good)
            self.post("/oauth/token", good)
        text = "\n".join(formatEvent(e) + repr(e) for e in events)
        self.assertTrue(events)
        for secret in (form["client_assertion"], good["client_assertion"],
                       good["client_assertion"].split(".")[2], good["client_assertion"].split(".")[1],
                       self.key.privateJWK().get("d", "-"), self.key.publicJWK().get("x", "-")):
            self.assertNotIn(secret, text)

    def test_hugeTimeClaims(self) -> None:
        """
        An assertion whose C{exp}, C{nbf} or C{iat} is an integer too large
        for a float is 401 invalid_client, not a 500.
        """
        client = self.registerKeyClient()
        for claim in ("exp", "nbf", "iat"):
            response, body = self.post("/oauth/token", dict(
                self.assertionForm(client, **{claim: 10 ** 400}), grant_type="client_credentials"))
            self.assertOAuthError(response, body, 401, "invalid_client")

    def test_methodMismatch(self) -> None:
        """
        A private_key_jwt client sending a secret or nothing is refused; a
        secret client sending an assertion is refused; an assertion with
        Basic credentials or a secret is invalid_request.
        """
        client = self.registerKeyClient()
        response, body = self.post("/oauth/token", {"grant_type": "client_credentials",
                                                   "client_id": client["client_id"]})
        self.assertOAuthError(response, body, 401, "invalid_client")
        self.assertIn("private_key_jwt", body["error_description"])
        response, body = self.post("/oauth/token", {
            "grant_type": "client_credentials", "client_id": client["client_id"],
            "client_secret": "guess"})
        self.assertOAuthError(response, body, 401, "invalid_client")
        secretClient = self.registerConfidential(grant_types=["client_credentials"], redirect_uris=[])
        response, body = self.post("/oauth/token", dict(
            self.assertionForm(secretClient), grant_type="client_credentials"))
        self.assertOAuthError(response, body, 401, "invalid_client")
        self.assertIn("client_secret_basic", body["error_description"])
        response, body = self.post("/oauth/token", dict(
            self.assertionForm(client), grant_type="client_credentials", client_secret="x"))
        self.assertOAuthError(response, body, 400, "invalid_request")
        response, body = self.post(
            "/oauth/token", dict(self.assertionForm(client), grant_type="client_credentials"),
            headers={"Authorization": "Basic eDp5"})
        self.assertOAuthError(response, body, 400, "invalid_request")

    def test_storeUnavailable(self) -> None:
        """
        When the store cannot record the assertion id, the request fails
        closed: 503.
        """
        client = self.registerKeyClient()
        self.patch(self.store, "useAssertionID",
                   lambda *a: fail(StoreUnavailable("down")))
        response, body = self.post("/oauth/token", dict(
            self.assertionForm(client), grant_type="client_credentials"))
        self.assertEqual(response.code, 503, body)
        self.flushLoggedErrors()


class JWKSURITests(PrivateKeyJWTTestCase):
    def test_keysFetched(self) -> None:
        """
        A client registered with a C{jwks_uri} authenticates with the keys
        fetched from it; after a key rotation, an assertion with the new
        C{kid} fetches again.
        """
        self.fetch.documents[JWKS_URL] = self.key.jwks()
        client = self.registerKeyClient(jwks=None, jwks_uri=JWKS_URL)
        response, body = self.post("/oauth/token", dict(
            self.assertionForm(client), grant_type="client_credentials"))
        self.assertEqual(response.code, 200, body)
        self.clock.advance(60)
        self.key = ClientKey("EdDSA", kid="k2")
        self.fetch.documents[JWKS_URL] = self.key.jwks()
        response, body = self.post("/oauth/token", dict(
            self.assertionForm(client), grant_type="client_credentials"))
        self.assertEqual(response.code, 200, body)
        self.assertEqual(self.fetch.calls, [JWKS_URL, JWKS_URL])

    def test_fetchFails(self) -> None:
        """
        Keys that cannot be fetched are 401 invalid_client, saying so.
        """
        client = self.registerKeyClient(jwks=None, jwks_uri=JWKS_URL)
        self.fetch.documents[JWKS_URL] = ConnectionRefusedError()
        response, body = self.post("/oauth/token", dict(
            self.assertionForm(client), grant_type="client_credentials"))
        self.assertOAuthError(response, body, 401, "invalid_client")
        self.assertIn("could not be fetched", body["error_description"])

    def test_badDocuments(self) -> None:
        """
        Whatever the C{jwks_uri} serves or however its fetch fails, the
        client is refused with 401 invalid_client, never a 5xx: another
        JSON type, too many keys, a private or symmetric key, keys of the
        wrong shape, a deep document, a fetcher that raises at once.
        """
        client = self.registerKeyClient(jwks=None, jwks_uri=JWKS_URL)
        public = self.key.publicJWK()
        nested: Any = 1
        for _ in range(500):
            nested = {"keys": [nested]}
        documents = [
            [self.key.jwks()], "keys", None, {"keys": {}}, {"keys": [public] * 21},
            {"keys": [self.key.privateJWK()]}, {"keys": [{"kty": "oct", "k": "c2VjcmV0"}]},
            {"keys": [dict(public, x=7)]}, {"keys": [dict(public, crv="P-999")]},
            {"keys": [dict(public, kid=["k1"])]}, nested, TimeoutError(), ValueError("bad JSON"),
        ]
        for document in documents:
            self.oauth.assertions.cache._entries.clear()
            self.oauth.assertions.cache._lastFetch.clear()
            self.fetch.documents[JWKS_URL] = document
            response, body = self.post("/oauth/token", dict(
                self.assertionForm(client), grant_type="client_credentials"))
            self.assertOAuthError(response, body, 401, "invalid_client")

        def raises(url: str) -> Any:
            raise RuntimeError("the fetcher broke")

        self.oauth.assertions.cache._lastFetch.clear()
        self.oauth.assertions.cache.fetchJSON = raises
        response, body = self.post("/oauth/token", dict(
            self.assertionForm(client), grant_type="client_credentials"))
        self.assertOAuthError(response, body, 401, "invalid_client")

    def test_fetchedThroughSafeFetcher(self) -> None:
        """
        By default the app fetches C{jwks_uri} through its SSRF-safe
        fetcher (the one metadata documents use): a refusal there (here, an
        address it will not connect to) is 401 C{invalid_client}, not 500.
        """
        from twisted.internet.defer import fail

        from mcpsvc.oauth.fetch import FetchError

        asked: List[str] = []

        class Refusing:
            def fetchJSON(self, url: str, **kw: Any) -> Any:
                asked.append(url)
                return fail(FetchError("address", "the host's address is not public"))

        client = self.registerKeyClient(jwks=None, jwks_uri=JWKS_URL)
        self.oauth, _ = buildOAuth(self.config, store=self.store, clock=self.clock,
                                   fetcher=Refusing())
        self.stub = StubTreq(self.oauth.resource())
        response, body = self.post("/oauth/token", dict(
            self.assertionForm(client), grant_type="client_credentials"))
        self.assertOAuthError(response, body, 401, "invalid_client")
        self.assertEqual(asked, [JWKS_URL])
