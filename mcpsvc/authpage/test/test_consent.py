"""
Tests for L{mcpsvc.authpage.approver.ConsentApprover}: the page, CSRF
tokens, security headers and remembered approvals.
"""

from __future__ import annotations

import base64
import hashlib
import re

from mcpsvc.authpage import page
from mcpsvc.authpage.approver import CSRF_LIFETIME
from mcpsvc.authpage.test.helpers import Forms, PageTestCase
from mcpsvc.oauth.test.helpers import SERVER, SNOW

XSS = "<script>alert(1)</script>"
IMG = "<img src=x onerror=alert(1)>"


class PageContentTests(PageTestCase):
    def test_showsClientRedirectHostAndScopes(self) -> None:
        """
        The page names the client (marked as client-provided), shows the
        redirect host and full URI, and each scope in plain language.
        """
        client = self.registerConfidential(client_name="Acme Connector")
        response, forms = self.showPage(client)
        self.assertEqual(response.code, 200)
        self.assertEqual(self.header(response, "content-type"), "text/html; charset=utf-8")
        text = forms.allText
        self.assertIn("Acme Connector", text)
        self.assertIn("provided by the application itself", text)
        self.assertIn("dev12345.service-now.com", text)
        self.assertIn(SNOW, text)
        self.assertIn("Use the tools on this server", text)
        self.assertIn("See what this server offers", text)
        self.assertIn("(mcp:tools)", text)
        self.assertIn("renew it without asking", text)
        self.assertNotIn("This application runs on this computer", text)
        self.assertNotIn("not on this server's list", text)
        self.assertEqual(forms.buttons["consent"], [("decision", "deny"), ("decision", "approve")])

    def test_writeScopeShownOnlyWhenAsked(self) -> None:
        """
        A request without scope asks for the default scopes (never
        C{mcp:write}); a step-up request for C{mcp:write} shows it in plain
        language, and approving grants it.
        """
        client = self.registerConfidential()
        response, forms = self.showPage(client, scope=None)
        self.assertNotIn("(mcp:write)", forms.allText)
        response, forms = self.showPage(client, scope="mcp:tools mcp:read mcp:write")
        self.assertEqual(response.code, 200)
        self.assertIn("Change and delete data", forms.allText)
        self.assertIn("(mcp:write)", forms.allText)
        query = self.redirectQuery(self.submit(forms.forms["consent"], "approve")[0])
        _, body = self.exchange(client, query["code"])
        self.assertEqual(body["scope"], "mcp:tools mcp:read mcp:write")

    def test_structureAndAccessibility(self) -> None:
        """
        C{lang}, the viewport, a title, no script at all, and the stylesheet
        is exactly the one the CSP hash allows.
        """
        client = self.registerConfidential()
        response, body = self.browse("GET", "/oauth/authorize", params=self.authorizeParams(client))
        self.assertTrue(body.startswith(b"<!DOCTYPE html>\n<html lang=\"en\">"))
        self.assertIn(b'name="viewport" content="width=device-width, initial-scale=1"', body)
        self.assertNotIn(b"<script", body)
        self.assertIsNone(re.search(rb"<[^>]*\son[a-z]+=", body))
        style = re.search(rb"<style>(.*?)</style>", body, re.S)
        assert style is not None
        digest = base64.b64encode(hashlib.sha256(style.group(1)).digest()).decode()
        self.assertEqual(page.CSS_HASH, f"'sha256-{digest}'")
        # Deny comes before Approve in the focus order.
        forms = Forms(body)
        self.assertLess(forms.order.index("deny"), forms.order.index("approve"))

    def test_clientNameEscaped(self) -> None:
        """
        A client name with markup is shown as text.
        """
        for name in (XSS, IMG):
            client = self.registerPublic()
            record = self.successResultOf(self.store.getClient(client["client_id"]))
            self.successResultOf(self.store.updateClient(
                record.__class__(clientID=record.clientID, secretHash=None,
                                 metadata=dict(record.metadata, client_name=name),
                                 createdAt=record.createdAt)))
            response, body = self.browse("GET", "/oauth/authorize", params=self.authorizeParams(client))
            self.assertEqual(response.code, 200)
            self.assertNotIn(name.encode(), body)
            self.assertIn(name.replace("<", "&lt;").replace(">", "&gt;").encode(), body)
            self.assertIn(name, Forms(body).allText)

    def test_loopbackWarning(self) -> None:
        """
        A loopback redirect URI gets a warning naming the host.
        """
        client = self.registerPublic("http://127.0.0.1/callback")
        _, forms = self.showPage(client, redirect_uri="http://127.0.0.1:8765/callback")
        self.assertIn("This application runs on this computer", forms.allText)
        self.assertIn("127.0.0.1:8765", forms.allText)

    def test_notOnAllowListWarning(self) -> None:
        """
        A redirect URI outside C{DCR_REDIRECT_PATTERNS} (registered before
        the list changed, or by hand) gets a warning.
        """
        client = self.registerConfidential()
        self.configure(self.config.replace(dcrRedirectPatterns=("https://other.example/*",),
                                           servicenowInstance=None))
        _, forms = self.showPage(client)
        self.assertIn("not on this server's list of expected addresses", forms.allText)
        # The ServiceNow instance counts as listed.
        self.configure(self.config.replace(servicenowInstance="https://dev12345.service-now.com"))
        _, forms = self.showPage(client)
        self.assertNotIn("not on this server's list", forms.allText)

    def test_branding(self) -> None:
        """
        C{AUTHORIZE_PAGE_TITLE} and C{AUTHORIZE_PAGE_TEXT} appear, escaped.
        """
        self.configure(self.config.replace(authorizePageTitle="Acme <MCP>",
                                           authorizePageText="Ask IT & security first."))
        client = self.registerConfidential()
        response, body = self.browse("GET", "/oauth/authorize", params=self.authorizeParams(client))
        self.assertIn(b"Acme &lt;MCP&gt;", body)
        self.assertIn(b"Ask IT &amp; security first.", body)

    def test_hiddenFieldsRepostTheRequest(self) -> None:
        """
        The form re-posts every request parameter and a CSRF token, to the
        authorization endpoint.
        """
        client = self.registerConfidential()
        params = self.authorizeParams(client, scope="mcp:read")
        _, body = self.browse("GET", "/oauth/authorize", params=params)
        fields = Forms(body).forms["consent"]
        token = fields.pop("csrf_token")
        self.assertTrue(token.startswith("v1."))
        self.assertEqual(fields, params)
        self.assertIn(b'action="/oauth/authorize" method="post"', body.replace(b'method="post" action="/oauth/authorize"', b'action="/oauth/authorize" method="post"'))

    def test_unknownClientErrorPageNoRedirect(self) -> None:
        """
        A bad client is an error page (the OAuth app's), never a redirect.
        """
        response, body = self.browse("GET", "/oauth/authorize",
                                     params={"client_id": "nope", "redirect_uri": SNOW})
        self.assertEqual(response.code, 400)
        self.assertIsNone(self.header(response, "location"))


class HeaderTests(PageTestCase):
    def assertSecurityHeaders(self, response, redirectOrigin: str) -> None:
        self.assertEqual(
            self.header(response, "content-security-policy"),
            f"default-src 'none'; style-src {page.CSS_HASH}; form-action 'self' {redirectOrigin}; "
            "frame-ancestors 'none'; base-uri 'none'",
        )
        self.assertEqual(self.header(response, "x-frame-options"), "DENY")
        self.assertEqual(self.header(response, "cache-control"), "no-store")
        self.assertEqual(self.header(response, "referrer-policy"), "no-referrer")
        self.assertEqual(self.header(response, "x-content-type-options"), "nosniff")

    def test_pageHeaders(self) -> None:
        client = self.registerConfidential()
        response, _ = self.showPage(client)
        self.assertSecurityHeaders(response, "https://dev12345.service-now.com")

    def test_loopbackOriginHasPort(self) -> None:
        client = self.registerPublic()
        response, _ = self.showPage(client, redirect_uri="http://127.0.0.1:5555/callback")
        self.assertSecurityHeaders(response, "http://127.0.0.1:5555")

    def test_cspOriginSanitised(self) -> None:
        """
        A redirect origin that could smuggle CSP syntax is left out.
        """
        from twisted.web.test.requesthelper import DummyRequest

        from mcpsvc.authpage.approver import securityHeaders

        for uri, expected in (
            ("https://a.example:8443/cb", "form-action 'self' https://a.example:8443;"),
            ("http://[::1]:5000/cb", "form-action 'self' http://[::1]:5000;"),
            ("https://a.example;script-src/cb", "form-action 'self';"),
            ("https://a.example'/cb", "form-action 'self';"),
        ):
            request = DummyRequest([b""])
            securityHeaders(request, uri)
            csp = request.responseHeaders.getRawHeaders("content-security-policy")[0]
            self.assertIn(expected, csp)

    def test_refusedFormAndRedirectHeaders(self) -> None:
        client = self.registerConfidential()
        _, forms = self.showPage(client)
        response, _ = self.submit(dict(forms.forms["consent"], csrf_token="x"), "approve")
        self.assertEqual(response.code, 400)
        self.assertSecurityHeaders(response, "https://dev12345.service-now.com")
        _, forms = self.showPage(client)
        response, _ = self.submit(forms.forms["consent"], "deny")
        self.assertEqual(response.code, 302)
        self.assertSecurityHeaders(response, "https://dev12345.service-now.com")


class DecisionTests(PageTestCase):
    def test_approveIssuesCode(self) -> None:
        """
        Approve redirects with C{code}, C{state} and C{iss}; the code
        exchanges for tokens whose subject is a consent pseudonym.
        """
        client = self.registerConfidential()
        _, forms = self.showPage(client)
        response, _ = self.submit(forms.forms["consent"], "approve")
        query = self.redirectQuery(response)
        self.assertTrue(self.header(response, "location").startswith(SNOW + "?"))
        self.assertEqual((query["state"], query["iss"]), ("st-123", SERVER))
        response, body = self.exchange(client, query["code"])
        self.assertEqual(response.code, 200, body)
        claims = self.oauth.tokens.verify(body["access_token"], now=self.clock.seconds())
        self.assertRegex(claims.subject, r"^consent-[0-9a-f]{32}$")

    def test_approvalsHaveTheirOwnSubjects(self) -> None:
        """
        Two approvals of one client (two people) get different subjects.
        """
        client = self.registerConfidential()
        subjects = set()
        for _ in range(2):
            _, forms = self.showPage(client)
            query = self.redirectQuery(self.submit(forms.forms["consent"], "approve")[0])
            _, body = self.exchange(client, query["code"])
            subjects.add(self.oauth.tokens.verify(body["access_token"], now=self.clock.seconds()).subject)
        self.assertEqual(len(subjects), 2)

    def test_denyRedirectsAccessDenied(self) -> None:
        client = self.registerConfidential()
        _, forms = self.showPage(client)
        response, _ = self.submit(forms.forms["consent"], "deny")
        query = self.redirectQuery(response)
        self.assertEqual((query["error"], query["state"], query["iss"]), ("access_denied", "st-123", SERVER))
        self.assertNotIn("code", query)

    def test_unknownDecision(self) -> None:
        client = self.registerConfidential()
        _, forms = self.showPage(client)
        response, body = self.submit(forms.forms["consent"], "maybe")
        self.assertEqual(response.code, 400)

    def test_postWithoutDecisionShowsPage(self) -> None:
        """
        An authorization request sent as a POST (RFC 6749 allows it) shows
        the page.
        """
        client = self.registerConfidential()
        response, body = self.browse("POST", "/oauth/authorize", data=self.authorizeParams(client))
        self.assertEqual(response.code, 200)
        self.assertIn("consent", Forms(body).forms)


class CSRFTests(PageTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.client = self.registerConfidential()
        _, forms = self.showPage(self.client)
        self.fields = forms.forms["consent"]

    def assertRefused(self, response, body, reason: str) -> None:
        self.assertEqual(response.code, 400)
        self.assertIsNone(self.header(response, "location"))
        self.assertIn(reason, Forms(body).allText)

    def test_missing(self) -> None:
        fields = dict(self.fields)
        del fields["csrf_token"]
        self.assertRefused(*self.submit(fields, "approve"), "csrf missing")

    def test_altered(self) -> None:
        token = self.fields["csrf_token"]
        version, payload, mac = token.split(".")
        # Change the payload (another expiry) but keep the MAC.
        altered = payload[:-2] + ("AA" if payload[-2:] != "AA" else "BB")
        for bad in (f"{version}.{altered}.{mac}", token[:-1] + ("A" if token[-1] != "A" else "B"), "garbage"):
            self.assertRefused(*self.submit(dict(self.fields, csrf_token=bad), "approve"),
                               "csrf altered" if bad != "garbage" else "csrf malformed")
        # The genuine token still works after the failed attempts.
        self.redirectQuery(self.submit(self.fields, "approve")[0])

    def test_replayed(self) -> None:
        self.redirectQuery(self.submit(self.fields, "approve")[0])
        self.assertRefused(*self.submit(self.fields, "approve"), "csrf replayed")
        self.assertRefused(*self.submit(self.fields, "deny"), "csrf replayed")

    def test_expired(self) -> None:
        self.clock.advance(CSRF_LIFETIME)
        self.assertRefused(*self.submit(self.fields, "approve"), "csrf expired")

    def test_notYetExpired(self) -> None:
        self.clock.advance(CSRF_LIFETIME - 1)
        self.redirectQuery(self.submit(self.fields, "approve")[0])

    def test_boundToRequest(self) -> None:
        """
        The token only works with the request it was shown for: another
        state, challenge, scope or client is refused.
        """
        other = self.registerConfidential()
        for change in (
            {"state": "other-state"},
            {"code_challenge": "A" * 43},
            {"scope": "mcp:read"},
            {"client_id": other["client_id"]},
        ):
            response, body = self.submit(dict(self.fields, **change), "approve")
            self.assertRefused(response, body, "csrf bound to another request")

    def test_crossSiteRefused(self) -> None:
        """
        A submission the browser marks as cross-site (or same-site) is
        refused and does not use up the token; without the header (older
        browsers, other clients) the token decides.
        """
        for site in ("cross-site", "same-site"):
            self.assertRefused(*self.submit(self.fields, "approve", site=site), "cross-site form")
        self.redirectQuery(self.submit(self.fields, "approve", site=None)[0])

    def test_replayedAfterRefusal(self) -> None:
        """
        A refused (altered) submission does not use up the genuine token,
        but a used one stays used.
        """
        self.assertRefused(*self.submit(dict(self.fields, state="x"), "approve"), "bound")
        self.redirectQuery(self.submit(self.fields, "approve")[0])
        self.assertRefused(*self.submit(self.fields, "approve"), "replayed")


class RememberTests(PageTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.configure(self.config.replace(rememberApprovals=True))
        self.client = self.registerConfidential()

    def approveAndExchange(self):
        _, forms = self.showPage(self.client)
        response, _ = self.submit(forms.forms["consent"], "approve")
        query = self.redirectQuery(response)
        _, body = self.exchange(self.client, query["code"])
        return response, body

    def subjectOf(self, body) -> str:
        return self.oauth.tokens.verify(body["access_token"], now=self.clock.seconds()).subject

    def test_cookieAttributes(self) -> None:
        response, _ = self.approveAndExchange()
        [cookie] = response.headers.getRawHeaders("set-cookie")
        self.assertTrue(cookie.startswith("__Host-mcpsvc-approval-"))
        lowered = cookie.lower()
        for attribute in ("; path=/", "; secure", "; httponly", "; samesite=lax", "; max-age="):
            self.assertIn(attribute, lowered)
        self.assertNotIn("domain=", lowered)

    def test_rememberedUntilRevoked(self) -> None:
        """
        The same browser re-authorizing the same client for the same or
        fewer scopes gets a code at once, with the same subject; after the
        grant is revoked, the page shows again.
        """
        _, body = self.approveAndExchange()
        subject = self.subjectOf(body)
        response, _ = self.browse("GET", "/oauth/authorize", params=self.authorizeParams(self.client))
        query = self.redirectQuery(response)
        _, second = self.exchange(self.client, query["code"])
        self.assertEqual(self.subjectOf(second), subject)
        response, _ = self.browse("GET", "/oauth/authorize",
                                  params=self.authorizeParams(self.client, scope="mcp:read"))
        self.redirectQuery(response)
        # Another browser (no cookie) sees the page.
        response, _ = self.browse("GET", "/oauth/authorize", params=self.authorizeParams(self.client),
                                  cookies=False)
        self.assertEqual(response.code, 200, "another browser")
        # Revoke every grant of that subject: the page again.
        for family in self.successResultOf(self.store.listFamilies(self.client["client_id"], self.clock.seconds())):
            self.successResultOf(self.store.revokeFamily(family.familyID, self.clock.seconds()))
        response, _ = self.browse("GET", "/oauth/authorize", params=self.authorizeParams(self.client))
        self.assertEqual(response.code, 200)

    def test_widerScopeAsks(self) -> None:
        """
        An approval for fewer scopes does not cover more; approving again
        keeps the browser's subject.
        """
        _, forms = self.showPage(self.client, scope="mcp:read")
        query = self.redirectQuery(self.submit(forms.forms["consent"], "approve")[0])
        _, body = self.exchange(self.client, query["code"])
        response, wide = self.showPage(self.client, scope="mcp:read mcp:tools")
        self.assertEqual(response.code, 200)
        query = self.redirectQuery(self.submit(wide.forms["consent"], "approve")[0])
        _, body2 = self.exchange(self.client, query["code"])
        self.assertEqual(self.subjectOf(body), self.subjectOf(body2))

    def test_notWithoutExchange(self) -> None:
        """
        An approval whose code was never exchanged holds no grant: asks.
        """
        _, forms = self.showPage(self.client)
        self.redirectQuery(self.submit(forms.forms["consent"], "approve")[0])
        response, _ = self.browse("GET", "/oauth/authorize", params=self.authorizeParams(self.client))
        self.assertEqual(response.code, 200)

    def test_forgedCookieIgnored(self) -> None:
        self.approveAndExchange()
        name = next(iter(self.cookies))
        self.cookies[name] = self.cookies[name][:-2] + "AA"
        response, _ = self.browse("GET", "/oauth/authorize", params=self.authorizeParams(self.client))
        self.assertEqual(response.code, 200)

    def test_neverForLoopback(self) -> None:
        client = self.registerPublic()
        _, forms = self.showPage(client)
        response, _ = self.submit(forms.forms["consent"], "approve")
        self.assertIsNone(response.headers.getRawHeaders("set-cookie"))
        self.exchange(client, self.redirectQuery(response)["code"])
        response, _ = self.showPage(client)
        self.assertEqual(response.code, 200)

    def test_offWhenDisabled(self) -> None:
        self.configure(self.config.replace(rememberApprovals=False))
        response, _ = self.approveAndExchange()
        self.assertIsNone(response.headers.getRawHeaders("set-cookie"))
        response, _ = self.browse("GET", "/oauth/authorize", params=self.authorizeParams(self.client))
        self.assertEqual(response.code, 200)
