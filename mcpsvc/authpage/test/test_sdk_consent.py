"""
The official MCP Python SDK's OAuth client through the consent page: the
same flow as L{mcpsvc.oauth.test.test_sdk_client} (discovery, registration,
PKCE, code exchange, C{/mcp}, refresh, revocation), except that the
authorization URL shows our page and the "person" submits its form with
Approve.
"""

from __future__ import annotations

from typing import Any

import httpx2

from mcpsvc.authpage.test.helpers import Forms, PageTestCase
from mcpsvc.oauth.test import test_sdk_client as base


class SDKConsentTests(base.SDKClientTests):
    configure = PageTestCase.configure  # type: ignore[assignment]
    mode = "consent"

    def test_fullFlow(self) -> None:
        super().test_fullFlow()
        self.assertTrue(self.pageShown)

    async def redirectHandler(self, url: str) -> None:
        """
        Open the authorization URL like a browser: the consent page comes
        back; submit it with Approve (directly to the OAuth app, so that
        C{seen} lists only the SDK's own requests).
        """
        self.pageShown = False
        response = self.send(httpx2.Request("GET", url, headers={"Accept": "text/html"}))
        self.assertEqual(response.status_code, 200, response.text)
        fields = Forms(response.content).forms["consent"]
        self.pageShown = True
        posted: Any = self.successResultOf(self.stub.request(
            "POST", base.SERVER + "/oauth/authorize", data=dict(fields, decision="approve"),
            allow_redirects=False,
        ))
        self.assertEqual(posted.code, 302)
        self.location = posted.headers.getRawHeaders("location")[0]


