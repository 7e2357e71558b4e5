"""
The error pages of the authorization endpoint: every error a browser can
reach there that is shown rather than sent back to the client's verified
redirect URI is an HTML page in the style of the consent page, with its
security headers and the right status; clients that ask for JSON get OAuth
JSON. (The same pages in a real browser: C{tests/test_authpage_browser.py}.)
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

from twisted.internet.defer import fail

from mcpsvc.authpage.page import CSS_HASH
from mcpsvc.config import RateLimit
from mcpsvc.oauth.app import _wantsHTML
from mcpsvc.oauth.test.helpers import SNOW, OAuthTestCase, makeConfig
from mcpsvc.storage.interfaces import StoreUnavailable

#: What Chromium sends on a navigation.
BROWSER = ("text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,"
           "image/apng,*/*;q=0.8,application/signed-exchange;v=b3;q=0.7")


class FakeRequest:
    def __init__(self, accept: Optional[str]) -> None:
        self.accept = accept

    def getHeader(self, name: str) -> Optional[str]:
        return self.accept if name == "accept" else None


class NegotiationTests(OAuthTestCase):
    def test_wantsHTML(self) -> None:
        """
        Browsers (C{text/html} named, not less wanted than JSON) get pages;
        no C{Accept}, C{*/*} (curl) and JSON-preferring clients get JSON.
        """
        for accept, expected in [
            (BROWSER, True),
            ("text/html", True),
            ("application/xhtml+xml", True),
            ("text/*", True),
            ("text/html, application/json", True),
            (None, False),
            ("", False),
            ("*/*", False),
            ("application/json", False),
            ("application/json, text/html;q=0.5", False),
            ("text/html;q=0", False),
            ("text/html;q=nonsense", False),
            ("text/html;q=nan", False),
            ("application/json;q=0.9, text/html;q=7", True),
        ]:
            self.assertEqual(_wantsHTML(FakeRequest(accept)), expected, accept)  # type: ignore[arg-type]


class ErrorPageTests(OAuthTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.client = self.registerConfidential()

    def page(self, accept: str = BROWSER, method: str = "GET",
             **changes: Optional[str]) -> Tuple[Any, bytes]:
        params = self.authorizeParams(self.client, **changes)
        if method == "GET":
            response, body = self.request("GET", "/oauth/authorize", params=params,
                                          headers={"Accept": accept})
        else:
            response, body = self.request("POST", "/authorize", data=params,
                                          headers={"Accept": accept})
        return response, body

    def assertPage(self, response: Any, body: Any, status: int, heading: str) -> str:
        """
        An HTML error page: the status, the consent page's stylesheet and
        security headers, no redirect, the heading, and the administrator's
        section naming the error code.
        """
        self.assertEqual(response.code, status, body)
        self.assertIsInstance(body, bytes)
        text = body.decode("utf-8")
        self.assertEqual(self.header(response, "content-type"), "text/html; charset=utf-8")
        self.assertIsNone(self.header(response, "location"))
        csp = self.header(response, "content-security-policy") or ""
        self.assertIn("default-src 'none'", csp)
        self.assertIn("frame-ancestors 'none'", csp)
        self.assertIn(f"style-src {CSS_HASH}", csp)
        self.assertIn("form-action 'self'", csp)
        self.assertEqual(self.header(response, "x-frame-options"), "DENY")
        self.assertEqual(self.header(response, "cache-control"), "no-store")
        self.assertEqual(self.header(response, "x-content-type-options"), "nosniff")
        self.assertEqual(self.header(response, "referrer-policy"), "no-referrer")
        self.assertTrue(text.startswith("<!DOCTYPE html>\n<html lang=\"en\">"), text[:60])
        self.assertIn(f'<h1 id="heading">{heading}</h1>', text)
        self.assertIn("For the administrator", text)
        self.assertIn('id="advice"', text)
        return text

    def test_unknownClient(self) -> None:
        """
        An unknown client id: 400, says the application is not registered,
        names the client id for the administrator.
        """
        response, body = self.page(client_id="no-such-client")
        text = self.assertPage(response, body, 400, "This application is not registered here")
        self.assertIn("no-such-client", text)
        self.assertIn("<dd data-ref=\"error\">invalid_client</dd>", text)

    def test_missingClientID(self) -> None:
        """
        No client id: 400, the link is not valid.
        """
        response, body = self.page(client_id=None)
        text = self.assertPage(response, body, 400, "This sign-in link is not valid")
        self.assertIn("client_id is required", text)

    def test_unregisteredRedirect(self) -> None:
        """
        A redirect URI that is not registered: 400, names the host it
        refused to send the person to (escaped), never redirects there.
        """
        response, body = self.page(redirect_uri="https://evil.example/cb?<script>")
        text = self.assertPage(response, body, 400,
                               "This application's return address is not registered")
        self.assertIn("evil.example", text)
        self.assertNotIn("<script>", text)
        self.assertIn("&lt;script&gt;", text)

    def test_redirectRequiredWithSeveral(self) -> None:
        """
        No redirect URI while the client registered several: 400.
        """
        client = self.register({"redirect_uris": ["http://127.0.0.1/one", "http://127.0.0.1/two"]})
        self.client = client
        response, body = self.page(redirect_uri=None)
        self.assertPage(response, body, 400, "This sign-in link is incomplete")

    def test_postedForm(self) -> None:
        """
        The same page answers a form POST (at C{/authorize} too).
        """
        response, body = self.page(method="POST", client_id="no-such-client")
        self.assertPage(response, body, 400, "This application is not registered here")

    def test_rateLimited(self) -> None:
        """
        Rate limited: 429 with C{Retry-After}, and the page says how long
        to wait.
        """
        self.configure(makeConfig(rateLimitAuthorize=RateLimit(count=1, seconds=60)))
        self.client = self.registerConfidential()
        self.page()
        response, body = self.page()
        text = self.assertPage(response, body, 429, "Too many attempts")
        self.assertEqual(self.header(response, "retry-after"), "60")
        self.assertIn("Wait 60 seconds", text)

    def test_storeUnavailable(self) -> None:
        """
        The store unreachable: 503 with C{Retry-After}, fail closed, logged.
        """
        self.patch(self.store, "getClient", lambda clientID: fail(StoreUnavailable("down")))
        response, body = self.page()
        self.assertPage(response, body, 503, "The service is temporarily unavailable")
        self.assertEqual(self.header(response, "retry-after"), "5")

    def test_unexpectedError(self) -> None:
        """
        An unexpected exception: a generic 500 page (no traceback), the
        traceback logged.
        """
        self.patch(self.store, "getClient", lambda clientID: fail(ZeroDivisionError("boom")))
        response, body = self.page()
        text = self.assertPage(response, body, 500, "Something went wrong on this server")
        self.assertNotIn("ZeroDivisionError", text)
        self.assertNotIn("boom", text)
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)

    def test_unsupportedBody(self) -> None:
        """
        A POST that is not a form: the page, with the body error's status.
        """
        response, body = self.request("POST", "/oauth/authorize", data=b"{}",
                                      headers={"Accept": BROWSER, "Content-Type": "application/json"})
        self.assertPage(response, body, 415, "This request could not be handled")

    def test_jsonForClients(self) -> None:
        """
        A client asking for JSON (or sending no C{Accept}) gets the OAuth
        JSON error with the same status, never a page and never a redirect.
        """
        for accept in ("application/json", "*/*"):
            response, body = self.page(accept=accept, client_id="no-such-client")
            self.assertOAuthError(response, body, 400, "invalid_client")
            self.assertIsNone(self.header(response, "location"))
        response, body = self.request("GET", "/oauth/authorize",
                                      params=self.authorizeParams(self.client, redirect_uri=SNOW + "x"))
        self.assertOAuthError(response, body, 400, "invalid_request")

    def test_verifiedRedirectStillRedirects(self) -> None:
        """
        Errors after the redirect URI is verified (missing or plain PKCE,
        unsupported response type, ...) go back to it with C{error}, C{state} and C{iss},
        for browsers too (RFC 6749 section 4.1.2.1): the application shows
        them.
        """
        cases: Dict[str, Dict[str, Optional[str]]] = {
            "invalid_request": {"code_challenge": None},
            "unsupported_response_type": {"response_type": "token"},
        }
        cases_plain = {"code_challenge_method": "plain", "code_challenge": "v" * 43}
        for error, changes in list(cases.items()) + [("invalid_request", cases_plain)]:
            response, _ = self.page(**changes)
            self.assertEqual(response.code, 302)
            location = self.header(response, "location") or ""
            self.assertTrue(location.startswith(SNOW + "?"), location)
            self.assertIn("error=" + error, location)
