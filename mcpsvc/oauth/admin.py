# -*- test-case-name: mcpsvc.oauth.test.test_admin -*-
"""
Operator actions behind the C{mcpsvc} command line: manual client
registration (ServiceNow's "client id and secret" mode), secret rotation,
token revocation and signing key rotation.

Each function takes the store (and a time, C{now}) and is written as
C{async def}; the CLI runs it with C{Deferred.fromCoroutine} under
C{task.react}. Secrets are returned to the caller once, to print once;
only their hashes are stored.
"""

from __future__ import annotations

import os
from datetime import datetime, timezone
from typing import Any, Dict, Optional, Sequence, Tuple

import attrs
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from twisted.python.filepath import FilePath

from mcpsvc.oauth.clients import (
    isConfidential,
    newClientID,
    normalizeMetadata,
    registrationResponse,
    usesSecret,
)
from mcpsvc.oauth.refresh import splitRefreshToken
from mcpsvc.oauth.tokens import AccessTokens, InvalidToken, loadPrivateKey
from mcpsvc.storage._logic import hashEquals
from mcpsvc.storage.hashing import hashSecret, newSecret
from mcpsvc.storage.interfaces import ClientRecord, NoSuchFamily

__all__ = [
    "AdminError",
    "addClient",
    "rotateSecret",
    "revokeToken",
    "rotateKeys",
    "describeClient",
]


class AdminError(Exception):
    """
    An operator request cannot be done; the message says why.
    """


async def addClient(
    store: Any,
    now: float,
    name: str,
    redirectURIs: Sequence[str],
    grantTypes: Sequence[str] = ("authorization_code", "refresh_token"),
    authMethod: str = "client_secret_basic",
    scope: Optional[str] = None,
    jwks: Optional[Dict[str, Any]] = None,
    jwksURI: Optional[str] = None,
    privateKeyJWT: bool = True,
    production: bool = False,
) -> Tuple[ClientRecord, Optional[str]]:
    """
    Register a client by hand. Redirect URIs must be https (or loopback
    http) but are not limited by C{DCR_REDIRECT_PATTERNS}.

    @param jwks: a C{private_key_jwt} client's public keys (a JWK Set).
    @param jwksURI: or the URL it publishes them at.
    @param privateKeyJWT: whether C{private_key_jwt} is enabled
        (C{PRIVATE_KEY_JWT}).
    @param production: a production server (a C{jwks_uri} must be https).

    @return: the stored record and the plaintext secret (C{None} for a
        public client), to be shown once.
    @raise AdminError: the metadata is invalid.
    """
    raw: Dict[str, Any] = {
        "client_name": name,
        "redirect_uris": list(redirectURIs),
        "grant_types": list(grantTypes),
        "token_endpoint_auth_method": authMethod,
    }
    if scope is not None:
        raw["scope"] = scope
    if jwks is not None:
        raw["jwks"] = jwks
    if jwksURI is not None:
        raw["jwks_uri"] = jwksURI
    from mcpsvc.oauth.clients import ClientMetadataError

    try:
        metadata = normalizeMetadata(raw, patterns=None, privateKeyJWT=privateKeyJWT,
                                     production=production)
    except ClientMetadataError as e:
        raise AdminError(f"{e.error}: {e.description}")
    secret = newSecret(32) if usesSecret(metadata) else None
    record = ClientRecord(
        clientID=newClientID(),
        secretHash=hashSecret(secret) if secret is not None else None,
        metadata=metadata,
        createdAt=now,
    )
    await store.createClient(record)
    return record, secret


def describeClient(record: ClientRecord) -> Dict[str, Any]:
    """
    A printable view of a client (no secret, no hash).
    """
    body = registrationResponse(record.clientID, record.metadata, record.createdAt, None)
    body["confidential"] = isConfidential(record.metadata)
    return body


async def rotateSecret(store: Any, clientID: str) -> Tuple[ClientRecord, str]:
    """
    Give a confidential client a new secret; the old one stops working at
    once.

    @return: the updated record and the new plaintext secret.
    @raise AdminError: the client is public.
    @raise mcpsvc.storage.interfaces.NoSuchClient: no such client.
    """
    record: ClientRecord = await store.getClient(clientID)
    if not usesSecret(record.metadata):
        raise AdminError(
            f"client {clientID} authenticates with "
            f"{record.metadata.get('token_endpoint_auth_method')}: it has no secret"
        )
    secret = newSecret(32)
    updated = attrs.evolve(record, secretHash=hashSecret(secret), secretExpiresAt=0)
    await store.updateClient(updated)
    return updated, secret


async def revokeToken(store: Any, tokens: AccessTokens, now: float, token: str) -> str:
    """
    Revoke a refresh token (its whole family) or an access token (its
    C{jti}, until it expires), whoever it was issued to.

    @return: what was done, for the operator (no token in it).
    """
    parts = splitRefreshToken(token)
    if parts is not None:
        try:
            family = await store.getFamily(parts[0], now)
        except NoSuchFamily:
            return "unknown or already revoked refresh token: nothing to do"
        presented = hashSecret(token)
        if not (hashEquals(presented, family.currentHash) or hashEquals(presented, family.previousHash)):
            return "refresh token does not match its family's current token: nothing to do"
        await store.revokeFamily(family.familyID, now)
        return f"revoked refresh family {family.familyID} of client {family.clientID}"
    try:
        claims = tokens.verify(token, now=now)
    except InvalidToken as e:
        return f"not a valid access token ({e}): nothing to do"
    await store.revokeJTI(claims.jti, claims.expiresAt)
    return f"revoked access token {claims.jti} of client {claims.clientID}"


def rotateKeys(keysDir: str, alg: str = "ES256", *, now: float) -> FilePath:
    """
    Write a new signing key into C{keysDir}, named after C{now}: servers
    (re)started after this publish it at once and sign with it from
    C{now + JWT_KEY_PUBLISH_DELAY} (its name sorts last); the previous key
    keeps signing until then and stays published until its tokens have
    expired (see L{mcpsvc.oauth.tokens.KeyRing}).

    @param alg: C{"ES256"} (EC P-256) or C{"RS256"} (RSA 3072).
    @param now: the current time, for the file name.
    @return: the new key file (mode 0600).
    """
    if alg == "ES256":
        key: Any = ec.generate_private_key(ec.SECP256R1())
    elif alg == "RS256":
        key = rsa.generate_private_key(public_exponent=65537, key_size=3072)
    else:
        raise AdminError("alg must be ES256 or RS256")
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    kid = loadPrivateKey(pem).kid
    assert kid is not None
    directory = FilePath(keysDir)
    if not directory.isdir():
        directory.makedirs()
    stamp = datetime.fromtimestamp(now, tz=timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    target = directory.child(f"{stamp}-{kid[:16]}.pem")
    if any(child.basename() >= target.basename() or child.basename().startswith(stamp)
           for child in directory.globChildren("*.pem")):
        # The names order the keys: the new one must sort last.
        raise AdminError(
            f"a key in {directory.path} sorts after {target.basename()} (made in this same "
            "second, or named by hand): try again in a second, or rename it"
        )
    fd = os.open(target.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    return target
