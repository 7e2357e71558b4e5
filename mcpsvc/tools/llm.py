# -*- test-case-name: mcpsvc.tools.test.test_llm -*-
"""
The C{llm} tool pack: C{llm_generate}, against an Ollama-compatible
C{POST {LLM_URL}/api/generate} (non-streaming), through a treq-compatible
client.

The call is bounded in time by the tool timeout (the request Deferred is
cancelled, which aborts the connection) and in size: the prompt by the
input schema, the response body while it is read.
"""

from __future__ import annotations

import json
from typing import Any, Dict, List, Mapping

from twisted.internet.defer import CancelledError, Deferred
from twisted.logger import Logger

from mcpsvc.http.jsonio import InvalidJSON, decodeJSON
from mcpsvc.tools.interfaces import Tool, ToolContext, ToolError, ToolPackContext

__all__ = ["llmTools", "DEFAULT_MODEL", "MAX_RESPONSE", "MAX_PROMPT", "LLM_TIMEOUT"]

log = Logger()

DEFAULT_MODEL = "llama3.2"
MAX_PROMPT = 32_000
MAX_RESPONSE = 1024 * 1024
#: Generation is slow: a longer default than TOOL_TIMEOUT.
LLM_TIMEOUT = 120.0


class _TooLarge(Exception):
    pass


async def _readLimited(response: Any, limit: int) -> bytes:
    import treq

    chunks: List[bytes] = []
    size = 0

    def collect(data: bytes) -> None:
        nonlocal size
        size += len(data)
        if size > limit:
            raise _TooLarge()
        chunks.append(data)

    try:
        await treq.collect(response, collect)
    except _TooLarge:
        raise ToolError(f"The LLM response is larger than {limit} bytes") from None
    except CancelledError:
        raise
    except Exception as e:
        log.warn("Reading the LLM response failed: {why}", why=repr(e))
        raise ToolError("The LLM service's answer was cut off; try again") from None
    return b"".join(chunks)


def llmTools(context: ToolPackContext, *, maxResponse: int = MAX_RESPONSE) -> List[Tool]:
    """
    Return the C{llm} pack's tool, or none when C{LLM_URL} is unset.
    """
    baseURL = context.config.llmURL
    if not baseURL:
        return []
    httpClient = context.httpClient
    if httpClient is None:
        import treq as httpClient  # type: ignore[no-redef]
    url = baseURL.rstrip("/") + "/api/generate"

    async def generate(arguments: Mapping[str, Any], call: ToolContext) -> Dict[str, Any]:
        body: Dict[str, Any] = {
            "model": arguments.get("model") or DEFAULT_MODEL,
            "prompt": arguments["prompt"],
            "stream": False,
        }
        if "system" in arguments:
            body["system"] = arguments["system"]
        if "maxTokens" in arguments:
            body["options"] = {"num_predict": arguments["maxTokens"]}
        d: Deferred[Any] = httpClient.post(
            url,
            data=json.dumps(body).encode("utf-8"),
            headers={b"Content-Type": [b"application/json"], b"Accept": [b"application/json"]},
        )
        try:
            response = await d
        except CancelledError:
            raise
        except Exception as e:
            log.warn("LLM request failed: {why}", why=repr(e))
            raise ToolError("The LLM service could not be reached") from None
        raw = await _readLimited(response, maxResponse)
        if response.code != 200:
            log.warn("LLM service answered HTTP {code}", code=response.code)
            raise ToolError(f"The LLM service answered HTTP {response.code}")
        try:
            parsed = decodeJSON(raw, maxBytes=None)
        except InvalidJSON:
            raise ToolError("The LLM service answered with invalid JSON") from None
        if not isinstance(parsed, dict) or not isinstance(parsed.get("response"), str):
            raise ToolError("The LLM service answered without a response text")
        return {
            "model": str(parsed.get("model", body["model"])),
            "response": parsed["response"],
            "done": bool(parsed.get("done", True)),
        }

    return [
        Tool(
            name="llm_generate",
            title="Generate text",
            description="Generate text with the configured language model (Ollama-compatible API).",
            inputSchema={
                "type": "object",
                "properties": {
                    "prompt": {"type": "string", "minLength": 1, "maxLength": MAX_PROMPT},
                    "model": {"type": "string", "minLength": 1, "maxLength": 200,
                              "description": f"Model name (default {DEFAULT_MODEL})."},
                    "system": {"type": "string", "maxLength": MAX_PROMPT},
                    "maxTokens": {"type": "integer", "minimum": 1, "maximum": 8192},
                },
                "required": ["prompt"],
                "additionalProperties": False,
            },
            outputSchema={
                "type": "object",
                "properties": {
                    "model": {"type": "string"},
                    "response": {"type": "string"},
                    "done": {"type": "boolean"},
                },
                "required": ["model", "response", "done"],
            },
            annotations={"readOnlyHint": True, "openWorldHint": True},
            timeout=max(LLM_TIMEOUT, context.config.toolTimeout),
            call=generate,
            # A generation can take minutes: a client supporting the tasks
            # extension (2026-07-28) gets a task to poll.
            taskSupport="optional",
        )
    ]
