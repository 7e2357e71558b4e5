"""
Nobody but the holder can end a grant (issue 12, section 2), from outside,
against real C{twistd -n mcpsvc} processes over loopback HTTP: a bystander
holding an access token forges a refresh token from its C{fid} claim; a
thief presents a code with another client or without the verifier;
workers race one refresh; guessers try passwords from many addresses.
Each attack fails, and the real holder keeps its grant.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import threading
import urllib.parse
from typing import Any, Dict, List, Tuple

from twisted.trial.unittest import SynchronousTestCase

from mcpsvc.authpage import users
from mcpsvc.authpage.test.helpers import Forms
from mcpsvc.testing.redis import RedisServer, freePort
from tests.flow import REDIRECT, Flow, http
from tests.process import SECRET, McpsvcProcess

IAT = "initial-access-token-" + "g" * 24


def claimsOf(accessToken: str) -> Dict[str, Any]:
    """
    What anyone holding an access token can read from it (no key needed).
    """
    payload = accessToken.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))  # type: ignore[no-any-return]


class GrantsEndToEndMixin:
    store = "sqlite"

    def startServer(self, **extra: str) -> McpsvcProcess:
        workdir = os.path.abspath(self.mktemp())  # type: ignore[attr-defined]
        os.makedirs(workdir)
        port = freePort()
        env = {
            "SERVER_URL": f"http://127.0.0.1:{port}",
            "JWT_SECRET": SECRET,
            "DCR_AUTH_TOKEN": IAT,
            "AUTHORIZE_MODE": "auto",
            "STORE": self.store,
            "STORE_PATH": os.path.join(workdir, "store.sqlite3"),
            **self.storeEnv(),
            **extra,
        }
        process = McpsvcProcess(workdir, env=env, listen=[f"tcp:{port}:interface=127.0.0.1"])
        self.addCleanup(process.kill)  # type: ignore[attr-defined]
        process.start()
        self.url = process.url
        return process

    def storeEnv(self) -> Dict[str, str]:
        return {}

    def flow(self, public: bool = False) -> Flow:
        flow = Flow(self.url, IAT)
        if public:
            status, _, client = flow.request(self.url, "/oauth/register", method="POST", body={
                "client_name": "public", "redirect_uris": [REDIRECT],
                "token_endpoint_auth_method": "none",
                "grant_types": ["authorization_code", "refresh_token"],
            }, headers={"Authorization": "Bearer " + IAT})
            assert status == 201, client
            flow.client = client
        else:
            status, _, client = flow.register(self.url)
            assert status == 201, client
        return flow

    def token(self, form: Dict[str, str], flow: "Flow | None" = None) -> Tuple[int, Any]:
        headers = flow._auth() if flow is not None and "client_secret" in flow.client else {}
        status, _, body = http(self.url + "/oauth/token", method="POST", form=form, headers=headers)
        return status, body

    def publicExchange(self, flow: Flow) -> Dict[str, Any]:
        status, body = self.token({
            "grant_type": "authorization_code", "code": flow.authorize(self.url),
            "redirect_uri": REDIRECT, "code_verifier": flow.verifier,
            "client_id": flow.client["client_id"], "resource": self.url + "/mcp",
        })
        assert status == 200, body
        flow.tokens = body
        return body  # type: ignore[no-any-return]

    def assertWorks(self, flow: Flow) -> None:
        status, _, body = flow.initialize(self.url)
        self.assertEqual(status, 200, body)  # type: ignore[attr-defined]
        status, _, body = flow.mcp(self.url, "tools/list")
        self.assertEqual(status, 200, body)  # type: ignore[attr-defined]

    def assertRefused(self, flow: Flow) -> None:
        status, _, body = flow.initialize(self.url)
        self.assertEqual(status, 401, body)  # type: ignore[attr-defined]

    # ----------------------------------------------------------------- tests

    def test_forgedRefreshTokenRevokesNothing(self) -> None:
        """
        A bystander with a public client's access token reads C{fid} and
        C{client_id} from it and presents C{fid.<random>} as a refresh
        token: invalid_grant, and the holder's grant lives on.
        """
        self.startServer()
        victim = self.flow(public=True)
        tokens = self.publicExchange(victim)
        claims = claimsOf(tokens["access_token"])
        for _ in range(3):
            forged = claims["fid"] + "." + secrets.token_urlsafe(48)
            status, body = self.token({"grant_type": "refresh_token", "refresh_token": forged,
                                       "client_id": claims["client_id"]})
            self.assertEqual((status, body["error"]), (400, "invalid_grant"))
            status, _, _ = http(self.url + "/oauth/revoke", method="POST",
                                form={"token": forged, "client_id": claims["client_id"]})
            self.assertEqual(status, 200)
        self.assertWorks(victim)
        status, body = self.token({"grant_type": "refresh_token",
                                   "refresh_token": tokens["refresh_token"],
                                   "client_id": claims["client_id"]})
        self.assertEqual(status, 200, body)

    def test_racingRefreshesBounded(self) -> None:
        """
        ServiceNow-style: four workers refresh with the same token at once;
        all succeed with the same successor (one rotation, three grace
        replays). A fifth replay is reuse: the grant is revoked.
        """
        self.startServer()
        flow = self.flow()
        flow.exchange(self.url, flow.authorize(self.url))
        old = flow.tokens["refresh_token"]
        results: List[Tuple[int, Any]] = []
        lock = threading.Lock()

        def worker() -> None:
            result = self.token({"grant_type": "refresh_token", "refresh_token": old}, flow)
            with lock:
                results.append(result)

        threads = [threading.Thread(target=worker) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        self.assertEqual([s for s, _ in results], [200] * 4, results)
        self.assertEqual(len({b["refresh_token"] for _, b in results}), 1)
        flow.tokens = results[0][1]
        self.assertWorks(flow)
        status, body = self.token({"grant_type": "refresh_token", "refresh_token": old}, flow)
        self.assertEqual((status, body["error"]), (400, "invalid_grant"))
        self.assertRefused(flow)

    def test_codeRefusedWithoutConsuming(self) -> None:
        """
        A stolen code presented by another client, or by its client with
        a wrong verifier or redirect URI, is refused and stays redeemable;
        a replay of a used code without the verifier revokes nothing; the
        real replay revokes the grant.
        """
        self.startServer()
        victim = self.flow()
        thief = self.flow()
        code = victim.authorize(self.url)
        for form, flow in (
            ({"code_verifier": victim.verifier}, thief),
            ({"code_verifier": secrets.token_urlsafe(48)}, victim),
            ({"code_verifier": victim.verifier, "redirect_uri": REDIRECT + "x"}, victim),
        ):
            status, body = self.token(dict({"grant_type": "authorization_code", "code": code,
                                             "redirect_uri": REDIRECT}, **form), flow)
            self.assertEqual((status, body["error"]), (400, "invalid_grant"), form)
        status, _, body = victim.exchange(self.url, code)
        self.assertEqual(status, 200, body)
        status, body = self.token({"grant_type": "authorization_code", "code": code,
                                   "code_verifier": secrets.token_urlsafe(48)}, victim)
        self.assertEqual(status, 400)
        status, body = self.token({"grant_type": "authorization_code", "code": code,
                                   "code_verifier": victim.verifier}, thief)
        self.assertEqual(status, 400)
        self.assertWorks(victim)
        status, _, body = victim.exchange(self.url, code)
        self.assertEqual(status, 400, body)
        self.assertRefused(victim)


class GrantsEndToEndSQLiteTests(GrantsEndToEndMixin, SynchronousTestCase):
    store = "sqlite"

    def test_loginNotLockedOutFromElsewhere(self) -> None:
        """
        Login mode behind a trusted proxy: fifteen wrong passwords for
        alice from fifteen addresses; alice, from her own address, signs in
        at once; a guessing address that goes on is throttled. (On main
        the account was locked for everyone after five.)
        """
        workdir = os.path.abspath(self.mktemp())
        os.makedirs(workdir)
        usersFile = os.path.join(workdir, "users.json")
        users.addUser(usersFile, "alice", "correct horse battery staple", 0)
        self.startServer(AUTHORIZE_MODE="login", LOGIN_USERS_FILE=usersFile,
                         TRUSTED_PROXIES="127.0.0.1", RATE_LIMIT_AUTHORIZE="1000/900")
        flow = self.flow()
        query = urllib.parse.urlencode({
            "response_type": "code", "client_id": flow.client["client_id"],
            "redirect_uri": REDIRECT, "code_challenge": flow.challenge,
            "code_challenge_method": "S256", "state": "s", "resource": self.url + "/mcp",
        })

        def signIn(address: str, password: str) -> int:
            headers = {"Accept": "text/html", "X-Forwarded-For": address}
            status, _, page = http(self.url + "/oauth/authorize?" + query, headers=headers)
            self.assertEqual(status, 200)
            fields = Forms(page).forms["login"]
            fields.update(username="alice", password=password, decision="login")
            status, _, _ = http(self.url + "/oauth/authorize", method="POST", form=fields,
                                headers=dict(headers, **{"Sec-Fetch-Site": "same-origin"}))
            return status

        for i in range(15):
            self.assertEqual(signIn(f"203.0.113.{i}", "guess"), 200)
        self.assertEqual(signIn("198.51.100.7", "correct horse battery staple"), 303)
        # the account is under attack: a guessing address gets one attempt
        # per 15 minutes
        self.assertEqual(signIn("203.0.113.0", "guess"), 200)
        self.assertEqual(signIn("203.0.113.0", "guess"), 429)
        self.assertEqual(signIn("203.0.113.0", "correct horse battery staple"), 429)
        self.assertEqual(signIn("198.51.100.7", "correct horse battery staple"), 303)


    def test_clientNotLockedOutOfAuthorizing(self) -> None:
        """
        Authorization requests naming a client (its id is in every
        authorization URL) from many addresses, none issuing a code, do not
        use up the client's limit: its users still authorize.
        """
        self.startServer(TRUSTED_PROXIES="127.0.0.1", RATE_LIMIT_AUTHORIZE="3/900")
        flow = self.flow()
        bad = urllib.parse.urlencode({
            "response_type": "code", "client_id": flow.client["client_id"],
            "redirect_uri": REDIRECT, "code_challenge": flow.challenge,
            "code_challenge_method": "plain", "resource": self.url + "/mcp",
        })
        for i in range(5):
            for _ in range(3):
                status, _, _ = http(self.url + "/oauth/authorize?" + bad,
                                    headers={"X-Forwarded-For": f"203.0.113.{i}"})
                self.assertEqual(status, 302)
        self.assertTrue(flow.authorize(self.url))


class GrantsEndToEndRedisTests(GrantsEndToEndMixin, SynchronousTestCase):
    """
    The same attacks with C{STORE=redis}: the checks run in Lua.
    """

    store = "redis"

    def storeEnv(self) -> Dict[str, str]:
        redis = RedisServer(os.path.abspath(self.mktemp())).start()
        self.addCleanup(redis.stop)
        return {"REDIS_URL": redis.url}
