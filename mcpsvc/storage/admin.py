# -*- test-case-name: mcpsvc.storage.test.test_admin -*-
"""
Export and import of registered OAuth clients (backups, moving between
backends, migrating from the ServiceNow guide's Node server).

Import policy: a client whose id already exists is B{skipped} (left
untouched and not counted), unless C{replace=True}: an import never
silently changes the secret of a client that is in use.

Clients described by a Client ID Metadata Document (their metadata has a
C{cimd} object) are B{not exported}, and skipped on import: their record
is a cached copy of a document anyone can publish, fetched again on its
first use (only when it was first seen is lost). Everything else,
C{jwks} and C{jwks_uri} included, round-trips as stored.

Each imported entry is checked against its authentication method: a
C{client_secret_basic} or C{client_secret_post} client needs a secret; a
C{private_key_jwt} client needs exactly one of C{jwks} and C{jwks_uri}
and holds no secret; a C{none} client holds no secret. A bad entry fails
the whole import (nothing is imported).
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Dict, List, Mapping, Optional

from twisted.logger import Logger

from mcpsvc.storage.hashing import hashSecret
from mcpsvc.storage.interfaces import ClientRecord, Conflict, IStore

__all__ = ["exportClients", "importClients", "parseClients", "isDocumentRecord", "EXPORT_FORMAT"]

log = Logger()

#: The C{format} marker of L{exportClients} documents.
EXPORT_FORMAT = "mcpsvc-clients"


def isDocumentRecord(record: ClientRecord) -> bool:
    """
    Whether C{record} is a cached metadata document client (see
    L{mcpsvc.oauth.cimd}), as opposed to a registered client.
    """
    return isinstance(record.metadata.get("cimd"), Mapping)


async def exportClients(store: IStore) -> Dict[str, Any]:
    """
    Return every registered client (not the cached metadata document
    clients) as a JSON-serialisable document::

        {"format": "mcpsvc-clients", "version": 1,
         "clients": [{"clientID": ..., "secretHash": "sha256:..." or null,
                      "metadata": {...}, "createdAt": ..., "secretExpiresAt": ...}]}

    Secrets appear only as their stored hashes.
    """
    clients: List[ClientRecord] = [
        c for c in await store.listClients() if not isDocumentRecord(c)
    ]
    return {
        "format": EXPORT_FORMAT,
        "version": 1,
        "clients": [
            {
                "clientID": c.clientID,
                "secretHash": c.secretHash,
                "metadata": dict(c.metadata),
                "createdAt": c.createdAt,
                "secretExpiresAt": c.secretExpiresAt,
            }
            for c in clients
        ],
    }


def _time(value: Any, default: float) -> float:
    """
    Read a creation time: POSIX seconds, JavaScript milliseconds, or an
    ISO 8601 string.
    """
    if value is None or value == "":
        return default
    if isinstance(value, bool):
        raise ValueError(f"not a time: {value!r}")
    if isinstance(value, (int, float)):
        return float(value) / 1000 if value > 1e11 else float(value)
    if isinstance(value, str):
        parsed = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=timezone.utc)
        return parsed.timestamp()
    raise ValueError(f"not a time: {value!r}")


def _fromExport(entry: Mapping[str, Any], now: float) -> ClientRecord:
    return ClientRecord(
        clientID=str(entry["clientID"]),
        secretHash=entry.get("secretHash"),
        metadata=dict(entry.get("metadata") or {}),
        createdAt=_time(entry.get("createdAt"), now),
        secretExpiresAt=float(entry.get("secretExpiresAt") or 0),
    )


def _fromGuide(clientID: str, entry: Mapping[str, Any], now: float) -> ClientRecord:
    """
    One entry of the ServiceNow guide's C{registered_clients.json}.
    """
    if not isinstance(entry, Mapping):
        raise ValueError(f"client {clientID!r}: expected an object")
    secret: Optional[str] = entry.get("clientSecret") or entry.get("client_secret")
    method = entry.get("tokenEndpointAuthMethod") or entry.get("token_endpoint_auth_method")
    if not method:
        method = "client_secret_basic" if secret else "none"
    metadata: Dict[str, Any] = {
        "client_name": entry.get("clientName") or entry.get("client_name") or clientID,
        "redirect_uris": list(entry.get("redirectUris") or entry.get("redirect_uris") or []),
        "grant_types": list(
            entry.get("grantTypes") or entry.get("grant_types") or ["authorization_code", "refresh_token"]
        ),
        "response_types": list(entry.get("responseTypes") or entry.get("response_types") or ["code"]),
        "token_endpoint_auth_method": method,
    }
    scope = entry.get("scope")
    if scope:
        metadata["scope"] = scope
    jwks = entry.get("jwks")
    jwksURI = entry.get("jwksUri") or entry.get("jwks_uri")
    if jwks is not None:
        metadata["jwks"] = jwks
    if jwksURI is not None:
        metadata["jwks_uri"] = jwksURI
    return ClientRecord(
        clientID=str(entry.get("clientId") or clientID),
        secretHash=hashSecret(secret) if secret else None,
        metadata=metadata,
        createdAt=_time(entry.get("createdAt") or entry.get("created_at"), now),
    )


def parseClients(data: Any, now: float) -> List[ClientRecord]:
    """
    Read either an L{exportClients} document or the ServiceNow guide's
    C{registered_clients.json} (an object keyed by client id).

    @raise ValueError: for anything else.
    """
    if not isinstance(data, Mapping):
        raise ValueError("expected a JSON object")
    if data.get("format") == EXPORT_FORMAT:
        records = [_fromExport(entry, now) for entry in data.get("clients") or []]
    else:
        records = [_fromGuide(str(clientID), entry, now) for clientID, entry in data.items()]
    for record in records:
        _checkCredentials(record)
    return records


def _checkCredentials(record: ClientRecord) -> None:
    """
    The credentials of C{record} agree with its method (see the module
    docstring).

    @raise ValueError: they do not.
    """
    from mcpsvc.oauth.clients import AUTH_METHODS, PRIVATE_KEY_JWT, authMethod, usesSecret

    if isDocumentRecord(record):
        return  # skipped on import
    method = authMethod(record.metadata)
    where = f"client {record.clientID!r}"
    if method not in AUTH_METHODS:
        raise ValueError(f"{where}: unknown token_endpoint_auth_method {method[:50]!r}")
    if usesSecret(record.metadata) and not record.secretHash:
        raise ValueError(f"{where}: {method} needs a secret, and the entry has none")
    if not usesSecret(record.metadata) and record.secretHash:
        raise ValueError(f"{where}: a {method} client has no secret, and the entry has one")
    if method == PRIVATE_KEY_JWT and (record.jwks is None) == (record.jwksURI is None):
        raise ValueError(f"{where}: private_key_jwt needs exactly one of jwks and jwks_uri")


async def importClients(store: IStore, data: Any, now: float, *, replace: bool = False) -> int:
    """
    Import clients from C{data} (see L{parseClients}). Existing client ids
    are skipped, or overwritten when C{replace} is true. Plaintext secrets
    (guide format) are hashed before they reach the store.

    @param now: the creation time of entries that carry none.
    @return: how many clients were created or replaced.
    @raise ValueError: if C{data} is not a recognised document (nothing is
        imported then).
    """
    records = parseClients(data, now)
    count = 0
    for record in records:
        if isDocumentRecord(record):
            log.info("Client {clientID} is a metadata document client: not imported "
                     "(fetched again on first use)", clientID=record.clientID)
            continue
        try:
            await store.createClient(record)
        except Conflict:
            if not replace:
                log.info("Client {clientID} exists: skipped", clientID=record.clientID)
                continue
            await store.updateClient(record)
        count += 1
    return count
