# -*- test-case-name: mcpsvc.mcp.test.test_mrtr -*-
"""
Multi round-trip requests (MRTR, 2026-07-28 C{basic/patterns/mrtr}).

In the 2026-07-28 era a server asks the client for input (elicitation,
sampling, roots) by answering C{tools/call}, C{prompts/get} or
C{resources/read} with C{resultType: "input_required"}, a map of
C{inputRequests} and an opaque C{requestState}; the client retries the
same request with C{inputResponses} (and the state echoed back).

mcpsvc runs the handler again on every round (replay): a tool asks with
C{context.clientRequest(method, params, key=...)}; on the first round the
request is collected and the call ends with C{input_required}; on the retry
the answer is there and C{clientRequest} returns it at once. The answers of
earlier rounds travel in C{requestState}, so any instance can serve any
round, and nothing is kept server-side.

C{requestState} is attacker-controlled: it is HMAC-SHA256 signed with a key
derived from C{JWT_SECRET} for this use only, and bound to the principal
(subject and client), the method and name, a digest of the arguments, and
an expiry on the injected clock. A tampered, expired or foreign state is
refused with C{-32602} (invalid params), as the suite expects.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
from typing import Any, Dict, List, Mapping, Optional

from twisted.internet.defer import CancelledError, Deferred, fail, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure

from mcpsvc.http.jsonio import strictLoads
from mcpsvc.mcp.protocol import INVALID_PARAMS, ProtocolError
from mcpsvc.principal import Principal
from mcpsvc.tools.interfaces import ClientRequestError, InputNeeded

__all__ = [
    "CAPABILITY_OF",
    "DEFAULT_STATE_TTL",
    "MAX_STATE_LENGTH",
    "ClientRequests",
    "RequestStateSigner",
    "InvalidRequestState",
    "InputRound",
    "answerProblem",
    "deriveStateKey",
    "parseInputResponses",
    "refusedClientRequest",
]

#: The client capability each server-to-client request needs.
CAPABILITY_OF = {
    "elicitation/create": "elicitation",
    "sampling/createMessage": "sampling",
    "roots/list": "roots",
}

#: Seconds a C{requestState} stays valid.
DEFAULT_STATE_TTL = 900.0

#: Longest C{requestState} accepted (characters); it carries the answers
#: of earlier rounds.
MAX_STATE_LENGTH = 256 * 1024

#: Most input requests one round may carry, and most keys accepted in
#: C{inputResponses}.
MAX_INPUTS = 32

_VERSION = "m1"


def refusedClientRequest(
    method: str, clientCapabilities: Mapping[str, Any]
) -> Optional[ClientRequestError]:
    """
    Why C{method} may not be sent to a client that declared
    C{clientCapabilities}, or C{None} when it may: only the requests of
    L{CAPABILITY_OF}, each only to a client that declared its capability.
    """
    capability = CAPABILITY_OF.get(method)
    if capability is None:
        return ClientRequestError(f"{method} cannot be sent to the client")
    if capability not in clientCapabilities:
        return ClientRequestError(f"The client did not declare the {capability} capability")
    return None


def deriveStateKey(secret: str) -> bytes:
    """
    The C{requestState} MAC key, derived from the operator's C{JWT_SECRET}
    for this use only.
    """
    return hmac.new(
        secret.encode("utf-8"), b"mcpsvc mrtr requestState v1", hashlib.sha256
    ).digest()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _decodePayload(raw: bytes) -> Any:
    """
    Parse a verified state payload (the one JSON decoder of this module).
    """
    return strictLoads(raw)


def _digest(value: Any) -> str:
    encoded = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(encoded.encode("ascii")).hexdigest()


def _principalOf(principal: Principal) -> str:
    return _digest([principal.subject, principal.clientID])


class InvalidRequestState(ValueError):
    """
    A C{requestState} that fails verification; the message (for the log)
    says why.
    """


class RequestStateSigner:
    """
    Seals and opens C{requestState} values.
    """

    def __init__(self, key: bytes, clock: IReactorTime, ttl: float = DEFAULT_STATE_TTL) -> None:
        self._key = key
        self.clock = clock
        self.ttl = ttl

    def _mac(self, payload: str) -> str:
        message = _VERSION.encode("ascii") + b"\x00" + payload.encode("ascii")
        return _b64(hmac.new(self._key, message, hashlib.sha256).digest())

    def seal(
        self, principal: Principal, method: str, name: str, arguments: Any,
        responses: Mapping[str, Any],
    ) -> str:
        body = {
            "p": _principalOf(principal),
            "m": method,
            "n": name,
            "a": _digest(arguments),
            "x": int(self.clock.seconds() + self.ttl),
            "r": dict(responses),
        }
        payload = _b64(json.dumps(body, sort_keys=True, separators=(",", ":")).encode("utf-8"))
        return f"{_VERSION}.{payload}.{self._mac(payload)}"

    def open(
        self, value: Any, principal: Principal, method: str, name: str, arguments: Any
    ) -> Dict[str, Any]:
        """
        Return the answers of earlier rounds that C{value} carries.

        @raise InvalidRequestState: malformed, altered, expired, or minted
            for another principal, request or arguments.
        """
        if not isinstance(value, str) or not value or len(value) > MAX_STATE_LENGTH:
            raise InvalidRequestState("not a string of an acceptable length")
        version, _, rest = value.partition(".")
        payload, _, mac = rest.partition(".")
        if version != _VERSION or not payload or not mac:
            raise InvalidRequestState("malformed")
        expected = self._mac(payload).encode("ascii")
        if not hmac.compare_digest(mac.encode("ascii", "replace"), expected):
            raise InvalidRequestState("altered (bad MAC)")
        try:
            body = _decodePayload(_unb64(payload))
        except (binascii.Error, ValueError):  # pragma: no cover - we signed it
            raise InvalidRequestState("malformed payload")
        if not isinstance(body, dict) or not isinstance(body.get("r"), dict):
            raise InvalidRequestState("malformed payload")  # pragma: no cover
        if not isinstance(body.get("x"), int) or self.clock.seconds() >= body["x"]:
            raise InvalidRequestState("expired")
        if not hmac.compare_digest(str(body.get("p")), _principalOf(principal)):
            raise InvalidRequestState("minted for another principal")
        if body.get("m") != method or body.get("n") != name:
            raise InvalidRequestState("minted for another request")
        if body.get("a") != _digest(arguments):
            raise InvalidRequestState("minted for other arguments")
        return body["r"]


_PRIMITIVE = (str, int, float, bool)


def answerProblem(method: str, answer: Any) -> Optional[str]:
    """
    Why C{answer} is not a result of the client request C{method}
    (C{elicitation/create}: C{ElicitResult}; C{sampling/createMessage}:
    C{CreateMessageResult}; C{roots/list}: C{ListRootsResult}), or
    C{None} when it has that shape. A client answers the questions it is
    asked however it likes, but only with the kind of result the question
    calls for: a tool never sees another shape.
    """
    if not isinstance(answer, dict):
        return "not an object"
    if method == "elicitation/create":
        action = answer.get("action")
        if action not in ("accept", "decline", "cancel"):
            return 'action must be "accept", "decline" or "cancel"'
        content = answer.get("content")
        if content is not None:
            if not isinstance(content, dict):
                return "content must be an object"
            for value in content.values():
                if not (isinstance(value, _PRIMITIVE) or (
                        isinstance(value, list) and all(isinstance(v, str) for v in value))):
                    return "content values must be strings, numbers, booleans or lists of strings"
        return None
    if method == "sampling/createMessage":
        if not isinstance(answer.get("role"), str):
            return "role must be a string"
        if not isinstance(answer.get("content"), (dict, list)):
            return "content must be an object or an array"
        return None
    if method == "roots/list":
        roots = answer.get("roots")
        if not isinstance(roots, list) or not all(
                isinstance(r, dict) and isinstance(r.get("uri"), str) for r in roots):
            return "roots must be an array of objects with a uri"
        return None
    return f"{method[:64]} is not a client request"


def parseInputResponses(params: Mapping[str, Any]) -> Dict[str, Any]:
    """
    The C{inputResponses} of a request (empty when absent).

    @raise ProtocolError: C{-32602} when present but not an object of
        result objects.
    """
    if "inputResponses" not in params:
        return {}
    responses = params["inputResponses"]
    if not isinstance(responses, dict):
        raise ProtocolError(INVALID_PARAMS, "inputResponses must be an object")
    if len(responses) > MAX_INPUTS:
        raise ProtocolError(INVALID_PARAMS, f"inputResponses has more than {MAX_INPUTS} entries")
    for key, value in responses.items():
        if not isinstance(value, dict):
            raise ProtocolError(
                INVALID_PARAMS, f"inputResponses[{str(key)[:64]!r}] must be a result object"
            )
    return dict(responses)


class ClientRequests:
    """
    What every collector of server-to-client requests shares (an MRTR
    round, a task's questions): keys for requests the tool did not name,
    and the capability check.

    @ivar clientCapabilities: what the client declared.
    """

    clientCapabilities: Mapping[str, Any]
    _count: int = 0

    def _admit(self, method: str, key: Optional[str]) -> "tuple[str, Optional[ClientRequestError]]":
        """
        The key of the next request (C{key}, or C{input-N} when the tool
        named none), and why it may not be sent (or C{None}).
        """
        self._count += 1
        return (key if key is not None else f"input-{self._count}",
                refusedClientRequest(method, self.clientCapabilities))


class InputRound(ClientRequests):
    """
    The input requests of one round of one request.

    L{clientRequest} is what the handler calls (through
    C{ToolContext.clientRequest}): an answer already given (in
    C{requestState} or C{inputResponses}) is returned at once; otherwise the
    request is collected, and on the next turn of the reactor L{needed}
    fires so that the dispatcher can end the round with C{input_required}.

    @ivar known: the answers available this round.
    @ivar asked: answers the handler used (carried into the next state).
    @ivar pending: the requests to send, by key.
    @ivar needed: fires (with C{None}) once a request is pending.
    """

    def __init__(
        self, known: Mapping[str, Any], clientCapabilities: Mapping[str, Any], clock: IReactorTime
    ) -> None:
        self.known = dict(known)
        self.clientCapabilities = clientCapabilities
        self.clock = clock
        self.asked: Dict[str, Any] = {}
        self.pending: Dict[str, Dict[str, Any]] = {}
        self.needed: Deferred[None] = Deferred()
        self._waiting: List[Deferred[Any]] = []
        self._count = 0

    def clientRequest(
        self, method: str, params: Mapping[str, Any], key: Optional[str] = None
    ) -> "Deferred[Any]":
        key, refusal = self._admit(method, key)
        if refusal is not None:
            return fail(refusal)
        if key in self.known:
            problem = answerProblem(method, self.known[key])
            if problem is not None:
                return fail(ClientRequestError(
                    f"The client's answer to {str(key)[:64]!r} is not a {method} result: {problem}"
                ))
            self.asked[key] = self.known[key]
            return succeed(self.known[key])
        if key in self.pending or len(self.pending) >= MAX_INPUTS:
            return fail(ClientRequestError(f"The input request {key!r} is repeated or one too many"))
        self.pending[key] = {"method": method, "params": dict(params)}
        if len(self.pending) == 1:
            self.clock.callLater(0, self._signal)
        d: Deferred[Any] = Deferred()
        self._waiting.append(d)
        return d

    def _signal(self) -> None:
        if not self.needed.called:
            self.needed.callback(None)

    def interrupt(self) -> None:
        """
        End the round: the requests still waiting fail with
        L{InputNeeded}, which unwinds the handler.
        """
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            if not d.called:
                d.errback(InputNeeded())
            d.addErrback(_ignoreCancelled)

    def close(self) -> None:
        """
        The round is over: cancel requests still waiting.
        """
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            if not d.called:
                d.cancel()
            # The cancellation reached the handler; whatever chain it left
            # unhandled (gatherResults without consumeErrors) ends here.
            d.addErrback(_ignoreCancelled)
        if not self.needed.called:
            self.needed.cancel()
            self.needed.addErrback(_ignoreCancelled)


def _ignoreCancelled(failure: Failure) -> None:
    failure.trap(CancelledError)
