# -*- test-case-name: mcpsvc.storage.test.test_durability -*-
"""
Child process of L{mcpsvc.storage.test.test_durability}: writes to a store
until killed, printing C{ack <i>} on stdout only after both writes of
iteration C{i} (a client registration and a revocation) were acknowledged.

    python -m mcpsvc.storage.test.durability_child sqlite PATH COUNT
    python -m mcpsvc.storage.test.durability_child redis URL COUNT
"""

from __future__ import annotations

import sys
from typing import Any, List


async def main(reactor: Any, argv: List[str]) -> None:
    from mcpsvc.config import Config
    from mcpsvc.storage import buildStoreService
    from mcpsvc.storage.interfaces import ClientRecord

    backend, where, count = argv[0], argv[1], int(argv[2])
    if backend == "sqlite":
        config = Config(store="sqlite", storePath=where)
    else:
        config = Config(store="redis", redisURL=where, redisPrefix="durable:")
    service = buildStoreService(config, reactor=reactor, clock=reactor)
    service.startService()
    try:
        sys.stdout.write("ready\n")
        sys.stdout.flush()
        for i in range(count):
            now = reactor.seconds()
            await service.store.createClient(
                ClientRecord(clientID=f"c-{i}", secretHash=None, metadata={"i": i}, createdAt=now)
            )
            await service.store.revokeJTI(f"j-{i}", now + 3600)
            sys.stdout.write(f"ack {i}\n")
            sys.stdout.flush()
    finally:
        await service.stopService()


if __name__ == "__main__":
    from twisted.internet.defer import Deferred
    from twisted.internet.task import react

    react(lambda reactor: Deferred.fromCoroutine(main(reactor, sys.argv[1:])))
