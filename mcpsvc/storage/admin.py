# -*- test-case-name: mcpsvc.storage.test.test_admin -*-
"""
Export and import of registered OAuth clients (backups, moving between
backends, migrating from the ServiceNow guide's Node server).

Import policy: a client whose id already exists is B{skipped} (left
untouched and not counted), unless C{replace=True}: an import never
silently changes the secret of a client that is in use.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Dict, List, Mapping, Optional

from twisted.logger import Logger

from mcpsvc.storage.hashing import hashSecret
from mcpsvc.storage.interfaces import ClientRecord, Conflict, IStore

__all__ = ["exportClients", "importClients", "EXPORT_FORMAT"]

log = Logger()

#: The C{format} marker of L{exportClients} documents.
EXPORT_FORMAT = "mcpsvc-clients"


async def exportClients(store: IStore) -> Dict[str, Any]:
    """
    Return every client as a JSON-serialisable document::

        {"format": "mcpsvc-clients", "version": 1,
         "clients": [{"clientID": ..., "secretHash": "sha256:..." or null,
                      "metadata": {...}, "createdAt": ..., "secretExpiresAt": ...}]}

    Secrets appear only as their stored hashes.
    """
    clients: List[ClientRecord] = await store.listClients()
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
        return [_fromExport(entry, now) for entry in data.get("clients") or []]
    return [_fromGuide(str(clientID), entry, now) for clientID, entry in data.items()]


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
        try:
            await store.createClient(record)
        except Conflict:
            if not replace:
                log.info("Client {clientID} exists: skipped", clientID=record.clientID)
                continue
            await store.updateClient(record)
        count += 1
    return count
