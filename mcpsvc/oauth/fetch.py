# -*- test-case-name: mcpsvc.oauth.test.test_fetch -*-
"""
Fetching small JSON documents from URLs that someone else chose, without
becoming a tool for server-side request forgery (SSRF).

The authorization server fetches documents named by its clients: Client ID
Metadata Documents (L{mcpsvc.oauth.cimd}), and C{jwks_uri} key sets for
C{private_key_jwt}. Whoever names the URL chooses where we connect, so
L{SafeFetcher.fetchJSON} applies these rules to every fetch:

  - B{scheme}: C{https} only in production. In development, plain C{http}
    is also accepted when the host resolves to a loopback address (a test
    server on this machine); every such fetch is logged as a warning.
    Development relaxes the address rules for loopback only: private,
    link-local and other internal addresses are refused there too.
  - B{hosts}: the operator's deny-list (L{FetchPolicy.deniedHosts}) always
    wins; when an allow-list is set (L{FetchPolicy.allowedHosts}) only the
    hosts on it are fetched. Entries are host names, or C{*.example.com}
    for every host under C{example.com}.
  - B{addresses}: in production we resolve the host ourselves and refuse if
    B{any} of its addresses is not a public unicast address (loopback,
    private, shared, link-local, multicast, reserved, unspecified,
    documentation, IPv4-mapped forms of these, ...: everything
    L{ipaddress} does not call global). We then connect to the address we
    checked (never resolving again, so DNS rebinding cannot slip another
    address in), with the URL's host as the TLS server name (SNI and
    certificate verification) and as the C{Host} header; and once
    connected we check the peer address of the socket again.
  - B{host syntax}: a DNS name of letters, digits and hyphens, a
    standard dotted-quad IPv4 address or a bracketed IPv6 address without
    a zone id; other spellings of addresses (C{2130706433}, C{0x7f.1},
    C{0177.0.0.1}, C{127.1}), percent-encoding and backslashes are refused
    before any lookup. In production C{localhost} and names under it are
    refused too.
  - B{port}: in production 443 only, unless the host is on the
    allow-list (another port would let whoever names URLs probe the ports
    of public hosts through us).
  - B{no redirects}: a 3xx answer is refused, never followed, so a public
    URL cannot bounce us to an internal one.
  - B{limits}: one overall timeout (connect, TLS, response and body), a
    response size cap (a C{Content-Length} over it is refused before the
    body is read; a body growing past it is cut off; a connection receiving
    more than L{MAX_WIRE_BYTES} in all, headers included, is cut off), no
    content coding
    (we ask for C{identity} and refuse anything else), a content type check
    (C{application/json} or C{application/*+json} by default), and the body
    must be a JSON object in UTF-8, nested at most L{MAX_DEPTH} levels,
    without a repeated member name.
  - B{concurrency}: at most L{FetchPolicy.maxConcurrent} fetches at once
    and L{FetchPolicy.maxPerHost} to one host, and at most
    L{FetchPolicy.maxLookups} name lookups running in the shared thread
    pool (counted until their thread returns); one more is refused at once
    (C{busy}, temporary), never queued.
  - B{no cookies, no credentials}: nothing is sent but C{Accept},
    C{Accept-Encoding} and C{User-Agent}.

A refusal or failure is a L{FetchError} whose C{reason} is a short fixed
word (for logs, metrics and audit) and whose message explains it (safe to
show: it never contains the response body). C{temporary} tells callers that
may fall back to a copy they have (a timeout, a refused connection, a 5xx
answer) from a definite answer (a policy refusal, a 404, a bad document).

Usage, for another feature that needs a remote JSON document (the
authorization server's own fetcher is C{OAuthApp.fetcher}, built by
L{mcpsvc.oauth.buildOAuth} whether or not metadata documents are on, with
the production rules and the C{CIMD_*} host lists and timeout)::

    try:
        document = await app.fetcher.fetchJSON(jwksURI, maxBytes=64 * 1024,
                                               contentTypes=["application/json"])
    except FetchError as e:
        ...  # e.reason, e.message, e.temporary
    document.json, document.headers.get("cache-control"), document.fetchedAt

C{mcpsvc.oauth.cimd.freshnessLifetime} turns C{document.headers} into a
cache lifetime.

L{FetchPolicy} carries the rules; tests inject a resolver and an agent (or
a memory reactor) so that nothing leaves the machine.
"""

from __future__ import annotations

import ipaddress
import json
import re
import socket
from typing import Any, Callable, ClassVar, Dict, List, Mapping, Optional, Sequence, Tuple, Union
from urllib.parse import urlsplit

from attrs import field, frozen
from twisted.internet.defer import CancelledError, Deferred, TimeoutError as DeferredTimeout
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint, wrapClientTLS
from twisted.internet.error import ConnectError, ConnectionLost, DNSLookupError
from twisted.internet.interfaces import IReactorTime, IStreamClientEndpoint
from twisted.internet.protocol import Protocol
from twisted.internet.ssl import optionsForClientTLS
from twisted.logger import Logger
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.python.failure import Failure
from twisted.web.client import Agent, HTTPConnectionPool, ResponseFailed
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgent, IAgentEndpointFactory, IResponse
from zope.interface import implementer

__all__ = [
    "FetchError",
    "FetchPolicy",
    "FetchedDocument",
    "SafeFetcher",
    "isPublicAddress",
    "hostMatches",
    "DEFAULT_MAX_BYTES",
    "DEFAULT_TIMEOUT",
    "MAX_WIRE_BYTES",
]

#: Largest response body L{SafeFetcher.fetchJSON} reads unless told.
DEFAULT_MAX_BYTES = 64 * 1024
#: Seconds a whole fetch may take unless the policy says otherwise.
DEFAULT_TIMEOUT = 5.0
#: Fetches under way at once (in all, and to one host) unless told.
DEFAULT_MAX_CONCURRENT = 16
DEFAULT_MAX_PER_HOST = 4
#: Name lookups running at once unless told (the reactor's thread pool,
#: which they share with other work, has 10 threads by default).
DEFAULT_MAX_LOOKUPS = 4
#: Most bytes one connection may receive (status line, headers and body):
#: Twisted's client parser bounds each header line, not their number.
MAX_WIRE_BYTES = 1024 * 1024
#: Deepest nesting of arrays and objects accepted in a document.
MAX_DEPTH = 32
#: Headers kept on a L{FetchedDocument} (for caching decisions).
KEPT_HEADERS = ("cache-control", "expires", "date", "age", "etag", "last-modified",
                "content-type")
_USER_AGENT = b"mcpsvc (metadata fetcher)"
#: What the one who named the URL is told when its host does not resolve
#: or resolves to a refused address: the same words, so that the answer
#: does not tell internal names that exist from names that do not.
NOT_PUBLIC = "the host does not resolve to a public address"
_LOOPBACK_NAMES = ("localhost", "localhost.")

Resolver = Callable[[str, int], "Deferred[List[str]]"]


class FetchError(Exception):
    """
    A document could not be fetched, or was refused.

    @ivar reason: a short fixed word: C{"url"}, C{"scheme"}, C{"denied"},
        C{"not-allowed"}, C{"address"}, C{"dns"}, C{"connect"}, C{"tls"},
        C{"timeout"}, C{"redirect"}, C{"status"}, C{"too-large"},
        C{"encoding"}, C{"content-type"}, C{"json"}, C{"port"}, C{"busy"}.
    @ivar message: what went wrong, for logs and error descriptions.
    @ivar temporary: whether trying again later may succeed (a network
        failure, a timeout, a 5xx or 429 answer), as opposed to a policy
        refusal or a definite answer.
    @ivar detail: more for the server's log only (the addresses a host
        resolved to: telling them to whoever named the URL would let them
        map internal names); C{None} when the message says it all.
    """

    def __init__(self, reason: str, message: str, temporary: bool = False,
                 detail: Optional[str] = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.temporary = temporary
        self.detail = detail


@frozen(kw_only=True)
class FetchedDocument:
    """
    A fetched JSON object.

    @ivar url: the URL fetched.
    @ivar json: the parsed JSON object.
    @ivar body: the raw body (for hashing).
    @ivar headers: the response headers of L{KEPT_HEADERS} present,
        lower-case names, values joined with C{", "}.
    @ivar fetchedAt: the clock's time when the response arrived.
    """

    url: str
    json: Dict[str, Any]
    body: bytes = field(repr=False)
    headers: Mapping[str, str]
    fetchedAt: float


@frozen(kw_only=True)
class FetchPolicy:
    """
    Where L{SafeFetcher} may connect.

    @ivar production: apply the production rules (https only, public
        addresses only).
    @ivar allowedHosts: when not empty, only hosts matching one of these
        (L{hostMatches}) are fetched.
    @ivar deniedHosts: hosts never fetched.
    @ivar timeout: seconds for a whole fetch.
    @ivar maxConcurrent: fetches under way at once, in all; one more is
        refused (C{busy}) rather than queued.
    @ivar maxPerHost: fetches under way at once to one host.
    @ivar maxLookups: name lookups running at once, counted until their
        thread returns (a lookup cannot be stopped: a fetch that timed out
        may leave its lookup running in the shared thread pool).
    """

    production: bool = True
    allowedHosts: Tuple[str, ...] = ()
    deniedHosts: Tuple[str, ...] = ()
    timeout: float = DEFAULT_TIMEOUT
    maxConcurrent: int = DEFAULT_MAX_CONCURRENT
    maxPerHost: int = DEFAULT_MAX_PER_HOST
    maxLookups: int = DEFAULT_MAX_LOOKUPS

    def checkHost(self, host: str) -> None:
        """
        Apply the deny-list and the allow-list to C{host}.

        @raise FetchError: C{denied} or C{not-allowed}.
        """
        host = host.lower().rstrip(".")
        if any(hostMatches(host, entry) for entry in self.deniedHosts):
            raise FetchError("denied", f"the host {host} is on this server's deny-list")
        if self.allowedHosts and not any(hostMatches(host, entry) for entry in self.allowedHosts):
            raise FetchError("not-allowed", f"the host {host} is not on this server's allow-list")

    def checkPort(self, host: str, port: int) -> None:
        """
        In production only port 443 is fetched, unless C{host} is on the
        allow-list: another port would let whoever names URLs probe the
        ports of public hosts through us (the answer tells a closed port
        from an open one).

        @raise FetchError: C{port}.
        """
        if not self.production or port == 443:
            return
        if self.allowedHosts and any(hostMatches(host, entry) for entry in self.allowedHosts):
            return
        raise FetchError("port", f"only port 443 is fetched (not {port}) unless the host is on "
                                 "this server's allow-list")

    def checkAddress(self, address: str, scheme: str) -> None:
        """
        Whether we may connect to C{address} for a C{scheme} URL.

        @raise FetchError: C{address} (not public; in development,
            loopback is accepted too), or C{scheme} (plain http to anything
            but loopback).
        """
        try:
            ip = ipaddress.ip_address(address.split("%", 1)[0])
        except ValueError:
            raise FetchError("address", f"{address!r} is not an IP address")
        if scheme == "http" and not _isLoopback(ip):
            raise FetchError("scheme", "plain http is only allowed to a loopback address "
                                       "(development)")
        if not isPublicAddress(ip) and (self.production or not _isLoopback(ip)):
            # Development relaxes the rules for this machine only.
            raise FetchError("address", NOT_PUBLIC, detail=f"{address} is not a public address")


def _isLoopback(ip: Union[ipaddress.IPv4Address, ipaddress.IPv6Address]) -> bool:
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback


def isPublicAddress(ip: Union[str, ipaddress.IPv4Address, ipaddress.IPv6Address]) -> bool:
    """
    Whether C{ip} is a public unicast address we may connect to in
    production: global (as L{ipaddress} defines it), not multicast, and for
    IPv6 neither an IPv4-mapped nor a NAT64/6to4/Teredo form of a
    non-public IPv4 address.
    """
    if isinstance(ip, str):
        try:
            ip = ipaddress.ip_address(ip.split("%", 1)[0])
        except ValueError:
            return False
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return isPublicAddress(ip.ipv4_mapped)
        if any(ip in network for network in _REFUSED_V6):
            return False
        if ip.sixtofour is not None and not isPublicAddress(ip.sixtofour):
            return False
        if ip.teredo is not None:
            return False
        if ip in _NAT64:
            return isPublicAddress(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
    elif any(ip in network for network in _REFUSED_V4):
        return False
    return bool(ip.is_global and not ip.is_multicast and not ip.is_unspecified)


#: The well-known NAT64 prefix (RFC 6052): its last 32 bits are the IPv4
#: address reached, checked as such.
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
#: IPv6 ranges refused whatever L{ipaddress} says of them: IPv4-compatible
#: (deprecated, C{::a.b.c.d}), IPv4-translated (SIIT), local-use NAT64
#: (RFC 8215: translated to anything the operator chose), site-local
#: (deprecated, still routed by some networks), documentation (RFC 9637)
#: and SRv6 SIDs (RFC 9602), newer than some Python versions' tables.
_REFUSED_V6 = tuple(ipaddress.ip_network(n) for n in (
    "::/96", "::ffff:0:0:0/96", "64:ff9b:1::/48", "fec0::/10", "3fff::/20", "5f00::/16",
))
#: IPv4 ranges refused whatever L{ipaddress} says of them (versions differ):
#: IETF protocol assignments, the deprecated 6to4 relay anycast.
_REFUSED_V4 = tuple(ipaddress.ip_network(n) for n in ("192.0.0.0/24", "192.88.99.0/24"))


def hostMatches(host: str, entry: str) -> bool:
    """
    Whether C{host} matches a host list C{entry}: equal (case-insensitive,
    trailing dot ignored), or C{*.example.com} for any host below
    C{example.com} (not C{example.com} itself).
    """
    host = host.lower().rstrip(".")
    entry = entry.strip().lower().rstrip(".")
    if entry.startswith("*."):
        return host.endswith(entry[1:]) and len(host) > len(entry) - 1
    return host == entry


def _splitURL(url: str) -> Tuple[str, str, int]:
    """
    The scheme, host and port of C{url}.

    @raise FetchError: C{url} or C{scheme}.
    """
    if not isinstance(url, str) or len(url) > 2000:
        raise FetchError("url", "the URL is not a string of at most 2000 characters")
    if any(ord(c) <= 0x20 or ord(c) >= 0x7F for c in url):
        raise FetchError("url", "the URL contains spaces, control or non-ASCII characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise FetchError("url", "the URL is malformed")
    if parts.scheme not in ("https", "http"):
        raise FetchError("scheme", "only https URLs are fetched")
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        raise FetchError("url", "the URL must not contain user information")
    if parts.fragment or "#" in url:
        raise FetchError("url", "the URL must not contain a fragment")
    host = parts.hostname or ""
    if not host:
        raise FetchError("url", "the URL has no host")
    if "\\" in url:
        raise FetchError("url", "the URL must not contain a backslash")
    if port == 0 or parts.netloc.endswith(":"):
        raise FetchError("url", "the URL's port is empty or 0")
    if not _canonicalHost(host, bracketed=parts.netloc.rpartition("@")[2].startswith("[")):
        raise FetchError("url", "the URL's host must be a DNS name or a standard IP address "
                                "(no other forms of addresses, percent-encoding or zone ids)")
    return parts.scheme, host, port or (443 if parts.scheme == "https" else 80)


_LABEL = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")
_DOTTED_QUAD = re.compile(r"(0|[1-9][0-9]{0,2})(\.(0|[1-9][0-9]{0,2})){3}")


def _canonicalHost(host: str, bracketed: bool) -> bool:
    """
    Whether C{host} (lower-case, as L{urlsplit} gives it) is a DNS name of
    letters, digits and hyphens whose last label is not a number (digits,
    or C{0x} and hex digits), a
    dotted-quad IPv4 address in its standard form, or (C{bracketed}) an
    IPv6 address without a zone id. Everything else (C{2130706433},
    C{0x7f000001}, C{0x7f.1}, C{0177.0.0.1}, C{127.1}, C{ex%61mple.com}, C{fe80::1%eth0})
    is refused: resolvers turn some of these into addresses, and host
    lists would not recognise them.
    """
    if bracketed:
        if "%" in host:
            return False
        try:
            return isinstance(ipaddress.ip_address(host), ipaddress.IPv6Address)
        except ValueError:
            return False
    name = host[:-1] if host.endswith(".") else host
    if len(name) > 253 or not name:
        return False
    labels = name.split(".")
    if not all(_LABEL.fullmatch(label) for label in labels):
        return False
    if labels[-1].isdigit() or re.fullmatch(r"0x[0-9a-f]*", labels[-1]):
        # "ends in a number" (the WHATWG URL standard): an IPv4 address
        if not _DOTTED_QUAD.fullmatch(name):
            return False
        try:
            ipaddress.IPv4Address(name)
        except ValueError:
            return False
    return True


def _defaultResolver(runInThread: Callable[..., Any]) -> Resolver:
    def resolve(host: str, port: int) -> "Deferred[List[str]]":
        def lookup() -> List[str]:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            return list(dict.fromkeys(str(info[4][0]) for info in infos))

        return runInThread(lookup)  # type: ignore[no-any-return]

    return resolve


def _boundedResolver(resolve: Resolver, limit: int) -> Resolver:
    """
    C{resolve}, with at most C{limit} lookups running at once. A lookup
    counts until it really ends: cancelling what the caller holds (a
    timeout) does not stop a thread, so the caller gets its own Deferred
    and the lookup's is never cancelled. Over the limit: C{busy}.
    """
    running = [0]

    def bounded(host: str, port: int) -> "Deferred[List[str]]":
        if running[0] >= limit:
            raise FetchError("busy", "too many documents are being fetched at the moment; try "
                                     "again later", temporary=True,
                             detail=f"{running[0]} name lookups still running")
        running[0] += 1
        outer: "Deferred[List[str]]" = Deferred()
        inner = resolve(host, port)

        def ended(result: Any) -> None:
            running[0] -= 1
            if not outer.called:
                if isinstance(result, Failure):
                    outer.errback(result)
                else:
                    outer.callback(result)
            elif isinstance(result, Failure):
                result.trap(Exception)  # the fetch is over: nobody waits for it

        inner.addBoth(ended)
        return outer

    return bounded


class _CountingProtocol(ProtocolWrapper):
    """
    Cut the connection once it has received more than the factory's
    C{limit} bytes; the HTTP client is then told it was refused as
    C{too-large}.
    """

    factory: "_CountingFactory"

    def __init__(self, factory: "_CountingFactory", wrappedProtocol: Any) -> None:
        super().__init__(factory, wrappedProtocol)
        self.received = 0
        self.overflowed = False

    def dataReceived(self, data: bytes) -> None:
        if self.overflowed:
            return
        self.received += len(data)
        if self.received > self.factory.limit:
            self.overflowed = True
            self.transport.abortConnection()
            return
        super().dataReceived(data)

    def connectionLost(self, reason: Failure) -> None:  # type: ignore[override]
        if self.overflowed:
            reason = Failure(_CheckedConnection(FetchError(
                "too-large", f"the answer (headers and body) is larger than "
                             f"{self.factory.limit} bytes")))
        super().connectionLost(reason)


class _CountingFactory(WrappingFactory):
    protocol = _CountingProtocol
    noisy = False

    def __init__(self, wrappedFactory: Any, limit: int) -> None:
        super().__init__(wrappedFactory)
        self.limit = limit


class _CheckedConnection(Exception):
    """
    The connection reached an address the policy refuses (carried out of
    Twisted's connection machinery, which wraps exceptions).
    """

    def __init__(self, error: FetchError) -> None:
        super().__init__(error.message)
        self.error = error


@implementer(IStreamClientEndpoint)
@frozen
class _PinnedEndpoint:
    """
    Resolve C{host}, check every address, connect to the first, with TLS
    for C{https} naming C{host}, and check the socket's peer.
    """

    reactor: Any
    resolve: Resolver
    policy: FetchPolicy
    scheme: str
    host: str
    port: int
    tlsOptions: Callable[[str], Any]
    log: ClassVar[Logger] = Logger()

    async def _connect(self, protocolFactory: Any) -> Any:
        try:
            ipaddress.ip_address(self.host)
            addresses = [self.host]
        except ValueError:
            try:
                addresses = await self.resolve(self.host, self.port)
            except FetchError as e:
                raise _CheckedConnection(e)
            except CancelledError:
                raise  # the timeout: reported as such
            except Exception as e:
                raise _CheckedConnection(FetchError(
                    "dns", NOT_PUBLIC, temporary=True,
                    detail=f"{self.host} could not be resolved ({type(e).__name__})"))
            if not addresses:
                raise _CheckedConnection(FetchError("dns", NOT_PUBLIC, temporary=True,
                                                    detail=f"{self.host} has no address"))
        try:
            for address in addresses:
                self.policy.checkAddress(address, self.scheme)
        except FetchError as e:
            raise _CheckedConnection(e)
        address = addresses[0]
        ip = ipaddress.ip_address(address.split("%", 1)[0])
        endpoint: Any
        if isinstance(ip, ipaddress.IPv6Address):
            endpoint = TCP6ClientEndpoint(self.reactor, address, self.port,
                                          timeout=max(1, int(self.policy.timeout)))
        else:
            endpoint = TCP4ClientEndpoint(self.reactor, address, self.port,
                                          timeout=max(1, int(self.policy.timeout)))
        if self.scheme == "https":
            endpoint = wrapClientTLS(self.tlsOptions(self.host), endpoint)
        wrapper = await endpoint.connect(_CountingFactory(protocolFactory, MAX_WIRE_BYTES))
        protocol = wrapper.wrappedProtocol
        peer = getattr(wrapper.transport.getPeer(), "host", None)
        try:
            if peer is None:
                raise FetchError("address", "the connection has no peer address")
            self.policy.checkAddress(str(peer), self.scheme)
        except FetchError as e:
            wrapper.transport.abortConnection()
            raise _CheckedConnection(e)
        self.log.debug("Connected to {host} at {address} for a fetch", host=self.host,
                       address=str(peer))
        return protocol

    def connect(self, protocolFactory: Any) -> "Deferred[Any]":
        return Deferred.fromCoroutine(self._connect(protocolFactory))


@implementer(IAgentEndpointFactory)
@frozen
class _PinnedEndpointFactory:
    reactor: Any
    resolve: Resolver
    policy: FetchPolicy
    tlsOptions: Callable[[str], Any]

    def endpointForURI(self, uri: Any) -> _PinnedEndpoint:
        host = uri.host.decode("ascii")
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
        return _PinnedEndpoint(
            self.reactor, self.resolve, self.policy, uri.scheme.decode("ascii"),
            host, uri.port, self.tlsOptions,
        )


class _Body(Protocol):
    """
    Collect a response body up to C{limit} bytes; past it, cut the
    connection and fail.
    """

    def __init__(self, finished: "Deferred[bytes]", limit: int) -> None:
        self.finished = finished
        self.limit = limit
        self.chunks: List[bytes] = []
        self.size = 0
        self.done = False

    def dataReceived(self, data: bytes) -> None:
        if self.done:
            return
        self.size += len(data)
        if self.size > self.limit:
            self.done = True
            if self.transport is not None:
                self.transport.stopProducing()
            self.finished.errback(FetchError("too-large", f"the response is larger than "
                                                          f"{self.limit} bytes"))
            return
        self.chunks.append(data)

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        if self.done:
            return
        self.done = True
        from twisted.web.client import PotentialDataLoss, ResponseDone

        if reason is None or reason.check(ResponseDone, PotentialDataLoss):
            self.finished.callback(b"".join(self.chunks))
        else:
            self.finished.errback(FetchError("connect", "the response was cut off",
                                             temporary=True))

    def cancel(self) -> None:
        if not self.done and self.transport is not None:
            self.transport.stopProducing()


def _mediaType(value: Optional[str]) -> str:
    return (value or "").split(";", 1)[0].strip().lower()


def _acceptable(mediaType: str, accepted: Sequence[str]) -> bool:
    if mediaType in accepted:
        return True
    return mediaType.startswith("application/") and mediaType.endswith("+json")


class SafeFetcher:
    """
    Fetch JSON documents under a L{FetchPolicy} (see the module docstring).

    @ivar policy: the rules.
    @ivar clock: measures the timeout and stamps documents.
    """

    log = Logger()

    def __init__(
        self,
        *,
        reactor: Any,
        policy: FetchPolicy,
        clock: Optional[IReactorTime] = None,
        resolve: Optional[Resolver] = None,
        runInThread: Optional[Callable[..., Any]] = None,
        agent: Optional[IAgent] = None,
        tlsOptions: Optional[Callable[[str], Any]] = None,
    ) -> None:
        """
        @param reactor: connects (TCP) and, unless C{clock}, keeps time.
        @param resolve: C{(host, port) -> Deferred[list of address
            strings]}; by default C{getaddrinfo} in a thread
            (C{runInThread}, by default the reactor's thread pool).
        @param agent: an L{IAgent} to use instead of the checking agent
            (tests of the response rules). The address rules are applied
            by the checking agent's endpoints: an injected agent must apply
            them itself.
        @param tlsOptions: C{hostname -> client TLS options} (default
            L{optionsForClientTLS}: the system's trust roots).
        """
        self.policy = policy
        self.clock: IReactorTime = clock if clock is not None else reactor
        self._inflight = 0
        self._perHost: Dict[str, int] = {}
        if resolve is None:
            if runInThread is None:
                from twisted.internet.threads import deferToThreadPool

                def runInThread(f: Callable[..., Any], *a: Any, **kw: Any) -> Any:
                    return deferToThreadPool(reactor, reactor.getThreadPool(), f, *a, **kw)

            resolve = _defaultResolver(runInThread)
        resolve = _boundedResolver(resolve, policy.maxLookups)
        if agent is None:
            pool = HTTPConnectionPool(reactor, persistent=False)
            factory = _PinnedEndpointFactory(
                reactor, resolve, policy,
                tlsOptions if tlsOptions is not None else optionsForClientTLS,
            )
            agent = Agent.usingEndpointFactory(reactor, factory, pool=pool)
        self.agent = agent

    @classmethod
    def forConfig(cls, config: Any, *, reactor: Any, **kw: Any) -> "SafeFetcher":
        """
        A fetcher with the policy of C{config}: production rules when
        C{ENVIRONMENT=production}, C{CIMD_ALLOWED_HOSTS},
        C{CIMD_DENIED_HOSTS}, C{CIMD_FETCH_TIMEOUT}.
        """
        policy = FetchPolicy(
            production=config.production,
            allowedHosts=tuple(config.cimdAllowedHosts),
            deniedHosts=tuple(config.cimdDeniedHosts),
            timeout=config.cimdFetchTimeout,
        )
        return cls(reactor=reactor, policy=policy, **kw)

    def checkURL(self, url: str) -> Tuple[str, str, int]:
        """
        The checks that need no network: syntax, scheme, host lists, and
        literal addresses. Returns the scheme, host and port.

        @raise FetchError: when C{url} must not be fetched.
        """
        scheme, host, port = _splitURL(url)
        if scheme != "https" and self.policy.production:
            raise FetchError("scheme", "only https URLs are fetched")
        self.policy.checkHost(host)
        bare = host.lower().rstrip(".")
        if self.policy.production and (bare == "localhost" or bare.endswith(".localhost")):
            raise FetchError("address", NOT_PUBLIC, detail=f"{host} is a loopback name")
        try:
            literal = ipaddress.ip_address(host)
        except ValueError:
            literal = None
        if literal is not None:
            self.policy.checkAddress(str(literal), scheme)
        elif scheme == "http" and host.lower() not in _LOOPBACK_NAMES:
            raise FetchError("scheme", "plain http is only allowed to a loopback host "
                                       "(development)")
        self.policy.checkPort(host, port)
        return scheme, host, port

    def fetchJSON(
        self,
        url: str,
        *,
        maxBytes: int = DEFAULT_MAX_BYTES,
        contentTypes: Sequence[str] = ("application/json",),
    ) -> "Deferred[FetchedDocument]":
        """
        GET C{url} under the policy and parse its body as a JSON object.

        @param maxBytes: the response size cap.
        @param contentTypes: accepted media types (besides any
            C{application/*+json}).
        @return: a Deferred firing with a L{FetchedDocument}, or failing
            with L{FetchError} (nothing else).
        """
        return Deferred.fromCoroutine(self._fetch(url, maxBytes, tuple(contentTypes)))

    async def _fetch(self, url: str, maxBytes: int, contentTypes: Tuple[str, ...]) -> FetchedDocument:
        scheme, host, _ = self.checkURL(url)
        host = host.lower().rstrip(".")
        try:
            host = str(ipaddress.ip_address(host))  # one key per address
        except ValueError:
            pass
        if (self._inflight >= self.policy.maxConcurrent
                or self._perHost.get(host, 0) >= self.policy.maxPerHost):
            self.log.warn("Refused a fetch of {url}: {count} fetch(es) under way ({hostCount} to "
                          "{host})", url=url[:200], count=self._inflight,
                          hostCount=self._perHost.get(host, 0), host=host)
            raise FetchError("busy", "too many documents are being fetched at the moment; try "
                                     "again later", temporary=True)
        self._inflight += 1
        self._perHost[host] = self._perHost.get(host, 0) + 1
        try:
            return await self._fetchCounted(url, scheme, maxBytes, contentTypes)
        finally:
            self._inflight -= 1
            self._perHost[host] -= 1
            if self._perHost[host] <= 0:
                del self._perHost[host]

    async def _fetchCounted(self, url: str, scheme: str, maxBytes: int,
                            contentTypes: Tuple[str, ...]) -> FetchedDocument:
        if scheme == "http":
            self.log.warn("Fetching {url} over plain http (development: loopback only)", url=url)
        headers = Headers({
            b"Accept": [b"application/json"],
            b"Accept-Encoding": [b"identity"],
            b"User-Agent": [_USER_AGENT],
        })
        body: Optional[_Body] = None

        async def exchange() -> Tuple[IResponse, bytes]:
            nonlocal body
            response: IResponse = await self.agent.request(b"GET", url.encode("ascii"), headers)
            _checkResponse(response, maxBytes, contentTypes)
            finished: "Deferred[bytes]" = Deferred()
            body = _Body(finished, maxBytes)
            response.deliverBody(body)
            return response, await finished

        work = Deferred.fromCoroutine(exchange())
        work.addTimeout(self.policy.timeout, self.clock)
        try:
            response, raw = await work
        except FetchError:
            raise
        except (DeferredTimeout, CancelledError):
            if body is not None:
                body.cancel()
            raise FetchError("timeout", f"no complete answer within {self.policy.timeout:g} "
                                        "seconds", temporary=True)
        except _CheckedConnection as e:
            raise e.error
        except Exception as e:
            raise _translate(e)
        return _parse(url, response, raw, self.clock.seconds())


def _translate(error: Exception) -> FetchError:
    """
    A L{FetchError} for a failure of the agent (the checked connection's
    own refusals travel inside L{ResponseFailed} or L{ConnectError}).
    """
    reasons: List[Failure] = list(getattr(error, "reasons", []) or [])
    for reason in reasons:
        if isinstance(reason.value, _CheckedConnection):
            return reason.value.error
    if isinstance(error, _CheckedConnection):
        return error.error
    from OpenSSL.SSL import Error as TLSError
    from service_identity import VerificationError

    tlsErrors = (TLSError, VerificationError)
    if isinstance(error, tlsErrors) or any(isinstance(r.value, tlsErrors) for r in reasons):
        return FetchError("tls", "the TLS handshake failed (certificate not trusted or not for "
                                 "this host?)", temporary=True)
    if isinstance(error, DNSLookupError):
        return FetchError("dns", NOT_PUBLIC, temporary=True, detail="the host could not be resolved")
    if isinstance(error, (ConnectError, ConnectionLost, ResponseFailed)):
        why = ", ".join(dict.fromkeys(type(r.value).__name__ for r in reasons))
        return FetchError("connect", f"could not connect or read the answer "
                                     f"({type(error).__name__}{': ' + why if why else ''})",
                          temporary=True)
    return FetchError("connect", f"the fetch failed ({type(error).__name__})", temporary=True)


def _header(response: IResponse, name: str) -> Optional[str]:
    values = response.headers.getRawHeaders(name)
    if not values:
        return None
    return ", ".join(v.decode("latin-1") if isinstance(v, bytes) else v for v in values)


def _checkResponse(response: IResponse, maxBytes: int, contentTypes: Sequence[str]) -> None:
    """
    Refuse a response on its status and headers, before its body.
    """
    code = response.code
    if 300 <= code < 400:
        raise FetchError("redirect", f"the URL answered with a redirect ({code}); redirects "
                                     "are never followed")
    if code != 200:
        raise FetchError("status", f"the URL answered with HTTP status {code}",
                         temporary=code >= 500 or code in (408, 429))
    encoding = (_header(response, "content-encoding") or "identity").strip().lower()
    if encoding != "identity":
        raise FetchError("encoding", f"the response has a content coding ({encoding[:40]}); "
                                     "only identity is accepted")
    length = response.length
    if isinstance(length, int) and length > maxBytes:
        raise FetchError("too-large", f"the response is larger than {maxBytes} bytes")
    mediaType = _mediaType(_header(response, "content-type"))
    if not _acceptable(mediaType, contentTypes):
        raise FetchError("content-type", f"the response's content type is "
                                         f"{mediaType[:60] or 'missing'}, not JSON")


def _parse(url: str, response: IResponse, raw: bytes, now: float) -> FetchedDocument:
    try:
        text = raw.decode("utf-8")
        value = json.loads(text, parse_constant=_noConstants, object_pairs_hook=_uniqueMembers)
    except _DuplicateMember as e:
        raise FetchError("json", f"the response repeats the member {e.name[:40]!r}")
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise FetchError("json", "the response is not valid JSON in UTF-8")
    if not isinstance(value, dict):
        raise FetchError("json", "the response is not a JSON object")
    if _tooDeep(value, MAX_DEPTH):
        raise FetchError("json", f"the response nests deeper than {MAX_DEPTH} levels")
    kept: Dict[str, str] = {}
    for name in KEPT_HEADERS:
        found = _header(response, name)
        if found is not None:
            kept[name] = found[:500]
    return FetchedDocument(url=url, json=value, body=raw, headers=kept, fetchedAt=now)


class _DuplicateMember(ValueError):
    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name


def _uniqueMembers(pairs: List[Tuple[str, Any]]) -> Dict[str, Any]:
    """
    An object from its members, refusing a repeated name (parsers disagree
    on which one counts).
    """
    out: Dict[str, Any] = {}
    for name, value in pairs:
        if name in out:
            raise _DuplicateMember(name)
        out[name] = value
    return out


def _tooDeep(value: Any, limit: int) -> bool:
    """
    Whether C{value} nests arrays and objects deeper than C{limit} (walked
    without recursion).
    """
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False


def _noConstants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")
