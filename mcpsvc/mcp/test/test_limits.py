"""
Limits on what one principal (token subject and OAuth client) can hold on
C{/mcp}: live sessions (C{SESSION_LIMIT}: a new one ends the least recently
used), GET streams (C{STREAM_LIMIT}: one more is refused) and the rate of
C{initialize} (C{RATE_LIMIT_INITIALIZE}).
"""

import json
from typing import Any, List, Tuple

from twisted.logger import capturedLogs
from twisted.trial.unittest import SynchronousTestCase

from mcpsvc.config import Config, ConfigError, RateLimit, loadConfig
from mcpsvc.mcp.test.helpers import MALLORY, Harness


def header(response: Any, name: str) -> Any:
    values = response.headers.getRawHeaders(name.encode("ascii"))
    return values[0].decode() if values else None


class SessionLimitTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.h = Harness(self, config=Config(sessionLimit=3))

    def ping(self, sid: str) -> int:
        status, _ = self.h.json(self.h.call(1, "ping"), {"Mcp-Session-Id": sid})
        return status

    def initialize(self) -> str:
        sid = self.h.initialize()
        self.h.pump(120)  # later sessions are more recent
        return sid

    def test_leastRecentlyUsedEnded(self) -> None:
        """
        The fourth session of a principal ends its least recently used one
        (404 from then on); using a session keeps it.
        """
        first, second, third = self.initialize(), self.initialize(), self.initialize()
        self.assertEqual(self.ping(first), 200)  # now the most recently used
        self.h.pump(120)
        with capturedLogs() as events:
            fourth = self.initialize()
        [event] = [e for e in events if "SESSION_LIMIT" in e.get("log_format", "")]
        self.assertEqual((event["count"], event["sessionIDs"]), (1, [second]))
        self.assertEqual(self.ping(second), 404)
        # Unused since: third is now the least recently used.
        fifth = self.initialize()
        self.assertEqual(self.ping(third), 404)
        self.assertEqual([self.ping(s) for s in (first, fourth, fifth)], [200, 200, 200])

    def test_otherPrincipalsUntouched(self) -> None:
        """
        One principal's sessions never end another's.
        """
        mine = [self.initialize() for _ in range(3)]
        self.h.principal = MALLORY
        for _ in range(5):
            self.initialize()
        self.h.principal = self.h.__class__(self).principal
        self.assertEqual([self.ping(s) for s in mine], [200, 200, 200])

    def test_endedSessionStreamCloses(self) -> None:
        """
        The stream of an ended session on this instance ends with it.
        """
        first = self.initialize()
        response, chunks, done = self.h.open(
            "GET", headers={"Mcp-Session-Id": first, "Accept": "text/event-stream"})
        self.assertEqual(response.code, 200)
        self.initialize(), self.initialize()
        self.assertNoResult(done)
        self.initialize()
        self.successResultOf(done)
        self.assertEqual(self.h.app.openStreams, 0)


class StreamLimitTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.h = Harness(self, config=Config(streamLimit=2))

    def get(self, sid: str) -> Tuple[Any, List[bytes], Any]:
        return self.h.open("GET", headers={"Mcp-Session-Id": sid, "Accept": "text/event-stream"})

    def test_oneMoreRefused(self) -> None:
        """
        A principal's third stream is refused with 429 and a JSON-RPC
        error; ending one makes room; other principals are not counted.
        """
        sids = [self.h.initialize() for _ in range(3)]
        opened = [self.get(s) for s in sids[:2]]
        self.assertEqual([r.code for r, _, _ in opened], [200, 200])
        with capturedLogs() as events:
            response, body = self.h.request("GET", headers={"Mcp-Session-Id": sids[2]})
        self.assertEqual(response.code, 429)
        message = json.loads(body)
        self.assertEqual(message["error"]["code"], -32600)
        self.assertIn("Too many open streams", message["error"]["message"])
        self.assertTrue([e for e in events if "STREAM_LIMIT" in e.get("log_format", "")])
        self.h.principal = MALLORY
        other = self.h.initialize()
        self.assertEqual(self.get(other)[0].code, 200)
        self.h.principal = self.h.__class__(self).principal
        self.h.request("DELETE", headers={"Mcp-Session-Id": sids[0]})
        self.successResultOf(opened[0][2])
        self.assertEqual(self.get(sids[2])[0].code, 200)
        self.assertEqual(self.h.app.openStreams, 3)

    def test_streamOfSessionEndedElsewhere(self) -> None:
        """
        A session ended outside this instance (deleted in the shared store)
        ends its stream at the next keep-alive, and frees its place.
        """
        sid = self.h.initialize()
        response, chunks, done = self.get(sid)
        self.h.pump(25)
        self.assertNoResult(done)
        self.successResultOf(self.h.store.deleteSession(sid))
        self.h.pump(25)
        self.successResultOf(done)
        self.assertEqual(self.h.app.openStreams, 0)
        self.assertEqual(self.h.app._streamCounts, {})


class InitializeRateTests(SynchronousTestCase):
    def test_limited(self) -> None:
        """
        C{initialize} beyond C{RATE_LIMIT_INITIALIZE} gets 429 with
        C{Retry-After}, a JSON-RPC error with the request id and an audit
        event; another principal is not affected; it refills.
        """
        h = Harness(self, config=Config(rateLimitInitialize=RateLimit(count=2, seconds=60)))
        h.initialize(), h.initialize()
        with capturedLogs() as events:
            status, message = h.json({"jsonrpc": "2.0", "id": 7, "method": "initialize", "params": {
                "protocolVersion": "2025-06-18", "capabilities": {},
                "clientInfo": {"name": "x", "version": "1"}}})
        self.assertEqual(status, 429)
        self.assertEqual((message["id"], message["error"]["code"]), (7, -32600))
        self.assertEqual(message["error"]["data"], {"retryAfter": 30})
        [audit] = [e for e in events if e.get("event_type") == "audit"]
        self.assertEqual((audit["action"], audit["endpoint"]), ("rate_limit.hit", "initialize"))
        response, _ = h.post({"jsonrpc": "2.0", "id": 8, "method": "initialize", "params": {}})
        self.assertEqual((response.code, header(response, "retry-after")), (429, "30"))
        h.principal = MALLORY
        h.initialize()
        h.principal = Harness(self).principal
        h.pump(30)
        h.initialize()

    def test_statelessToo(self) -> None:
        """
        Without sessions, C{initialize} is limited all the same.
        """
        h = Harness(self, config=Config(sessions=False,
                                        rateLimitInitialize=RateLimit(count=1, seconds=60)))
        body = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-06-18", "capabilities": {}}}
        self.assertEqual(h.json(body)[0], 200)
        self.assertEqual(h.json(body)[0], 429)


class ConfigTests(SynchronousTestCase):
    def test_variables(self) -> None:
        config = loadConfig({"JWT_SECRET": "s" * 32, "SESSION_LIMIT": "5", "STREAM_LIMIT": "2",
                             "RATE_LIMIT_INITIALIZE": "10/30"})
        self.assertEqual((config.sessionLimit, config.streamLimit), (5, 2))
        self.assertEqual(config.rateLimitInitialize, RateLimit(count=10, seconds=30))
        defaults = loadConfig({"JWT_SECRET": "s" * 32})
        self.assertEqual((defaults.sessionLimit, defaults.streamLimit), (100, 10))
        self.assertEqual(defaults.rateLimitInitialize, RateLimit(count=120, seconds=60))

    def test_invalid(self) -> None:
        with self.assertRaises(ConfigError) as cm:
            loadConfig({"JWT_SECRET": "s" * 32, "SESSION_LIMIT": "0", "STREAM_LIMIT": "many",
                        "RATE_LIMIT_INITIALIZE": "fast"})
        errors = " ".join(cm.exception.errors)
        for name in ("SESSION_LIMIT", "STREAM_LIMIT", "RATE_LIMIT_INITIALIZE"):
            self.assertIn(name, errors)
