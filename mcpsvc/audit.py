# -*- test-case-name: mcpsvc.test.test_audit -*-
"""
The audit trail: one structured event per security-relevant decision.

Each event carries C{event_type: "audit"}, the C{action} (for example
C{client.register}, C{authorize.approve}, C{authorize.deny},
C{token.issue}, C{token.refresh}, C{token.reuse_detected}, C{token.revoke},
C{client.auth_failed}, C{client.assertion_replay}, C{rate_limit.hit},
C{task.limit}, C{task.access}), its C{outcome}, and who: client
id, subject, client address, request id. It never carries a secret or a
token; pass token ids (C{jti}) or hash prefixes only.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

from twisted.logger import Logger

__all__ = ["audit", "AUDIT_NAMESPACE", "setAuditHook"]

AUDIT_NAMESPACE = "mcpsvc.audit"
_log = Logger(namespace=AUDIT_NAMESPACE)
_FORBIDDEN = ("token", "secret", "password", "code", "authorization", "refresh_token", "access_token")
_hook: Optional[Callable[[str, str], None]] = None
#: Longest string kept in an audit field.
_FIELD_LIMIT = 200


def setAuditHook(hook: Optional[Callable[[str, str], None]]) -> None:
    """
    Install a callable C{(action, outcome)} told of every audit event
    (metrics use it); C{None} removes it.
    """
    global _hook
    _hook = hook


def audit(
    action: str,
    outcome: str,
    *,
    request: Any = None,
    clientID: Optional[str] = None,
    subject: Optional[str] = None,
    **fields: Any,
) -> None:
    """
    Emit one audit event.

    @param action: what was attempted (C{"token.issue"}, ...).
    @param outcome: C{"success"}, C{"failure"}, C{"denied"}, ...
    @param request: the HTTP request, for client address and request id.
    @param fields: more context; a field whose name suggests a secret is
        refused (a programming error), so none can slip into the trail.
    """
    for name in fields:
        lowered = name.lower()
        if any(word == lowered or lowered.endswith(word) for word in _FORBIDDEN):
            raise ValueError(f"audit field {name!r} may carry a secret")
    address = None
    requestID = None
    if request is not None:
        requestID = getattr(request, "requestID", None)
        try:
            from mcpsvc.http.site import clientAddress

            site = getattr(request, "_mcpsvcSite", None)
            address = clientAddress(request, site.trustedProxies if site is not None else ())
        except Exception:
            address = None
    # A client id, subject or reason can come from the request: bounded, so
    # that no request makes the trail large.
    from mcpsvc.http.jsonio import truncateForLog

    clientID = truncateForLog(clientID, _FIELD_LIMIT)
    subject = truncateForLog(subject, _FIELD_LIMIT)
    fields = {name: truncateForLog(value, _FIELD_LIMIT) for name, value in fields.items()}
    _log.info(
        "audit {action} {outcome} client={clientID} subject={subject} address={address}",
        event_type="audit",
        action=action,
        outcome=outcome,
        clientID=clientID,
        subject=subject,
        address=address,
        requestID=requestID,
        **fields,
    )
    if _hook is not None:
        _hook(action, outcome)
