"""
The official MCP Python SDK's OAuth client (C{mcp.client.auth.
OAuthClientProvider}) against L{OAuthApp} and L{BearerAuthenticator}, in
process: the SDK's own C{httpx2} client runs on asyncio, and its transport
hands each request to the Klein resources through L{StubTreq} (which
answers synchronously over the L{MemoryStore}). No sockets, no reactor.

The end-to-end test against a real C{twistd} process belongs to the
process tests (C{tests/}); this one pins the protocol details the SDK
checks: PRM resource match, issuer match, C{iss} in the redirect, the
registration response shape, client_secret_basic with C{client_id} also in
the body, RFC 8707 C{resource}, refresh rotation.
"""

from __future__ import annotations

import asyncio
from typing import Any, Dict, List, Optional
from urllib.parse import parse_qs, urlsplit

import httpx2
from mcp.client.auth import OAuthClientProvider
from mcp.shared.auth import AuthorizationCodeResult
from treq.testing import StubTreq

from mcpsvc.testing.sdk import ClientMetadataWithIAT as _ClientMetadataWithIAT
from mcpsvc.testing.sdk import MemoryStorage as _MemoryStorage

from mcpsvc.oauth.test.helpers import IAT, SERVER, OAuthTestCase
from mcpsvc.oauth.test.test_bearer import _ProtectedApp

REDIRECT = "http://127.0.0.1:33418/callback"


class SDKClientTests(OAuthTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.mcpStub = StubTreq(_ProtectedApp(self.bearer).app.resource())
        self.seen: List[str] = []
        self.location: Optional[str] = None

    def send(self, request: httpx2.Request) -> httpx2.Response:
        """
        Hand an httpx2 request to our Klein resources; return its response.
        """
        path = request.url.path
        self.seen.append(f"{request.method} {path}")
        stub = self.mcpStub if path.startswith("/mcp") else self.stub
        headers = {k: v for k, v in request.headers.items() if k.lower() not in ("content-length", "host")}
        d = stub.request(request.method, str(request.url), headers=headers, data=request.content or None,
                         allow_redirects=False)
        response = self.successResultOf(d)
        content = self.successResultOf(response.content())
        return httpx2.Response(
            response.code,
            headers=[(k.decode(), v.decode()) for k, vs in response.headers.getAllRawHeaders() for v in vs],
            content=content,
            request=request,
        )

    async def redirectHandler(self, url: str) -> None:
        response = self.send(httpx2.Request("GET", url))
        self.assertEqual(response.status_code, 302, response.text)
        self.location = response.headers["location"]

    async def callbackHandler(self) -> AuthorizationCodeResult:
        assert self.location is not None
        query = {k: v[0] for k, v in parse_qs(urlsplit(self.location).query).items()}
        return AuthorizationCodeResult(code=query["code"], state=query.get("state"), iss=query.get("iss"))

    def test_fullFlow(self) -> None:
        """
        The SDK client discovers (PRM, then AS metadata), registers with the
        initial access token, authorizes with PKCE, exchanges the code and
        calls C{/mcp}; later it refreshes; after revocation C{/mcp} answers
        401.
        """
        storage = _MemoryStorage()
        provider = OAuthClientProvider(
            server_url=SERVER + "/mcp",
            client_metadata=_ClientMetadataWithIAT(
                client_name="sdk-test",
                redirect_uris=[REDIRECT],
                grant_types=["authorization_code", "refresh_token"],
                response_types=["code"],
                token_value=IAT,
            ),
            storage=storage,
            redirect_handler=self.redirectHandler,
            callback_handler=self.callbackHandler,
        )

        async def call() -> httpx2.Response:
            async with httpx2.AsyncClient(transport=httpx2.MockTransport(self.send), auth=provider) as client:
                return await client.post(
                    SERVER + "/mcp", json={"jsonrpc": "2.0", "id": 1, "method": "ping"},
                    headers={"MCP-Protocol-Version": "2025-06-18"},
                )

        response = asyncio.run(call())
        self.assertEqual(response.status_code, 200, response.text)
        assert storage.clientInfo is not None and storage.tokens is not None
        self.assertEqual(response.text, storage.clientInfo.client_id)
        self.assertEqual(
            self.seen,
            [
                "POST /mcp",
                "GET /.well-known/oauth-protected-resource/mcp",
                "GET /.well-known/oauth-authorization-server",
                "POST /oauth/register",
                "GET /oauth/authorize",
                "POST /oauth/token",
                "POST /mcp",
            ],
        )
        first = storage.tokens

        # Refresh: the SDK refreshes once it believes the token expired.
        provider.context.token_expiry_time = 1.0
        self.seen.clear()
        response = asyncio.run(call())
        self.assertEqual(response.status_code, 200, response.text)
        self.assertEqual(self.seen, ["POST /oauth/token", "POST /mcp"])
        assert storage.tokens is not None
        self.assertNotEqual(storage.tokens.refresh_token, first.refresh_token)

        # Revocation, then the token is refused.
        info: Dict[str, Any] = storage.clientInfo.model_dump(mode="json", exclude_none=True)
        response, _ = self.request(
            "POST", "/oauth/revoke",
            **self.clientAuth(info, {"token": storage.tokens.access_token, "token_type_hint": "access_token"}),
        )
        self.assertEqual(response.code, 200)
        raw = self.send(httpx2.Request("POST", SERVER + "/mcp", content=b"{}",
                                       headers={"Authorization": "Bearer " + storage.tokens.access_token}))
        self.assertEqual(raw.status_code, 401)
        self.assertIn('error="invalid_token"', raw.headers["www-authenticate"])

    def test_concurrentRequestsRefreshOnce(self) -> None:
        """
        What the SDK client needs from the refresh grace window (issue 12:
        REFRESH_GRACE_REPLAYS): five concurrent requests with an expired
        token make one refresh, not five; the SDK refreshes under a lock.
        """
        storage = _MemoryStorage()
        provider = OAuthClientProvider(
            server_url=SERVER + "/mcp",
            client_metadata=_ClientMetadataWithIAT(
                client_name="sdk-test", redirect_uris=[REDIRECT],
                grant_types=["authorization_code", "refresh_token"],
                response_types=["code"], token_value=IAT,
            ),
            storage=storage,
            redirect_handler=self.redirectHandler,
            callback_handler=self.callbackHandler,
        )

        async def calls(n: int) -> List[httpx2.Response]:
            async with httpx2.AsyncClient(transport=httpx2.MockTransport(self.send), auth=provider) as client:
                return list(await asyncio.gather(*[
                    client.post(SERVER + "/mcp", json={"jsonrpc": "2.0", "id": i, "method": "ping"},
                                headers={"MCP-Protocol-Version": "2025-06-18"})
                    for i in range(n)
                ]))

        self.assertEqual([r.status_code for r in asyncio.run(calls(1))], [200])
        provider.context.token_expiry_time = 1.0
        self.seen.clear()
        self.assertEqual([r.status_code for r in asyncio.run(calls(5))], [200] * 5)
        self.assertEqual(self.seen.count("POST /oauth/token"), 1, self.seen)
