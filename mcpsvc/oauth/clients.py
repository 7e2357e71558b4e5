# -*- test-case-name: mcpsvc.oauth.test.test_clients -*-
"""
OAuth client metadata (RFC 7591): validation of a registration request into
the normalised metadata we store, and the client facts the endpoints need.

Decisions:
  - C{token_endpoint_auth_method}: C{none}, C{client_secret_basic} (the RFC
    7591 default when absent), C{client_secret_post} or C{private_key_jwt}
    (unless turned off); anything else (C{client_secret_jwt}, ...) is a
    clean C{invalid_client_metadata}.
  - C{private_key_jwt} needs exactly one of C{jwks} (a JWK Set of public
    keys, checked by L{mcpsvc.oauth.assertion.publicJWKS}: a private part
    is refused) and C{jwks_uri} (https, or http on a loopback host); both
    are refused (RFC 7591 section 2). Other methods drop them (unused).
  - C{grant_types}: C{authorization_code} (default), C{refresh_token},
    C{client_credentials}; C{response_types}: C{code} exactly when
    C{authorization_code} is registered. C{client_credentials} needs a
    confidential client; C{authorization_code} needs a redirect URI;
    C{refresh_token} without C{authorization_code} is dropped (inert).
  - unknown fields are ignored (dropped); unknown scopes are dropped (see
    L{mcpsvc.oauth.scopes}); no known scope means the default scopes.

Confidential or public is decided from the method alone (L{isConfidential},
L{usesSecret}): C{private_key_jwt} is confidential and has no secret.
Whether a client is I{self-asserted} (L{isSelfAsserted}: anyone could have
made it, a metadata document client or one registered through open
registration) decides what being confidential allows: such a client gets
no C{client_credentials} and may introspect only its own tokens.
"""

from __future__ import annotations

import secrets
import unicodedata
from typing import Any, Dict, List, Mapping, Optional, Sequence
from urllib.parse import urlsplit

from mcpsvc.oauth.redirects import RedirectURIError, validateRedirectURI
from mcpsvc.oauth.scopes import REGISTERED_SCOPES, formatScope, knownScopes, parseScope

__all__ = [
    "AUTH_METHODS",
    "SECRET_AUTH_METHODS",
    "PRIVATE_KEY_JWT",
    "GRANT_TYPES",
    "ClientMetadataError",
    "normalizeMetadata",
    "isConfidential",
    "usesSecret",
    "isSelfAsserted",
    "OPEN_REGISTRATION",
    "validateJWKSURI",
    "authMethod",
    "grantTypes",
    "redirectURIs",
    "clientScopes",
    "registrationResponse",
    "newClientID",
]

PRIVATE_KEY_JWT = "private_key_jwt"
AUTH_METHODS = ("none", "client_secret_basic", "client_secret_post", PRIVATE_KEY_JWT)
SECRET_AUTH_METHODS = ("client_secret_basic", "client_secret_post")
_LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")
GRANT_TYPES = ("authorization_code", "refresh_token", "client_credentials")

#: Optional string fields we keep, with their longest accepted length.
_STRING_FIELDS = {
    "client_name": 200,
    "client_uri": 2000,
    "logo_uri": 2000,
    "tos_uri": 2000,
    "policy_uri": 2000,
    "software_id": 200,
    "software_version": 100,
    "application_type": 20,
}
_MAX_REDIRECT_URIS = 20


class ClientMetadataError(ValueError):
    """
    Registration metadata is unacceptable.

    @ivar error: C{"invalid_redirect_uri"} or C{"invalid_client_metadata"}.
    @ivar description: why, safe to show the client.
    """

    def __init__(self, error: str, description: str) -> None:
        super().__init__(description)
        self.error = error
        self.description = description


def _bad(description: str) -> ClientMetadataError:
    return ClientMetadataError("invalid_client_metadata", description)


def _stringList(raw: Mapping[str, Any], name: str) -> Optional[List[str]]:
    value = raw.get(name)
    if value is None:
        return None
    if isinstance(value, str):
        # Lenient: a single value where a list belongs.
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _bad(f"{name} must be an array of strings")
    return list(dict.fromkeys(value))


#: The C{registration} metadata value of a client registered without an
#: initial access token (C{DCR_OPEN}).
OPEN_REGISTRATION = "open"


def validateJWKSURI(value: Any, production: bool = False) -> str:
    """
    A C{jwks_uri}: an absolute https URL (in development, http on a
    loopback host too: the fetcher refuses http in production), without
    credentials or fragment, of at most 2000 characters.

    @raise ClientMetadataError: it is not.
    """
    if not isinstance(value, str) or not value or len(value) > 2000:
        raise _bad("jwks_uri must be a URL of at most 2000 characters")
    try:
        parts = urlsplit(value)
        host = parts.hostname
    except ValueError:
        raise _bad("jwks_uri is not a valid URL") from None
    if parts.scheme not in ("https", "http") or not host:
        raise _bad("jwks_uri must be an absolute https URL")
    if parts.scheme == "http" and (production or host not in _LOOPBACK_HOSTS):
        raise _bad("jwks_uri must be https" + ("" if production else
                                                " (http only on a loopback host)"))
    if "@" in parts.netloc or parts.fragment:
        raise _bad("jwks_uri must not carry credentials or a fragment")
    return value


def _keyMetadata(raw: Mapping[str, Any], method: str, production: bool) -> Dict[str, Any]:
    """
    The C{jwks} or C{jwks_uri} of a C{private_key_jwt} client.
    """
    if method != PRIVATE_KEY_JWT:
        return {}
    jwks, jwksURI = raw.get("jwks"), raw.get("jwks_uri")
    if jwks is not None and jwksURI is not None:
        raise _bad("jwks and jwks_uri must not both be present")
    if jwks is None and jwksURI is None:
        raise _bad("private_key_jwt requires jwks or jwks_uri (the client's public keys)")
    if jwksURI is not None:
        return {"jwks_uri": validateJWKSURI(jwksURI, production)}
    from mcpsvc.oauth.assertion import InvalidJWKS, publicJWKS

    try:
        return {"jwks": publicJWKS(jwks)}
    except InvalidJWKS as e:
        raise _bad(f"jwks: {e}") from None


def normalizeMetadata(
    raw: Mapping[str, Any],
    *,
    patterns: Optional[Sequence[str]] = None,
    privateKeyJWT: bool = True,
    production: bool = False,
) -> Dict[str, Any]:
    """
    Validate registration metadata and return what we store.

    @param raw: the request's JSON object.
    @param patterns: redirect URI allow-list patterns (dynamic
        registration); C{None} for administrative registration, which only
        requires https or loopback http.
    @param privateKeyJWT: whether C{private_key_jwt} is accepted
        (C{PRIVATE_KEY_JWT}).
    @param production: whether this is a production server (a C{jwks_uri}
        must be https then).
    @raise ClientMetadataError: with the RFC 7591 error code.
    """
    if not isinstance(raw, Mapping):
        raise _bad("client metadata must be a JSON object")

    method = raw.get("token_endpoint_auth_method", "client_secret_basic")
    if not isinstance(method, str):
        raise _bad("token_endpoint_auth_method must be a string")
    if method not in AUTH_METHODS or (method == PRIVATE_KEY_JWT and not privateKeyJWT):
        raise _bad(
            f"token_endpoint_auth_method {method[:50]!r} is not supported; "
            "use none, client_secret_basic, client_secret_post"
            + (" or private_key_jwt" if privateKeyJWT else "")
        )
    keyMetadata = _keyMetadata(raw, method, production)

    grants = _stringList(raw, "grant_types")
    if grants is None:
        grants = ["authorization_code"]
    if not grants:
        raise _bad("grant_types must not be empty")
    for grant in grants:
        if grant not in GRANT_TYPES:
            raise _bad(
                f"grant type {grant!r} is not supported; use "
                "authorization_code, refresh_token or client_credentials"
            )
    grants = [g for g in GRANT_TYPES if g in grants]

    responses = _stringList(raw, "response_types")
    codeFlow = "authorization_code" in grants
    if responses is None:
        responses = ["code"] if codeFlow else []
    for response in responses:
        if response != "code":
            raise _bad(f"response type {response!r} is not supported; use code")
    if codeFlow != ("code" in responses):
        raise _bad(
            "response_types and grant_types are inconsistent: "
            "response type code goes with grant type authorization_code"
        )
    if "client_credentials" in grants and method == "none":
        raise _bad("client_credentials requires a confidential client (a secret or private_key_jwt)")
    if "refresh_token" in grants and not codeFlow:
        # Lenient: refresh tokens only come from authorization codes here
        # (client_credentials issues none), so the grant would be inert.
        grants.remove("refresh_token")

    try:
        uris = _stringList(raw, "redirect_uris")
    except ClientMetadataError as e:
        raise ClientMetadataError("invalid_redirect_uri", e.description)
    uris = uris or []
    if codeFlow and not uris:
        raise ClientMetadataError(
            "invalid_redirect_uri", "redirect_uris is required for the authorization_code grant"
        )
    if len(uris) > _MAX_REDIRECT_URIS:
        raise ClientMetadataError("invalid_redirect_uri", "too many redirect_uris")
    for uri in uris:
        try:
            validateRedirectURI(uri, patterns)
        except RedirectURIError as e:
            raise ClientMetadataError("invalid_redirect_uri", f"{e}: {uri[:200]}")

    scopeValue = raw.get("scope")
    if scopeValue is not None and not isinstance(scopeValue, str):
        raise _bad("scope must be a string")
    scopes = knownScopes(parseScope(scopeValue)) or list(REGISTERED_SCOPES)
    if patterns is not None:
        # Dynamic registration: anyone may register again with any scope,
        # so a narrower registered scope would protect nothing and would
        # only stop the client from stepping up later (a client such as the
        # MCP SDK registers with the scopes of the first challenge). Such a
        # client may ask for every scope; consent decides.
        scopes = knownScopes(set(scopes) | set(REGISTERED_SCOPES))

    metadata: Dict[str, Any] = {
        "redirect_uris": uris,
        "token_endpoint_auth_method": method,
        "grant_types": grants,
        "response_types": responses,
        "scope": formatScope(scopes),
    }
    metadata.update(keyMetadata)
    for name, limit in _STRING_FIELDS.items():
        value = raw.get(name)
        if value is None:
            continue
        if not isinstance(value, str) or len(value) > limit:
            raise _bad(f"{name} must be a string of at most {limit} characters")
        if any(unicodedata.category(c) == "Cc" for c in value):
            # Printed by the admin commands, logged, shown: no terminal
            # escapes, no forged log lines.
            raise _bad(f"{name} must not contain control characters")
        metadata[name] = value
    contacts = _stringList(raw, "contacts")
    if contacts is not None:
        metadata["contacts"] = contacts[:10]
    return metadata


def newClientID() -> str:
    """
    A new client id: 128 random bits in hex (no leading C{-} to trip up
    command lines, nothing to escape in Basic credentials).
    """
    return secrets.token_hex(16)


def authMethod(metadata: Mapping[str, Any]) -> str:
    """
    The registered token endpoint authentication method.
    """
    return str(metadata.get("token_endpoint_auth_method", "client_secret_basic"))


def isConfidential(metadata: Mapping[str, Any]) -> bool:
    """
    Whether the client authenticates (with a secret or a private key), as
    opposed to a public client (C{none}).
    """
    return authMethod(metadata) in SECRET_AUTH_METHODS or authMethod(metadata) == PRIVATE_KEY_JWT


def isSelfAsserted(metadata: Mapping[str, Any]) -> bool:
    """
    Whether anyone could have made this client: one described by a Client
    ID Metadata Document (its metadata has a C{cimd} object) or registered
    without an initial access token (C{registration} is
    L{OPEN_REGISTRATION}). Confidential or not, such a client gets no
    C{client_credentials} and may introspect only its own tokens.
    """
    return (isinstance(metadata.get("cimd"), Mapping)
            or metadata.get("registration") == OPEN_REGISTRATION)


def usesSecret(metadata: Mapping[str, Any]) -> bool:
    """
    Whether the client authenticates with a client secret (and so is given
    one at registration).
    """
    return authMethod(metadata) in SECRET_AUTH_METHODS


def grantTypes(metadata: Mapping[str, Any]) -> List[str]:
    """
    The registered grant types.
    """
    return list(metadata.get("grant_types", ["authorization_code"]))


def redirectURIs(metadata: Mapping[str, Any]) -> List[str]:
    """
    The registered redirect URIs.
    """
    return list(metadata.get("redirect_uris", []))


def clientScopes(metadata: Mapping[str, Any]) -> frozenset[str]:
    """
    The scopes the client may ask for: those it registered (every resource
    scope when none).
    """
    return frozenset(knownScopes(parseScope(metadata.get("scope"))) or REGISTERED_SCOPES)


def registrationResponse(
    clientID: str,
    metadata: Mapping[str, Any],
    issuedAt: float,
    secret: Optional[str],
) -> Dict[str, Any]:
    """
    The RFC 7591 section 3.2.1 response body: the registered metadata plus
    C{client_id}, C{client_id_issued_at} and, for confidential clients,
    C{client_secret} and C{client_secret_expires_at} (0: never).
    """
    body: Dict[str, Any] = dict(metadata)
    body.pop("registration", None)  # ours, not RFC 7591 metadata
    body["client_id"] = clientID
    body["client_id_issued_at"] = int(issuedAt)
    if secret is not None:
        body["client_secret"] = secret
        body["client_secret_expires_at"] = 0
    return body
