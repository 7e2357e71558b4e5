"""
Tests for L{mcpsvc.oauth.admin}.
"""

from __future__ import annotations

import os
import stat
from typing import Any

from twisted.internet.defer import Deferred
from twisted.python.filepath import FilePath

from mcpsvc.oauth import buildAccessTokens
from mcpsvc.oauth.admin import AdminError, addClient, describeClient, revokeToken, rotateKeys, rotateSecret
from mcpsvc.oauth.test.helpers import EPOCH, OAuthTestCase, makeConfig
from mcpsvc.oauth.tokens import InvalidToken, loadKeyRing
from mcpsvc.storage.hashing import hashSecret
from mcpsvc.storage.interfaces import NoSuchClient


class AdminTests(OAuthTestCase):
    def run_(self, coroutine: Any) -> Any:
        return self.successResultOf(Deferred.fromCoroutine(coroutine))

    def test_addClientThenUseIt(self) -> None:
        """
        A client added by hand (any https redirect, no allow-list) gets a
        secret shown once and stored hashed, and can complete the flow.
        """
        record, secret = self.run_(addClient(
            self.store, EPOCH, "Acme", ["https://acme.example.com/oauth_redirect.do"],
            ["authorization_code", "refresh_token"], "client_secret_post", "mcp:tools,mcp:read",
        ))
        assert secret is not None
        self.assertEqual(record.secretHash, hashSecret(secret))
        self.assertEqual(record.metadata["scope"], "mcp:tools mcp:read")
        client = dict(describeClient(record), client_secret=secret)
        self.assertNotIn("client_secret", describeClient(record))
        tokens = self.obtainTokens(client)
        self.assertIn("refresh_token", tokens)

    def test_addClientInvalid(self) -> None:
        """
        Invalid metadata (http non-loopback redirect) is an L{AdminError}.
        """
        failure = self.failureResultOf(Deferred.fromCoroutine(addClient(
            self.store, EPOCH, "Bad", ["http://acme.example.com/cb"])), AdminError)
        self.assertIn("invalid_redirect_uri", str(failure.value))

    def test_publicClient(self) -> None:
        """
        A public client gets no secret, and cannot rotate one.
        """
        record, secret = self.run_(addClient(self.store, EPOCH, "CLI", ["http://127.0.0.1/cb"],
                                             authMethod="none"))
        self.assertIsNone(secret)
        self.failureResultOf(Deferred.fromCoroutine(rotateSecret(self.store, record.clientID)), AdminError)

    def test_rotateSecret(self) -> None:
        """
        After rotation the old secret fails and the new one works.
        """
        record, old = self.run_(addClient(self.store, EPOCH, "SN", ["https://x.service-now.com/oauth_redirect.do"]))
        client = dict(describeClient(record), client_secret=old)
        code = self.getCode(client)
        _, new = self.run_(rotateSecret(self.store, record.clientID))
        response, body = self.exchange(client, code)
        self.assertOAuthError(response, body, 401, "invalid_client")
        response, body = self.exchange(dict(client, client_secret=new), code)
        self.assertEqual(response.code, 200, body)
        self.failureResultOf(Deferred.fromCoroutine(rotateSecret(self.store, "nobody")), NoSuchClient)

    def test_revokeToken(self) -> None:
        """
        Revoking a refresh token kills its family; an access token is
        deny-listed; garbage does nothing.
        """
        client = self.registerConfidential()
        tokens = self.obtainTokens(client)
        tokenService = self.oauth.tokens
        message = self.run_(revokeToken(self.store, tokenService, self.clock.seconds(), tokens["access_token"]))
        self.assertIn("revoked access token", message)
        self.assertNotIn(tokens["access_token"], message)
        claims = tokenService.verify(tokens["access_token"], now=self.clock.seconds())
        self.assertTrue(self.successResultOf(self.store.isRevoked(claims.jti, self.clock.seconds())))
        message = self.run_(revokeToken(self.store, tokenService, self.clock.seconds(), tokens["refresh_token"]))
        self.assertIn("revoked refresh family", message)
        response, body = self.refresh(client, tokens["refresh_token"])
        self.assertOAuthError(response, body, 400, "invalid_grant")
        message = self.run_(revokeToken(self.store, tokenService, self.clock.seconds(), "garbage"))
        self.assertIn("nothing to do", message)


class RotateKeysTests(OAuthTestCase):
    def test_rotation(self) -> None:
        """
        C{rotateKeys} writes a private (0600) key that signs from the next
        start, while tokens signed by the previous key keep verifying.
        """
        keysDir = FilePath(self.mktemp())
        first = rotateKeys(keysDir.path, "ES256", now=EPOCH)
        self.assertEqual(stat.S_IMODE(os.stat(first.path).st_mode), 0o600)
        config = makeConfig(jwtKeysDir=keysDir.path)
        before = buildAccessTokens(config)
        oldToken = before.issue(now=EPOCH, subject="u", clientID="c", scope="mcp:tools").token

        second = rotateKeys(keysDir.path, "RS256", now=EPOCH + 86400)
        self.assertTrue(second.basename() > first.basename())
        after = buildAccessTokens(config)
        self.assertEqual(after.keys.signing.alg, "RS256")
        self.assertNotEqual(after.keys.signing.kid, before.keys.signing.kid)
        self.assertEqual(after.verify(oldToken, now=EPOCH + 10).subject, "u")
        self.assertEqual(len(after.keys.jwks()["keys"]), 2)  # type: ignore[index]

        # Removing the old key file ends its tokens.
        first.remove()
        self.assertRaises(InvalidToken, buildAccessTokens(config).verify, oldToken, now=EPOCH + 10)

    def test_badAlgorithm(self) -> None:
        """
        Only ES256 and RS256 keys are made.
        """
        self.assertRaises(AdminError, rotateKeys, self.mktemp(), "HS256", now=EPOCH)

    def test_newKeySortsLast(self) -> None:
        """
        A key that would not sort last (a second one in the same second)
        is refused: the names order the keys.
        """
        keysDir = self.mktemp()
        rotateKeys(keysDir, "ES256", now=EPOCH)
        self.assertRaises(AdminError, rotateKeys, keysDir, "ES256", now=EPOCH)
        self.assertEqual(len(os.listdir(keysDir)), 1)
        rotateKeys(keysDir, "ES256", now=EPOCH + 1)

    def test_keyStates(self) -> None:
        """
        C{mcpsvc keys list}'s view: a rotated key waits (published) until
        its delay has passed, the previous one signs meanwhile, then is
        retired (published) and finally removable.
        """
        from mcpsvc.admin import keyStates

        keysDir = self.mktemp()
        rotateKeys(keysDir, "ES256", now=EPOCH - 86400)
        rotateKeys(keysDir, "ES256", now=EPOCH)
        config = makeConfig(jwtKeysDir=keysDir, jwtKeyPublishDelay=600, accessTokenLifetime=3600)

        def states(now: float) -> list:
            return [state for _, state, _ in keyStates(config, now)]

        self.assertEqual(states(EPOCH + 1), ["signing", "waiting"])
        self.assertEqual(states(EPOCH + 600), ["retired", "signing"])
        self.assertEqual(states(EPOCH + 600 + 3600 + 30), ["removable", "signing"])
        self.assertEqual(loadKeyRing("x" * 32).algorithms, ("HS256",))
