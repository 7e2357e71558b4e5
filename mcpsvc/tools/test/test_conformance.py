"""
Tests for L{mcpsvc.tools.conformance}: the fixtures behave as the official
conformance suite's server scenarios expect.
"""

import base64
from typing import Any, Dict, List, Tuple

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from mcpsvc.config import Config
from mcpsvc.tools.conformance import conformanceTools
from mcpsvc.tools.interfaces import ToolContext, ToolPackContext
from mcpsvc.tools.registry import ToolRegistry


class ConformanceToolsTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        pack = ToolPackContext(config=Config(), clock=self.clock, runInThread=lambda f, *a: f(*a))
        self.registry = ToolRegistry(conformanceTools(pack), clock=self.clock)
        self.progress: List[Tuple[Any, ...]] = []
        self.logs: List[Tuple[str, Any]] = []
        self.context = ToolContext(
            clock=self.clock, subject="s", clientID="c",
            progress=lambda *a: self.progress.append(a),
            logMessage=lambda level, data: self.logs.append((level, data)),
        )

    def call(self, name: str) -> Dict[str, Any]:
        tool = self.registry.get(name)
        assert tool is not None
        d = self.registry.callTool(tool, {}, self.context)
        self.clock.advance(0.05)
        self.clock.advance(0.05)
        return self.successResultOf(d)

    def test_content(self) -> None:
        """
        The content fixtures return the block types the suite checks.
        """
        self.assertEqual(self.call("test_simple_text")["content"][0]["type"], "text")
        image = self.call("test_image_content")["content"][0]
        self.assertEqual((image["type"], image["mimeType"]), ("image", "image/png"))
        self.assertTrue(base64.b64decode(image["data"]).startswith(b"\x89PNG"))
        audio = self.call("test_audio_content")["content"][0]
        self.assertEqual((audio["type"], audio["mimeType"]), ("audio", "audio/wav"))
        self.assertTrue(base64.b64decode(audio["data"]).startswith(b"RIFF"))
        self.assertEqual(self.call("test_embedded_resource")["content"][0]["type"], "resource")
        types = [c["type"] for c in self.call("test_multiple_content_types")["content"]]
        self.assertEqual(types, ["text", "image", "resource"])

    def test_error(self) -> None:
        """
        C{test_error_handling} is an C{isError} result with a message.
        """
        result = self.call("test_error_handling")
        self.assertTrue(result["isError"])
        self.assertTrue(result["content"][0]["text"])

    def test_progressAndLogging(self) -> None:
        """
        The progress fixture reports 0, 50, 100 of 100; the logging fixture
        logs three info messages.
        """
        self.call("test_tool_with_progress")
        self.assertEqual([p[:2] for p in self.progress], [(0, 100), (50, 100), (100, 100)])
        self.call("test_tool_with_logging")
        self.assertEqual([level for level, _ in self.logs], ["info"] * 3)

    def test_capabilityFixtures(self) -> None:
        """
        The capability fixtures declare what they need.
        """
        self.assertEqual(
            self.registry.get("test_missing_capability").requiredClientCapabilities,
            {"sampling": {}},
        )
        self.assertEqual(
            self.registry.get("test_streaming_elicitation").requiredClientCapabilities,
            {"elicitation": {}},
        )

    def test_schema202012(self) -> None:
        """
        The 2020-12 fixture keeps C{$schema}, C{$defs},
        C{additionalProperties} and the SEP-2106 vocabulary (C{$anchor},
        C{allOf}/C{anyOf}, C{if}/C{then}/C{else}), and validates with all of
        it: C{$ref}, the conditional and the composition.
        """
        tools, _ = self.registry.listTools()
        [descriptor] = [t for t in tools if t["name"] == "json_schema_2020_12_tool"]
        schema = descriptor["inputSchema"]
        self.assertEqual(schema["$schema"], "https://json-schema.org/draft/2020-12/schema")
        self.assertIn("address", schema["$defs"])
        self.assertIs(schema["additionalProperties"], False)
        self.assertEqual(schema["$defs"]["address"]["$anchor"], "addressDef")
        self.assertIn("anyOf", schema["allOf"][0])
        self.assertEqual((schema["then"], schema["else"]),
                         ({"required": ["phone"]}, {"required": ["email"]}))
        valid = self.registry.validateArguments
        self.assertIsNone(valid(
            "json_schema_2020_12_tool", {"name": "a", "address": {"city": "b"}, "email": "e"}))
        self.assertIsNone(valid(
            "json_schema_2020_12_tool", {"contactMethod": "phone", "phone": "1"}))
        for bad in (
            {"address": {"city": 5}, "email": "e"},  # $ref
            {"name": "a"},  # anyOf: neither phone nor email
            {"contactMethod": "phone", "email": "e"},  # if/then: phone required
            {"email": "e", "other": 1},  # additionalProperties
        ):
            self.assertIsNotNone(valid("json_schema_2020_12_tool", bad), bad)
