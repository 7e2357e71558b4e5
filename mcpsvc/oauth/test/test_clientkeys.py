"""
Tests for L{mcpsvc.oauth.clientkeys}: the C{jwks_uri} cache and where a
client's keys come from.
"""

from __future__ import annotations

from typing import Any, Dict, List

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from mcpsvc.oauth.assertion import InvalidAssertion
from mcpsvc.oauth.clientkeys import JWKSCache, JWKSUnavailable, clientKeys
from mcpsvc.storage.interfaces import ClientRecord
from mcpsvc.testing.clientkeys import ClientKey

URL = "https://client.example.com/jwks.json"


class FakeFetcher:
    """
    Answers C{fetchJSON} from C{documents} (a document, an exception, or
    C{"pending"} for a Deferred the test fires), counting calls.
    """

    def __init__(self) -> None:
        self.documents: Dict[str, Any] = {}
        self.calls: List[str] = []
        self.pending: List["Deferred[Any]"] = []

    def __call__(self, url: str) -> "Deferred[Any]":
        self.calls.append(url)
        answer = self.documents.get(url, KeyError(url))
        if answer == "pending":
            d: Deferred[Any] = Deferred()
            self.pending.append(d)
            return d
        if isinstance(answer, Exception):
            return fail(answer)
        return succeed(answer)


class JWKSCacheTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1000)
        self.fetch = FakeFetcher()
        self.cache = JWKSCache(fetchJSON=self.fetch, clock=self.clock, lifetime=300, minInterval=30)
        self.key1 = ClientKey("ES256", kid="k1")
        self.key2 = ClientKey("ES256", kid="k2")
        self.fetch.documents[URL] = self.key1.jwks()

    def keys(self, kid: Any = None, url: str = URL) -> List[str]:
        result = self.successResultOf(Deferred.fromCoroutine(self.cache.keys(url, kid)))
        return [k.key_id for k in result]

    def unavailable(self, kid: Any = None, url: str = URL) -> JWKSUnavailable:
        f = self.failureResultOf(Deferred.fromCoroutine(self.cache.keys(url, kid)), JWKSUnavailable)
        return f.value  # type: ignore[no-any-return]

    def test_cachedForItsLifetime(self) -> None:
        """
        A set is fetched once and used until its lifetime has passed, then
        fetched again.
        """
        self.assertEqual(self.keys("k1"), ["k1"])
        self.clock.advance(299)
        self.assertEqual(self.keys("k1"), ["k1"])
        self.assertEqual(self.keys(), ["k1"])
        self.assertEqual(len(self.fetch.calls), 1)
        self.clock.advance(1)
        self.fetch.documents[URL] = self.key2.jwks()
        self.assertEqual(self.keys(), ["k2"])
        self.assertEqual(len(self.fetch.calls), 2)

    def test_unknownKidRefetchesOnce(self) -> None:
        """
        A C{kid} the cached set lacks fetches the set again at once (the
        client rotated); more unknown kids within the minimum interval do
        not fetch again, after it they do.
        """
        self.keys("k1")
        self.fetch.documents[URL] = {"keys": [self.key1.publicJWK(), self.key2.publicJWK()]}
        self.clock.advance(31)
        self.assertEqual(self.keys("k2"), ["k1", "k2"])
        self.assertEqual(len(self.fetch.calls), 2)
        for _ in range(5):
            self.assertEqual(self.keys("k9"), ["k1", "k2"])
        self.assertEqual(len(self.fetch.calls), 2)
        self.clock.advance(30)
        self.keys("k9")
        self.assertEqual(len(self.fetch.calls), 3)

    def test_unknownKidRightAfterFetch(self) -> None:
        """
        Right after a fetch, an unknown C{kid} gets the cached set (and
        then fails to find its key): no fetch per request.
        """
        self.keys("k1")
        self.assertEqual(self.keys("nope"), ["k1"])
        self.assertEqual(len(self.fetch.calls), 1)

    def test_failureNotRetriedAtOnce(self) -> None:
        """
        A failed fetch is refused (fail closed) and not retried within the
        minimum interval; after it, it is.
        """
        self.fetch.documents[URL] = ConnectionRefusedError("down")
        self.assertIn("fetch failed", str(self.unavailable("k1")))
        self.assertIn("not retried yet", str(self.unavailable("k1")))
        self.assertEqual(len(self.fetch.calls), 1)
        self.clock.advance(30)
        self.fetch.documents[URL] = self.key1.jwks()
        self.assertEqual(self.keys("k1"), ["k1"])
        self.flushLoggedErrors()

    def test_expiredSetNeverUsed(self) -> None:
        """
        Once a set has expired, a failing refetch is refused: the old keys
        are not used.
        """
        self.keys("k1")
        self.clock.advance(301)
        self.fetch.documents[URL] = ConnectionRefusedError("down")
        self.unavailable("k1")

    def test_lifetimeShorterThanMinInterval(self) -> None:
        """
        With a lifetime shorter than the minimum interval (the smallest
        C{CLIENT_JWKS_CACHE_SECONDS} is 10, the interval 30), an expired set
        is fetched again once its lifetime has passed (a rotated key is
        seen, the old one no longer is), not refused as if the last fetch
        had failed.
        """
        self.cache = JWKSCache(fetchJSON=self.fetch, clock=self.clock, lifetime=10, minInterval=30)
        self.assertEqual(self.keys("k1"), ["k1"])
        self.fetch.documents[URL] = self.key2.jwks()
        self.clock.advance(10)
        self.assertEqual(self.keys("k1"), ["k2"])
        self.assertEqual(len(self.fetch.calls), 2)

    def test_unusableSet(self) -> None:
        """
        A document that is not a usable JWK Set (a private key, not an
        object) is refused.
        """
        self.fetch.documents[URL] = {"keys": [self.key1.privateJWK()]}
        self.assertIn("private members", str(self.unavailable()))
        self.fetch.documents["https://c.example/list"] = ["x"]
        self.assertIn("unusable", str(self.unavailable(url="https://c.example/list")))

    def test_concurrentShareOneFetch(self) -> None:
        """
        Requests for one URL while its fetch is in flight share it.
        """
        self.fetch.documents[URL] = "pending"
        first = Deferred.fromCoroutine(self.cache.keys(URL, "k1"))
        second = Deferred.fromCoroutine(self.cache.keys(URL, "k1"))
        self.assertNoResult(first)
        self.assertNoResult(second)
        self.assertEqual(len(self.fetch.calls), 1)
        self.fetch.pending[0].callback(self.key1.jwks())
        self.assertEqual([k.key_id for k in self.successResultOf(first)], ["k1"])
        self.assertEqual([k.key_id for k in self.successResultOf(second)], ["k1"])

    def test_bounded(self) -> None:
        """
        At most C{maxEntries} sets are kept; the oldest are forgotten.
        """
        cache = JWKSCache(fetchJSON=self.fetch, clock=self.clock, maxEntries=2, minInterval=0)
        for i in range(3):
            self.fetch.documents[f"https://c{i}.example/"] = self.key1.jwks()
            self.successResultOf(Deferred.fromCoroutine(cache.keys(f"https://c{i}.example/", "k1")))
        self.successResultOf(Deferred.fromCoroutine(cache.keys("https://c0.example/", "k1")))
        self.successResultOf(Deferred.fromCoroutine(cache.keys("https://c2.example/", "k1")))
        self.assertEqual(self.fetch.calls[-2:], ["https://c2.example/", "https://c0.example/"])


class ClientKeysTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.fetch = FakeFetcher()
        self.cache = JWKSCache(fetchJSON=self.fetch, clock=self.clock)
        self.key = ClientKey("ES256", kid="k1")

    def record(self, **metadata: Any) -> ClientRecord:
        return ClientRecord(clientID="c", secretHash=None, createdAt=0,
                            metadata=dict(metadata, token_endpoint_auth_method="private_key_jwt"))

    def keysOf(self, record: ClientRecord, cache: Any = "default") -> Any:
        return Deferred.fromCoroutine(
            clientKeys(record, "k1", self.cache if cache == "default" else cache)
        )

    def test_inline(self) -> None:
        """
        Inline C{jwks} are used without fetching.
        """
        keys, source = self.successResultOf(self.keysOf(self.record(jwks=self.key.jwks())))
        self.assertEqual(([k.key_id for k in keys], source), (["k1"], "jwks"))
        self.assertEqual(self.fetch.calls, [])

    def test_uri(self) -> None:
        """
        A C{jwks_uri} is fetched through the cache; its failure is an
        L{InvalidAssertion} the client is told about.
        """
        self.fetch.documents[URL] = self.key.jwks()
        keys, source = self.successResultOf(self.keysOf(self.record(jwks_uri=URL)))
        self.assertEqual(source, "jwks_uri")
        failure = self.failureResultOf(self.keysOf(self.record(jwks_uri="https://gone/")),
                                       InvalidAssertion)
        self.assertIn("could not be fetched", failure.value.description)

    def test_noKeys(self) -> None:
        """
        A client without keys, with broken inline keys, or with a
        C{jwks_uri} and no fetcher, cannot authenticate.
        """
        for record, cache, reason in (
            (self.record(), "default", "no registered keys"),
            (self.record(jwks={"keys": []}), "default", "registered jwks unusable"),
            (self.record(jwks=["x"]), "default", "not a JSON object"),
            (self.record(jwks_uri=URL), None, "no fetcher"),
        ):
            failure = self.failureResultOf(self.keysOf(record, cache), InvalidAssertion)
            self.assertIn(reason, failure.value.reason)
