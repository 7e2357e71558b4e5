"""
Nobody but the holder can end a grant: forged refresh tokens, codes
presented by the wrong party, bounded grace replays, honest audit fields.
"""

from __future__ import annotations

import base64
import os
from typing import Any, Dict, List

from twisted.logger import globalLogPublisher

from mcpsvc.audit import AUDIT_NAMESPACE
from mcpsvc.oauth.refresh import newRefreshToken
from mcpsvc.oauth.test.helpers import SNOW, VERIFIER, GatedStore, OAuthTestCase, makeConfig


def _random() -> str:
    return base64.urlsafe_b64encode(os.urandom(48)).rstrip(b"=").decode("ascii")


class AuditCapture:
    """
    Collects the audit events emitted during a test.
    """

    def __init__(self, testCase: OAuthTestCase) -> None:
        self.events: List[Dict[str, Any]] = []
        globalLogPublisher.addObserver(self)
        testCase.addCleanup(globalLogPublisher.removeObserver, self)

    def __call__(self, event: Dict[str, Any]) -> None:
        if event.get("log_namespace") == AUDIT_NAMESPACE:
            self.events.append(event)

    def of(self, action: str) -> List[Dict[str, Any]]:
        return [e for e in self.events if e.get("action") == action]


class GrantTestCase(OAuthTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.audits = AuditCapture(self)

    def fid(self, accessToken: str) -> str:
        claims = self.oauth.tokens.verify(accessToken, now=self.clock.seconds())
        assert claims.familyID is not None
        return claims.familyID

    def isRevoked(self, accessToken: str) -> bool:
        from mcpsvc.oauth.bearer import revocationIDs

        claims = self.oauth.tokens.verify(accessToken, now=self.clock.seconds())
        return bool(self.successResultOf(
            self.store.isAnyRevoked(revocationIDs(claims), self.clock.seconds())
        ))

    def assertGrantAlive(self, client: Dict[str, Any], tokens: Dict[str, Any]) -> Dict[str, Any]:
        """
        The grant still works: its access token is not revoked and its
        refresh token rotates. Returns the rotated tokens.
        """
        self.assertFalse(self.isRevoked(tokens["access_token"]))
        response, body = self.refresh(client, tokens["refresh_token"])
        self.assertEqual(response.code, 200, body)
        return body  # type: ignore[no-any-return]


class ForgedRefreshTokenTests(GrantTestCase):
    """
    A refresh token the server never issued is invalid_grant and revokes
    nothing, also for a public client, whose id anyone can read from the
    access token.
    """

    def setUp(self) -> None:
        super().setUp()
        self.client = self.registerPublic()
        self.tokens = self.obtainTokens(self.client)

    def test_fidPlusRandomBytes(self) -> None:
        fid = self.fid(self.tokens["access_token"])
        for forged in (fid + "." + _random(), newRefreshToken(fid), fid + "." + "A" * 64):
            response, body = self.refresh(self.client, forged)
            self.assertOAuthError(response, body, 400, "invalid_grant")
        self.assertGrantAlive(self.client, self.tokens)
        unknown = self.audits.of("token.refresh_unknown")
        self.assertEqual(len(unknown), 3)
        self.assertEqual({e["revoked"] for e in unknown}, {False})
        self.assertEqual(self.audits.of("token.reuse_detected"), [])

    def test_forgedAfterRotation(self) -> None:
        """
        Also while a superseded token is in its grace window and after it.
        """
        rotated = self.assertGrantAlive(self.client, self.tokens)
        fid = self.fid(self.tokens["access_token"])
        response, body = self.refresh(self.client, fid + "." + _random())
        self.assertOAuthError(response, body, 400, "invalid_grant")
        self.clock.advance(self.config.refreshGraceSeconds + 1)
        response, body = self.refresh(self.client, fid + "." + _random())
        self.assertOAuthError(response, body, 400, "invalid_grant")
        self.assertGrantAlive(self.client, rotated)

    def test_anotherFamilysTokenRenamed(self) -> None:
        """
        A real token of another grant, put under this family's id, does not
        carry this family's tag.
        """
        other = self.obtainTokens(self.client)
        fid = self.fid(self.tokens["access_token"])
        secret = other["refresh_token"].split(".", 1)[1]
        response, body = self.refresh(self.client, fid + "." + secret)
        self.assertOAuthError(response, body, 400, "invalid_grant")
        self.assertGrantAlive(self.client, self.tokens)
        self.assertGrantAlive(self.client, other)

    def test_revokeAndIntrospectForged(self) -> None:
        """
        Revocation and introspection of a forged token do nothing.
        """
        fid = self.fid(self.tokens["access_token"])
        response, _ = self.request(
            "POST", "/oauth/revoke", data={"token": fid + "." + _random(),
                                           "client_id": self.client["client_id"]})
        self.assertEqual(response.code, 200)
        response, body = self.request(
            "POST", "/oauth/introspect", data={"token": fid + "." + _random(),
                                               "client_id": self.client["client_id"]})
        self.assertEqual(body, {"active": False})
        self.assertGrantAlive(self.client, self.tokens)

    def test_realOlderTokenIsReuse(self) -> None:
        """
        A token this family really issued, two rotations ago (the store
        keeps only the current and previous hashes), is still recognised
        as reuse and revokes the grant.
        """
        first = self.assertGrantAlive(self.client, self.tokens)
        second = self.assertGrantAlive(self.client, first)
        response, body = self.refresh(self.client, self.tokens["refresh_token"])
        self.assertOAuthError(response, body, 400, "invalid_grant")
        self.assertTrue(self.isRevoked(second["access_token"]))
        response, body = self.refresh(self.client, second["refresh_token"])
        self.assertOAuthError(response, body, 400, "invalid_grant")
        [event] = self.audits.of("token.reuse_detected")
        self.assertEqual((event["revoked"], event["reason"]), (True, "older"))


class GraceReplayTests(GrantTestCase):
    """
    The grace window answers C{REFRESH_GRACE_REPLAYS} replays, each with
    the same successor; one more revokes the grant.
    """

    def setUp(self) -> None:
        super().setUp()
        self.client = self.registerConfidential()
        self.tokens = self.obtainTokens(self.client)

    def test_boundedReplays(self) -> None:
        self.assertEqual(self.config.refreshGraceReplays, 3)
        response, first = self.refresh(self.client, self.tokens["refresh_token"])
        self.assertEqual(response.code, 200)
        for _ in range(3):
            response, again = self.refresh(self.client, self.tokens["refresh_token"])
            self.assertEqual(response.code, 200, again)
            self.assertEqual(again["refresh_token"], first["refresh_token"])
        response, body = self.refresh(self.client, self.tokens["refresh_token"])
        self.assertOAuthError(response, body, 400, "invalid_grant")
        self.assertTrue(self.isRevoked(first["access_token"]))
        response, body = self.refresh(self.client, first["refresh_token"])
        self.assertOAuthError(response, body, 400, "invalid_grant")
        [event] = self.audits.of("token.reuse_detected")
        self.assertEqual((event["revoked"], event["reason"]), (True, "replays"))
        self.assertEqual(
            [e["rotation"] for e in self.audits.of("token.refresh") if e["outcome"] == "success"],
            ["rotated", "grace", "grace", "grace"],
        )

    def test_lateReplay(self) -> None:
        self.refresh(self.client, self.tokens["refresh_token"])
        self.clock.advance(self.config.refreshGraceSeconds)
        response, body = self.refresh(self.client, self.tokens["refresh_token"])
        self.assertOAuthError(response, body, 400, "invalid_grant")
        [event] = self.audits.of("token.reuse_detected")
        self.assertEqual(event["reason"], "late")

    def test_configured(self) -> None:
        """
        C{REFRESH_GRACE_REPLAYS=0}: no replay at all.
        """
        self.configure(makeConfig(refreshGraceReplays=0))
        response, _ = self.refresh(self.client, self.tokens["refresh_token"])
        self.assertEqual(response.code, 200)
        response, body = self.refresh(self.client, self.tokens["refresh_token"])
        self.assertOAuthError(response, body, 400, "invalid_grant")

    def test_replaysCountPerRotation(self) -> None:
        """
        Each rotation has its own bound: a client retrying now and then
        over months never runs out.
        """
        tokens = self.tokens
        for _ in range(5):
            response, rotated = self.refresh(self.client, tokens["refresh_token"])
            self.assertEqual(response.code, 200)
            for _ in range(3):
                response, again = self.refresh(self.client, tokens["refresh_token"])
                self.assertEqual(response.code, 200)
            tokens = rotated
            self.clock.advance(3600)
        self.assertGrantAlive(self.client, tokens)


class CodeNotConsumedTests(GrantTestCase):
    """
    A code presented by another client, with a wrong verifier or a wrong
    redirect URI is refused without being used up; only a replay by its
    own client, with its verifier, revokes what it produced.
    """

    def setUp(self) -> None:
        super().setUp()
        self.client = self.registerConfidential()
        self.code = self.getCode(self.client)

    def assertRedeemable(self) -> Dict[str, Any]:
        response, body = self.exchange(self.client, self.code)
        self.assertEqual(response.code, 200, body)
        return body  # type: ignore[no-any-return]

    def test_otherClient(self) -> None:
        other = self.registerConfidential()
        response, body = self.exchange(other, self.code)
        self.assertOAuthError(response, body, 400, "invalid_grant")
        self.assertRedeemable()
        [event] = self.audits.of("token.code_refused")
        self.assertEqual(event["mismatch"], "client_id")

    def test_otherPublicClientWithTheRightVerifier(self) -> None:
        other = self.registerPublic()
        response, body = self.exchange(other, self.code, redirect_uri=None)
        self.assertOAuthError(response, body, 400, "invalid_grant")
        self.assertRedeemable()

    def test_wrongVerifier(self) -> None:
        for verifier in ("w" * 43, "short", "\u00e9" * 50):
            response, body = self.exchange(self.client, self.code, code_verifier=verifier)
            self.assertOAuthError(response, body, 400, "invalid_grant")
        self.assertRedeemable()

    def test_wrongRedirect(self) -> None:
        response, body = self.exchange(self.client, self.code, redirect_uri=SNOW + "/x")
        self.assertOAuthError(response, body, 400, "invalid_grant")
        self.assertRedeemable()

    def test_usedCodeByOtherClientRevokesNothing(self) -> None:
        tokens = self.assertRedeemable()
        other = self.registerConfidential()
        response, body = self.exchange(other, self.code)
        self.assertOAuthError(response, body, 400, "invalid_grant")
        self.assertGrantAlive(self.client, tokens)
        self.assertEqual(self.audits.of("token.code_replay"), [])

    def test_usedCodeWithWrongVerifierRevokesNothing(self) -> None:
        tokens = self.assertRedeemable()
        response, body = self.exchange(self.client, self.code, code_verifier="w" * 43)
        self.assertOAuthError(response, body, 400, "invalid_grant")
        self.assertGrantAlive(self.client, tokens)
        self.assertEqual(self.audits.of("token.code_replay"), [])

    def test_replayByItsClientRevokes(self) -> None:
        """
        The real replay revokes, and the audit trail says so; a second
        replay says nothing more was revoked.
        """
        tokens = self.assertRedeemable()
        response, body = self.exchange(self.client, self.code)
        self.assertOAuthError(response, body, 400, "invalid_grant")
        self.assertTrue(self.isRevoked(tokens["access_token"]))
        response, body = self.exchange(self.client, self.code)
        self.assertOAuthError(response, body, 400, "invalid_grant")
        first, second = self.audits.of("token.code_replay")
        self.assertEqual((first["revoked"], first["grant"]), (True, "revoked"))
        self.assertEqual((second["revoked"], second["grant"]), (False, "none"))

    def test_replayRacingFirstUseAudit(self) -> None:
        """
        A replay that beats the first use to recording its grant blocks it
        and says so (not "revoked": there was nothing to revoke yet).
        """
        gate = GatedStore(self.store, "createFamily")
        self.store = gate  # type: ignore[assignment]
        self.configure(self.config)
        gate.gated = True
        first = self.stub.request(
            "POST", self.url("/oauth/token"), allow_redirects=False,
            **self.clientAuth(self.client, {
                "grant_type": "authorization_code", "code": self.code,
                "code_verifier": VERIFIER}))
        self.assertNoResult(first)
        gate.gated = False
        response, body = self.exchange(self.client, self.code)
        self.assertOAuthError(response, body, 400, "invalid_grant")
        gate.release()
        self.stub.flush()
        self.assertEqual(self.successResultOf(first).code, 400)
        [event] = self.audits.of("token.code_replay")
        self.assertEqual((event["revoked"], event["grant"]), (False, "preempted"))


class AuthorizeLockoutTests(GrantTestCase):
    """
    Requests that name a client but issue no code (anyone can send them:
    the client id is in every authorization URL) do not use up the
    client's authorization limit.
    """

    def test_bystanderCannotExhaustClient(self) -> None:
        from mcpsvc.config import RateLimit
        from mcpsvc.oauth import app as appModule

        self.configure(makeConfig(rateLimitAuthorize=RateLimit(count=3, seconds=900)))
        client = self.registerConfidential()
        address = ["192.0.2.1"]
        self.patch(appModule, "requestAddress", lambda request: address[0])
        for i in range(10):
            address[0] = f"203.0.113.{i}"
            for _ in range(3):
                response, _ = self.authorize(client, code_challenge_method="plain")
                self.assertEqual(response.code, 302)  # an error redirect, no code
        address[0] = "198.51.100.7"
        response, query = self.authorize(client)
        self.assertEqual(response.code, 302)
        self.assertIn("code", query)

    def test_bystanderCannotExhaustPublicClientsTokenLimit(self) -> None:
        """
        Refused token requests in a public client's name (anyone can make
        them: the client id is in its access tokens) do not use up its
        per-client token limit, so its real refreshes keep working.
        """
        from mcpsvc.config import RateLimit
        from mcpsvc.oauth import app as appModule

        self.configure(makeConfig(rateLimitToken=RateLimit(count=5, seconds=900)))
        client = self.registerPublic()
        tokens = self.obtainTokens(client)
        address = ["192.0.2.1"]
        self.patch(appModule, "requestAddress", lambda request: address[0])
        for i in range(6):
            address[0] = f"203.0.113.{i}"
            for _ in range(4):
                response, body = self.refresh(client, self.fid(tokens["access_token"]) + "." + _random())
                self.assertOAuthError(response, body, 400, "invalid_grant")
        address[0] = "198.51.100.7"
        for _ in range(3):
            response, tokens = self.refresh(client, tokens["refresh_token"])
            self.assertEqual(response.code, 200, tokens)
