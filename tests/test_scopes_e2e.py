"""
Scopes against a real C{twistd -n mcpsvc} process over loopback: an
C{mcp:read} token is refused C{tools/call} with the 403 step-up challenge,
the client obtains the wider scope through the normal authorization and
then succeeds; the official MCP Python SDK client steps up by itself; the
API key carries every scope.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
from typing import Any, Dict, Tuple

import httpx2
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from twisted.trial.unittest import SynchronousTestCase

from mcpsvc.testing.redis import freePort
from tests.flow import Flow, http, metricSamples
from tests.process import SECRET, McpsvcProcess
from mcpsvc.testing.sdk import MemoryStorage
from tests import test_sdk_e2e
from tests.test_sdk_e2e import IAT, BrowserStandIn

METRICS_TOKEN = "metrics-token-" + "s" * 20
API_KEY = "api-key-" + "k" * 24


def challenge(headers: Dict[str, str]) -> Dict[str, str]:
    value = headers["www-authenticate"]
    assert value.startswith("Bearer "), value
    return dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', value))


class ScopeEndToEndTests(SynchronousTestCase):
    def startServer(self, **env: str) -> Tuple[McpsvcProcess, str]:
        workdir = os.path.abspath(self.mktemp())
        files = os.path.join(workdir, "files")
        os.makedirs(files)
        port = freePort()
        settings = {
            "JWT_SECRET": SECRET,
            "DCR_AUTH_TOKEN": IAT,
            "AUTHORIZE_MODE": "auto",
            "SERVER_URL": f"http://127.0.0.1:{port}",
            "TOOL_PACKS": "core,files",
            "FILES_ROOT": files,
            "METRICS_TOKEN": METRICS_TOKEN,
        }
        settings.update(env)
        process = McpsvcProcess(workdir, env=settings, listen=[f"tcp:{port}:interface=127.0.0.1"])
        self.addCleanup(process.kill)
        return process.start(), files

    def test_readTokenStepsUp(self) -> None:
        """
        A token granted C{mcp:read} lists the tools but is refused
        C{tools/call} (403 C{insufficient_scope}, a JSON-RPC error, an
        audit event and its metric); a new authorization for the scopes of
        the challenge gives a token that writes the file.
        """
        process, files = self.startServer()
        url = process.url
        flow = Flow(url, IAT)
        self.assertEqual(flow.register(url)[0], 201)
        status, _, tokens = flow.exchange(url, flow.authorize(url, scope="mcp:read"))
        self.assertEqual((status, tokens["scope"]), (200, "mcp:read"))
        self.assertEqual(flow.initialize(url)[0], 200)
        status, _, listed = flow.mcp(url, "tools/list")
        self.assertEqual(status, 200)
        self.assertIn("file_write", [t["name"] for t in listed["result"]["tools"]])

        arguments = {"path": "note.txt", "content": "stepped up"}
        status, headers, body = flow.callTool(url, "file_write", arguments)
        self.assertEqual(status, 403, body)
        params = challenge(headers)
        self.assertEqual(params["error"], "insufficient_scope")
        self.assertEqual(params["scope"], "mcp:tools mcp:read mcp:write")
        self.assertEqual(params["resource_metadata"], url + "/.well-known/oauth-protected-resource/mcp")
        self.assertEqual((body["jsonrpc"], body["error"]["code"]), ("2.0", -32600))
        self.assertEqual(body["error"]["data"]["missingScopes"], ["mcp:tools", "mcp:write"])
        self.assertFalse(os.path.exists(os.path.join(files, "note.txt")))
        process.waitFor(lambda r: r.get("action") == "mcp.insufficient_scope"
                        and r.get("tool") == "file_write")

        # Step up: the normal authorization, for the scopes of the challenge.
        status, _, tokens = flow.exchange(url, flow.authorize(url, scope=params["scope"]))
        self.assertEqual((status, tokens["scope"]), (200, "mcp:tools mcp:read mcp:write"))
        self.assertEqual(flow.initialize(url)[0], 200)
        status, _, body = flow.callTool(url, "file_write", arguments)
        self.assertEqual(status, 200, body)
        self.assertFalse(body["result"].get("isError"), body)
        with open(os.path.join(files, "note.txt")) as f:
            self.assertEqual(f.read(), "stepped up")

        # A refresh keeps the wider scope.
        status, _, refreshed = flow.refresh(url)
        self.assertEqual((status, refreshed["scope"]), (200, "mcp:tools mcp:read mcp:write"))

        status, _, text = http(url + "/metrics", headers={"Authorization": "Bearer " + METRICS_TOKEN})
        samples = metricSamples(text.decode())
        self.assertEqual(samples[("mcpsvc_audit_events_total", (
            ("action", "mcp.insufficient_scope"), ("outcome", "denied")))], 1)
        self.assertEqual(process.stop(), 0)

    def test_defaultScopesCallDefaultTools(self) -> None:
        """
        A client that names no scope (ServiceNow's default, or unknown
        scopes only) gets C{mcp:tools mcp:read}: it lists and calls the
        ordinary tools, and not C{file_write}.
        """
        process, files = self.startServer()
        url = process.url
        flow = Flow(url, IAT)
        flow.register(url)
        for scope in (None, "openid,email,profile"):
            status, _, tokens = flow.exchange(url, flow.authorize(url, scope=scope))
            self.assertEqual((status, tokens["scope"]), (200, "mcp:tools mcp:read"))
            flow.initialize(url)
            status, _, body = flow.callTool(url, "echo_message", {"message": "hi"})
            self.assertEqual(status, 200, body)
            status, headers, _ = flow.callTool(url, "file_write", {"path": "x", "content": "y"})
            self.assertEqual(status, 403)
            self.assertEqual(challenge(headers)["scope"], "mcp:tools mcp:read mcp:write")
        self.assertEqual(process.stop(), 0)

    def test_apiKeyHasEveryScope(self) -> None:
        """
        The API key (ServiceNow's API-key mode) carries every scope.
        """
        process, files = self.startServer(MCP_API_KEY=API_KEY)
        url = process.url
        flow = Flow(url, IAT)
        flow.tokens = {"access_token": API_KEY}
        self.assertEqual(flow.initialize(url)[0], 200)
        status, _, body = flow.callTool(url, "file_write", {"path": "k.txt", "content": "key"})
        self.assertEqual(status, 200, body)
        self.assertTrue(os.path.exists(os.path.join(files, "k.txt")))
        self.assertEqual(process.stop(), 0)

    def test_clientCredentialsScopes(self) -> None:
        """
        A client_credentials token carries C{mcp:tools mcp:read} unless it
        asks for C{mcp:write}.
        """
        from tests.flow import basic

        process, files = self.startServer()
        url = process.url
        status, _, client = http(url + "/oauth/register", method="POST", body={
            "client_name": "machine", "grant_types": ["client_credentials"],
            "token_endpoint_auth_method": "client_secret_basic"},
            headers={"Authorization": "Bearer " + IAT})
        self.assertEqual(status, 201, client)
        auth = {"Authorization": basic(client["client_id"], client["client_secret"])}
        for scope, expected, writeStatus in ((None, "mcp:tools mcp:read", 403),
                                             ("mcp:write", "mcp:write", 200)):
            form = {"grant_type": "client_credentials", "resource": url + "/mcp"}
            if scope:
                form["scope"] = scope
            status, _, tokens = http(url + "/oauth/token", method="POST", headers=auth, form=form)
            self.assertEqual((status, tokens.get("scope")), (200, expected), tokens)
            flow = Flow(url, IAT)
            flow.tokens = tokens
            self.assertEqual(flow.initialize(url)[0], 200)
            self.assertEqual(flow.callTool(url, "echo_message", {"message": "m"})[0], 200)
            status, _, body = flow.callTool(url, "file_write", {"path": "m.txt", "content": "m",
                                                                 "overwrite": True})
            self.assertEqual(status, writeStatus, body)
        self.assertEqual(process.stop(), 0)

    def test_sdkStepsUp(self) -> None:
        """
        The official MCP SDK client authorizes with the challenge's default
        scopes, calls the ordinary tools, and on C{file_write} steps up by
        itself (403, a new authorization for the union of scopes), then
        succeeds.
        """
        process, files = self.startServer()
        url = process.url
        storage = MemoryStorage()
        browser = BrowserStandIn()
        provider = test_sdk_e2e.SDKEndToEndTests.provider(self, url, storage, browser)  # type: ignore[arg-type]

        async def session() -> Dict[str, Any]:
            async with httpx2.AsyncClient(auth=provider) as client:
                async with Client(streamable_http_client(url + "/mcp", http_client=client),
                                  mode="legacy") as mcp:
                    echoed = await mcp.call_tool("echo_message", {"message": "first"})
                    first = storage.tokens.scope if storage.tokens else None
                    written = await mcp.call_tool("file_write", {"path": "sdk.txt", "content": "sdk"})
                    return {"echo": echoed, "first": first, "written": written}

        result = asyncio.run(session())
        self.assertFalse(result["echo"].is_error)
        self.assertNotIn("mcp:write", (result["first"] or "").split())
        self.assertFalse(result["written"].is_error, json.dumps(result["written"].model_dump(mode="json")))
        assert storage.tokens is not None
        self.assertIn("mcp:write", (storage.tokens.scope or "").split())
        with open(os.path.join(files, "sdk.txt")) as f:
            self.assertEqual(f.read(), "sdk")
        self.assertEqual(process.stop(), 0)
