# -*- test-case-name: mcpsvc.oauth.test.test_clientkeys -*-
"""
Client public keys for C{private_key_jwt}: inline (C{jwks} in the client's
metadata) or fetched from C{jwks_uri}, through L{JWKSCache}.

L{JWKSCache} keeps each fetched set for a bounded time (C{lifetime}),
refetches once, early, when an assertion names a C{kid} the cached set does
not have (the client rotated its key), and never fetches one URL more often
than every C{minInterval} seconds (neither an unknown C{kid} repeated nor a
failing server makes us hammer it). Concurrent requests for one URL share
one fetch. A set that cannot be fetched or parsed is refused (fail
closed); an expired one is never used.

The fetching itself is injected: C{fetchJSON(url)} returns a Deferred
firing with the parsed JSON document (a mapping), or failing with any
exception. It owns the network policy (schemes, addresses, timeout, size):
L{jwksFetch} makes one from the authorization server's SSRF-safe
L{mcpsvc.oauth.fetch.SafeFetcher} (https only and public addresses only in
production, no redirects, a timeout and a size cap), as
L{mcpsvc.oauth.buildOAuth} does.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Tuple

import attrs
import jwt
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from mcpsvc.oauth.assertion import InvalidAssertion, InvalidJWKS, parseJWKS
from mcpsvc.storage.interfaces import ClientRecord

__all__ = ["JWKSCache", "JWKSUnavailable", "FetchJSON", "JWKS_MAX_BYTES", "clientKeys", "jwksFetch"]

#: C{fetchJSON(url)}: a Deferred of the parsed JSON document.
FetchJSON = Callable[[str], "Deferred[Any]"]

#: Largest client JWK Set document fetched from a C{jwks_uri}, in bytes.
JWKS_MAX_BYTES = 64 * 1024


def jwksFetch(fetcher: Any) -> FetchJSON:
    """
    The C{fetchJSON} of L{JWKSCache} through C{fetcher} (a
    L{mcpsvc.oauth.fetch.SafeFetcher}): at most L{JWKS_MAX_BYTES}, served as
    C{application/json} or C{application/jwk-set+json}.
    """

    def fetchJSON(url: str) -> "Deferred[Any]":
        return fetcher.fetchJSON(
            url, maxBytes=JWKS_MAX_BYTES,
            contentTypes=("application/json", "application/jwk-set+json"),
        ).addCallback(lambda document: document.json)

    return fetchJSON


class JWKSUnavailable(Exception):
    """
    The JWK Set at a C{jwks_uri} could not be fetched or is unusable; the
    message says why (no secret in it).
    """


@attrs.define
class _Entry:
    keys: List[jwt.PyJWK]
    fetchedAt: float


@attrs.define
class JWKSCache:
    """
    A bounded cache of client JWK Sets by URL.

    @ivar fetchJSON: fetches and parses a URL (injected).
    @ivar clock: the time source.
    @ivar lifetime: seconds a fetched set is used.
    @ivar minInterval: least seconds between two fetches of one URL.
    @ivar maxEntries: most URLs remembered; the oldest are forgotten.
    """

    fetchJSON: FetchJSON
    clock: IReactorTime
    lifetime: float = 300.0
    minInterval: float = 30.0
    maxEntries: int = 1000
    _entries: Dict[str, _Entry] = attrs.field(factory=dict, init=False)
    #: url -> time of the last fetch started (success or failure)
    _lastFetch: Dict[str, float] = attrs.field(factory=dict, init=False)
    #: url -> waiters of the fetch in flight
    _waiting: Dict[str, List["Deferred[List[jwt.PyJWK]]"]] = attrs.field(factory=dict, init=False)
    log: Logger = attrs.field(factory=Logger, init=False, repr=False)

    async def keys(self, url: str, kid: Optional[str] = None) -> List[jwt.PyJWK]:
        """
        The keys at C{url}: cached if fresh and (when C{kid} is given)
        holding C{kid}; fetched otherwise, unless C{url} was fetched less
        than C{minInterval} ago (then the cached keys, if fresh).

        @raise JWKSUnavailable: no fresh keys can be had.
        """
        now = self.clock.seconds()
        entry = self._entries.get(url)
        fresh = entry is not None and now < entry.fetchedAt + self.lifetime
        if entry is not None and fresh:
            if kid is None or any(k.key_id == kid for k in entry.keys):
                return entry.keys
        last = self._lastFetch.get(url)
        if url not in self._waiting and last is not None and now - last < self.minInterval:
            if entry is not None and fresh:
                return entry.keys  # an unknown kid: no refetch yet
            if entry is None or entry.fetchedAt < last:
                raise JWKSUnavailable("the last fetch failed; not retried yet")
            # The last fetch succeeded and its set has expired (a lifetime
            # shorter than minInterval): fetch, as the lifetime says.
        return await self._shared(url)

    def _shared(self, url: str) -> "Deferred[List[jwt.PyJWK]]":
        waiter: Deferred[List[jwt.PyJWK]] = Deferred()
        waiting = self._waiting.get(url)
        if waiting is not None:
            waiting.append(waiter)
            return waiter
        waiting = self._waiting[url] = [waiter]
        self._lastFetch[url] = self.clock.seconds()

        def done(result: Any) -> None:
            del self._waiting[url]
            for w in waiting:
                if isinstance(result, Failure):
                    w.errback(result)
                else:
                    w.callback(result)

        Deferred.fromCoroutine(self._load(url)).addBoth(done)
        return waiter

    async def _load(self, url: str) -> List[jwt.PyJWK]:
        try:
            document = await self.fetchJSON(url)
        except Exception as e:
            self.log.warn("Fetching client keys from {url} failed: {why} {detail}",
                          url=url[:200], why=str(e)[:200] or type(e).__name__,
                          detail=str(getattr(e, "detail", None) or "")[:300])
            raise JWKSUnavailable(f"fetch failed: {str(e)[:200] or type(e).__name__}") from None
        try:
            keys = parseJWKS(document)
        except InvalidJWKS as e:
            self.log.warn("Client keys at {url} are unusable: {why}", url=url[:200], why=str(e))
            raise JWKSUnavailable(f"unusable JWK Set: {e}") from None
        self._entries.pop(url, None)
        self._entries[url] = _Entry(keys=keys, fetchedAt=self.clock.seconds())
        self._trim()
        return keys

    def _trim(self) -> None:
        while len(self._entries) > self.maxEntries:
            del self._entries[next(iter(self._entries))]
        while len(self._lastFetch) > 2 * self.maxEntries:
            oldest = next(iter(self._lastFetch))
            del self._lastFetch[oldest]


async def clientKeys(
    client: ClientRecord, kid: Optional[str], cache: Optional[JWKSCache]
) -> Tuple[List[jwt.PyJWK], str]:
    """
    The public keys a client registered: its inline C{jwks}, else those at
    its C{jwks_uri} (through C{cache}).

    @param client: the client's record (its C{jwks} and C{jwksURI}).
    @return: the keys and where they came from (C{"jwks"} or
        C{"jwks_uri"}), for the log.
    @raise InvalidAssertion: the client has no usable keys.
    """
    inline = client.jwks
    if inline is None and "jwks" in client.metadata:
        raise InvalidAssertion("registered jwks is not a JSON object")
    if inline is not None:
        try:
            return parseJWKS(inline), "jwks"
        except InvalidJWKS as e:
            raise InvalidAssertion(f"registered jwks unusable: {e}") from None
    url = client.jwksURI
    if url:
        if cache is None:
            raise InvalidAssertion("jwks_uri registered but no fetcher configured")
        try:
            return await cache.keys(url, kid), "jwks_uri"
        except JWKSUnavailable as e:
            raise InvalidAssertion(
                f"keys at jwks_uri unavailable: {e}",
                "The client's keys (jwks_uri) could not be fetched",
            ) from None
    raise InvalidAssertion("client has no registered keys (jwks or jwks_uri)")
