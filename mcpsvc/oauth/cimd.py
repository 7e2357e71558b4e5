# -*- test-case-name: mcpsvc.oauth.test.test_cimd -*-
"""
Client ID Metadata Documents (draft-ietf-oauth-client-id-metadata-document,
adopted by the MCP authorization specification as SEP-991): a client whose
C{client_id} is an https URL is described by the JSON document at that URL,
with no registration step.

L{ClientDocuments.resolve} turns such a C{client_id} into an ordinary
L{ClientRecord}, stored in the store (so that every instance sharing it
sees the same client, and refresh tokens, revocation and the admin
commands work as for registered clients). The record's metadata carries a
C{cimd} object: the document's SHA-256 (C{document_sha256}), when it was
fetched (C{fetched_at}), until when it is fresh (C{fresh_until}), since
when it has had this hash (C{changed_at}) and its host (C{host}); the
record's C{createdAt} is when this server first saw the client.

The decisions are sans-IO and separate:
  - L{checkClientIDURL}: the URL rules (https, a path, no dot segments, no
    fragment, no user information; in development also plain http on a
    loopback host);
  - L{validateDocument}: the document rules: a JSON object whose
    C{client_id} equals the URL exactly; C{client_name} and
    C{redirect_uris}; C{token_endpoint_auth_method} C{none} (the default
    here) or C{private_key_jwt} with C{jwks_uri} or C{jwks}; no shared
    secret of any kind (no C{client_secret*} member, no
    C{client_secret_*} method); a C{jwks}, whatever the method, holds
    public keys only; grant types C{authorization_code} and
    C{refresh_token}: C{client_credentials} is dropped, as a
    document is self-asserted and that grant involves no person; an
    operator who wants such a client registers it (C{mcpsvc clients add}),
    or pre-registers its URL (a record without C{cimd} under that id is
    used as is); then the registration rules of L{mcpsvc.oauth.clients}
    for the rest (a C{jwks} as registration checks it: public keys of
    supported types);
  - L{freshnessLifetime}: how long a fetched document is used without
    fetching it again, from C{Cache-Control} (C{no-store}, C{no-cache},
    C{s-maxage}, C{max-age}, minus C{Age}) or C{Expires}, bounded by
    C{CIMD_CACHE_MIN_SECONDS} and C{CIMD_CACHE_MAX_SECONDS}.

When a fresh copy is needed and the fetch fails for a passing reason (the
client's host is down, times out, answers 5xx or 429), the stored copy is
used for up to C{CIMD_STALE_IF_ERROR} seconds after it went stale, so that
an outage of the client's hosting does not lock its users out; after that,
and at once for a definite answer (a policy refusal, a 404, an invalid
document), the client is refused with C{invalid_client}. Errors are not
cached: the next request fetches again.
"""

from __future__ import annotations

import email.utils
import hashlib
import re
from typing import Any, Dict, List, Mapping, Optional
from urllib.parse import urlsplit

from attrs import frozen
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from mcpsvc.audit import audit
from mcpsvc.oauth.assertion import InvalidJWKS, publicJWKS
from mcpsvc.oauth.clients import ClientMetadataError, normalizeMetadata
from mcpsvc.oauth.fetch import FetchedDocument, FetchError
from mcpsvc.oauth.redirects import LOOPBACK_HOSTS
from mcpsvc.storage.interfaces import ClientRecord, Conflict, NoSuchClient

__all__ = [
    "CIMDError",
    "CIMDSettings",
    "ClientDocuments",
    "MAX_DOCUMENT_BYTES",
    "DEFAULT_LIFETIME",
    "isDocumentURL",
    "checkClientIDURL",
    "validateDocument",
    "freshnessLifetime",
    "documentInfo",
    "isDocumentClient",
]

#: The largest document accepted (the draft suggests 5 kilobytes).
MAX_DOCUMENT_BYTES = 5 * 1024
#: Lifetime of a document served without caching headers (then bounded).
DEFAULT_LIFETIME = 3600.0
#: Methods a document may name: no shared secret is possible without
#: registration.
DOCUMENT_AUTH_METHODS = ("none", "private_key_jwt")
#: JWK members that only private or symmetric keys have.
_PRIVATE_JWK_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})
_MAX_URL = 2000


class CIMDError(Exception):
    """
    A client id metadata document is unusable: the client is refused with
    C{invalid_client}.

    @ivar reason: a short word for logs and the audit trail (a
        L{FetchError} reason, or C{"url"}, C{"client_id"}, C{"metadata"},
        C{"auth_method"}, C{"secret"}, C{"jwks"}).
    @ivar message: why, safe to show the client.
    @ivar detail: more, for the server's log only (or C{None}).
    """

    def __init__(self, reason: str, message: str, detail: Optional[str] = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.detail = detail


@frozen(kw_only=True)
class CIMDSettings:
    """
    The configurable bounds (C{CIMD_CACHE_MIN_SECONDS},
    C{CIMD_CACHE_MAX_SECONDS}, C{CIMD_STALE_IF_ERROR}) and the environment.
    """

    production: bool = True
    minLifetime: float = 60.0
    maxLifetime: float = 86400.0
    staleIfError: float = 3600.0
    #: C{PRIVATE_KEY_JWT}: off refuses documents naming C{private_key_jwt}
    #: (such a client could never authenticate).
    privateKeyJWT: bool = True

    @classmethod
    def fromConfig(cls, config: Any) -> "CIMDSettings":
        return cls(
            production=config.production,
            privateKeyJWT=config.privateKeyJWT,
            minLifetime=float(config.cimdCacheMinSeconds),
            maxLifetime=float(config.cimdCacheMaxSeconds),
            staleIfError=float(config.cimdStaleIfError),
        )


def _isLoopbackHost(host: str) -> bool:
    return host.lower() in LOOPBACK_HOSTS or host.lower() in ("::1",)


def isDocumentURL(clientID: str, production: bool) -> bool:
    """
    Whether C{clientID} is to be resolved as a metadata document URL (it
    may still break the URL rules: L{checkClientIDURL}): an https URL, or
    in development an http URL.
    """
    lowered = clientID[:8].lower()
    return lowered.startswith("https://") or (not production and lowered.startswith("http://"))


def checkClientIDURL(url: str, production: bool) -> None:
    """
    The draft's rules for a client id URL: C{https}, a path (not only
    C{/}), no C{.} or C{..} segment, no fragment, no user information (a
    port and a query are allowed). In development, C{http} on a loopback
    host is accepted too (a test server on this machine).

    @raise CIMDError: C{url}.
    """
    if len(url) > _MAX_URL:
        raise CIMDError("url", "The client_id URL is too long")
    if any(ord(c) <= 0x20 or ord(c) >= 0x7F for c in url):
        raise CIMDError("url", "The client_id URL contains spaces, control or non-ASCII characters")
    try:
        parts = urlsplit(url)
        parts.port
    except ValueError:
        raise CIMDError("url", "The client_id URL is malformed")
    if parts.scheme != "https":
        if production or parts.scheme != "http" or not _isLoopbackHost(parts.hostname or ""):
            raise CIMDError("url", "A client_id URL must use https")
    if "#" in url:
        raise CIMDError("url", "A client_id URL must not contain a fragment")
    if "@" in parts.netloc:
        raise CIMDError("url", "A client_id URL must not contain user information")
    if not parts.hostname:
        raise CIMDError("url", "The client_id URL has no host")
    if parts.path in ("", "/"):
        raise CIMDError("url", "A client_id URL must have a path")
    segments = parts.path.split("/")
    if any(s in (".", "..") or s.lower() in ("%2e", "%2e%2e", ".%2e", "%2e.") for s in segments):
        raise CIMDError("url", "A client_id URL must not contain . or .. path segments")


def _jwksProblem(jwks: Any) -> Optional[str]:
    if not isinstance(jwks, dict) or not isinstance(jwks.get("keys"), list) or not jwks["keys"]:
        return "jwks must be an object with a non-empty keys array"
    for key in jwks["keys"]:
        if not isinstance(key, dict) or not isinstance(key.get("kty"), str):
            return "every key in jwks must be a JWK object with kty"
        if _PRIVATE_JWK_MEMBERS & set(key):
            return "jwks must hold public keys only"
    return None


def validateDocument(url: str, document: Mapping[str, Any], production: bool,
                     privateKeyJWT: bool = True) -> Dict[str, Any]:
    """
    Validate a fetched document for C{url} and return the client metadata
    to store (as registration would normalise it, plus C{jwks_uri} or
    C{jwks} for C{private_key_jwt}).

    @param privateKeyJWT: whether C{private_key_jwt} is enabled.
    @raise CIMDError: with the reason.
    """
    if not isinstance(document, Mapping):
        raise CIMDError("metadata", "The client metadata document is not a JSON object")
    if document.get("client_id") != url:
        raise CIMDError("client_id", "The document's client_id does not equal its URL")
    for name in document:
        if isinstance(name, str) and name.lower().startswith("client_secret"):
            raise CIMDError("secret", f"A client metadata document must not contain "
                                      f"{name[:40]} (no shared secret without registration)")
    if "jwks" in document:
        # Published private keys are compromised whatever the method, and
        # must not be stored.
        problem = _jwksProblem(document["jwks"])
        if problem is not None:
            raise CIMDError("jwks", problem)
    name = document.get("client_name")
    if not isinstance(name, str) or not name.strip():
        raise CIMDError("metadata", "The document has no client_name")
    method = document.get("token_endpoint_auth_method", "none")
    if not isinstance(method, str) or method not in DOCUMENT_AUTH_METHODS:
        raise CIMDError(
            "auth_method",
            f"token_endpoint_auth_method {str(method)[:40]!r} is not allowed in a client "
            "metadata document; use none or private_key_jwt",
        )
    if method == "private_key_jwt" and not privateKeyJWT:
        raise CIMDError("auth_method", "private_key_jwt is not enabled on this server")
    if not document.get("redirect_uris"):
        raise CIMDError("metadata", "The document has no redirect_uris")
    keys: Dict[str, Any] = {}
    if method == "private_key_jwt":
        jwksURI, jwks = document.get("jwks_uri"), document.get("jwks")
        if (jwksURI is None) == (jwks is None):
            raise CIMDError("jwks", "private_key_jwt needs exactly one of jwks_uri and jwks")
        if jwksURI is not None:
            try:
                if not isinstance(jwksURI, str):
                    raise CIMDError("jwks", "jwks_uri must be a string")
                checkClientIDURL(jwksURI, production)
            except CIMDError:
                raise CIMDError("jwks", "jwks_uri must be an https URL with a path")
            keys["jwks_uri"] = jwksURI
        else:
            problem = _jwksProblem(jwks)
            if problem is None:
                try:
                    jwks = publicJWKS(jwks)
                except InvalidJWKS as e:
                    problem = f"jwks: {e}"
            if problem is not None:
                raise CIMDError("jwks", problem)
            keys["jwks"] = jwks
    raw = dict(document)
    grants = document.get("grant_types")
    if isinstance(grants, list) and "client_credentials" in grants:
        # Self-asserted: no person approves that grant, so a document
        # cannot obtain it (an operator registers such clients).
        raw["grant_types"] = [g for g in grants if g != "client_credentials"]
        if not raw["grant_types"]:
            raise CIMDError("metadata", "client_credentials is not available to a client "
                            "identified by a metadata document; register the client instead")
    # The registration rules for the rest; a method they know stands in
    # for private_key_jwt (the one that allows the same grants).
    raw["token_endpoint_auth_method"] = "none" if method == "none" else "client_secret_basic"
    try:
        metadata = normalizeMetadata(raw, patterns=None)
    except ClientMetadataError as e:
        raise CIMDError("metadata", e.description)
    metadata["token_endpoint_auth_method"] = method
    metadata.update(keys)
    return metadata


def _directives(value: str) -> Dict[str, Optional[str]]:
    out: Dict[str, Optional[str]] = {}
    for item in value.split(","):
        name, sep, arg = item.strip().partition("=")
        name = name.strip().lower()
        if name:
            out.setdefault(name, arg.strip().strip('"') if sep else None)
    return out


def _seconds(value: Optional[str]) -> Optional[float]:
    if value is None or not re.fullmatch(r"[0-9]{1,12}", value):
        return None
    return float(value)


def _httpDate(value: Optional[str]) -> Optional[float]:
    if not value:
        return None
    try:
        parsed = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if parsed is None or parsed.tzinfo is None:
        return None
    return parsed.timestamp()


def freshnessLifetime(
    headers: Mapping[str, str], minimum: float, maximum: float,
    default: float = DEFAULT_LIFETIME,
) -> float:
    """
    How long (seconds) a document fetched with C{headers} is fresh: 0 for
    C{no-store} or C{no-cache}; else C{s-maxage} or C{max-age} minus
    C{Age}; else C{Expires} minus C{Date} (an invalid C{Expires} is in
    the past); else C{default}. Always bounded to [C{minimum},
    C{maximum}].
    """
    directives = _directives(headers.get("cache-control", ""))
    lifetime: float
    if "no-store" in directives or "no-cache" in directives:
        lifetime = 0.0
    else:
        maxAge = _seconds(directives.get("s-maxage"))
        if maxAge is None:
            maxAge = _seconds(directives.get("max-age"))
        if maxAge is not None:
            lifetime = maxAge - (_seconds(headers.get("age")) or 0.0)
        elif "expires" in headers:
            expires = _httpDate(headers["expires"])
            date = _httpDate(headers.get("date"))
            lifetime = 0.0 if expires is None or date is None else expires - date
        elif "max-age" in directives or "s-maxage" in directives:
            lifetime = 0.0  # present but unreadable: stale
        else:
            lifetime = default
    return min(max(lifetime, minimum), maximum)


def isDocumentClient(record: ClientRecord) -> bool:
    """
    Whether C{record} was resolved from a metadata document.
    """
    return isinstance(record.metadata.get("cimd"), Mapping)


def documentInfo(record: ClientRecord) -> Optional[Mapping[str, Any]]:
    """
    The C{cimd} object of a resolved client (see the module docstring), or
    C{None} for a registered client.
    """
    info = record.metadata.get("cimd")
    return info if isinstance(info, Mapping) else None


class ClientDocuments:
    """
    Resolve metadata-document client ids into stored client records.

    @ivar store: the L{mcpsvc.storage.interfaces.IClientStore}.
    @ivar fetcher: a L{mcpsvc.oauth.fetch.SafeFetcher} (or anything with
        C{checkURL} and C{fetchJSON}).
    @ivar clock: the time source.
    @ivar settings: the bounds.
    """

    log = Logger()

    def __init__(self, *, store: Any, fetcher: Any, clock: IReactorTime,
                 settings: CIMDSettings) -> None:
        self.store = store
        self.fetcher = fetcher
        self.clock = clock
        self.settings = settings
        self._inflight: Dict[str, List["Deferred[FetchedDocument]"]] = {}

    def handles(self, clientID: str) -> bool:
        """
        Whether C{clientID} is resolved here rather than looked up.
        """
        return isDocumentURL(clientID, self.settings.production)

    def _fetch(self, url: str) -> "Deferred[FetchedDocument]":
        """
        Fetch C{url}, sharing one fetch among concurrent callers.
        """
        waiter: "Deferred[FetchedDocument]" = Deferred()
        waiting = self._inflight.get(url)
        if waiting is not None:
            waiting.append(waiter)
            return waiter
        waiting = self._inflight[url] = [waiter]

        def done(result: Any) -> None:
            for each in self._inflight.pop(url, waiting):
                if isinstance(result, Failure):
                    each.errback(result)
                else:
                    each.callback(result)

        self.fetcher.fetchJSON(url, maxBytes=MAX_DOCUMENT_BYTES).addBoth(done)
        return waiter

    async def resolve(self, clientID: str, request: Any = None) -> ClientRecord:
        """
        The client record for the document at C{clientID}: the stored copy
        while fresh, else a fetched and validated one (stored), else the
        stored copy within the stale-if-error window.

        @raise CIMDError: the client is refused (logged and audited here).
        @raise mcpsvc.storage.interfaces.StoreUnavailable: fail closed.
        """
        try:
            return await self._resolve(clientID, request)
        except CIMDError as e:
            self.log.warn(
                "Client metadata document {clientID} refused ({reason}): {why}",
                clientID=clientID[:200], reason=e.reason,
                why=e.message + (f" ({e.detail})" if e.detail else ""),
            )
            audit("client.metadata_document", "denied", request=request,
                  clientID=clientID, reason=e.reason)
            raise

    async def _resolve(self, clientID: str, request: Any) -> ClientRecord:
        checkClientIDURL(clientID, self.settings.production)
        try:
            # Host lists apply to stored copies too: a host the operator
            # denies now is refused at once.
            self.fetcher.checkURL(clientID)
        except FetchError as e:
            raise CIMDError(e.reason, "The client metadata document cannot be fetched: "
                            + e.message, e.detail)
        stored: Optional[ClientRecord]
        try:
            stored = await self.store.getClient(clientID)
        except NoSuchClient:
            stored = None
        info = documentInfo(stored) if stored is not None else None
        if stored is not None and info is None:
            return stored  # registered by an administrator under this id
        now = self.clock.seconds()
        if stored is not None and info is not None and now < float(info["fresh_until"]):
            return stored
        try:
            fetched = await self._fetch(clientID)
        except FetchError as e:
            if (e.temporary and stored is not None and info is not None
                    and now < float(info["fresh_until"]) + self.settings.staleIfError):
                self.log.warn(
                    "Client metadata document {clientID} could not be refreshed ({reason}: "
                    "{why}); using the copy fetched at {fetchedAt} (stale-if-error)",
                    clientID=clientID, reason=e.reason,
                    why=e.message + (f" ({e.detail})" if e.detail else ""),
                    fetchedAt=info["fetched_at"],
                )
                audit("client.metadata_document", "stale", request=request,
                      clientID=clientID, reason=e.reason)
                return stored
            raise CIMDError(e.reason, "The client metadata document cannot be fetched: "
                            + e.message, e.detail)
        metadata = validateDocument(clientID, fetched.json, self.settings.production,
                                    self.settings.privateKeyJWT)
        digest = "sha256:" + hashlib.sha256(fetched.body).hexdigest()
        changed = info is None or info.get("document_sha256") != digest
        metadata["cimd"] = {
            "document_sha256": digest,
            "fetched_at": fetched.fetchedAt,
            "fresh_until": fetched.fetchedAt + freshnessLifetime(
                fetched.headers, self.settings.minLifetime, self.settings.maxLifetime),
            "changed_at": fetched.fetchedAt if changed or info is None else info["changed_at"],
            "host": (urlsplit(clientID).hostname or "").lower(),
        }
        record = ClientRecord(
            clientID=clientID,
            secretHash=None,
            metadata=metadata,
            createdAt=stored.createdAt if stored is not None else fetched.fetchedAt,
        )
        await self._save(record, stored is None)
        if changed:
            self.log.info(
                "Client metadata document {clientID} {what}: {clientName} "
                "method={method} redirects={redirectURIs} hash={digest}",
                clientID=clientID, what="first seen" if stored is None else "changed",
                clientName=str(metadata.get("client_name"))[:100],
                method=metadata["token_endpoint_auth_method"],
                redirectURIs=metadata["redirect_uris"], digest=digest[:23],
            )
            audit("client.metadata_document", "success", request=request, clientID=clientID,
                  documentHash=digest[:23], firstSeen=stored is None,
                  method=metadata["token_endpoint_auth_method"])
        return record

    async def _save(self, record: ClientRecord, new: bool) -> None:
        """
        Store C{record}, whether or not another request or instance stored
        it meanwhile (the newest fetch wins).
        """
        if new:
            try:
                await self.store.createClient(record)
                return
            except Conflict:
                pass
        try:
            await self.store.updateClient(record)
        except NoSuchClient:
            # Removed meanwhile (mcpsvc clients remove): store it again.
            try:
                await self.store.createClient(record)
            except Conflict:
                await self.store.updateClient(record)

