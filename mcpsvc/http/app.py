# -*- test-case-name: mcpsvc.http.test.test_app -*-
"""
The root of the HTTP tree: health and readiness, and the dispatcher that
hands each request to the app that owns its path.

Each app (this one, the OAuth app, the MCP endpoint) is a Klein class whose
routes are absolute paths. L{Dispatcher} is a leaf resource that picks the
app by path prefix and lets its Klein resource route on the whole path, so
every app can be tested alone with C{StubTreq(app.resource())}.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Callable, ClassVar, Optional, Sequence, Tuple

from attrs import frozen
from klein import Klein
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource, Resource

from mcpsvc import __version__
from mcpsvc.http.errors import BadRequest, installErrorHandlers, renderError
from mcpsvc.http.jsonio import writeJSON
from mcpsvc.storage.interfaces import StoreError

__all__ = ["RootApp", "Dispatcher", "isoTime"]


def isoTime(when: float) -> str:
    """
    Format POSIX seconds as ISO 8601 UTC with a C{Z} suffix.
    """
    return (
        datetime.fromtimestamp(when, tz=timezone.utc)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z")
    )


@frozen(kw_only=True)
class RootApp:
    """
    C{/health}, C{/ready} and C{/metrics}.

    @ivar clock: time source.
    @ivar ping: returns a Deferred that fires when the store answers and
        fails when it does not.
    @ivar readinessChecks: more named checks for C{/ready}; each returns
        C{None} when ready or a reason string.
    @ivar metrics: renders C{/metrics} (C{None}: 404), given the request.
    """

    app: ClassVar[Klein] = Klein()
    log: ClassVar[Logger] = Logger()

    clock: IReactorTime
    ping: Callable[[], "Deferred[Any]"]
    readinessChecks: Sequence[Tuple[str, Callable[[], Optional[str]]]] = ()
    metrics: Optional[Callable[[IRequest], Any]] = None
    readyTimeout: float = 2.0

    def resource(self) -> IResource:
        return self.app.resource()  # type: ignore[no-any-return]

    installErrorHandlers(app)

    @app.route("/health", methods=["GET", "HEAD"])
    def health(self, request: IRequest) -> bytes:
        request.setHeader("Cache-Control", "no-store")
        return writeJSON(
            request,
            {
                "status": "healthy",
                "version": __version__,
                "timestamp": isoTime(self.clock.seconds()),
            },
        )

    @app.route("/ready", methods=["GET", "HEAD"])
    async def ready(self, request: IRequest) -> bytes:
        request.setHeader("Cache-Control", "no-store")
        # The details (a store's error text names hosts, files, ...) go to
        # the log only: /ready is unauthenticated, its answer says which
        # part is not ready and nothing more.
        details = {}
        try:
            d = self.ping()
            d.addTimeout(self.readyTimeout, self.clock)
            await d
        except StoreError as e:
            details["store"] = f"unavailable: {e}" if str(e) else "unavailable"
        except CancelledError:
            # The prober went away (our own deadline is a TimeoutError).
            raise
        except Exception as e:  # noqa: BLE001 - any failure means not ready
            details["store"] = f"unavailable: {e.__class__.__name__}: {e}"
        for name, check in self.readinessChecks:
            reason = check()
            if reason is not None:
                details[name] = reason
        now = isoTime(self.clock.seconds())
        if details:
            self.log.warn("Not ready: {reasons}", reasons=details)
            reasons = {
                name: "unavailable" if name == "store" else "not ready" for name in details
            }
            return writeJSON(
                request,
                {"status": "not_ready", "reasons": reasons, "timestamp": now},
                code=503,
                headers={"Retry-After": "5"},
            )
        return writeJSON(request, {"status": "ready", "timestamp": now})

    @app.route("/metrics", methods=["GET"])
    def metricsRoute(self, request: IRequest) -> Any:
        if self.metrics is None:
            from mcpsvc.http.errors import NotFoundError

            raise NotFoundError("No such resource")
        return self.metrics(request)


@frozen
class _Route:
    prefix: str
    exact: bool
    resource: IResource


class Dispatcher(Resource):
    """
    A leaf resource that hands the whole request to the resource owning its
    path. Routes are C{(path, resource)} pairs: a path ending in C{/} is a
    prefix, any other path matches itself and itself followed by C{/...}.
    The first match wins; L{fallback} takes the rest.
    """

    isLeaf = True

    def __init__(self, routes: Sequence[Tuple[str, IResource]], fallback: IResource) -> None:
        super().__init__()
        self._routes = [
            _Route(prefix=path, exact=not path.endswith("/"), resource=resource)
            for path, resource in routes
        ]
        self._fallback = fallback

    def resourceFor(self, path: str) -> IResource:
        for route in self._routes:
            if route.exact:
                if path == route.prefix or path.startswith(route.prefix + "/"):
                    return route.resource
            elif path.startswith(route.prefix):
                return route.resource
        return self._fallback

    def render(self, request: IRequest) -> Any:
        path = request.path.decode("latin-1")
        try:
            # What Klein decodes (logging a traceback when it cannot): the
            # percent-decoded path and the Host name, as UTF-8.
            b"/".join(request.postpath or []).decode("utf-8")
            request.getRequestHostname().decode("utf-8")
        except UnicodeDecodeError:
            return renderError(request, BadRequest("The request path and Host must be UTF-8"))
        return self.resourceFor(path).render(request)
