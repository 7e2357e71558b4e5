# -*- test-case-name: mcpsvc.storage.test -*-
"""
The storage contract: everything mcpsvc must remember goes through these
interfaces.

One store object implements every interface below (L{IStore}); there are
three backends (memory, SQLite, Redis) and one behavioural test suite
(L{mcpsvc.storage.test.base.StoreTestsMixin}).

Conventions:
  - every method returns a L{Deferred}; the failures each can fire with are
    documented per method and are the exception types defined here;
  - times are POSIX seconds as C{float}, always passed in by the caller or
    taken from the store's injected clock; a store never reads the wall clock;
  - secrets (client secrets, refresh tokens, authorization codes) reach the
    store only as hashes (see L{mcpsvc.storage.hashing}); a store never sees
    a plaintext secret;
  - any failure to reach the backing store (connection lost, timeout, SQLite
    busy past its timeout) fires with L{StoreUnavailable} and nothing else.
"""

from __future__ import annotations

from enum import Enum
from typing import Any, Mapping, Optional, Sequence

from attrs import field, frozen
from zope.interface import Attribute, Interface

__all__ = [
    "StoreError",
    "StoreUnavailable",
    "NotFound",
    "NoSuchClient",
    "NoSuchCode",
    "NoSuchFamily",
    "NoSuchSession",
    "NoSuchTask",
    "TooManyTasks",
    "AlreadyUsed",
    "CodeMismatch",
    "Conflict",
    "ClientRecord",
    "CodeRecord",
    "RefreshFamily",
    "RotationOutcome",
    "RotationResult",
    "SessionRecord",
    "TaskRecord",
    "TASK_STATUSES",
    "TERMINAL_TASK_STATUSES",
    "RateDecision",
    "SweepReport",
    "IClientStore",
    "ICodeStore",
    "IRefreshStore",
    "IRevocationStore",
    "ISessionStore",
    "IRateLimitStore",
    "ITaskStore",
    "IAssertionStore",
    "IStore",
    "familyRevocationID",
    "clientRevocationID",
]


def familyRevocationID(familyID: str) -> str:
    """
    The deny-list id under which a revoked refresh family's access tokens
    (claim C{fid}) are refused, all of them, not only the newest.
    """
    return "family:" + familyID


def clientRevocationID(clientID: str) -> str:
    """
    The deny-list id under which a removed client's access tokens are
    refused.
    """
    return "client:" + clientID


# --------------------------------------------------------------------------
# Errors


class StoreError(Exception):
    """
    Base class of every domain error raised by a store.
    """


class StoreUnavailable(StoreError):
    """
    The backing store could not be reached or did not answer in time. The
    HTTP layer turns this into 503 with C{Retry-After}; callers must fail
    closed (never treat it as "not found" or "not revoked").
    """


class NotFound(StoreError):
    """
    Base class of "no such record" errors.
    """


class NoSuchClient(NotFound):
    """
    No OAuth client with that id.
    """


class NoSuchCode(NotFound):
    """
    No authorization code with that hash, or it has expired.
    """


class NoSuchFamily(NotFound):
    """
    No live refresh-token family with that id (unknown, expired or revoked).
    """


class NoSuchSession(NotFound):
    """
    No live MCP session with that id (unknown, expired or deleted).
    """


class NoSuchTask(NotFound):
    """
    No live task has this id (never created, or past its C{expiresAt}).
    """


class TooManyTasks(StoreError):
    """
    A principal already has as many live tasks as the caller allows
    (L{ITaskStore.createTask}'s C{limit}).

    @ivar limit: that number.
    """

    def __init__(self, limit: int) -> None:
        super().__init__(f"at most {limit} live tasks")
        self.limit = limit


class AlreadyUsed(StoreError):
    """
    A single-use authorization code was presented a second time.

    @ivar record: the code's record, so the caller can revoke what the first
        use issued (the refresh family whose id is C{record.familyID}).
    """

    def __init__(self, record: "CodeRecord") -> None:
        super().__init__(record.codeHash)
        self.record = record


class CodeMismatch(StoreError):
    """
    An authorization code was presented by another client, or with a PKCE
    challenge or redirect URI other than the ones it was issued with. The
    code is left as it was (not consumed, nothing revoked): only the client
    it was issued to, with its verifier, can use it or, by replaying it,
    revoke what it produced.

    @ivar field: what did not match: C{"client_id"}, C{"redirect_uri"} or
        C{"code_verifier"}.
    """

    def __init__(self, field: str) -> None:
        super().__init__(field)
        self.field = field


class Conflict(StoreError):
    """
    A record with that key already exists.
    """


# --------------------------------------------------------------------------
# Records


@frozen(kw_only=True)
class ClientRecord:
    """
    A registered OAuth client.

    @ivar clientID: the public client identifier.
    @ivar secretHash: L{mcpsvc.storage.hashing.hashSecret} of the client
        secret, or C{None} for public clients.
    @ivar metadata: the registered RFC 7591 metadata (C{redirect_uris},
        C{grant_types}, C{response_types}, C{token_endpoint_auth_method},
        C{client_name}, C{scope}, ...), JSON-serialisable.
    @ivar createdAt: registration time.
    @ivar secretExpiresAt: 0 for "never".
    @ivar jwks: the inline public keys of a C{private_key_jwt} client.
    @ivar jwksURI: the URL of its public keys.
    """

    clientID: str
    secretHash: Optional[str]
    metadata: Mapping[str, Any]
    createdAt: float
    secretExpiresAt: float = 0

    @property
    def jwks(self) -> Optional[Mapping[str, Any]]:
        """
        The client's inline JWK Set (C{private_key_jwt}), kept in
        C{metadata["jwks"]} under its RFC 7591 name, or C{None}.
        """
        value = self.metadata.get("jwks")
        return value if isinstance(value, Mapping) else None

    @property
    def jwksURI(self) -> Optional[str]:
        """
        Where the client publishes its JWK Set (C{private_key_jwt}), kept in
        C{metadata["jwks_uri"]} under its RFC 7591 name, or C{None}.
        """
        value = self.metadata.get("jwks_uri")
        return value if isinstance(value, str) else None


@frozen(kw_only=True)
class CodeRecord:
    """
    An authorization code, bound to everything the token endpoint must check.

    @ivar codeHash: hash of the code (the code itself is never stored).
    @ivar familyID: the id the refresh family created from this code will
        have, fixed at authorization time, so that a replayed code can revoke
        what its first use issued.
    @ivar used: C{True} once consumed (kept until expiry to detect replay).
    """

    codeHash: str
    clientID: str
    redirectURI: str
    codeChallenge: str
    codeChallengeMethod: str
    scope: str
    resource: str
    subject: str
    familyID: str
    expiresAt: float
    used: bool = False


@frozen(kw_only=True)
class RefreshFamily:
    """
    A refresh-token family: every refresh token descending from one
    authorization grant. Refresh tokens have the form C{<familyID>.<secret>}
    so the family is found without an index; only hashes are stored.

    @ivar currentHash: hash of the one refresh token that may rotate now.
    @ivar previousHash: hash of the token C{currentHash} replaced, honoured
        until C{graceUntil} (retries, two workers racing).
    @ivar sealedSuccessor: the current refresh token encrypted under a key
        derived from the previous token (opaque to the store), so a retry
        within the grace window gets the same successor back; C{None} before
        the first rotation.
    @ivar lastAccessJTI: the C{jti} of the newest access token issued from
        this family, with C{lastAccessExpiresAt}, so revoking the family also
        revokes it.
    @ivar graceReplays: how many times C{previousHash} has been answered
        within its grace window since the last rotation (bounded by the
        caller's C{maxGraceReplays}).
    """

    familyID: str
    clientID: str
    subject: str
    scope: str
    resource: str
    currentHash: str
    createdAt: float
    expiresAt: float
    previousHash: Optional[str] = None
    graceUntil: float = 0
    sealedSuccessor: Optional[str] = None
    lastAccessJTI: Optional[str] = None
    lastAccessExpiresAt: float = 0
    rotations: int = 0
    graceReplays: int = 0


class RotationOutcome(Enum):
    """
    What L{IRefreshStore.rotateRefresh} did.
    """

    ROTATED = "rotated"
    """The presented token was current; the family now has the new one."""

    GRACE = "grace"
    """The presented token was the previous one, within its grace window
    and its bound of replays; only C{graceReplays} (and the newest access
    token) changed; C{result.family.sealedSuccessor} holds the successor."""

    REUSED = "reused"
    """The presented token is one this family really issued (the previous
    one, or one the caller proved to be ours) but it is superseded and its
    grace window, or its bound of replays, is over: the family has been
    revoked."""

    UNKNOWN = "unknown"
    """The presented token is not one this family is known to have issued
    (a forgery, e.g. the family id of an access token plus random bytes):
    nothing changed, nothing was revoked."""


@frozen(kw_only=True)
class RotationResult:
    outcome: RotationOutcome
    family: RefreshFamily


@frozen(kw_only=True)
class SessionRecord:
    """
    An MCP session (Streamable HTTP, handshake era).

    @ivar subject: the token subject the session is bound to.
    @ivar clientID: the OAuth client the session is bound to.
    @ivar expiresAt: idle expiry; L{ISessionStore.touchSession} extends it.
    @ivar data: small JSON-serialisable state (client info, capabilities).
    """

    sessionID: str
    subject: str
    clientID: str
    protocolVersion: str
    createdAt: float
    expiresAt: float
    data: Mapping[str, Any] = field(factory=dict)


#: Every status of a task (tasks extension, SEP-2663).
TASK_STATUSES = ("working", "input_required", "completed", "failed", "cancelled")
#: The statuses a task never leaves.
TERMINAL_TASK_STATUSES = frozenset({"completed", "failed", "cancelled"})


@frozen(kw_only=True)
class TaskRecord:
    """
    A task (2026-07-28 tasks extension): a C{tools/call} running in the
    background on the instance that started it, whose state every instance
    can read.

    @ivar taskID: the unguessable id the client polls with.
    @ivar subject: the token subject the task is bound to.
    @ivar clientID: the OAuth client the task is bound to.
    @ivar method: the request the task runs (C{tools/call}).
    @ivar name: the tool's name.
    @ivar status: one of L{TASK_STATUSES}.
    @ivar statusMessage: a short text about the status, or C{None}.
    @ivar createdAt: when the task was created.
    @ivar updatedAt: when its state last changed.
    @ivar expiresAt: when the store forgets it (creation plus its TTL).
    @ivar pollInterval: seconds the client should wait between polls.
    @ivar version: incremented by every write; L{ITaskStore.replaceTask}
        compares it.
    @ivar leaseUntil: until when the instance running the task vouches
        for it (renewed while the work runs); a task not over whose lease
        has passed is dead (its instance stopped without saying so) and
        does not count against the creation C{limit}. C{0}: no lease.
    @ivar payload: JSON state by status: C{result} (completed), C{error}
        (failed), C{inputRequests} (outstanding requests to the client),
        C{inputResponses} (answers not yet taken by the running work),
        C{keys} (every input request key used, for their uniqueness).
    """

    taskID: str
    subject: str
    clientID: str
    method: str
    name: str
    status: str
    statusMessage: Optional[str] = None
    createdAt: float
    updatedAt: float
    expiresAt: float
    pollInterval: float
    version: int = 1
    payload: Mapping[str, Any] = field(factory=dict)
    leaseUntil: float = 0.0


@frozen(kw_only=True)
class RateDecision:
    """
    The result of taking from a token bucket.

    @ivar allowed: whether the request may proceed.
    @ivar remaining: whole tokens left after this take.
    @ivar retryAfter: seconds until one token is available (0 when allowed).
    """

    allowed: bool
    remaining: int
    retryAfter: float


@frozen(kw_only=True)
class SweepReport:
    """
    How many expired records one sweep removed, by kind.
    """

    removed: Mapping[str, int] = field(factory=dict)

    @property
    def total(self) -> int:
        return sum(self.removed.values())


# --------------------------------------------------------------------------
# Interfaces


class IClientStore(Interface):
    def createClient(record: ClientRecord) -> Any:
        """
        Store a new client. Fires with C{None} once durable; fails with
        L{Conflict} if the id exists.
        """

    def getClient(clientID: str) -> Any:
        """
        Fires with the L{ClientRecord}; fails with L{NoSuchClient}.
        """

    def listClients() -> Any:
        """
        Fires with a list of every L{ClientRecord}, ordered by C{clientID}.
        """

    def updateClient(record: ClientRecord) -> Any:
        """
        Replace the client with C{record.clientID}. Fires with C{None}; fails
        with L{NoSuchClient}.
        """

    def deleteClient(clientID: str) -> Any:
        """
        Remove a client. Fires with C{None}; fails with L{NoSuchClient}.
        """

    def removeIdleDocumentClients(staleBefore: float, now: float) -> Any:
        """
        Remove the records of metadata document clients (a C{cimd} object
        in their metadata, see L{mcpsvc.oauth.cimd}) that have not been
        used since C{staleBefore}, and hold no live refresh family at
        C{now} (not revoked, not expired). A document client's record is
        renewed whenever it is used after its document went stale, so
        C{cimd.fresh_until} earlier than C{staleBefore} means no use since
        (L{mcpsvc.storage._logic.isIdleDocumentClient}). Registered clients
        are never removed. A record renewed meanwhile (its metadata
        changed) is kept. Fires with how many were removed.
        """


class ICodeStore(Interface):
    def storeCode(record: CodeRecord) -> Any:
        """
        Store an authorization code until C{record.expiresAt}. Fires with
        C{None} once durable; fails with L{Conflict} if the hash exists.
        """

    def consumeCode(
        codeHash: str,
        now: float,
        clientID: Optional[str] = None,
        codeChallenge: Optional[str] = None,
        redirectURI: Optional[str] = None,
    ) -> Any:
        """
        Atomically check the code and mark it used, and fire with its
        L{CodeRecord} (as it was before this call, C{used=False}). Exactly
        one of any number of concurrent consumers succeeds.

        Each of C{clientID}, C{codeChallenge} (the challenge computed from
        the presented PKCE verifier) and C{redirectURI} that is not C{None}
        must equal the record's (constant-time for the challenge), else the
        call fails with L{CodeMismatch} and changes nothing, used or not:
        a code presented by another client or without its verifier is
        neither consumed nor treated as a replay.

        Fails with L{AlreadyUsed} (carrying the record) for a used code that
        has not expired and matches, and with L{NoSuchCode} for an unknown
        or expired one.
        """


class IRefreshStore(Interface):
    def createFamily(family: RefreshFamily) -> Any:
        """
        Store a new family. Fires with C{None} once durable; fails with
        L{Conflict} if the id exists.
        """

    def getFamily(familyID: str, now: float) -> Any:
        """
        Fires with the live L{RefreshFamily}; fails with L{NoSuchFamily} if
        it is unknown, expired or revoked.
        """

    def rotateRefresh(
        familyID: str,
        presentedHash: str,
        newHash: str,
        sealedSuccessor: str,
        graceUntil: float,
        accessJTI: str,
        accessExpiresAt: float,
        now: float,
        issued: bool = False,
        maxGraceReplays: int = 1,
    ) -> Any:
        """
        Atomically rotate the family:
          - C{presentedHash == currentHash}: C{previousHash := presentedHash},
            C{currentHash := newHash}, C{sealedSuccessor}, C{graceUntil},
            C{lastAccessJTI}/C{lastAccessExpiresAt} set, C{rotations + 1},
            C{graceReplays := 0}; fires with L{RotationOutcome.ROTATED} and
            the new family;
          - C{presentedHash == previousHash}, C{now < graceUntil} and
            C{graceReplays < maxGraceReplays}: nothing changes except
            C{graceReplays + 1} and C{lastAccessJTI}/C{lastAccessExpiresAt};
            fires with L{RotationOutcome.GRACE} and the family;
          - C{presentedHash == previousHash} otherwise (late, or one replay
            too many), or C{issued} (the caller has proved that the token
            is one this family issued, see
            L{mcpsvc.oauth.refresh.RefreshTokens}): the family is revoked
            (as L{revokeFamily}); fires with L{RotationOutcome.REUSED} and
            the family as it was;
          - otherwise: nothing changes; fires with L{RotationOutcome.UNKNOWN}
            and the family as it is.
        Of two concurrent rotations presenting the same current token,
        exactly one is ROTATED and the other GRACE (with C{maxGraceReplays}
        at least 1). Fails with L{NoSuchFamily} for an unknown, expired or
        revoked family. Hash comparisons are constant-time.
        """

    def revokeFamily(familyID: str, now: float) -> Any:
        """
        Revoke the whole family, and deny-list its C{lastAccessJTI} until
        C{lastAccessExpiresAt} and L{familyRevocationID} until the later of
        the family's C{expiresAt} and C{lastAccessExpiresAt} (every access
        token issued from the family carries its id). Fires with the
        revoked L{RefreshFamily}, or C{None} if there was no live family
        (revocation is idempotent).
        """

    def listFamilies(clientID: Optional[str], now: float) -> Any:
        """
        Fires with the list of live families (of one client, or all).
        """


class IRevocationStore(Interface):
    def revokeJTI(jti: str, expiresAt: float) -> Any:
        """
        Deny-list an access token id until C{expiresAt} (its natural
        expiry). Fires with C{None} once durable.
        """

    def isRevoked(jti: str, now: float) -> Any:
        """
        Fires with C{True} if C{jti} is deny-listed and C{now <
        expiresAt}. Fails with L{StoreUnavailable}, never with C{False},
        when the store cannot answer.
        """

    def isAnyRevoked(ids: Sequence[str], now: float) -> Any:
        """
        L{isRevoked} of several ids in one store round trip (an access
        token's C{jti}, its family's and its client's deny-list ids):
        C{True} if any is deny-listed.
        """


class ISessionStore(Interface):
    def createSession(record: SessionRecord, limit: Optional[int] = None) -> Any:
        """
        Store a new session. Fires with the ids of the sessions it ended to
        make room (see C{limit}), least recently used first; fails with
        L{Conflict} (and changes nothing) when a live session has the same
        id.

        @param limit: when given, the most live sessions one principal may
            have: the live sessions (at C{record.createdAt}) of C{record}'s
            C{subject} and C{clientID} beyond the C{limit - 1} most recently
            used (the latest C{expiresAt} first; ties: the newest
            C{createdAt}, then the greater id) are ended, and the new
            session is always stored. The ending and the storing are one
            atomic step: concurrent creations on any instance never leave
            the principal more than C{limit} live sessions.
        """

    def getSession(sessionID: str, now: float) -> Any:
        """
        Fires with the L{SessionRecord}; fails with L{NoSuchSession} when it
        is unknown, deleted or past C{expiresAt}.
        """

    def touchSession(sessionID: str, expiresAt: float, now: float) -> Any:
        """
        Extend the idle expiry. Fires with C{None}; fails with
        L{NoSuchSession}.
        """

    def deleteSession(sessionID: str) -> Any:
        """
        End a session. Fires with C{True} if it existed, C{False} if not.
        """

    def countSessions(now: float) -> Any:
        """
        Fires with the number of live sessions (for metrics).
        """


class ITaskStore(Interface):
    def createTask(record: TaskRecord, limit: Optional[int] = None) -> Any:
        """
        Store a new task, durably: once this fires, L{getTask} finds it on
        every instance. Fires with C{None}; fails with L{Conflict} when a
        live task has the same id.

        @param limit: when given, the most live tasks one principal may
            have: the creation fails with L{TooManyTasks} (and stores
            nothing) when the tasks of C{record}'s C{subject} and
            C{clientID} that are neither over (L{TERMINAL_TASK_STATUSES})
            nor expired at C{record.createdAt}, and whose C{leaseUntil}
            is C{0} or after C{record.createdAt}, already number C{limit}.
            Counted and created atomically: concurrent creations on any
            instance never exceed it.
        """

    def getTask(taskID: str, now: float) -> Any:
        """
        Fires with the L{TaskRecord}; fails with L{NoSuchTask} when it is
        unknown or past C{expiresAt}. The caller checks the principal.
        """

    def replaceTask(record: TaskRecord, now: float) -> Any:
        """
        Compare-and-set: atomically store C{record} in place of the live
        task with its id if, and only if, the stored task's C{version} is
        C{record.version - 1}. Fires with C{True} when it replaced it,
        C{False} when another write came first (read it again and retry);
        fails with L{NoSuchTask} when the task is unknown or past
        C{expiresAt}. The new record's C{expiresAt} sets its lifetime.
        """


class IRateLimitStore(Interface):
    def takeToken(
        key: str, capacity: int, refillPerSecond: float, now: float, cost: int = 1
    ) -> Any:
        """
        Atomically take C{cost} tokens from the bucket C{key} (created full
        with C{capacity} tokens, refilled continuously at C{refillPerSecond}).
        Fires with a L{RateDecision}. A negative C{cost} gives tokens back
        (always allowed, never beyond C{capacity}): a take made before an
        outcome was known, refunded when it is (a successful sign-in). A
        bucket left idle long enough to be full again may be forgotten.
        """


class IAssertionStore(Interface):
    def useAssertionID(clientID: str, jti: str, expiresAt: float, now: float) -> Any:
        """
        Record the use of a client assertion's C{jti} (RFC 7523 section 3:
        an assertion is used once) by C{clientID}, until C{expiresAt}.
        Atomic: of any number of concurrent calls with the same client and
        C{jti}, on any instance, exactly one fires with C{True} (first use,
        now recorded); the others, and any later call before C{expiresAt},
        fire with C{False} (a replay). An entry past its C{expiresAt} at
        C{now} counts as absent (and is overwritten). A C{expiresAt} not
        after C{now} stores nothing and fires with C{True}. Ids are scoped
        by client: two clients may use the same C{jti}.
        """


class IStore(
    IClientStore,
    ICodeStore,
    IRefreshStore,
    IRevocationStore,
    ISessionStore,
    IRateLimitStore,
    ITaskStore,
    IAssertionStore,
):
    """
    Everything above, plus the operational hooks.
    """

    backendName = Attribute("C{'memory'}, C{'sqlite'} or C{'redis'}.")

    def ping() -> Any:
        """
        Fires with C{None} when the backing store answers; fails with
        L{StoreUnavailable} otherwise. Used by C{/ready}.
        """

    def sweep(now: float) -> Any:
        """
        Remove records expired at C{now} that the backend does not expire by
        itself. Fires with a L{SweepReport}.
        """
