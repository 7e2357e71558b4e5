"""
End-to-end tests of configuration safety (issue 12, section 5) and of
secrets given as files, against a real C{twistd -n mcpsvc} on loopback.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from typing import Any, Dict, Optional, Tuple

from twisted.trial.unittest import SynchronousTestCase

from mcpsvc.testing.redis import freePort
from tests.process import SECRET, McpsvcProcess

IAT = "i" * 40
ACME = "https://acme.service-now.com/oauth_redirect.do"
DEVELOPER_INSTANCE = "https://dev123456.service-now.com/oauth_redirect.do"


def request(url: str, body: Optional[Dict[str, Any]] = None,
            headers: Optional[Dict[str, str]] = None) -> Tuple[int, bytes]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, headers=dict(headers or {}))
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=15) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


class ConfigurationProcessTests(SynchronousTestCase):
    def workdir(self) -> str:
        path = os.path.abspath(self.mktemp())
        os.makedirs(path)
        return path

    def secretFile(self, directory: str, name: str, value: str) -> str:
        path = os.path.join(directory, name)
        with open(path, "w") as f:
            f.write(value + "\n")
        os.chmod(path, 0o600)
        return path

    def test_unsafeProductionRefused(self) -> None:
        """
        A production server with C{AUTHORIZE_MODE=auto} and open
        registration does not start; the reason is listed with every other
        error (here an unreadable secret file), and nothing listens.
        """
        workdir = self.workdir()
        missing = os.path.join(workdir, "no-such-secret")
        process = McpsvcProcess(workdir, env={
            "ENVIRONMENT": "production", "SERVER_URL": "https://mcp.example.com",
            "JWT_SECRET_FILE": missing, "AUTHORIZE_MODE": "auto", "DCR_OPEN": "true",
        })
        self.addCleanup(process.kill)
        process.start(expectListening=False)
        self.assertNotEqual(process.wait(), 0)
        self.assertIn("AUTHORIZE_MODE=auto with open registration", process.output)
        self.assertIn("anyone could register a client and get tokens", process.output)
        self.assertIn(f"JWT_SECRET_FILE {missing!r} cannot be read", process.output)
        self.assertNotIn("listening on", process.output)
        self.assertNotIn("Traceback", process.output)

    def test_registrationPinnedToTheInstance(self) -> None:
        """
        In production with C{SERVICENOW_INSTANCE}, secrets read from files:
        the instance registers, a developer instance holding the same
        initial access token does not.
        """
        workdir = self.workdir()
        process = McpsvcProcess(workdir, env={
            "ENVIRONMENT": "production", "SERVER_URL": "https://mcp.example.com",
            "JWT_SECRET_FILE": self.secretFile(workdir, "jwt", SECRET),
            "DCR_AUTH_TOKEN_FILE": self.secretFile(workdir, "iat", IAT),
            "SERVICENOW_INSTANCE": "https://acme.service-now.com",
            "STORE": "memory",
        })
        self.addCleanup(process.kill)
        process.start()
        register = process.url + "/oauth/register"
        auth = {"Authorization": f"Bearer {IAT}"}
        status, body = request(register, {"client_name": "attacker", "redirect_uris": [DEVELOPER_INSTANCE]}, auth)
        self.assertEqual(status, 400, body)
        self.assertEqual(json.loads(body)["error"], "invalid_redirect_uri")
        status, body = request(register, {"client_name": "acme", "redirect_uris": [ACME]}, auth)
        self.assertEqual(status, 201, body)
        # The token came from the file: a wrong one is refused.
        status, body = request(register, {"redirect_uris": [ACME]}, {"Authorization": "Bearer " + "x" * 40})
        self.assertEqual(status, 401, body)
        self.assertNotIn("Traceback", process.output)

    def test_readyHidesStoreErrors(self) -> None:
        """
        With Redis unreachable, C{/ready} says the store is unavailable and
        nothing more; the details are in the server's log.
        """
        port = freePort()
        process = McpsvcProcess(self.workdir(), env={
            "JWT_SECRET": SECRET, "STORE": "redis",
            "REDIS_URL": f"redis://127.0.0.1:{port}/0", "STORE_TIMEOUT": "1",
        })
        self.addCleanup(process.kill)
        process.start()
        status, body = request(process.url + "/ready")
        self.assertEqual(status, 503, body)
        self.assertEqual(json.loads(body)["reasons"], {"store": "unavailable"})
        self.assertNotIn(str(port).encode(), body)
        record = process.waitFor(lambda r: "Not ready" in r.get("text", ""), 15)
        self.assertIn("unavailable:", record["text"])

    def test_rotatedKeyPublishedBeforeItSigns(self) -> None:
        """
        After C{mcpsvc keys rotate} and a restart, the new key is in the
        JWKS at once, while tokens are still signed by the previous key
        (and work on C{/mcp}) until C{JWT_KEY_PUBLISH_DELAY} has passed.
        """
        import time

        import jwt

        from mcpsvc.oauth.admin import rotateKeys
        from mcpsvc.oauth.tokens import loadPrivateKey
        from tests.flow import Flow

        workdir = self.workdir()
        keys = os.path.join(workdir, "keys")
        now = time.time()
        old = rotateKeys(keys, "ES256", now=now - 30 * 86400)
        new = rotateKeys(keys, "ES256", now=now)
        oldKid = loadPrivateKey(old.getContent()).kid
        newKid = loadPrivateKey(new.getContent()).kid
        process = McpsvcProcess(workdir, env={
            "JWT_SECRET": SECRET, "JWT_KEYS_DIR": keys, "STORE": "memory",
            "DCR_AUTH_TOKEN": IAT, "AUTHORIZE_MODE": "auto",
        })
        self.addCleanup(process.kill)
        process.start()
        status, body = request(process.url + "/.well-known/jwks.json")
        self.assertEqual(status, 200, body)
        self.assertEqual(sorted(k["kid"] for k in json.loads(body)["keys"]), sorted([oldKid, newKid]))
        flow = Flow("http://127.0.0.1:3000", IAT)  # the default SERVER_URL: the resource
        self.assertEqual(flow.register(process.url)[0], 201)
        status, _, tokens = flow.exchange(process.url, flow.authorize(process.url))
        self.assertEqual(status, 200, tokens)
        self.assertEqual(jwt.get_unverified_header(tokens["access_token"])["kid"], oldKid)
        status, _, answer = flow.initialize(process.url)
        self.assertEqual(status, 200, answer)
