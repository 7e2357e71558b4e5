"""
Client ID Metadata Documents with C{private_key_jwt} against a real
C{twistd -n mcpsvc} process: a client known only by the URL of its
document (served by a loopback test HTTP server, development mode)
declares C{private_key_jwt} with (a) inline C{jwks} and (b) a C{jwks_uri}
on the same server; it authorizes (code + PKCE), authenticates every
token, introspection and revocation request with a fresh client
assertion, calls a tool and refreshes; a replayed assertion is refused; a
document that changes its key (a new C{kid}) applies once its cache
lifetime has passed (0 here: the next request), and the old key is refused
from then on. The admin command shows the client as confidential, with no
secret.
"""

from __future__ import annotations

import json
import os
import subprocess
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from mcpsvc.testing.clientkeys import ClientKey
from tests.flow import REDIRECT, http
from tests.test_cimd_e2e import DocumentClientMixin
from tests import test_privatekeyjwt_e2e as keys
from tests.test_privatekeyjwt_e2e import MCPSVC, KeyFlow


class KeyDocumentEndToEndTests(DocumentClientMixin, SynchronousTestCase):
    completeFlow = keys.PrivateKeyJWTEndToEndTests.completeFlow

    def publish(self, **keys: Any) -> None:
        """
        Publish the client's document, C{private_key_jwt} with C{keys}
        (C{jwks} or C{jwks_uri}); served with C{max-age=0}.
        """
        self.documents.document = {
            "client_id": self.documents.url,
            "client_name": "e2e key document client",
            "redirect_uris": [REDIRECT],
            "grant_types": ["authorization_code", "refresh_token"],
            "response_types": ["code"],
            "token_endpoint_auth_method": "private_key_jwt",
            **keys,
        }

    def scenario(self, rotate: Any) -> None:
        """
        The whole flow with C{self.key}, a replay, then C{rotate(newKey)}
        changes the published key: the old key is refused, the new one
        works (on the same code: a refused authentication consumes
        nothing).
        """
        process = self.start()
        flow = KeyFlow(self.url, self.documents.url, self.key)
        self.completeFlow(flow)

        # The same assertion twice: the second is a replay.
        form = {"grant_type": "authorization_code", "code": flow.authorize(self.url),
                "redirect_uri": REDIRECT, "code_verifier": flow.verifier,
                **flow.assertion(self.url)}
        status, _, body = http(self.url + "/oauth/token", method="POST", form=form)
        self.assertEqual(status, 200, body)
        flow.tokens = body
        status, _, body = http(self.url + "/oauth/token", method="POST",
                               form=dict(form, grant_type="refresh_token",
                                         refresh_token=body["refresh_token"]))
        self.assertEqual((status, body["error"]), (401, "invalid_client"), body)
        self.assertIn("used already", body["error_description"])
        process.waitFor(lambda r: r.get("action") == "client.assertion_replay", 10)

        # The document changes its key; its lifetime is 0: the next
        # token request (a refresh: nothing else resolved the document
        # since) uses the new document.
        newKey = ClientKey("ES256", kid="doc-2")
        rotate(newKey)
        status, _, body = flow.refresh(self.url)
        self.assertEqual((status, body["error"]), (401, "invalid_client"), body)
        flow.key = newKey
        status, _, body = flow.refresh(self.url)
        self.assertEqual(status, 200, body)
        status, _, body = flow.initialize(self.url)
        self.assertEqual(status, 200, body)
        status, _, body = flow.callTool(self.url, "calculate", {"expression": "6*7"})
        self.assertIn("42", json.dumps(body["result"]))
        code = flow.authorize(self.url)
        flow.key = self.key
        status, _, body = flow.exchange(self.url, code)
        self.assertEqual((status, body["error"]), (401, "invalid_client"), body)
        flow.key = newKey
        status, _, body = flow.exchange(self.url, code)
        self.assertEqual(status, 200, body)
        process.waitFor(lambda r: "metadata document" in r.get("text", "")
                        and "changed" in r.get("text", ""), 10)

        # The admin commands: confidential, no secret, a document client,
        # not exported (fetched again on first use).
        def admin(*args: str) -> subprocess.CompletedProcess:
            result = subprocess.run(
                [MCPSVC, "clients", *args], cwd=self.workdir,
                env=dict(os.environ, STORE="sqlite",
                         STORE_PATH=os.path.join(self.workdir, "store.sqlite3"),
                         VAR_DIR=os.path.join(self.workdir, "var")),
                capture_output=True, text=True, timeout=60,
            )
            self.assertEqual(result.returncode, 0, result.stderr)
            return result

        result = admin("show", self.documents.url)
        shown = json.loads(result.stdout)
        self.assertEqual((shown["confidential"], shown["has_secret"], shown["metadata_document"],
                          shown["auth_method"]), (True, False, True, "private_key_jwt"))
        self.assertNotIn("client_secret", result.stdout)
        self.assertIn(f"{self.documents.url}\tconfidential\tprivate_key_jwt\tdocument\t",
                      admin("list").stdout)
        result = admin("export")
        self.assertEqual(json.loads(result.stdout)["clients"], [])
        self.assertIn("1 metadata document client(s) not exported", result.stderr)
        self.assertIn("It is a metadata document client: its next request fetches",
                      admin("remove", self.documents.url).stdout)
        self.assertNotIn("Traceback", process.output)

    def test_inlineJWKS(self) -> None:
        """
        (a) Keys inline in the document.
        """
        self.key = ClientKey("ES256", kid="doc-1")
        self.publish(jwks=self.key.jwks())
        self.scenario(lambda newKey: self.publish(jwks=newKey.jwks()))

    def test_jwksURI(self) -> None:
        """
        (b) Keys at a C{jwks_uri} on the document's server, fetched once
        (then cached); the rotated document names a new key set URL.
        """
        self.key = ClientKey("PS256", kid="doc-1")
        self.documents.others["/keys/jwks.json"] = self.key.jwks()
        self.publish(jwks_uri=self.documents.urlOf("/keys/jwks.json"))

        def rotate(newKey: ClientKey) -> None:
            self.assertEqual(self.documents.hits.count("/keys/jwks.json"), 1)
            self.documents.others["/keys/jwks-2.json"] = newKey.jwks()
            self.publish(jwks_uri=self.documents.urlOf("/keys/jwks-2.json"))

        self.scenario(rotate)
        self.assertEqual(self.documents.hits.count("/keys/jwks-2.json"), 1)
