"""
Tests for L{mcpsvc.mcp.mrtr} and the multi round-trip requests of
L{mcpsvc.mcp.dispatcher} (2026-07-28), without HTTP.
"""

from typing import Any, Dict, List, Optional

from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.task import Clock
from twisted.logger import LogLevel, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from mcpsvc.mcp.dispatcher import Dispatcher, RequestContext
from mcpsvc.mcp.mrtr import (
    answerProblem,
    InputRound,
    InvalidRequestState,
    RequestStateSigner,
    deriveStateKey,
    parseInputResponses,
)
from mcpsvc.mcp.protocol import ProtocolError, Request
from mcpsvc.mcp.test.helpers import ALICE
from mcpsvc.principal import Principal
from mcpsvc.tools.features import Features, FeatureSet, Prompt, ResourceTemplate
from mcpsvc.tools.interfaces import ClientRequestError, Tool, ToolContext
from mcpsvc.tools.registry import ToolRegistry

MALLORY = Principal(subject="mallory", clientID="client-1", scopes=frozenset({"mcp:tools", "mcp:read"}))
OTHER_CLIENT = Principal(subject="alice", clientID="client-2", scopes=frozenset({"mcp:tools", "mcp:read"}))
ALL = {"elicitation": {}, "sampling": {}, "roots": {}}


def _form(message: str) -> Dict[str, Any]:
    return {"message": message, "requestedSchema": {"type": "object", "properties": {}}}


class RequestStateSignerTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1000)
        self.signer = RequestStateSigner(deriveStateKey("s" * 32), self.clock, ttl=60)
        self.state = self.signer.seal(ALICE, "tools/call", "t", {"a": 1}, {"k": {"x": 1}})

    def test_roundTrip(self) -> None:
        """
        A state opens for the same principal, request and arguments (key
        order does not matter) and gives back the answers it carries.
        """
        self.assertEqual(
            self.signer.open(self.state, ALICE, "tools/call", "t", {"a": 1}), {"k": {"x": 1}}
        )

    def test_refused(self) -> None:
        """
        Altered, truncated, foreign, expired or non-string states are
        refused; so is a state signed with another secret.
        """
        payload = self.state.split(".")[1]
        flipped = payload[:-2] + ("A" if payload[-2] != "A" else "B") + payload[-1]
        cases = [
            (self.state + "-TAMPERED", ALICE, "tools/call", "t", {"a": 1}),
            (self.state.replace(payload, flipped), ALICE, "tools/call", "t", {"a": 1}),
            (self.state[:-1], ALICE, "tools/call", "t", {"a": 1}),
            ("m1..", ALICE, "tools/call", "t", {"a": 1}),
            (None, ALICE, "tools/call", "t", {"a": 1}),
            (12, ALICE, "tools/call", "t", {"a": 1}),
            ("x" * 300_000, ALICE, "tools/call", "t", {"a": 1}),
            (self.state, MALLORY, "tools/call", "t", {"a": 1}),
            (self.state, OTHER_CLIENT, "tools/call", "t", {"a": 1}),
            (self.state, ALICE, "prompts/get", "t", {"a": 1}),
            (self.state, ALICE, "tools/call", "u", {"a": 1}),
            (self.state, ALICE, "tools/call", "t", {"a": 2}),
        ]
        for value, principal, method, name, arguments in cases:
            self.assertRaises(
                InvalidRequestState, self.signer.open, value, principal, method, name, arguments
            )
        other = RequestStateSigner(deriveStateKey("t" * 32), self.clock)
        self.assertRaises(InvalidRequestState, other.open, self.state, ALICE, "tools/call", "t", {"a": 1})

    def test_expiry(self) -> None:
        """
        A state expires C{ttl} seconds after it was sealed, on the clock.
        """
        self.clock.advance(59)
        self.signer.open(self.state, ALICE, "tools/call", "t", {"a": 1})
        self.clock.advance(1)
        error = self.assertRaises(
            InvalidRequestState, self.signer.open, self.state, ALICE, "tools/call", "t", {"a": 1}
        )
        self.assertEqual(str(error), "expired")


class ParseInputResponsesTests(SynchronousTestCase):
    def test_valid(self) -> None:
        self.assertEqual(parseInputResponses({}), {})
        self.assertEqual(parseInputResponses({"inputResponses": {"a": {"x": 1}}}), {"a": {"x": 1}})

    def test_invalid(self) -> None:
        """
        C{null}, a non-object, a non-object answer or too many answers are
        -32602.
        """
        for value in (None, [], "x", {"a": 12345}, {"a": None}, {str(i): {} for i in range(33)}):
            error = self.assertRaises(
                ProtocolError, parseInputResponses, {"inputResponses": value}
            )
            self.assertEqual(error.code, -32602)


class AnswerShapeTests(SynchronousTestCase):
    """
    L{answerProblem}: an answer must have the shape of the result of the
    request it answers.
    """

    def test_shapes(self) -> None:
        good = [
            ("elicitation/create", {"action": "accept", "content": {"name": "Ada"}}),
            ("elicitation/create", {"action": "decline"}),
            ("elicitation/create", {"action": "cancel"}),
            ("sampling/createMessage", {"role": "assistant", "model": "m",
                                        "content": {"type": "text", "text": "hi"}}),
            ("sampling/createMessage", {"role": "assistant", "content": [{"type": "text", "text": "x"}]}),
            ("roots/list", {"roots": [{"uri": "file:///x"}]}),
            ("roots/list", {"roots": []}),
        ]
        for method, answer in good:
            self.assertIsNone(answerProblem(method, answer), (method, answer))
        bad = [
            ("elicitation/create", {}),
            ("elicitation/create", {"action": "yes"}),
            ("elicitation/create", {"action": "accept", "content": "Ada"}),
            ("elicitation/create", {"action": "accept", "content": {"a": {"b": 1}}}),
            ("sampling/createMessage", {"role": "assistant"}),
            ("sampling/createMessage", {"content": "hi"}),
            ("roots/list", {"roots": "x"}),
            ("roots/list", {"roots": [{"name": "no uri"}]}),
            ("roots/list", {}),
            ("nope/nope", {}),
        ]
        for method, answer in bad:
            self.assertIsInstance(answerProblem(method, answer), str, (method, answer))

    def test_roundRefusesWrongShape(self) -> None:
        """
        An answer in C{inputResponses} that does not fit the request the
        tool makes fails that request (L{ClientRequestError}), rather than
        reaching the tool.
        """
        round = InputRound({"name": {"action": "accept", "content": "not an object"}},
                           {"elicitation": {}}, Clock())
        failure = self.failureResultOf(
            round.clientRequest("elicitation/create", {"message": "Name?"}, key="name"),
            ClientRequestError,
        )
        self.assertIn("name", str(failure.value))
        self.assertEqual(round.asked, {})


class DispatcherMRTRTests(SynchronousTestCase):
    """
    A tool written once asks through MRTR in 2026-07-28.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.runs: List[str] = []
        self.errors: List[str] = []

        async def greet(arguments: Any, context: ToolContext) -> str:
            self.runs.append("greet")
            answer = await context.clientRequest(
                "elicitation/create", _form("Name?"), key="name"
            )
            return f"Hello, {answer['content']['name']}!"

        async def twoRounds(arguments: Any, context: ToolContext) -> str:
            first = await context.clientRequest("elicitation/create", _form("1?"))
            second = await context.clientRequest("sampling/createMessage", {"messages": []})
            return f"{first['content']['n']}+{second['content']['n']}"

        async def together(arguments: Any, context: ToolContext) -> str:
            answers = await gatherResults([
                context.clientRequest("elicitation/create", _form("a?"), key="a"),
                context.clientRequest("roots/list", {}, key="b"),
            ])
            return repr(answers)

        async def careful(arguments: Any, context: ToolContext) -> str:
            try:
                await context.clientRequest("elicitation/create", _form("x?"))
            except ClientRequestError as e:
                self.errors.append(str(e))
                return "asked nothing"
            return "asked"

        def tool(name: str, call: Any) -> Tool:
            return Tool(name=name, description=name, inputSchema={"type": "object"}, call=call)

        async def promptGet(arguments: Any, clientRequest: Any) -> Any:
            answer = await clientRequest("elicitation/create", _form("Topic?"), key="topic")
            return [{"role": "user", "content": {"type": "text", "text": answer["content"]["t"]}}]

        async def secretRead(uri: str, variables: Any, clientRequest: Any) -> Any:
            answer = await clientRequest("elicitation/create", _form("Passphrase?"), key="pass")
            return [{"uri": uri, "mimeType": "text/plain",
                     "text": f"{variables['id']}: {answer['content']['p']}"}]

        features = FeatureSet([Features(
            prompts=[Prompt(name="ask", description="asks", get=promptGet, asksForInput=True)],
            templates=[ResourceTemplate(uriTemplate="secret://{id}", name="secret",
                                        description="asks", read=secretRead,
                                        asksForInput=True)],
        )])
        registry = ToolRegistry(
            [tool("greet", greet), tool("two", twoRounds), tool("together", together),
             tool("careful", careful)],
            clock=self.clock, features=features, metrics=self,
        )
        self.outcomes: List[Any] = []
        self.dispatcher = Dispatcher(registry, clock=self.clock, stateKey=b"k" * 32, stateTTL=60)
        self.events: List[Dict[str, Any]] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def toolCall(self, tool: str, outcome: str) -> None:
        self.outcomes.append((tool, outcome))

    def context(self, capabilities: Any = None, principal: Principal = ALICE) -> RequestContext:
        return RequestContext(
            principal=principal, protocolVersion="2026-07-28", modern=True, scope="p",
            clientCapabilities=ALL if capabilities is None else capabilities,
        )

    def call(
        self, params: Dict[str, Any], context: Optional[RequestContext] = None,
        method: str = "tools/call",
    ) -> "Deferred[Dict[str, Any]]":
        d = Deferred.fromCoroutine(self.dispatcher.handleRequest(
            Request(id=1, method=method, params=params), context or self.context()))
        self.clock.advance(0)
        return d

    def test_inputRequired(self) -> None:
        """
        The first round ends with C{input_required}, the request under the
        tool's key and a C{requestState}; the retry with the answer
        completes.
        """
        first = self.successResultOf(self.call({"name": "greet", "arguments": {}}))
        self.assertEqual(first["resultType"], "input_required")
        self.assertEqual(
            first["inputRequests"], {"name": {"method": "elicitation/create", "params": _form("Name?")}}
        )
        self.assertIsInstance(first["requestState"], str)
        second = self.successResultOf(self.call({
            "name": "greet", "arguments": {},
            "inputResponses": {"name": {"action": "accept", "content": {"name": "Ada"}},
                               "extra": {"ignored": True}},
            "requestState": first["requestState"],
        }))
        self.assertEqual(second["resultType"], "complete")
        self.assertEqual(second["content"], [{"type": "text", "text": "Hello, Ada!"}])
        self.assertEqual(self.runs, ["greet", "greet"])
        # The tool-call metric tells an input round from a cancellation.
        self.assertEqual(self.outcomes, [("greet", "input_required"), ("greet", "ok")])
        self.assertEqual(self.dispatcher.inFlight, 0)

    def test_multiRound(self) -> None:
        """
        Answers of earlier rounds travel in the (new) C{requestState};
        default keys number the requests in the order asked.
        """
        r1 = self.successResultOf(self.call({"name": "two"}))
        self.assertEqual(list(r1["inputRequests"]), ["input-1"])
        r2 = self.successResultOf(self.call({
            "name": "two", "inputResponses": {"input-1": {"action": "accept", "content": {"n": 1}}},
            "requestState": r1["requestState"]}))
        self.assertEqual(r2["resultType"], "input_required")
        self.assertEqual(list(r2["inputRequests"]), ["input-2"])
        self.assertNotEqual(r2["requestState"], r1["requestState"])
        r3 = self.successResultOf(self.call({
            "name": "two", "inputResponses": {"input-2": {"role": "assistant", "content": {"n": 2}}},
            "requestState": r2["requestState"]}))
        self.assertEqual(r3["content"][0]["text"], "1+2")

    def test_earlierAnswersAreTheSignedOnes(self) -> None:
        """
        An answer of an earlier round cannot be replaced by the client in
        C{inputResponses}: the signed one wins.
        """
        r1 = self.successResultOf(self.call({"name": "two"}))
        r2 = self.successResultOf(self.call({
            "name": "two", "inputResponses": {"input-1": {"action": "accept", "content": {"n": 1}}},
            "requestState": r1["requestState"]}))
        r3 = self.successResultOf(self.call({
            "name": "two", "inputResponses": {"input-1": {"action": "accept", "content": {"n": 9}}, "input-2": {"role": "assistant", "content": {"n": 2}}},
            "requestState": r2["requestState"]}))
        self.assertEqual(r3["content"][0]["text"], "1+2")

    def test_severalAtOnce(self) -> None:
        """
        Requests made together go out in one round.
        """
        r1 = self.successResultOf(self.call({"name": "together"}))
        self.assertEqual(
            {k: v["method"] for k, v in r1["inputRequests"].items()},
            {"a": "elicitation/create", "b": "roots/list"},
        )
        self.assertEqual(self.outcomes, [("together", "input_required")])

    def test_missingAnswerAsksAgain(self) -> None:
        """
        A retry without the answer (wrong key) gets C{input_required}
        again, not an error.
        """
        r = self.successResultOf(self.call({
            "name": "greet", "inputResponses": {"wrong": {"action": "accept"}}}))
        self.assertEqual(list(r["inputRequests"]), ["name"])

    def test_tamperedState(self) -> None:
        """
        A tampered, foreign or expired state is -32602 and logged; the tool
        does not run.
        """
        r1 = self.successResultOf(self.call({"name": "greet", "arguments": {}}))
        answers = {"name": {"action": "accept", "content": {"name": "Ada"}}}
        self.runs.clear()
        for params, context in (
            ({"requestState": r1["requestState"] + "-TAMPERED"}, None),
            ({"requestState": r1["requestState"]}, self.context(principal=MALLORY)),
            ({"requestState": r1["requestState"], "arguments": {"x": 1}}, None),
        ):
            base = {"name": "greet", "arguments": {}, "inputResponses": answers}
            base.update(params)
            failure = self.failureResultOf(self.call(base, context), ProtocolError)
            self.assertEqual(failure.value.code, -32602)
        self.clock.advance(61)
        failure = self.failureResultOf(self.call({
            "name": "greet", "arguments": {}, "inputResponses": answers,
            "requestState": r1["requestState"]}), ProtocolError)
        self.assertEqual(failure.value.code, -32602)
        self.assertEqual(self.runs, [])
        refused = [e for e in self.events if "Refused the requestState" in e.get("log_format", "")]
        self.assertEqual(len(refused), 4)
        self.assertEqual(refused[0]["log_level"], LogLevel.warn)

    def test_answersTooLarge(self) -> None:
        """
        Answers too large to carry in a C{requestState} fail the round with
        -32602 rather than minting a state the next round would refuse.
        """
        r1 = self.successResultOf(self.call({"name": "two"}))
        failure = self.failureResultOf(self.call({
            "name": "two", "inputResponses": {"input-1": {"action": "accept", "content": {"n": 1, "pad": "x" * 300_000}}},
            "requestState": r1["requestState"]}), ProtocolError)
        self.assertEqual(failure.value.code, -32602)

    def test_invalidResponses(self) -> None:
        failure = self.failureResultOf(
            self.call({"name": "greet", "inputResponses": {"name": 12345}}), ProtocolError)
        self.assertEqual(failure.value.code, -32602)
        failure = self.failureResultOf(
            self.call({"name": "greet", "inputResponses": None}), ProtocolError)
        self.assertEqual(failure.value.code, -32602)

    def test_undeclaredCapability(self) -> None:
        """
        A request needing a capability the client did not declare is never
        sent: C{clientRequest} fails with L{ClientRequestError}.
        """
        r = self.successResultOf(self.call({"name": "careful"}, self.context({"sampling": {}})))
        self.assertEqual(r["resultType"], "complete")
        self.assertEqual(r["content"][0]["text"], "asked nothing")
        self.assertIn("elicitation", self.errors[0])

    def test_prompt(self) -> None:
        """
        C{prompts/get} of a prompt that asks uses the same rounds.
        """
        r1 = self.successResultOf(self.call({"name": "ask"}, method="prompts/get"))
        self.assertEqual(list(r1["inputRequests"]), ["topic"])
        r2 = self.successResultOf(self.call({
            "name": "ask", "inputResponses": {"topic": {"action": "accept", "content": {"t": "owls"}}},
            "requestState": r1["requestState"]}, method="prompts/get"))
        self.assertEqual(r2["resultType"], "complete")
        self.assertEqual(r2["messages"][0]["content"]["text"], "owls")
        # A tools/call state is not a prompts/get one.
        tool = self.successResultOf(self.call({"name": "greet"}))
        failure = self.failureResultOf(self.call(
            {"name": "ask", "requestState": tool["requestState"]}, method="prompts/get"),
            ProtocolError)
        self.assertEqual(failure.value.code, -32602)

    def test_resourceRead(self) -> None:
        """
        C{resources/read} of a resource that asks uses the same rounds: the
        state is bound to the URI, and the result carries the contents.
        """
        r1 = self.successResultOf(self.call({"uri": "secret://7"}, method="resources/read"))
        self.assertEqual(r1["resultType"], "input_required")
        self.assertEqual(r1["inputRequests"]["pass"]["method"], "elicitation/create")
        answer = {"pass": {"action": "accept", "content": {"p": "open"}}}
        r2 = self.successResultOf(self.call({
            "uri": "secret://7", "inputResponses": answer, "requestState": r1["requestState"]},
            method="resources/read"))
        self.assertEqual(r2["resultType"], "complete")
        self.assertEqual(r2["contents"][0]["text"], "7: open")
        # The state of secret://7 does not open secret://8.
        failure = self.failureResultOf(self.call({
            "uri": "secret://8", "inputResponses": {}, "requestState": r1["requestState"]},
            method="resources/read"), ProtocolError)
        self.assertEqual(failure.value.code, -32602)
        # Without the elicitation capability: refused with -32602.
        failure = self.failureResultOf(
            self.call({"uri": "secret://7"}, self.context({}), method="resources/read"),
            ProtocolError)
        self.assertEqual(failure.value.code, -32602)

    def test_legacyEraUsesTheStream(self) -> None:
        """
        In the handshake era the same tool sends C{elicitation/create} on
        the response stream and gets the answer from the client's response;
        a client that did not declare elicitation is not asked.
        """
        from mcpsvc.mcp.protocol import Response

        sent: List[Dict[str, Any]] = []
        context = RequestContext(
            principal=ALICE, protocolVersion="2025-06-18", scope="s:1",
            clientCapabilities={"elicitation": {}}, send=sent.append,
        )
        d = self.call({"name": "greet"}, context)
        self.assertNoResult(d)
        self.assertEqual(sent[0]["method"], "elicitation/create")
        self.assertTrue(self.dispatcher.handleResponse(
            Response(id=sent[0]["id"], result={"action": "accept", "content": {"name": "Bo"}}),
            context))
        self.assertEqual(self.successResultOf(d)["content"][0]["text"], "Hello, Bo!")
        bare = RequestContext(principal=ALICE, protocolVersion="2025-06-18", scope="s:1",
                              send=sent.append)
        r = self.successResultOf(self.call({"name": "careful"}, bare))
        self.assertEqual(r["content"][0]["text"], "asked nothing")
        self.assertEqual(len(sent), 1)
