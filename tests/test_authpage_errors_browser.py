"""
The authorization endpoint's error pages in a real browser (Debian's
Chromium, headless, driven by Selenium) against a real C{twistd -n mcpsvc}:
an unknown client, a missing client id, an unregistered redirect URI, a
tampered and a replayed consent form, too many requests. Each is a page in
the consent page's style (its stylesheet applies, no CSP violation) that
says what went wrong and what to tell the administrator; the browser stays
on mcpsvc (never sent to an unverified address). An error after the
redirect URI is verified (no PKCE) goes back to the application.

Screenshots of every page, at phone and desktop sizes, are written under
C{$MCPSVC_SCREENSHOTS} when set, else under the test's temporary directory
(which pytest keeps), and their paths printed (C{pytest -s} shows them).
The fixtures are those of L{tests.test_authpage_browser}.
"""

from __future__ import annotations

import urllib.parse
from typing import Any, Dict

from twisted.trial.unittest import SynchronousTestCase

import tests.test_authpage_browser as fixtures
from tests.process import McpsvcProcess


class ErrorPageBrowserTests(SynchronousTestCase):
    # The fixtures of the consent page's browser tests.
    setUp = fixtures.BrowserTests.setUp
    startServer = fixtures.BrowserTests.startServer
    callback = fixtures.BrowserTests.callback
    register = fixtures.BrowserTests.register
    authorizeURL = fixtures.BrowserTests.authorizeURL
    browser = fixtures.BrowserTests.browser
    waitFor = fixtures.BrowserTests.waitFor
    waitForURL = fixtures.BrowserTests.waitForURL
    screenshots = fixtures.BrowserTests.screenshots
    cspViolations = fixtures.BrowserTests.cspViolations
    landing = fixtures.BrowserTests.landing
    _js = True

    def assertErrorPage(self, driver: Any, server: McpsvcProcess, heading: str, name: str) -> Dict[str, str]:
        """
        The page is mcpsvc's error page: on mcpsvc's origin, the heading,
        the stylesheet applied (the card, the administrator's box), the
        advice and the reference details; screenshots taken; no CSP
        violation. Returns the reference details.
        """
        self.waitFor(driver, "#heading")
        self.assertTrue(driver.current_url.startswith(server.url + "/"), driver.current_url)
        self.assertEqual(driver.find_element("id", "heading").text, heading)
        self.assertEqual(driver.find_element("css selector", ".brand").text.lower(), "acme mcp")
        main = driver.find_element("css selector", "main")
        self.assertEqual(main.value_of_css_property("border-radius"), "12px")
        self.assertEqual(main.value_of_css_property("background-color"), "rgba(255, 255, 255, 1)")
        admin = driver.find_element("css selector", ".admin")
        self.assertEqual(admin.value_of_css_property("background-color"), "rgba(246, 248, 250, 1)")
        self.assertTrue(driver.find_element("id", "advice").text)
        self.assertTrue(driver.find_element("id", "admin").text)
        details = {
            dd.get_attribute("data-ref"): dd.text
            for dd in driver.find_elements("css selector", "dl.ref dd")
        }
        self.assertIn("request-id", details)
        self.assertIn("time", details)
        self.screenshots(driver, name)
        self.assertEqual(self.cspViolations(driver), [])
        return details

    def test_requestErrors(self) -> None:
        """
        Unknown client, missing client id, unregistered redirect URI: pages
        (400), the browser never leaves mcpsvc; the request id on the page
        is the one in the server's log. Missing PKCE, with a verified
        redirect URI, goes back to the application with the error.
        """
        server = self.startServer("consent")
        cb = self.callback()
        client = self.register(server, "Acme Desktop Agent")
        driver = self.browser()

        driver.get(self.authorizeURL(server, client, cb).replace(
            client["client_id"], "no-such-client"))
        details = self.assertErrorPage(driver, server, "This application is not registered here",
                                       "unknown-client")
        self.assertEqual(details["error"], "invalid_client")
        self.assertEqual(details["client-id"], "no-such-client")
        self.assertIn("no-such-client", driver.find_element("id", "message").text)
        logged = server.waitFor(lambda r: r.get("requestID") == details["request-id"]
                                and r.get("eventType") == "request")
        self.assertEqual((logged["path"], logged["status"]), ("/oauth/authorize", 400))

        url = self.authorizeURL(server, client, cb)
        parts = urllib.parse.urlsplit(url)
        query = [(k, v) for k, v in urllib.parse.parse_qsl(parts.query) if k != "client_id"]
        driver.get(server.url + "/oauth/authorize?" + urllib.parse.urlencode(query))
        details = self.assertErrorPage(driver, server, "This sign-in link is not valid", "no-client-id")
        self.assertEqual(details["error"], "invalid_request")

        evil = "https://evil.example/steal?<b>x</b>"
        driver.get(url.replace(urllib.parse.quote(cb.uri, safe=""), urllib.parse.quote(evil, safe="")))
        details = self.assertErrorPage(driver, server, "This application's return address is not registered",
                                       "bad-redirect")
        self.assertIn("evil.example", driver.find_element("id", "message").text)
        self.assertEqual(details["redirect-uri"], evil)
        self.assertEqual(driver.find_elements("tag name", "b"), [])

        # After the redirect URI is verified, errors go back to it.
        noPKCE = [(k, v) for k, v in urllib.parse.parse_qsl(parts.query)
                  if k not in ("code_challenge", "code_challenge_method")]
        driver.get(server.url + "/oauth/authorize?" + urllib.parse.urlencode(noPKCE))
        landed = self.landing(self.waitForURL(driver, cb.uri), cb)
        self.assertEqual(landed["error"], "invalid_request")
        self.assertEqual(landed["iss"], server.url)

    def test_refusedForms(self) -> None:
        """
        A consent form whose security token was altered, and a form sent a
        second time (a replay), are refused with a page (400) that says why;
        nothing is approved.
        """
        server = self.startServer("consent")
        cb = self.callback()
        client = self.register(server, "Acme Desktop Agent")
        driver = self.browser()

        driver.get(self.authorizeURL(server, client, cb))
        self.waitFor(driver, "#approve")
        driver.execute_script(
            "var t = document.querySelector('#consent input[name=csrf_token]');"
            "t.value = t.value.slice(0, -4) + 'AAAA';")
        driver.find_element("id", "approve").click()
        self.assertErrorPage(driver, server, "This form cannot be used", "tampered-form")
        self.assertIn("not valid", driver.find_element("id", "message").text)

        # Keep a copy of a fresh form, approve it, then send the copy again.
        driver.get(self.authorizeURL(server, client, cb, state="replay"))
        self.waitFor(driver, "#approve")
        saved = driver.execute_script("return document.getElementById('consent').outerHTML")
        driver.find_element("id", "approve").click()
        landed = self.landing(self.waitForURL(driver, cb.uri), cb)
        self.assertIn("code", landed)
        driver.get(self.authorizeURL(server, client, cb, state="other"))
        self.waitFor(driver, "#approve")
        driver.execute_script(
            "document.getElementById('consent').outerHTML = arguments[0];", saved)
        driver.find_element("id", "approve").click()
        details = self.assertErrorPage(driver, server, "This form cannot be used", "replayed-form")
        self.assertIn("sent already", driver.find_element("id", "message").text)
        self.assertEqual(details["error"], "form_refused")
        self.assertEqual(len([p for p in cb.received if "code=" in p]), 1)

    def test_tooManyRequests(self) -> None:
        """
        Past C{RATE_LIMIT_AUTHORIZE}: a 429 page saying how long to wait.
        """
        server = self.startServer("consent", RATE_LIMIT_AUTHORIZE="2/600")
        cb = self.callback()
        client = self.register(server, "Acme Desktop Agent")
        driver = self.browser()
        for state in ("one", "two"):
            driver.get(self.authorizeURL(server, client, cb, state=state))
            self.waitFor(driver, "#approve")
        driver.get(self.authorizeURL(server, client, cb, state="three"))
        details = self.assertErrorPage(driver, server, "Too many attempts", "rate-limited")
        self.assertEqual(details["error"], "rate_limited")
        self.assertRegex(driver.find_element("id", "advice").text, r"^Wait \d+ seconds")
