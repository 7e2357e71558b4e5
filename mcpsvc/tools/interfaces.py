# -*- test-case-name: mcpsvc.tools.test.test_registry -*-
"""
What a tool pack provides, and what a tool receives when it is called.

A tool pack is a Twisted plugin: a module in the L{mcpsvc.plugins} package
with a module-level object that provides L{IToolProvider}::

    from zope.interface import provider
    from twisted.plugin import IPlugin
    from mcpsvc.tools.interfaces import IToolProvider, Tool

    @provider(IPlugin, IToolProvider)
    class WeatherPack:
        packName = "weather"

        @staticmethod
        def tools(context):
            return [Tool(name="weather_now", description="...",
                         inputSchema={"type": "object"}, call=weatherNow)]

A tool's C{call(arguments, context)} may return a value, a L{Deferred} or
a coroutine; it is cancelled (its Deferred is cancelled) on timeout and on
C{notifications/cancelled}.
"""

from __future__ import annotations

import re
from typing import (
    Any,
    Awaitable,
    Callable,
    Dict,
    FrozenSet,
    List,
    Mapping,
    Optional,
    Sequence,
    Union,
)

from attrs import Factory, field, frozen
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from zope.interface import Attribute, Interface

from mcpsvc.oauth.scopes import RESOURCE_SCOPES

__all__ = [
    "IToolProvider",
    "ToolPackContext",
    "Tool",
    "ToolContext",
    "ToolResult",
    "ToolError",
    "ClientRequestError",
    "ToolProtocolError",
    "InputNeeded",
    "TASK_SUPPORT",
    "TOOL_NAME",
    "REQUIRED_SCOPES",
    "textContent",
]

#: Valid tool names: 1-64 of C{A-Z a-z 0-9 _ . -}.
TOOL_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
#: The values C{Tool.taskSupport} may take.
TASK_SUPPORT = ("forbidden", "optional", "required")
#: The values C{Tool.requiredScope} may take (see L{mcpsvc.oauth.scopes}).
REQUIRED_SCOPES = RESOURCE_SCOPES


class IToolProvider(Interface):
    """
    A tool pack, found with C{getPlugins(IToolProvider, mcpsvc.plugins)}.
    """

    packName = Attribute(
        "The pack's name, as listed in TOOL_PACKS (C{str})."
    )

    def tools(context: "ToolPackContext") -> Sequence["Tool"]:
        """
        Return the pack's tools for this configuration (possibly none, for
        example when a setting the pack needs is missing). Called once, when
        the registry is built; performs no I/O.
        """


@frozen(kw_only=True)
class ToolPackContext:
    """
    What a pack may use to build its tools.

    @ivar config: the L{mcpsvc.config.Config}.
    @ivar clock: the time source.
    @ivar runInThread: C{runInThread(f, *a, **kw) -> Deferred}: run a
        blocking callable off the reactor thread.
    @ivar httpClient: a treq-compatible client (C{treq}, L{treq.client.HTTPClient}
        or C{StubTreq}); C{None} when the service provides none.
    @ivar toolsChanged: call it when the pack's tool set changed (its
        C{tools(context)} would now return other tools): every instance
        rebuilds its registry, calling C{tools} again, and tells the
        clients listening for C{notifications/tools/list_changed}.
    @ivar promptsChanged: call it when the pack's prompts changed (its
        C{features(context)} would now return other prompts): every
        instance rebuilds its features and tells the clients listening for
        C{notifications/prompts/list_changed}.
    @ivar state: a dictionary kept for the life of the process, the same
        one on every rebuild: where a pack keeps what decides its tool set.
    """

    config: Any
    clock: IReactorTime
    runInThread: Callable[..., "Deferred[Any]"]
    httpClient: Any = None
    toolsChanged: Callable[[], None] = field(default=lambda: None)
    state: Dict[str, Any] = field(factory=dict)
    promptsChanged: Callable[[], None] = field(default=lambda: None)


CallResult = Union[Any, "Deferred[Any]", Awaitable[Any]]


@frozen(kw_only=True)
class Tool:
    """
    One tool.

    @ivar name: unique, matching L{TOOL_NAME}.
    @ivar description: what it does, for the model (required).
    @ivar inputSchema: JSON Schema 2020-12 of the arguments; root
        C{"type": "object"}.
    @ivar call: C{call(arguments, context)}; returns a L{ToolResult}, a
        string (one text block) or any JSON value (structured content when
        C{outputSchema} is set, else a text block of its JSON).
    @ivar title: display name.
    @ivar outputSchema: JSON Schema 2020-12 of the structured result (root
        C{"type": "object"}).
    @ivar annotations: MCP tool annotations (hints).
    @ivar timeout: seconds before the call is cancelled (default: the
        configured C{TOOL_TIMEOUT}).
    @ivar requiredScope: an OAuth scope the caller's token must carry to
        call the tool, besides C{mcp:tools} (which every C{tools/call}
        needs): one of the scopes mcpsvc grants (L{REQUIRED_SCOPES}), in
        practice C{mcp:write} for a tool that changes or deletes data. The
        registry refuses any other value. A caller without it gets HTTP 403
        C{insufficient_scope} naming it, and can step up.
    @ivar requiredClientCapabilities: client capabilities the tool relies
        on, e.g. C{{"sampling": {}}} (2026-07-28: checked per request).
    @ivar taskSupport: whether a 2026-07-28 call may run as a task (the
        tasks extension, C{io.modelcontextprotocol/tasks}; see
        L{mcpsvc.mcp.tasks}): C{"forbidden"} (the default: always answered
        in the request), C{"optional"} (a task when the request declares
        the extension, else answered in the request) or C{"required"} (a
        task; a request without the extension gets C{-32021}). Handshake
        eras never run tasks: the call is answered in the request.
    @ivar startsTaskItself: the tool becomes a task only when it calls
        C{context.startTask()}, after the questions it asks through multi
        round-trip requests; otherwise the task is created before the tool
        runs.
    """

    name: str
    description: str
    inputSchema: Mapping[str, Any]
    call: Callable[[Mapping[str, Any], "ToolContext"], CallResult]
    title: Optional[str] = None
    outputSchema: Optional[Mapping[str, Any]] = None
    annotations: Optional[Mapping[str, Any]] = None
    timeout: Optional[float] = None
    requiredScope: Optional[str] = None
    requiredClientCapabilities: Mapping[str, Any] = field(factory=dict)
    taskSupport: str = "forbidden"
    startsTaskItself: bool = False

    def descriptor(self) -> dict:
        """
        Return the C{Tool} object of C{tools/list}.
        """
        out: dict = {"name": self.name}
        if self.title is not None:
            out["title"] = self.title
        out["description"] = self.description
        out["inputSchema"] = dict(self.inputSchema)
        if self.outputSchema is not None:
            out["outputSchema"] = dict(self.outputSchema)
        if self.annotations is not None:
            out["annotations"] = dict(self.annotations)
        return out


@frozen(kw_only=True)
class ToolContext:
    """
    What a running tool call receives.

    @ivar clock: the time source.
    @ivar subject: the caller's token subject.
    @ivar clientID: the caller's OAuth client.
    @ivar scopes: the caller's scopes.
    @ivar requestID: the JSON-RPC id of the C{tools/call}.
    @ivar httpClient: as in L{ToolPackContext}.
    @ivar runInThread: as in L{ToolPackContext}.
    @ivar clientCapabilities: the capabilities the client declared.
    @ivar progress: C{progress(progress, total, message)}; sends
        C{notifications/progress} when the client asked for it, else does
        nothing. Values that do not increase are dropped.
    @ivar logMessage: C{logMessage(level, data)}; sends
        C{notifications/message} when the client enabled logging at that
        level and the response is a stream, else does nothing.
    @ivar log: a server-side L{Logger} for the tool (namespace
        C{mcpsvc.tools.<name>}); never log the caller's secrets.
    @ivar clientRequest: C{clientRequest(method, params, key=None) ->
        Deferred}: ask the client for input (C{elicitation/create},
        C{sampling/createMessage}, C{roots/list}) and get its result. One
        call for every era: in the handshake eras the request goes to the
        client on the call's SSE stream; in 2026-07-28 it becomes a
        multi round-trip request (the call ends with C{input_required},
        and when the client retries with the answer the tool runs again
        from the start and this call returns the answer at once; see
        L{mcpsvc.mcp.mrtr}). So a tool that asks must do nothing it
        cannot repeat before its last question. C{key} names the request
        in C{inputRequests} (default C{input-1}, C{input-2}, ... in the
        order asked); ask for several at once with
        C{gatherResults([...])}. Fails with L{ClientRequestError} when the
        client did not declare the capability the method needs, answers
        with an error, or cannot be asked (a JSON-only client). In a task
        the request is listed in the task's C{inputRequests} and the call
        waits (it is not replayed) until C{tasks/update} brings the answer.
    @ivar startTask: C{startTask() -> Deferred[bool]}: for a tool declared
        with C{startsTaskItself}: turn this call into a task now (the
        client gets its C{CreateTaskResult} and the tool goes on running);
        fires with C{True} once the task exists, C{False} when the call
        cannot become one (the client did not declare the extension, a
        handshake era): the tool then goes on in the request.
    """

    clock: IReactorTime
    subject: str
    clientID: str
    scopes: FrozenSet[str] = frozenset()
    requestID: Any = None
    httpClient: Any = None
    runInThread: Optional[Callable[..., "Deferred[Any]"]] = None
    clientCapabilities: Mapping[str, Any] = field(factory=dict)
    progress: Callable[[float, Optional[float], Optional[str]], None] = (
        lambda progress, total=None, message=None: None
    )
    logMessage: Callable[[str, Any], None] = lambda level, data: None
    log: Logger = field(factory=lambda: Logger(namespace="mcpsvc.tools"))
    clientRequest: Callable[..., "Deferred[Any]"] = field(
        default=Factory(lambda: _noClientRequests)
    )
    startTask: Callable[[], "Deferred[bool]"] = field(default=Factory(lambda: _noTask))

    def reportProgress(
        self, progress: float, total: Optional[float] = None, message: Optional[str] = None
    ) -> None:
        """
        Report progress (see L{progress}).
        """
        self.progress(progress, total, message)


@frozen(kw_only=True)
class ToolResult:
    """
    A tool's full result.

    @ivar content: content blocks (C{{"type": "text", "text": ...}}, image,
        audio, resource, resource_link).
    @ivar structuredContent: the structured result (required when the tool
        declares an C{outputSchema}).
    @ivar isError: the tool failed; C{content} explains why.
    """

    content: List[Mapping[str, Any]] = field(factory=list)
    structuredContent: Any = None
    isError: bool = False


class ToolError(Exception):
    """
    An expected tool failure: its message is shown to the client in an
    C{isError} result, and no traceback is logged.
    """


class ClientRequestError(ToolError):
    """
    A request to the client failed: it answered with a JSON-RPC error, or
    it cannot be asked on this connection.

    @ivar code: the client's JSON-RPC error code (C{None}: not sent).
    """

    def __init__(self, message: str, code: Optional[int] = None) -> None:
        super().__init__(message)
        self.code = code


class ToolProtocolError(Exception):
    """
    Raised by a tool that must answer with a JSON-RPC error rather than an
    C{isError} result (a protocol-level failure): the call's response is
    that error, and a task ends C{failed} with it.

    @ivar code: the JSON-RPC error code.
    @ivar message: the error message, shown to the client.
    @ivar data: optional JSON detail.
    """

    def __init__(self, code: int, message: str, data: Any = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.data = data


class InputNeeded(CancelledError):
    """
    Raised into a tool at a C{clientRequest} the client has not answered
    yet, when a 2026-07-28 call ends to ask for input (C{input_required}).
    The tool runs again from the start with the answer; like any
    cancellation, let it propagate (C{finally} blocks run).
    """


def _noClientRequests(
    method: str, params: Mapping[str, Any], key: Optional[str] = None
) -> "Deferred[Any]":
    from twisted.internet.defer import fail

    return fail(ClientRequestError(
        "The client cannot be asked for input on this connection"
    ))


def _noTask() -> "Deferred[bool]":
    from twisted.internet.defer import succeed

    return succeed(False)


def textContent(text: str) -> dict:
    """
    Return a text content block.
    """
    return {"type": "text", "text": text}
