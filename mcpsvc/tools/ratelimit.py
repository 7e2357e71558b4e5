# -*- test-case-name: mcpsvc.tools.test.test_ratelimit -*-
"""
Rate limiting of tool calls (the MCP specification's tools security
considerations: servers MUST rate limit tool invocations).

One token bucket per principal: the token's subject together with its
OAuth client, so a person using two clients, or one client used by two
people, gets two buckets. A bucket holds C{count} tokens and refills at
C{count / seconds} tokens per second; a call takes one token.

Where the buckets live
======================

The buckets are B{in process}, one set per mcpsvc instance. The store
has a shared C{takeToken} (the OAuth endpoints use it), but a store-backed
limit would add a store round trip to every C{tools/call}, the hottest
path of the service, where a call already costs a session lookup (on
Redis, a network round trip; for cheap tools the store round trips are
most of the cost of a call). An in-process bucket costs a dictionary
lookup and a little arithmetic.

The price: with N instances behind a load balancer, a principal can make
up to N times C{TOOL_RATE_LIMIT} calls in the worst case (round-robin
balancing spreads a client's calls, so in practice the limit is the
configured rate times the instances the client reaches). Operators of a
multi-server deployment who need an exact global limit should divide the
configured count by the number of instances, or enforce the limit at the
load balancer. The purpose here is protection against a runaway agent
loop or an abusive client, for which a per-instance bound is enough.

Memory stays bounded by the principals active within one window: a
bucket untouched for C{seconds} is full again, which is the same as no
bucket at all, so such buckets are dropped by a sweep that runs at most
once per window, during a call.
"""

from __future__ import annotations

import math
from typing import Dict, Hashable, Optional, Tuple

from twisted.internet.interfaces import IReactorTime

__all__ = ["TokenBuckets"]


class TokenBuckets:
    """
    In-process token buckets keyed by any hashable value.

    @ivar count: the burst size (tokens of a full bucket).
    @ivar seconds: the window in which a full bucket refills.
    """

    def __init__(self, count: int, seconds: float, clock: IReactorTime) -> None:
        if count < 1 or seconds <= 0:
            raise ValueError("a rate limit needs count >= 1 and seconds > 0")
        self.count = count
        self.seconds = seconds
        self._rate = count / seconds
        self._clock = clock
        #: key -> (tokens left, time of the last update)
        self._buckets: Dict[Hashable, Tuple[float, float]] = {}
        self._lastSweep = clock.seconds()

    def __len__(self) -> int:
        return len(self._buckets)

    def take(self, key: Hashable) -> Optional[float]:
        """
        Take a token from C{key}'s bucket.

        @return: C{None} when the call may go ahead; otherwise the seconds
            until a token is available (the call is refused and takes
            nothing).
        """
        now = self._clock.seconds()
        if now - self._lastSweep >= self.seconds:
            self._sweep(now)
        tokens, then = self._buckets.get(key, (float(self.count), now))
        tokens = min(float(self.count), tokens + max(0.0, now - then) * self._rate)
        if tokens < 1.0:
            self._buckets[key] = (tokens, now)
            return (1.0 - tokens) / self._rate
        self._buckets[key] = (tokens - 1.0, now)
        return None

    def _sweep(self, now: float) -> None:
        """
        Drop the buckets that have refilled completely.
        """
        self._lastSweep = now
        full = [
            key
            for key, (tokens, then) in self._buckets.items()
            if tokens + (now - then) * self._rate >= self.count
        ]
        for key in full:
            del self._buckets[key]


def retryAfter(seconds: float) -> int:
    """
    Whole seconds to tell a client to wait (at least 1).
    """
    return max(1, int(math.ceil(seconds)))
