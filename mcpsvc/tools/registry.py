# -*- test-case-name: mcpsvc.tools.test.test_registry -*-
"""
The set of enabled tools: listing (ordered, paginated) and calling
(rate limiting, argument validation, timeout, error reporting, structured
output, metrics).

Rate limiting (L{mcpsvc.tools.ratelimit}): every call takes a token from
the caller's bucket (subject and client), in process, before anything
else. A refused call is a C{tools/call} result with C{isError: true}, not
a JSON-RPC error: the specification reserves protocol errors for
malformed requests, unknown tools and server faults, and says errors
that come from running a tool belong in the result, where the model sees
them and can wait or tell the user. The request itself is valid; the
tool just cannot run now. (It is not an HTTP 429 either: that would be
an error of the transport, which clients treat as a failed connection.)
The result carries C{_meta["io.mcpsvc/retryAfter"]}, whole seconds.

Schemas are checked and their validators compiled once, when the registry
is built; the C{tools/list} descriptors are built once too.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from attrs import frozen

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError
from twisted.internet.defer import (
    CancelledError,
    Deferred,
    FirstError,
    TimeoutError,
    maybeDeferred,
)
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from mcpsvc.mcp.protocol import INVALID_PARAMS, ProtocolError
from mcpsvc.tools.features import FeatureSet
from mcpsvc.tools.ratelimit import TokenBuckets, retryAfter
from mcpsvc.tools.schemacheck import SchemaChecker
from mcpsvc.tools.interfaces import (
    InputNeeded,
    REQUIRED_SCOPES,
    TASK_SUPPORT,
    TOOL_NAME,
    Tool,
    ToolContext,
    ToolError,
    ToolProtocolError,
    ToolResult,
    textContent,
)

__all__ = ["ToolRegistry", "InvalidTool", "HeaderParameter", "DEFAULT_PAGE_SIZE", "OUTCOMES"]

#: The C{outcome} label values of the tool-call metric.
OUTCOMES = (
    "ok", "error", "invalid_arguments", "timeout", "cancelled", "rate_limited", "unknown_tool",
    "input_required",
)
#: The C{tool} label of calls to unknown tools (never the requested
#: name: clients must not be able to create label values).
UNKNOWN_TOOL_LABEL = "(unknown)"

DEFAULT_PAGE_SIZE = 100
#: Longest validation message returned to a client.
_MAX_MESSAGE = 2000


class InvalidTool(ValueError):
    """
    A tool definition is unusable (bad name, duplicate, invalid schema).
    """


def _checkSchema(tool: Tool, which: str, schema: Any) -> SchemaChecker:
    if not isinstance(schema, Mapping):
        raise InvalidTool(f"tool {tool.name!r}: {which} must be a JSON object")
    if schema.get("type") != "object":
        raise InvalidTool(f'tool {tool.name!r}: {which} root must be "type": "object"')
    dialect = schema.get("$schema")
    if dialect is not None and dialect != Draft202012Validator.META_SCHEMA["$id"]:
        raise InvalidTool(f"tool {tool.name!r}: {which} uses unsupported dialect {dialect!r}")
    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as e:
        raise InvalidTool(f"tool {tool.name!r}: invalid {which}: {e.message}") from None
    return SchemaChecker(schema, _MAX_MESSAGE)


#: An HTTP field-name token (RFC 9110 section 5.6.2).
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
#: The parameter types an C{x-mcp-header} may annotate.
_HEADER_TYPES = ("string", "integer", "boolean")


@frozen
class HeaderParameter:
    """
    A tool parameter mirrored into an C{Mcp-Param-{header}} HTTP header
    (C{x-mcp-header}, SEP-2243).

    @ivar path: the chain of C{properties} keys from the schema root.
    @ivar header: the name after C{Mcp-Param-}.
    @ivar type: C{string}, C{integer} or C{boolean}.
    """

    path: Tuple[str, ...]
    header: str
    type: str


def _headerParameters(tool: Tool) -> Tuple[HeaderParameter, ...]:
    """
    The C{x-mcp-header} parameters of C{tool.inputSchema}.

    @raise InvalidTool: an annotation is malformed, duplicated
        (case-insensitively), on a non-primitive or C{number} parameter, or
        not reachable through C{properties} alone.
    """
    found: List[HeaderParameter] = []
    reachable: set = set()

    def walk(schema: Any, path: Tuple[str, ...]) -> None:
        if not isinstance(schema, Mapping):
            return
        if path:
            reachable.add(id(schema))
        if "x-mcp-header" in schema and path:
            header = schema["x-mcp-header"]
            kind = schema.get("type")
            if not isinstance(header, str) or not _TOKEN.fullmatch(header):
                raise InvalidTool(
                    f"tool {tool.name!r}: x-mcp-header of {'.'.join(path)} must be an "
                    "HTTP token"
                )
            if kind not in _HEADER_TYPES:
                raise InvalidTool(
                    f"tool {tool.name!r}: x-mcp-header only applies to string, integer or "
                    f"boolean parameters, not {'.'.join(path)}"
                )
            found.append(HeaderParameter(path=path, header=header, type=kind))
        properties = schema.get("properties")
        if isinstance(properties, Mapping):
            for key, sub in properties.items():
                walk(sub, path + (str(key),))

    def stray(schema: Any, where: str) -> None:
        # Any annotation the walk above did not reach is invalid.
        if isinstance(schema, Mapping):
            if "x-mcp-header" in schema and id(schema) not in reachable:
                raise InvalidTool(
                    f"tool {tool.name!r}: x-mcp-header at {where or '(root)'} is not reachable "
                    "through properties alone"
                )
            for key, sub in schema.items():
                stray(sub, f"{where}/{key}")
        elif isinstance(schema, list):
            for index, sub in enumerate(schema):
                stray(sub, f"{where}/{index}")

    walk(tool.inputSchema, ())
    stray(tool.inputSchema, "")
    names = [p.header.lower() for p in found]
    if len(set(names)) != len(names):
        raise InvalidTool(f"tool {tool.name!r}: x-mcp-header names must be unique")
    return tuple(found)


def _timedOut(result: Any, timeout: float) -> Failure:
    # Whatever the cancelled tool produced (some code turns the
    # cancellation into another error), the call timed out.
    return Failure(TimeoutError(f"timed out after {timeout} seconds"))


def errorResult(message: str) -> Dict[str, Any]:
    """
    Return a C{CallToolResult} reporting a failure.
    """
    return {"content": [textContent(message)], "isError": True}


class ToolRegistry:
    """
    The enabled tools, in name order.

    @ivar defaultTimeout: seconds allowed to a call whose tool sets none.
    @ivar pageSize: tools per C{tools/list} page.
    @ivar features: resources, prompts and completions of the enabled
        packs (usually none).
    @ivar rateLimit: the per-principal L{TokenBuckets}, or C{None} when
        calls are not limited.
    @ivar metrics: a L{mcpsvc.metrics.Metrics} fed one
        C{toolCall(tool, outcome)} per call, or C{None}.
    """

    log = Logger()

    def __init__(
        self,
        tools: Sequence[Tool],
        *,
        clock: IReactorTime,
        defaultTimeout: float = 30.0,
        pageSize: int = DEFAULT_PAGE_SIZE,
        features: Optional[FeatureSet] = None,
        rateLimit: Any = None,
        metrics: Any = None,
    ) -> None:
        """
        @param rateLimit: C{None} (no limit), or anything with C{count}
            and C{seconds} (a L{mcpsvc.config.RateLimit}): at most
            C{count} calls per C{seconds} per subject and client, with
            bursts up to C{count}.
        @param metrics: see L{metrics}.
        """
        self._clock = clock
        self.rateLimit: Optional[TokenBuckets] = (
            TokenBuckets(rateLimit.count, rateLimit.seconds, clock) if rateLimit is not None else None
        )
        self.metrics = metrics
        self.features = features if features is not None else FeatureSet()
        self.defaultTimeout = defaultTimeout
        self.pageSize = max(1, pageSize)
        #: Rebuilds the registry from the enabled packs (set by
        #: C{buildToolRegistry}; see L{replaceTools}); C{None}: fixed.
        self.rebuild: Optional[Callable[[], "ToolRegistry"]] = None
        self._load(tools)

    def _load(self, tools: Sequence[Tool]) -> None:
        """
        Check C{tools} and make them the tool set, all at once: a tool that
        fails a check raises L{InvalidTool} and nothing changes.
        """
        byName: Dict[str, Tool] = {}
        inputValidators: Dict[str, SchemaChecker] = {}
        outputValidators: Dict[str, SchemaChecker] = {}
        headerParameters: Dict[str, Tuple[HeaderParameter, ...]] = {}
        for tool in tools:
            if not isinstance(tool.name, str) or not TOOL_NAME.fullmatch(tool.name):
                raise InvalidTool(
                    f"tool name {tool.name!r} must be 1-64 characters of A-Z a-z 0-9 _ . -"
                )
            if tool.name in byName:
                raise InvalidTool(f"tool {tool.name!r} is defined twice")
            if not isinstance(tool.description, str) or not tool.description.strip():
                raise InvalidTool(f"tool {tool.name!r} has no description")
            if tool.requiredScope is not None and tool.requiredScope not in REQUIRED_SCOPES:
                # A scope the authorization server cannot grant would make
                # the tool uncallable; say so at start-up.
                raise InvalidTool(
                    f"tool {tool.name!r}: requiredScope {tool.requiredScope!r} is not one of "
                    f"the scopes mcpsvc grants ({', '.join(REQUIRED_SCOPES)})"
                )
            if tool.taskSupport not in TASK_SUPPORT:
                raise InvalidTool(
                    f"tool {tool.name!r}: taskSupport {tool.taskSupport!r} is not one of "
                    f"{', '.join(TASK_SUPPORT)}"
                )
            if tool.startsTaskItself and tool.taskSupport == "forbidden":
                raise InvalidTool(
                    f"tool {tool.name!r}: startsTaskItself needs taskSupport optional or required"
                )
            inputValidators[tool.name] = _checkSchema(tool, "inputSchema", tool.inputSchema)
            if tool.outputSchema is not None:
                outputValidators[tool.name] = _checkSchema(
                    tool, "outputSchema", tool.outputSchema
                )
            headerParameters[tool.name] = _headerParameters(tool)
            byName[tool.name] = tool
        descriptors = [byName[name].descriptor() for name in sorted(byName)]
        self._inputValidators = inputValidators
        self._outputValidators = outputValidators
        self._headerParameters = headerParameters
        self._tools: Dict[str, Tool] = {name: byName[name] for name in sorted(byName)}
        self._descriptors: List[Dict[str, Any]] = descriptors
        self._fingerprint = hashlib.sha256(
            json.dumps(self._descriptors, sort_keys=True).encode("utf-8")
        ).hexdigest()[:12]

    def replaceTools(self, other: "ToolRegistry") -> bool:
        """
        Take the tool set of C{other} (a registry built the same way, by
        C{rebuild}), keeping this registry's rate limits, metrics and
        features; calls already running finish with the tool they started
        with. Return whether the listing changed (cursors of the old
        listing are then refused as stale).
        """
        before = self._fingerprint
        self._inputValidators = other._inputValidators
        self._outputValidators = other._outputValidators
        self._headerParameters = other._headerParameters
        self._tools = other._tools
        self._descriptors = other._descriptors
        self._fingerprint = other._fingerprint
        return before != self._fingerprint

    # -- listing -------------------------------------------------------------

    @property
    def names(self) -> List[str]:
        return list(self._tools)

    def __len__(self) -> int:
        return len(self._tools)

    def get(self, name: str, count: bool = True) -> Optional[Tool]:
        """
        Return the tool called C{name}, or C{None}.

        This is the lookup of C{tools/call}: a miss counts as an
        C{unknown_tool} outcome (labelled L{UNKNOWN_TOOL_LABEL}), unless
        C{count} is false (a look-up before the call, for its scope).
        """
        tool = self._tools.get(name)
        if tool is None and count:
            self._count(UNKNOWN_TOOL_LABEL, "unknown_tool")
        return tool

    def headerParameters(self, name: str) -> Tuple[HeaderParameter, ...]:
        """
        The C{x-mcp-header} parameters of tool C{name} (none for an unknown
        tool).
        """
        return self._headerParameters.get(name, ())

    def _count(self, tool: str, outcome: str) -> None:
        if self.metrics is not None:
            try:
                self.metrics.toolCall(tool, outcome)
            except Exception:
                self.log.failure("Recording the tool-call metric failed")

    def _cursor(self, offset: int) -> str:
        raw = f"{self._fingerprint}:{offset}".encode("ascii")
        return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")

    def _offset(self, cursor: Any) -> int:
        invalid = ProtocolError(INVALID_PARAMS, "Invalid cursor")
        if not isinstance(cursor, str) or not cursor or len(cursor) > 100:
            raise invalid
        try:
            raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode("ascii")
            fingerprint, _, number = raw.partition(":")
            offset = int(number)
        except (ValueError, UnicodeDecodeError):
            raise invalid from None
        if fingerprint != self._fingerprint or not 0 < offset < len(self._descriptors):
            raise invalid
        return offset

    def listTools(
        self, cursor: Any = None, allowed: Optional[Sequence[str]] = None
    ) -> Tuple[List[Dict[str, Any]], Optional[str]]:
        """
        Return one page of tool descriptors and the cursor of the next page
        (C{None} on the last page).

        @param cursor: the C{cursor} param (C{None}: first page).
        @param allowed: when given, only these tool names are listed (the
            caller's scopes); pagination runs over the full list so cursors
            stay stable.
        @raise ProtocolError: C{-32602} for an invalid or stale cursor.
        """
        offset = 0 if cursor is None else self._offset(cursor)
        end = offset + self.pageSize
        page = self._descriptors[offset:end]
        if allowed is not None:
            allowedSet = set(allowed)
            page = [d for d in page if d["name"] in allowedSet]
        nextCursor = self._cursor(end) if end < len(self._descriptors) else None
        return page, nextCursor

    # -- calling -------------------------------------------------------------

    def validateArguments(self, name: str, arguments: Any) -> Optional[str]:
        """
        Return a readable description of what is wrong with C{arguments} for
        tool C{name}, or C{None} when they are valid.
        """
        return self._inputValidators[name].problems(arguments)

    def callTool(self, tool: Tool, arguments: Mapping[str, Any], context: ToolContext) -> "Deferred[Dict[str, Any]]":
        """
        Check the caller's rate limit, validate C{arguments}, run C{tool}
        with a timeout, and return a Deferred firing with the
        C{CallToolResult}. A refusal by the rate limit and failures of the
        tool (invalid arguments, timeout, exceptions) are C{isError}
        results; the Deferred fails only with L{CancelledError} when it is
        cancelled, and with L{ToolProtocolError} when the tool raised one.
        """
        if self.rateLimit is not None:
            wait = self.rateLimit.take((context.subject, context.clientID))
            if wait is not None:
                return Deferred.fromCoroutine(self._immediate(self._limited(tool, context, wait)))
        try:
            problem = self.validateArguments(tool.name, arguments)
        except RecursionError:
            problem = "the arguments are too deeply nested"
        if problem is not None:
            self._count(tool.name, "invalid_arguments")
            return Deferred.fromCoroutine(self._immediate(errorResult(f"Invalid arguments: {problem}")))
        running: Deferred[Any] = maybeDeferred(tool.call, arguments, context)
        timeout = tool.timeout if tool.timeout is not None else self.defaultTimeout
        running.addTimeout(timeout, self._clock, onTimeoutCancel=_timedOut)
        return Deferred.fromCoroutine(self._finish(tool, running, timeout, context))

    async def _immediate(self, result: Dict[str, Any]) -> Dict[str, Any]:
        return result

    def _limited(self, tool: Tool, context: ToolContext, wait: float) -> Dict[str, Any]:
        assert self.rateLimit is not None
        seconds = retryAfter(wait)
        self._count(tool.name, "rate_limited")
        self.log.info(
            "Tool call {tool} refused by the rate limit for client {clientID}",
            tool=tool.name, clientID=context.clientID, subject=context.subject,
            requestID=context.requestID,
        )
        result = errorResult(
            f"Rate limit exceeded: at most {self.rateLimit.count} tool calls per "
            f"{self.rateLimit.seconds:g} seconds. Try again in {seconds} second"
            f"{'' if seconds == 1 else 's'}."
        )
        result["_meta"] = {"io.mcpsvc/retryAfter": seconds}
        return result

    async def _finish(
        self, tool: Tool, running: "Deferred[Any]", timeout: float, context: ToolContext
    ) -> Dict[str, Any]:
        try:
            value = await running
        except TimeoutError:
            self._count(tool.name, "timeout")
            self.log.warn(
                "Tool {tool} timed out after {timeout}s", tool=tool.name, timeout=timeout
            )
            return errorResult(f"The tool {tool.name} timed out after {timeout:g} seconds")
        except InputNeeded:
            # A 2026-07-28 round ended to ask the client (MRTR).
            self._count(tool.name, "input_required")
            raise
        except CancelledError:
            self._count(tool.name, "cancelled")
            raise
        except ToolProtocolError:
            # The tool answers with a JSON-RPC error (the dispatcher's).
            self._count(tool.name, "error")
            raise
        except FirstError as e:
            if e.subFailure.check(ToolProtocolError) is not None:
                self._count(tool.name, "error")
                e.subFailure.raiseException()
            if e.subFailure.check(ToolError) is not None:
                self._count(tool.name, "error")
                return errorResult(str(e.subFailure.value) or f"The tool {tool.name} failed")
            if e.subFailure.check(CancelledError) is None:
                self._count(tool.name, "error")
                self.log.failure(
                    "Tool {tool} raised an exception", e.subFailure, tool=tool.name,
                    requestID=context.requestID,
                )
                return errorResult(f"The tool {tool.name} failed with an internal error")
            # Cancelled while awaiting gatherResults([...]): still cancelled.
            if e.subFailure.check(InputNeeded) is not None:
                self._count(tool.name, "input_required")
                raise InputNeeded() from None
            self._count(tool.name, "cancelled")
            raise CancelledError() from None
        except ToolError as e:
            self._count(tool.name, "error")
            return errorResult(str(e) or f"The tool {tool.name} failed")
        except Exception:
            self._count(tool.name, "error")
            self.log.failure(
                "Tool {tool} raised an exception", tool=tool.name,
                requestID=context.requestID,
            )
            return errorResult(f"The tool {tool.name} failed with an internal error")
        result = self._shape(tool, value)
        self._count(tool.name, "error" if result.get("isError") else "ok")
        return result

    def _shape(self, tool: Tool, value: Any) -> Dict[str, Any]:
        outputValidator = self._outputValidators.get(tool.name)
        explicit = False
        if isinstance(value, ToolResult):
            content = [dict(c) for c in value.content]
            structured = value.structuredContent
            explicit = structured is not None
            if value.isError:
                result: Dict[str, Any] = {"content": content, "isError": True}
                if structured is not None:
                    result["structuredContent"] = structured
                return result
        elif isinstance(value, str):
            content = [textContent(value)]
            structured = None
        else:
            content = []
            structured = value
        if outputValidator is not None:
            problem = outputValidator.problems(structured)
            if problem is not None:
                self.log.error(
                    "Tool {tool} returned output not matching its outputSchema: {problem}",
                    tool=tool.name, problem=problem,
                )
                return errorResult(f"The tool {tool.name} produced invalid output")
        if not content:
            content = [textContent(json.dumps(structured, ensure_ascii=False))]
        result = {"content": content}
        if outputValidator is not None or explicit:
            result["structuredContent"] = structured
        return result
