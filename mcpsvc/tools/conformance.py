# -*- test-case-name: mcpsvc.tools.test.test_conformance -*-
"""
The C{conformance} tool pack: the fixture tools that the official MCP
conformance suite (C{@modelcontextprotocol/conformance}, server scenarios,
C{src/scenarios/server/tools.ts} and C{server-stateless}) calls by fixed
names. For test runs only: enable it by listing C{conformance} in
C{TOOL_PACKS}; never in production.

The sampling and elicitation fixtures ask the client with
C{context.clientRequest}: on the call's SSE stream in the handshake eras,
through multi round-trip requests (C{input_required}) in 2026-07-28; the
C{test_input_required_result_*} tools and prompt are the suite's MRTR
fixtures (SEP-2322). C{greet}, C{slow_compute}, C{failing_job},
C{protocol_error_job}, C{confirm_delete}, C{multi_input} and
C{test_tool_with_task} are the fixtures of the tasks extension's
scenarios (SEP-2663, C{tasks-*}); C{test_trigger_tool_change} changes the
tool list (adds or removes C{test_dynamic_tool}) for the
C{subscriptions/listen} checks, and C{test_trigger_prompt_change} the prompt
list (adds or removes C{test_dynamic_prompt}). The pack also offers the suite's
resources (C{test://static-text}, C{test://static-binary},
C{test://watched-resource}, template C{test://template/{id}/data}),
prompts and completions, through L{mcpsvc.tools.features}: with the pack
enabled, and only then, mcpsvc declares those capabilities. Its skills
(L{CONFORMANCE_SKILLS}: C{skill://release-notes/SKILL.md} with files in
subdirectories, and C{skill://acme/billing/refunds/SKILL.md} under a path
prefix) are the fixtures of the skills extension's scenarios
(SEP-2640, C{sep-2640-skills-*}). Not provided:
C{test_reconnection} (SSE resumption, which mcpsvc does not implement).
"""

from __future__ import annotations

import base64
import json
import struct
from typing import Any, Dict, List, Mapping

from twisted.internet.defer import gatherResults
from twisted.internet.task import deferLater

from mcpsvc.tools.features import Features, Prompt, PromptArgument, Resource, ResourceTemplate
from mcpsvc.tools.skills import Skill
from mcpsvc.mcp.protocol import INTERNAL_ERROR
from mcpsvc.tools.interfaces import (
    Tool,
    ToolContext,
    ToolError,
    ToolPackContext,
    ToolProtocolError,
    ToolResult,
    textContent,
)

__all__ = [
    "conformanceTools", "conformanceFeatures", "CONFORMANCE_SKILLS", "RED_PIXEL_PNG", "SILENT_WAV",
]

#: A 1x1 PNG.
RED_PIXEL_PNG = (
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8DwHwAFBQIAX8jx0gAAAABJRU5ErkJggg=="
)


def _silentWav(samples: int = 8) -> str:
    rate = 8000
    data = b"\x00\x00" * samples
    header = b"RIFF" + struct.pack("<I", 36 + len(data)) + b"WAVE"
    fmt = b"fmt " + struct.pack("<IHHIIHH", 16, 1, 1, rate, rate * 2, 2, 16)
    return base64.b64encode(header + fmt + b"data" + struct.pack("<I", len(data)) + data).decode("ascii")


#: A few samples of silence, 16-bit mono PCM WAV.
SILENT_WAV = _silentWav()

_NO_ARGS = {"type": "object", "properties": {}, "additionalProperties": False}

#: The schema of C{json_schema_2020_12_tool}, kept verbatim in C{tools/list}
#: (SEP-1613, and the wider 2020-12 vocabulary of SEP-2106: C{$anchor},
#: C{allOf}/C{anyOf}, C{if}/C{then}/C{else}); calls are validated with it.
_SCHEMA_2020_12 = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "$defs": {
        "address": {
            "$anchor": "addressDef",
            "type": "object",
            "properties": {"street": {"type": "string"}, "city": {"type": "string"}},
        }
    },
    "properties": {
        "name": {"type": "string"},
        "address": {"$ref": "#/$defs/address"},
        "contactMethod": {"type": "string", "enum": ["phone", "email"]},
        "phone": {"type": "string"},
        "email": {"type": "string"},
    },
    "allOf": [{"anyOf": [{"required": ["phone"]}, {"required": ["email"]}]}],
    "if": {"properties": {"contactMethod": {"const": "phone"}}, "required": ["contactMethod"]},
    "then": {"required": ["phone"]},
    "else": {"required": ["email"]},
    "additionalProperties": False,
}

#: The schema of C{test_custom_header}: C{region} is mirrored into the
#: C{Mcp-Param-Region} header (SEP-2243).
_CUSTOM_HEADER_SCHEMA = {
    "type": "object",
    "properties": {
        "region": {"type": "string", "description": "Where to run", "x-mcp-header": "Region"},
        "query": {"type": "string"},
    },
    "required": ["region"],
}


def _simpleText(arguments: Mapping[str, Any], context: ToolContext) -> str:
    return "This is a simple text response for testing."


def _image(arguments: Mapping[str, Any], context: ToolContext) -> ToolResult:
    return ToolResult(content=[{"type": "image", "data": RED_PIXEL_PNG, "mimeType": "image/png"}])


def _audio(arguments: Mapping[str, Any], context: ToolContext) -> ToolResult:
    return ToolResult(content=[{"type": "audio", "data": SILENT_WAV, "mimeType": "audio/wav"}])


def _embedded(arguments: Mapping[str, Any], context: ToolContext) -> ToolResult:
    return ToolResult(
        content=[
            {
                "type": "resource",
                "resource": {
                    "uri": "test://embedded-resource",
                    "mimeType": "text/plain",
                    "text": "This is an embedded resource content.",
                },
            }
        ]
    )


def _mixed(arguments: Mapping[str, Any], context: ToolContext) -> ToolResult:
    return ToolResult(
        content=[
            textContent("Multiple content types test:"),
            {"type": "image", "data": RED_PIXEL_PNG, "mimeType": "image/png"},
            {
                "type": "resource",
                "resource": {
                    "uri": "test://mixed-content-resource",
                    "mimeType": "application/json",
                    "text": '{"test":"data","value":123}',
                },
            },
        ]
    )


async def _withLogging(arguments: Mapping[str, Any], context: ToolContext) -> str:
    context.logMessage("info", "Tool execution started")
    await deferLater(context.clock, 0.05, lambda: None)
    context.logMessage("info", "Tool processing data")
    await deferLater(context.clock, 0.05, lambda: None)
    context.logMessage("info", "Tool execution completed")
    return "Tool with logging executed successfully"


async def _withProgress(arguments: Mapping[str, Any], context: ToolContext) -> str:
    context.reportProgress(0, 100)
    await deferLater(context.clock, 0.05, lambda: None)
    context.reportProgress(50, 100)
    await deferLater(context.clock, 0.05, lambda: None)
    context.reportProgress(100, 100)
    return "Tool with progress executed successfully"


def _error(arguments: Mapping[str, Any], context: ToolContext) -> str:
    raise ToolError("This tool intentionally returns an error for testing")


def _capabilityUser(arguments: Mapping[str, Any], context: ToolContext) -> str:
    return "The client declared the capability this tool needs."


def _loggingTool(arguments: Mapping[str, Any], context: ToolContext) -> str:
    context.logMessage("info", "test_logging_tool ran")
    return "Logged one message (if the client asked for logging)."


async def _sampling(arguments: Mapping[str, Any], context: ToolContext) -> str:
    result = await context.clientRequest(
        "sampling/createMessage",
        {
            "messages": [
                {"role": "user", "content": {"type": "text", "text": arguments["prompt"]}}
            ],
            "maxTokens": 100,
        },
    )
    content = result.get("content") if isinstance(result, dict) else None
    text = content.get("text") if isinstance(content, dict) else None
    return f"LLM response: {text if text is not None else json.dumps(content)}"


async def _elicit(context: ToolContext, message: str, schema: Mapping[str, Any], prefix: str) -> str:
    result = await context.clientRequest(
        "elicitation/create", {"message": message, "requestedSchema": dict(schema)}
    )
    result = result if isinstance(result, dict) else {}
    return (
        f"{prefix}action={result.get('action')}, "
        f"content={json.dumps(result.get('content'), sort_keys=True)}"
    )


async def _elicitation(arguments: Mapping[str, Any], context: ToolContext) -> str:
    text = await _elicit(
        context,
        arguments["message"],
        {
            "type": "object",
            "properties": {
                "username": {"type": "string", "description": "User's response"},
                "email": {"type": "string", "description": "User's email address"},
            },
            "required": ["username", "email"],
        },
        "User response: ",
    )
    return text


async def _elicitationDefaults(arguments: Mapping[str, Any], context: ToolContext) -> str:
    return await _elicit(
        context,
        "Please review and update the form fields with defaults",
        {
            "type": "object",
            "properties": {
                "name": {"type": "string", "description": "User name", "default": "John Doe"},
                "age": {"type": "integer", "description": "User age", "default": 30},
                "score": {"type": "number", "description": "User score", "default": 95.5},
                "status": {"type": "string", "description": "User status",
                           "enum": ["active", "inactive", "pending"], "default": "active"},
                "verified": {"type": "boolean", "description": "Verification status",
                             "default": True},
            },
        },
        "Elicitation completed: ",
    )


async def _elicitationEnums(arguments: Mapping[str, Any], context: ToolContext) -> str:
    return await _elicit(
        context,
        "Please select options from the enum fields",
        {
            "type": "object",
            "properties": {
                "untitledSingle": {"type": "string", "enum": ["option1", "option2", "option3"]},
                "titledSingle": {"type": "string", "oneOf": [
                    {"const": "value1", "title": "First Option"},
                    {"const": "value2", "title": "Second Option"},
                    {"const": "value3", "title": "Third Option"}]},
                "legacyEnum": {"type": "string", "enum": ["opt1", "opt2", "opt3"],
                               "enumNames": ["Option One", "Option Two", "Option Three"]},
                "untitledMulti": {"type": "array", "items": {
                    "type": "string", "enum": ["option1", "option2", "option3"]}},
                "titledMulti": {"type": "array", "items": {"anyOf": [
                    {"const": "value1", "title": "First Choice"},
                    {"const": "value2", "title": "Second Choice"},
                    {"const": "value3", "title": "Third Choice"}]}},
            },
        },
        "Elicitation completed: ",
    )


def _form(message: str, **properties: str) -> Dict[str, Any]:
    return {
        "message": message,
        "requestedSchema": {
            "type": "object",
            "properties": {name: {"type": kind} for name, kind in properties.items()},
            "required": sorted(properties),
        },
    }


def _answer(result: Any, field: str) -> Any:
    content = result.get("content") if isinstance(result, dict) else None
    return content.get(field) if isinstance(content, dict) else None


def _sampled(result: Any) -> Any:
    content = result.get("content") if isinstance(result, dict) else None
    return content.get("text") if isinstance(content, dict) else None


def _question(text: str, maxTokens: int) -> Dict[str, Any]:
    return {
        "messages": [{"role": "user", "content": {"type": "text", "text": text}}],
        "maxTokens": maxTokens,
    }


async def _mrtrElicitation(arguments: Mapping[str, Any], context: ToolContext) -> str:
    result = await context.clientRequest(
        "elicitation/create", _form("What is your name?", name="string"), key="user_name"
    )
    return f"Hello, {_answer(result, 'name')}!"


async def _mrtrSampling(arguments: Mapping[str, Any], context: ToolContext) -> str:
    result = await context.clientRequest(
        "sampling/createMessage", _question("What is the capital of France?", 100),
        key="capital_question",
    )
    return f"The model answered: {_sampled(result)}"


async def _mrtrRoots(arguments: Mapping[str, Any], context: ToolContext) -> str:
    result = await context.clientRequest("roots/list", {}, key="client_roots")
    roots = result.get("roots") if isinstance(result, dict) else None
    uris = [r.get("uri") for r in roots if isinstance(r, dict)] if isinstance(roots, list) else []
    return f"The client's roots: {', '.join(str(u) for u in uris) or '(none)'}"


async def _mrtrConfirm(arguments: Mapping[str, Any], context: ToolContext) -> str:
    result = await context.clientRequest(
        "elicitation/create", _form("Please confirm", ok="boolean"), key="confirm"
    )
    return f"state-ok: confirmed={_answer(result, 'ok')}"


async def _mrtrMultiple(arguments: Mapping[str, Any], context: ToolContext) -> str:
    name, greeting, roots = await gatherResults([
        context.clientRequest(
            "elicitation/create", _form("What is your name?", name="string"), key="user_name"
        ),
        context.clientRequest(
            "sampling/createMessage", _question("Generate a greeting", 50), key="greeting"
        ),
        context.clientRequest("roots/list", {}, key="client_roots"),
    ], consumeErrors=True)
    count = len(roots.get("roots") or []) if isinstance(roots, dict) else 0
    return f"{_sampled(greeting)} {_answer(name, 'name')} ({count} roots)"


async def _mrtrMultiRound(arguments: Mapping[str, Any], context: ToolContext) -> str:
    first = await context.clientRequest(
        "elicitation/create", _form("Step 1: What is your name?", name="string"), key="step1"
    )
    second = await context.clientRequest(
        "elicitation/create", _form("Step 2: What is your favorite color?", color="string"),
        key="step2",
    )
    return f"{_answer(first, 'name')} likes {_answer(second, 'color')}"


async def _mrtrCapabilities(arguments: Mapping[str, Any], context: ToolContext) -> str:
    # Ask only what the client can answer (the dispatcher also refuses the
    # rest with ClientRequestError).
    asks = []
    if "sampling" in context.clientCapabilities:
        asks.append(context.clientRequest(
            "sampling/createMessage", _question("Say hello", 20), key="sampled"
        ))
    if "elicitation" in context.clientCapabilities:
        asks.append(context.clientRequest(
            "elicitation/create", _form("What is your name?", name="string"), key="elicited"
        ))
    if not asks:
        return "The client declared neither sampling nor elicitation."
    answers = await gatherResults(asks, consumeErrors=True)
    return f"Got {len(answers)} answer(s)."


async def _mrtrPrompt(arguments: Mapping[str, str], clientRequest: Any) -> List[Dict[str, Any]]:
    result = await clientRequest(
        "elicitation/create", _form("What context should the prompt use?", context="string"),
        key="user_context",
    )
    return [{"role": "user", "content": _text(f"Use this context: {_answer(result, 'context')}")}]


# -- the tasks extension's fixtures (SEP-2663) --------------------------------


def _greet(arguments: Mapping[str, Any], context: ToolContext) -> str:
    return f"Hello, {arguments.get('name', 'World')}!"


async def _slowCompute(arguments: Mapping[str, Any], context: ToolContext) -> str:
    seconds = float(arguments.get("seconds", 1))
    if seconds > 0:
        await deferLater(context.clock, seconds)
    return f"Computed {arguments.get('label', 'result')} after {seconds:g}s"


async def _failingJob(arguments: Mapping[str, Any], context: ToolContext) -> str:
    await deferLater(context.clock, 0.5)
    raise ToolError("The job failed (a tool execution error, on purpose)")


async def _protocolErrorJob(arguments: Mapping[str, Any], context: ToolContext) -> str:
    await deferLater(context.clock, 0.2)
    raise ToolProtocolError(INTERNAL_ERROR, "The job failed with a protocol error, on purpose")


async def _confirmDelete(arguments: Mapping[str, Any], context: ToolContext) -> str:
    filename = arguments.get("filename", "file")
    answer = await context.clientRequest(
        "elicitation/create", _form(f"Delete {filename}?", confirm="boolean"), key="confirm"
    )
    if isinstance(answer, dict) and answer.get("action") == "accept":
        return f"Deleted {filename}"
    return f"Kept {filename}"


async def _multiInput(arguments: Mapping[str, Any], context: ToolContext) -> str:
    first, second = await gatherResults([
        context.clientRequest("elicitation/create", _form("First name?", name="string"),
                              key="first"),
        context.clientRequest("elicitation/create", _form("Second name?", name="string"),
                              key="second"),
    ], consumeErrors=True)
    return f"Got {_answer(first, 'name')} and {_answer(second, 'name')}"


async def _toolWithTask(arguments: Mapping[str, Any], context: ToolContext) -> str:
    # Asked in the request (MRTR), then the rest runs as a task.
    answer = await context.clientRequest(
        "elicitation/create", _form("What is your name?", name="string"), key="user_name"
    )
    name = _answer(answer, "name")
    await context.startTask()
    await deferLater(context.clock, 0.2)
    return f"Hello, {name}! (from a task)"


_SLOW_COMPUTE_SCHEMA = {
    "type": "object",
    "properties": {
        "seconds": {"type": "number", "minimum": 0, "maximum": 600},
        "label": {"type": "string", "maxLength": 200},
    },
}


#: The key of C{ToolPackContext.state} saying whether C{test_dynamic_tool}
#: is listed.
_DYNAMIC = "conformance.dynamicTool"
#: The key of C{ToolPackContext.state} saying whether
#: C{test_dynamic_prompt} is listed.
_DYNAMIC_PROMPT = "conformance.dynamicPrompt"


def _stringArgument(name: str) -> Mapping[str, Any]:
    return {"type": "object", "properties": {name: {"type": "string"}}, "required": [name]}


def conformanceTools(context: ToolPackContext) -> List[Tool]:
    """
    Return the conformance fixture tools.
    """

    def tool(name: str, description: str, call: Any, **kw: Any) -> Tool:
        return Tool(name=name, description=description, inputSchema=_NO_ARGS, call=call, **kw)

    def triggerToolChange(arguments: Mapping[str, Any], toolContext: ToolContext) -> str:
        # The suite's hook for list_changed on subscriptions/listen: add
        # (or remove) test_dynamic_tool, and say so.
        context.state[_DYNAMIC] = not context.state.get(_DYNAMIC, False)
        context.toolsChanged()
        return "test_dynamic_tool " + ("added" if context.state[_DYNAMIC] else "removed")

    def triggerPromptChange(arguments: Mapping[str, Any], toolContext: ToolContext) -> str:
        # The same for the prompt list: add (or remove) test_dynamic_prompt.
        context.state[_DYNAMIC_PROMPT] = not context.state.get(_DYNAMIC_PROMPT, False)
        context.promptsChanged()
        return "test_dynamic_prompt " + ("added" if context.state[_DYNAMIC_PROMPT] else "removed")

    dynamic = []
    if context.state.get(_DYNAMIC, False):
        dynamic.append(tool("test_dynamic_tool", "Appears after test_trigger_tool_change.",
                            _simpleText))
    return dynamic + [
        tool("test_trigger_tool_change",
             "Adds or removes test_dynamic_tool: the tool list changes (list_changed).",
             triggerToolChange),
        tool("test_trigger_prompt_change",
             "Adds or removes test_dynamic_prompt: the prompt list changes (list_changed).",
             triggerPromptChange),
        tool("test_simple_text", "Returns a simple text response.", _simpleText),
        tool("test_image_content", "Returns a 1x1 PNG image.", _image),
        tool("test_audio_content", "Returns a short WAV audio clip.", _audio),
        tool("test_embedded_resource", "Returns an embedded text resource.", _embedded),
        tool("test_multiple_content_types", "Returns text, image and resource content.", _mixed),
        tool("test_tool_with_logging", "Sends three info log messages while running.", _withLogging),
        tool("test_tool_with_progress", "Reports progress 0, 50 and 100 of 100.", _withProgress),
        tool("test_error_handling", "Always fails with isError.", _error),
        tool(
            "test_missing_capability",
            "Needs the client's sampling capability (2026-07-28: -32021 without it).",
            _capabilityUser,
            requiredClientCapabilities={"sampling": {}},
        ),
        tool(
            "test_streaming_elicitation",
            "Needs the client's elicitation capability; returns text.",
            _capabilityUser,
            requiredClientCapabilities={"elicitation": {}},
        ),
        tool("test_logging_tool", "Logs one message when the request asks for logging.", _loggingTool),
        Tool(
            name="test_sampling",
            description="Asks the client's model to answer a prompt (sampling).",
            inputSchema=_stringArgument("prompt"),
            call=_sampling,
            requiredClientCapabilities={"sampling": {}},
        ),
        Tool(
            name="test_elicitation",
            description="Asks the user for a username and an email (elicitation).",
            inputSchema=_stringArgument("message"),
            call=_elicitation,
            requiredClientCapabilities={"elicitation": {}},
        ),
        tool("test_elicitation_sep1034_defaults", "Elicitation with default values (SEP-1034).",
             _elicitationDefaults, requiredClientCapabilities={"elicitation": {}}),
        tool("test_elicitation_sep1330_enums", "Elicitation with every enum form (SEP-1330).",
             _elicitationEnums, requiredClientCapabilities={"elicitation": {}}),
        tool("test_input_required_result_elicitation", "Asks the user's name (MRTR).",
             _mrtrElicitation),
        tool("test_input_required_result_sampling", "Asks the client's model (MRTR).",
             _mrtrSampling),
        tool("test_input_required_result_list_roots", "Asks the client's roots (MRTR).",
             _mrtrRoots),
        tool("test_input_required_result_request_state", "Asks for a confirmation (MRTR).",
             _mrtrConfirm),
        tool("test_input_required_result_tampered_state", "Asks for a confirmation (MRTR).",
             _mrtrConfirm),
        tool("test_input_required_result_multiple_inputs",
             "Asks for a name, a sampled greeting and the roots at once (MRTR).", _mrtrMultiple),
        tool("test_input_required_result_multi_round", "Asks two questions in turn (MRTR).",
             _mrtrMultiRound),
        tool("test_input_required_result_capabilities",
             "Asks only what the client declared it can answer (MRTR).", _mrtrCapabilities),
        Tool(
            name="test_custom_header",
            description="Echoes its region, which clients mirror into Mcp-Param-Region.",
            inputSchema=_CUSTOM_HEADER_SCHEMA,
            call=lambda arguments, context: f"Region: {arguments['region']}",
        ),
        Tool(
            name="json_schema_2020_12_tool",
            description="Tool with JSON Schema 2020-12 features",
            inputSchema=_SCHEMA_2020_12,
            call=lambda arguments, context: f"Received: {sorted(arguments)}",
        ),
        Tool(name="greet", description="Greets someone (never a task).",
             inputSchema={"type": "object", "properties": {"name": {"type": "string"}}},
             call=_greet),
        Tool(name="slow_compute", description="Waits some seconds, then answers (a task when "
             "the client supports tasks).", inputSchema=_SLOW_COMPUTE_SCHEMA,
             call=_slowCompute, taskSupport="optional", timeout=660),
        tool("failing_job", "A task that ends with a tool execution error.", _failingJob,
             taskSupport="required"),
        tool("protocol_error_job", "A task that ends with a JSON-RPC error.", _protocolErrorJob,
             taskSupport="optional"),
        Tool(name="confirm_delete", description="Asks the user to confirm a deletion (a task "
             "waiting for input).",
             inputSchema={"type": "object", "properties": {"filename": {"type": "string"}}},
             call=_confirmDelete, taskSupport="optional"),
        tool("multi_input", "Asks two questions at once (a task waiting for input).",
             _multiInput, taskSupport="optional"),
        tool("test_tool_with_task", "Asks the user's name (MRTR), then finishes as a task.",
             _toolWithTask, taskSupport="required", startsTaskItself=True),
    ]


def _text(text: str) -> Dict[str, Any]:
    return {"type": "text", "text": text}


def _completeArgument(ref: Mapping[str, Any], name: str, value: str) -> List[str]:
    if ref.get("type") == "ref/prompt" and ref.get("name") == "test_prompt_with_arguments":
        return [v for v in ("paris", "park", "party") if v.startswith(value)]
    return []


#: The skills of the pack (the skills extension's fixtures).
CONFORMANCE_SKILLS = (
    Skill(path="release-notes", files={
        "SKILL.md": (
            b"---\n"
            b"name: release-notes\n"
            b"description: Write release notes from a list of merged changes\n"
            b"license: Apache-2.0\n"
            b"metadata:\n"
            b"  version: \"1.2\"\n"
            b"  audience: [operators, developers]\n"
            b"---\n\n"
            b"# Release notes\n\n"
            b"Group the changes as `references/STYLE.md` says, and start from the\n"
            b"matching template in `templates/`.\n"
        ),
        "references/STYLE.md": b"# Style\n\nOne line per change, newest first.\n",
        "templates/minor.md": b"## {version}\n\n### Changes\n",
        "templates/major/upgrade.md": b"## Upgrading to {version}\n",
    }),
    Skill(path="acme/billing/refunds", files={
        "SKILL.md": (
            b"---\n"
            b"name: refunds\n"
            b"description: Process customer refund requests per company policy\n"
            b"---\n\n"
            b"# Refunds\n\nAnswer with the email in `examples/email.md`.\n"
        ),
        "examples/email.md": b"Dear customer,\n\nYour refund is on its way.\n",
    }),
)


def conformanceFeatures(context: ToolPackContext) -> Features:
    """
    Return the conformance resources, resource template, prompts and
    completions.
    """

    def staticText(uri: str) -> List[Dict[str, Any]]:
        return [{"uri": uri, "mimeType": "text/plain",
                 "text": "This is the content of the static text resource."}]

    def staticBinary(uri: str) -> List[Dict[str, Any]]:
        return [{"uri": uri, "mimeType": "image/png", "blob": RED_PIXEL_PNG}]

    def watched(uri: str) -> List[Dict[str, Any]]:
        return [{"uri": uri, "mimeType": "text/plain", "text": "Watched resource content."}]

    def templateData(uri: str, variables: Mapping[str, str]) -> List[Dict[str, Any]]:
        id = variables["id"]
        body = {"id": id, "templateTest": True, "data": f"Data for ID: {id}"}
        return [{"uri": uri, "mimeType": "application/json",
                 "text": json.dumps(body, separators=(",", ":"))}]

    dynamic = []
    if context.state.get(_DYNAMIC_PROMPT, False):
        dynamic.append(Prompt(
            name="test_dynamic_prompt", description="Appears after test_trigger_prompt_change.",
            get=lambda a: [{"role": "user", "content": _text("A dynamic prompt.")}]))
    return Features(
        resources=[
            Resource(uri="test://static-text", name="static-text", mimeType="text/plain",
                     description="A static text resource.", read=staticText),
            Resource(uri="test://static-binary", name="static-binary", mimeType="image/png",
                     description="A static binary resource (a PNG).", read=staticBinary),
            Resource(uri="test://watched-resource", name="watched-resource",
                     mimeType="text/plain", description="A resource one may subscribe to.",
                     read=watched),
        ],
        templates=[
            ResourceTemplate(uriTemplate="test://template/{id}/data", name="template-data",
                             mimeType="application/json",
                             description="Data for an id, from a template.", read=templateData),
        ],
        prompts=[
            Prompt(name="test_simple_prompt", description="A simple prompt without arguments.",
                   get=lambda a: [{"role": "user",
                                   "content": _text("This is a simple prompt for testing.")}]),
            Prompt(
                name="test_prompt_with_arguments",
                description="A prompt with two required arguments.",
                arguments=[PromptArgument(name="arg1", description="First test argument", required=True),
                           PromptArgument(name="arg2", description="Second test argument", required=True)],
                get=lambda a: [{"role": "user", "content": _text(
                    f"Prompt with arguments: arg1='{a['arg1']}', arg2='{a['arg2']}'")}],
            ),
            Prompt(
                name="test_prompt_with_embedded_resource",
                description="A prompt embedding a resource.",
                arguments=[PromptArgument(name="resourceUri", description="URI of the resource to embed",
                                          required=True)],
                get=lambda a: [
                    {"role": "user", "content": {"type": "resource", "resource": {
                        "uri": a["resourceUri"], "mimeType": "text/plain",
                        "text": "Embedded resource content for testing."}}},
                    {"role": "user", "content": _text("Please process the embedded resource above.")},
                ],
            ),
            Prompt(
                name="test_input_required_result_prompt",
                description="A prompt that asks the user for context first (MRTR).",
                get=_mrtrPrompt,
                asksForInput=True,
            ),
            *dynamic,
            Prompt(
                name="test_prompt_with_image",
                description="A prompt with an image.",
                get=lambda a: [
                    {"role": "user", "content": {"type": "image", "data": RED_PIXEL_PNG,
                                                 "mimeType": "image/png"}},
                    {"role": "user", "content": _text("Please analyze the image above.")},
                ],
            ),
        ],
        complete=_completeArgument,
        subscribable=True,
        skills=CONFORMANCE_SKILLS,
    )
