# -*- test-case-name: mcpsvc.authpage.test.test_page -*-
"""
The HTML of the authorization page, built with L{twisted.web.template}
(every string is escaped when flattened), with no JavaScript at all and one
small stylesheet allowed by its hash in the C{Content-Security-Policy}.
"""

from __future__ import annotations

import base64
import hashlib
import re
from datetime import datetime, timezone
from typing import Any, List, Mapping, Optional, Sequence, Tuple
from urllib.parse import urlsplit

from attrs import frozen
from twisted.web.iweb import IRequest
from twisted.web.template import Tag, flattenString, tags

__all__ = [
    "CSS",
    "CSS_HASH",
    "ScopeText",
    "SCOPE_TEXT",
    "PageContext",
    "consentPage",
    "loginPage",
    "messagePage",
    "errorPage",
    "reference",
    "securityHeaders",
    "render",
]

# No '<', '>' or '&' in here: the flattener would escape them.
CSS = """
:root{color-scheme:light;--ink:#1b1f24;--muted:#4b5563;--line:#d0d7de;--accent:#0b57d0;
--accent-ink:#fff;--warn-bg:#fff4e5;--warn-line:#b54708;--warn-ink:#5a2a00;--bad:#b42318;
--page:#f3f4f6;--card:#fff;--mono:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace}
*{box-sizing:border-box}
html{font-family:system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif;
font-size:100%;line-height:1.5;color:var(--ink);background:var(--page)}
body{margin:0;padding:clamp(0.75rem,3vw,2rem) clamp(0.75rem,4vw,2rem)}
main{max-width:40rem;margin:0 auto;background:var(--card);border:1px solid var(--line);
border-radius:12px;padding:clamp(1.25rem,4vw,2rem);box-shadow:0 1px 3px rgba(0,0,0,.08)}
.brand{margin:0 0 .25rem;font-size:.875rem;font-weight:600;letter-spacing:.02em;
text-transform:uppercase;color:var(--muted)}
h1{font-size:clamp(1.35rem,4.5vw,1.75rem);line-height:1.25;margin:0 0 .75rem}
h2{font-size:.8125rem;text-transform:uppercase;letter-spacing:.04em;color:var(--muted);
margin:1.25rem 0 .25rem}
p{margin:0 0 .75rem}
.operator{color:var(--muted);white-space:pre-line}
.client{font-size:1.25rem;font-weight:600;margin:0;overflow-wrap:anywhere}
.note{font-size:.875rem;color:var(--muted)}
.host{font-family:var(--mono);font-size:clamp(1.2rem,5vw,1.6rem);font-weight:700;
margin:0;padding:.5rem .75rem;border:2px solid var(--ink);border-radius:8px;
overflow-wrap:anywhere;background:#f6f8fa}
.uri{font-family:var(--mono);font-size:.8125rem;color:var(--muted);overflow-wrap:anywhere;
margin-top:.375rem}
.warning{background:var(--warn-bg);border:1px solid var(--warn-line);border-left-width:6px;
color:var(--warn-ink);border-radius:8px;padding:.625rem .875rem;margin:.75rem 0;
font-size:.9375rem}
.warning strong{display:block}
.error{border-color:var(--bad);color:var(--bad);background:#fef3f2}
ul.scopes{list-style:none;margin:0;padding:0}
ul.scopes li{padding:.5rem 0;border-top:1px solid var(--line)}
ul.scopes li:first-child{border-top:0}
.scope-name{font-weight:600;display:block}
.scope-id{font-family:var(--mono);font-size:.75rem;color:var(--muted)}
.account{display:flex;flex-wrap:wrap;gap:.5rem;align-items:center;justify-content:space-between;
font-size:.9375rem;margin:0 0 1rem;padding:.5rem .75rem;background:#f6f8fa;border-radius:8px}
.account form{margin:0}
label{display:block;font-weight:600;margin:1rem 0 .25rem}
input[type=text],input[type=password]{width:100%;font:inherit;padding:.625rem .75rem;
border:1px solid #6b7280;border-radius:8px;min-height:44px;color:var(--ink);background:#fff}
.actions{display:flex;flex-wrap:wrap;gap:.75rem;margin-top:1.25rem}
.actions button{flex:1 1 10rem}
button{font:inherit;font-weight:600;min-height:44px;padding:.625rem 1.25rem;border-radius:8px;
cursor:pointer;border:1px solid #6b7280;background:#fff;color:var(--ink)}
button.primary{background:var(--accent);border-color:var(--accent);color:var(--accent-ink)}
button.link{min-height:36px;padding:.25rem .75rem;font-weight:500}
button:hover{filter:brightness(.95)}
:focus-visible{outline:3px solid var(--accent);outline-offset:3px}
input:focus-visible{outline-offset:1px}
.fine{font-size:.8125rem;color:var(--muted);margin:1rem 0 0}
.admin{margin:1.25rem 0 0;padding:.75rem .875rem;border:1px solid var(--line);border-radius:8px;
background:#f6f8fa;font-size:.9375rem}
.admin h2{margin:0 0 .375rem}
dl.ref{display:grid;grid-template-columns:max-content 1fr;gap:.125rem .75rem;margin:.5rem 0 0;
font-size:.8125rem}
dl.ref dt{color:var(--muted)}
dl.ref dd{margin:0;font-family:var(--mono);overflow-wrap:anywhere}
"""

#: The CSP source allowing exactly L{CSS}.
CSS_HASH = "'sha256-" + base64.b64encode(hashlib.sha256(CSS.encode("utf-8")).digest()).decode("ascii") + "'"


@frozen
class ScopeText:
    title: str
    description: str


#: Plain-language descriptions of the scopes in L{mcpsvc.oauth.scopes}.
SCOPE_TEXT: Mapping[str, ScopeText] = {
    "mcp:tools": ScopeText(
        "Use the tools on this server",
        "Run the tools this server offers, on your behalf. Tools can take actions, "
        "not only read.",
    ),
    "mcp:read": ScopeText(
        "See what this server offers",
        "List the available tools and read the information this server exposes.",
    ),
    "mcp:write": ScopeText(
        "Change and delete data",
        "Run the tools that write, replace or delete data on this server (for example "
        "writing files), on your behalf.",
    ),
    "offline_access": ScopeText(
        "Stay connected",
        "Keep access while you are away, without asking you again.",
    ),
}


@frozen(kw_only=True)
class PageContext:
    """
    What every page shows about the request.
    """

    title: str
    text: Optional[str]
    clientName: Optional[str]
    clientID: str
    redirectHost: str
    redirectURI: str
    warnings: Sequence[Tuple[str, str]] = ()
    action: str = "/oauth/authorize"
    #: For a client identified by a metadata document (CIMD): the host
    #: that publishes it, shown prominently.
    documentHost: Optional[str] = None
    #: For such a client: when this server first saw it (text), and
    #: whether that was recently (then marked as new).
    firstSeen: Optional[str] = None
    firstSeenRecently: bool = False


def _document(heading: str, title: str, *body: Any) -> Tag:
    return tags.html(lang="en")(
        tags.head(
            tags.meta(charset="utf-8"),
            tags.meta(name="viewport", content="width=device-width, initial-scale=1"),
            tags.meta(name="referrer", content="no-referrer"),
            tags.meta(name="robots", content="noindex, nofollow"),
            tags.title(heading, " \N{EM DASH} ", title),
            tags.style(CSS),
        ),
        tags.body(Tag("main")(*body)),
    )


def _hidden(fields: Sequence[Tuple[str, str]]) -> List[Tag]:
    return [tags.input(type="hidden", name=name, value=value) for name, value in fields]


def _clientBlock(ctx: PageContext) -> List[Any]:
    if ctx.clientName:
        name: Any = tags.p(ctx.clientName, class_="client", id="client-name")
        note = "This name was provided by the application itself; mcpsvc has not verified it."
        if ctx.documentHost:
            note = ("This name was published by the application at the address below; "
                    "mcpsvc has not verified it.")
    else:
        name = tags.p("Unnamed application", class_="client", id="client-name")
        note = "The application did not give a name."
    document: List[Any] = []
    if ctx.documentHost:
        document = [
            tags.h2("Published by", id="document-label"),
            tags.p(ctx.documentHost, class_="host", id="document-host",
                   **{"aria-describedby": "document-label"}),
            tags.p("The application describes itself in a document on this site: it is "
                   "whoever controls " + ctx.documentHost + ".", class_="note"),
        ]
        if ctx.firstSeen:
            seen: Any = tags.p("First seen by this server: ", ctx.firstSeen, class_="note",
                               id="first-seen")
            if ctx.firstSeenRecently:
                seen = tags.div(
                    tags.strong("New application"),
                    tags.span("This server first saw this application " + ctx.firstSeen
                              + ": it has not been used here before that. Approve only if you "
                              "trust " + ctx.documentHost + "."),
                    class_="warning", role="note", id="first-seen",
                )
            document.append(seen)
    return [
        tags.h2("Application"),
        name,
        tags.p(note, class_="note"),
        *document,
        tags.h2("Will send you back to", id="redirect-label"),
        tags.p(ctx.redirectHost, class_="host", id="redirect-host", **{"aria-describedby": "redirect-label"}),
        tags.p(ctx.redirectURI, class_="uri", id="redirect-uri"),
        *[
            tags.div(tags.strong(head), tags.span(text), class_="warning", role="note")
            for head, text in ctx.warnings
        ],
    ]


def _header(ctx: PageContext, heading: str) -> List[Any]:
    out: List[Any] = [tags.p(ctx.title, class_="brand"), tags.h1(heading, id="heading")]
    if ctx.text:
        out.append(tags.p(ctx.text, class_="operator"))
    return out


def consentPage(
    ctx: PageContext,
    scopes: Sequence[str],
    fields: Sequence[Tuple[str, str]],
    csrf: str,
    *,
    account: Optional[str] = None,
    signoutCSRF: Optional[str] = None,
    renewable: bool = False,
    remembered: bool = False,
) -> Tag:
    """
    The page asking the person to approve or deny.
    """
    heading = "Allow this application to use " + ctx.title + "?"
    body: List[Any] = []
    if account is not None:
        signout = []
        if signoutCSRF is not None:
            signout = [
                tags.form(method="post", action=ctx.action)(
                    *_hidden(fields),
                    tags.input(type="hidden", name="csrf_token", value=signoutCSRF),
                    tags.button("Sign out", type="submit", name="decision", value="signout", class_="link"),
                )
            ]
        body.append(tags.div(tags.span("Signed in as ", tags.strong(account, id="account")),
                             *signout, class_="account"))
    body += _header(ctx, heading)
    body += _clientBlock(ctx)
    items = []
    for scope in scopes:
        text = SCOPE_TEXT.get(scope, ScopeText(scope, "A permission this server does not describe."))
        items.append(
            tags.li(
                tags.span(text.title, class_="scope-name"),
                tags.span(text.description), " ",
                tags.span("(", scope, ")", class_="scope-id"),
                **{"data-scope": scope},
            )
        )
    body.append(tags.h2("It will be able to", id="scopes-label"))
    body.append(tags.ul(*items, class_="scopes", **{"aria-labelledby": "scopes-label"}))
    if renewable:
        body.append(tags.p(
            "Access lasts until it is revoked: the application can renew it without asking you again.",
            class_="note",
        ))
    body.append(
        tags.form(method="post", action=ctx.action, id="consent")(
            *_hidden(fields),
            tags.input(type="hidden", name="csrf_token", value=csrf),
            tags.div(class_="actions")(
                tags.button("Deny", type="submit", name="decision", value="deny", id="deny"),
                tags.button("Approve", type="submit", name="decision", value="approve",
                            id="approve", class_="primary"),
            ),
        )
    )
    fine = "Only approve if you started this connection yourself and you recognise the address above."
    if remembered:
        fine += " Your approval will be remembered for this application until it is revoked."
    body.append(tags.p(fine, class_="fine"))
    body.append(tags.p("Client ID: ", tags.span(ctx.clientID, class_="scope-id", id="client-id"),
                       class_="fine"))
    return _document("Authorize " + (ctx.clientName or "application"), ctx.title, *body)


def loginPage(
    ctx: PageContext,
    fields: Sequence[Tuple[str, str]],
    csrf: str,
    *,
    username: str = "",
    error: Optional[str] = None,
) -> Tag:
    """
    The sign-in form shown before the consent page in login mode.
    """
    body: List[Any] = _header(ctx, "Sign in to continue")
    if error:
        body.append(tags.div(tags.strong("Sign-in failed"), tags.span(error),
                             class_="warning error", role="alert", id="login-error"))
    body += _clientBlock(ctx)
    body.append(
        tags.form(method="post", action=ctx.action, id="login")(
            *_hidden(fields),
            tags.input(type="hidden", name="csrf_token", value=csrf),
            tags.label("Account name", for_="username"),
            tags.input(type="text", id="username", name="username", value=username,
                       autocomplete="username", required="", autocapitalize="none",
                       spellcheck="false", maxlength="64", **({} if username else {"autofocus": ""})),
            tags.label("Password", for_="password"),
            tags.input(type="password", id="password", name="password",
                       autocomplete="current-password", required="", maxlength="1024",
                       **({"autofocus": ""} if username else {})),
            tags.div(class_="actions")(
                tags.button("Sign in", type="submit", name="decision", value="login",
                            id="signin", class_="primary"),
            ),
        )
    )
    body.append(tags.p("After signing in you will be asked to approve or deny the application.",
                       class_="fine"))
    return _document("Sign in", ctx.title, *body)


def messagePage(title: str, heading: str, message: str, detail: Optional[str] = None, *,
                reference: Sequence[Tuple[str, str]] = ()) -> Tag:
    """
    A page explaining a refused form (the request is not redirected): the
    person can start again from the application.
    """
    return errorPage(
        title, heading, message,
        advice="Go back to the application and start again.",
        admin="If it keeps happening, tell the administrator of this server, with these "
              "details:",
        detail=detail, reference=reference,
    )


def errorPage(title: str, heading: str, message: str, *, advice: str, admin: str,
              detail: Optional[str] = None,
              reference: Sequence[Tuple[str, str]] = ()) -> Tag:
    """
    A page explaining an error of the authorization endpoint that is shown
    here rather than sent back to the application: what went wrong
    (C{message}), what the person can do (C{advice}), and what to tell the
    administrator (C{admin}, then the C{reference} details: the error code,
    the request id that the server's log carries, the time).
    """
    body: List[Any] = [tags.p(title, class_="brand"), tags.h1(heading, id="heading"),
                       tags.p(message, id="message")]
    if detail:
        body.append(tags.p("Reason: ", tags.code(detail, id="reason"), class_="note"))
    body.append(tags.div(tags.strong("What you can do"), tags.span(advice, id="advice"),
                         class_="warning", role="note"))
    items: List[Any] = []
    for label, value in reference:
        items += [tags.dt(label), tags.dd(value, **{"data-ref": label.lower().replace(" ", "-")})]
    admin_: List[Any] = [tags.h2("For the administrator", id="admin-label"),
                         tags.p(admin, id="admin")]
    if items:
        admin_.append(tags.dl(*items, class_="ref", **{"aria-labelledby": "admin-label"}))
    body.append(tags.div(*admin_, class_="admin"))
    body.append(tags.p("You can close this window.", class_="fine"))
    return _document(heading, title, *body)


def reference(request: IRequest, error: str, **more: Optional[str]) -> List[Tuple[str, str]]:
    """
    The details an administrator needs to find a request in the server's
    log: the error code, the request id (also the C{X-Request-ID} response
    header), the time it arrived, and C{more} (label: value, when set;
    values are cut to 200 characters).
    """
    items = [("Error", error)]
    requestID = getattr(request, "requestID", None)
    if requestID:
        items.append(("Request ID", str(requestID)))
    receivedAt = getattr(request, "receivedAt", None)
    if receivedAt:
        when = datetime.fromtimestamp(float(receivedAt), tz=timezone.utc)
        items.append(("Time", when.strftime("%Y-%m-%d %H:%M:%S UTC")))
    for label, value in more.items():
        if value:
            items.append((label.replace("_", " "), value[:200]))
    return items


#: What an origin must look like to be written into the CSP header.
_CSP_ORIGIN = re.compile(r"https?://[A-Za-z0-9.\-]+(:[0-9]{1,5})?|http://\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?")


def _origin(uri: str) -> Optional[str]:
    """
    The origin of C{uri} as a CSP source, or C{None} if it has characters
    that could not safely go into the header (then only C{'self'} is
    allowed, and the browser refuses the redirect: fail closed).
    """
    parts = urlsplit(uri)
    origin = f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}"
    return origin if _CSP_ORIGIN.fullmatch(origin) else None


def securityHeaders(request: IRequest, redirectURI: Optional[str]) -> None:
    """
    The headers of every authorization page response (and its redirects),
    error pages included. C{form-action} allows our own origin and the
    redirect URI's origin: a form submission's redirect is checked against
    it too.
    """
    formAction = "'self'"
    origin = _origin(redirectURI) if redirectURI else None
    if origin is not None:
        formAction += " " + origin
    request.setHeader(
        "Content-Security-Policy",
        f"default-src 'none'; style-src {CSS_HASH}; form-action {formAction}; "
        "frame-ancestors 'none'; base-uri 'none'",
    )
    request.setHeader("X-Frame-Options", "DENY")
    request.setHeader("Cache-Control", "no-store")
    request.setHeader("Pragma", "no-cache")
    request.setHeader("Referrer-Policy", "no-referrer")
    request.setHeader("X-Content-Type-Options", "nosniff")


async def render(tag: Tag) -> bytes:
    """
    Flatten C{tag} to a complete HTML document.
    """
    body: bytes = await flattenString(None, tag)
    return b"<!DOCTYPE html>\n" + body
