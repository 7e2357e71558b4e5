# -*- test-case-name: mcpsvc.test.test_metrics -*-
"""
L{MeteredStore}: an L{IStore} proxy that measures every operation of the
store it wraps.

Each call is timed on the injected clock (one clock read before, one when
its Deferred fires) into C{metrics.storeLatency{operation}}; a call that
fails with L{StoreUnavailable} also counts into
C{metrics.storeErrors{operation}}. Domain failures (L{NoSuchClient},
L{AlreadyUsed}, ...) are answers, not errors: they are timed, not counted.

Attributes that are not store operations (C{backendName}, anything a
backend adds) are passed through unchanged.
"""

from __future__ import annotations

from typing import Any, Callable, Dict

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from zope.interface import implementer
from zope.interface.interface import Method

from mcpsvc.metrics import Metrics
from mcpsvc.storage.interfaces import IStore, StoreUnavailable

__all__ = ["MeteredStore", "OPERATIONS"]

#: Every method of L{IStore}: the values of the C{operation} label.
OPERATIONS = tuple(
    sorted(name for name, spec in IStore.namesAndDescriptions(all=True) if isinstance(spec, Method))
)


@implementer(IStore)
class MeteredStore:
    """
    Wraps C{store}; every L{IStore} method answers exactly as the wrapped
    one does (same result, same failure), measured.
    """

    def __init__(self, store: Any, metrics: Metrics, clock: IReactorTime) -> None:
        self.store = store
        self._metrics = metrics
        self._clock = clock
        # Bind the label children once: a call then costs two clock reads,
        # one observe and (on StoreUnavailable) one increment.
        self._methods: Dict[str, Callable[..., Any]] = {}
        for name in OPERATIONS:
            target = getattr(store, name, None)
            if target is not None:
                self._methods[name] = self._meter(
                    name, target,
                    metrics.storeLatency.labels(name),
                    metrics.storeErrors.labels(name),
                )

    def _meter(self, name: str, target: Callable[..., Any], latency: Any, errors: Any) -> Callable[..., Any]:
        clock = self._clock

        def metered(*args: Any, **kwargs: Any) -> Any:
            started = clock.seconds()
            try:
                result = target(*args, **kwargs)
            except Exception as e:
                latency.observe(max(0.0, clock.seconds() - started))
                if isinstance(e, StoreUnavailable):
                    errors.inc()
                raise
            if not isinstance(result, Deferred):
                latency.observe(max(0.0, clock.seconds() - started))
                return result

            def done(outcome: Any) -> Any:
                latency.observe(max(0.0, clock.seconds() - started))
                if hasattr(outcome, "check") and outcome.check(StoreUnavailable):
                    errors.inc()
                return outcome

            return result.addBoth(done)

        metered.__name__ = name
        return metered

    def __getattr__(self, name: str) -> Any:
        # Only reached for names not set in __init__: operations, then
        # everything else from the wrapped store.
        methods = self.__dict__.get("_methods")
        if methods is not None and name in methods:
            return methods[name]
        return getattr(self.__dict__["store"], name)

    def __repr__(self) -> str:
        return f"<MeteredStore {self.store!r}>"
