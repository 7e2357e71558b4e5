# -*- test-case-name: mcpsvc.oauth.test.test_redirects -*-
"""
Redirect URI rules.

At registration (L{validateRedirectURI}): an absolute C{https} URI, or an
C{http} URI on a loopback host (C{127.0.0.1}, C{[::1]}, C{localhost}; RFC
8252 section 7.3); no user information, no fragment, nothing but printable
ASCII; and, for dynamic registration, it must match one of the configured
allow-list patterns (L{matchesPattern}).

At authorization (L{findRegistered}): the requested URI must equal a
registered one character for character, except that for C{http} loopback
URIs the port is ignored (native apps pick a free port at run time).
Nothing else is normalised, so every open-redirect trick (an extra path
segment, an added query, user information, another port, another scheme,
another case) fails.
"""

from __future__ import annotations

import re
from typing import Iterable, Optional, Sequence, Tuple
from urllib.parse import SplitResult, urlsplit

__all__ = [
    "LOOPBACK_HOSTS",
    "RedirectURIError",
    "validateRedirectURI",
    "matchesPattern",
    "findRegistered",
    "isLoopback",
]

#: Hosts whose C{http} redirect URIs are allowed, on any port.
LOOPBACK_HOSTS = ("127.0.0.1", "[::1]", "localhost")

#: Longest redirect URI we accept.
MAX_LENGTH = 2000

# Printable ASCII without space, quotes, angle brackets, backslash, braces,
# backtick, caret or pipe (the characters that have no business in a URI).
_URI_CHARS = re.compile(r"[A-Za-z0-9\-._~:/?#\[\]@!$&'()*+,;=%]+")
_PORT = re.compile(r"[0-9]{1,5}")


class RedirectURIError(ValueError):
    """
    A redirect URI is not acceptable; the message says why (safe to show).
    """


def _hostAndPort(netloc: str) -> Tuple[str, Optional[str]]:
    """
    Split a netloc without user information into host and port text,
    keeping IPv6 brackets on the host.
    """
    if netloc.startswith("["):
        end = netloc.find("]")
        if end < 0:
            raise RedirectURIError("redirect URI has a malformed IPv6 host")
        host, rest = netloc[: end + 1], netloc[end + 1 :]
        if not rest:
            return host, None
        if not rest.startswith(":"):
            raise RedirectURIError("redirect URI has a malformed host")
        return host, rest[1:]
    host, sep, port = netloc.partition(":")
    return host, (port if sep else None)


def _parse(uri: str) -> Tuple[SplitResult, str, Optional[str]]:
    """
    Parse and check the syntax shared by registration and authorization.

    @return: the split URI, its host (lower-case scheme and host are NOT
        applied; callers compare exactly) and its port text.
    @raise RedirectURIError: when the URI is unacceptable.
    """
    if not isinstance(uri, str) or not uri:
        raise RedirectURIError("redirect URI must be a non-empty string")
    if len(uri) > MAX_LENGTH:
        raise RedirectURIError("redirect URI is too long")
    if _URI_CHARS.fullmatch(uri) is None:
        raise RedirectURIError("redirect URI contains characters not allowed in a URI")
    if "#" in uri:
        raise RedirectURIError("redirect URI must not contain a fragment")
    parts = urlsplit(uri)
    if parts.scheme not in ("https", "http"):
        raise RedirectURIError("redirect URI must use https (or http on a loopback host)")
    if not uri.startswith(parts.scheme + "://"):
        raise RedirectURIError("redirect URI must be absolute")
    if "@" in parts.netloc:
        raise RedirectURIError("redirect URI must not contain user information")
    host, port = _hostAndPort(parts.netloc)
    if not host:
        raise RedirectURIError("redirect URI has no host")
    if port is not None and (_PORT.fullmatch(port) is None or not 0 < int(port) < 65536):
        raise RedirectURIError("redirect URI has an invalid port")
    if "\\" in uri or parts.path.startswith("//"):
        raise RedirectURIError("redirect URI has an ambiguous path")
    return parts, host, port


def isLoopback(uri: str) -> bool:
    """
    Whether C{uri} is an C{http} URI on a loopback host.
    """
    try:
        parts, host, _ = _parse(uri)
    except RedirectURIError:
        return False
    return parts.scheme == "http" and host.lower() in LOOPBACK_HOSTS


def validateRedirectURI(uri: str, patterns: Optional[Sequence[str]] = None) -> str:
    """
    Validate a redirect URI presented at registration.

    @param patterns: allow-list patterns (see L{matchesPattern}); C{None}
        means no allow-list (administrative registration). An empty
        sequence also means no allow-list.
    @return: C{uri} unchanged.
    @raise RedirectURIError: when the URI is unacceptable.
    """
    parts, host, _ = _parse(uri)
    if parts.scheme == "http" and host.lower() not in LOOPBACK_HOSTS:
        raise RedirectURIError(
            "redirect URI must use https unless its host is 127.0.0.1, [::1] or localhost"
        )
    if patterns and not any(matchesPattern(uri, p) for p in patterns):
        raise RedirectURIError("redirect URI is not allowed by this server's registration policy")
    return uri


def _globToRegex(glob: str, star: str) -> str:
    return star.join(re.escape(piece) for piece in glob.split("*"))


def matchesPattern(uri: str, pattern: str) -> bool:
    """
    Whether C{uri} matches the allow-list C{pattern}.

    A pattern is a URI in which C{*} is a wildcard: in the host it stands
    for one DNS label (C{https://*.service-now.com/oauth_redirect.do}
    matches C{https://dev12345.service-now.com/oauth_redirect.do} but not
    C{https://a.b.service-now.com/...} or C{https://evil.com/.service-now.com/...});
    in the path and query it stands for any run of characters. Scheme and
    host compare case-insensitively; for loopback C{http} patterns, the
    port of C{uri} is ignored.
    """
    try:
        parts, host, port = _parse(uri)
    except RedirectURIError:
        return False
    pScheme, sep, pRest = pattern.partition("://")
    if not sep or pScheme.lower() != parts.scheme:
        return False
    slash = pRest.find("/")
    pNetloc, pPathQuery = (pRest, "") if slash < 0 else (pRest[:slash], pRest[slash:])
    if "@" in pNetloc:
        return False
    try:
        pHost, pPort = _hostAndPort(pNetloc)
    except RedirectURIError:
        return False
    loopback = parts.scheme == "http" and host.lower() in LOOPBACK_HOSTS
    hostRegex = _globToRegex(pHost.lower(), "[a-z0-9](?:[a-z0-9-]*[a-z0-9])?")
    if re.fullmatch(hostRegex, host.lower()) is None:
        return False
    if not loopback and pPort != port:
        return False
    pathQuery = parts.path + ("?" + parts.query if parts.query or uri.endswith("?") else "")
    if not pPathQuery:
        pPathQuery = "/"
        if pathQuery == "":
            pathQuery = "/"
    return re.fullmatch(_globToRegex(pPathQuery, ".*"), pathQuery, re.DOTALL) is not None


def _withoutPort(parts: SplitResult, host: str) -> str:
    return parts._replace(netloc=host).geturl()


def findRegistered(requested: str, registered: Iterable[str]) -> Optional[str]:
    """
    Find the registered redirect URI that C{requested} matches.

    @return: C{requested} (the URI to redirect to) when it equals a
        registered URI exactly, or differs from a registered C{http}
        loopback URI only in its port; C{None} otherwise (including when
        C{requested} is malformed).
    """
    try:
        parts, host, _ = _parse(requested)
    except RedirectURIError:
        return None
    registered = list(registered)
    if requested in registered:
        return requested
    if parts.scheme != "http" or host.lower() not in LOOPBACK_HOSTS:
        return None
    wanted = _withoutPort(parts, host)
    for candidate in registered:
        try:
            cParts, cHost, _ = _parse(candidate)
        except RedirectURIError:
            continue
        if cParts.scheme == "http" and _withoutPort(cParts, cHost) == wanted:
            return requested
    return None
