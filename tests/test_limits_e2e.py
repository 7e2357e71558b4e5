"""
Per-principal limits on C{/mcp} against a real C{twistd -n mcpsvc} process
over loopback: C{SESSION_LIMIT} ends the least recently used session and
C{RATE_LIMIT_INITIALIZE} refuses a burst of C{initialize}, on one instance
and across two sharing a real Redis; concurrent C{initialize} requests on
both end exactly at C{SESSION_LIMIT}.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import List

from twisted.trial.unittest import SynchronousTestCase

from mcpsvc.testing.redis import freePort
from tests.flow import PROTOCOL, Flow
from tests.process import SECRET, McpsvcProcess, startInstances
from tests.test_sdk_e2e import IAT


class LimitsEndToEndTests(SynchronousTestCase):
    def test_sessionAndInitializeLimits(self) -> None:
        workdir = os.path.abspath(self.mktemp())
        os.makedirs(workdir)
        port = freePort()
        process = McpsvcProcess(workdir, env={
            "JWT_SECRET": SECRET,
            "DCR_AUTH_TOKEN": IAT,
            "AUTHORIZE_MODE": "auto",
            "SERVER_URL": f"http://127.0.0.1:{port}",
            "SESSION_LIMIT": "2",
            "RATE_LIMIT_INITIALIZE": "4/3600",
        }, listen=[f"tcp:{port}:interface=127.0.0.1"])
        self.addCleanup(process.kill)
        url = process.start().url
        flow = Flow(url, IAT)
        flow.register(url)
        flow.exchange(url, flow.authorize(url))

        sessions = []
        for _ in range(3):
            self.assertEqual(flow.initialize(url)[0], 200)
            sessions.append(flow.sessionID)
        statuses = []
        for sid in sessions:
            flow.sessionID = sid
            statuses.append(flow.mcp(url, "ping")[0])
        # The least recently used of three ended when the third began.
        self.assertEqual(statuses, [404, 200, 200])
        process.waitFor(lambda r: r.get("limit") == 2 and r.get("count") == 1
                        and r.get("sessionIDs") == sessions[:1])

        self.assertEqual(flow.initialize(url)[0], 200)
        status, headers, body = flow.initialize(url)
        self.assertEqual(status, 429, body)
        self.assertEqual((body["jsonrpc"], body["error"]["code"]), ("2.0", -32600))
        self.assertTrue(int(headers["retry-after"]) > 0)
        process.waitFor(lambda r: r.get("action") == "rate_limit.hit"
                        and r.get("endpoint") == "initialize")
        self.assertEqual(process.stop(), 0)

    def test_sessionLimitAcrossInstances(self) -> None:
        """
        Two instances sharing one real Redis: the limit counts the sessions
        a principal opened on both, and a session ended by one instance
        is unknown to the other; the initialize rate is shared too.
        """
        serverURL, processes = startInstances(self, 2, IAT, SESSION_LIMIT="2",
                                              RATE_LIMIT_INITIALIZE="4/3600")
        a, b = (p.url for p in processes)
        flow = Flow(serverURL, IAT)
        flow.register(a)
        flow.exchange(a, flow.authorize(a))
        sessions = []
        for base in (a, b, a):
            self.assertEqual(flow.initialize(base)[0], 200)
            sessions.append(flow.sessionID)
        statuses = []
        for base in (b, a, b):
            flow.sessionID = sessions[len(statuses)]
            statuses.append(flow.mcp(base, "ping")[0])
        self.assertEqual(statuses, [404, 200, 200])
        self.assertEqual(flow.initialize(b)[0], 200)
        self.assertEqual(flow.initialize(a)[0], 429)
        for process in processes:
            self.assertEqual(process.stop(), 0)

    def test_sessionLimitExactUnderConcurrency(self) -> None:
        """
        Many concurrent C{initialize} requests of one principal on two
        instances sharing one real Redis: every one gets its session, and
        exactly C{SESSION_LIMIT} of them are still live afterwards.
        """
        serverURL, processes = startInstances(self, 2, IAT, SESSION_LIMIT="3",
                                              RATE_LIMIT_INITIALIZE="100/3600")
        bases = [p.url for p in processes]
        flow = Flow(serverURL, IAT)
        flow.register(bases[0])
        flow.exchange(bases[0], flow.authorize(bases[0]))

        def initialize(i: int) -> str:
            client = Flow(serverURL, IAT)
            client.tokens = flow.tokens
            status, headers, body = client.mcp(bases[i % 2], "initialize", {
                "protocolVersion": PROTOCOL, "capabilities": {},
                "clientInfo": {"name": "flow", "version": "1"},
            })
            self.assertEqual(status, 200, body)
            return headers["mcp-session-id"]

        with ThreadPoolExecutor(max_workers=16) as pool:
            sessions: List[str] = list(pool.map(initialize, range(16)))
        self.assertEqual(len(set(sessions)), 16)
        live = []
        for i, sessionID in enumerate(sessions):
            flow.sessionID = sessionID
            status = flow.mcp(bases[i % 2], "ping")[0]
            self.assertIn(status, (200, 404))
            live.append(status == 200)
        self.assertEqual(sum(live), 3)
        for process in processes:
            self.assertEqual(process.stop(), 0)
