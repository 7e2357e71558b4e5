"""
Tests for L{mcpsvc.oauth.fetch}: the SSRF rules (with a fake resolver and a
memory reactor: no traffic leaves the process) and the response rules
(with a scripted agent).
"""

from __future__ import annotations

import json
from typing import Any, Dict, List

from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import ConnectionLost, ConnectionRefusedError
from twisted.internet.ssl import optionsForClientTLS
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.client import ResponseDone

from mcpsvc.oauth.fetch import (
    DEFAULT_TIMEOUT,
    MAX_WIRE_BYTES,
    FetchedDocument,
    FetchError,
    FetchPolicy,
    SafeFetcher,
    hostMatches,
    isPublicAddress,
)
from mcpsvc.oauth.test.fakehttp import UNKNOWN, FakeAgent, FakeResponse, document

URL = "https://app.example.com/oauth/client.json"


class AddressTests(SynchronousTestCase):
    def test_nonPublicAddresses(self) -> None:
        """
        Loopback, private, shared, link-local (cloud metadata), multicast,
        reserved, unspecified, broadcast, documentation addresses, and IPv6
        forms that reach them (IPv4-mapped, NAT64, 6to4, Teredo), are not
        public.
        """
        for address in (
            "127.0.0.1", "127.255.0.9", "10.1.2.3", "172.16.0.1", "172.31.255.255",
            "192.168.1.1", "100.64.0.1", "169.254.169.254", "0.0.0.0", "224.0.0.1",
            "239.255.255.250", "240.0.0.1", "255.255.255.255", "192.0.2.1", "198.18.0.1",
            "::1", "::", "fe80::1", "fc00::1", "fd12:3456::1", "ff02::1", "2001:db8::1",
            "::ffff:127.0.0.1", "::ffff:10.0.0.1", "64:ff9b::a00:1", "2002:a00:1::1",
            "2001:0:4136:e378:8000:63bf:3fff:fdd2", "fe80::1%eth0", "not-an-address",
            # IPv4-compatible (deprecated ::/96), whatever it embeds
            "::127.0.0.1", "::10.0.0.1", "::93.184.216.34",
            # local-use NAT64 (RFC 8215), IPv4-translated (SIIT), site-local
            "64:ff9b:1::a00:1", "64:ff9b:1::5db8:d822", "::ffff:0:7f00:1", "fec0::1",
            # IETF protocol assignments, the deprecated 6to4 relay anycast,
            # ranges newer than some Python versions' tables: IPv6
            # documentation (RFC 9637), SRv6 SIDs (RFC 9602)
            "192.0.0.8", "192.0.0.170", "192.88.99.1", "3fff::1", "5f00::1",
        ):
            self.assertFalse(isPublicAddress(address), address)

    def test_publicAddresses(self) -> None:
        """
        Ordinary public unicast addresses are public.
        """
        for address in ("93.184.216.34", "8.8.8.8", "2606:4700:4700::1111",
                        "::ffff:93.184.216.34", "64:ff9b::5db8:d822"):
            self.assertTrue(isPublicAddress(address), address)

    def test_hostMatches(self) -> None:
        """
        A host list entry matches its host exactly (case and a trailing
        dot aside), or with C{*.} every host below the domain only.
        """
        self.assertTrue(hostMatches("App.Example.com.", "app.example.com"))
        self.assertFalse(hostMatches("evil-app.example.com", "app.example.com"))
        self.assertTrue(hostMatches("a.b.example.com", "*.example.com"))
        self.assertFalse(hostMatches("example.com", "*.example.com"))
        self.assertFalse(hostMatches("badexample.com", "*.example.com"))


class Resolver:
    """
    A fake resolver: host to addresses, recording lookups.
    """

    def __init__(self, answers: Dict[str, List[str]]) -> None:
        self.answers = answers
        self.lookups: List[str] = []

    def __call__(self, host: str, port: int) -> "Deferred[List[str]]":
        self.lookups.append(host)
        return succeed(list(self.answers.get(host, [])))


class ConnectionRulesTests(SynchronousTestCase):
    """
    The checking agent: resolution, address checks, the pinned connection.
    A L{MemoryReactorClock} records connection attempts; none is made.
    """

    def fetcher(self, answers: Dict[str, List[str]], production: bool = True,
                **policy: Any) -> SafeFetcher:
        self.reactor = MemoryReactorClock()
        self.resolver = Resolver(answers)
        self.serverNames: List[str] = []

        def tlsOptions(host: str) -> Any:
            self.serverNames.append(host)
            return optionsForClientTLS(host)

        return SafeFetcher(reactor=self.reactor, resolve=self.resolver,
                           policy=FetchPolicy(production=production, **policy),
                           tlsOptions=tlsOptions)

    def refused(self, fetcher: SafeFetcher, url: str, reason: str) -> FetchError:
        error = self.failureResultOf(fetcher.fetchJSON(url), FetchError).value
        self.assertEqual(error.reason, reason, error.message)
        self.assertEqual(self.reactor.tcpClients, [], "no connection may be attempted")
        return error

    def test_privateAddressesRefusedAfterResolution(self) -> None:
        """
        In production a host resolving to a loopback, private, link-local
        (cloud metadata) or IPv4-mapped loopback address is refused before
        any connection; so is a host with one bad address among good ones
        (DNS answers are not trusted to be consistent).
        """
        for addresses in (["127.0.0.1"], ["10.0.0.5"], ["192.168.0.10"], ["169.254.169.254"],
                          ["fe80::1"], ["::ffff:127.0.0.1"], ["93.184.216.34", "10.0.0.1"]):
            fetcher = self.fetcher({"app.example.com": addresses})
            error = self.refused(fetcher, URL, "address")
            self.assertEqual(error.message, "the host does not resolve to a public address")
            self.assertNotIn(addresses[-1], error.message)
            self.assertIn(addresses[-1], error.detail)
            self.assertEqual(self.resolver.lookups, ["app.example.com"])

    def test_literalAddressesRefused(self) -> None:
        """
        A URL naming a non-public address literally is refused without a
        lookup.
        """
        for url in ("https://127.0.0.1/c.json", "https://[::1]/c.json",
                    "https://169.254.169.254/latest/meta-data", "https://10.0.0.1:8443/x"):
            fetcher = self.fetcher({})
            self.refused(fetcher, url, "address")
            self.assertEqual(self.resolver.lookups, [])

    def test_unresolvable(self) -> None:
        """
        A host without addresses is a temporary C{dns} failure, described
        to the caller as a refused address is (so that the answer does not
        tell which internal names exist); the log detail says more.
        """
        fetcher = self.fetcher({})
        error = self.refused(fetcher, URL, "dns")
        self.assertTrue(error.temporary)
        # told in the same words as a refused address
        self.assertEqual(error.message, "the host does not resolve to a public address")
        self.assertIn("app.example.com has no address", error.detail)

    def test_connectsToTheCheckedAddress(self) -> None:
        """
        A public host is connected to at the address that was checked (no
        second lookup), on the URL's port, with TLS naming the host (SNI
        and certificate); a refused connection is a temporary failure.
        """
        fetcher = self.fetcher({"app.example.com": ["93.184.216.34", "93.184.216.35"]},
                               allowedHosts=("app.example.com",))
        d = fetcher.fetchJSON("https://app.example.com:8443/client.json")
        self.assertEqual(len(self.reactor.tcpClients), 1)
        host, port, factory, _, _ = self.reactor.tcpClients[0]
        self.assertEqual((host, port), ("93.184.216.34", 8443))
        self.assertEqual(self.serverNames, ["app.example.com"])
        self.assertEqual(self.resolver.lookups, ["app.example.com"])
        factory.clientConnectionFailed(None, Failure(ConnectionRefusedError()))
        error = self.failureResultOf(d, FetchError).value
        self.assertEqual(error.reason, "connect")
        self.assertTrue(error.temporary)

    def test_proxyEnvironmentIgnored(self) -> None:
        """
        C{HTTPS_PROXY}, C{HTTP_PROXY} and C{ALL_PROXY} in the environment
        do not route a fetch: the connection goes to the checked address.
        """
        import os

        for name in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY"):
            self.patch(os, "environ", {**os.environ, name: "http://10.0.0.1:3128"})
        fetcher = self.fetcher({"app.example.com": ["93.184.216.34"]})
        fetcher.fetchJSON(URL)
        self.assertEqual([c[:2] for c in self.reactor.tcpClients], [("93.184.216.34", 443)])

    def test_ipv6(self) -> None:
        """
        A host with a public IPv6 address, or a public IPv6 literal, is
        connected to over IPv6.
        """
        fetcher = self.fetcher({"app.example.com": ["2606:4700:4700::1111"]})
        fetcher.fetchJSON(URL)
        self.assertEqual(self.reactor.tcpClients[0][:2], ("2606:4700:4700::1111", 443))
        fetcher = self.fetcher({})
        fetcher.fetchJSON("https://[2606:4700:4700::1111]/c.json")
        self.assertEqual(self.reactor.tcpClients[0][:2], ("2606:4700:4700::1111", 443))
        self.assertEqual(self.resolver.lookups, [], "a literal address is not looked up")

    def test_httpRefusedInProduction(self) -> None:
        """
        Plain http is refused in production, even to a public host.
        """
        fetcher = self.fetcher({"app.example.com": ["93.184.216.34"]})
        self.refused(fetcher, "http://app.example.com/client.json", "scheme")

    def test_developmentHTTPLoopbackOnly(self) -> None:
        """
        In development plain http is fetched from loopback only (logged as
        a warning): a host name other than localhost, or localhost
        resolving elsewhere, is refused.
        """
        fetcher = self.fetcher({"localhost": ["10.0.0.1"]}, production=False)
        self.refused(fetcher, "http://app.example.com/client.json", "scheme")
        self.refused(fetcher, "http://10.0.0.1/client.json", "scheme")
        self.refused(fetcher, "http://localhost:8080/client.json", "scheme")

    def test_developmentStillRefusesInternalAddresses(self) -> None:
        """
        Development (the default ENVIRONMENT) relaxes the rules for a test
        server on this machine only: https to a private, link-local or
        otherwise internal address is still refused; loopback and public
        addresses are fetched.
        """
        for addresses in (["10.0.0.5"], ["192.168.1.1"], ["169.254.169.254"], ["fd00::1"],
                          ["93.184.216.34", "172.16.0.1"]):
            fetcher = self.fetcher({"internal.example": addresses}, production=False)
            self.refused(fetcher, "https://internal.example/c.json", "address")
        fetcher = self.fetcher({}, production=False)
        self.refused(fetcher, "https://10.1.2.3/c.json", "address")
        for address in ("127.0.0.1", "93.184.216.34"):
            fetcher = self.fetcher({"ok.example": [address]}, production=False)
            fetcher.fetchJSON("https://ok.example:8443/c.json")
            self.assertEqual(self.reactor.tcpClients[0][:2], (address, 8443))

    def test_developmentFetchOverLoopback(self) -> None:
        """
        In development an http URL on localhost is fetched from the
        resolved loopback address with the URL's host in C{Host}, and the
        answer parsed; the warning names the URL.
        """
        fetcher = self.fetcher({"localhost": ["127.0.0.1"]}, production=False)
        events: List[Dict[str, Any]] = []
        from twisted.logger import globalLogPublisher

        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        d = fetcher.fetchJSON("http://localhost:8080/client.json")
        host, port, factory, _, _ = self.reactor.tcpClients[0]
        self.assertEqual((host, port), ("127.0.0.1", 8080))
        protocol = factory.buildProtocol(None)
        transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 8080))
        protocol.makeConnection(transport)
        sent = transport.value()
        self.assertTrue(sent.startswith(b"GET /client.json HTTP/1.1\r\n"), sent)
        self.assertIn(b"Host: localhost:8080\r\n", sent)
        self.assertIn(b"Accept-Encoding: identity\r\n", sent)
        self.assertNotIn(b"Cookie", sent)
        body = json.dumps({"hello": "world"}).encode()
        protocol.dataReceived(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json; charset=utf-8\r\n"
            b"Cache-Control: max-age=60\r\nContent-Length: " + str(len(body)).encode()
            + b"\r\n\r\n" + body
        )
        result = self.successResultOf(d)
        self.assertEqual(result.json, {"hello": "world"})
        self.assertEqual(result.headers["cache-control"], "max-age=60")
        self.assertTrue(any("over plain http" in str(e.get("log_format")) for e in events))

    def test_headerFloodCutOff(self) -> None:
        """
        A server that sends headers without end (Twisted's client parser
        bounds each line, not their number) is cut off once the
        connection has received L{MAX_WIRE_BYTES}: a bounded, temporary
        failure rather than memory growing until the timeout.
        """
        fetcher = self.fetcher({"localhost": ["127.0.0.1"]}, production=False)
        d = fetcher.fetchJSON("http://localhost:8080/client.json")
        factory = self.reactor.tcpClients[0][2]
        protocol = factory.buildProtocol(None)
        transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 8080))
        protocol.makeConnection(transport)
        protocol.dataReceived(b"HTTP/1.1 200 OK\r\n")
        line = b"X-Flood: " + b"x" * 1000 + b"\r\n"
        for _ in range(MAX_WIRE_BYTES // len(line) + 2):
            if transport.disconnecting or getattr(transport, "disconnected", False):
                break
            protocol.dataReceived(line)
        self.assertTrue(transport.disconnecting or transport.disconnected)
        protocol.connectionLost(Failure(ConnectionLost()))
        error = self.failureResultOf(d, FetchError).value
        self.assertEqual(error.reason, "too-large")

    def test_peerCheckedOnConnect(self) -> None:
        """
        The socket's peer address is checked again once connected: a
        connection whose peer is not what the rules allow is cut and
        refused.
        """
        fetcher = self.fetcher({"localhost": ["127.0.0.1"]}, production=False)
        d = fetcher.fetchJSON("http://localhost:8080/client.json")
        factory = self.reactor.tcpClients[0][2]
        protocol = factory.buildProtocol(None)
        transport = StringTransport(peerAddress=IPv4Address("TCP", "10.0.0.1", 8080))
        protocol.makeConnection(transport)
        self.assertEqual(transport.value(), b"", "no request may be sent")
        error = self.failureResultOf(d, FetchError).value
        self.assertEqual(error.reason, "scheme")

    def test_hostLists(self) -> None:
        """
        The deny-list wins; with an allow-list only its hosts are fetched;
        both are checked before any lookup.
        """
        fetcher = self.fetcher({}, deniedHosts=("*.evil.example",),
                               allowedHosts=("app.example.com", "*.evil.example"))
        self.refused(fetcher, "https://a.evil.example/c.json", "denied")
        self.refused(fetcher, "https://other.example.com/c.json", "not-allowed")
        self.assertEqual(self.resolver.lookups, [])

    def test_nonCanonicalHostsRefused(self) -> None:
        """
        A host that is not a plain DNS name or a standard address literal
        is refused before any lookup: IPv4 in decimal, octal, hex or short
        forms (which C{getaddrinfo} would turn into an address), percent
        encoding, empty or oversize labels, underscores, IPv6 zone ids,
        backslashes.
        """
        fetcher = self.fetcher({})
        for url in ("https://2130706433/c.json", "https://0x7f000001/c.json",
                    "https://0x7f.1/c.json", "https://017700000001/c.json",
                    "https://127.1/c.json", "https://0177.0.0.1/c.json",
                    "https://127.000.000.001/c.json", "https://ex%61mple.com/c.json",
                    "https://app..example.com/c.json", "https://-app.example.com/c.json",
                    "https://app_1.example.com/c.json", "https://[fe80::1%25eth0]/c.json",
                    "https://[2606:4700::1111%25eth0]/c.json",
                    "https://" + "a" * 64 + ".example.com/c.json",
                    "https://app.example.com\\@evil.example/c.json",
                    "https://app.example.com:/c.json", "https://app.example.com:0/c.json"):
            self.refused(fetcher, url, "url")
        self.assertEqual(self.resolver.lookups, [])

    def test_localhostNamesRefused(self) -> None:
        """
        In production C{localhost} and every name under it (RFC 6761), with
        or without a trailing dot, are refused before any lookup.
        """
        fetcher = self.fetcher({"localhost": ["93.184.216.34"],
                                "app.localhost": ["93.184.216.34"]})
        for url in ("https://localhost/c.json", "https://LOCALHOST./c.json",
                    "https://app.localhost/c.json", "https://app.localhost./c.json"):
            error = self.refused(fetcher, url, "address")
            self.assertEqual(error.message, "the host does not resolve to a public address")
        self.assertEqual(self.resolver.lookups, [])

    def test_portsInProduction(self) -> None:
        """
        In production only port 443 is fetched (anything else would let a
        client probe the ports of public hosts through us), unless the
        host is on the allow-list; in development any port.
        """
        fetcher = self.fetcher({"app.example.com": ["93.184.216.34"]})
        for url in ("https://app.example.com:8443/c.json", "https://app.example.com:22/c.json",
                    "https://[2606:4700:4700::1111]:6379/c.json",
                    "https://93.184.216.34:25/c.json"):
            self.refused(fetcher, url, "port")
        self.assertEqual(self.resolver.lookups, [])
        fetcher = self.fetcher({"app.example.com": ["93.184.216.34"]})
        fetcher.fetchJSON("https://app.example.com:443/c.json")
        self.assertEqual(self.reactor.tcpClients[0][:2], ("93.184.216.34", 443))
        fetcher = self.fetcher({"app.example.com": ["93.184.216.34"]},
                               allowedHosts=("app.example.com",))
        fetcher.fetchJSON("https://app.example.com:8443/c.json")
        self.assertEqual(self.reactor.tcpClients[0][:2], ("93.184.216.34", 8443))
        fetcher = self.fetcher({"localhost": ["127.0.0.1"]}, production=False)
        fetcher.fetchJSON("http://localhost:8080/c.json")
        self.assertEqual(self.reactor.tcpClients[0][:2], ("127.0.0.1", 8080))

    def test_perHostCountsAnAddressOnce(self) -> None:
        """
        The per-host bound counts an address literal however it is
        written (IPv6 zero compression, upper case).
        """
        fetcher = self.fetcher({}, maxPerHost=2)
        fetcher.fetchJSON("https://[2606:4700::1111]/a.json")
        fetcher.fetchJSON("https://[2606:4700:0:0::1111]/b.json")
        busy = self.failureResultOf(fetcher.fetchJSON("https://[2606:4700:0000::1111]/c.json"),
                                    FetchError).value
        self.assertEqual(busy.reason, "busy")

    def test_lookupThreadsBounded(self) -> None:
        """
        Lookups run in the reactor's thread pool, which other work shares,
        and a lookup cannot be stopped once its thread runs it: at most
        C{maxLookups} run at once, counted until their thread returns (not
        until their fetch times out), so hosts whose DNS never answers
        cannot queue up lookups and starve the pool. One more fetch is
        refused (C{busy}) without a lookup.
        """
        self.reactor = MemoryReactorClock()
        started: List[Deferred] = []

        def runInThread(f: Any, *a: Any, **kw: Any) -> Deferred:
            d: Deferred = Deferred()
            started.append(d)
            return d

        fetcher = SafeFetcher(reactor=self.reactor, runInThread=runInThread,
                              policy=FetchPolicy(production=True, maxLookups=2))
        first = fetcher.fetchJSON("https://h0.example.com/c.json")
        second = fetcher.fetchJSON("https://h1.example.com/c.json")
        self.assertEqual(len(started), 2)
        self.reactor.advance(DEFAULT_TIMEOUT)
        for d in (first, second):
            self.assertEqual(self.failureResultOf(d, FetchError).value.reason, "timeout")
        busy = self.failureResultOf(fetcher.fetchJSON("https://h2.example.com/c.json"),
                                    FetchError).value
        self.assertEqual((busy.reason, busy.temporary), ("busy", True))
        self.assertEqual(len(started), 2, "no third lookup while two threads still run")
        started[0].callback(["93.184.216.34"])
        fetcher.fetchJSON("https://h3.example.com/c.json")
        self.assertEqual(len(started), 3)

    def test_schemeCaseStillTLS(self) -> None:
        """
        An upper-case scheme is still https: the connection is made with
        TLS naming the host (never plain TCP to port 443).
        """
        fetcher = self.fetcher({"app.example.com": ["93.184.216.34"]})
        fetcher.fetchJSON("HTTPS://app.example.com/c.json")
        self.assertEqual(self.reactor.tcpClients[0][:2], ("93.184.216.34", 443))
        self.assertEqual(self.serverNames, ["app.example.com"])
        self.refused(self.fetcher({"app.example.com": ["93.184.216.34"]}),
                     "HTTP://app.example.com/c.json", "scheme")

    def test_concurrencyBounded(self) -> None:
        """
        At most C{maxPerHost} fetches run at once to one host and
        C{maxConcurrent} in all; more are refused at once (a temporary
        C{busy} failure) without a lookup or a connection, and the slots
        are given back when fetches end.
        """
        answers = {f"h{i}.example.com": ["93.184.216.34"] for i in range(5)}
        fetcher = self.fetcher(answers, maxPerHost=2, maxConcurrent=3)
        first = fetcher.fetchJSON("https://h0.example.com/a.json")
        fetcher.fetchJSON("https://h0.example.com/b.json")
        busy = self.failureResultOf(fetcher.fetchJSON("https://h0.example.com/c.json"),
                                    FetchError).value
        self.assertEqual(busy.reason, "busy")
        self.assertTrue(busy.temporary)
        fetcher.fetchJSON("https://h1.example.com/a.json")
        busy = self.failureResultOf(fetcher.fetchJSON("https://h2.example.com/a.json"),
                                    FetchError).value
        self.assertEqual(busy.reason, "busy")
        self.assertEqual(len(self.reactor.tcpClients), 3)
        self.assertNotIn("h2.example.com", self.resolver.lookups)
        factory = self.reactor.tcpClients[0][2]
        factory.clientConnectionFailed(None, Failure(ConnectionRefusedError()))
        self.failureResultOf(first, FetchError)
        fetcher.fetchJSON("https://h2.example.com/a.json")
        self.assertEqual(len(self.reactor.tcpClients), 4)

    def test_badURLs(self) -> None:
        """
        URLs with user information, a fragment, spaces, another scheme or
        no host are refused.
        """
        fetcher = self.fetcher({})
        for url, reason in (("https://user:pw@app.example.com/c.json", "url"),
                            ("https://app.example.com/c.json#x", "url"),
                            ("https://app.example.com/a b", "url"),
                            ("ftp://app.example.com/c.json", "scheme"),
                            ("file:///etc/passwd", "scheme"),
                            ("https:///c.json", "url")):
            self.refused(fetcher, url, reason)


class ResponseRulesTests(SynchronousTestCase):
    """
    What is accepted from an answer, with a scripted agent.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1000)
        self.agent = FakeAgent()
        self.fetcher = SafeFetcher(reactor=None, clock=self.clock, agent=self.agent,
                                   resolve=lambda h, p: succeed([]),
                                   policy=FetchPolicy(production=True, timeout=5))

    def refused(self, reason: str, maxBytes: int = 1024) -> FetchError:
        error = self.failureResultOf(self.fetcher.fetchJSON(URL, maxBytes=maxBytes),
                                     FetchError).value
        self.assertEqual(error.reason, reason, error.message)
        return error

    def test_document(self) -> None:
        """
        A JSON object is returned with the caching headers and the clock's
        time; the request asks for JSON and no content coding.
        """
        self.agent.serve(URL, document({"a": 1}, Cache_Control="max-age=300",
                                       Set_Cookie="x=y", Expires="Thu, 01 Jan 2099 00:00:00 GMT"))
        result = self.successResultOf(self.fetcher.fetchJSON(URL))
        self.assertIsInstance(result, FetchedDocument)
        self.assertEqual(result.json, {"a": 1})
        self.assertEqual(result.fetchedAt, 1000)
        self.assertEqual(result.headers["cache-control"], "max-age=300")
        self.assertIn("expires", result.headers)
        self.assertNotIn("set-cookie", result.headers)
        headers = self.agent.requests[0][2]
        self.assertEqual(headers.getRawHeaders(b"accept-encoding"), [b"identity"])
        self.assertEqual(headers.getRawHeaders(b"accept"), [b"application/json"])

    def test_redirectsNotFollowed(self) -> None:
        """
        A redirect, whichever address it points at, is refused and not
        followed.
        """
        for location in ("http://127.0.0.1/x", "http://169.254.169.254/", "https://10.0.0.1/",
                         "https://other.example.com/ok.json"):
            self.agent.serve(URL, FakeResponse(302, {"Location": location}))
            error = self.refused("redirect")
            self.assertFalse(error.temporary)
        self.assertEqual(len(self.agent.requests), 4)

    def test_statuses(self) -> None:
        """
        A 404 is a definite refusal; 5xx and 429 are temporary.
        """
        self.agent.serve(URL, document({}, code=404))
        self.assertFalse(self.refused("status").temporary)
        for code in (500, 503, 429):
            self.agent.serve(URL, document({}, code=code))
            self.assertTrue(self.refused("status").temporary)

    def test_contentTypes(self) -> None:
        """
        Only JSON media types are accepted (C{application/json}, any
        C{application/*+json}, or those named by the caller).
        """
        for contentType in ("text/html", "text/plain", "", "application/javascript"):
            self.agent.serve(URL, document({}, contentType=contentType))
            self.refused("content-type")
        self.agent.serve(URL, document({"keys": []}, contentType="application/jwk-set+json"))
        self.successResultOf(self.fetcher.fetchJSON(URL))
        self.agent.serve(URL, document({}, contentType="text/json"))
        self.successResultOf(self.fetcher.fetchJSON(URL, contentTypes=["text/json"]))

    def test_contentEncodingRefused(self) -> None:
        """
        A compressed answer (which could expand past the cap) is refused.
        """
        self.agent.serve(URL, document({}, Content_Encoding="gzip"))
        self.refused("encoding")

    def test_sizeCap(self) -> None:
        """
        A declared length over the cap is refused before the body is read;
        a body of unknown length that grows past it is cut off.
        """
        self.agent.serve(URL, document({"a": "x" * 2000}))
        self.refused("too-large")
        response = FakeResponse(200, {"Content-Type": "application/json"},
                                [b'{"a": "', b"x" * 600, b"x" * 600, b'"}'], length=UNKNOWN)
        self.agent.serve(URL, response)
        self.refused("too-large")
        self.assertTrue(response.transport.producerState == "stopped"
                        or response.transport.disconnecting)

    def test_notAJSONObject(self) -> None:
        """
        Invalid JSON, non-UTF-8, non-standard constants and anything but
        an object are refused.
        """
        for body in (b"{", b"[1, 2]", b'"text"', b'{"a": NaN}', b"\xff\xfe{}", b""):
            self.agent.serve(URL, document(body))
            self.refused("json")

    def test_timeout(self) -> None:
        """
        An answer that does not come, or a body that does not end, within
        the timeout is a temporary C{timeout} failure.
        """
        self.agent.serve(URL, Deferred())
        d = self.fetcher.fetchJSON(URL)
        self.assertNoResult(d)
        self.clock.advance(5)
        error = self.failureResultOf(d, FetchError).value
        self.assertEqual(error.reason, "timeout")
        self.assertTrue(error.temporary)
        slow = FakeResponse(200, {"Content-Type": "application/json"}, [b"{"], length=UNKNOWN,
                            finish=False)
        self.agent.serve(URL, slow)
        d = self.fetcher.fetchJSON(URL)
        self.assertNoResult(d)
        self.clock.advance(5)
        self.assertEqual(self.failureResultOf(d, FetchError).value.reason, "timeout")
        self.assertEqual(slow.transport.producerState, "stopped")

    def test_duplicateKeysRefused(self) -> None:
        """
        An object with a repeated member name is refused (parsers disagree
        on which one counts: C{client_id} twice could mean two clients),
        at any depth.
        """
        for body in (b'{"client_id": "https://a.example/c", "client_id": "https://b.example/c"}',
                     b'{"a": {"x": 1, "x": 2}}', b'{"a": [{"x": 1, "x": 1}]}'):
            self.agent.serve(URL, document(body))
            self.refused("json")

    def test_deepNestingRefused(self) -> None:
        """
        Deeply nested JSON (a parser bomb) is refused as C{json}, whatever
        the size cap.
        """
        for body in (b"[" * 100000 + b"]" * 100000, b'{"a":' * 50000 + b"1" + b"}" * 50000,
                     b'{"a": ' + b"[" * 65 + b"]" * 65 + b"}"):
            self.agent.serve(URL, document(body))
            self.refused("json", maxBytes=1024 * 1024)

    def test_bodyEndsAfterTimeout(self) -> None:
        """
        A body that ends (or is cut) after the fetch timed out changes
        nothing and logs no error.
        """
        holder: List[Any] = []

        class Slow(FakeResponse):
            def deliverBody(self, protocol: Any) -> None:
                holder.append(protocol)
                protocol.makeConnection(self.transport)
                protocol.dataReceived(b"{")

        for reason in (ResponseDone(), ConnectionLost()):
            self.agent.serve(URL, Slow(200, {"Content-Type": "application/json"}, b"",
                                       length=UNKNOWN))
            d = self.fetcher.fetchJSON(URL)
            self.clock.advance(5)
            self.assertEqual(self.failureResultOf(d, FetchError).value.reason, "timeout")
            holder[-1].dataReceived(b"}")
            holder[-1].connectionLost(Failure(reason))
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_agentFailure(self) -> None:
        """
        A failed request is a temporary C{connect} failure.
        """
        self.agent.serve(URL, ConnectionRefusedError())
        self.assertTrue(self.refused("connect").temporary)
