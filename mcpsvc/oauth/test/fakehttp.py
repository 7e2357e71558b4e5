"""
A scripted L{IAgent} for the fetcher and metadata document tests: nothing
leaves the process.
"""

from __future__ import annotations

import json
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH, IAgent
from zope.interface import implementer

__all__ = ["FakeResponse", "FakeAgent", "document"]


class FakeResponse:
    """
    Enough of L{IResponse} for the fetcher: code, headers, length, body
    (delivered in C{chunks}; C{finish=False} never ends it).
    """

    def __init__(self, code: int = 200, headers: Optional[Dict[str, str]] = None,
                 body: Union[bytes, Sequence[bytes]] = b"", length: Any = "auto",
                 finish: bool = True) -> None:
        self.code = code
        self.phrase = b"OK"
        self.version = (b"HTTP", 1, 1)
        self.headers = Headers({k: [v] for k, v in (headers or {}).items()})
        self.chunks = [body] if isinstance(body, bytes) else list(body)
        total = sum(len(c) for c in self.chunks)
        self.length = total if length == "auto" else length
        self.finish = finish
        self.transport = StringTransport()

    def deliverBody(self, protocol: Any) -> None:
        protocol.makeConnection(self.transport)
        for chunk in self.chunks:
            protocol.dataReceived(chunk)
        if self.finish:
            protocol.connectionLost(Failure(ResponseDone()))


def document(body: Any, *, code: int = 200, contentType: str = "application/json",
             **headers: str) -> FakeResponse:
    """
    A JSON response; header names as keyword arguments with C{_} for C{-}.
    """
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    allHeaders = {"Content-Type": contentType}
    allHeaders.update({k.replace("_", "-"): v for k, v in headers.items()})
    return FakeResponse(code, allHeaders, raw)


@implementer(IAgent)
class FakeAgent:
    """
    Answers each URL with the next scripted item: a L{FakeResponse}, an
    exception (the request fails with it) or a L{Deferred}.

    @ivar requests: C{(method, url, headers)} of every request.
    """

    def __init__(self) -> None:
        self.scripts: Dict[str, List[Any]] = {}
        self.fixed: Dict[str, Any] = {}
        self.requests: List[Tuple[bytes, bytes, Any]] = []

    def serve(self, url: str, *answers: Any) -> None:
        """
        Answer C{url} with C{answers} in turn; the last one repeats.
        """
        self.scripts[url] = list(answers)

    def request(self, method: bytes, uri: bytes, headers: Any = None,
                bodyProducer: Any = None) -> "Deferred[Any]":
        self.requests.append((method, uri, headers))
        url = uri.decode("ascii")
        script = self.scripts.get(url)
        if not script:
            return fail(ConnectionRefusedError("nothing serves " + url))
        answer = script.pop(0) if len(script) > 1 else script[0]
        if isinstance(answer, Deferred):
            return answer
        if isinstance(answer, BaseException):
            return fail(answer)
        return succeed(answer)

    def count(self, url: str) -> int:
        return sum(1 for _, uri, _ in self.requests if uri.decode("ascii") == url)


UNKNOWN = UNKNOWN_LENGTH
