# -*- test-case-name: mcpsvc.oauth.test.test_clients -*-
"""
The scopes mcpsvc knows, and how requests for them are read.

  - C{mcp:tools}: call tools (C{tools/call});
  - C{mcp:read}: discover and read (C{tools/list}, and later resources);
  - C{offline_access}: accepted (OIDC-style clients such as the MCP Python
    SDK may ask for it) but changes nothing: a refresh token is issued
    whenever the client registered the C{refresh_token} grant. It is
    advertised by the authorization server, never by the protected
    resource (MCP 2026: SHOULD NOT appear in PRM or challenges).

Unknown scopes are handled leniently, everywhere: they are dropped, never
refused (ServiceNow's admin form and guide examples send C{openid email
profile}, and refusing them would break the connection for no security
gain). A request that names only unknown scopes is treated as a request
without C{scope}: it gets the client's registered scopes. Scope lists are
split on spaces and on commas (ServiceNow sends comma lists).
"""

from __future__ import annotations

import re
from typing import AbstractSet, Iterable, List, Optional

__all__ = [
    "MCP_TOOLS",
    "MCP_READ",
    "OFFLINE_ACCESS",
    "KNOWN_SCOPES",
    "RESOURCE_SCOPES",
    "DEFAULT_SCOPES",
    "InvalidScope",
    "parseScope",
    "knownScopes",
    "formatScope",
    "grantScope",
]

MCP_TOOLS = "mcp:tools"
MCP_READ = "mcp:read"
OFFLINE_ACCESS = "offline_access"

#: Every scope we understand, in the order we list them.
KNOWN_SCOPES = (MCP_TOOLS, MCP_READ, OFFLINE_ACCESS)
#: The scopes the protected resource (C{/mcp}) advertises and checks.
RESOURCE_SCOPES = (MCP_TOOLS, MCP_READ)
#: What a client gets when it registers or asks for nothing in particular.
DEFAULT_SCOPES = (MCP_TOOLS, MCP_READ)

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


def grantScope(requested: Optional[str], allowed: AbstractSet[str]) -> str:
    """
    Decide the scope of a grant.

    @param requested: the C{scope} parameter as sent (C{None}: absent).
    @param allowed: the scopes the client (or the refresh family) holds.
    @return: the granted scope string: the known requested scopes, or all of
        C{allowed} when none were named. C{offline_access} may always be
        asked for (it grants nothing).
    @raise InvalidScope: a known scope was requested that is not in
        C{allowed} (a widening).
    """
    wanted = knownScopes(parseScope(requested))
    if not wanted:
        return formatScope(allowed)
    extra = [s for s in wanted if s not in allowed and s != OFFLINE_ACCESS]
    if extra:
        raise InvalidScope("scope not allowed for this client: " + " ".join(extra))
    return formatScope(wanted)
