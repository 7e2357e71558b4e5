# -*- test-case-name: mcpsvc.oauth.test.test_assertion -*-
"""
C{private_key_jwt} client authentication (RFC 7523 sections 2.2 and 3, RFC
7521 section 4.2, OAuth 2.1 section 2.4): the decisions, without I/O.

A client proves who it is with a JWT it signed with its private key,
sent as C{client_assertion} with C{client_assertion_type}
L{JWT_BEARER}. We check, in this order:
  - the type and the shape (L{parseAssertion}): a compact JWS of bounded
    size whose header names an allowed algorithm (L{ALGORITHMS}: RS256,
    PS256, ES256, EdDSA; never C{none} nor a symmetric HS*) and no
    C{crit} extension, whose C{iss} and C{sub} are the same string: the
    client id;
  - the key (L{selectKey}): from the client's registered JWK Set, the key
    named by C{kid}, or the only key fit for the algorithm when there is no
    C{kid};
  - the signature and the claims (L{verifyAssertion}): C{aud} is our
    issuer or the URL of the endpoint being called (each value, when a
    list); C{exp} is present, not past, and not more than
    L{AssertionPolicy.maxLifetime} ahead; C{nbf} and C{iat}, when present,
    are not in the future; C{jti} is present. Each with
    L{AssertionPolicy.leeway} for clock skew. Times come from the caller.
Single use (the C{jti} is recorded until the assertion expires) is the
store's part: L{mcpsvc.storage.interfaces.IAssertionStore}.

JWK Sets (inline C{jwks} or fetched from C{jwks_uri}) are checked by
L{parseJWKS}: public keys only (a registration carrying a private part is
refused, not silently stripped), asymmetric key types only, RSA keys of
2048 bits or more.

Every refusal is an L{InvalidAssertion} whose C{reason} is for the log and
the audit trail (never the assertion itself); what the client is told is
C{invalid_client} with a short description.
"""

from __future__ import annotations

import math
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import jwt
from attrs import frozen
from jwt.algorithms import get_default_algorithms

__all__ = [
    "JWT_BEARER",
    "ALGORITHMS",
    "InvalidAssertion",
    "InvalidJWKS",
    "AssertionPolicy",
    "UnverifiedAssertion",
    "VerifiedAssertion",
    "parseAssertion",
    "parseJWKS",
    "publicJWKS",
    "selectKey",
    "verifyAssertion",
]

#: RFC 7523 section 2.2.
JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"

#: Asymmetric algorithms we accept, as far as pyjwt (with cryptography)
#: implements them. Never C{none}, never HS* (a shared secret is not a
#: private key).
ALGORITHMS: Tuple[str, ...] = tuple(
    a for a in ("RS256", "PS256", "ES256", "EdDSA") if a in get_default_algorithms()
)

#: Longest assertion we look at, in characters.
MAX_ASSERTION_LENGTH = 8192
#: Longest C{jti}, C{kid} and client id we accept.
MAX_ID_LENGTH = 256
#: Most keys in one JWK Set.
MAX_KEYS = 20
#: Smallest RSA modulus, in bits.
MIN_RSA_BITS = 2048

#: Which keys fit which algorithm: (kty, curves or None).
_KEY_TYPES: Dict[str, Tuple[str, Optional[Tuple[str, ...]]]] = {
    "RS256": ("RSA", None),
    "PS256": ("RSA", None),
    "ES256": ("EC", ("P-256",)),
    "EdDSA": ("OKP", ("Ed25519", "Ed448")),
}
#: Private members of a JWK (RFC 7517, RFC 7518 section 6, RFC 8037).
_PRIVATE_MEMBERS = ("d", "p", "q", "dp", "dq", "qi", "oth", "k")


class InvalidAssertion(Exception):
    """
    The client assertion is refused.

    @ivar reason: why, for the log and the audit trail (no secret in it).
    @ivar description: what the client is told.
    """

    def __init__(self, reason: str, description: str = "Client authentication failed") -> None:
        super().__init__(reason)
        self.reason = reason
        self.description = description


class InvalidJWKS(ValueError):
    """
    A JWK Set is unusable; the message says why.
    """


@frozen(kw_only=True)
class AssertionPolicy:
    """
    The limits an assertion is checked against.

    @ivar maxLifetime: seconds: an assertion whose C{exp} is further ahead
        is refused (C{CLIENT_ASSERTION_MAX_LIFETIME}).
    @ivar leeway: seconds of clock skew allowed on C{exp}, C{nbf}, C{iat}.
    @ivar algorithms: the accepted C{alg} values.
    """

    maxLifetime: float = 300.0
    leeway: float = 30.0
    algorithms: Tuple[str, ...] = ALGORITHMS


@frozen(kw_only=True)
class UnverifiedAssertion:
    """
    An assertion that has the right shape, not yet verified: enough to
    find the client and its key.

    @ivar clientID: C{iss} (equal to C{sub}).
    @ivar alg: the header's algorithm (one of the policy's).
    @ivar kid: the header's key id, if any.
    @ivar token: the compact JWS.
    @ivar claims: the unverified claims.
    """

    clientID: str
    alg: str
    kid: Optional[str]
    token: str
    claims: Mapping[str, Any]


@frozen(kw_only=True)
class VerifiedAssertion:
    """
    A verified assertion.

    @ivar jti: its id, to be used once.
    @ivar expiresAt: its C{exp}.
    """

    clientID: str
    jti: str
    expiresAt: float
    alg: str
    kid: Optional[str]


def _isNumber(value: Any) -> bool:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return False
    try:
        # JSON integers have no bound: one too large for a float is not a time.
        return math.isfinite(float(value))
    except OverflowError:
        return False


def _boundedString(value: Any, limit: int = MAX_ID_LENGTH) -> bool:
    return isinstance(value, str) and 0 < len(value) <= limit


def parseAssertion(
    assertionType: Optional[str],
    assertion: Optional[str],
    policy: AssertionPolicy = AssertionPolicy(),
) -> UnverifiedAssertion:
    """
    Check the parameters' type and the assertion's shape, and find the
    client it names. Nothing is verified yet.

    @raise InvalidAssertion: with the reason.
    """
    if assertionType != JWT_BEARER:
        raise InvalidAssertion(
            "client_assertion_type is not jwt-bearer",
            f"client_assertion_type must be {JWT_BEARER}",
        )
    if not assertion:
        raise InvalidAssertion("no client_assertion", "client_assertion is required")
    if len(assertion) > MAX_ASSERTION_LENGTH:
        raise InvalidAssertion("client_assertion too long", "client_assertion is too long")
    if assertion.count(".") != 2:
        raise InvalidAssertion("client_assertion is not a compact JWS", "client_assertion is not a JWT")
    try:
        header = jwt.get_unverified_header(assertion)
        claims = jwt.decode(assertion, options={"verify_signature": False})
    except (jwt.PyJWTError, ValueError, TypeError):
        raise InvalidAssertion("client_assertion is not a JWT", "client_assertion is not a JWT") from None
    if not isinstance(claims, dict):  # pragma: no cover - pyjwt returns a dict or raises
        raise InvalidAssertion("claims are not an object", "client_assertion is not a JWT")
    alg = header.get("alg")
    if not isinstance(alg, str) or alg not in policy.algorithms:
        shown = alg[:20] if isinstance(alg, str) else type(alg).__name__
        raise InvalidAssertion(
            f"algorithm {shown!r} not allowed",
            "client_assertion algorithm not allowed; use one of " + ", ".join(policy.algorithms),
        )
    if "crit" in header:
        raise InvalidAssertion("crit header", "client_assertion uses an unsupported crit extension")
    kid = header.get("kid")
    if kid is not None and not _boundedString(kid):
        raise InvalidAssertion("bad kid", "client_assertion kid must be a short string")
    issuer, subject = claims.get("iss"), claims.get("sub")
    if not _boundedString(issuer, 2000) or not _boundedString(subject, 2000):
        raise InvalidAssertion("iss or sub missing", "client_assertion must carry iss and sub")
    if issuer != subject:
        raise InvalidAssertion("iss differs from sub", "client_assertion iss and sub must both be the client id")
    return UnverifiedAssertion(clientID=issuer, alg=alg, kid=kid, token=assertion, claims=claims)


def _checkPublicKey(data: Any, index: int) -> jwt.PyJWK:
    if not isinstance(data, dict):
        raise InvalidJWKS(f"key {index} is not a JSON object")
    kty = data.get("kty")
    if kty not in ("RSA", "EC", "OKP"):
        raise InvalidJWKS(f"key {index}: kty {str(kty)[:20]!r} is not supported (RSA, EC or OKP)")
    private = [name for name in _PRIVATE_MEMBERS if name in data]
    if private:
        raise InvalidJWKS(
            f"key {index} has private members ({', '.join(private)}): register the public key only"
        )
    kid = data.get("kid")
    if kid is not None and not _boundedString(kid):
        raise InvalidJWKS(f"key {index}: kid must be a short string")
    use = data.get("use")
    if use is not None and use != "sig":
        raise InvalidJWKS(f"key {index}: use must be sig")
    alg = data.get("alg")
    if alg is not None and alg not in ALGORITHMS:
        raise InvalidJWKS(f"key {index}: alg {str(alg)[:20]!r} is not one of {', '.join(ALGORITHMS)}")
    try:
        key = jwt.PyJWK(data)
    except (jwt.PyJWTError, ValueError, TypeError, KeyError) as e:
        raise InvalidJWKS(f"key {index} is not a usable public key: {str(e)[:100]}") from None
    if not hasattr(key.key, "verify") or hasattr(key.key, "private_bytes"):
        raise InvalidJWKS(f"key {index} is not a public key")
    if kty == "RSA" and getattr(key.key, "key_size", 0) < MIN_RSA_BITS:
        raise InvalidJWKS(f"key {index}: RSA keys must have at least {MIN_RSA_BITS} bits")
    return key


def parseJWKS(document: Any) -> List[jwt.PyJWK]:
    """
    The keys of a JWK Set (C{{"keys": [...]}}): public, asymmetric, usable.

    @raise InvalidJWKS: the set, or one of its keys, is unusable.
    """
    if not isinstance(document, Mapping):
        raise InvalidJWKS("a JWK Set must be a JSON object")
    keys = document.get("keys")
    if not isinstance(keys, list) or not keys:
        raise InvalidJWKS('a JWK Set must have a non-empty "keys" array')
    if len(keys) > MAX_KEYS:
        raise InvalidJWKS(f"a JWK Set may hold at most {MAX_KEYS} keys")
    parsed = [_checkPublicKey(data, index) for index, data in enumerate(keys)]
    kids = [k.key_id for k in parsed if k.key_id is not None]
    if len(kids) != len(set(kids)):
        raise InvalidJWKS("two keys have the same kid")
    return parsed


def publicJWKS(document: Any) -> Dict[str, Any]:
    """
    Validate a JWK Set for registration and return it as we store it: the
    set's C{keys}, each as given (every member is public once
    L{parseJWKS} has accepted it).

    @raise InvalidJWKS: as L{parseJWKS}.
    """
    parseJWKS(document)
    return {"keys": [dict(k) for k in document["keys"]]}


def _fits(key: jwt.PyJWK, alg: str) -> bool:
    kty, curves = _KEY_TYPES[alg]
    data = key._jwk_data
    if data.get("kty") != kty:
        return False
    if curves is not None and data.get("crv") not in curves:
        return False
    keyAlg = data.get("alg")
    return keyAlg is None or keyAlg == alg


def selectKey(keys: Sequence[jwt.PyJWK], kid: Optional[str], alg: str) -> jwt.PyJWK:
    """
    The key to verify with: the one named C{kid}, or without C{kid}, the
    only key fit for C{alg}.

    @raise InvalidAssertion: no such key, it does not fit C{alg}, or
        (without C{kid}) several keys would fit.
    """
    if kid is not None:
        for key in keys:
            if key.key_id == kid:
                if not _fits(key, alg):
                    raise InvalidAssertion(f"key {kid[:40]!r} does not fit {alg}")
                return key
        raise InvalidAssertion(f"unknown kid {kid[:40]!r}")
    fitting = [key for key in keys if _fits(key, alg)]
    if len(fitting) != 1:
        raise InvalidAssertion(
            f"no kid and {len(fitting)} keys fit {alg}",
            "client_assertion must name its key (kid)" if fitting else "Client authentication failed",
        )
    return fitting[0]


def _audienceMatches(value: str, audiences: Sequence[str]) -> bool:
    # Exactly, or differing by one trailing slash (an issuer is written
    # both ways); never by more, nor by case.
    return any(value == a or value == a + "/" or value + "/" == a for a in audiences)


def verifyAssertion(
    assertion: UnverifiedAssertion,
    key: jwt.PyJWK,
    *,
    clientID: str,
    audiences: Sequence[str],
    now: float,
    policy: AssertionPolicy = AssertionPolicy(),
) -> VerifiedAssertion:
    """
    Verify the signature with C{key} and check the claims.

    @param clientID: the registered client's id (C{iss} and C{sub} must be
        it).
    @param audiences: the values C{aud} may take: our issuer and the URL
        of the endpoint being called.
    @param now: the current time.
    @raise InvalidAssertion: with the reason.
    """
    if assertion.clientID != clientID:
        raise InvalidAssertion("iss is not the client id")
    if assertion.alg not in policy.algorithms or not _fits(key, assertion.alg):
        raise InvalidAssertion(f"key does not fit {assertion.alg}")
    try:
        jwt.decode(
            assertion.token,
            key=key.key,
            algorithms=[assertion.alg],
            options={
                "verify_signature": True,
                "verify_exp": False,
                "verify_nbf": False,
                "verify_iat": False,
                "verify_aud": False,
                "verify_iss": False,
                "verify_sub": False,
                "verify_jti": False,
                "require": [],
            },
        )
    except jwt.InvalidSignatureError:
        raise InvalidAssertion("bad signature") from None
    except (jwt.PyJWTError, ValueError, TypeError) as e:
        raise InvalidAssertion(f"not verifiable: {type(e).__name__}") from None
    claims = assertion.claims
    leeway = policy.leeway

    aud = claims.get("aud")
    values = [aud] if isinstance(aud, str) else aud
    if not isinstance(values, list) or not values or not all(isinstance(v, str) for v in values):
        raise InvalidAssertion("no aud", "client_assertion must carry aud: the issuer or this endpoint's URL")
    if not all(_audienceMatches(v, audiences) for v in values):
        raise InvalidAssertion(
            "aud is not this server",
            "client_assertion aud must be the issuer or this endpoint's URL",
        )

    exp = claims.get("exp")
    if not _isNumber(exp):
        raise InvalidAssertion("no exp", "client_assertion must carry exp")
    if now >= exp + leeway:
        raise InvalidAssertion("expired", "client_assertion has expired")
    if exp - now > policy.maxLifetime + leeway:
        raise InvalidAssertion(
            "exp too far ahead",
            f"client_assertion exp may be at most {int(policy.maxLifetime)} seconds ahead",
        )
    nbf = claims.get("nbf")
    if nbf is not None:
        if not _isNumber(nbf):
            raise InvalidAssertion("nbf not a number", "client_assertion nbf must be a number")
        if nbf > now + leeway:
            raise InvalidAssertion("not yet valid (nbf)", "client_assertion is not yet valid")
    iat = claims.get("iat")
    if iat is not None:
        if not _isNumber(iat):
            raise InvalidAssertion("iat not a number", "client_assertion iat must be a number")
        if iat > now + leeway:
            raise InvalidAssertion("issued in the future (iat)", "client_assertion iat is in the future")
    jti = claims.get("jti")
    if not _boundedString(jti):
        raise InvalidAssertion("no jti", "client_assertion must carry a jti (at most 256 characters)")
    return VerifiedAssertion(
        clientID=clientID, jti=jti, expiresAt=float(exp), alg=assertion.alg, kid=assertion.kid
    )
