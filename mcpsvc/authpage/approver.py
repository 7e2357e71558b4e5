# -*- test-case-name: mcpsvc.authpage.test.test_consent -*-
"""
The authorization page: L{ConsentApprover} (C{AUTHORIZE_MODE=consent}) and
L{LoginApprover} (C{AUTHORIZE_MODE=login}), both L{IApprover}s plugged into
L{mcpsvc.oauth.app.OAuthApp.authorize}.

How a request flows. C{OAuthApp.authorize} validates the client and the
redirect URI (an error page otherwise, never a redirect), then PKCE, scope
and resource, and asks us. A GET (or a POST without C{decision}) shows the
page: the consent form, or in login mode the sign-in form first. The forms
post back to C{/oauth/authorize} with every original parameter as a hidden
field, so the route validates the request again exactly as on the GET; then
C{decision} says what the person chose:

  - C{approve} / C{deny}: the consent form; we return an L{Approval} or a
    L{Denial} and the route redirects;
  - C{login}: the sign-in form; on success we set the session cookie and
    answer 303 to the same authorization URL (GET), which now shows the
    consent page;
  - C{signout}: ends the sign-in and shows the sign-in form again (303).

CSRF tokens. Each form carries C{csrf_token}, a L{Signer} value (HMAC-SHA256
under a key derived from C{JWT_SECRET}) that is:
  - I{bound}: it holds a hash of the client id, redirect URI, state, code
    challenge and method, scope, resource, the form's purpose and (login
    mode) the signed-in account; a token from another request, another form
    or another account does not verify;
  - I{short-lived}: it expires L{CSRF_LIFETIME} seconds after the page was
    shown (the injected clock);
  - I{single-use}: on use its random id is recorded with
    C{store.storeCode} under the hash C{"csrf:<id>"}, which no real code can
    have (real codes are stored as C{"sha256:<hex>"}, and the token endpoint
    only looks up hashes of presented codes, so a marker can never be
    redeemed). C{storeCode} is an atomic insert-if-absent on every backend
    (it fails with L{Conflict} when the hash exists), so of two concurrent
    submissions exactly one wins, across servers sharing Redis; the marker
    expires with the token and is swept with expired codes. (C{takeToken}
    with a one-token bucket would also work, but its "used" state depends on
    refill arithmetic and may be forgotten once the bucket refills; an
    insert that conflicts says exactly "already used".)
A form that a browser reports as sent from another site (C{Sec-Fetch-Site:
cross-site} or C{same-site}) is refused as well, before anything else: a
token can be fetched by anyone, so this is what stops another site from
posting a form in the person's browser (e.g. signing them in to the
attacker's account). A refused form gets a 400 page saying why, and nothing
else happens.

Subjects. In login mode the subject of the tokens is the account name. In
consent mode nobody signs in, so the subject is a pseudonym for I{this
approval of this client}: C{"consent-" + HMAC(k, client_id, approval_id)}
(32 hex digits) where C{approval_id} is 128 random bits minted when the
person clicks Approve. It is stable for the life of the grant (refreshes
keep it) and, with C{REMEMBER_APPROVALS=on}, across re-authorizations from
the same browser (the approval id lives in that browser's signed approval
cookie for the client). Two people approving the same client get different
subjects, so sessions, audit records and revocations never conflate them;
and the subject reveals neither the approval id nor anything about the
person. (A per-client pseudonym would be what C{auto} mode uses: it would
make every approval of a client the same "person", and a remembered
approval would then hold for any browser.)

Remembered approvals (C{REMEMBER_APPROVALS=on}). An approval is remembered
while the grant it produced is live: when the same subject (the account;
in consent mode, the pseudonym from this browser's approval cookie) already
holds a live refresh family (L{IRefreshStore.listFamilies}) for this client
whose scope covers the requested one, the request is approved without the
page. Revoking the grant (C{mcpsvc grants revoke}, RFC 7009 revocation of
its refresh token, a detected refresh token reuse) ends it. Nothing new is
stored, so the store interfaces are unchanged. Never for loopback redirect
URIs (any local program can listen on a loopback port, and the client id
of a public loopback client is no secret), so those always ask.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import unicodedata
from typing import Any, Callable, List, Optional, Tuple, Union
from urllib.parse import urlencode, urlsplit

from attrs import define, field
from twisted.internet.defer import DeferredSemaphore
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.web.iweb import IRequest

from mcpsvc.audit import audit
from mcpsvc.authpage import page
from mcpsvc.authpage.page import securityHeaders
from mcpsvc.authpage.signing import BadSignature, Signer, bindingOf, deriveKey
from mcpsvc.authpage.users import currentFingerprint, normalizeName, verifyLogin
from mcpsvc.config import Config
from mcpsvc.oauth.app import Approval, AuthorizationRequest, Denial, requestAddress
from mcpsvc.oauth.cimd import documentInfo
from mcpsvc.oauth.redirects import isLoopback, matchesPattern
from mcpsvc.oauth.scopes import OFFLINE_ACCESS
from mcpsvc.storage.hashing import newSecret
from mcpsvc.storage.interfaces import CodeRecord, Conflict

__all__ = [
    "ConsentApprover",
    "LoginApprover",
    "CSRF_LIFETIME",
    "securityHeaders",
    "LOGIN_LIMIT_ACCOUNT",
    "LOGIN_LIMIT_ADDRESS",
    "LOGIN_LIMIT_PAIR",
    "LOGIN_LIMIT_UNDER_ATTACK",
    "displayName",
    "foreignHosts",
]

Decision = Union[Approval, Denial, bytes]

#: How long a shown form may be submitted, seconds.
CSRF_LIFETIME = 600
# Sign-in throttling: (count, seconds) of token buckets that count failed
# sign-ins (an attempt takes a token before the password is checked, so
# that parallel guesses are counted too; a successful one gives its tokens
# back). See LoginApprover._throttle and docs/security.md.
#: Failures of one account from one address: then that pair waits.
LOGIN_LIMIT_PAIR = (5, 900.0)
#: Failures from one address, over all accounts (spraying): then it waits.
LOGIN_LIMIT_ADDRESS = (20, 900.0)
#: Failures of one account from anywhere. Soft: when they are spent the
#: account is under attack, and each address gets LOGIN_LIMIT_UNDER_ATTACK
#: for it; an address that has not failed is never refused.
LOGIN_LIMIT_ACCOUNT = (10, 900.0)
#: Attempts per (account, address) while the account is under attack.
LOGIN_LIMIT_UNDER_ATTACK = (1, 900.0)
#: A client identified by a metadata document is marked as new on the page
#: for this long after this server first saw it, seconds.
FIRST_SEEN_RECENTLY = 86400.0
#: Form fields that belong to the page, never re-posted as request params.
_OWN_FIELDS = frozenset({"csrf_token", "decision", "username", "password"})
#: The revocation-store namespace of ended sign-in sessions.
_SESSION_REVOKED = "authpage-session:"
#: Password checks running at once (each is scrypt N=2**17: 128 MiB and
#: ~0.7 s of a core, in a thread); more sign-ins wait their turn.
PASSWORD_CHECKS_AT_ONCE = 2


#: A host name mentioned in a client's name (with or without a scheme):
#: labels of letters or digits (any script) and a last label of letters.
_MENTIONED_HOST = re.compile(r"(?:[^\W_](?:[\w-]*[^\W_])?\.)+[^\W\d_]{2,63}(?![\w-])")


def displayName(name: str) -> str:
    """
    C{name} as shown on the page: without control, format (invisible,
    direction overriding) characters, which could make it read as
    something else, and with runs of white space made one space.
    """
    kept = "".join(c for c in name if unicodedata.category(c) not in ("Cc", "Cf"))
    return " ".join(kept.split())


def foreignHosts(name: str, documentHost: str) -> List[str]:
    """
    The host names C{name} mentions that are neither C{documentHost} nor
    under it (a name that borrows another site's authority).
    """
    own = documentHost.lower().rstrip(".")
    found: List[str] = []
    for match in _MENTIONED_HOST.finditer(name):
        host = match.group(0).lower().rstrip(".")
        if host != own and not host.endswith("." + own) and host not in found:
            found.append(host)
    return found


def _host(uri: str) -> str:
    return urlsplit(uri).netloc.rpartition("@")[2]


def _ago(seconds: float) -> str:
    """
    C{seconds} ago, in words (for the first-seen marker).
    """
    seconds = max(0.0, seconds)
    if seconds < 120:
        return "just now"
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= size:
            count = int(seconds // size)
            return f"{count} {unit}{'s' if count != 1 else ''} ago"
    return "just now"  # pragma: no cover


def _utc(when: float) -> str:
    from datetime import datetime, timezone

    return datetime.fromtimestamp(when, tz=timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


class FormRefused(Exception):
    """
    A submitted form is not acceptable (400 page).
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.message = message


class _Attempt:
    """
    The buckets one sign-in attempt took from, so they can be refunded
    when it is refused by a throttle or succeeds: only failures count.
    """

    def __init__(self, store: Any, now: float) -> None:
        self.store = store
        self.now = now
        self.taken: List[Tuple[str, Tuple[int, float]]] = []
        self.refusedBecause: Optional[str] = None
        self.retryAfter = 0.0
        self.underAttack = False

    async def take(self, key: str, limit: Tuple[int, float]) -> bool:
        count, seconds = limit
        decision = await self.store.takeToken(key, count, count / seconds, self.now)
        if decision.allowed:
            self.taken.append((key, limit))
        else:
            self.retryAfter = max(self.retryAfter, decision.retryAfter)
        return bool(decision.allowed)

    async def refund(self) -> None:
        taken, self.taken = self.taken, []
        for key, (count, seconds) in taken:
            await self.store.takeToken(key, count, count / seconds, self.now, -1)


@define(kw_only=True)
class _Session:
    account: str
    sessionID: str
    expiresAt: float


@define(kw_only=True)
class _PageApprover:
    """
    What the consent and login approvers share: headers, page context,
    CSRF tokens, cookies and remembered approvals.
    """

    log = Logger()

    config: Config
    store: Any
    clock: IReactorTime
    runInThread: Callable[..., Any]
    _signer: Signer = field(init=False, repr=False)
    _subjectKey: bytes = field(init=False, repr=False)

    def __attrs_post_init__(self) -> None:
        self._signer = Signer(deriveKey(self.config.jwtSecret, "signing"))
        self._subjectKey = deriveKey(self.config.jwtSecret, "consent-subject")

    # -- IApprover

    async def approve(self, request: IRequest, authz: AuthorizationRequest) -> Decision:
        securityHeaders(request, authz.redirectURI)
        decision = authz.params.get("decision") if request.method == b"POST" else None
        if decision is None:
            return await self.show(request, authz)
        try:
            # Defence in depth against cross-site form posts (login CSRF
            # in particular): browsers say where a submission came from.
            if (request.getHeader("sec-fetch-site") or "").lower() in ("cross-site", "same-site"):
                raise FormRefused("cross-site form",
                                  "The form was sent from another site.")
            return await self.decide(request, authz, decision)
        except FormRefused as e:
            audit("authorize.form_refused", "denied", request=request,
                  clientID=authz.client.clientID, reason=e.reason)
            self.log.warn("Authorization form refused for {clientID}: {reason}",
                          clientID=authz.client.clientID, reason=e.reason)
            return await self.message(request, 400, "This form cannot be used",
                                      e.message, e.reason)

    async def show(self, request: IRequest, authz: AuthorizationRequest) -> Decision:
        raise NotImplementedError()

    async def decide(self, request: IRequest, authz: AuthorizationRequest, decision: str) -> Decision:
        raise NotImplementedError()

    # -- helpers

    @property
    def _secureCookies(self) -> bool:
        return self.config.serverURL.lower().startswith("https://")

    def cookieName(self, name: str) -> str:
        """
        C{__Host-} prefixed names when served over https. Browsers refuse
        C{__Host-} cookies without C{Secure}, and C{Secure} cookies are not
        kept over plain http, so a development server on http uses the bare
        name.
        """
        return ("__Host-" if self._secureCookies else "") + name

    def setCookie(self, request: IRequest, name: str, value: str, maxAge: int) -> None:
        request.addCookie(
            self.cookieName(name), value, path="/", max_age=str(max(0, int(maxAge))),
            secure=True if self._secureCookies else None, httpOnly=True, sameSite="lax",
        )

    def getCookie(self, request: IRequest, name: str) -> Optional[str]:
        value = request.getCookie(self.cookieName(name).encode("ascii"))
        if not value:
            return None
        try:
            return value.decode("ascii")  # type: ignore[no-any-return]
        except UnicodeDecodeError:
            return None

    def now(self) -> float:
        return self.clock.seconds()

    def fields(self, authz: AuthorizationRequest) -> List[Tuple[str, str]]:
        return [(k, v) for k, v in authz.params.items() if k not in _OWN_FIELDS]

    def context(self, authz: AuthorizationRequest) -> page.PageContext:
        uri = authz.redirectURI
        host = _host(uri)
        warnings: List[Tuple[str, str]] = []
        if isLoopback(uri):
            warnings.append((
                "This application runs on this computer.",
                f"The answer goes to {host}, an address on the device you are using now. "
                "Approve only if you started this application yourself just now: any "
                "program on this computer could be listening there.",
            ))
        if not any(matchesPattern(uri, p) for p in self.config.redirectPatterns):
            warnings.append((
                "This address is not on this server's list of expected addresses.",
                f"The operator of this server has not listed {host} as a usual destination. "
                "Approve only if you recognise it.",
            ))
        name = authz.client.metadata.get("client_name")
        name = displayName(name) if isinstance(name, str) else None
        documentHost = firstSeen = None
        recently = False
        info = documentInfo(authz.client)
        if info is not None:
            documentHost = str(info.get("host") or "") or None
            others = foreignHosts(name or "", documentHost or "")
            if others and documentHost:
                warnings.insert(0, (
                    f"The name mentions {', '.join(others[:3])[:200]}.",
                    f"This application's document is published by {documentHost}, not by "
                    "the site its name mentions. Approve only if you trust "
                    f"{documentHost}.",
                ))
            age = self.now() - authz.client.createdAt
            recently = age < FIRST_SEEN_RECENTLY
            firstSeen = _ago(age) + " (" + _utc(authz.client.createdAt) + ")"
        return page.PageContext(
            documentHost=documentHost,
            firstSeen=firstSeen,
            firstSeenRecently=recently,
            title=self.config.authorizePageTitle,
            text=self.config.authorizePageText,
            clientName=name or None,
            clientID=authz.client.clientID,
            redirectHost=host,
            redirectURI=uri,
            warnings=warnings,
        )

    def scopes(self, authz: AuthorizationRequest) -> List[str]:
        return authz.scope.split()

    def renewable(self, authz: AuthorizationRequest) -> bool:
        grants = authz.client.metadata.get("grant_types") or ()
        return "refresh_token" in grants or OFFLINE_ACCESS in authz.scope.split()

    async def message(self, request: IRequest, code: int, heading: str, message: str,
                      detail: Optional[str] = None) -> bytes:
        request.setResponseCode(code)
        request.setHeader("Content-Type", "text/html; charset=utf-8")
        return await page.render(page.messagePage(
            self.config.authorizePageTitle, heading, message, detail,
            reference=page.reference(request, "form_refused" if code == 400 else "rate_limited"),
        ))

    async def html(self, request: IRequest, tag: Any, code: int = 200) -> bytes:
        request.setResponseCode(code)
        request.setHeader("Content-Type", "text/html; charset=utf-8")
        return await page.render(tag)

    def seeOther(self, request: IRequest, authz: AuthorizationRequest) -> bytes:
        """
        303 to the authorization request as a GET (after sign-in/out).
        """
        request.setResponseCode(303)
        request.setHeader("Location", "/oauth/authorize?" + urlencode(self.fields(authz)))
        return b""

    # -- CSRF

    def _binding(self, authz: AuthorizationRequest, purpose: str, account: str) -> str:
        return bindingOf(
            purpose, authz.client.clientID, authz.redirectURI, authz.state,
            authz.codeChallenge, authz.codeChallengeMethod, authz.scope, authz.resource,
            account,
        )

    def csrfToken(self, authz: AuthorizationRequest, purpose: str, account: str = "") -> str:
        return self._signer.sign(
            "csrf",
            {"id": newSecret(16), "b": self._binding(authz, purpose, account)},
            self.now() + CSRF_LIFETIME,
        )

    async def checkCSRF(self, authz: AuthorizationRequest, purpose: str, account: str = "") -> None:
        """
        Verify and use up the form's token.

        @raise FormRefused: missing, altered, expired, bound to something
            else, or used already.
        """
        now = self.now()
        try:
            data = self._signer.verify("csrf", authz.params.get("csrf_token"), now)
        except BadSignature as e:
            messages = {
                "missing": "The form was sent without its security token.",
                "expired": "The form was shown too long ago.",
            }
            raise FormRefused(
                "csrf " + str(e),
                messages.get(str(e), "The form's security token is not valid."),
            )
        expected = self._binding(authz, purpose, account)
        if not isinstance(data.get("b"), str) or not hmac.compare_digest(data["b"], expected):
            raise FormRefused(
                "csrf bound to another request",
                "The form does not belong to this authorization request.",
            )
        tokenID = data.get("id")
        if not isinstance(tokenID, str) or not tokenID:
            raise FormRefused("csrf malformed", "The form's security token is not valid.")  # pragma: no cover
        marker = CodeRecord(
            codeHash="csrf:" + hashlib.sha256(tokenID.encode("ascii")).hexdigest(),
            clientID=authz.client.clientID,
            redirectURI=authz.redirectURI,
            codeChallenge="",
            codeChallengeMethod="",
            scope="",
            resource="",
            subject="",
            familyID="",
            expiresAt=float(data["exp"]),
            used=True,
        )
        try:
            await self.store.storeCode(marker)
        except Conflict:
            raise FormRefused("csrf replayed", "The form has been sent already.")

    # -- remembered approvals

    async def remembered(self, authz: AuthorizationRequest, subject: str) -> bool:
        """
        Whether C{subject} holds a live grant for this client covering the
        requested scope (see the module docstring).
        """
        if not self.config.rememberApprovals or isLoopback(authz.redirectURI):
            return False
        wanted = set(authz.scope.split()) - {OFFLINE_ACCESS}
        families = await self.store.listFamilies(authz.client.clientID, self.now())
        # A client identified by a metadata document: only an approval
        # given since its document last changed counts, so a changed
        # document (new redirect URIs, name, keys) asks again.
        info = documentInfo(authz.client)
        since = float(info.get("changed_at") or 0) if info is not None else 0.0
        return any(
            f.subject == subject and f.clientID == authz.client.clientID
            and wanted <= set(f.scope.split()) and f.createdAt >= since
            for f in families
        )

    def remembers(self, authz: AuthorizationRequest) -> bool:
        return self.config.rememberApprovals and not isLoopback(authz.redirectURI)


# --------------------------------------------------------------------------
# consent mode


def _approvalCookie(clientID: str) -> str:
    return "mcpsvc-approval-" + hashlib.sha256(clientID.encode("utf-8")).hexdigest()[:16]


@define(kw_only=True)
class ConsentApprover(_PageApprover):
    """
    C{AUTHORIZE_MODE=consent}: a page with Approve and Deny; nobody signs in.
    """

    def subjectFor(self, clientID: str, approvalID: str) -> str:
        message = clientID.encode("utf-8") + b"\x00" + approvalID.encode("ascii")
        return "consent-" + hmac.new(self._subjectKey, message, hashlib.sha256).hexdigest()[:32]

    def _cookieApproval(self, request: IRequest, clientID: str) -> Optional[str]:
        """
        The approval id this browser holds for C{clientID}, if any.
        """
        try:
            data = self._signer.verify("approval", self.getCookie(request, _approvalCookie(clientID)),
                                       self.now())
        except BadSignature:
            return None
        if data.get("c") != clientID or not isinstance(data.get("a"), str):
            return None
        return data["a"]  # type: ignore[no-any-return]

    async def show(self, request: IRequest, authz: AuthorizationRequest) -> Decision:
        clientID = authz.client.clientID
        if self.remembers(authz):
            approvalID = self._cookieApproval(request, clientID)
            if approvalID is not None:
                subject = self.subjectFor(clientID, approvalID)
                if await self.remembered(authz, subject):
                    audit("authorize.remembered", "success", request=request,
                          clientID=clientID, subject=subject)
                    return Approval(subject=subject)
        tag = page.consentPage(
            self.context(authz), self.scopes(authz), self.fields(authz),
            self.csrfToken(authz, "consent"), renewable=self.renewable(authz),
            remembered=self.remembers(authz),
        )
        return await self.html(request, tag)

    async def decide(self, request: IRequest, authz: AuthorizationRequest, decision: str) -> Decision:
        if decision not in ("approve", "deny"):
            raise FormRefused("unknown decision", "The form was not understood.")
        await self.checkCSRF(authz, "consent")
        clientID = authz.client.clientID
        if decision == "deny":
            audit("authorize.consent", "denied", request=request, clientID=clientID)
            return Denial(error="access_denied", description="The request was denied")
        approvalID = None
        if self.remembers(authz):
            approvalID = self._cookieApproval(request, clientID)
        if approvalID is None:
            approvalID = newSecret(16)
        if self.remembers(authz):
            lifetime = self.config.refreshTokenLifetime
            self.setCookie(
                request, _approvalCookie(clientID),
                self._signer.sign("approval", {"c": clientID, "a": approvalID}, self.now() + lifetime),
                lifetime,
            )
        subject = self.subjectFor(clientID, approvalID)
        audit("authorize.consent", "success", request=request, clientID=clientID, subject=subject)
        return Approval(subject=subject)


# --------------------------------------------------------------------------
# login mode


@define(kw_only=True)
class LoginApprover(_PageApprover):
    """
    C{AUTHORIZE_MODE=login}: sign in with a local account
    (C{LOGIN_USERS_FILE}), then the consent page. The sign-in lasts
    C{LOGIN_SESSION_SECONDS} (a signed cookie bound to the account and its
    current password, with a server-side sign-out list); it never approves
    by itself.
    """

    SESSION_COOKIE = "mcpsvc-login"

    _passwordChecks: DeferredSemaphore = field(
        init=False, repr=False, factory=lambda: DeferredSemaphore(PASSWORD_CHECKS_AT_ONCE)
    )

    async def session(self, request: IRequest) -> Optional[_Session]:
        """
        The live sign-in carried by the request's cookie, if any.
        """
        now = self.now()
        try:
            data = self._signer.verify("login", self.getCookie(request, self.SESSION_COOKIE), now)
        except BadSignature:
            return None
        account, sessionID, print_ = data.get("u"), data.get("s"), data.get("f")
        if not all(isinstance(v, str) and v for v in (account, sessionID, print_)):
            return None
        current = await self.runInThread(currentFingerprint, self.config.loginUsersFile, account)
        if current is None or not hmac.compare_digest(current, print_):
            return None
        if await self.store.isRevoked(_SESSION_REVOKED + sessionID, now):
            return None
        return _Session(account=account, sessionID=sessionID, expiresAt=float(data["exp"]))

    async def loginForm(self, request: IRequest, authz: AuthorizationRequest, *,
                        username: str = "", error: Optional[str] = None) -> bytes:
        tag = page.loginPage(self.context(authz), self.fields(authz),
                             self.csrfToken(authz, "login"), username=username, error=error)
        return await self.html(request, tag)

    async def show(self, request: IRequest, authz: AuthorizationRequest) -> Decision:
        signedIn = await self.session(request)
        if signedIn is None:
            return await self.loginForm(request, authz)
        if await self.remembered(authz, signedIn.account):
            audit("authorize.remembered", "success", request=request,
                  clientID=authz.client.clientID, subject=signedIn.account)
            return Approval(subject=signedIn.account)
        tag = page.consentPage(
            self.context(authz), self.scopes(authz), self.fields(authz),
            self.csrfToken(authz, "consent", signedIn.account),
            account=signedIn.account,
            signoutCSRF=self.csrfToken(authz, "signout", signedIn.account),
            renewable=self.renewable(authz), remembered=self.remembers(authz),
        )
        return await self.html(request, tag)

    async def _throttle(self, request: IRequest, account: str) -> "_Attempt":
        """
        Take this sign-in attempt from the buckets that count failures
        (before the password is checked, so parallel guesses count too):
          - the (account, address) pair's and the address's: when either
            is empty the attempt waits; they only slow down the address
            that has been failing;
          - the account's, from anywhere, which is soft: when it is empty
            the account is under attack, and each address gets one attempt
            per L{LOGIN_LIMIT_UNDER_ATTACK} for it. An address that has not
            failed since always has that attempt, so the right password
            from it is never refused, while a distributed guesser gets one
            guess per address and period.
        """
        address = requestAddress(request)
        pair = bindingOf(account, address)
        attempt = _Attempt(self.store, self.now())
        for key, limit, reason in (
            ("login:pair:" + pair, LOGIN_LIMIT_PAIR, "account and address"),
            ("login:addr:" + address, LOGIN_LIMIT_ADDRESS, "address"),
        ):
            if not await attempt.take(key, limit):
                attempt.refusedBecause = reason
                return attempt
        if not await attempt.take("login:account:" + account, LOGIN_LIMIT_ACCOUNT):
            attempt.underAttack = True
            if not await attempt.take("login:attack:" + pair, LOGIN_LIMIT_UNDER_ATTACK):
                attempt.refusedBecause = "account under attack"
        return attempt

    async def decide(self, request: IRequest, authz: AuthorizationRequest, decision: str) -> Decision:
        if decision == "login":
            return await self._login(request, authz)
        signedIn = await self.session(request)
        account = signedIn.account if signedIn is not None else ""
        if decision == "signout":
            await self.checkCSRF(authz, "signout", account)
            if signedIn is not None:
                await self.store.revokeJTI(_SESSION_REVOKED + signedIn.sessionID, signedIn.expiresAt)
                audit("authorize.signout", "success", request=request, subject=account)
            self.setCookie(request, self.SESSION_COOKIE, "", 0)
            return self.seeOther(request, authz)
        if decision not in ("approve", "deny"):
            raise FormRefused("unknown decision", "The form was not understood.")
        if signedIn is None:
            raise FormRefused("not signed in",
                              "Your sign-in has ended. Start again to sign in.")
        await self.checkCSRF(authz, "consent", account)
        clientID = authz.client.clientID
        if decision == "deny":
            audit("authorize.consent", "denied", request=request, clientID=clientID, subject=account)
            return Denial(error="access_denied", description="The request was denied")
        audit("authorize.consent", "success", request=request, clientID=clientID, subject=account)
        return Approval(subject=account)

    async def _login(self, request: IRequest, authz: AuthorizationRequest) -> Decision:
        await self.checkCSRF(authz, "login")
        typed = authz.params.get("username", "")[:64]
        password = authz.params.get("password", "")
        account = normalizeName(typed)
        attempt = await self._throttle(request, account or "?invalid")
        if attempt.refusedBecause is not None:
            wait = attempt.retryAfter
            await attempt.refund()
            audit("authorize.login", "denied", request=request, reason="throttled",
                  limit=attempt.refusedBecause)
            audit("rate_limit.hit", "denied", request=request, clientID=authz.client.clientID,
                  endpoint="login")
            self.log.warn("Sign-in throttled for {account} from {address} ({why})",
                          account=account, address=requestAddress(request),
                          why=attempt.refusedBecause)
            seconds = max(1, int(wait + 0.999))
            request.setHeader("Retry-After", str(seconds))
            return await self.message(
                request, 429, "Too many sign-in attempts",
                f"Wait {seconds} seconds, then go back to the application and start again.",
                "throttled",
            )
        fingerprint = None
        if account is not None and password:
            fingerprint = await self._passwordChecks.run(
                self.runInThread, verifyLogin, self.config.loginUsersFile, account, password
            )
        if fingerprint is None:
            audit("authorize.login", "failure", request=request, account=account,
                  underAttack=attempt.underAttack)
            self.log.warn("Failed sign-in for {account} from {address}",
                          account=account, address=requestAddress(request))
            return await self.loginForm(request, authz, username=typed,
                                        error="The account name or password is not correct.")
        assert account is not None
        await attempt.refund()
        expiresAt = self.now() + self.config.loginSessionSeconds
        value = self._signer.sign("login", {"u": account, "s": newSecret(16), "f": fingerprint},
                                  expiresAt)
        self.setCookie(request, self.SESSION_COOKIE, value, self.config.loginSessionSeconds)
        audit("authorize.login", "success", request=request, subject=account)
        return self.seeOther(request, authz)
