"""
The official MCP Python SDK (C{mcp}) as a real client of a real
C{twistd -n mcpsvc} process over loopback: OAuth discovery, registration
with the initial access token, PKCE authorization, token exchange, MCP
calls, refresh, revocation.
"""

from __future__ import annotations

import asyncio
import json
import os
from typing import Any, Dict, List, Optional
from urllib.parse import parse_qs, urlsplit

import httpx2
from mcp import Client
from mcp.client.auth import OAuthClientProvider
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.auth import AuthorizationCodeResult
from twisted.trial.unittest import SynchronousTestCase

from mcpsvc.testing.redis import freePort
from mcpsvc.testing.sdk import ClientMetadataWithIAT, MemoryStorage
from tests.process import SECRET, McpsvcProcess

IAT = "initial-access-token-" + "i" * 24


class BrowserStandIn:
    """
    Plays the user agent in C{AUTHORIZE_MODE=auto}: follows the
    authorization URL once, without following the redirect, and hands the
    code back to the SDK.
    """

    def __init__(self) -> None:
        self.location: Optional[str] = None

    async def redirectHandler(self, url: str) -> None:
        async with httpx2.AsyncClient() as http:
            response = await http.get(url, follow_redirects=False)
        assert response.status_code in (302, 303), response.text
        self.location = response.headers["location"]

    async def callbackHandler(self) -> AuthorizationCodeResult:
        assert self.location is not None
        query = {k: v[0] for k, v in parse_qs(urlsplit(self.location).query).items()}
        return AuthorizationCodeResult(code=query["code"], state=query.get("state"), iss=query.get("iss"))


class SDKEndToEndTests(SynchronousTestCase):
    def startServer(self, **env: str) -> McpsvcProcess:
        workdir = os.path.abspath(self.mktemp())
        os.makedirs(workdir)
        port = freePort()
        settings = {
            "JWT_SECRET": SECRET,
            "DCR_AUTH_TOKEN": IAT,
            "AUTHORIZE_MODE": "auto",
            "SERVER_URL": f"http://127.0.0.1:{port}",
        }
        settings.update(env)
        process = McpsvcProcess(workdir, env=settings, listen=[f"tcp:{port}:interface=127.0.0.1"])
        self.addCleanup(process.kill)
        return process.start()

    def provider(self, url: str, storage: MemoryStorage, browser: BrowserStandIn) -> OAuthClientProvider:
        return OAuthClientProvider(
            server_url=url + "/mcp",
            client_metadata=ClientMetadataWithIAT(
                client_name="sdk-e2e",
                redirect_uris=["http://127.0.0.1:33418/callback"],
                grant_types=["authorization_code", "refresh_token"],
                response_types=["code"],
                token_value=IAT,
            ),
            storage=storage,
            redirect_handler=browser.redirectHandler,
            callback_handler=browser.callbackHandler,
        )

    def test_fullFlow(self) -> None:
        """
        The SDK client completes discovery, registration, PKCE
        authorization and token exchange, lists and calls tools; later it
        refreshes; after revocation C{/mcp} answers 401.
        """
        process = self.startServer()
        url = process.url
        storage = MemoryStorage()
        browser = BrowserStandIn()
        provider = self.provider(url, storage, browser)

        async def session() -> Dict[str, Any]:
            async with httpx2.AsyncClient(auth=provider) as http:
                async with Client(streamable_http_client(url + "/mcp", http_client=http), mode="legacy") as client:
                    tools = await client.list_tools()
                    echoed = await client.call_tool("echo_message", {"message": "hello from the SDK"})
                    return {"tools": [t.name for t in tools.tools], "echo": echoed}

        result = asyncio.run(session())
        self.assertIn("echo_message", result["tools"])
        self.assertFalse(result["echo"].is_error)
        self.assertIn("hello from the SDK", json.dumps(result["echo"].model_dump(mode="json")))
        assert storage.tokens is not None and storage.clientInfo is not None
        first = storage.tokens
        for method, path, status in (
            ("GET", "/.well-known/oauth-protected-resource/mcp", 200),
            ("GET", "/.well-known/oauth-authorization-server", 200),
            ("POST", "/oauth/register", 201),
            ("GET", "/oauth/authorize", 302),
            ("POST", "/oauth/token", 200),
        ):
            process.waitFor(
                lambda r: (r.get("eventType"), r.get("method"), r.get("path"), r.get("status"))
                == ("request", method, path, status)
            )

        # Refresh: the SDK refreshes when it believes the token expired.
        provider.context.token_expiry_time = 1.0
        result = asyncio.run(session())
        self.assertFalse(result["echo"].is_error)
        assert storage.tokens is not None
        self.assertNotEqual(storage.tokens.refresh_token, first.refresh_token)
        self.assertNotEqual(storage.tokens.access_token, first.access_token)

        # Revocation of the access token: /mcp then answers 401 invalid_token.
        info = storage.clientInfo
        access = storage.tokens.access_token

        async def revokeAndRetry() -> List[httpx2.Response]:
            async with httpx2.AsyncClient() as http:
                revoked = await http.post(
                    url + "/oauth/revoke",
                    data={"token": access, "token_type_hint": "access_token"},
                    auth=(info.client_id, info.client_secret or ""),
                )
                retried = await http.post(
                    url + "/mcp",
                    json={"jsonrpc": "2.0", "id": 9, "method": "tools/list"},
                    headers={"Authorization": "Bearer " + access, "Accept": "application/json, text/event-stream",
                             "MCP-Protocol-Version": "2025-06-18"},
                )
                return [revoked, retried]

        revoked, retried = asyncio.run(revokeAndRetry())
        self.assertEqual(revoked.status_code, 200)
        self.assertEqual(retried.status_code, 401)
        self.assertIn('error="invalid_token"', retried.headers["www-authenticate"])
        self.assertIn(f'resource_metadata="{url}/.well-known/oauth-protected-resource/mcp"',
                      retried.headers["www-authenticate"])
        self.assertEqual(process.stop(), 0)
