"""
Tests for L{mcpsvc.oauth.tokens}.
"""

from __future__ import annotations

import base64
import json
import warnings

import jwt
from twisted.python.filepath import FilePath
from twisted.trial.unittest import SynchronousTestCase

from mcpsvc.oauth.tokens import (
    AccessTokens,
    InvalidToken,
    KeyLoadError,
    KeyRing,
    loadKeyRing,
    loadPrivateKey,
)
from mcpsvc.oauth.test.helpers import EPOCH, SECRET, SERVER, ecPEM, rsaPEM

RESOURCE = SERVER + "/mcp"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def hsTokens(**kw: object) -> AccessTokens:
    return AccessTokens(keys=KeyRing.forSecret(SECRET), issuer=SERVER, audience=RESOURCE, **kw)  # type: ignore[arg-type]


def claims(**changes: object) -> dict:
    base = {
        "iss": SERVER, "sub": "user", "aud": RESOURCE, "exp": int(EPOCH) + 3600,
        "iat": int(EPOCH), "jti": "j1", "client_id": "c1", "scope": "mcp:tools",
    }
    base.update(changes)
    return {k: v for k, v in base.items() if v is not None}


class HS256Tests(SynchronousTestCase):
    def setUp(self) -> None:
        self.tokens = hsTokens()

    def sign(self, payload: dict, key: object = SECRET.encode(), alg: str = "HS256", **headers: object) -> str:
        return jwt.encode(payload, key, algorithm=alg, headers=dict({"typ": "at+jwt"}, **headers))  # type: ignore[arg-type]

    def assertInvalid(self, token: str, reason: str, now: float = EPOCH + 1) -> None:
        e = self.assertRaises(InvalidToken, self.tokens.verify, token, now=now)
        self.assertIn(reason, str(e))

    def test_roundTrip(self) -> None:
        """
        An issued token verifies, with every claim in place.
        """
        issued = self.tokens.issue(now=EPOCH, subject="user", clientID="c1", scope="mcp:tools mcp:read")
        verified = self.tokens.verify(issued.token, now=EPOCH + 10)
        self.assertEqual(
            (verified.subject, verified.clientID, verified.scope, verified.jti, verified.expiresAt),
            ("user", "c1", "mcp:tools mcp:read", issued.jti, EPOCH + 3600),
        )
        raw = jwt.decode(issued.token, options={"verify_signature": False})
        self.assertEqual(
            sorted(raw), ["aud", "client_id", "exp", "iat", "iss", "jti", "nbf", "scope", "sub"]
        )
        self.assertEqual(raw["aud"], RESOURCE)
        self.assertEqual(jwt.get_unverified_header(issued.token)["typ"], "at+jwt")

    def test_algNone(self) -> None:
        """
        An unsigned (C{alg: none}) token is refused.
        """
        header = _b64(json.dumps({"alg": "none", "typ": "at+jwt"}).encode())
        body = _b64(json.dumps(claims()).encode())
        self.assertInvalid(f"{header}.{body}.", "algorithm")

    def test_wrongSecret(self) -> None:
        """
        A token signed with another secret is refused.
        """
        self.assertInvalid(self.sign(claims(), key=b"x" * 40), "signature")

    def test_tamperedPayload(self) -> None:
        """
        Changing the payload breaks the signature.
        """
        token = self.sign(claims())
        header, _, sig = token.split(".")
        body = _b64(json.dumps(claims(scope="mcp:tools mcp:read admin")).encode())
        self.assertInvalid(f"{header}.{body}.{sig}", "signature")

    def test_expired(self) -> None:
        """
        Tokens are refused once C{exp} plus the leeway has passed, and
        accepted within the leeway.
        """
        token = self.tokens.issue(now=EPOCH, subject="u", clientID="c", scope="").token
        self.tokens.verify(token, now=EPOCH + 3600 + 29)
        self.assertInvalid(token, "expired", now=EPOCH + 3600 + 30)

    def test_wrongAudience(self) -> None:
        """
        A token for another resource is refused; a list containing ours is
        accepted.
        """
        self.assertInvalid(self.sign(claims(aud="https://other.example.com/mcp")), "resource")
        self.assertInvalid(self.sign(claims(aud=None)), "audience")
        self.tokens.verify(self.sign(claims(aud=["x", RESOURCE])), now=EPOCH)

    def test_wrongIssuer(self) -> None:
        """
        A token from another issuer is refused.
        """
        self.assertInvalid(self.sign(claims(iss="https://evil.example.com")), "issuer")

    def test_notYetValid(self) -> None:
        """
        C{nbf} and C{iat} in the future (beyond the leeway) are refused.
        """
        self.assertInvalid(self.sign(claims(nbf=int(EPOCH) + 120)), "not valid yet")
        self.assertInvalid(self.sign(claims(iat=int(EPOCH) + 120)), "future")

    def test_missingClaims(self) -> None:
        """
        C{sub}, C{jti}, C{client_id}, C{exp} and C{iat} are required.
        """
        for name in ("sub", "jti", "client_id", "exp", "iat"):
            self.assertRaises(InvalidToken, self.tokens.verify, self.sign(claims(**{name: None})), now=EPOCH)

    def test_wrongType(self) -> None:
        """
        A JWT without C{typ: at+jwt} (an ID token, say) is refused.
        """
        token = jwt.encode(claims(), SECRET.encode(), algorithm="HS256")
        self.assertInvalid(token, "not an access token")

    def test_otherHMACAlgorithm(self) -> None:
        """
        HS512 with the right secret is refused: the algorithm is pinned.
        """
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pyjwt: a 40-byte key is short for HS512
            token = self.sign(claims(), alg="HS512")
        self.assertInvalid(token, "algorithm")

    def test_garbage(self) -> None:
        """
        Malformed tokens are refused without exceptions other than
        L{InvalidToken}.
        """
        for token in ("", "abc", "a.b.c", "a.b", "x" * 9000):
            self.assertRaises(InvalidToken, self.tokens.verify, token, now=EPOCH)

    def test_critHeaderRefused(self) -> None:
        """
        A correctly signed token whose header asks for a JWS extension
        (C{crit}) is refused: none is understood.
        """
        self.assertInvalid(self.sign(claims(), crit=["exp"], exp=1), "extension")

    def test_nonBase64Segments(self) -> None:
        """
        Characters outside base64url in any segment make the token
        malformed, even when the rest would verify (no lenient decoding).
        """
        header, body, sig = self.sign(claims()).split(".")
        for token in (f"{header}!.{body}.{sig}", f"{header}.{body}+.{sig}", f"{header}.{body}.{sig}="):
            self.assertRaises(InvalidToken, self.tokens.verify, token, now=EPOCH + 1)

    def test_nonObjectParts(self) -> None:
        """
        A header or claims set that is JSON but not an object is refused.
        """
        header = _b64(json.dumps(["HS256"]).encode())
        self.assertRaises(InvalidToken, self.tokens.verify, f"{header}.e30.c2ln", now=EPOCH)
        good = _b64(json.dumps({"alg": "HS256", "typ": "at+jwt"}).encode())
        body = _b64(b"[1]")
        import hashlib, hmac
        sig = _b64(hmac.new(SECRET.encode(), f"{good}.{body}".encode(), hashlib.sha256).digest())
        self.assertInvalid(f"{good}.{body}.{sig}", "invalid")

    def test_shortSecretRefused(self) -> None:
        """
        An HS256 secret under 32 bytes is refused.
        """
        self.assertRaises(KeyLoadError, KeyRing.forSecret, "short")


class AsymmetricTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.key = loadPrivateKey(ecPEM())
        self.tokens = AccessTokens(keys=KeyRing.forKeys([self.key]), issuer=SERVER, audience=RESOURCE)

    def test_es256RoundTrip(self) -> None:
        """
        ES256 tokens carry the key's C{kid} and verify.
        """
        issued = self.tokens.issue(now=EPOCH, subject="u", clientID="c", scope="mcp:read")
        header = jwt.get_unverified_header(issued.token)
        self.assertEqual((header["alg"], header["kid"]), ("ES256", self.key.kid))
        self.assertEqual(self.tokens.verify(issued.token, now=EPOCH).subject, "u")

    def test_hs256Refused(self) -> None:
        """
        A token signed with the HS256 secret is refused when an asymmetric
        key is configured, with or without the key's C{kid}.
        """
        for headers in ({"typ": "at+jwt"}, {"typ": "at+jwt", "kid": self.key.kid}):
            token = jwt.encode(claims(), SECRET.encode(), algorithm="HS256", headers=headers)
            self.assertRaises(InvalidToken, self.tokens.verify, token, now=EPOCH)

    def test_algorithmConfusionWithPublicKey(self) -> None:
        """
        An HS256 token whose HMAC key is the public key's PEM (the classic
        confusion attack) is refused.
        """
        from cryptography.hazmat.primitives import serialization

        publicPEM = self.key.publicKey.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        import hmac
        import hashlib

        header = _b64(json.dumps({"alg": "HS256", "typ": "at+jwt", "kid": self.key.kid}).encode())
        body = _b64(json.dumps(claims()).encode())
        sig = _b64(hmac.new(publicPEM, f"{header}.{body}".encode(), hashlib.sha256).digest())
        e = self.assertRaises(InvalidToken, self.tokens.verify, f"{header}.{body}.{sig}", now=EPOCH)
        self.assertIn("algorithm", str(e))

    def test_unknownKid(self) -> None:
        """
        A token signed by a key we do not hold is refused.
        """
        other = AccessTokens(keys=KeyRing.forKeys([loadPrivateKey(ecPEM())]), issuer=SERVER, audience=RESOURCE)
        token = other.issue(now=EPOCH, subject="u", clientID="c", scope="").token
        self.assertRaises(InvalidToken, self.tokens.verify, token, now=EPOCH)

    def test_jwks(self) -> None:
        """
        The JWKS lists every key, public parts only; HS256 has none.
        """
        jwks = self.tokens.keys.jwks()
        assert jwks is not None
        [entry] = jwks["keys"]
        self.assertEqual((entry["kid"], entry["alg"], entry["kty"], entry["use"]),
                         (self.key.kid, "ES256", "EC", "sig"))
        self.assertNotIn("d", entry)
        self.assertIsNone(KeyRing.forSecret(SECRET).jwks())

    def test_rs256(self) -> None:
        """
        RSA keys sign RS256.
        """
        key = loadPrivateKey(rsaPEM())
        tokens = AccessTokens(keys=KeyRing.forKeys([key]), issuer=SERVER, audience=RESOURCE)
        token = tokens.issue(now=EPOCH, subject="u", clientID="c", scope="").token
        self.assertEqual(jwt.get_unverified_header(token)["alg"], "RS256")
        tokens.verify(token, now=EPOCH)

    def test_badKeys(self) -> None:
        """
        Garbage, small RSA keys and other curves are refused.
        """
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ec

        self.assertRaises(KeyLoadError, loadPrivateKey, b"not a key")
        self.assertRaises(KeyLoadError, loadPrivateKey, rsaPEM(1024))
        p384 = ec.generate_private_key(ec.SECP384R1()).private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        self.assertRaises(KeyLoadError, loadPrivateKey, p384)


class KeyRingLoadingTests(SynchronousTestCase):
    def test_default(self) -> None:
        """
        Without key files the ring is HS256 with the secret.
        """
        ring = loadKeyRing(SECRET)
        self.assertEqual((ring.asymmetric, ring.algorithms), (False, ("HS256",)))

    def test_keyFile(self) -> None:
        """
        C{JWT_PRIVATE_KEY_FILE} makes an ES256 ring.
        """
        path = FilePath(self.mktemp())
        path.setContent(ecPEM())
        ring = loadKeyRing(SECRET, path.path)
        self.assertEqual((ring.asymmetric, ring.algorithms), (True, ("ES256",)))

    def test_keysDirRotation(self) -> None:
        """
        In a keys directory the file sorting last signs, and a token signed
        by the older key still verifies; mixed algorithms verify each with
        its own.
        """
        directory = FilePath(self.mktemp())
        directory.makedirs()
        directory.child("20250101T000000Z-old.pem").setContent(ecPEM())
        old = AccessTokens(keys=loadKeyRing(SECRET, None, directory.path), issuer=SERVER, audience=RESOURCE)
        oldToken = old.issue(now=EPOCH, subject="u", clientID="c", scope="").token
        directory.child("20250615T150000Z-new.pem").setContent(rsaPEM())
        ring = loadKeyRing(SECRET, None, directory.path)
        self.assertEqual(ring.signing.alg, "RS256")
        self.assertEqual(ring.signingAt(EPOCH).alg, "RS256")
        self.assertEqual(ring.algorithms, ("ES256", "RS256"))
        new = AccessTokens(keys=ring, issuer=SERVER, audience=RESOURCE)
        self.assertEqual(new.verify(oldToken, now=EPOCH).subject, "u")
        newToken = new.issue(now=EPOCH, subject="v", clientID="c", scope="").token
        self.assertEqual(jwt.get_unverified_header(newToken)["kid"], ring.signing.kid)
        self.assertRaises(InvalidToken, old.verify, newToken, now=EPOCH)

    def test_publishedBeforeSigning(self) -> None:
        """
        A rotated key is published (and verifies) at once but signs only
        C{publishDelay} seconds after the time in its name; the key before
        it signs meanwhile, and stays published until every token it can
        have signed has expired, then is dropped (and refused) without a
        restart.
        """
        from datetime import datetime, timezone

        from mcpsvc.oauth.tokens import LEEWAY, keyFileTime

        def stamp(when: float) -> str:
            return datetime.fromtimestamp(when, tz=timezone.utc).strftime("%Y%m%dT%H%M%SZ")

        directory = FilePath(self.mktemp())
        directory.makedirs()
        directory.child(stamp(EPOCH - 90 * 86400) + "-old.pem").setContent(ecPEM())
        directory.child(stamp(EPOCH) + "-new.pem").setContent(ecPEM())
        self.assertEqual(keyFileTime(stamp(EPOCH) + "-new.pem"), EPOCH)
        ring = loadKeyRing(SECRET, None, directory.path, publishDelay=600)
        oldKey, newKey = ring.ordered
        self.assertEqual(newKey.activatesAt, EPOCH + 600)
        tokens = AccessTokens(keys=ring, issuer=SERVER, audience=RESOURCE, lifetime=3600)

        def kids(now: float) -> list:
            return [k["kid"] for k in tokens.jwks(now)["keys"]]  # type: ignore[index]

        def signer(now: float) -> str:
            token = tokens.issue(now=now, subject="u", clientID="c", scope="").token
            return str(jwt.get_unverified_header(token)["kid"])

        # Published first, the old key still signs.
        self.assertEqual(kids(EPOCH + 1), [oldKey.kid, newKey.kid])
        self.assertEqual(signer(EPOCH + 599), oldKey.kid)
        lastOld = tokens.issue(now=EPOCH + 599, subject="u", clientID="c", scope="").token
        # After the delay, the new key signs; the old one stays published.
        self.assertEqual(signer(EPOCH + 600), newKey.kid)
        self.assertEqual(ring.retiredAt(oldKey), EPOCH + 600)
        retiredUntil = EPOCH + 600 + 3600 + LEEWAY
        self.assertEqual(kids(retiredUntil - 1), [oldKey.kid, newKey.kid])
        self.assertEqual(tokens.verify(lastOld, now=EPOCH + 599 + 3600).subject, "u")
        # Every token the old key signed has expired: it is dropped, and a
        # token it signs now (a leaked key) is refused.
        self.assertEqual(kids(retiredUntil), [newKey.kid])
        forger = AccessTokens(keys=KeyRing.forKeys([oldKey]), issuer=SERVER, audience=RESOURCE)
        forged = forger.issue(now=retiredUntil, subject="u", clientID="c", scope="").token
        e = self.assertRaises(InvalidToken, tokens.verify, forged, now=retiredUntil + 1)
        self.assertEqual(str(e), "token key is unknown")

    def test_firstKeySignsAtOnce(self) -> None:
        """
        With nothing older to sign meanwhile (the first key, just made), a
        key signs at once; a key file without a time in its name, and
        C{JWT_PRIVATE_KEY_FILE}, are not delayed.
        """
        from datetime import datetime, timezone

        directory = FilePath(self.mktemp())
        directory.makedirs()
        name = datetime.fromtimestamp(EPOCH, tz=timezone.utc).strftime("%Y%m%dT%H%M%SZ") + "-k.pem"
        directory.child(name).setContent(ecPEM())
        ring = loadKeyRing(SECRET, None, directory.path, publishDelay=600)
        self.assertEqual(ring.signingAt(EPOCH), ring.ordered[0])
        directory.child("zz-manual.pem").setContent(ecPEM())
        ring = loadKeyRing(SECRET, None, directory.path, publishDelay=600)
        self.assertEqual(ring.signingAt(EPOCH).activatesAt, 0.0)
        self.assertEqual(ring.signingAt(EPOCH), ring.ordered[1])

    def test_badFileNamed(self) -> None:
        """
        A bad key file is reported with its path.
        """
        path = FilePath(self.mktemp())
        path.setContent(b"nope")
        e = self.assertRaises(KeyLoadError, loadKeyRing, SECRET, path.path)
        self.assertIn(path.path, str(e))
