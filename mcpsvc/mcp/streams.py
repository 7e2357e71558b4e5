# -*- test-case-name: mcpsvc.mcp.test.test_subscriptions,mcpsvc.mcp.test.test_app -*-
"""
What the server's long-lived SSE streams share: the handshake era's GET
stream (L{mcpsvc.mcp.app}) and the C{subscriptions/listen} stream
(L{mcpsvc.mcp.subscriptions.ListenStream}).

L{sseEvent} frames one JSON-RPC message, L{startEventStream} sets the
response headers of a stream (also used by a POST answered with SSE), and
L{TokenBoundStream} is the life of a stream bound to the caller's token:
keep-alive comments, the end when the token expires, a check at each
keep-alive that the token, its grant (refresh family) and its client are
not revoked, the registration with the site (which closes open streams
gracefully on shutdown) and the cleanup. What a stream sends, and how it
is counted against C{STREAM_LIMIT} and C{STREAM_LIMIT_TOTAL}, stay in its
own class.
"""

from __future__ import annotations

from typing import Any, ClassVar, Dict, Optional

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest

from mcpsvc.mcp.protocol import encode
from mcpsvc.principal import Principal
from mcpsvc.storage.interfaces import StoreUnavailable

__all__ = ["sseEvent", "startEventStream", "TokenBoundStream"]


def sseEvent(message: Dict[str, Any]) -> bytes:
    """
    One SSE C{message} event carrying C{message} (a JSON-RPC message).
    """
    return b"event: message\ndata: " + encode(message) + b"\n\n"


def startEventStream(request: IRequest) -> None:
    """
    Answer C{request} with a 200 C{text/event-stream} that no cache or
    proxy transforms or buffers.
    """
    request.setResponseCode(200)
    request.setHeader("Content-Type", "text/event-stream")
    request.setHeader("Cache-Control", "no-cache, no-transform")
    request.setHeader("X-Accel-Buffering", "no")


def _streamClosers(request: IRequest) -> Any:
    """
    The set of stream closers of the site serving C{request} (closed on a
    graceful shutdown), or C{None}.
    """
    return getattr(getattr(request, "site", None), "streamClosers", None)


class TokenBoundStream:
    """
    A long-lived SSE response that lasts no longer than the caller's token.

    A subclass calls L{_begin} when it opens, then writes its first events;
    it says what is logged when the token ends (L{_tokenEnded}), what else
    a keep-alive checks (L{_check}), how it stops being counted
    (L{_forget}) and the last bytes written when the server ends it
    (L{_final}).

    @ivar request: the response being streamed.
    @ivar clock: the time source (keep-alives, token expiry).
    @ivar token: the caller (its expiry and revocation ids), or C{None}:
        not bound to a token.
    @ivar store: answers C{isAnyRevoked} (or C{None}: not checked).
    @ivar log: where the stream's life is logged (its owner's logger).
    @ivar done: fires with L{_final} when the server ends the stream;
        cancelling it (the client went away) ends the stream without it.
    """

    #: Logged when a keep-alive's check fails unexpectedly.
    checkFailedMessage: ClassVar[str] = "Checking a stream's token failed"

    def __init__(
        self, request: IRequest, clock: IReactorTime, token: Optional[Principal],
        store: Any, keepaliveInterval: float, log: Logger,
    ) -> None:
        self.log = log
        self.request = request
        self.clock = clock
        self.token = token
        self.store = store
        self.keepaliveInterval = keepaliveInterval
        self.done: Deferred[Any] = Deferred(lambda d: self._cleanup())
        self._keepalive = LoopingCall(self._ping)
        self._keepalive.clock = clock
        self._expiry: Optional[IDelayedCall] = None
        self._closed = False

    def _begin(self) -> None:
        """
        Start the response, register with the site for a graceful
        shutdown, and start the keep-alives and the expiry timer.
        """
        startEventStream(self.request)
        closers = _streamClosers(self.request)
        if closers is not None:
            closers.add(self.close)
        self._keepalive.start(self.keepaliveInterval, now=False)
        if self.token is not None and self.token.expiresAt:
            # Ends when the token does, not at the next keep-alive after.
            delay = max(0.0, self.token.expiresAt - self.clock.seconds())
            self._expiry = self.clock.callLater(delay, self._expired)

    def _expired(self) -> None:
        self._expiry = None
        self._tokenEnded("expired")

    def _tokenEnded(self, why: str) -> None:
        """
        The token C{why} (C{expired}, C{was revoked}): log it and close.
        """
        self.close()

    def _ping(self) -> None:
        self.request.write(b": keep-alive\n\n")
        self._check(self.clock.seconds())

    def _check(self, now: float) -> None:
        """
        What each keep-alive checks: by default, that the token, its grant
        (refresh family) and its client are not revoked.
        """
        self._checkRevoked(now)

    def _checkRevoked(self, now: float) -> None:
        token = self.token
        ids = () if token is None else (
            token.revocationIDs or ((token.jti,) if token.jti is not None else ()))
        if ids and self.store is not None:
            # The token, its grant (refresh family) and its client: any
            # revoked ends the stream.
            d = self.store.isAnyRevoked(ids, now)
            d.addCallbacks(self._revocationChecked, self._checkFailed)

    def _revocationChecked(self, revoked: bool) -> None:
        if revoked and not self._closed:
            self._tokenEnded("was revoked")

    def _checkFailed(self, failure: Failure) -> None:
        # The store is unreachable: keep the stream (no request is served
        # on it); the next keep-alive checks again.
        if not failure.check(StoreUnavailable, CancelledError):
            self.log.failure(self.checkFailedMessage, failure)

    def _forget(self) -> None:
        """
        Stop counting this stream (it ended).
        """

    def _final(self) -> Any:
        """
        What L{done} fires with when the server ends the stream.
        """
        return None

    def _cleanup(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._keepalive.running:
            self._keepalive.stop()
        if self._expiry is not None and self._expiry.active():
            self._expiry.cancel()
        self._expiry = None
        self._forget()
        closers = _streamClosers(self.request)
        if closers is not None:
            closers.discard(self.close)

    def close(self) -> None:
        """
        End the stream from the server side: L{done} fires with L{_final}
        and the response finishes.
        """
        if self._closed:
            return
        self._cleanup()
        self.done.callback(self._final())
