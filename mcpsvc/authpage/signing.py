# -*- test-case-name: mcpsvc.authpage.test.test_signing -*-
"""
Signed, expiring values for the authorization page: CSRF tokens, the login
session cookie and the remembered-approval cookie.

Every value is C{v1.<payload>.<mac>}: the payload is URL-safe base64 of a
small JSON object, and the MAC is HMAC-SHA256 over the purpose and the
payload, under a key derived from C{JWT_SECRET} for this use only (so a
value minted for one purpose never verifies as another, and nothing here
can be confused with an access token).

Sans-IO: no clock, no store. Callers pass C{now}, and keep single-use
records themselves (see L{mcpsvc.authpage.approver}).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
from typing import Any, Dict, Optional

from attrs import field, frozen

from mcpsvc.http.jsonio import decodeJSON

__all__ = ["Signer", "BadSignature", "deriveKey", "bindingOf"]


class BadSignature(ValueError):
    """
    The value is malformed, altered, for another purpose, or expired; the
    message says which (safe to show).
    """


def deriveKey(secret: str, label: str) -> bytes:
    """
    A key for C{label}, derived from the operator's C{JWT_SECRET}.
    """
    return hmac.new(
        secret.encode("utf-8"), b"mcpsvc authpage v1\x00" + label.encode("utf-8"), hashlib.sha256
    ).digest()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def bindingOf(*parts: Optional[str]) -> str:
    """
    A hash binding a value to the fields it may be used with (C{None} and
    C{""} differ).
    """
    encoded = json.dumps(list(parts), separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(encoded.encode("ascii")).hexdigest()


@frozen
class Signer:
    """
    Signs and verifies small JSON payloads with an expiry.
    """

    key: bytes = field(repr=False)

    def _mac(self, purpose: str, payload: str) -> str:
        message = purpose.encode("utf-8") + b"\x00" + payload.encode("ascii")
        return _b64(hmac.new(self.key, message, hashlib.sha256).digest())

    def sign(self, purpose: str, data: Dict[str, Any], expiresAt: float) -> str:
        body = dict(data, exp=int(expiresAt))
        payload = _b64(json.dumps(body, separators=(",", ":"), sort_keys=True).encode("utf-8"))
        return "v1." + payload + "." + self._mac(purpose, payload)

    def verify(self, purpose: str, value: Optional[str], now: float) -> Dict[str, Any]:
        """
        The payload of C{value}.

        @raise BadSignature: malformed, altered, another purpose, expired.
        """
        if not value or len(value) > 2048:
            raise BadSignature("missing")
        version, _, rest = value.partition(".")
        payload, _, mac = rest.partition(".")
        if version != "v1" or not payload or not mac or not (payload + mac).isascii():
            # A form field or cookie can hold any character: only ASCII
            # is ever signed here.
            raise BadSignature("malformed")
        if not hmac.compare_digest(mac.encode("ascii"), self._mac(purpose, payload).encode("ascii")):
            raise BadSignature("altered")
        try:
            data = decodeJSON(_unb64(payload))
        except (binascii.Error, ValueError):  # pragma: no cover - we signed it
            raise BadSignature("malformed")
        if not isinstance(data, dict) or not isinstance(data.get("exp"), int):
            raise BadSignature("malformed")  # pragma: no cover - we signed it
        if now >= data["exp"]:
            raise BadSignature("expired")
        return data
