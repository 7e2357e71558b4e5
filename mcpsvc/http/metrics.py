# -*- test-case-name: mcpsvc.http.test.test_app -*-
"""
C{/metrics}: Prometheus text format, served only to requests bearing
C{METRICS_TOKEN}.
"""

from __future__ import annotations

import hmac
from typing import Any, Callable, Optional

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest
from twisted.web.iweb import IRequest

from mcpsvc.config import Config
from mcpsvc.http.errors import NotFoundError, Unauthorized

__all__ = ["buildMetrics"]


def buildMetrics(
    config: Config, registry: CollectorRegistry = REGISTRY
) -> Optional[Callable[[IRequest], Any]]:
    """
    Return the C{/metrics} renderer, or C{None} (the route answers 404)
    when no C{METRICS_TOKEN} is configured.
    """
    token = config.metricsToken
    if not token:
        return None
    expected = ("Bearer " + token).encode("utf-8")

    def render(request: IRequest) -> bytes:
        given = (request.getHeader("authorization") or "").encode("utf-8")
        if not hmac.compare_digest(given, expected):
            raise Unauthorized(
                "A valid metrics token is required",
                headers={"WWW-Authenticate": 'Bearer realm="metrics"'},
            )
        request.setHeader("Content-Type", CONTENT_TYPE_LATEST)
        return generate_latest(registry)

    del NotFoundError
    return render
