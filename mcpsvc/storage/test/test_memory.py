# -*- test-case-name: mcpsvc.storage.test.test_memory -*-
"""
Tests for L{mcpsvc.storage.memory}.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from mcpsvc.storage.memory import MemoryStore
from mcpsvc.storage.test.base import StoreTestsMixin, SweepCountTestsMixin


class MemoryStoreTests(StoreTestsMixin, SweepCountTestsMixin, SynchronousTestCase):
    """
    The conformance suite against L{MemoryStore}; every answer is synchronous.
    """

    def makeStore(self) -> MemoryStore:
        return MemoryStore(self.clock)
