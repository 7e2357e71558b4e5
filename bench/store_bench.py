# -*- test-case-name: mcpsvc.storage.test -*-
"""
Store micro-benchmark: operations per second of the hot paths on each
backend, through the real service (thread pool for SQLite, txredisapi pool
for Redis), on the real reactor.

    .venv/bin/python bench/store_bench.py [--count N] [--concurrency C] [--backends memory,sqlite,redis]

  - consumeCode: storeCode + consumeCode of a fresh code (one op = both);
  - rotateRefresh: one rotation of a family's current token;
  - isRevoked: a deny-list lookup;
  - getSession: an MCP session read (every request inside a session).

Each figure is measured sequentially (one call in flight: latency-bound)
and with C concurrent callers. Redis runs on a throwaway redis-server
(no AOF) on a free loopback port; SQLite on a temporary file (WAL,
synchronous=FULL: every write is an fsync).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from typing import Any, Awaitable, Callable, Dict, List

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from twisted.internet.defer import Deferred, gatherResults  # noqa: E402
from twisted.internet.task import react  # noqa: E402

from mcpsvc.config import Config  # noqa: E402
from mcpsvc.storage import buildStoreService  # noqa: E402
from mcpsvc.storage.interfaces import CodeRecord, RefreshFamily, SessionRecord  # noqa: E402
from mcpsvc.testing.redis import RedisServer  # noqa: E402


async def measure(count: int, concurrency: int, op: Callable[[int], Awaitable[Any]]) -> float:
    """
    Run C{op(i)} for C{i} in C{range(count)} with C{concurrency} callers;
    return operations per second.
    """
    started = time.perf_counter()
    nextIndex = iter(range(count))

    async def worker() -> None:
        for i in nextIndex:
            await op(i)

    await gatherResults([Deferred.fromCoroutine(worker()) for _ in range(concurrency)])
    return count / (time.perf_counter() - started)


async def benchStore(store: Any, now: float, count: int, concurrency: int, tag: str) -> Dict[str, float]:
    results: Dict[str, float] = {}

    async def consume(i: int) -> None:
        codeHash = f"sha256:{tag}-{i}"
        await store.storeCode(
            CodeRecord(
                codeHash=codeHash, clientID="c", redirectURI="https://x/cb", codeChallenge="x" * 43,
                codeChallengeMethod="S256", scope="mcp", resource="https://x/mcp", subject="s",
                familyID=f"f-{tag}-{i}", expiresAt=now + 600,
            )
        )
        await store.consumeCode(codeHash, now)

    families = max(1, concurrency)
    for f in range(families):
        await store.createFamily(
            RefreshFamily(
                familyID=f"fam-{tag}-{f}", clientID="c", subject="s", scope="mcp", resource="r",
                currentHash=f"h-{f}-0", createdAt=now, expiresAt=now + 86400,
            )
        )
    rotations = [0] * families

    async def rotate(i: int) -> None:
        f = i % families
        n = rotations[f]
        rotations[f] += 1
        result = await store.rotateRefresh(
            f"fam-{tag}-{f}", f"h-{f}-{n}", f"h-{f}-{n + 1}", "sealed", now + 60, f"j-{i}", now + 3600, now
        )
        assert result.outcome.value == "rotated", result

    await store.revokeJTI(f"j-{tag}-revoked", now + 3600)

    async def check(i: int) -> None:
        await store.isRevoked(f"j-{tag}-{i % 2 and 'revoked' or i}", now)

    await store.createSession(
        SessionRecord(
            sessionID=f"sess-{tag}", subject="s", clientID="c", protocolVersion="2025-06-18",
            createdAt=now, expiresAt=now + 3600,
            data={"clientInfo": {"name": "ServiceNow", "version": "1.0"}, "capabilities": {}},
        )
    )

    async def session(i: int) -> None:
        await store.getSession(f"sess-{tag}", now)

    for name, op in (("consumeCode", consume), ("rotateRefresh", rotate), ("isRevoked", check),
                     ("getSession", session)):
        results[name] = await measure(count, concurrency, op)
    return results


async def main(reactor: Any, args: argparse.Namespace) -> None:
    table: List[List[str]] = []
    tmp = tempfile.mkdtemp(prefix="mcpsvc-bench-")
    server = None
    try:
        for backend in args.backends.split(","):
            if backend == "redis":
                server = RedisServer(os.path.join(tmp, "redis")).start()
                config = Config(store="redis", redisURL=server.url, redisPrefix="bench:")
            elif backend == "sqlite":
                config = Config(store="sqlite", storePath=os.path.join(tmp, "bench.sqlite3"))
            else:
                config = Config(store="memory")
            service = buildStoreService(config, reactor=reactor, clock=reactor)
            service.startService()
            try:
                for concurrency in (1, args.concurrency):
                    tag = f"{backend}-{concurrency}"
                    figures = await benchStore(service.store, reactor.seconds(), args.count, concurrency, tag)
                    table.append([backend, str(concurrency)] + [f"{figures[k]:,.0f}" for k in
                                                                 ("consumeCode", "rotateRefresh", "isRevoked",
                                                                  "getSession")])
            finally:
                await service.stopService()
    finally:
        if server is not None:
            server.stop()
    header = ["backend", "in flight", "consumeCode/s", "rotateRefresh/s", "isRevoked/s", "getSession/s"]
    widths = [max(len(row[i]) for row in table + [header]) for i in range(len(header))]
    for row in [header] + table:
        sys.stdout.write("  ".join(cell.rjust(w) for cell, w in zip(row, widths)) + "\n")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=2000, help="operations per measurement")
    parser.add_argument("--concurrency", type=int, default=16, help="callers in flight for the second run")
    parser.add_argument("--backends", default="memory,sqlite,redis")
    options = parser.parse_args()
    react(lambda reactor: Deferred.fromCoroutine(main(reactor, options)))
