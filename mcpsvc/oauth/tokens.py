# -*- test-case-name: mcpsvc.oauth.test.test_tokens -*-
"""
Access tokens: JWTs (RFC 9068 profile, C{typ: at+jwt}) issued and verified
with an injected time.

Keys (L{KeyRing}):
  - by default one HS256 key, C{JWT_SECRET}; tokens carry no C{kid};
  - with C{JWT_PRIVATE_KEY_FILE} and/or C{JWT_KEYS_DIR}: ES256 (EC P-256)
    or RS256 (RSA, 2048 bits or more) keys from unencrypted PEM files, each
    with a C{kid} (its RFC 7638 JWK thumbprint), published as a JWKS. The
    key that signs is the file in C{JWT_KEYS_DIR} whose name sorts last
    among those allowed to sign by now, else C{JWT_PRIVATE_KEY_FILE}.
    C{mcpsvc keys rotate} names files C{YYYYMMDDTHHMMSSZ-<kid>.pem}; such a
    key is published in the JWKS at once but signs only
    C{JWT_KEY_PUBLISH_DELAY} seconds after that time (L{KeyRing.signingAt}),
    so resource servers caching the JWKS know it before they see its
    tokens. A key that no longer signs stays published, and verifies, until
    every token it can have signed has expired (L{KeyRing.publishedAt});
    then it is dropped from both, without a restart.

Verification pins algorithms: with asymmetric keys configured, only the
algorithm of the key named by C{kid} is accepted for that token, and HS256
never is (a token signed with C{JWT_SECRET} is refused: no algorithm
confusion); C{none} is never accepted. It checks C{typ}, C{iss}, C{aud}
(must contain the resource), C{exp}, C{nbf} and C{iat} (with L{LEEWAY}),
and that C{sub}, C{jti}, C{client_id} and C{scope} are present.
The token is parsed once (strict base64url segments, JSON objects; a
C{crit} header is refused: no JWS extension is understood) and its
signature checked with a verifier built once per key (HMAC-SHA256 for the
secret, pyjwt's ES256/RS256 for public keys), on the hot path of every
C{/mcp} request.
The revocation list is checked by the caller (it needs the store).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import re
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import attrs
import jwt
from attrs import Factory, field, frozen
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm
from twisted.python.filepath import FilePath

from mcpsvc.http.jsonio import decodeJSON

__all__ = [
    "LEEWAY",
    "TOKEN_TYPE",
    "InvalidToken",
    "KeyLoadError",
    "SigningKey",
    "KeyRing",
    "AccessClaims",
    "IssuedToken",
    "AccessTokens",
    "loadPrivateKey",
    "loadKeyRing",
    "keyFileTime",
    "newTokenID",
]

#: Clock skew tolerated on C{exp}, C{nbf} and C{iat}, in seconds.
LEEWAY = 30.0
#: The JOSE C{typ} of our access tokens (RFC 9068).
TOKEN_TYPE = "at+jwt"
#: Longest token we try to parse.
MAX_TOKEN_LENGTH = 8192
#: Deepest nesting accepted in a JWT header or payload (ours are flat).
JOSE_DEPTH = 8


class InvalidToken(Exception):
    """
    An access token is not valid; the message says why (safe to show the
    caller in C{error_description}).
    """


class KeyLoadError(ValueError):
    """
    A signing key file could not be used.
    """


def newTokenID() -> str:
    """
    A new random token id (C{jti}), 128 bits.
    """
    return base64.urlsafe_b64encode(os.urandom(16)).rstrip(b"=").decode("ascii")


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


@frozen(kw_only=True)
class SigningKey:
    """
    One key: it signs (private key or HMAC secret) and verifies.

    @ivar kid: the key id (C{None} for the HS256 secret).
    @ivar alg: C{"HS256"}, C{"ES256"} or C{"RS256"}.
    @ivar privateKey: what pyjwt signs with.
    @ivar publicKey: what pyjwt verifies with.
    @ivar jwk: the public JWK (C{None} for HS256).
    """

    kid: Optional[str]
    alg: str
    privateKey: Any = field(repr=False)
    publicKey: Any = field(repr=False)
    jwk: Optional[Mapping[str, Any]] = None
    #: When it may start signing (POSIX seconds; 0: at once).
    activatesAt: float = 0.0
    #: The file it came from, if any (for C{mcpsvc keys list}).
    path: Optional[str] = None


def _thumbprint(jwk: Mapping[str, Any]) -> str:
    """
    The RFC 7638 JWK thumbprint (SHA-256, base64url).
    """
    members = ("crv", "kty", "x", "y") if jwk["kty"] == "EC" else ("e", "kty", "n")
    canonical = json.dumps({m: jwk[m] for m in members}, separators=(",", ":"), sort_keys=True)
    return _b64(hashlib.sha256(canonical.encode("utf-8")).digest())


def loadPrivateKey(pem: bytes) -> SigningKey:
    """
    Load an unencrypted PEM private key: EC P-256 (ES256) or RSA of at
    least 2048 bits (RS256).

    @raise KeyLoadError: for anything else.
    """
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as e:
        raise KeyLoadError(f"not an unencrypted PEM private key ({e.__class__.__name__})")
    jwkDict: Dict[str, Any]
    if isinstance(key, ec.EllipticCurvePrivateKey):
        if key.curve.name != "secp256r1":
            raise KeyLoadError(f"EC keys must use P-256 (got {key.curve.name})")
        alg = "ES256"
        jwkDict = dict(ECAlgorithm.to_jwk(key.public_key(), as_dict=True))
    elif isinstance(key, rsa.RSAPrivateKey):
        if key.key_size < 2048:
            raise KeyLoadError(f"RSA keys must have at least 2048 bits (got {key.key_size})")
        alg = "RS256"
        jwkDict = dict(RSAAlgorithm.to_jwk(key.public_key(), as_dict=True))
    else:
        raise KeyLoadError("only EC P-256 (ES256) and RSA (RS256) keys are supported")
    kid = _thumbprint(jwkDict)
    jwkDict.update({"kid": kid, "alg": alg, "use": "sig"})
    return SigningKey(kid=kid, alg=alg, privateKey=key, publicKey=key.public_key(), jwk=jwkDict)


@frozen(kw_only=True)
class KeyRing:
    """
    The key that signs, and every key that verifies.

    @ivar signing: the current signing key.
    @ivar verifying: every verification key by C{kid} (C{None}: the HS256
        secret, only in HS256 mode).
    """

    signing: SigningKey
    verifying: Mapping[Optional[str], SigningKey]
    #: Asymmetric keys in rotation order (oldest first), for the time-based
    #: L{signingAt} and L{publishedAt}; empty: L{signing} always signs.
    ordered: Tuple[SigningKey, ...] = ()

    @classmethod
    def forSecret(cls, secret: str) -> "KeyRing":
        """
        The default HS256 key ring.
        """
        data = secret.encode("utf-8")
        if len(data) < 32:
            raise KeyLoadError("the HS256 secret must be at least 32 bytes")
        key = SigningKey(kid=None, alg="HS256", privateKey=data, publicKey=data)
        return cls(signing=key, verifying={None: key})

    @classmethod
    def forKeys(cls, keys: Sequence[SigningKey]) -> "KeyRing":
        """
        An asymmetric key ring; the last of C{keys} signs.
        """
        if not keys:
            raise KeyLoadError("no keys")
        return cls(signing=keys[-1], verifying={k.kid: k for k in keys}, ordered=tuple(keys))

    def _signerIndex(self, now: float) -> int:
        active = [i for i, k in enumerate(self.ordered) if k.activatesAt <= now]
        # Nothing may sign yet (a first key made just now): the oldest does.
        return active[-1] if active else 0

    def signingAt(self, now: float) -> SigningKey:
        """
        The key that signs at C{now}: the last (in rotation order) whose
        C{activatesAt} has come, or the first if none has.
        """
        if not self.ordered:
            return self.signing
        return self.ordered[self._signerIndex(now)]

    def retiredAt(self, key: SigningKey) -> Optional[float]:
        """
        When C{key} stops signing for good: when a later key activates
        (C{None}: no later key).
        """
        index = self.ordered.index(key)
        later = [k.activatesAt for k in self.ordered[index + 1:]]
        return min(later) if later else None

    def publishedAt(self, now: float, tokenLifetime: float) -> Tuple[SigningKey, ...]:
        """
        The keys published (and accepted) at C{now}: the signer, the keys
        waiting to sign, and each earlier key until every token it can
        have signed has expired (C{retiredAt} + C{tokenLifetime} +
        L{LEEWAY}).
        """
        if not self.ordered:
            return tuple(self.verifying.values())
        signer = self._signerIndex(now)
        published = []
        for index, key in enumerate(self.ordered):
            if index >= signer:
                published.append(key)
                continue
            retired = self.retiredAt(key)
            if retired is None or now < retired + tokenLifetime + LEEWAY:
                published.append(key)
        return tuple(published)

    @property
    def asymmetric(self) -> bool:
        return self.signing.alg != "HS256"

    @property
    def algorithms(self) -> Tuple[str, ...]:
        """
        The algorithms this ring accepts.
        """
        return tuple(sorted({k.alg for k in self.verifying.values()}))

    def jwks(self, now: Optional[float] = None, tokenLifetime: float = 0.0) -> Optional[Dict[str, Any]]:
        """
        The JWKS document, or C{None} in HS256 mode: at C{now}, the keys
        L{publishedAt} then; without C{now}, every key.
        """
        if not self.asymmetric:
            return None
        keys = self.verifying.values() if now is None else self.publishedAt(now, tokenLifetime)
        return {"keys": [dict(k.jwk or {}) for k in keys]}


_STAMP = re.compile(r"(\d{8}T\d{6}Z)-")


def keyFileTime(name: str) -> Optional[float]:
    """
    The creation time in a key file name made by C{mcpsvc keys rotate}
    (C{YYYYMMDDTHHMMSSZ-<kid>.pem}), or C{None}.
    """
    from datetime import datetime, timezone

    match = _STAMP.match(name)
    if match is None:
        return None
    try:
        when = datetime.strptime(match.group(1), "%Y%m%dT%H%M%SZ").replace(tzinfo=timezone.utc)
    except ValueError:
        return None
    return when.timestamp()


def loadKeyRing(
    secret: str, privateKeyFile: Optional[str] = None, keysDir: Optional[str] = None,
    publishDelay: float = 0.0,
) -> KeyRing:
    """
    Build the key ring from configuration (C{config.jwtSecret},
    C{config.jwtPrivateKeyFile}, C{config.jwtKeysDir},
    C{config.jwtKeyPublishDelay}). Reads files: call it while building the
    service, not per request.

    @param publishDelay: how long after the time in its name (see
        L{keyFileTime}) a key of C{keysDir} starts signing; keys without
        one (and C{privateKeyFile}) may sign at once.
    @raise KeyLoadError: naming the file that could not be used.
    """
    keys: List[SigningKey] = []

    def load(path: FilePath, activatesAt: float = 0.0) -> SigningKey:
        try:
            key = loadPrivateKey(path.getContent())
        except OSError as e:
            raise KeyLoadError(f"{path.path}: {e.strerror or e}")
        except KeyLoadError as e:
            raise KeyLoadError(f"{path.path}: {e}")
        return attrs.evolve(key, activatesAt=activatesAt, path=path.path)

    if privateKeyFile:
        keys.append(load(FilePath(privateKeyFile)))
    if keysDir:
        for child in sorted(FilePath(keysDir).globChildren("*.pem"), key=lambda p: p.basename()):
            created = keyFileTime(child.basename())
            key = load(child, 0.0 if created is None else created + publishDelay)
            keys = [k for k in keys if k.kid != key.kid] + [key]
    if not keys:
        return KeyRing.forSecret(secret)
    return KeyRing.forKeys(keys)


_SEGMENT = re.compile(r"[A-Za-z0-9_-]+\Z")


def _b64decode(segment: str) -> bytes:
    """
    Decode one base64url JWS segment (already checked against
    L{_SEGMENT}); raises C{ValueError} for an impossible length.
    """
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


def _hmacVerifier(secret: bytes) -> Callable[[bytes, bytes], bool]:
    def verify(message: bytes, signature: bytes) -> bool:
        expected = hmac.new(secret, message, hashlib.sha256).digest()
        return hmac.compare_digest(expected, signature)

    return verify


def _asymmetricVerifier(key: "SigningKey") -> Callable[[bytes, bytes], bool]:
    algorithm: Any
    if key.alg == "ES256":
        algorithm = ECAlgorithm(ECAlgorithm.SHA256)
    else:
        algorithm = RSAAlgorithm(RSAAlgorithm.SHA256)
    publicKey = key.publicKey

    def verify(message: bytes, signature: bytes) -> bool:
        return bool(algorithm.verify(message, publicKey, signature))

    return verify


def _verifiersFor(keys: "KeyRing") -> Dict[Optional[str], Callable[[bytes, bytes], bool]]:
    """
    One signature checker per verifying key, each bound to its own
    algorithm (HS256 only for the secret, never for a public key).
    """
    result: Dict[Optional[str], Callable[[bytes, bytes], bool]] = {}
    for kid, key in keys.verifying.items():
        if key.alg == "HS256":
            result[kid] = _hmacVerifier(key.publicKey)
        elif key.alg in ("ES256", "RS256"):
            result[kid] = _asymmetricVerifier(key)
    return result


@frozen(kw_only=True)
class IssuedToken:
    """
    A freshly signed access token.
    """

    token: str = field(repr=False)
    jti: str
    expiresAt: int
    scope: str


@frozen(kw_only=True)
class AccessClaims:
    """
    The verified claims of an access token.
    """

    subject: str
    clientID: str
    scope: str
    jti: str
    issuer: str
    audience: Tuple[str, ...]
    issuedAt: float
    expiresAt: float
    claims: Mapping[str, Any] = field(repr=False, factory=dict)
    #: The refresh family the token was issued from (claim C{fid}), if any.
    familyID: Optional[str] = None

    @property
    def scopes(self) -> frozenset[str]:
        return frozenset(self.scope.split())


def _number(claims: Mapping[str, Any], name: str, required: bool = True) -> Optional[float]:
    value = claims.get(name)
    if value is None:
        if required:
            raise InvalidToken(f"token has no {name}")
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidToken(f"token {name} is not a number")
    return float(value)


def _string(claims: Mapping[str, Any], name: str, allowEmpty: bool = False) -> str:
    value = claims.get(name)
    if not isinstance(value, str) or (not value and not allowEmpty):
        raise InvalidToken(f"token has no valid {name}")
    return value


@frozen(kw_only=True)
class AccessTokens:
    """
    Issues and verifies access tokens for one issuer and resource.

    @ivar keys: the key ring.
    @ivar issuer: our C{iss}.
    @ivar audience: the canonical resource URL, the default C{aud}.
    @ivar lifetime: access token lifetime, seconds.
    @ivar leeway: tolerated clock skew, seconds.
    """

    keys: KeyRing
    issuer: str
    audience: str
    lifetime: int = 3600
    leeway: float = LEEWAY
    #: Signature checkers by C{kid}, built once from L{keys}.
    _verifiers: Mapping[Optional[str], Callable[[bytes, bytes], bool]] = field(
        init=False, repr=False,
        default=Factory(lambda self: _verifiersFor(self.keys), takes_self=True),
    )

    def issue(
        self,
        *,
        now: float,
        subject: str,
        clientID: str,
        scope: str,
        audience: Optional[str] = None,
        jti: Optional[str] = None,
        familyID: Optional[str] = None,
    ) -> IssuedToken:
        """
        Sign a new access token valid from C{now} for L{lifetime} seconds.

        @param familyID: the refresh family (grant) it is issued from, put
            in the C{fid} claim so that revoking the family refuses it.
        """
        issuedAt = int(now)
        expiresAt = issuedAt + int(self.lifetime)
        jti = jti or newTokenID()
        claims = {
            "iss": self.issuer,
            "sub": subject,
            "aud": audience or self.audience,
            "exp": expiresAt,
            "iat": issuedAt,
            "nbf": issuedAt,
            "jti": jti,
            "client_id": clientID,
            "scope": scope,
        }
        if familyID is not None:
            claims["fid"] = familyID
        headers: Dict[str, Any] = {"typ": TOKEN_TYPE}
        key = self.keys.signingAt(now)
        if key.kid is not None:
            headers["kid"] = key.kid
        token = jwt.encode(claims, key.privateKey, algorithm=key.alg, headers=headers)
        return IssuedToken(token=token, jti=jti, expiresAt=expiresAt, scope=scope)

    def jwks(self, now: float) -> Optional[Dict[str, Any]]:
        """
        The JWKS document at C{now} (C{None} in HS256 mode).
        """
        return self.keys.jwks(now, self.lifetime)

    def _keyFor(self, header: Mapping[str, Any], now: float) -> SigningKey:
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in self.keys.algorithms:
            raise InvalidToken("token algorithm is not accepted")
        typ = header.get("typ")
        if not isinstance(typ, str) or typ.lower() not in (TOKEN_TYPE, "application/" + TOKEN_TYPE):
            raise InvalidToken("token is not an access token")
        if not self.keys.asymmetric:
            return self.keys.verifying[None]
        kid = header.get("kid")
        if not isinstance(kid, str) or kid not in self.keys.verifying:
            raise InvalidToken("token key is unknown")
        key = self.keys.verifying[kid]
        if key.alg != alg:
            raise InvalidToken("token algorithm does not match its key")
        if self.keys.ordered and key not in self.keys.publishedAt(now, self.lifetime):
            # Retired long enough that none of its tokens can be valid: a
            # leaked old key mints nothing.
            raise InvalidToken("token key is unknown")
        return key

    def _decode(self, token: str, now: float) -> Tuple[Mapping[str, Any], Dict[str, Any]]:
        """
        Parse C{token} once: decode its header, pick the key its C{alg} and
        C{kid} name (pinned: see L{_keyFor}), check the signature with that
        key's cached verifier, then decode the claims.

        @raise InvalidToken: malformed, unknown key, bad signature.
        """
        headerPart, payloadPart, signaturePart = token.split(".")
        if not (
            _SEGMENT.match(headerPart) and _SEGMENT.match(payloadPart)
            and (not signaturePart or _SEGMENT.match(signaturePart))
        ):
            raise InvalidToken("malformed token")
        try:
            header = decodeJSON(_b64decode(headerPart), maxDepth=JOSE_DEPTH)
        except (ValueError, TypeError):
            raise InvalidToken("malformed token")
        if not isinstance(header, dict):
            raise InvalidToken("malformed token")
        if "crit" in header or header.get("b64", True) is not True:
            # No JWS extension is understood here (RFC 7515 section 4.1.11).
            raise InvalidToken("token uses an unsupported extension")
        key = self._keyFor(header, now)
        verifier = self._verifiers.get(key.kid)
        try:
            signature = _b64decode(signaturePart)
            valid = verifier is not None and verifier(
                (headerPart + "." + payloadPart).encode("ascii"), signature
            )
        except (ValueError, TypeError):
            valid = False
        if not valid:
            raise InvalidToken("token signature is invalid")
        try:
            claims = decodeJSON(_b64decode(payloadPart), maxDepth=JOSE_DEPTH)
        except (ValueError, TypeError):
            raise InvalidToken("token signature is invalid")
        if not isinstance(claims, dict):
            raise InvalidToken("token signature is invalid")
        return header, claims

    def verify(self, token: str, *, now: float, audience: Optional[str] = None) -> AccessClaims:
        """
        Verify C{token} at time C{now}.

        @param audience: the resource the token must be for (default:
            L{audience}).
        @raise InvalidToken: for anything wrong, with a short reason.
        """
        if not isinstance(token, str) or not token or len(token) > MAX_TOKEN_LENGTH:
            raise InvalidToken("malformed token")
        if token.count(".") != 2:
            raise InvalidToken("malformed token")
        header, claims = self._decode(token, now)
        if claims.get("iss") != self.issuer:
            raise InvalidToken("token issuer is wrong")
        expected = audience or self.audience
        aud = claims.get("aud")
        auds: Tuple[str, ...]
        if isinstance(aud, str):
            auds = (aud,)
        elif isinstance(aud, list) and all(isinstance(a, str) for a in aud):
            auds = tuple(aud)
        else:
            raise InvalidToken("token has no valid audience")
        if expected not in auds:
            raise InvalidToken("token is not for this resource")
        exp = _number(claims, "exp")
        assert exp is not None
        if now >= exp + self.leeway:
            raise InvalidToken("token has expired")
        nbf = _number(claims, "nbf", required=False)
        if nbf is not None and now < nbf - self.leeway:
            raise InvalidToken("token is not valid yet")
        iat = _number(claims, "iat")
        assert iat is not None
        if iat > now + self.leeway:
            raise InvalidToken("token was issued in the future")
        return AccessClaims(
            subject=_string(claims, "sub"),
            clientID=_string(claims, "client_id"),
            scope=_string(claims, "scope", allowEmpty=True),
            jti=_string(claims, "jti"),
            issuer=self.issuer,
            audience=auds,
            issuedAt=iat,
            expiresAt=exp,
            claims=claims,
            familyID=_string(claims, "fid") if "fid" in claims else None,
        )
