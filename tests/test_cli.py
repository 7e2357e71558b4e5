"""
End-to-end tests of the C{mcpsvc} admin command on a real SQLite store.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from twisted.trial.unittest import SynchronousTestCase

MCPSVC = os.path.join(os.path.dirname(sys.executable), "mcpsvc")


class ClientsCommandTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.dir = os.path.abspath(self.mktemp())
        os.makedirs(self.dir)
        self.env = {
            "PATH": os.environ.get("PATH", ""),
            "JWT_SECRET": "c" * 32,
            "DCR_AUTH_TOKEN": "d" * 32,
            "STORE_PATH": os.path.join(self.dir, "store.sqlite3"),
            "VAR_DIR": os.path.join(self.dir, "var"),
        }

    def mcpsvc(self, *args: str, input: "str | None" = None) -> subprocess.CompletedProcess:
        return subprocess.run(
            [MCPSVC, *args], cwd=self.dir, env=self.env, capture_output=True, text=True,
            timeout=60, input=input,
        )

    def test_importGuideShapeHashesSecrets(self) -> None:
        """
        C{clients import} takes the guide's C{registered_clients.json},
        stores only hashes of its secrets, and C{clients export} never
        prints a plaintext secret.
        """
        guide = {
            "abc-123": {
                "clientSecret": "plaintext-secret-value-0123456789",
                "clientName": "ServiceNow dev12345",
                "redirectUris": ["https://dev12345.service-now.com/oauth_redirect.do"],
                "grantTypes": ["authorization_code", "refresh_token"],
            }
        }
        path = os.path.join(self.dir, "registered_clients.json")
        with open(path, "w") as f:
            json.dump(guide, f)
        result = self.mcpsvc("clients", "import", path)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn("Imported 1 client(s)", result.stdout)

        listed = self.mcpsvc("clients", "list", "--json")
        self.assertEqual(listed.returncode, 0, listed.stderr)
        (client,) = json.loads(listed.stdout)
        self.assertEqual(client["client_id"], "abc-123")
        self.assertEqual(client["client_name"], "ServiceNow dev12345")
        self.assertTrue(client["confidential"])

        exported = self.mcpsvc("clients", "export")
        self.assertEqual(exported.returncode, 0, exported.stderr)
        self.assertNotIn("plaintext-secret-value", exported.stdout)
        data = json.loads(exported.stdout)
        self.assertTrue(data["clients"][0]["secretHash"].startswith("sha256:"))
        with open(os.path.join(self.dir, "store.sqlite3"), "rb") as f:
            self.assertNotIn(b"plaintext-secret-value", f.read())

        # Our own export round-trips into a fresh store.
        exportPath = os.path.join(self.dir, "export.json")
        with open(exportPath, "w") as f:
            f.write(exported.stdout)
        self.env["STORE_PATH"] = os.path.join(self.dir, "other.sqlite3")
        self.assertEqual(self.mcpsvc("clients", "import", exportPath).returncode, 0)
        shown = self.mcpsvc("clients", "show", "abc-123")
        self.assertEqual(json.loads(shown.stdout)["metadata"]["redirect_uris"],
                         ["https://dev12345.service-now.com/oauth_redirect.do"])

    def test_removeAndUnknown(self) -> None:
        """
        C{clients remove} removes; an unknown id is an error (status 1).
        """
        path = os.path.join(self.dir, "c.json")
        with open(path, "w") as f:
            json.dump({"x1": {"clientName": "X", "redirectUris": ["http://127.0.0.1/cb"]}}, f)
        self.assertEqual(self.mcpsvc("clients", "import", path).returncode, 0)
        removed = self.mcpsvc("clients", "remove", "x1")
        self.assertEqual(removed.returncode, 0, removed.stderr)
        self.assertIn("its access tokens are refused from now on", removed.stdout)
        # Its access tokens are deny-listed for an access token's lifetime.
        import sqlite3
        import time

        with sqlite3.connect(self.env["STORE_PATH"]) as db:
            [(expiresAt,)] = db.execute(
                "SELECT expiresAt FROM revocations WHERE jti = 'client:x1'").fetchall()
        self.assertTrue(time.time() + 3000 < expiresAt <= time.time() + 3600, expiresAt)
        result = self.mcpsvc("clients", "show", "x1")
        self.assertEqual(result.returncode, 1)
        self.assertIn("No such client: x1", result.stderr)

    def test_invalidConfiguration(self) -> None:
        """
        An invalid configuration is reported and nothing is opened.
        """
        self.env["STORE"] = "nope"
        result = self.mcpsvc("clients", "list")
        self.assertEqual(result.returncode, 1)
        self.assertIn("STORE must be one of", result.stderr)


class OAuthCommandTests(ClientsCommandTests):
    """
    C{clients add|rotate-secret}, C{tokens revoke} and C{keys rotate}.
    """

    def test_addAndRotateSecret(self) -> None:
        """
        C{clients add} prints the secret once and stores only its hash;
        C{rotate-secret} replaces it.
        """
        result = self.mcpsvc(
            "clients", "add", "--name", "Manual SN", "--redirect-uri",
            "https://dev12345.service-now.com/oauth_redirect.do", "--auth-method", "client_secret_post",
        )
        self.assertEqual(result.returncode, 0, result.stderr)
        lines = dict(line.split(":", 1) for line in result.stdout.splitlines() if line.startswith("client_"))
        clientID, secret = lines["client_id"].strip(), lines["client_secret"].strip()
        self.assertGreaterEqual(len(secret), 40)
        with open(os.path.join(self.dir, "store.sqlite3"), "rb") as f:
            self.assertNotIn(secret.encode(), f.read())
        shown = json.loads(self.mcpsvc("clients", "show", clientID).stdout)
        self.assertEqual(shown["metadata"]["token_endpoint_auth_method"], "client_secret_post")
        rotated = self.mcpsvc("clients", "rotate-secret", clientID)
        self.assertEqual(rotated.returncode, 0, rotated.stderr)
        self.assertNotIn(secret, rotated.stdout)
        self.assertIn("client_secret:", rotated.stdout)

    def test_listEscapesStoredControlCharacters(self) -> None:
        """
        C{clients list} prints one line per client with unprintable
        characters escaped, even for a record stored before registration
        refused them (a terminal escape, a newline forging a line).
        """
        import sqlite3

        result = self.mcpsvc(
            "clients", "add", "--name", "Plain", "--redirect-uri",
            "https://dev12345.service-now.com/oauth_redirect.do",
        )
        self.assertEqual(result.returncode, 0, result.stderr)
        db = sqlite3.connect(os.path.join(self.dir, "store.sqlite3"))
        (metadata,) = db.execute("SELECT metadata FROM clients").fetchone()
        metadata = json.loads(metadata)
        metadata["client_name"] = "Evil\x1b[2J\nforged\tclient"
        db.execute("UPDATE clients SET metadata = ?", (json.dumps(metadata),))
        db.commit()
        db.close()
        listed = self.mcpsvc("clients", "list")
        self.assertEqual(listed.returncode, 0, listed.stderr)
        self.assertNotIn("\x1b", listed.stdout)
        lines = listed.stdout.splitlines()
        self.assertEqual(len(lines), 2, lines)
        self.assertTrue(lines[0].endswith("Evil\\x1b[2J\\nforged\\tclient"), lines[0])

    def test_addPrivateKeyJWT(self) -> None:
        """
        C{clients add --auth-method private_key_jwt} takes the client's
        public keys from C{--jwks FILE} (a set, or one JWK) or a
        C{--jwks-uri}; no secret is printed; a private key, both options,
        or keys for another method are refused.
        """
        from mcpsvc.testing.clientkeys import ClientKey

        key = ClientKey("ES256", kid="k1")
        path = os.path.join(self.dir, "jwks.json")
        with open(path, "w") as f:
            json.dump(key.publicJWK(), f)
        redirect = ["--redirect-uri", "https://dev12345.service-now.com/oauth_redirect.do"]
        result = self.mcpsvc("clients", "add", "--name", "Agent", *redirect,
                             "--auth-method", "private_key_jwt", "--jwks", path)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertNotIn("client_secret", result.stdout)
        self.assertIn("1 public key(s), kid k1", result.stdout)
        clientID = result.stdout.split("client_id:", 1)[1].split()[0]
        shown = json.loads(self.mcpsvc("clients", "show", clientID).stdout)
        self.assertEqual(shown["metadata"]["jwks"], {"keys": [key.publicJWK()]})
        self.assertIs(shown["confidential"], True)
        result = self.mcpsvc("clients", "add", "--name", "Agent2", *redirect,
                             "--auth-method", "private_key_jwt",
                             "--jwks-uri", "https://agent.example.com/jwks.json")
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn("jwks_uri:      https://agent.example.com/jwks.json", result.stdout)
        with open(path, "w") as f:
            json.dump({"keys": [key.privateJWK()]}, f)
        result = self.mcpsvc("clients", "add", "--name", "Bad", *redirect,
                             "--auth-method", "private_key_jwt", "--jwks", path)
        self.assertEqual(result.returncode, 1)
        self.assertIn("private members", result.stderr)
        result = self.mcpsvc("clients", "add", "--name", "Bad", *redirect, "--jwks", path)
        self.assertNotEqual(result.returncode, 0)
        self.assertIn("go with --auth-method private_key_jwt", result.stderr + result.stdout)
        result = self.mcpsvc("clients", "add", "--name", "Bad", *redirect,
                             "--auth-method", "private_key_jwt")
        self.assertEqual(result.returncode, 1)
        self.assertIn("requires jwks or jwks_uri", result.stderr)

    def test_addRefusesBadRedirect(self) -> None:
        """
        An http redirect URI that is not loopback is refused.
        """
        result = self.mcpsvc("clients", "add", "--name", "X", "--redirect-uri", "http://evil.example/cb")
        self.assertEqual(result.returncode, 1)
        self.assertIn("Cannot add client", result.stderr)

    def test_revokeUnknownToken(self) -> None:
        """
        Revoking something that is not our token changes nothing (status 1).
        """
        result = self.mcpsvc("tokens", "revoke", "-", input="not-a-token\n")
        self.assertEqual(result.returncode, 1)
        self.assertIn("nothing to do", result.stdout)

    def test_keysRotate(self) -> None:
        """
        C{keys rotate} writes a new 0600 key into JWT_KEYS_DIR, which then
        signs (its JWKS is published).
        """
        keys = os.path.join(self.dir, "keys")
        os.makedirs(keys)
        self.env["JWT_KEYS_DIR"] = keys
        result = self.mcpsvc("keys", "rotate")
        self.assertEqual(result.returncode, 0, result.stderr)
        (name,) = os.listdir(keys)
        self.assertEqual(os.stat(os.path.join(keys, name)).st_mode & 0o777, 0o600)
        self.assertIn("JWT_KEY_PUBLISH_DELAY=600", result.stdout)
        # The first key signs at once (nothing older to sign meanwhile).
        listing = self.mcpsvc("keys", "list")
        self.assertEqual(listing.returncode, 0, listing.stderr)
        self.assertTrue(listing.stdout.startswith("signing "), listing.stdout)
        # As if it had been made a minute ago (two rotations in one second
        # are refused: the time in the name orders the keys).
        os.rename(os.path.join(keys, name), os.path.join(keys, "20000101T000000Z" + name[16:]))
        self.assertEqual(self.mcpsvc("keys", "rotate", "--algorithm", "RS256").returncode, 0)
        self.assertEqual(len(os.listdir(keys)), 2)
        # The second is published and waits; the first keeps signing.
        lines = self.mcpsvc("keys", "list").stdout.splitlines()
        self.assertEqual([line.split()[0] for line in lines], ["signing", "waiting"], lines)
        self.assertIn("RS256", lines[1])
        self.assertIn("signs from", lines[1])
