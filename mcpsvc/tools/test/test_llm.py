"""
Tests for L{mcpsvc.tools.llm}, against a small Ollama-shaped resource
through C{StubTreq}.
"""

import json
from typing import Any, Dict, List

from treq.testing import StubTreq
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from mcpsvc.config import Config
from mcpsvc.tools.interfaces import ToolContext, ToolPackContext
from mcpsvc.tools.llm import llmTools
from mcpsvc.tools.registry import ToolRegistry


class FakeOllama(Resource):
    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.requests: List[Dict[str, Any]] = []
        self.code = 200
        self.body: bytes = json.dumps(
            {"model": "llama3.2", "response": "Hello there.", "done": True}
        ).encode()
        self.hang = False
        self.pending: List[Any] = []

    def render_POST(self, request: Any) -> Any:
        self.requests.append(
            {"path": request.path, "body": json.loads(request.content.read()),
             "type": request.getHeader("content-type")}
        )
        if self.hang:
            self.pending.append(request)
            return NOT_DONE_YET
        request.setResponseCode(self.code)
        request.setHeader("Content-Type", "application/json")
        return self.body


class LLMToolTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.ollama = FakeOllama()
        self.stub = StubTreq(self.ollama)
        pack = ToolPackContext(
            config=Config(llmURL="http://ollama.test:11434/", toolTimeout=30),
            clock=self.clock, runInThread=lambda f, *a: f(*a), httpClient=self.stub,
        )
        self.tools = llmTools(pack, maxResponse=1000)
        self.registry = ToolRegistry(self.tools, clock=self.clock)
        self.context = ToolContext(clock=self.clock, subject="s", clientID="c")

    def call(self, arguments: Dict[str, Any]) -> "Deferred[Dict[str, Any]]":
        d = self.registry.callTool(self.tools[0], arguments, self.context)
        self.stub.flush()
        return d

    def test_disabledWithoutURL(self) -> None:
        """
        Without C{LLM_URL} the pack has no tools.
        """
        pack = ToolPackContext(config=Config(), clock=self.clock, runInThread=lambda f: f())
        self.assertEqual(llmTools(pack), [])

    def test_runsAsTask(self) -> None:
        """
        A generation may run as a task (the tasks extension) for clients
        that support one.
        """
        self.assertEqual(self.tools[0].taskSupport, "optional")

    def test_generate(self) -> None:
        """
        The prompt is posted to C{/api/generate} without streaming and the
        response text is returned as structured content.
        """
        result = self.successResultOf(self.call({"prompt": "Hi", "maxTokens": 5, "system": "Be brief"}))
        self.assertEqual(
            result["structuredContent"], {"model": "llama3.2", "response": "Hello there.", "done": True}
        )
        [sent] = self.ollama.requests
        self.assertEqual(sent["path"], b"/api/generate")
        self.assertEqual(sent["type"], "application/json")
        self.assertEqual(
            sent["body"],
            {"model": "llama3.2", "prompt": "Hi", "stream": False, "system": "Be brief",
             "options": {"num_predict": 5}},
        )

    def test_httpError(self) -> None:
        """
        A non-200 answer is an C{isError} result.
        """
        self.ollama.code = 500
        result = self.successResultOf(self.call({"prompt": "Hi"}))
        self.assertTrue(result["isError"])
        self.assertIn("HTTP 500", result["content"][0]["text"])

    def test_badBody(self) -> None:
        """
        Invalid JSON, a missing response and an oversized body are
        C{isError} results.
        """
        for body in (b"not json", b'{"done": true}', b'{"response": "' + b"x" * 2000 + b'"}'):
            self.ollama.body = body
            result = self.successResultOf(self.call({"prompt": "Hi"}))
            self.assertTrue(result["isError"], body[:20])
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_hostileBody(self) -> None:
        """
        The LLM service's answer goes through the same JSON decoder as a
        request: nesting too deep, a lone surrogate or an infinite number
        is an explained C{isError} result, not an internal error.
        """
        for body in (b"[" * 400 + b"]" * 400, b'{"response": "\\ud800"}', b'{"response": "x", "n": 1e999}'):
            self.ollama.body = body
            result = self.successResultOf(self.call({"prompt": "Hi"}))
            self.assertTrue(result["isError"], body[:20])
            self.assertIn("invalid JSON", result["content"][0]["text"])
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_timeout(self) -> None:
        """
        A hanging service is cut off by the tool timeout.
        """
        self.ollama.hang = True
        d = self.call({"prompt": "Hi"})
        self.assertNoResult(d)
        self.clock.advance(self.tools[0].timeout)
        result = self.successResultOf(d)
        self.assertTrue(result["isError"])
        self.assertIn("timed out", result["content"][0]["text"])

    def test_promptRequired(self) -> None:
        """
        A missing prompt is refused before any request.
        """
        self.assertTrue(self.successResultOf(self.call({}))["isError"])
        self.assertEqual(self.ollama.requests, [])
