"""
C{private_key_jwt} end to end: clients registered with C{mcpsvc clients add
--auth-method private_key_jwt} (keys from C{--jwks FILE}, or from
C{--jwks-uri} served by a loopback HTTP server) complete the authorization
code flow with PKCE against a real C{twistd -n mcpsvc} process, call a
tool, refresh, introspect and revoke, each token request authenticated by
a fresh signed assertion; a replayed assertion is refused.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any, Dict, List, Tuple

from twisted.trial.unittest import SynchronousTestCase

from mcpsvc.testing.clientkeys import JWT_BEARER, ClientKey
from mcpsvc.testing.redis import freePort
from tests.flow import REDIRECT, Flow, http
from tests.process import SECRET, McpsvcProcess, startInstances

MCPSVC = os.path.join(os.path.dirname(sys.executable), "mcpsvc")
IAT = "initial-access-token-" + "p" * 24


class JWKSServer:
    """
    A loopback HTTP server publishing one JWK Set at C{/jwks.json},
    counting requests.
    """

    def __init__(self, document: Dict[str, Any]) -> None:
        self.document = document
        self.requests: List[str] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                owner.requests.append(self.path)
                body = json.dumps(owner.document).encode()
                self.send_response(200 if self.path == "/jwks.json" else 404)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = HTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/jwks.json"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class KeyFlow(Flow):
    """
    L{Flow} for a C{private_key_jwt} client: every token, revocation and
    introspection request carries a new assertion signed with C{key}.
    """

    def __init__(self, serverURL: str, clientID: str, key: ClientKey) -> None:
        super().__init__(serverURL, IAT)
        self.key = key
        self.client = {"client_id": clientID}
        self.lastAssertion = ""

    def assertion(self, aud: str) -> Dict[str, str]:
        import time

        # The server's clock is the real one: so is the assertion's.
        self.lastAssertion = self.key.assertion(self.client["client_id"], aud=aud, now=time.time())
        return {"client_assertion_type": JWT_BEARER, "client_assertion": self.lastAssertion}

    def post(self, base: str, path: str, form: Dict[str, str], aud: str = "") -> Tuple[int, Dict[str, str], Any]:
        return self.request(base, path, method="POST",
                            form=dict(form, **self.assertion(aud or self.serverURL)))


class PrivateKeyJWTEndToEndTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.workdir = os.path.abspath(self.mktemp())
        os.makedirs(self.workdir)
        port = freePort()
        self.env = {
            "PATH": os.environ.get("PATH", ""),
            "SERVER_URL": f"http://127.0.0.1:{port}",
            "JWT_SECRET": SECRET,
            "DCR_AUTH_TOKEN": IAT,
            "AUTHORIZE_MODE": "auto",
            "STORE": "sqlite",
            "STORE_PATH": os.path.join(self.workdir, "store.sqlite3"),
            "VAR_DIR": os.path.join(self.workdir, "var"),
        }
        self.process = McpsvcProcess(self.workdir, env=dict(self.env),
                                     listen=[f"tcp:{port}:interface=127.0.0.1"])
        self.addCleanup(self.process.kill)
        self.process.start()
        self.url = self.process.url

    def addClient(self, *args: str) -> str:
        result = subprocess.run(
            [MCPSVC, "clients", "add", "--name", "agent", "--redirect-uri", REDIRECT,
             "--auth-method", "private_key_jwt", *args],
            cwd=self.workdir, env=self.env, capture_output=True, text=True, timeout=60,
        )
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertNotIn("client_secret", result.stdout)
        return result.stdout.split("client_id:", 1)[1].split()[0]

    def completeFlow(self, flow: KeyFlow) -> None:
        """
        Code with PKCE, a tool call, a refresh, an introspection, a
        revocation; then the revoked refresh token is refused.
        """
        status, _, body = flow.exchange(self.url, flow.authorize(self.url))
        self.assertEqual(status, 200, body)
        status, _, body = flow.initialize(self.url)
        self.assertEqual(status, 200, body)
        status, _, body = flow.callTool(self.url, "calculate", {"expression": "6*7"})
        self.assertEqual(status, 200, body)
        self.assertIn("42", json.dumps(body["result"]))
        status, _, body = flow.refresh(self.url)
        self.assertEqual(status, 200, body)
        status, _, body = flow.post(self.url, "/oauth/introspect",
                                    {"token": flow.tokens["access_token"]},
                                    aud=self.url + "/oauth/introspect")
        self.assertEqual((status, body["active"], body["client_id"]),
                         (200, True, flow.client["client_id"]))
        status, _, body = flow.revoke(self.url, flow.tokens["refresh_token"])
        self.assertEqual(status, 200, body)
        status, _, body = flow.refresh(self.url)
        self.assertEqual((status, body["error"]), (400, "invalid_grant"))

    def test_inlineJWKS(self) -> None:
        """
        A client registered with C{--jwks FILE} completes the flow; the
        same assertion presented twice is refused the second time
        (invalid_client, an audit event), a secret is refused, and a fresh
        assertion still works.
        """
        key = ClientKey("ES256", kid="e2e-1")
        path = os.path.join(self.workdir, "agent-jwks.json")
        with open(path, "w") as f:
            json.dump(key.jwks(), f)
        flow = KeyFlow(self.url, self.addClient("--jwks", path), key)
        self.completeFlow(flow)

        code = flow.authorize(self.url)
        form = {"grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT,
                "code_verifier": flow.verifier, **flow.assertion(self.url)}
        status, _, body = http(self.url + "/oauth/token", method="POST", form=form)
        self.assertEqual(status, 200, body)
        status, _, body = http(self.url + "/token", method="POST",
                               form=dict(form, grant_type="refresh_token",
                                         refresh_token=body["refresh_token"]))
        self.assertEqual((status, body["error"]), (401, "invalid_client"))
        self.assertIn("used already", body["error_description"])
        self.process.waitFor(lambda r: r.get("action") == "client.assertion_replay", 10)
        status, _, body = http(self.url + "/oauth/token", method="POST", form={
            "grant_type": "refresh_token", "refresh_token": "x",
            "client_id": flow.client["client_id"], "client_secret": "guess"})
        self.assertEqual((status, body["error"]), (401, "invalid_client"))
        _, _, metadata = http(self.url + "/.well-known/oauth-authorization-server")
        self.assertIn("private_key_jwt", metadata["token_endpoint_auth_methods_supported"])
        self.assertIn("ES256", metadata["token_endpoint_auth_signing_alg_values_supported"])

    def test_jwksURI(self) -> None:
        """
        A client registered with C{--jwks-uri} (a loopback server: allowed
        in development) completes the flow with keys fetched from it,
        fetched once and then cached.
        """
        key = ClientKey("PS256", kid="e2e-2")
        server = JWKSServer(key.jwks())
        self.addCleanup(server.stop)
        flow = KeyFlow(self.url, self.addClient("--jwks-uri", server.url), key)
        self.completeFlow(flow)
        self.assertEqual(server.requests, ["/jwks.json"])


class TwoInstancesTests(SynchronousTestCase):
    def test_replayOnAnotherInstance(self) -> None:
        """
        Two instances on one real Redis: a client registered by dynamic
        registration with C{private_key_jwt} and inline keys gets a token
        on A; the same assertion presented to B is refused as a replay.
        """
        serverURL, processes = startInstances(self, 2, IAT)
        a, b = processes
        key = ClientKey("EdDSA", kid="ed")
        status, _, client = http(a.url + "/oauth/register", method="POST", body={
            "client_name": "agent", "redirect_uris": [REDIRECT],
            "token_endpoint_auth_method": "private_key_jwt", "jwks": key.jwks(),
            "grant_types": ["client_credentials"],
        }, headers={"Authorization": "Bearer " + IAT})
        self.assertEqual(status, 201, client)
        self.assertNotIn("client_secret", client)
        flow = KeyFlow(serverURL, client["client_id"], key)
        form = {"grant_type": "client_credentials", **flow.assertion(serverURL)}
        status, _, body = http(a.url + "/oauth/token", method="POST", form=form)
        self.assertEqual(status, 200, body)
        status, _, body = http(b.url + "/oauth/token", method="POST", form=form)
        self.assertEqual((status, body["error"]), (401, "invalid_client"), body)
        b.waitFor(lambda r: r.get("action") == "client.assertion_replay", 10)
        status, _, body = http(b.url + "/oauth/token", method="POST", form={
            "grant_type": "client_credentials", **flow.assertion(serverURL)})
        self.assertEqual(status, 200, body)
