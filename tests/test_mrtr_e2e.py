"""
A tool that asks the user, end to end: a real C{twistd -n mcpsvc} process
on loopback serving the documented C{textstats} pack (found by plugin
discovery on C{PYTHONPATH=docs/examples}), and the official MCP Python
SDK's client asking it in both eras:

  - 2026-07-28: the SDK drives the multi round-trip request
    (C{input_required}, then the retry with C{inputResponses} and the
    C{requestState});
  - 2025-06-18: the same tool's question arrives as C{elicitation/create}
    on the call's SSE stream.

Raw HTTP over loopback shows the wire of the first round and that a
tampered C{requestState} is refused.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any, Dict, List

import httpx2
import mcp.client.session
import mcp_types
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from twisted.trial.unittest import SynchronousTestCase

from mcpsvc.testing.redis import freePort
from tests.process import HERE, SECRET, McpsvcProcess

MODERN = "2026-07-28"
TEXT = "the cat and the hat"


class AskingToolEndToEndTests(SynchronousTestCase):
    def setUp(self) -> None:
        workdir = os.path.abspath(self.mktemp())
        os.makedirs(workdir)
        port = freePort()
        self.url = f"http://127.0.0.1:{port}"
        self.process = McpsvcProcess(
            workdir,
            env={
                "JWT_SECRET": SECRET,
                "AUTH_MODE": "none",
                "TOOL_PACKS": "core,textstats",
                "STORE": "memory",
                "SERVER_URL": self.url,
                "PYTHONPATH": os.path.join(HERE, "docs", "examples"),
            },
            listen=[f"tcp:{port}:interface=127.0.0.1"],
        )
        self.addCleanup(self.process.kill)
        self.process.start()
        self.asked: List[str] = []

    async def elicit(self, context: Any, params: Any) -> mcp_types.ElicitResult:
        self.asked.append(params.message)
        return mcp_types.ElicitResult(action="accept", content={"word": "the"})

    def countWord(self, mode: str) -> Any:
        async def session() -> Any:
            async with httpx2.AsyncClient(timeout=30) as http:
                transport = streamable_http_client(self.url + "/mcp", http_client=http)
                async with Client(
                    transport, mode=mode, elicitation_callback=self.elicit  # type: ignore[arg-type]
                ) as client:
                    result = await client.call_tool("count_word", {"text": TEXT})
                    return client.protocol_version, result

        return asyncio.run(asyncio.wait_for(session(), 60))

    def asksForInput(self) -> List[Dict[str, Any]]:
        """
        The input rounds logged up to the (last) completed call.
        """
        self.process.waitFor(lambda r: r.get("eventType") == "request" and r.get("tool") == "count_word", 10)
        return [r for r in self.process.records
                if "asks client" in str(r.get("text", "")) and "count_word" in str(r.get("text", ""))]

    def test_modernClientThroughMRTR(self) -> None:
        """
        The SDK in 2026-07-28 mode answers the question the round asked and
        gets the count; the server logged one input round.
        """
        version, result = self.countWord(MODERN)
        self.assertEqual(version, MODERN)
        self.assertFalse(result.is_error, result)
        self.assertEqual(result.content[0].text, "'the' appears 2 times.")
        self.assertEqual(self.asked, ["Which word should I count?"])
        self.assertEqual(len(self.asksForInput()), 1)
        self.assertNotIn("Traceback", self.process.output)

    def test_legacyClientThroughElicitation(self) -> None:
        """
        The SDK in 2025-06-18 (legacy handshake) gets the same question as
        an C{elicitation/create} request on the stream, and the same count;
        no input round happened.
        """
        self.patch(mcp.client.session, "LATEST_HANDSHAKE_VERSION", "2025-06-18")
        version, result = self.countWord("legacy")
        self.assertEqual(version, "2025-06-18")
        self.assertFalse(result.is_error, result)
        self.assertEqual(result.content[0].text, "'the' appears 2 times.")
        self.assertEqual(self.asked, ["Which word should I count?"])
        self.assertEqual(self.asksForInput(), [])
        self.assertNotIn("Traceback", self.process.output)

    def post(self, id: int, params: Dict[str, Any], capabilities: Any = None) -> httpx2.Response:
        params = dict(params, _meta={
            "io.modelcontextprotocol/protocolVersion": MODERN,
            "io.modelcontextprotocol/clientInfo": {"name": "raw", "version": "1"},
            "io.modelcontextprotocol/clientCapabilities":
                {"elicitation": {}} if capabilities is None else capabilities,
        })
        return httpx2.post(
            self.url + "/mcp",
            json={"jsonrpc": "2.0", "id": id, "method": "tools/call", "params": params},
            headers={"Accept": "application/json, text/event-stream",
                     "MCP-Protocol-Version": MODERN, "Mcp-Method": "tools/call",
                     "Mcp-Name": "count_word"},
            timeout=30,
        )

    def test_rawWire(self) -> None:
        """
        Over raw HTTP: round one is C{input_required} with the tool's key
        and a C{requestState}; a tampered state is -32602; the genuine one
        with the answer completes; a client without elicitation is told
        the capability is missing.
        """
        call = {"name": "count_word", "arguments": {"text": TEXT}}
        first = self.post(1, call).json()["result"]
        self.assertEqual(first["resultType"], "input_required")
        self.assertEqual(list(first["inputRequests"]), ["word"])
        answers = {"word": {"action": "accept", "content": {"word": "cat"}}}
        tampered = self.post(2, dict(call, inputResponses=answers,
                                     requestState=first["requestState"] + "x")).json()
        self.assertEqual(tampered["error"]["code"], -32602)
        other = self.post(3, dict(call, arguments={"text": "cat cat"}, inputResponses=answers,
                                  requestState=first["requestState"])).json()
        self.assertEqual(other["error"]["code"], -32602)
        done = self.post(4, dict(call, inputResponses=answers,
                                 requestState=first["requestState"])).json()["result"]
        self.assertEqual(done["resultType"], "complete")
        self.assertEqual(done["content"][0]["text"], "'cat' appears 1 time.")
        missing = self.post(5, call, capabilities={})
        self.assertEqual(missing.json()["error"]["code"], -32021)
        self.process.waitFor(lambda r: "Refused the requestState" in str(r.get("text", "")), 10)
        self.assertNotIn("Traceback", self.process.output)
