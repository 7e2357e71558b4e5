# -*- test-case-name: mcpsvc.oauth.test.test_clients -*-
"""
The scopes mcpsvc knows, and how requests for them are read.

  - C{mcp:read}: discover and read (C{tools/list}, C{resources/*},
    C{prompts/*}, C{completion/complete}, C{server/discover});
  - C{mcp:tools}: call tools (C{tools/call}); includes C{mcp:read};
  - C{mcp:write}: call the tools that declare it (C{Tool.requiredScope}),
    those that change or delete data (C{file_write}); includes
    C{mcp:tools} and C{mcp:read};
  - C{offline_access}: accepted (OIDC-style clients such as the MCP Python
    SDK may ask for it) but changes nothing: a refresh token is issued
    whenever the client registered the C{refresh_token} grant. It is
    advertised by the authorization server, never by the protected
    resource (MCP 2026: SHOULD NOT appear in PRM or challenges).

Unknown scopes are handled leniently, everywhere: they are dropped, never
refused (ServiceNow's admin form and guide examples send C{openid email
profile}, and refusing them would break the connection for no security
gain). A request that names only unknown scopes is treated as a request
without C{scope}: it gets the default scopes (C{mcp:tools mcp:read}) that
the client registered. Scope lists are split on spaces and on commas
(ServiceNow sends comma lists).

A client that registers without naming scopes may ask for every scope
(L{REGISTERED_SCOPES}), but gets only L{DEFAULT_SCOPES} unless it asks:
C{mcp:write} is granted only to a request that names it, which the
consent page then shows (step-up authorization, MCP 2025-11-25).
"""

from __future__ import annotations

import re
from typing import AbstractSet, FrozenSet, Iterable, List, Optional

__all__ = [
    "MCP_TOOLS",
    "MCP_READ",
    "MCP_WRITE",
    "OFFLINE_ACCESS",
    "KNOWN_SCOPES",
    "RESOURCE_SCOPES",
    "DEFAULT_SCOPES",
    "REGISTERED_SCOPES",
    "InvalidScope",
    "effectiveScopes",
    "missingScopes",
    "parseScope",
    "knownScopes",
    "formatScope",
    "grantScope",
]

MCP_TOOLS = "mcp:tools"
MCP_READ = "mcp:read"
MCP_WRITE = "mcp:write"
OFFLINE_ACCESS = "offline_access"

#: Every scope we understand, in the order we list them.
KNOWN_SCOPES = (MCP_TOOLS, MCP_READ, MCP_WRITE, OFFLINE_ACCESS)
#: The scopes the protected resource (C{/mcp}) advertises and checks.
RESOURCE_SCOPES = (MCP_TOOLS, MCP_READ, MCP_WRITE)
#: What a grant carries when the request names no known scope.
DEFAULT_SCOPES = (MCP_TOOLS, MCP_READ)
#: What a client may ask for when it registered without naming scopes.
REGISTERED_SCOPES = RESOURCE_SCOPES
#: The hierarchy: a scope includes these.
_INCLUDES = {
    MCP_WRITE: frozenset({MCP_TOOLS, MCP_READ}),
    MCP_TOOLS: frozenset({MCP_READ}),
}

_SPLIT = re.compile(r"[\s,]+")


class InvalidScope(ValueError):
    """
    A request asked for a known scope that the client may not have.
    """


def parseScope(value: Optional[str]) -> List[str]:
    """
    Split a scope parameter on whitespace and commas, dropping empties and
    duplicates, keeping order.
    """
    if not value:
        return []
    seen: List[str] = []
    for item in _SPLIT.split(value):
        if item and item not in seen:
            seen.append(item)
    return seen


def knownScopes(scopes: Iterable[str]) -> List[str]:
    """
    Keep only the scopes we know, in canonical order.
    """
    wanted = set(scopes)
    return [s for s in KNOWN_SCOPES if s in wanted]


def formatScope(scopes: Iterable[str]) -> str:
    """
    The space-separated scope string, in canonical order.
    """
    return " ".join(knownScopes(scopes))


def effectiveScopes(scopes: Iterable[str]) -> FrozenSet[str]:
    """
    The scopes held, with those they include (C{mcp:tools} includes
    C{mcp:read}; C{mcp:write} includes both).
    """
    held = set(scopes)
    for scope in list(held):
        held |= _INCLUDES.get(scope, frozenset())
    return frozenset(held)


def missingScopes(held: Iterable[str], needed: Iterable[str]) -> List[str]:
    """
    The scopes of C{needed} that C{held} (with the hierarchy) lacks.
    """
    effective = effectiveScopes(held)
    return [s for s in needed if s not in effective]


def grantScope(
    requested: Optional[str],
    allowed: AbstractSet[str],
    default: Optional[Iterable[str]] = None,
) -> str:
    """
    Decide the scope of a grant.

    @param requested: the C{scope} parameter as sent (C{None}: absent).
    @param allowed: the scopes the client (or the refresh family) holds.
    @param default: what is granted when no known scope is named: these
        of C{allowed} (all of C{allowed} when none of them is in it);
        C{None}: all of C{allowed} (a refresh keeps the family's scope).
    @return: the granted scope string: the known requested scopes, or the
        default when none were named. C{offline_access} may always be
        asked for (it grants nothing).
    @raise InvalidScope: a known scope was requested that is not in
        C{allowed} (a widening).
    """
    wanted = knownScopes(parseScope(requested))
    if not wanted:
        if default is not None:
            defaults = set(default) & set(allowed)
            if defaults:
                return formatScope(defaults)
        return formatScope(allowed)
    extra = [s for s in wanted if s not in allowed and s != OFFLINE_ACCESS]
    if extra:
        raise InvalidScope("scope not allowed for this client: " + " ".join(extra))
    return formatScope(wanted)
