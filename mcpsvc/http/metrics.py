# -*- test-case-name: mcpsvc.http.test.test_app -*-
"""
C{/metrics}: Prometheus text format, served only to requests bearing
C{METRICS_TOKEN}.
"""

from __future__ import annotations

import hmac
from typing import Any, Callable, Optional

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from twisted.web.iweb import IRequest

from mcpsvc.config import Config
from mcpsvc.http.errors import Unauthorized

__all__ = ["buildMetrics"]


def buildMetrics(
    config: Config, registry: CollectorRegistry, requireToken: bool = True
) -> Optional[Callable[[IRequest], Any]]:
    """
    Return the C{/metrics} renderer for C{registry}, or C{None} (the route
    answers 404) when no C{METRICS_TOKEN} is configured and C{requireToken}
    is set (the public listener). The separate metrics listener
    (C{--metrics-listen}) passes C{requireToken=False}.
    """
    token = config.metricsToken
    if requireToken and not token:
        return None
    expected = ("Bearer " + (token or "")).encode("utf-8")

    def render(request: IRequest) -> bytes:
        given = (request.getHeader("authorization") or "").encode("utf-8")
        if requireToken and not hmac.compare_digest(given, expected):
            raise Unauthorized(
                "A valid metrics token is required",
                headers={"WWW-Authenticate": 'Bearer realm="metrics"'},
            )
        request.setHeader("Content-Type", CONTENT_TYPE_LATEST)
        return generate_latest(registry)

    return render
