"""
Small test doubles for the foundation's tests.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

from twisted.application.service import Service
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.testing import StringTransport
from twisted.web.http import HTTPChannel

from mcpsvc.storage.interfaces import StoreUnavailable, SweepReport


class PingStore:
    """
    A store that only answers L{ping}, L{sweep} (as scripted),
    L{countSessions} and L{removeIdleDocumentClients} (always 0).
    """

    backendName = "fake"

    def __init__(self) -> None:
        self.up = True
        self.sweeps: List[float] = []
        self.sweepResults: List[Any] = []

    def ping(self) -> "Deferred[None]":
        if self.up:
            return succeed(None)
        return fail(StoreUnavailable("connection refused"))

    def countSessions(self, now: float) -> "Deferred[int]":
        return succeed(0) if self.up else fail(StoreUnavailable("connection refused"))

    def removeIdleDocumentClients(self, staleBefore: float, now: float) -> "Deferred[int]":
        return succeed(0) if self.up else fail(StoreUnavailable("connection refused"))

    def sweep(self, now: float) -> "Deferred[SweepReport]":
        self.sweeps.append(now)
        if self.sweepResults:
            result = self.sweepResults.pop(0)
            if isinstance(result, Exception):
                return fail(result)
            if isinstance(result, Deferred):
                return result
            return succeed(result)
        return succeed(SweepReport(removed={}))


class FakeStoreService(Service):
    """
    A store service recording start and stop into C{events}.
    """

    def __init__(self, events: List[str], store: Optional[Any] = None) -> None:
        self.events = events
        self.store = store if store is not None else PingStore()
        self.stopping: Optional[Deferred[None]] = None

    def startService(self) -> None:
        super().startService()
        self.events.append("store started")

    def stopService(self) -> "Deferred[None]":
        super().stopService()
        self.events.append("store stopped")
        return succeed(None)


def rawRequest(site: Any, data: bytes, peer: Tuple[str, int] = ("127.0.0.1", 40000)) -> Tuple[int, Dict[str, List[str]], bytes, StringTransport]:
    """
    Feed C{data} to a real L{HTTPChannel} for C{site} over a
    L{StringTransport}, and parse the (first) response.
    """
    from twisted.internet.address import IPv4Address

    channel = HTTPChannel()
    channel.site = site
    channel.requestFactory = site.requestFactory
    transport = StringTransport(peerAddress=IPv4Address("TCP", *peer))
    channel.makeConnection(transport)
    channel.dataReceived(data)
    if transport.disconnecting:
        # As the reactor would once the write buffer is flushed.
        from twisted.internet.error import ConnectionDone
        from twisted.python.failure import Failure

        channel.connectionLost(Failure(ConnectionDone()))
    return (*parseResponse(transport.value()), transport)


def parseResponse(raw: bytes) -> Tuple[int, Dict[str, List[str]], bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    if not lines or not lines[0]:
        return 0, {}, b""
    status = int(lines[0].split(" ")[1])
    headers: Dict[str, List[str]] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers.setdefault(name.strip().lower(), []).append(value.strip())
    if "chunked" in headers.get("transfer-encoding", []):
        decoded = b""
        rest = body
        while rest:
            size, _, rest = rest.partition(b"\r\n")
            n = int(size, 16)
            if n == 0:
                break
            decoded += rest[:n]
            rest = rest[n + 2:]
        body = decoded
    return status, headers, body
