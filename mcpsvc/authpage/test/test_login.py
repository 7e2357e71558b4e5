"""
Tests for L{mcpsvc.authpage.approver.LoginApprover}: sign-in, throttling,
the session cookie, sign-out, and the consent step after sign-in.
"""

from __future__ import annotations

import os
from typing import Any, Dict

from twisted.internet.defer import Deferred

from mcpsvc.config import RateLimit
from mcpsvc.authpage import approver, users
from mcpsvc.authpage.approver import (
    LOGIN_LIMIT_ACCOUNT,
    LOGIN_LIMIT_ADDRESS,
    LOGIN_LIMIT_PAIR,
    LOGIN_LIMIT_UNDER_ATTACK,
)
from mcpsvc.authpage.test.helpers import Forms, PageTestCase
from mcpsvc.authpage.test.test_users import FAST

PASSWORD = "correct horse battery staple"


class LoginTestCase(PageTestCase):
    mode = "login"

    def setUp(self) -> None:
        # Cheap hashes: these tests are not about scrypt's cost (test_users).
        self.patch(users, "SCRYPT", FAST)
        self.usersFile = os.path.abspath(self.mktemp())
        users.addUser(self.usersFile, "alice", PASSWORD, 0)
        users.addUser(self.usersFile, "bob", "bob's password!", 0)
        super().setUp()
        self.configure(self.config.replace(loginUsersFile=self.usersFile))
        self.client = self.registerConfidential()

    def loginForm(self, **changes: Any) -> Dict[str, str]:
        response, forms = self.showPage(self.client, **changes)
        self.assertEqual(response.code, 200)
        self.assertIn("login", forms.forms, forms.allText)
        return forms.forms["login"]

    def signIn(self, name: str = "alice", password: str = PASSWORD, **changes: Any) -> Any:
        fields = self.loginForm(**changes)
        return self.submit(dict(fields, username=name, password=password), "login")

    def consentForms(self, **changes: Any) -> Forms:
        response, forms = self.showPage(self.client, **changes)
        self.assertEqual(response.code, 200)
        self.assertIn("consent", forms.forms, forms.allText)
        return forms


class SignInTests(LoginTestCase):
    def test_loginPageFirst(self) -> None:
        """
        Without a sign-in, the page asks for an account and password, and
        still shows the client and redirect host; labels name the inputs.
        """
        response, body = self.browse("GET", "/oauth/authorize", params=self.authorizeParams(self.client))
        forms = Forms(body)
        self.assertNotIn("consent", forms.forms)
        self.assertEqual(forms.buttons["login"], [("decision", "login")])
        self.assertIn(b'<label for="username">Account name</label>', body)
        self.assertIn(b'<label for="password">Password</label>', body)
        self.assertIn(b'autocomplete="current-password"', body)
        self.assertIn("dev12345.service-now.com", forms.allText)
        self.assertIn("ServiceNow", forms.allText)

    def test_successSetsCookieAndRedirects(self) -> None:
        """
        The right password: 303 back to the authorization request (GET),
        with a C{__Host-} session cookie; then the consent page, signed in.
        """
        response, _ = self.signIn()
        self.assertEqual(response.code, 303)
        location = self.header(response, "location")
        self.assertTrue(location.startswith("/oauth/authorize?"))
        self.assertIn("state=st-123", location)
        self.assertNotIn("password", location)
        [cookie] = response.headers.getRawHeaders("set-cookie")
        self.assertTrue(cookie.startswith("__Host-mcpsvc-login="))
        lowered = cookie.lower()
        for attribute in ("; path=/", "; secure", "; httponly", "; samesite=lax", "; max-age=1800"):
            self.assertIn(attribute, lowered)
        response, body = self.browse("GET", location)
        forms = Forms(body)
        self.assertIn("consent", forms.forms)
        self.assertIn("Signed in as alice", forms.allText)

    def test_approveSubjectIsAccount(self) -> None:
        self.signIn()
        forms = self.consentForms()
        query = self.redirectQuery(self.submit(forms.forms["consent"], "approve")[0])
        response, body = self.exchange(self.client, query["code"])
        claims = self.oauth.tokens.verify(body["access_token"], now=self.clock.seconds())
        self.assertEqual(claims.subject, "alice")

    def test_denyAfterSignIn(self) -> None:
        self.signIn()
        forms = self.consentForms()
        query = self.redirectQuery(self.submit(forms.forms["consent"], "deny")[0])
        self.assertEqual(query["error"], "access_denied")
        self.assertEqual(query["iss"], self.config.issuer)

    def test_wrongPassword(self) -> None:
        """
        A wrong password or unknown account: the sign-in form again, with
        an error, the typed name kept, and no cookie.
        """
        for name, password in (("alice", "nope nope nope"), ("mallory", PASSWORD), ("", "")):
            response, body = self.signIn(name, password)
            self.assertEqual(response.code, 200)
            forms = Forms(body)
            self.assertIn("login", forms.forms)
            self.assertIn("not correct", forms.allText)
            self.assertEqual(forms.forms["login"]["username"], name)
            self.assertIsNone(response.headers.getRawHeaders("set-cookie"))

    def test_nameCaseInsensitive(self) -> None:
        response, _ = self.signIn("  Alice ")
        self.assertEqual(response.code, 303)

    def test_crossSiteSignInRefused(self) -> None:
        """
        Login CSRF: another site posting the sign-in form (with the
        attacker's own credentials and a token it fetched) is refused.
        """
        fields = self.loginForm()
        response, body = self.submit(dict(fields, username="bob", password="bob's password!"),
                                     "login", site="cross-site")
        self.assertEqual(response.code, 400)
        self.assertIsNone(response.headers.getRawHeaders("set-cookie"))

    def test_loginCSRF(self) -> None:
        """
        The sign-in form's token is checked too: missing, replayed, or a
        consent token used to sign in are refused.
        """
        fields = self.loginForm()
        response, body = self.submit(dict(fields, csrf_token="", username="alice", password=PASSWORD), "login")
        self.assertEqual(response.code, 400)
        self.assertEqual(self.submit(dict(fields, username="alice", password="x" * 9), "login")[0].code, 200)
        response, body = self.submit(dict(fields, username="alice", password=PASSWORD), "login")
        self.assertEqual(response.code, 400)
        self.assertIn("csrf replayed", Forms(body).allText)


class SessionTests(LoginTestCase):
    def test_sessionReused(self) -> None:
        """
        Within LOGIN_SESSION_SECONDS a second authorization needs no
        sign-in, but shows the consent page (the sign-in does not approve
        by itself).
        """
        self.signIn()
        first = self.consentForms()
        self.redirectQuery(self.submit(first.forms["consent"], "approve")[0])
        self.clock.advance(self.config.loginSessionSeconds - 1)
        second = self.consentForms(state="second")
        self.assertIn("Signed in as alice", second.allText)

    def test_sessionExpires(self) -> None:
        self.signIn()
        self.clock.advance(self.config.loginSessionSeconds)
        self.loginForm()

    def test_signOut(self) -> None:
        """
        Sign out ends the session server-side: even the old cookie value
        no longer works.
        """
        self.signIn()
        old = dict(self.cookies)
        forms = self.consentForms()
        [signout] = [f for name, f in forms.forms.items() if name != "consent"]
        response, _ = self.submit(signout, "signout")
        self.assertEqual(response.code, 303)
        [cookie] = response.headers.getRawHeaders("set-cookie")
        self.assertIn("max-age=0", cookie.lower())
        self.assertEqual(self.cookies, {})
        self.loginForm()
        self.cookies = old
        self.loginForm()

    def test_approveNeedsSession(self) -> None:
        """
        A consent form posted without the sign-in (or after it ended) is
        refused.
        """
        self.signIn()
        forms = self.consentForms()
        self.cookies.clear()
        response, body = self.submit(forms.forms["consent"], "approve")
        self.assertEqual(response.code, 400)
        self.assertIn("not signed in", Forms(body).allText)

    def test_consentTokenBoundToAccount(self) -> None:
        """
        A consent form shown to alice cannot be posted with bob's session.
        """
        self.signIn()
        alicesForm = self.consentForms().forms["consent"]
        self.cookies.clear()
        self.signIn("bob", "bob's password!")
        response, body = self.submit(alicesForm, "approve")
        self.assertEqual(response.code, 400)
        self.assertIn("csrf bound to another request", Forms(body).allText)

    def test_forgedCookie(self) -> None:
        self.signIn()
        name = next(iter(self.cookies))
        self.cookies[name] = self.cookies[name][:-3] + "abc"
        self.loginForm()

    def test_passwordChangeEndsSessions(self) -> None:
        self.signIn()
        users.setPassword(self.usersFile, "alice", "a brand new password", 0)
        self.loginForm()

    def test_removedAccountEndsSessions(self) -> None:
        self.signIn()
        users.removeUser(self.usersFile, "alice")
        self.loginForm()

    def test_httpDevelopmentCookie(self) -> None:
        """
        Served over plain http (development), the cookie has no
        C{__Host-} prefix and no C{Secure} (browsers would drop it).
        """
        self.configure(self.config.replace(serverURL="http://127.0.0.1:3000", issuer="http://127.0.0.1:3000"))
        response, _ = self.signIn(resource="http://127.0.0.1:3000/mcp")
        [cookie] = response.headers.getRawHeaders("set-cookie")
        self.assertTrue(cookie.startswith("mcpsvc-login="))
        self.assertNotIn("secure", cookie.lower())
        self.assertIn("httponly", cookie.lower())


class ThrottleTests(LoginTestCase):
    """
    Failed sign-ins are counted per (account, address), per address and,
    softly, per account; the right password from an address that has not
    failed is never refused.
    """

    def setUp(self) -> None:
        super().setUp()
        self.address = "192.0.2.1"
        self.patch(approver, "requestAddress", lambda request: self.address)
        # the authorization endpoint's own limit is not under test here
        self.configure(self.config.replace(rateLimitAuthorize=RateLimit(count=10000, seconds=900)))

    def signInFrom(self, address: str, name: str = "alice", password: str = PASSWORD) -> Any:
        self.address = address
        self.cookies.clear()
        return self.signIn(name, password)

    def test_perAccountAndAddress(self) -> None:
        """
        After LOGIN_LIMIT_PAIR failures of one account from one address,
        that address waits (even with the right password), with
        Retry-After; the same account from another address is not
        affected.
        """
        count, seconds = LOGIN_LIMIT_PAIR
        for _ in range(count):
            self.assertEqual(self.signInFrom("192.0.2.66", password="wrong password")[0].code, 200)
        response, body = self.signInFrom("192.0.2.66")
        self.assertEqual(response.code, 429)
        retry = int(self.header(response, "retry-after"))
        self.assertEqual(retry, int(seconds / count))
        self.assertIn("Too many sign-in attempts", Forms(body).allText)
        self.assertIsNone(response.headers.getRawHeaders("set-cookie"))
        # The real user, elsewhere, signs in; so does another account.
        self.assertEqual(self.signInFrom("198.51.100.7")[0].code, 303)
        self.assertEqual(self.signInFrom("192.0.2.66", "bob", "bob's password!")[0].code, 303)
        self.clock.advance(retry)
        self.assertEqual(self.signInFrom("192.0.2.66")[0].code, 303)

    def test_fiveWrongPasswordsFromAnywhereLockNobodyOut(self) -> None:
        """
        The attack of issue 12: five (or fifty) wrong passwords from
        elsewhere do not lock the real user out.
        """
        for i in range(15):
            self.signInFrom(f"203.0.113.{i}", password="wrong password")
        self.assertEqual(self.signInFrom("198.51.100.7")[0].code, 303)

    def test_perAddress(self) -> None:
        """
        Failures from one address across many account names are limited;
        other addresses are not affected.
        """
        count, _ = LOGIN_LIMIT_ADDRESS
        for i in range(count):
            self.assertEqual(self.signInFrom("192.0.2.66", f"user{i}", "wrong")[0].code, 200)
        response, _ = self.signInFrom("192.0.2.66")
        self.assertEqual(response.code, 429)
        self.assertIsNotNone(self.header(response, "retry-after"))
        self.assertEqual(self.signInFrom("198.51.100.7")[0].code, 303)

    def test_successesDoNotCount(self) -> None:
        """
        Only failures count: many people signing in from one address (an
        office behind NAT) are never throttled.
        """
        count, _ = LOGIN_LIMIT_ADDRESS
        for _ in range(count + 5):
            self.assertEqual(self.signInFrom("192.0.2.10")[0].code, 303)
        pairCount, _ = LOGIN_LIMIT_PAIR
        for _ in range(pairCount - 1):
            self.assertEqual(self.signInFrom("192.0.2.10", password="typo")[0].code, 200)
        self.assertEqual(self.signInFrom("192.0.2.10")[0].code, 303)
        self.assertEqual(self.signInFrom("192.0.2.10", password="typo")[0].code, 200)
        self.assertEqual(self.signInFrom("192.0.2.10")[0].code, 429)

    def test_distributedGuessing(self) -> None:
        """
        Once the account has had LOGIN_LIMIT_ACCOUNT failures from
        anywhere, every address gets one attempt per
        LOGIN_LIMIT_UNDER_ATTACK for it: a guesser with many addresses is
        slowed down, the right password from an address that has not
        failed still works at once, and one that failed waits.
        """
        count, _ = LOGIN_LIMIT_ACCOUNT
        for i in range(count):
            self.assertEqual(self.signInFrom(f"203.0.113.{i}", password="guess")[0].code, 200)
        # under attack: an attacker address that failed before gets one more
        # attempt, then waits, although its own pair allowance is not spent
        self.assertEqual(self.signInFrom("203.0.113.0", password="guess")[0].code, 200)
        response, _ = self.signInFrom("203.0.113.0", password="guess")
        self.assertEqual(response.code, 429)
        _, seconds = LOGIN_LIMIT_UNDER_ATTACK
        self.assertEqual(int(self.header(response, "retry-after")), int(seconds))
        # ... even with the right password: it is the guesser's address
        self.assertEqual(self.signInFrom("203.0.113.0")[0].code, 429)
        # new attacker addresses get one guess each
        self.assertEqual(self.signInFrom("203.0.113.200", password="guess")[0].code, 200)
        self.assertEqual(self.signInFrom("203.0.113.200", password="guess")[0].code, 429)
        # the real user, from an address that has not failed: at once
        self.assertEqual(self.signInFrom("198.51.100.7")[0].code, 303)
        self.assertEqual(self.signInFrom("198.51.100.7")[0].code, 303)
        # a real user who mistypes once during the attack waits, then is in
        self.assertEqual(self.signInFrom("198.51.100.8", password="typo")[0].code, 200)
        self.assertEqual(self.signInFrom("198.51.100.8")[0].code, 429)
        self.clock.advance(seconds)
        self.assertEqual(self.signInFrom("198.51.100.8")[0].code, 303)

    def test_parallelGuessesCounted(self) -> None:
        """
        An attempt is counted before its password is checked, so guesses
        sent in parallel cannot all pass the throttle.
        """
        from twisted.web.test.requesthelper import DummyRequest

        count, _ = LOGIN_LIMIT_PAIR
        attempts = [
            self.successResultOf(Deferred.fromCoroutine(
                self.approver._throttle(DummyRequest([b""]), "alice")))
            for _ in range(count + 3)
        ]
        self.assertEqual([a.refusedBecause for a in attempts],
                         [None] * count + ["account and address"] * 3)


class RememberLoginTests(LoginTestCase):
    def test_remembered(self) -> None:
        """
        With REMEMBER_APPROVALS=on, a signed-in account with a live grant
        for the client is approved without the page; a different account
        is asked.
        """
        self.configure(self.config.replace(rememberApprovals=True))
        self.signIn()
        forms = self.consentForms()
        query = self.redirectQuery(self.submit(forms.forms["consent"], "approve")[0])
        self.exchange(self.client, query["code"])
        response, _ = self.browse("GET", "/oauth/authorize", params=self.authorizeParams(self.client))
        query = self.redirectQuery(response)
        _, body = self.exchange(self.client, query["code"])
        self.assertEqual(self.oauth.tokens.verify(body["access_token"], now=self.clock.seconds()).subject, "alice")
        self.cookies.clear()
        self.signIn("bob", "bob's password!")
        self.consentForms()
        # Not signed in at all: the sign-in form, not an approval.
        self.cookies.clear()
        self.loginForm()


class PasswordHashingTests(LoginTestCase):
    """
    Password checks at sign-in: off the reactor thread, a bounded number at
    once, and upgrading old hashes.
    """

    def test_signInUpgradesOldHash(self) -> None:
        """
        Signing in to an account hashed with weaker parameters works and
        rewrites its entry with the current ones; the sign-in stays valid.
        """
        weak = {"n": 2**8, "r": 8, "p": 1}
        accounts = users.loadUsers(self.usersFile)
        accounts["alice"] = users.hashPassword(PASSWORD, 0, params=weak)
        users.saveUsers(self.usersFile, accounts)
        response, _ = self.signIn()
        self.assertEqual(response.code, 303)
        self.assertEqual(users.loadUsers(self.usersFile)["alice"]["scrypt"], FAST)
        # The cookie carries the fingerprint from before the rehash: still good.
        self.consentForms()

    def test_checksRunInThreadsBounded(self) -> None:
        """
        Each password check goes through C{runInThread}, and at most
        L{PASSWORD_CHECKS_AT_ONCE} run at once; the others wait their turn.
        """
        from twisted.internet.defer import Deferred, maybeDeferred
        from treq.testing import StubTreq

        from mcpsvc.authpage.approver import PASSWORD_CHECKS_AT_ONCE

        self.assertEqual(PASSWORD_CHECKS_AT_ONCE, 2)
        started = []

        def runInThread(f: Any, *a: Any, **kw: Any) -> Any:
            if f is users.verifyLogin:
                d: Deferred[Any] = Deferred()
                started.append((d, a))
                return d
            return maybeDeferred(f, *a, **kw)

        self.approver.runInThread = runInThread
        forms = [self.loginForm() for _ in range(3)]
        stub = StubTreq(self.oauth.resource())
        answers = [
            stub.post(self.url("/oauth/authorize"), allow_redirects=False,
                      headers={"Accept": "text/html", "Sec-Fetch-Site": "same-origin"},
                      data=dict(fields, decision="login", username="alice", password=PASSWORD))
            for fields in forms
        ]
        self.assertEqual(len(started), 2)
        for answer in answers:
            self.assertNoResult(answer)
        started[0][0].callback(users.verifyLogin(*started[0][1]))
        self.assertEqual(len(started), 3)
        for d, a in started[1:]:
            d.callback(users.verifyLogin(*a))
        stub.flush()
        self.assertEqual([self.successResultOf(a).code for a in answers], [303, 303, 303])
