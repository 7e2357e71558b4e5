"""
A flow shaped like ServiceNow's MCP client: dynamic registration with the
initial access token typed as a bare header value, the instance's
C{oauth_redirect.do}, confidential clients authenticating with
C{client_secret_basic} and with C{client_secret_post}, and refreshes racing
inside the grace window.
"""

from __future__ import annotations

from typing import Any, Dict, List

from twisted.internet.defer import Deferred

from mcpsvc.oauth.test.helpers import IAT, SERVER, SNOW, GatedStore, OAuthTestCase
from mcpsvc.oauth.test.test_bearer import mcpRequest
from mcpsvc.principal import Principal


class ServiceNowFlowTests(OAuthTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.gate = GatedStore(self.store, "getFamily")
        self.store = self.gate  # type: ignore[assignment]
        self.configure(self.config)

    def registerLikeServiceNow(self, method: str) -> Dict[str, Any]:
        client = self.register(
            {
                "client_name": "ServiceNow dev12345",
                "redirect_uris": [SNOW],
                "grant_types": ["authorization_code", "refresh_token"],
                "token_endpoint_auth_method": method,
                "scope": "mcp:tools,mcp:read",
            },
            token=IAT,
            how="bare",
        )
        self.assertEqual(client["token_endpoint_auth_method"], method)
        self.assertIn("client_secret", client)
        return client

    def authenticate(self, token: str) -> Principal:
        return self.successResultOf(
            Deferred.fromCoroutine(self.bearer.authenticate(mcpRequest({"Authorization": "Bearer " + token})))
        )

    def concurrentRefreshes(self, client: Dict[str, Any], token: str) -> List[Any]:
        """
        Start two refreshes of C{token}, both reading the family before
        either rotates it, then let them finish.
        """
        self.gate.gated = True
        pending = [
            self.stub.request("POST", SERVER + "/oauth/token", allow_redirects=False,
                              **self.clientAuth(client, {"grant_type": "refresh_token", "refresh_token": token}))
            for _ in range(2)
        ]
        self.assertEqual(len(self.gate.waiting), 2)
        for d in pending:
            self.assertNoResult(d)
        self.gate.gated = False
        self.gate.release()
        self.stub.flush()
        results = []
        for d in pending:
            response = self.successResultOf(d)
            body = self.successResultOf(response.json())
            self.assertEqual(response.code, 200, body)
            results.append(body)
        return results

    def flow(self, method: str) -> None:
        client = self.registerLikeServiceNow(method)
        tokens = self.obtainTokens(client)
        self.assertEqual(self.authenticate(tokens["access_token"]).clientID, client["client_id"])

        self.clock.advance(3000)
        first, second = self.concurrentRefreshes(client, tokens["refresh_token"])
        self.assertEqual(first["refresh_token"], second["refresh_token"])
        self.assertNotEqual(first["refresh_token"], tokens["refresh_token"])
        self.authenticate(first["access_token"])
        self.authenticate(second["access_token"])

        # The successor keeps working after the window...
        self.clock.advance(self.config.refreshGraceSeconds + 1)
        response, third = self.refresh(client, first["refresh_token"])
        self.assertEqual(response.code, 200, third)

        # ...but the superseded token, used after its window, kills the family.
        self.clock.advance(self.config.refreshGraceSeconds + 1)
        response, body = self.refresh(client, first["refresh_token"])
        self.assertOAuthError(response, body, 400, "invalid_grant")
        response, body = self.refresh(client, third["refresh_token"])
        self.assertOAuthError(response, body, 400, "invalid_grant")

    def test_clientSecretBasic(self) -> None:
        """
        The whole flow with a client_secret_basic client.
        """
        self.flow("client_secret_basic")

    def test_clientSecretPost(self) -> None:
        """
        The whole flow with a client_secret_post client.
        """
        self.flow("client_secret_post")

    def test_metadataAtOriginRoot(self) -> None:
        """
        ServiceNow discovers the authorization server at the MCP URL's
        origin.
        """
        response, body = self.request("GET", "/.well-known/oauth-authorization-server")
        self.assertEqual((response.code, body["issuer"]), (200, SERVER))
