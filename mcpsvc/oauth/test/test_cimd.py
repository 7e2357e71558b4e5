"""
Tests for L{mcpsvc.oauth.cimd}: Client ID Metadata Documents, from the
URL and document rules to the whole authorization server (authorize,
token, refresh, revoke), caching on an injected clock, stale-if-error,
and the consent page.
"""

from __future__ import annotations

from typing import Any, Dict, List

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import globalLogPublisher

from mcpsvc.authpage.test.helpers import Forms, PageTestCase
from mcpsvc.config import Config
from mcpsvc.oauth.cimd import (
    CIMDError,
    CIMDSettings,
    ClientDocuments,
    checkClientIDURL,
    documentInfo,
    freshnessLifetime,
    validateDocument,
)
from mcpsvc.oauth.fetch import FetchPolicy, SafeFetcher
from mcpsvc.oauth.test.fakehttp import FakeAgent, document
from mcpsvc.oauth.test.helpers import OAuthTestCase
from mcpsvc.storage.interfaces import NoSuchClient, StoreUnavailable
from mcpsvc.testing.clientkeys import ClientKey

URL = "https://app.example.com/oauth/client.json"
WEB_REDIRECT = "https://app.example.com/callback"
LOOPBACK_REDIRECT = "http://127.0.0.1:3000/callback"


def clientDocument(**changes: Any) -> Dict[str, Any]:
    body: Dict[str, Any] = {
        "client_id": URL,
        "client_name": "Example MCP Client",
        "client_uri": "https://app.example.com",
        "redirect_uris": [WEB_REDIRECT, LOOPBACK_REDIRECT],
        "grant_types": ["authorization_code", "refresh_token"],
        "response_types": ["code"],
        "token_endpoint_auth_method": "none",
    }
    body.update(changes)
    return {k: v for k, v in body.items() if v is not None}


class Events:
    """
    Collects log events (the audit trail included) during a test.
    """

    def __init__(self, case: Any) -> None:
        self.events: List[Dict[str, Any]] = []
        globalLogPublisher.addObserver(self.events.append)
        case.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def audits(self, action: str) -> List[Dict[str, Any]]:
        return [e for e in self.events if e.get("event_type") == "audit" and e.get("action") == action]

    def texts(self) -> List[str]:
        from twisted.logger import formatEvent

        return [formatEvent(e) for e in self.events]


# --------------------------------------------------------------------------
# sans-IO rules


class ClientIDURLTests(OAuthTestCase):
    def test_valid(self) -> None:
        """
        https URLs with a path (a port and a query allowed) are client id
        URLs; in development, so is http on a loopback host.
        """
        for url in (URL, "https://app.example.com:8443/c", "https://app.example.com/c?v=1"):
            checkClientIDURL(url, production=True)
        checkClientIDURL("http://127.0.0.1:8080/client.json", production=False)
        checkClientIDURL("http://localhost/client.json", production=False)

    def test_invalid(self) -> None:
        """
        No path, dot segments, a fragment, user information, http (in
        production, or to a non-loopback host), spaces: refused.
        """
        for url, production in (
            ("https://app.example.com", True), ("https://app.example.com/", True),
            ("https://app.example.com/a/../b", True), ("https://app.example.com/./b", True),
            ("https://app.example.com/a/%2e%2e/b", True),
            ("https://app.example.com/c#frag", True), ("https://u:p@app.example.com/c", True),
            ("http://127.0.0.1/client.json", True), ("http://app.example.com/c", False),
            ("https://app.example.com/a b", True), ("https:///c", True),
            ("https://app.example.com:99999/c", True),
        ):
            with self.assertRaises(CIMDError, msg=url) as cm:
                checkClientIDURL(url, production)
            self.assertEqual(cm.exception.reason, "url")


class DocumentRulesTests(OAuthTestCase):
    def reason(self, body: Dict[str, Any]) -> str:
        with self.assertRaises(CIMDError) as cm:
            validateDocument(URL, body, production=True)
        return cm.exception.reason

    def test_valid(self) -> None:
        """
        A valid public client's document becomes registration metadata
        (redirect URIs exactly as published, the method, the grants).
        """
        metadata = validateDocument(URL, clientDocument(), production=True)
        self.assertEqual(metadata["redirect_uris"], [WEB_REDIRECT, LOOPBACK_REDIRECT])
        self.assertEqual(metadata["token_endpoint_auth_method"], "none")
        self.assertEqual(metadata["grant_types"], ["authorization_code", "refresh_token"])
        self.assertEqual(metadata["client_name"], "Example MCP Client")
        absent = validateDocument(URL, clientDocument(token_endpoint_auth_method=None),
                                  production=True)
        self.assertEqual(absent["token_endpoint_auth_method"], "none")

    def test_clientIDMustEqualURL(self) -> None:
        """
        The document's C{client_id} must equal its URL exactly (no
        normalisation: case, a trailing slash, a default port differ).
        """
        for other in (URL.upper(), URL + "/", "https://app.example.com:443/oauth/client.json",
                      None, 42):
            self.assertEqual(self.reason(clientDocument(client_id=other)), "client_id", other)

    def test_noSharedSecrets(self) -> None:
        """
        Shared-secret methods and secret fields are refused.
        """
        for method in ("client_secret_basic", "client_secret_post", "client_secret_jwt",
                       "tls_client_auth", 7):
            self.assertEqual(self.reason(clientDocument(token_endpoint_auth_method=method)),
                             "auth_method")
        self.assertEqual(self.reason(clientDocument(client_secret="x")), "secret")
        self.assertEqual(self.reason(clientDocument(client_secret_expires_at=0)), "secret")
        # any client_secret_* member, whatever its value
        self.assertEqual(self.reason(clientDocument(client_secret_hash="x")), "secret")
        self.assertEqual(self.reason(clientDocument(client_secret_issued_at=None,
                                                    CLIENT_SECRET="x")), "secret")

    def test_controlCharactersInNameRefused(self) -> None:
        """
        A document's name with control characters (a terminal escape for
        whoever runs C{mcpsvc clients list}, a forged log line) is refused.
        """
        for name in ("App\x1b[2J", "App\nClient metadata document changed"):
            self.assertEqual(self.reason(clientDocument(client_name=name)), "metadata")

    def test_privateKeysRefusedWhateverTheMethod(self) -> None:
        """
        A C{jwks} with private or symmetric key members is refused even
        when the document does not use C{private_key_jwt} (it was
        published: the key is compromised, and it must not be stored).
        """
        for key in ({"kty": "oct", "k": "c2VjcmV0"}, {"kty": "EC", "crv": "P-256", "x": "a",
                                                   "y": "b", "d": "c"}):
            self.assertEqual(self.reason(clientDocument(jwks={"keys": [key]})), "jwks")

    def test_requiredFields(self) -> None:
        """
        C{client_name} and C{redirect_uris} are required; redirect URIs
        follow the registration rules (https, or http on loopback).
        """
        self.assertEqual(self.reason(clientDocument(client_name=None)), "metadata")
        self.assertEqual(self.reason(clientDocument(client_name=" ")), "metadata")
        self.assertEqual(self.reason(clientDocument(redirect_uris=None)), "metadata")
        self.assertEqual(self.reason(clientDocument(redirect_uris=["http://evil.example/cb"])),
                         "metadata")
        self.assertEqual(self.reason(clientDocument(grant_types=["implicit"])), "metadata")
        self.assertEqual(self.reason(clientDocument(grant_types=["client_credentials"])),
                         "metadata")

    def test_clientCredentialsDropped(self) -> None:
        """
        A document naming C{client_credentials} among other grants is used
        without it (a self-asserted client gets no grant that no person
        approves), whatever its method.
        """
        for method, extra in (("none", {}),
                              ("private_key_jwt", {"jwks": ClientKey("ES256").jwks()})):
            metadata = validateDocument(URL, clientDocument(
                token_endpoint_auth_method=method,
                grant_types=["authorization_code", "refresh_token", "client_credentials"],
                **extra), production=True)
            self.assertEqual(metadata["grant_types"], ["authorization_code", "refresh_token"])

    def test_privateKeyJWT(self) -> None:
        """
        C{private_key_jwt} needs exactly one of C{jwks_uri} (https) and
        C{jwks} (public keys only); they are kept on the metadata.
        """
        jwks = ClientKey("ES256", kid="1").jwks()
        metadata = validateDocument(URL, clientDocument(
            token_endpoint_auth_method="private_key_jwt",
            jwks_uri="https://app.example.com/jwks.json"), production=True)
        self.assertEqual(metadata["jwks_uri"], "https://app.example.com/jwks.json")
        self.assertEqual(metadata["token_endpoint_auth_method"], "private_key_jwt")
        metadata = validateDocument(URL, clientDocument(
            token_endpoint_auth_method="private_key_jwt", jwks=jwks), production=True)
        self.assertEqual(metadata["jwks"], jwks)
        for extra in ({}, {"jwks": jwks, "jwks_uri": "https://app.example.com/j"},
                      {"jwks_uri": "http://app.example.com/j"},
                      {"jwks": {"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}},
                      {"jwks": {"keys": [dict(jwks["keys"][0], d="private")]}},
                      {"jwks": {"keys": []}},
                      {"jwks": {"keys": [{"kty": "EC", "crv": "P-256", "x": "x", "y": "y"}]}}):
            self.assertEqual(self.reason(clientDocument(
                token_endpoint_auth_method="private_key_jwt", **extra)), "jwks", extra)
        with self.assertRaises(CIMDError) as cm:
            validateDocument(URL, clientDocument(token_endpoint_auth_method="private_key_jwt",
                                                 jwks=jwks), production=True, privateKeyJWT=False)
        self.assertEqual(cm.exception.reason, "auth_method")


class FreshnessTests(OAuthTestCase):
    def test_lifetimes(self) -> None:
        """
        C{no-store}/C{no-cache}: 0; C{s-maxage} over C{max-age}, minus
        C{Age}; else C{Expires} minus C{Date}; else the default; always
        within the bounds.
        """
        date = "Sun, 06 Dec 2026 10:00:00 GMT"
        for headers, expected in (
            ({"cache-control": "no-store, max-age=600"}, 0),
            ({"cache-control": "no-cache"}, 0),
            ({"cache-control": "public, max-age=600"}, 600),
            ({"cache-control": "max-age=600, s-maxage=120"}, 120),
            ({"cache-control": "max-age=600", "age": "100"}, 500),
            ({"cache-control": "max-age=abc"}, 0),
            ({"expires": "Sun, 06 Dec 2026 10:30:00 GMT", "date": date}, 1800),
            ({"expires": "0", "date": date}, 0),
            ({"cache-control": "max-age=60", "expires": "Sun, 06 Dec 2026 10:30:00 GMT",
              "date": date}, 60),
            ({}, 3600),
            ({"cache-control": "max-age=999999999"}, 86400),
        ):
            self.assertEqual(freshnessLifetime(headers, 0, 86400), expected, headers)
        self.assertEqual(freshnessLifetime({"cache-control": "no-store"}, 60, 86400), 60)
        self.assertEqual(freshnessLifetime({}, 0, 600), 600)


# --------------------------------------------------------------------------
# the authorization server with documents


class DocumentMixin:
    """
    Build the app with a L{SafeFetcher} over a scripted agent.
    """

    agent: FakeAgent

    def fetcherFor(self, config: Config) -> SafeFetcher:
        if not hasattr(self, "agent"):
            self.agent = FakeAgent()
        return SafeFetcher(
            reactor=None, clock=self.clock, agent=self.agent,  # type: ignore[attr-defined]
            resolve=lambda h, p: succeed([]),
            policy=FetchPolicy(production=config.production,
                               allowedHosts=config.cimdAllowedHosts,
                               deniedHosts=config.cimdDeniedHosts),
        )

    def oauthOptions(self, config: Config) -> Dict[str, Any]:
        return {"fetcher": self.fetcherFor(config)}

    def serveDocument(self, body: Any = None, **headers: str) -> None:
        self.agent.serve(URL, document(clientDocument() if body is None else body, **headers))


class DocumentClientTests(DocumentMixin, OAuthTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.configure(self.config.replace(cimdStaleIfError=3600, cimdCacheMinSeconds=0))
        self.client = clientDocument()
        self.events = Events(self)

    def test_metadataAdvertised(self) -> None:
        """
        The AS metadata says C{client_id_metadata_document_supported} (with
        C{none} among the token endpoint methods) when CIMD is on, and not
        when it is off.
        """
        _, body = self.request("GET", "/.well-known/oauth-authorization-server")
        self.assertIs(body["client_id_metadata_document_supported"], True)
        self.assertIn("none", body["token_endpoint_auth_methods_supported"])
        self.configure(self.config.replace(cimd=False))
        _, body = self.request("GET", "/.well-known/oauth-authorization-server")
        self.assertNotIn("client_id_metadata_document_supported", body)

    def test_codeFlowRefreshRevoke(self) -> None:
        """
        A client known only by its document URL authorizes (its loopback
        redirect URI on any port), exchanges the code as a public client,
        refreshes and revokes, like a registered client; the stored record
        is marked with the document's hash and host.
        """
        self.serveDocument(Cache_Control="max-age=600")
        code = self.getCode(self.client, redirect_uri="http://127.0.0.1:49152/callback")
        response, tokens = self.exchange(self.client, code,
                                         redirect_uri="http://127.0.0.1:49152/callback")
        self.assertEqual(response.code, 200, tokens)
        claims = self.oauth.tokens.verify(tokens["access_token"], now=self.clock.seconds())
        self.assertEqual(claims.clientID, URL)
        response, refreshed = self.refresh(self.client, tokens["refresh_token"])
        self.assertEqual(response.code, 200, refreshed)
        response, _ = self.request("POST", "/oauth/revoke", data={
            "token": refreshed["refresh_token"], "client_id": URL})
        self.assertEqual(response.code, 200)
        response, body = self.refresh(self.client, refreshed["refresh_token"])
        self.assertOAuthError(response, body, 400, "invalid_grant")
        record = self.successResultOf(self.store.getClient(URL))
        info = documentInfo(record)
        assert info is not None
        self.assertTrue(info["document_sha256"].startswith("sha256:"))
        self.assertEqual(info["host"], "app.example.com")
        self.assertIsNone(record.secretHash)
        self.assertEqual(record.createdAt, self.clock.seconds())
        self.assertEqual(self.agent.count(URL), 1, "fresh for 600 seconds: fetched once")
        [first] = self.events.audits("client.metadata_document")
        self.assertEqual((first["outcome"], first["firstSeen"]), ("success", True))

    def test_redirectURIMustMatchDocument(self) -> None:
        """
        A redirect URI not in the document is refused (never redirected
        to), as for registered clients.
        """
        self.serveDocument()
        for uri in ("https://app.example.com/callback/x", "https://evil.example/callback",
                    "http://127.0.0.1:3000/other"):
            response, body = self.authorize(self.client, redirect_uri=uri)
            self.assertOAuthError(response, body, 400, "invalid_request")
            self.assertIsNone(self.header(response, "location"))

    def test_badDocumentOnAuthorize(self) -> None:
        """
        An unusable document is C{invalid_client}: an HTML error page for
        a browser (never a redirect), OAuth JSON for a client, with a log
        line and an audit event saying why.
        """
        self.serveDocument(clientDocument(client_id="https://elsewhere.example/c.json"))
        response, body = self.request("GET", "/oauth/authorize",
                                      params=self.authorizeParams(self.client),
                                      headers={"Accept": "text/html"})
        self.assertEqual(response.code, 400)
        self.assertIsNone(self.header(response, "location"))
        text = Forms(body).allText
        self.assertIn("published information", text)
        self.assertIn("client_id does not equal its URL", text)
        self.assertIn("invalid_client", text)
        response, body = self.authorize(self.client)
        self.assertOAuthError(response, body, 400, "invalid_client")
        [audit, _] = self.events.audits("client.metadata_document")
        self.assertEqual((audit["outcome"], audit["reason"]), ("denied", "client_id"))
        self.assertTrue(any("refused (client_id)" in t for t in self.events.texts()))
        # nothing is stored for a refused document
        self.failureResultOf(self.store.getClient(URL), NoSuchClient)

    def test_unreachableOnToken(self) -> None:
        """
        At the token endpoint an unusable document (here: its host answers
        404 once the copy is stale) is a 401 C{invalid_client}.
        """
        self.serveDocument(Cache_Control="max-age=60")
        code = self.getCode(self.client)
        self.clock.advance(61)
        self.agent.serve(URL, document({}, code=404))
        response, body = self.exchange(self.client, code)
        self.assertOAuthError(response, body, 401, "invalid_client")
        self.assertIn("404", body["error_description"])
        [failed] = self.events.audits("client.auth_failed")
        self.assertIn("metadata document", failed["reason"])

    def test_documentChangedBetweenAuthorizeAndToken(self) -> None:
        """
        A code issued for a redirect URI that the document no longer lists
        when the code is exchanged (the document changed meanwhile) is
        refused: the publisher withdrew that address.
        """
        self.serveDocument(Cache_Control="max-age=60")
        code = self.getCode(self.client)
        self.serveDocument(clientDocument(redirect_uris=["https://app.example.com/v2/callback"]),
                           Cache_Control="max-age=60")
        self.clock.advance(61)
        response, body = self.exchange(self.client, code)
        self.assertOAuthError(response, body, 400, "invalid_grant")
        self.assertIn("no longer", body["error_description"])

    def test_changedDocumentAfterLifetime(self) -> None:
        """
        The stored copy is used for its cache lifetime; after it, the
        document is fetched again and its changes apply (a new redirect URI
        works, a removed one no longer does); the change is logged with
        the new hash.
        """
        self.serveDocument(Cache_Control="max-age=300")
        self.getCode(self.client)
        newRedirect = "https://app.example.com/v2/callback"
        self.serveDocument(clientDocument(redirect_uris=[newRedirect]), Cache_Control="max-age=300")
        self.clock.advance(299)
        self.getCode(self.client)
        response, _ = self.authorize(self.client, redirect_uri=newRedirect)
        self.assertEqual(response.code, 400, "not fetched again before the lifetime ends")
        self.assertEqual(self.agent.count(URL), 1)
        before = documentInfo(self.successResultOf(self.store.getClient(URL)))
        self.clock.advance(1)
        self.getCode(self.client, redirect_uri=newRedirect)
        response, _ = self.authorize(self.client)
        self.assertEqual(response.code, 400, "the old redirect URI is gone")
        after = documentInfo(self.successResultOf(self.store.getClient(URL)))
        assert before is not None and after is not None
        self.assertNotEqual(before["document_sha256"], after["document_sha256"])
        self.assertEqual(after["changed_at"], self.clock.seconds())
        self.assertTrue(any("changed" in t for t in self.events.texts()))

    def test_unchangedDocumentKeepsItsChangeTime(self) -> None:
        """
        Fetching the same document again renews its freshness only.
        """
        self.serveDocument(Cache_Control="max-age=60")
        self.getCode(self.client)
        first = documentInfo(self.successResultOf(self.store.getClient(URL)))
        self.clock.advance(100)
        self.getCode(self.client)
        second = documentInfo(self.successResultOf(self.store.getClient(URL)))
        assert first is not None and second is not None
        self.assertEqual(second["changed_at"], first["changed_at"])
        self.assertEqual(second["fresh_until"], self.clock.seconds() + 60)
        self.assertEqual(self.agent.count(URL), 2)

    def test_staleIfError(self) -> None:
        """
        While the document's host is down (5xx, refused), the stored copy
        keeps working for CIMD_STALE_IF_ERROR seconds after it went stale
        (logged, audited); then the client is refused with C{invalid_client}.
        """
        self.serveDocument(Cache_Control="max-age=60")
        tokens = self.obtainTokens(self.client)
        self.agent.serve(URL, document({}, code=503))
        self.clock.advance(60 + 3599)
        self.getCode(self.client)
        response, body = self.refresh(self.client, tokens["refresh_token"])
        self.assertEqual(response.code, 200, body)
        self.assertTrue(self.events.audits("client.metadata_document")[-1]["outcome"] == "stale")
        self.agent.serve(URL, ConnectionRefusedError())
        self.clock.advance(1)
        response, body = self.authorize(self.client)
        self.assertOAuthError(response, body, 400, "invalid_client")
        response, body = self.refresh(self.client, tokens["refresh_token"])
        self.assertOAuthError(response, body, 401, "invalid_client")
        # back up: works again
        self.serveDocument(Cache_Control="max-age=60")
        self.getCode(self.client)

    def test_definiteAnswerNotStale(self) -> None:
        """
        A definite answer (404, an invalid document) refuses at once, even
        within the stale-if-error window.
        """
        self.serveDocument(Cache_Control="max-age=60")
        self.getCode(self.client)
        self.clock.advance(61)
        self.agent.serve(URL, document({}, code=404))
        response, body = self.authorize(self.client)
        self.assertOAuthError(response, body, 400, "invalid_client")
        self.serveDocument(clientDocument(client_secret="s3cret"))
        response, body = self.authorize(self.client)
        self.assertOAuthError(response, body, 400, "invalid_client")

    def test_deniedHostAppliesToStoredCopies(self) -> None:
        """
        A host the operator denies is refused at once, stored copy or not.
        """
        self.serveDocument(Cache_Control="max-age=600")
        self.getCode(self.client)
        self.configure(self.config.replace(cimdDeniedHosts=("*.example.com",)))
        response, body = self.authorize(self.client)
        self.assertOAuthError(response, body, 400, "invalid_client")
        self.assertIn("deny-list", body["error_description"])
        self.configure(self.config.replace(cimdDeniedHosts=(),
                                           cimdAllowedHosts=("tools.example.org",)))
        response, body = self.authorize(self.client)
        self.assertIn("allow-list", body["error_description"])

    def test_privateKeyJWTClientIsNotPublic(self) -> None:
        """
        A C{private_key_jwt} client's record keeps its C{jwks_uri}; it
        cannot use the token endpoint with its client id alone.
        """
        self.serveDocument(clientDocument(token_endpoint_auth_method="private_key_jwt",
                                          jwks_uri="https://app.example.com/jwks.json"))
        code = self.getCode(self.client)
        response, body = self.request("POST", "/oauth/token", data={
            "grant_type": "authorization_code", "code": code, "client_id": URL,
            "code_verifier": "v" * 43, "redirect_uri": WEB_REDIRECT})
        self.assertOAuthError(response, body, 401, "invalid_client")
        self.assertIn("private_key_jwt", body["error_description"])
        record = self.successResultOf(self.store.getClient(URL))
        self.assertEqual(record.metadata["jwks_uri"], "https://app.example.com/jwks.json")
        self.assertEqual(record.metadata["token_endpoint_auth_method"], "private_key_jwt")

    def test_offMeansUnknown(self) -> None:
        """
        With CIMD off, a URL client id is an unknown client; nothing is
        fetched.
        """
        self.configure(self.config.replace(cimd=False))
        self.serveDocument()
        response, body = self.authorize(self.client)
        self.assertOAuthError(response, body, 400, "invalid_client")
        self.assertEqual(body["error_description"], "Unknown client")
        self.assertEqual(self.agent.requests, [])

    def test_offIgnoresStoredDocuments(self) -> None:
        """
        With CIMD turned off, a client resolved from its document while it
        was on is unknown: its stored record (which would never be fetched
        again) is not used, at the authorization or the token endpoint.
        """
        self.serveDocument()
        response, _ = self.authorize(self.client)
        self.assertEqual(response.code, 302)
        self.successResultOf(self.store.getClient(URL))
        self.configure(self.config.replace(cimd=False))
        response, body = self.authorize(self.client)
        self.assertOAuthError(response, body, 400, "invalid_client")
        self.assertEqual(body["error_description"], "Unknown client")
        response, body = self.request("POST", "/oauth/token", data={
            "grant_type": "authorization_code", "code": "x", "client_id": URL,
            "redirect_uri": WEB_REDIRECT, "code_verifier": "v" * 43})
        self.assertOAuthError(response, body, 401, "invalid_client")

    def test_registrationUnchanged(self) -> None:
        """
        Dynamic registration (the initial access token) and its clients
        work as before with CIMD on.
        """
        client = self.registerConfidential()
        self.obtainTokens(client)
        self.assertEqual(self.agent.requests, [])


class ResolverTests(DocumentMixin, OAuthTestCase):
    """
    L{ClientDocuments} on its own.
    """

    def setUp(self) -> None:
        super().setUp()
        self.agent = FakeAgent()

    def documents(self, store: Any = None) -> ClientDocuments:
        return ClientDocuments(store=store or self.store, fetcher=self.fetcherFor(self.config),
                               clock=self.clock, settings=CIMDSettings(production=False))

    def test_concurrentResolutionsShareOneFetch(self) -> None:
        """
        Requests naming the same new client at once wait for one fetch.
        """
        gate: "Deferred[Any]" = Deferred()
        self.agent.serve(URL, gate)
        documents = self.documents()
        first = Deferred.fromCoroutine(documents.resolve(URL))
        second = Deferred.fromCoroutine(documents.resolve(URL))
        self.assertEqual(self.agent.count(URL), 1)
        gate.callback(document(clientDocument()))
        self.assertEqual(self.successResultOf(first), self.successResultOf(second))
        self.assertEqual(self.agent.count(URL), 1)

    def test_storeDownFailsClosed(self) -> None:
        """
        When the store cannot answer, resolution fails with
        L{StoreUnavailable} (a 503), never with a client.
        """

        class Down:
            def getClient(self, clientID: str) -> Any:
                return fail(StoreUnavailable("down"))

        self.serveDocument()
        d = Deferred.fromCoroutine(self.documents(Down()).resolve(URL))
        self.failureResultOf(d, StoreUnavailable)

    def test_ssrfRefusedInProduction(self) -> None:
        """
        In production, a document URL whose host resolves to a loopback,
        private or link-local address is refused (C{invalid_client} with
        the reason logged), and nothing is connected to.
        """
        events = Events(self)
        for address in ("127.0.0.1", "10.0.0.7", "169.254.169.254", "fd00::1"):
            reactor = MemoryReactorClock()
            fetcher = SafeFetcher(reactor=reactor, clock=self.clock,
                                  resolve=lambda h, p, a=address: succeed([a]),
                                  policy=FetchPolicy(production=True))
            documents = ClientDocuments(store=self.store, fetcher=fetcher, clock=self.clock,
                                        settings=CIMDSettings(production=True))
            error = self.failureResultOf(Deferred.fromCoroutine(documents.resolve(URL)),
                                         CIMDError).value
            self.assertEqual(error.reason, "address", address)
            self.assertEqual(reactor.tcpClients, [])
        self.assertEqual(len(self.events_(events)), 4)
        self.assertTrue(all("refused (address)" in t for t in events.texts()
                            if "Client metadata document" in t))

    def events_(self, events: Events) -> List[Dict[str, Any]]:
        return [e for e in events.audits("client.metadata_document") if e["outcome"] == "denied"]

    def test_redirectRefusedInProduction(self) -> None:
        """
        A document URL that redirects (to loopback, a private or a
        link-local address, or anywhere) is refused, not followed.
        """
        from mcpsvc.oauth.test.fakehttp import FakeResponse

        for location in ("http://127.0.0.1/c.json", "http://10.0.0.1/c.json",
                         "http://169.254.169.254/latest/meta-data/"):
            self.agent = FakeAgent()
            self.agent.serve(URL, FakeResponse(301, {"Location": location}))
            documents = ClientDocuments(store=self.store, fetcher=self.fetcherFor(
                self.config.replace(environment="production")), clock=self.clock,
                settings=CIMDSettings(production=True))
            error = self.failureResultOf(Deferred.fromCoroutine(documents.resolve(URL)),
                                         CIMDError).value
            self.assertEqual(error.reason, "redirect")
            self.assertEqual(len(self.agent.requests), 1)


# --------------------------------------------------------------------------
# the consent page


class DocumentConsentTests(DocumentMixin, PageTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.client = clientDocument()
        self.serveDocument(Cache_Control="max-age=600")

    def test_hostAndFirstSeen(self) -> None:
        """
        The consent page shows the document's host prominently and marks a
        client this server has just seen for the first time as new; a day
        later it shows only when it was first seen.
        """
        response, forms = self.showPage(self.client)
        self.assertEqual(response.code, 200)
        text = forms.allText
        self.assertIn("Published by app.example.com", text)
        self.assertIn("New application", text)
        self.assertIn("just now", text)
        self.assertLess(forms.order.index("document-host"), forms.order.index("consent"))
        self.clock.advance(2 * 86400)
        response, forms = self.showPage(self.client)
        self.assertNotIn("New application", forms.allText)
        self.assertIn("First seen by this server: 2 days ago", forms.allText)

    def test_nameCannotImpersonateAnotherHost(self) -> None:
        """
        A name that mentions a host other than the document's (a URL, a
        domain) gets a warning naming both; invisible and direction
        controlling characters (which could make the name read as another)
        are not shown. A name mentioning the document's own host, or a
        host under it, gets no warning.
        """
        self.serveDocument(clientDocument(
            client_name="Google Drive \u202e(moc.elgoog.stnuocca)\u200b https://accounts.google.com"),
            Cache_Control="max-age=0")
        _, forms = self.showPage(self.client)
        text = forms.allText
        self.assertNotIn("\u202e", text)
        self.assertNotIn("\u200b", text)
        self.assertIn("The name mentions moc.elgoog.stnuocca, accounts.google.com.", text)
        self.assertIn("app.example.com", text)
        self.serveDocument(clientDocument(client_name="Example (docs.app.example.com) v2.1"),
                           Cache_Control="max-age=0")
        self.clock.advance(61)
        _, forms = self.showPage(self.client)
        self.assertNotIn("The name mentions", forms.allText)

    def test_registeredClientPageUnchanged(self) -> None:
        """
        A registered client's page has no document host.
        """
        _, forms = self.showPage(self.registerConfidential())
        self.assertNotIn("document-host", forms.order)
        self.assertNotIn("Published by", forms.allText)

    def test_changedDocumentAsksAgain(self) -> None:
        """
        With C{REMEMBER_APPROVALS=on}, an approval is remembered while the
        document is unchanged; once it changes, the page asks again.
        """
        self.configure(self.config.replace(rememberApprovals=True))
        _, forms = self.showPage(self.client)
        query = self.redirectQuery(self.submit(forms.forms["consent"], "approve")[0])
        response, body = self.exchange(self.client, query["code"])
        self.assertEqual(response.code, 200, body)
        response, _ = self.browse("GET", "/oauth/authorize",
                                  params=self.authorizeParams(self.client))
        self.redirectQuery(response)
        self.clock.advance(600)
        self.serveDocument(clientDocument(client_name="Example MCP Client v2"),
                           Cache_Control="max-age=600")
        response, body = self.browse("GET", "/oauth/authorize",
                                     params=self.authorizeParams(self.client))
        self.assertEqual(response.code, 200, "the changed document asks again")
        self.assertIn("Example MCP Client v2", Forms(body).allText)
