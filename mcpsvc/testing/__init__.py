# -*- test-case-name: mcpsvc.storage.test.test_redis -*-
"""
Helpers for mcpsvc's own tests and for integration tests built on it.

  - L{mcpsvc.testing.redis.RedisServer}: a real, throwaway C{redis-server}
    on a free loopback port.
"""
