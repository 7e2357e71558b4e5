"""
Tests for L{mcpsvc.oauth.assertion}: the C{private_key_jwt} checks, each
refusal reason, with real keys.
"""

from __future__ import annotations

import base64
import json
from typing import Any, List

import jwt
from twisted.trial.unittest import SynchronousTestCase

from mcpsvc.oauth.assertion import (
    ALGORITHMS,
    JWT_BEARER,
    AssertionPolicy,
    InvalidAssertion,
    InvalidJWKS,
    VerifiedAssertion,
    parseAssertion,
    parseJWKS,
    publicJWKS,
    selectKey,
    verifyAssertion,
)
from mcpsvc.testing.clientkeys import ClientKey

NOW = 1_750_000_000.0
ISSUER = "https://as.example.com"
TOKEN_URL = ISSUER + "/oauth/token"
AUDIENCES = [ISSUER, TOKEN_URL]
CLIENT = "client-1"


def _b64(data: Any) -> str:
    raw = json.dumps(data).encode() if not isinstance(data, bytes) else data
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


class _Base(SynchronousTestCase):
    def setUp(self) -> None:
        self.key = ClientKey("ES256", kid="k1")
        self.keys = parseJWKS(self.key.jwks())

    def check(self, token: str, keys: Any = None, clientID: str = CLIENT,
              policy: AssertionPolicy = AssertionPolicy(), now: float = NOW) -> VerifiedAssertion:
        unverified = parseAssertion(JWT_BEARER, token, policy)
        key = selectKey(self.keys if keys is None else keys, unverified.kid, unverified.alg)
        return verifyAssertion(unverified, key, clientID=clientID, audiences=AUDIENCES,
                               now=now, policy=policy)

    def refused(self, token: str, fragment: str, **kw: Any) -> InvalidAssertion:
        e = self.assertRaises(InvalidAssertion, self.check, token, **kw)
        self.assertIn(fragment, e.reason)
        return e


class AcceptTests(_Base):
    def test_everyAlgorithm(self) -> None:
        """
        RS256, PS256, ES256 and EdDSA assertions verify with the client's
        public key; the result carries the jti and exp.
        """
        self.assertEqual(set(ALGORITHMS), {"RS256", "PS256", "ES256", "EdDSA"})
        for alg in ALGORITHMS:
            key = ClientKey(alg, kid="k-" + alg)
            token = key.assertion(CLIENT, aud=ISSUER, now=NOW, jti="j-" + alg)
            result = self.check(token, keys=parseJWKS(key.jwks()))
            self.assertEqual((result.clientID, result.jti, result.expiresAt, result.alg),
                             (CLIENT, "j-" + alg, NOW + 60, alg))

    def test_audienceEndpointOrList(self) -> None:
        """
        C{aud} may be the issuer, the endpoint's URL, or a list of those.
        """
        for aud in (ISSUER, TOKEN_URL, [ISSUER, TOKEN_URL], [TOKEN_URL], ISSUER + "/"):
            self.check(self.key.assertion(CLIENT, aud=aud, now=NOW))

    def test_noKidOneKey(self) -> None:
        """
        Without a C{kid}, the only key fit for the algorithm is used.
        """
        key = ClientKey("ES256", kid=None)
        other = ClientKey("RS256", kid="r")
        keys = parseJWKS({"keys": [key.publicJWK(), other.publicJWK()]})
        self.check(key.assertion(CLIENT, aud=ISSUER, now=NOW), keys=keys)

    def test_leeway(self) -> None:
        """
        Clock skew within the leeway is tolerated on exp, nbf and iat.
        """
        self.check(self.key.assertion(CLIENT, aud=ISSUER, now=NOW - 80))  # exp NOW-20
        self.check(self.key.assertion(CLIENT, aud=ISSUER, now=NOW + 20))  # iat in 20s
        self.check(self.key.assertion(CLIENT, aud=ISSUER, now=NOW, nbf=int(NOW + 20)))

    def test_policyLifetime(self) -> None:
        """
        The maximum lifetime is the policy's.
        """
        token = self.key.assertion(CLIENT, aud=ISSUER, now=NOW, lifetime=1000)
        self.refused(token, "exp too far ahead")
        self.check(token, policy=AssertionPolicy(maxLifetime=1200))


class ShapeRefusalTests(_Base):
    def test_type(self) -> None:
        """
        Any client_assertion_type but jwt-bearer is refused.
        """
        token = self.key.assertion(CLIENT, aud=ISSUER, now=NOW)
        for kind in (None, "", "urn:ietf:params:oauth:client-assertion-type:saml2-bearer"):
            e = self.assertRaises(InvalidAssertion, parseAssertion, kind, token)
            self.assertIn("jwt-bearer", e.reason)
            self.assertIn(JWT_BEARER, e.description)

    def test_missingOrMalformed(self) -> None:
        """
        A missing, oversized, non-JWS or undecodable assertion is refused.
        """
        for value, reason in (
            (None, "no client_assertion"),
            ("", "no client_assertion"),
            ("a" * 9000, "too long"),
            ("abc", "not a compact JWS"),
            ("a.b.c", "not a JWT"),
            (_b64({"alg": "ES256"}) + "." + _b64(b"[1]") + ".x", "not a JWT"),
        ):
            e = self.assertRaises(InvalidAssertion, parseAssertion, JWT_BEARER, value)
            self.assertIn(reason, e.reason)

    def test_algorithmNone(self) -> None:
        """
        An unsigned assertion (alg none) is refused.
        """
        token = _b64({"alg": "none", "kid": "k1"}) + "." + _b64(
            {"iss": CLIENT, "sub": CLIENT, "aud": ISSUER, "exp": NOW + 60, "jti": "x"}) + "."
        self.refused(token, "algorithm 'none' not allowed")

    def test_algorithmHMAC(self) -> None:
        """
        An HS256 assertion is refused, whatever it was keyed with (the
        client's public key as an HMAC secret included).
        """
        claims = {"iss": CLIENT, "sub": CLIENT, "aud": ISSUER, "exp": NOW + 60, "jti": "x"}
        token = jwt.encode(claims, "k" * 32, algorithm="HS256", headers={"kid": "k1"})
        self.refused(token, "algorithm 'HS256' not allowed")

    def test_algorithmNotAllowed(self) -> None:
        """
        Asymmetric algorithms outside the allow-list (RS384, ES384) are
        refused too.
        """
        key = ClientKey("RS256")
        token = key.assertion(CLIENT, aud=ISSUER, now=NOW, alg="RS384")
        self.refused(token, "algorithm 'RS384' not allowed")

    def test_crit(self) -> None:
        """
        An assertion with a C{crit} header is refused.
        """
        token = self.key.rawAssertion(
            {"alg": "ES256", "kid": "k1", "crit": ["exp"], "exp": 1},
            {"iss": CLIENT, "sub": CLIENT, "aud": ISSUER, "exp": NOW + 60, "jti": "x"},
        )
        self.assertRaises(InvalidAssertion, self.check, token)

    def test_issuerSubject(self) -> None:
        """
        C{iss} and C{sub} must both be present and equal.
        """
        self.refused(self.key.assertion(CLIENT, aud=ISSUER, now=NOW, drop=("iss",)), "iss or sub missing")
        self.refused(self.key.assertion(CLIENT, aud=ISSUER, now=NOW, drop=("sub",)), "iss or sub missing")
        self.refused(self.key.assertion(CLIENT, aud=ISSUER, now=NOW, sub="other"), "iss differs from sub")
        numeric = {"iss": 7, "sub": 7, "aud": ISSUER, "exp": NOW + 60, "jti": "x"}
        self.refused(self.key.rawAssertion({"alg": "ES256", "kid": "k1"}, numeric), "iss or sub missing")

    def test_otherClient(self) -> None:
        """
        An assertion naming another client than the registered one is
        refused.
        """
        self.refused(self.key.assertion("client-2", aud=ISSUER, now=NOW), "iss is not the client id")

    def test_badKid(self) -> None:
        """
        A C{kid} that is not a short string is refused.
        """
        claims = {"iss": CLIENT, "sub": CLIENT, "aud": ISSUER, "exp": NOW + 60, "jti": "x"}
        self.assertRaises(InvalidAssertion, self.check,
                          self.key.rawAssertion({"alg": "ES256", "kid": 5}, claims))
        self.refused(self.key.rawAssertion({"alg": "ES256", "kid": "k" * 300}, claims), "bad kid")


class KeyRefusalTests(_Base):
    def test_unknownKid(self) -> None:
        """
        A C{kid} the client did not register is refused.
        """
        other = ClientKey("ES256", kid="k2")
        self.refused(other.assertion(CLIENT, aud=ISSUER, now=NOW), "unknown kid 'k2'")

    def test_kidOfWrongType(self) -> None:
        """
        The key named by C{kid} must fit the algorithm (an RSA key is not
        used for ES256).
        """
        rsaKey = ClientKey("RS256", kid="k1")
        token = self.key.assertion(CLIENT, aud=ISSUER, now=NOW)
        self.refused(token, "does not fit ES256", keys=parseJWKS(rsaKey.jwks()))

    def test_keyAlgPinned(self) -> None:
        """
        A key registered with C{alg} RS256 is not used for PS256.
        """
        key = ClientKey("RS256", kid="r")
        keys = parseJWKS({"keys": [key.publicJWK(alg="RS256")]})
        token = key.assertion(CLIENT, aud=ISSUER, now=NOW, alg="PS256")
        self.refused(token, "does not fit PS256", keys=keys)

    def test_noKidSeveralKeys(self) -> None:
        """
        Without a C{kid}, two fitting keys are ambiguous: refused, and the
        client is told to name its key.
        """
        a, b = ClientKey("ES256", kid=None), ClientKey("ES256", kid="b")
        keys = parseJWKS({"keys": [a.publicJWK(), b.publicJWK()]})
        e = self.refused(a.assertion(CLIENT, aud=ISSUER, now=NOW), "no kid and 2 keys", keys=keys)
        self.assertIn("kid", e.description)
        self.refused(ClientKey("RS256", kid=None).assertion(CLIENT, aud=ISSUER, now=NOW),
                     "no kid and 0 keys", keys=keys)

    def test_badSignature(self) -> None:
        """
        An assertion signed by another key under the registered C{kid} is
        refused.
        """
        impostor = ClientKey("ES256", kid="k1")
        self.refused(impostor.assertion(CLIENT, aud=ISSUER, now=NOW), "bad signature")

    def test_tampered(self) -> None:
        """
        Changing a claim after signing breaks the signature.
        """
        token = self.key.assertion(CLIENT, aud=ISSUER, now=NOW)
        header, _, signature = token.split(".")
        forged = ".".join([header, _b64({"iss": CLIENT, "sub": CLIENT, "aud": ISSUER,
                                         "exp": NOW + 60, "jti": "other"}), signature])
        self.refused(forged, "bad signature")


class ClaimRefusalTests(_Base):
    def test_audience(self) -> None:
        """
        C{aud} must be present and name only this server: another
        audience, alone or in a list with ours, is refused.
        """
        self.refused(self.key.assertion(CLIENT, aud=ISSUER, now=NOW, drop=("aud",)), "no aud")
        self.refused(self.key.assertion(CLIENT, aud=[], now=NOW), "no aud")
        self.refused(self.key.assertion(CLIENT, aud=[1], now=NOW), "no aud")
        for aud in ("https://other.example.com", ISSUER + "/oauth/revoke", [ISSUER, "https://other"],
                    ISSUER + "//", ISSUER + "///", ISSUER + "/oauth/token//"):
            e = self.refused(self.key.assertion(CLIENT, aud=aud, now=NOW), "aud is not this server")
            self.assertIn("issuer", e.description)

    def test_hugeNumbers(self) -> None:
        """
        Time claims that are integers too large for a float (which JSON
        allows) are refused like any other bad value, not an exception.
        """
        huge = 10 ** 400
        self.refused(self.key.assertion(CLIENT, aud=ISSUER, now=NOW, exp=huge), "no exp")
        self.refused(self.key.assertion(CLIENT, aud=ISSUER, now=NOW, exp=-huge), "no exp")
        self.refused(self.key.assertion(CLIENT, aud=ISSUER, now=NOW, nbf=huge), "nbf")
        self.refused(self.key.assertion(CLIENT, aud=ISSUER, now=NOW, iat=huge), "iat")

    def test_expiry(self) -> None:
        """
        C{exp} is required, numeric, not past (beyond the leeway) and not
        more than the maximum lifetime ahead.
        """
        self.refused(self.key.assertion(CLIENT, aud=ISSUER, now=NOW, drop=("exp",)), "no exp")
        self.refused(self.key.assertion(CLIENT, aud=ISSUER, now=NOW, exp="soon"), "no exp")
        self.refused(self.key.assertion(CLIENT, aud=ISSUER, now=NOW, exp=True), "no exp")
        self.refused(self.key.assertion(CLIENT, aud=ISSUER, now=NOW - 100), "expired")
        self.refused(self.key.assertion(CLIENT, aud=ISSUER, now=NOW, lifetime=400), "exp too far ahead")
        self.check(self.key.assertion(CLIENT, aud=ISSUER, now=NOW, lifetime=320))

    def test_notBefore(self) -> None:
        """
        An C{nbf} in the future (beyond the leeway), or not a number, is
        refused.
        """
        self.refused(self.key.assertion(CLIENT, aud=ISSUER, now=NOW, nbf=int(NOW + 40)), "not yet valid")
        self.refused(self.key.assertion(CLIENT, aud=ISSUER, now=NOW, nbf="x"), "nbf not a number")

    def test_issuedAt(self) -> None:
        """
        An C{iat} in the future (beyond the leeway), or not a number, is
        refused.
        """
        self.refused(self.key.assertion(CLIENT, aud=ISSUER, now=NOW, iat=int(NOW + 40)), "iat")
        self.refused(self.key.assertion(CLIENT, aud=ISSUER, now=NOW, iat="x"), "iat not a number")

    def test_jti(self) -> None:
        """
        C{jti} is required: a non-empty string of at most 256 characters.
        """
        claims = {"iss": CLIENT, "sub": CLIENT, "aud": ISSUER, "exp": int(NOW + 60)}
        for jti in (None, "", 7, "j" * 257):
            body = dict(claims) if jti is None else dict(claims, jti=jti)
            token = jwt.encode(body, self.key.private, algorithm="ES256", headers={"kid": "k1"})
            self.refused(token, "no jti")
        self.check(self.key.assertion(CLIENT, aud=ISSUER, now=NOW, jti="j" * 256))


class JWKSTests(SynchronousTestCase):
    def assertJWKSRefused(self, document: Any, fragment: str) -> None:
        e = self.assertRaises(InvalidJWKS, parseJWKS, document)
        self.assertIn(fragment, str(e))

    def test_publicKeysAccepted(self) -> None:
        """
        Public RSA, EC and OKP keys make a set; L{publicJWKS} returns it as
        given.
        """
        document = {"keys": [ClientKey(alg, kid=alg).publicJWK() for alg in ALGORITHMS]}
        self.assertEqual(len(parseJWKS(document)), 4)
        self.assertEqual(publicJWKS(document), document)

    def test_privateKeyRefused(self) -> None:
        """
        A key with private members is refused, naming them.
        """
        for alg in ALGORITHMS:
            self.assertJWKSRefused({"keys": [ClientKey(alg).privateJWK()]}, "private members")

    def test_symmetricRefused(self) -> None:
        """
        A symmetric (oct) key is refused.
        """
        self.assertJWKSRefused({"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}, "kty 'oct'")

    def test_smallRSARefused(self) -> None:
        """
        RSA keys under 2048 bits are refused.
        """
        self.assertJWKSRefused({"keys": [ClientKey("RS256", bits=1024).publicJWK()]}, "2048")

    def test_shapes(self) -> None:
        """
        Not an object, no keys, too many keys, duplicate kids, a key that
        is not an object, for encryption, for HS256, or unparsable: refused.
        """
        key = ClientKey("ES256", kid="a")
        cases: List[Any] = [
            ([], "JSON object"),
            ({}, '"keys"'),
            ({"keys": []}, '"keys"'),
            ({"keys": [key.publicJWK()] * 21}, "at most 20"),
            ({"keys": [key.publicJWK(), key.publicJWK()]}, "same kid"),
            ({"keys": ["x"]}, "not a JSON object"),
            ({"keys": [key.publicJWK(use="enc")]}, "use must be sig"),
            ({"keys": [key.publicJWK(alg="HS256")]}, "alg 'HS256'"),
            ({"keys": [key.publicJWK(kid=7)]}, "kid"),
            ({"keys": [dict(key.publicJWK(), x="!!")]}, "not a usable public key"),
            ({"keys": [{"kty": "EC", "crv": "P-999", "x": "a", "y": "b"}]}, "not a usable"),
        ]
        for document, fragment in cases:
            self.assertJWKSRefused(document, fragment)
