"""
The MCP endpoint end to end: a real C{twistd -n mcpsvc} process on
loopback, a token from the real OAuth flow (C{AUTHORIZE_MODE=auto}), and
the official MCP Python SDK client in every protocol era, a session that
survives a restart of the process, and the exchange ServiceNow makes.

The OAuth helpers are those of L{tests.test_sdk_e2e}.
"""

from __future__ import annotations

import asyncio
import json
import os
from typing import Any, Dict, List, Optional, Sequence, Tuple

import httpx2
import mcp.client.session
from mcp import Client
from mcp.client.auth import OAuthClientProvider
from mcp.client.streamable_http import streamable_http_client
from twisted.trial.unittest import SynchronousTestCase

from mcpsvc.testing.redis import freePort
from tests.process import SECRET, McpsvcProcess
from tests.test_sdk_e2e import IAT, BrowserStandIn, ClientMetadataWithIAT, MemoryStorage

CORE_TOOLS = ["calculate", "echo_message", "get_timestamp"]
ACCEPT = "application/json, text/event-stream"


def jsonrpc(method: str, params: Optional[Dict[str, Any]] = None, id: Any = None) -> Dict[str, Any]:
    message: Dict[str, Any] = {"jsonrpc": "2.0", "method": method}
    if params is not None:
        message["params"] = params
    if id is not None:
        message["id"] = id
    return message


def body(response: httpx2.Response) -> Dict[str, Any]:
    """
    The JSON-RPC message of a response, whether JSON or a one-message SSE
    stream.
    """
    if response.headers.get("content-type", "").startswith("text/event-stream"):
        messages = [
            json.loads(line[len("data:"):])
            for line in response.text.splitlines()
            if line.startswith("data:") and line[len("data:"):].strip()
        ]
        return messages[-1]
    return response.json()


class McpEndToEndTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.workdir = os.path.abspath(self.mktemp())
        os.makedirs(self.workdir)
        self.port = freePort()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {
            "JWT_SECRET": SECRET,
            "DCR_AUTH_TOKEN": IAT,
            "AUTHORIZE_MODE": "auto",
            "SERVER_URL": self.url,
            "STORE": "sqlite",
            "STORE_PATH": os.path.join(self.workdir, "store.sqlite3"),
        }
        self.storage = MemoryStorage()
        self.browser = BrowserStandIn()

    def startServer(self) -> McpsvcProcess:
        process = McpsvcProcess(
            self.workdir, env=self.env, listen=[f"tcp:{self.port}:interface=127.0.0.1"]
        )
        self.addCleanup(process.kill)
        return process.start()

    def provider(self) -> OAuthClientProvider:
        return OAuthClientProvider(
            server_url=self.url + "/mcp",
            client_metadata=ClientMetadataWithIAT(
                client_name="mcp-e2e",
                redirect_uris=["http://127.0.0.1:33418/callback"],
                grant_types=["authorization_code", "refresh_token"],
                response_types=["code"],
                token_value=IAT,
            ),
            storage=self.storage,
            redirect_handler=self.browser.redirectHandler,
            callback_handler=self.browser.callbackHandler,
        )

    def sdkSession(self, provider: OAuthClientProvider, mode: str) -> Dict[str, Any]:
        """
        Connect the SDK client in C{mode}, list the tools and call
        C{echo_message}.
        """

        async def session() -> Dict[str, Any]:
            async with httpx2.AsyncClient(auth=provider, timeout=30) as http:
                transport = streamable_http_client(self.url + "/mcp", http_client=http)
                async with Client(transport, mode=mode) as client:  # type: ignore[arg-type]
                    tools = await client.list_tools()
                    echoed = await client.call_tool("echo_message", {"message": f"hello {mode}"})
                    return {
                        "version": client.protocol_version,
                        "tools": sorted(t.name for t in tools.tools),
                        "echo": echoed,
                    }

        return asyncio.run(asyncio.wait_for(session(), 60))

    def accessToken(self) -> str:
        """
        Run the OAuth flow through the SDK (one legacy session) and return
        the access token it obtained.
        """
        self.sdkSession(self.provider(), "legacy")
        assert self.storage.tokens is not None
        return self.storage.tokens.access_token

    def post(
        self,
        token: str,
        message: Any,
        session: Optional[str] = None,
        version: Optional[str] = None,
        path: str = "/mcp",
        accept: Sequence[str] = (ACCEPT,),
    ) -> httpx2.Response:
        headers: List[Tuple[str, str]] = [
            ("Authorization", "Bearer " + token),
            ("Content-Type", "application/json"),
        ]
        headers += [("Accept", value) for value in accept]
        if session is not None:
            headers.append(("Mcp-Session-Id", session))
        if version is not None:
            headers.append(("MCP-Protocol-Version", version))
        with httpx2.Client(timeout=30, follow_redirects=False) as http:
            return http.post(self.url + path, content=json.dumps(message).encode(), headers=headers)

    def delete(self, token: str, session: str, version: str) -> httpx2.Response:
        with httpx2.Client(timeout=30) as http:
            return http.delete(
                self.url + "/mcp",
                headers={"Authorization": "Bearer " + token, "Mcp-Session-Id": session,
                         "MCP-Protocol-Version": version},
            )

    # -- (a) the SDK in every era ----------------------------------------------

    def test_sdkEveryEra(self) -> None:
        """
        The SDK client, with a token from the OAuth flow, lists and calls
        tools in the handshake era at 2025-06-18 and 2025-11-25 (the
        negotiated version is the one asked for) and in the 2026-07-28 era,
        both pinned and negotiated with C{server/discover}.
        """
        process = self.startServer()
        provider = self.provider()

        # The SDK's handshake always offers its newest handshake version;
        # it reads the module constant at call time.
        self.patch(mcp.client.session, "LATEST_HANDSHAKE_VERSION", "2025-06-18")
        older = self.sdkSession(provider, "legacy")
        self.assertEqual(older["version"], "2025-06-18")
        self.patch(mcp.client.session, "LATEST_HANDSHAKE_VERSION", "2025-11-25")
        newer = self.sdkSession(provider, "legacy")
        self.assertEqual(newer["version"], "2025-11-25")
        pinned = self.sdkSession(provider, "2026-07-28")
        self.assertEqual(pinned["version"], "2026-07-28")
        auto = self.sdkSession(provider, "auto")
        self.assertEqual(auto["version"], "2026-07-28")

        for mode, result in (("legacy", older), ("legacy", newer), ("2026-07-28", pinned), ("auto", auto)):
            self.assertEqual(result["tools"], CORE_TOOLS)
            self.assertFalse(result["echo"].is_error)
            self.assertIn(f"hello {mode}", json.dumps(result["echo"].model_dump(mode="json")))
        self.assertEqual(process.stop(), 0)

    # -- (b) a session survives a restart ----------------------------------------

    def test_sessionSurvivesRestart(self) -> None:
        """
        A session created before a restart of the process (SQLite store)
        keeps working afterwards with the same access token; DELETE ends
        it, and then its id gets 404.
        """
        first = self.startServer()
        token = self.accessToken()
        version = "2025-11-25"
        init = self.post(token, jsonrpc("initialize", {
            "protocolVersion": version, "capabilities": {},
            "clientInfo": {"name": "restart-e2e", "version": "1.0.0"},
        }, id=1))
        self.assertEqual(init.status_code, 200, init.text)
        self.assertEqual(body(init)["result"]["protocolVersion"], version)
        session = init.headers["mcp-session-id"]
        self.assertEqual(
            self.post(token, jsonrpc("notifications/initialized"), session, version).status_code, 202
        )
        before = self.post(token, jsonrpc("tools/call", {
            "name": "echo_message", "arguments": {"message": "before"}}, id=2), session, version)
        self.assertEqual(before.status_code, 200, before.text)
        self.assertNotIn("isError", body(before)["result"])

        self.assertEqual(first.stop(), 0)
        second = self.startServer()
        self.assertEqual(second.port, self.port)

        after = self.post(token, jsonrpc("tools/call", {
            "name": "echo_message", "arguments": {"message": "after the restart"}}, id=3),
            session, version)
        self.assertEqual(after.status_code, 200, after.text)
        result = body(after)["result"]
        self.assertNotIn("isError", result)
        self.assertIn("after the restart", json.dumps(result))

        self.assertIn(self.delete(token, session, version).status_code, (200, 204))
        gone = self.post(token, jsonrpc("tools/list", id=4), session, version)
        self.assertEqual(gone.status_code, 404)
        self.assertEqual(second.stop(), 0)

    # -- (c) ServiceNow ----------------------------------------------------------

    def test_serviceNowExchange(self) -> None:
        """
        ServiceNow posts to C{/mcp/} with two C{Accept} headers and its own
        C{initialize}: JSON at 200 (no redirect), 202 for the
        notification, then the core tools.
        """
        process = self.startServer()
        token = self.accessToken()
        accept = ("text/event-stream", ACCEPT)
        init = self.post(token, jsonrpc("initialize", {
            "protocolVersion": "2025-06-18",
            "clientInfo": {"version": "1.0.0", "name": "Servicenow"},
            "capabilities": {},
        }, id=0), path="/mcp/", accept=accept)
        self.assertEqual(init.status_code, 200, init.text)
        self.assertTrue(init.headers["content-type"].startswith("application/json"))
        result = init.json()["result"]
        self.assertEqual(result["protocolVersion"], "2025-06-18")
        self.assertIn("tools", result["capabilities"])
        session = init.headers.get("mcp-session-id")
        self.assertTrue(session)

        initialized = self.post(token, jsonrpc("notifications/initialized"), session, "2025-06-18",
                                path="/mcp/", accept=accept)
        self.assertEqual(initialized.status_code, 202)
        self.assertEqual(initialized.content, b"")

        listed = self.post(token, jsonrpc("tools/list", {}, id=1), session, "2025-06-18",
                           path="/mcp/", accept=accept)
        self.assertEqual(listed.status_code, 200, listed.text)
        self.assertTrue(listed.headers["content-type"].startswith("application/json"))
        self.assertEqual(sorted(t["name"] for t in listed.json()["result"]["tools"]), CORE_TOOLS)
        self.assertEqual(process.stop(), 0)

    # -- rate limit and metrics, wired in the service -----------------------------

    def test_rateLimitAndMetrics(self) -> None:
        """
        C{TOOL_RATE_LIMIT} limits a principal's tool calls (an C{isError}
        result, not a protocol error) and C{/metrics} counts tool calls by
        outcome.
        """
        metricsToken = "metrics-token-" + "m" * 16
        self.env.update(TOOL_RATE_LIMIT="3/3600", METRICS_TOKEN=metricsToken)
        process = self.startServer()
        token = self.accessToken()  # one echo_message call
        version = "2025-11-25"
        init = self.post(token, jsonrpc("initialize", {
            "protocolVersion": version, "capabilities": {},
            "clientInfo": {"name": "limit-e2e", "version": "1.0.0"},
        }, id=1))
        session = init.headers["mcp-session-id"]
        results = []
        for n in range(3):
            response = self.post(token, jsonrpc("tools/call", {
                "name": "echo_message", "arguments": {"message": "again"}}, id=10 + n), session, version)
            self.assertEqual(response.status_code, 200, response.text)
            results.append(body(response)["result"])
        self.assertEqual([r.get("isError", False) for r in results], [False, False, True])
        self.assertIn("Rate limit exceeded", results[2]["content"][0]["text"])
        unknown = self.post(token, jsonrpc("tools/call", {"name": "nope", "arguments": {}}, id=20),
                            session, version)
        self.assertEqual(body(unknown)["error"]["code"], -32602)

        with httpx2.Client(timeout=30) as http:
            scraped = http.get(self.url + "/metrics", headers={"Authorization": "Bearer " + metricsToken})
        self.assertEqual(scraped.status_code, 200)
        samples = {
            line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
            for line in scraped.text.splitlines()
            if line.startswith("mcpsvc_tool_calls_total{")
        }
        self.assertEqual(samples.get('mcpsvc_tool_calls_total{outcome="ok",tool="echo_message"}'), 3.0)
        self.assertEqual(
            samples.get('mcpsvc_tool_calls_total{outcome="rate_limited",tool="echo_message"}'), 1.0
        )
        self.assertEqual(
            samples.get('mcpsvc_tool_calls_total{outcome="unknown_tool",tool="(unknown)"}'), 1.0
        )
        self.assertEqual(process.stop(), 0)
