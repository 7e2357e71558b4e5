"""
The authorization page in a real browser: Debian's Chromium, headless,
driven by Selenium, against a real C{twistd -n mcpsvc} process.

Each test registers a public client whose redirect URI is a loopback
listener the test runs, opens the authorization URL, acts on the page like a
person, and checks where the browser lands; then exchanges the code at
C{/oauth/token} with the PKCE verifier. Screenshots (390x844 and 1280x800,
plus the whole page at each width) are written under the test's temporary
directory (C{_trial_temp/...}), or under C{$MCPSVC_SCREENSHOTS} when set,
and their paths printed. Every wait is bounded (C{WebDriverWait}), never a
sleep.

Needs C{/usr/bin/chromium}, C{/usr/bin/chromedriver} (Debian packages
C{chromium} and C{chromium-driver}) and the C{selenium} package; skipped
without them. Selenium is always given the system driver and browser, so it
never downloads anything.
"""

from __future__ import annotations

import base64
import hashlib
import http.server
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import urllib.error
import urllib.parse
import urllib.request
from typing import Any, Dict, List, Optional, Tuple

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from tests.process import SECRET, McpsvcProcess

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
DCR_TOKEN = "browser-test-initial-access-token-0123456789"
VERIFIER = "browser-test-verifier-" + "x" * 30
CHALLENGE = base64.urlsafe_b64encode(hashlib.sha256(VERIFIER.encode()).digest()).rstrip(b"=").decode()
WAIT = 20


def _selenium() -> Any:
    """
    Skip when the browser or Selenium is missing, unless
    C{MCPSVC_REQUIRE_BROWSER=1} (the test command sets it after installing
    them): then fail.
    """
    missing = [path for path in (CHROMIUM, CHROMEDRIVER) if not os.path.exists(path)]
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("the selenium package")
    if missing:
        message = "missing " + ", ".join(missing) + " (apt-get install chromium chromium-driver; pip install selenium)"
        if os.environ.get("MCPSVC_REQUIRE_BROWSER") == "1":
            raise AssertionError(message)
        raise SkipTest(message)


def freePort() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Callback:
    """
    A loopback HTTP listener standing in for the client's redirect URI: it
    answers every GET with a small page and records the query.
    """

    def __init__(self) -> None:
        received: List[str] = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                received.append(self.path)
                body = b"<!DOCTYPE html><title>callback</title><p id=done>Back at the client.</p>"
                self.send_response(200)
                self.send_header("Content-Type", "text/html")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.received = received
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}/cb"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(10)


def post(url: str, data: Any, headers: Optional[Dict[str, str]] = None, form: bool = False) -> Tuple[int, Any]:
    if form:
        body = urllib.parse.urlencode(data).encode()
        ctype = "application/x-www-form-urlencoded"
    else:
        body = json.dumps(data).encode()
        ctype = "application/json"
    request = urllib.request.Request(url, data=body, method="POST",
                                     headers=dict({"Content-Type": ctype}, **(headers or {})))
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


class BrowserTests(SynchronousTestCase):
    def setUp(self) -> None:
        _selenium()
        # MCPSVC_SCREENSHOTS: keep the screenshots in a known directory.
        keep = os.environ.get("MCPSVC_SCREENSHOTS")
        self.shots = os.path.abspath(os.path.join(keep, self.id().rsplit(".", 1)[-1]) if keep
                                     else self.mktemp())
        os.makedirs(self.shots, exist_ok=True)

    # -- fixtures

    def startServer(self, mode: str, **env: str) -> McpsvcProcess:
        workdir = os.path.abspath(self.mktemp())
        os.makedirs(workdir)
        port = freePort()
        base = {
            "JWT_SECRET": SECRET,
            "DCR_AUTH_TOKEN": DCR_TOKEN,
            "AUTHORIZE_MODE": mode,
            "SERVER_URL": f"http://127.0.0.1:{port}",
            "PORT": str(port),
            "STORE": "memory",
            "AUTHORIZE_PAGE_TITLE": "Acme MCP",
            "AUTHORIZE_PAGE_TEXT": "Connections are logged and reviewed by the IT team.",
        }
        base.update(env)
        process = McpsvcProcess(workdir, env=base, listen=[f"tcp:{port}:interface=127.0.0.1"])
        self.addCleanup(process.kill)
        return process.start()

    def callback(self) -> Callback:
        cb = Callback()
        self.addCleanup(cb.close)
        return cb

    def register(self, server: McpsvcProcess, name: str) -> Dict[str, Any]:
        status, body = post(server.url + "/oauth/register", {
            "client_name": name,
            "redirect_uris": ["http://127.0.0.1/cb"],
            "token_endpoint_auth_method": "none",
            "grant_types": ["authorization_code", "refresh_token"],
        }, headers={"Authorization": "Bearer " + DCR_TOKEN})
        self.assertEqual(status, 201, body)
        return body  # type: ignore[no-any-return]

    def authorizeURL(self, server: McpsvcProcess, client: Dict[str, Any], cb: Callback,
                     state: str = "browser-state-1") -> str:
        return server.url + "/oauth/authorize?" + urllib.parse.urlencode({
            "response_type": "code",
            "client_id": client["client_id"],
            "redirect_uri": cb.uri,
            "code_challenge": CHALLENGE,
            "code_challenge_method": "S256",
            "state": state,
            "scope": "mcp:tools mcp:read",
            "resource": server.url + "/mcp",
        })

    def browser(self, javascript: bool = True) -> Any:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service

        profile = tempfile.mkdtemp(prefix="authpage-chromium-")
        self.addCleanup(shutil.rmtree, profile, True)
        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
                     "--no-first-run", "--disable-background-networking",
                     "--disable-component-update", "--disable-sync",
                     "--disable-dev-shm-usage", f"--user-data-dir={profile}",
                     "--window-size=1280,800"):
            options.add_argument(flag)
        if not javascript:
            options.add_experimental_option(
                "prefs", {"profile.managed_default_content_settings.javascript": 2})
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
        self.addCleanup(driver.quit)
        driver.set_page_load_timeout(WAIT)
        return driver

    def waitFor(self, driver: Any, css: str) -> Any:
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support import expected_conditions as EC
        from selenium.webdriver.support.ui import WebDriverWait

        return WebDriverWait(driver, WAIT).until(EC.presence_of_element_located((By.CSS_SELECTOR, css)))

    def waitForURL(self, driver: Any, prefix: str) -> str:
        from selenium.webdriver.support.ui import WebDriverWait

        WebDriverWait(driver, WAIT).until(lambda d: d.current_url.startswith(prefix))
        return driver.current_url  # type: ignore[no-any-return]

    def screenshots(self, driver: Any, name: str) -> List[str]:
        """
        Save the page at phone and desktop sizes (exact viewport sizes via
        device metrics emulation); return the paths.
        """
        paths = []
        for width, height, mobile in ((390, 844, True), (1280, 800, False)):
            driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {
                "width": width, "height": height, "deviceScaleFactor": 1, "mobile": mobile})
            # The layout viewport now has the emulated width.
            self.assertEqual(driver.execute_script("return window.innerWidth") if self._js else width, width)
            path = os.path.join(self.shots, f"{name}-{width}x{height}.png")
            driver.save_screenshot(path)
            paths.append(path)
            # And the whole page, below the fold too.
            shot = driver.execute_cdp_cmd("Page.captureScreenshot", {
                "format": "png", "captureBeyondViewport": True})
            full = os.path.join(self.shots, f"{name}-{width}-full.png")
            with open(full, "wb") as f:
                f.write(base64.b64decode(shot["data"]))
            paths.append(full)
        driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
        sys.stdout.write("\nscreenshots: " + " ".join(paths) + "\n")
        return paths

    _js = True

    def cspViolations(self, driver: Any) -> List[str]:
        return [entry["message"] for entry in driver.get_log("browser")
                if "Content Security Policy" in entry["message"] or "Refused" in entry["message"]]

    def landing(self, url: str, cb: Callback) -> Dict[str, str]:
        self.assertTrue(url.startswith(cb.uri + "?"), url)
        return dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(url).query))

    def exchange(self, server: McpsvcProcess, client: Dict[str, Any], cb: Callback, code: str) -> Dict[str, Any]:
        status, body = post(server.url + "/oauth/token", {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": cb.uri,
            "code_verifier": VERIFIER,
            "client_id": client["client_id"],
            "resource": server.url + "/mcp",
        }, form=True)
        self.assertEqual(status, 200, body)
        return body  # type: ignore[no-any-return]

    # -- tests

    def test_consentApprove(self) -> None:
        """
        Consent mode, JavaScript disabled: the page names the client and
        the redirect host; Approve lands on the redirect URI with code,
        state and iss; the code exchanges for tokens. The stylesheet is
        allowed by the CSP (no violation reported).
        """
        server = self.startServer("consent")
        cb = self.callback()
        client = self.register(server, "Acme Desktop Agent")
        self._js = False
        driver = self.browser(javascript=False)
        driver.get(self.authorizeURL(server, client, cb))
        approve = self.waitFor(driver, "#approve")
        self.assertEqual(driver.find_element("id", "client-name").text, "Acme Desktop Agent")
        self.assertEqual(driver.find_element("id", "redirect-host").text, f"127.0.0.1:{cb.port}")
        self.assertIn("This application runs on this computer", driver.page_source)
        self.assertEqual(driver.find_element("css selector", "html").get_attribute("lang"), "en")
        # The stylesheet applied: the Approve button is the accent colour.
        self.assertEqual(approve.value_of_css_property("background-color"), "rgba(11, 87, 208, 1)")
        self.screenshots(driver, "consent")
        self.assertEqual(self.cspViolations(driver), [])
        approve.click()
        query = self.landing(self.waitForURL(driver, cb.uri), cb)
        self.assertEqual(query["state"], "browser-state-1")
        self.assertEqual(query["iss"], server.url)
        tokens = self.exchange(server, client, cb, query["code"])
        self.assertEqual(tokens["token_type"], "Bearer")
        self.assertIn("refresh_token", tokens)
        self.assertEqual(len([p for p in cb.received if p.startswith("/cb?")]), 1)

    def test_consentDeny(self) -> None:
        """
        Deny lands on the redirect URI with error=access_denied, state and
        iss, and no code.
        """
        server = self.startServer("consent")
        cb = self.callback()
        client = self.register(server, "Acme Desktop Agent")
        driver = self.browser()
        driver.get(self.authorizeURL(server, client, cb, state="deny-state"))
        self.waitFor(driver, "#deny")
        # Keyboard only: the first Tab stop is Deny, the next Approve.
        from selenium.webdriver.common.action_chains import ActionChains
        from selenium.webdriver.common.keys import Keys

        ActionChains(driver).send_keys(Keys.TAB).perform()
        self.assertEqual(driver.switch_to.active_element.get_attribute("id"), "deny")
        ActionChains(driver).send_keys(Keys.TAB).perform()
        self.assertEqual(driver.switch_to.active_element.get_attribute("id"), "approve")
        ActionChains(driver).key_down(Keys.SHIFT).send_keys(Keys.TAB).key_up(Keys.SHIFT).perform()
        self.assertEqual(driver.switch_to.active_element.get_attribute("id"), "deny")
        ActionChains(driver).send_keys(Keys.ENTER).perform()
        query = self.landing(self.waitForURL(driver, cb.uri), cb)
        self.assertEqual(query["error"], "access_denied")
        self.assertEqual(query["state"], "deny-state")
        self.assertEqual(query["iss"], server.url)
        self.assertNotIn("code", query)

    def test_hostileClientNameIsText(self) -> None:
        """
        A client named C{<img src=x onerror=alert(1)>} is shown as text:
        no image element, no alert, with JavaScript enabled.
        """
        from selenium.common.exceptions import NoAlertPresentException

        name = "<img src=x onerror=alert(1)>"
        server = self.startServer("consent")
        cb = self.callback()
        client = self.register(server, name)
        driver = self.browser(javascript=True)
        driver.get(self.authorizeURL(server, client, cb))
        self.waitFor(driver, "#approve")
        self.assertEqual(driver.find_element("id", "client-name").text, name)
        self.assertEqual(driver.find_elements("tag name", "img"), [])
        self.assertEqual(driver.find_elements("tag name", "script"), [])
        with self.assertRaises(NoAlertPresentException):
            driver.switch_to.alert.text
        self.screenshots(driver, "hostile-name")
        self.assertEqual(self.cspViolations(driver), [])

    def test_loginWrongThenRight(self) -> None:
        """
        Login mode: the account is made with C{mcpsvc users add} (password
        on stdin); a wrong password shows an error; the right one leads to
        the consent page (signed in), Approve lands with a code whose
        tokens' subject is the account. A second authorization needs no
        sign-in but still asks; sign out asks for the password again.
        """
        workdir = os.path.abspath(self.mktemp())
        os.makedirs(workdir)
        usersPath = os.path.join(workdir, "users.json")
        mcpsvc = os.path.join(os.path.dirname(sys.executable), "mcpsvc")
        added = subprocess.run(
            [mcpsvc, "users", "add", "--users-file", usersPath, "alice"],
            input=b"correct horse battery staple\n", capture_output=True, timeout=60,
        )
        self.assertEqual(added.returncode, 0, added.stderr)
        server = self.startServer("login", LOGIN_USERS_FILE=usersPath)
        cb = self.callback()
        client = self.register(server, "Acme Desktop Agent")
        driver = self.browser()
        driver.get(self.authorizeURL(server, client, cb))
        self.waitFor(driver, "#username").send_keys("alice")
        driver.find_element("id", "password").send_keys("wrong password")
        driver.find_element("id", "signin").click()
        error = self.waitFor(driver, "#login-error")
        self.assertIn("not correct", error.text)
        self.assertEqual(driver.find_element("id", "username").get_attribute("value"), "alice")
        self.screenshots(driver, "login-error")
        driver.find_element("id", "password").send_keys("correct horse battery staple")
        driver.find_element("id", "signin").click()
        approve = self.waitFor(driver, "#approve")
        self.assertEqual(driver.find_element("id", "account").text, "alice")
        self.screenshots(driver, "login-consent")
        approve.click()
        query = self.landing(self.waitForURL(driver, cb.uri), cb)
        tokens = self.exchange(server, client, cb, query["code"])
        payload = tokens["access_token"].split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        self.assertEqual(claims["sub"], "alice")

        # Still signed in: the consent page comes at once, and still asks.
        driver.get(self.authorizeURL(server, client, cb, state="second"))
        self.waitFor(driver, "#approve")
        self.assertEqual(driver.find_elements("id", "username"), [])
        driver.find_element("css selector", "button[value=signout]").click()
        self.waitFor(driver, "#username")
        self.assertEqual(driver.find_elements("id", "approve"), [])
