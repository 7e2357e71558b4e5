"""
Tests for the C{Mcp-Param-*} headers of C{x-mcp-header} tool parameters
(SEP-2243, 2026-07-28), through L{mcpsvc.mcp.app} over StubTreq.
"""

import base64
import json
from typing import Any, Dict, List

from twisted.trial.unittest import SynchronousTestCase

from mcpsvc.mcp.test.helpers import MODERN_META, Harness
from mcpsvc.tools.interfaces import Tool
from mcpsvc.tools.registry import InvalidTool, ToolRegistry

SCHEMA = {
    "type": "object",
    "properties": {
        "region": {"type": "string", "x-mcp-header": "Region"},
        "count": {"type": "integer", "x-mcp-header": "Count"},
        "flag": {"type": "boolean", "x-mcp-header": "Flag"},
        "nested": {"type": "object", "properties": {
            "zone": {"type": "string", "x-mcp-header": "Zone"}}},
        "plain": {"type": "string"},
    },
}


def b64(text: str) -> str:
    return "=?base64?" + base64.b64encode(text.encode("utf-8")).decode("ascii") + "?="


class _Harness(Harness):
    def tools(self) -> List[Tool]:
        return super().tools() + [Tool(
            name="where", description="Echoes.", inputSchema=SCHEMA,
            call=lambda arguments, context: json.dumps(arguments, sort_keys=True),
        )]


class ParamHeaderTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.h = _Harness(self)

    def send(self, arguments: Dict[str, Any], **headers: str) -> Any:
        params = {"name": "where", "arguments": arguments, "_meta": MODERN_META}
        response, body = self.h.post(
            self.h.call(7, "tools/call", params),
            self.h.modernHeaders("tools/call", "where", **headers),
        )
        return response.code, json.loads(body)

    def assertRejected(self, arguments: Dict[str, Any], **headers: str) -> None:
        code, message = self.send(arguments, **headers)
        self.assertEqual((code, message["error"]["code"], message["id"]), (400, -32020, 7),
                         (arguments, headers))

    def assertAccepted(self, arguments: Dict[str, Any], **headers: str) -> None:
        code, message = self.send(arguments, **headers)
        self.assertEqual(code, 200, (arguments, headers, message))
        self.assertIn("result", message)

    def test_matching(self) -> None:
        """
        Headers matching the arguments are accepted: literal, base64,
        integers compared numerically, booleans lower-case, nested
        parameters; parameters absent or null need no header.
        """
        self.assertAccepted({"region": "us-west1"}, **{"Mcp-Param-Region": "us-west1"})
        self.assertAccepted({"region": "Hello, 世界"}, **{"Mcp-Param-Region": b64("Hello, 世界")})
        self.assertAccepted({"region": " padded "}, **{"mcp-param-region": b64(" padded ")})
        self.assertAccepted({"count": 42}, **{"Mcp-Param-Count": "42.0"})
        self.assertAccepted({"flag": False}, **{"Mcp-Param-Flag": "false"})
        self.assertAccepted({"nested": {"zone": "z1"}}, **{"Mcp-Param-Zone": "z1"})
        self.assertAccepted({"plain": "x", "region": None})
        self.assertAccepted({})
        # Without the full sentinel, a value is literal.
        self.assertAccepted({"region": "SGVsbG8="}, **{"Mcp-Param-Region": "SGVsbG8="})
        self.assertAccepted({"region": "=?base64?SGVsbG8="}, **{"Mcp-Param-Region": "=?base64?SGVsbG8="})

    def test_rejected(self) -> None:
        """
        A missing header for a present value, a mismatch, or malformed
        base64 is 400 with -32020 (HeaderMismatch).
        """
        self.assertRejected({"region": "us-west1"})
        self.assertRejected({"region": "us-west1"}, **{"Mcp-Param-Region": "eu-west1"})
        self.assertRejected({"region": "Hello"}, **{"Mcp-Param-Region": "=?base64?SGVsbG8?="})
        self.assertRejected({"region": "Hello"}, **{"Mcp-Param-Region": "=?base64?SGVs!!!bG8=?="})
        self.assertRejected({"count": 42}, **{"Mcp-Param-Count": "43"})
        self.assertRejected({"count": 42}, **{"Mcp-Param-Count": "forty-two"})
        self.assertRejected({"flag": True}, **{"Mcp-Param-Flag": "True"})
        self.assertRejected({"nested": {"zone": "z1"}})
        self.assertRejected({"region": 5}, **{"Mcp-Param-Region": "5"})


class DefinitionTests(SynchronousTestCase):
    def build(self, properties: Dict[str, Any], **extra: Any) -> ToolRegistry:
        from twisted.internet.task import Clock

        schema = dict({"type": "object", "properties": properties}, **extra)
        return ToolRegistry(
            [Tool(name="t", description="t", inputSchema=schema, call=lambda a, c: "")],
            clock=Clock(),
        )

    def test_parameters(self) -> None:
        registry = self.build(SCHEMA["properties"])
        self.assertEqual(
            [(p.path, p.header, p.type) for p in registry.headerParameters("t")],
            [(("region",), "Region", "string"), (("count",), "Count", "integer"),
             (("flag",), "Flag", "boolean"), (("nested", "zone"), "Zone", "string")],
        )
        self.assertEqual(registry.headerParameters("unknown"), ())

    def test_invalid(self) -> None:
        """
        Invalid annotations make the tool invalid: empty or non-token
        names, case-insensitive duplicates, non-primitive or C{number}
        types, and annotations not reachable through C{properties}.
        """
        for properties, extra in (
            ({"a": {"type": "string", "x-mcp-header": ""}}, {}),
            ({"a": {"type": "string", "x-mcp-header": "bad name"}}, {}),
            ({"a": {"type": "string", "x-mcp-header": "Bad\r\nX"}}, {}),
            ({"a": {"type": "string", "x-mcp-header": "X"},
              "b": {"type": "string", "x-mcp-header": "x"}}, {}),
            ({"a": {"type": "number", "x-mcp-header": "X"}}, {}),
            ({"a": {"type": "array", "items": {"type": "string"}, "x-mcp-header": "X"}}, {}),
            ({"a": {"type": "array", "items": {"type": "string", "x-mcp-header": "X"}}}, {}),
            ({}, {"anyOf": [{"properties": {"a": {"type": "string", "x-mcp-header": "X"}}}]}),
            ({}, {"$defs": {"a": {"type": "string", "x-mcp-header": "X"}}}),
            ({}, {"x-mcp-header": "Root"}),
        ):
            self.assertRaises(InvalidTool, self.build, properties, **extra)
