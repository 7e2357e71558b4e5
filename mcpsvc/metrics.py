# -*- test-case-name: mcpsvc.test.test_metrics -*-
"""
Prometheus metrics (prometheus_client), one L{Metrics} per service tree,
each with its own registry.
"""

from __future__ import annotations

import re
from typing import Callable, Optional

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["Metrics", "routeLabel", "methodLabel", "statusLabel", "codeLabel"]

#: The methods that get a label of their own; any other token (HTTP allows
#: any) is counted as C{"other"}.
_KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH"})

#: What a label made by the code (an audit action, a tool name, a store
#: operation, an outcome) looks like; anything else is C{"other"}, so that
#: no value a client chose can ever become a label.
_CODE_LABEL = re.compile(r"[A-Za-z0-9_.:()/-]{1,128}")

_KNOWN_ROUTES = (
    "/mcp", "/health", "/ready", "/metrics",
    "/oauth/register", "/oauth/authorize", "/oauth/token", "/oauth/revoke", "/oauth/introspect",
    "/register", "/authorize", "/token", "/revoke",
    "/.well-known/oauth-authorization-server", "/.well-known/openid-configuration",
    "/.well-known/oauth-protected-resource", "/.well-known/jwks.json",
)


def routeLabel(path: str) -> str:
    """
    The route label of a request path: a known route, or C{"other"}, so
    that clients cannot blow up the label cardinality.
    """
    if path.endswith("/") and len(path) > 1:
        path = path[:-1]
    for route in _KNOWN_ROUTES:
        if path == route or (route.startswith("/.well-known/") and path.startswith(route + "/")):
            return route
    return "other"


def methodLabel(method: str) -> str:
    """
    The method label: one of a fixed set, or C{"other"}.
    """
    return method if method in _KNOWN_METHODS else "other"


def statusLabel(status: int) -> str:
    """
    The status label: a three-digit HTTP status, or C{"other"}.
    """
    return str(status) if isinstance(status, int) and 100 <= status <= 599 else "other"


def codeLabel(value: str) -> str:
    """
    A label value chosen by mcpsvc's code: kept when it looks like one,
    else C{"other"}.
    """
    return value if isinstance(value, str) and _CODE_LABEL.fullmatch(value) else "other"


class Metrics:
    """
    Every metric mcpsvc exports.
    """

    def __init__(self, registry: Optional[CollectorRegistry] = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "mcpsvc_http_requests", "HTTP requests by route, method and status.",
            ["route", "method", "status"], registry=r,
        )
        self.requestDuration = Histogram(
            "mcpsvc_http_request_duration_seconds", "HTTP request duration by route.",
            ["route"], registry=r,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )
        self.toolCalls = Counter(
            "mcpsvc_tool_calls", "Tool calls by tool and outcome.", ["tool", "outcome"], registry=r,
        )
        self.audit = Counter(
            "mcpsvc_audit_events",
            "Security events (registrations, authorizations, tokens issued, refreshed and "
            "revoked, reuse detected, failed client authentication, rate-limit hits) by "
            "action and outcome.",
            ["action", "outcome"], registry=r,
        )
        self.storeErrors = Counter(
            "mcpsvc_store_errors", "Store operations that failed as unavailable.",
            ["operation"], registry=r,
        )
        self.storeLatency = Histogram(
            "mcpsvc_store_operation_seconds", "Store operation latency.", ["operation"], registry=r,
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5),
        )
        self.activeSessions = Gauge(
            "mcpsvc_active_sessions", "Live MCP sessions (as of the last sweep).", registry=r,
        )
        #: Read when scraped (L{watchStreams}).
        self.openStreams = Gauge(
            "mcpsvc_open_streams",
            "Open notification streams on this instance: listen (2026-07-28 "
            "subscriptions/listen) and get (GET streams of earlier versions).",
            ["kind"], registry=r,
        )

    def watchStreams(self, listen: Callable[[], int], get: Callable[[], int]) -> None:
        """
        Report C{listen()} and C{get()} as C{mcpsvc_open_streams}.
        """
        self.openStreams.labels("listen").set_function(listen)
        self.openStreams.labels("get").set_function(get)

    def observeRequest(self, path: str, method: str, status: int, seconds: float) -> None:
        route = routeLabel(path)
        self.requests.labels(route, methodLabel(method), statusLabel(status)).inc()
        self.requestDuration.labels(route).observe(max(0.0, seconds))

    def auditHook(self) -> Callable[[str, str], None]:
        def hook(action: str, outcome: str) -> None:
            self.audit.labels(codeLabel(action), codeLabel(outcome)).inc()

        return hook

    def toolCall(self, tool: str, outcome: str) -> None:
        # Tool names come from the registry (a miss is already "unknown");
        # the check only keeps a plugin's odd name from widening the set.
        self.toolCalls.labels(codeLabel(tool), codeLabel(outcome)).inc()

    def __repr__(self) -> str:  # pragma: no cover
        return "<Metrics>"


