# -*- test-case-name: mcpsvc.mcp.test.test_dispatcher -*-
"""
MCP methods: from a parsed request and its context to a result, or a
L{ProtocolError} carrying the JSON-RPC error to answer with.

The transport (L{mcpsvc.mcp.app}) decides HTTP matters (sessions, status
codes, JSON or SSE) and gives each request a L{RequestContext}; this module
decides what the methods mean in each era. Tool failures are results with
C{isError: true}, never JSON-RPC errors.

In-flight tool calls are tracked per caller scope (a session, or a
principal without sessions) so that C{notifications/cancelled} can cancel
them.
"""

from __future__ import annotations

import secrets
from typing import Any, Awaitable, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from attrs import field, frozen
from twisted.internet.defer import CancelledError, Deferred, fail, maybeDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from mcpsvc._version import __version__
from mcpsvc.http.jsonio import truncateForLog
from mcpsvc.mcp.protocol import (
    INTERNAL_ERROR,
    INVALID_PARAMS,
    LOG_LEVELS,
    METHOD_NOT_FOUND,
    MISSING_CLIENT_CAPABILITY,
    META_SERVER_INFO,
    MODERN_VERSIONS,
    Notification,
    ProtocolError,
    RESOURCE_NOT_FOUND,
    Request,
    RequestID,
    Response,
    negotiateVersion,
    notificationMessage,
    progressToken,
)
from mcpsvc.mcp.mrtr import (
    CAPABILITY_OF,
    DEFAULT_STATE_TTL,
    InputRound,
    InvalidRequestState,
    MAX_STATE_LENGTH,
    RequestStateSigner,
    parseInputResponses,
)
from mcpsvc.mcp.tasks import (
    TASK_METHODS,
    TASKS_EXTENSION,
    TaskCall,
    TaskManager,
    createResult,
    missingExtension,
    optedIn,
)
from mcpsvc.oauth.scopes import MCP_READ, MCP_TOOLS, missingScopes
from mcpsvc.principal import Principal
from mcpsvc.tools.interfaces import (
    ClientRequestError,
    ToolContext,
    ToolProtocolError,
    _noClientRequests,
)
from mcpsvc.tools.registry import ToolRegistry, errorResult

__all__ = [
    "Dispatcher",
    "RequestContext",
    "ServerInfo",
    "RequestCancelled",
    "InsufficientScope",
    "METHOD_SCOPES",
    "TOKEN_ONLY_METHODS",
    "LIST_TTL_MS",
]

#: How long a 2026-07-28 client may cache C{tools/list}.
LIST_TTL_MS = 60_000

_DEFAULT_INSTRUCTIONS = (
    "Tools exposed by mcpsvc. Call tools/list for what is available; tool "
    "failures are reported as results with isError set."
)


class RequestCancelled(Exception):
    """
    The request was cancelled (C{notifications/cancelled} or the client
    went away); no response is due.
    """


class InsufficientScope(Exception):
    """
    The caller's token lacks scopes the request needs (HTTP 403 with
    C{insufficient_scope}).

    @ivar needed: every scope the request needs.
    @ivar missing: those the token lacks.
    @ivar method: the request's method.
    @ivar tool: the tool called, if any.
    """

    def __init__(
        self, needed: Sequence[str], missing: Sequence[str], method: str = "",
        tool: Optional[str] = None,
    ) -> None:
        super().__init__(" ".join(missing))
        self.needed = list(needed)
        self.missing = list(missing)
        self.method = method
        self.tool = tool


#: Request methods that need only a valid token (C{initialize},
#: notifications and responses are not dispatched here and need none
#: either).
TOKEN_ONLY_METHODS = frozenset({"ping", "logging/setLevel"})

#: The scope each request method needs (with the hierarchy: C{mcp:tools}
#: includes C{mcp:read}, C{mcp:write} both). A tool's own
#: C{Tool.requiredScope} is needed on top of C{mcp:tools}. A method in
#: neither table (one added later and not classified) needs C{mcp:read}:
#: failing closed.
METHOD_SCOPES: Mapping[str, Tuple[str, ...]] = {
    "tools/call": (MCP_TOOLS,),
    "tools/list": (MCP_READ,),
    "resources/list": (MCP_READ,),
    "resources/templates/list": (MCP_READ,),
    "resources/read": (MCP_READ,),
    "resources/subscribe": (MCP_READ,),
    "resources/unsubscribe": (MCP_READ,),
    "prompts/list": (MCP_READ,),
    "prompts/get": (MCP_READ,),
    "completion/complete": (MCP_READ,),
    "server/discover": (MCP_READ,),
    # The tasks extension: a task is a tool call.
    **{method: (MCP_TOOLS,) for method in TASK_METHODS},
    "subscriptions/listen": (MCP_READ,),
    # The skills extension: reading, as resources/read.
    "skills/list": (MCP_READ,),
    "skills/get": (MCP_READ,),
    "resources/directory/read": (MCP_READ,),
}


@frozen(kw_only=True)
class ServerInfo:
    """
    The server's C{Implementation} object.
    """

    name: str = "mcpsvc"
    title: str = "mcpsvc"
    version: str = __version__

    def asDict(self) -> Dict[str, Any]:
        return {"name": self.name, "title": self.title, "version": self.version}


@frozen(kw_only=True)
class RequestContext:
    """
    What the transport knows about one request.

    @ivar principal: who is calling.
    @ivar protocolVersion: the version in force for this request.
    @ivar modern: served in the stateless 2026-07-28 era.
    @ivar scope: the key that scopes request ids (session or principal), for
        cancellation.
    @ivar clientCapabilities: what the client declared.
    @ivar send: writes a notification on this request's response stream;
        C{None} when the response is not a stream.
    @ivar logLevel: the least severe level the client wants as
        C{notifications/message}; C{None}: no logging.
    @ivar setLogLevel: persists a new level (C{logging/setLevel}).
    @ivar logFields: the HTTP request's log fields: a C{tools/call} records
        its tool and outcome there (one log event per request) instead of
        logging an event of its own; C{None}: log one.
    """

    principal: Principal
    protocolVersion: str
    modern: bool = False
    scope: str = ""
    clientCapabilities: Mapping[str, Any] = field(factory=dict)
    send: Optional[Callable[[Dict[str, Any]], None]] = None
    logLevel: Optional[str] = None
    setLogLevel: Optional[Callable[[str], Awaitable[Any]]] = None
    logFields: Optional[Dict[str, Any]] = None


class _Progress:
    """
    Sends C{notifications/progress} for one call, strictly increasing, and
    only while the call is active.
    """

    def __init__(self, token: RequestID, send: Callable[[Dict[str, Any]], None]) -> None:
        self.token = token
        self.send = send
        self.last: Optional[float] = None
        self.active = True

    def __call__(self, progress: float, total: Optional[float] = None, message: Optional[str] = None) -> None:
        if not self.active or not isinstance(progress, (int, float)) or isinstance(progress, bool):
            return
        if self.last is not None and progress <= self.last:
            return
        self.last = progress
        params: Dict[str, Any] = {"progressToken": self.token, "progress": progress}
        if total is not None:
            params["total"] = total
        if message is not None:
            params["message"] = message
        self.send(notificationMessage("notifications/progress", params))


class _LogSender:
    """
    Sends C{notifications/message} at or above a level, while active.
    """

    def __init__(self, threshold: str, logger: str, send: Callable[[Dict[str, Any]], None]) -> None:
        self.threshold = LOG_LEVELS.index(threshold)
        self.logger = logger
        self.send = send
        self.active = True

    def __call__(self, level: str, data: Any) -> None:
        if not self.active or level not in LOG_LEVELS:
            return
        if LOG_LEVELS.index(level) < self.threshold:
            return
        self.send(
            notificationMessage(
                "notifications/message", {"level": level, "logger": self.logger, "data": data}
            )
        )


class _InputRequired:
    """
    A round that ended to ask the client (an C{InputRequiredResult}).
    """

    def __init__(self, result: Dict[str, Any]) -> None:
        self.result = result


class _InFlight:
    """
    A running tool call, and whether its cancellation was requested.
    """

    def __init__(self, deferred: "Deferred[Dict[str, Any]]") -> None:
        self.deferred = deferred
        self.cancelled = False


def _page(key: str, found: Optional[Tuple[List[Any], Optional[str]]]) -> Dict[str, Any]:
    """
    A paginated result: C{found} is a page and the next cursor, or C{None}
    for a cursor that was refused.
    """
    if found is None:
        raise ProtocolError(INVALID_PARAMS, "Invalid cursor")
    items, nextCursor = found
    result: Dict[str, Any] = {key: items}
    if nextCursor is not None:
        result["nextCursor"] = nextCursor
    return result


#: What L{Dispatcher._untilInputNeeded} returns when the call became a task.
_BECAME_TASK = object()


def _noProgress(progress: float, total: Optional[float] = None, message: Optional[str] = None) -> None:
    pass


def _noLog(level: str, data: Any) -> None:
    pass


class Dispatcher:
    """
    Answers MCP requests.

    @ivar registry: the tools.
    @ivar listChanged: whether C{notifications/tools/list_changed} can be
        delivered (a GET stream is offered).
    @ivar logging: whether C{logging/setLevel} can be honoured in the
        handshake era (the level is kept in the session).
    """

    log = Logger()

    def __init__(
        self,
        registry: ToolRegistry,
        *,
        clock: IReactorTime,
        serverInfo: ServerInfo = ServerInfo(),
        instructions: Optional[str] = _DEFAULT_INSTRUCTIONS,
        listChanged: bool = False,
        logging: bool = True,
        httpClient: Any = None,
        runInThread: Optional[Callable[..., Any]] = None,
        stateKey: Optional[bytes] = None,
        stateTTL: float = DEFAULT_STATE_TTL,
        tasks: Optional[TaskManager] = None,
    ) -> None:
        """
        @param stateKey: the MAC key of 2026-07-28 C{requestState} values
            (L{mcpsvc.mcp.mrtr.deriveStateKey}); every instance behind one
            endpoint needs the same. C{None}: a random key (one process).
        @param stateTTL: seconds a C{requestState} stays valid.
        @param tasks: the tasks extension (2026-07-28); C{None}: no tasks.
        """
        self.registry = registry
        self.requestStates = RequestStateSigner(
            stateKey if stateKey is not None else secrets.token_bytes(32), clock, stateTTL
        )
        self.clock = clock
        self.serverInfo = serverInfo
        self.instructions = instructions
        self.listChanged = listChanged
        self.logging = logging
        self.httpClient = httpClient
        self.runInThread = runInThread
        self.tasks = tasks
        self._inFlight: Dict[Tuple[str, RequestID], _InFlight] = {}
        self._toolLoggers: Dict[str, Logger] = {}
        self._outgoing: Dict[Tuple[str, RequestID], "Deferred[Any]"] = {}
        self._legacy: Dict[str, Callable[[Request, RequestContext], Awaitable[Dict[str, Any]]]] = {
            "ping": self._ping,
            "tools/list": self._toolsList,
            "tools/call": self._toolsCall,
        }
        self._modern: Dict[str, Callable[[Request, RequestContext], Awaitable[Dict[str, Any]]]] = {
            "server/discover": self._discover,
            "tools/list": self._toolsList,
            "tools/call": self._toolsCall,
            # Served by the transport (a stream), which checks its scope.
            "subscriptions/listen": self._notHere,
        }
        if logging:
            self._legacy["logging/setLevel"] = self._setLevel
        if tasks is not None:
            self._modern.update(tasks.handlers())
        features = registry.features
        if features.hasResources:
            for table in (self._legacy, self._modern):
                table["resources/list"] = self._resourcesList
                table["resources/templates/list"] = self._templatesList
                table["resources/read"] = self._resourcesRead
            if features.subscribable:
                # Resources never change: subscriptions are accepted and no
                # update is ever due (2026-07-28 removed these methods).
                self._legacy["resources/subscribe"] = self._subscribe
                self._legacy["resources/unsubscribe"] = self._subscribe
        if features.hasPrompts:
            for table in (self._legacy, self._modern):
                table["prompts/list"] = self._promptsList
                table["prompts/get"] = self._promptsGet
        if features.hasCompletions:
            for table in (self._legacy, self._modern):
                table["completion/complete"] = self._complete
        if features.hasSkills:
            # The skills extension (2026-07-28); in the handshake eras the
            # skill files are ordinary resources.
            self._modern["skills/list"] = self._skillsList
            self._modern["skills/get"] = self._skillsGet
            self._modern["resources/directory/read"] = self._directoryRead

    # -- capabilities and lifecycle -----------------------------------------

    def capabilities(self, modern: bool = False) -> Dict[str, Any]:
        """
        The server capabilities: tools (with C{listChanged} only when it can
        be delivered) and logging (only when a level can be kept).
        """
        # 2026-07-28: list changes are delivered on subscriptions/listen,
        # which needs no session.
        tools: Dict[str, Any] = {"listChanged": True if modern else self.listChanged}
        capabilities: Dict[str, Any] = {"tools": tools}
        capabilities.update(self.registry.features.capabilities(modern))
        if modern or self.logging:
            # 2026-07-28: the level travels with each request.
            capabilities["logging"] = {}
        return capabilities

    def initialize(self, params: Mapping[str, Any]) -> Tuple[str, Dict[str, Any]]:
        """
        Negotiate the version of an C{initialize} request and return it with
        the C{InitializeResult}.
        """
        version = negotiateVersion(params.get("protocolVersion"))
        result: Dict[str, Any] = {
            "protocolVersion": version,
            "capabilities": self.capabilities(),
            "serverInfo": self.serverInfo.asDict(),
        }
        if self.instructions:
            result["instructions"] = self.instructions
        return version, result

    def methods(self, modern: bool) -> Tuple[str, ...]:
        """
        The request methods served in an era (besides C{initialize}).
        """
        return tuple(self._modern if modern else self._legacy)

    # -- requests -------------------------------------------------------------

    async def handleRequest(self, request: Request, context: RequestContext) -> Dict[str, Any]:
        """
        Answer C{request}.

        @return: the C{result} member of the response.
        @raise ProtocolError: the JSON-RPC error to answer with.
        @raise RequestCancelled: no response is due.
        @raise InsufficientScope: the caller needs another scope.
        """
        table = self._modern if context.modern else self._legacy
        handler = table.get(request.method)
        if handler is None:
            raise ProtocolError(METHOD_NOT_FOUND, "Method not found", id=request.id)
        self.checkScopes(request, context)
        try:
            result = await handler(request, context)
        except ProtocolError as e:
            raise e.withID(request.id)
        if context.modern:
            result = dict(result)
            # An InputRequiredResult (MRTR) already carries its type.
            result.setdefault("resultType", "complete")
            meta = dict(result.get("_meta") or {})
            meta[META_SERVER_INFO] = self.serverInfo.asDict()
            result["_meta"] = meta
        return result

    def requiredScopes(self, request: Request) -> List[str]:
        """
        The scopes C{request} needs: its method's (L{METHOD_SCOPES}) and,
        for C{tools/call} of a known tool, the tool's C{requiredScope}; a
        C{subscriptions/listen} naming C{taskIds} needs what C{tasks/get}
        needs too (its notifications carry the same content).
        """
        if request.method in TOKEN_ONLY_METHODS:
            return []
        needed = list(METHOD_SCOPES.get(request.method, (MCP_READ,)))
        if request.method == "tools/call":
            name = request.params.get("name")
            tool = self.registry.get(name, count=False) if isinstance(name, str) else None
            if tool is not None and tool.requiredScope and tool.requiredScope not in needed:
                needed.append(tool.requiredScope)
        if request.method == "subscriptions/listen":
            notifications = request.params.get("notifications")
            if isinstance(notifications, dict) and notifications.get("taskIds"):
                needed += [s for s in METHOD_SCOPES["tasks/get"] if s not in needed]
        return needed

    def checkScopes(self, request: Request, context: RequestContext) -> None:
        """
        @raise InsufficientScope: the caller's token lacks a scope
            C{request} needs.
        """
        needed = self.requiredScopes(request)
        missing = missingScopes(context.principal.scopes, needed)
        if missing:
            name = request.params.get("name") if request.method == "tools/call" else None
            raise InsufficientScope(
                needed, missing, request.method, name if isinstance(name, str) else None
            )

    def handleNotification(self, notification: Notification, context: RequestContext) -> None:
        """
        Act on a notification: C{notifications/cancelled} cancels the
        request it names; others are accepted and ignored.
        """
        if notification.method == "notifications/cancelled":
            requestID = notification.params.get("requestId")
            if isinstance(requestID, (str, int)) and not isinstance(requestID, bool):
                if self.cancel(context.scope, requestID):
                    self.log.info(
                        "Cancelled request {requestID} at the client's request",
                        requestID=truncateForLog(requestID, 100),
                        reason=truncateForLog(notification.params.get("reason"), 200),
                    )

    def handleResponse(self, response: Response, context: RequestContext) -> bool:
        """
        Deliver the client's answer to a request we sent it (sampling,
        elicitation); return whether one of ours was waiting for it.
        """
        if response.id is None:
            return False
        d = self._outgoing.pop((context.scope, response.id), None)
        if d is None:
            return False
        error = response.error
        if error is not None:
            code = error.get("code") if isinstance(error, dict) else None
            message = error.get("message") if isinstance(error, dict) else None
            d.errback(ClientRequestError(
                f"The client refused the request: {str(message or 'error')[:200]}",
                code if isinstance(code, int) else None,
            ))
        else:
            d.callback(response.result)
        return True

    def _toolLogger(self, name: str) -> Logger:
        """
        The L{Logger} handed to tool C{name} (one per registered tool, made
        once).
        """
        log = self._toolLoggers.get(name)
        if log is None:
            log = self._toolLoggers[name] = Logger(namespace=f"mcpsvc.tools.{name}")
        return log

    def _clientRequester(
        self, context: RequestContext, sent: List[Tuple[str, RequestID]]
    ) -> Callable[[str, Mapping[str, Any]], "Deferred[Any]"]:
        send = context.send
        assert send is not None

        def clientRequest(
            method: str, params: Mapping[str, Any], key: Optional[str] = None
        ) -> "Deferred[Any]":
            # key names the request in the 2026-07-28 era only.
            capability = CAPABILITY_OF.get(method)
            if capability is not None and capability not in context.clientCapabilities:
                return fail(ClientRequestError(
                    f"The client did not declare the {capability} capability"
                ))
            id = "mcpsvc-" + secrets.token_hex(8)
            key = (context.scope, id)
            d: Deferred[Any] = Deferred(lambda d: self._outgoing.pop(key, None))
            self._outgoing[key] = d
            sent.append(key)
            send({"jsonrpc": "2.0", "id": id, "method": method, "params": dict(params)})
            return d

        return clientRequest

    def cancel(self, scope: str, requestID: RequestID) -> bool:
        """
        Cancel the in-flight call C{requestID} of C{scope}; return whether
        there was one.
        """
        call = self._inFlight.get((scope, requestID))
        if call is None:
            return False
        call.cancelled = True
        call.deferred.cancel()
        return True

    @property
    def inFlight(self) -> int:
        return len(self._inFlight)

    async def _notHere(self, request: Request, context: RequestContext) -> Dict[str, Any]:
        raise ProtocolError(
            INVALID_PARAMS, f"{request.method} is only served on the HTTP transport's stream"
        )

    async def _ping(self, request: Request, context: RequestContext) -> Dict[str, Any]:
        return {}

    async def _discover(self, request: Request, context: RequestContext) -> Dict[str, Any]:
        result: Dict[str, Any] = {
            "supportedVersions": list(MODERN_VERSIONS),
            "capabilities": self.capabilities(modern=True),
            "ttlMs": LIST_TTL_MS,
            "cacheScope": "private",
        }
        if self.tasks is not None and optedIn(context.clientCapabilities):
            # Offered to the clients that declare it (it changes what
            # tools/call answers); the skills extension, declared whenever
            # skills are served, only adds methods.
            extensions = dict(result["capabilities"].get("extensions") or {})
            extensions[TASKS_EXTENSION] = {}
            result["capabilities"]["extensions"] = extensions
        if self.instructions:
            result["instructions"] = self.instructions
        return result

    async def _setLevel(self, request: Request, context: RequestContext) -> Dict[str, Any]:
        level = request.params.get("level")
        if level not in LOG_LEVELS:
            raise ProtocolError(
                INVALID_PARAMS, "Invalid log level", data={"levels": list(LOG_LEVELS)}
            )
        if context.setLogLevel is not None:
            await context.setLogLevel(level)
        return {}

    async def _toolsList(self, request: Request, context: RequestContext) -> Dict[str, Any]:
        tools, nextCursor = self.registry.listTools(request.params.get("cursor"))
        result: Dict[str, Any] = {"tools": tools}
        if nextCursor is not None:
            result["nextCursor"] = nextCursor
        if context.modern:
            result["ttlMs"] = LIST_TTL_MS
            result["cacheScope"] = "private"
        return result

    # -- resources, prompts, completions (only when a pack offers them) -----

    def _listed(self, request: Request, context: RequestContext, key: str, items: Any) -> Dict[str, Any]:
        if request.params.get("cursor") is not None:
            # We never issue cursors for these short lists.
            raise ProtocolError(INVALID_PARAMS, "Invalid cursor")
        result: Dict[str, Any] = {key: items}
        if context.modern:
            result["ttlMs"] = LIST_TTL_MS
            result["cacheScope"] = "private"
        return result

    async def _resourcesList(self, request: Request, context: RequestContext) -> Dict[str, Any]:
        features = self.registry.features
        skills = await features.currentSkills() if features.hasSkills else None
        return self._listed(request, context, "resources", features.resourceList(skills))

    async def _templatesList(self, request: Request, context: RequestContext) -> Dict[str, Any]:
        features = self.registry.features
        return self._listed(request, context, "resourceTemplates",
                            [t.descriptor() for t in features.templates])

    async def _resourcesRead(self, request: Request, context: RequestContext) -> Dict[str, Any]:
        uri = request.params.get("uri")
        if not isinstance(uri, str) or not uri:
            raise ProtocolError(INVALID_PARAMS, 'resources/read needs a string "uri"')
        found = self.registry.features.reader(uri)
        contents = None
        if found is not None:
            asksForInput, read = found
            if not asksForInput:
                contents = read()
            else:
                # Like a prompt: MRTR in 2026-07-28, a request on the
                # response stream before.
                outcome = await self._withInput(
                    request, context, "resources/read", uri, {}, read, f"The resource {uri[:200]}"
                )
                if isinstance(outcome, _InputRequired):
                    return outcome.result
                contents = outcome
        elif uri.startswith("skill://") and self.registry.features.skillSource is not None:
            # Skills read at request time (SKILLS_DIR).
            contents = (await self.registry.features.currentSkills()).read(uri)
        if not contents:
            # 2026-07-28 moved "resource not found" to -32602.
            code = INVALID_PARAMS if context.modern else RESOURCE_NOT_FOUND
            raise ProtocolError(code, "Resource not found", data={"uri": uri[:500]})
        result: Dict[str, Any] = {"contents": contents}
        if context.modern:
            result["ttlMs"] = LIST_TTL_MS
            result["cacheScope"] = "private"
        return result

    # -- the skills extension (only when a pack offers skills) --------------

    @staticmethod
    def _uriParam(request: Request) -> str:
        uri = request.params.get("uri")
        if not isinstance(uri, str) or not uri:
            raise ProtocolError(INVALID_PARAMS, f'{request.method} needs a string "uri"')
        return uri

    async def _skillsList(self, request: Request, context: RequestContext) -> Dict[str, Any]:
        skills = await self.registry.features.currentSkills()
        result = _page("skills", skills.page(request.params.get("cursor")))
        result["ttlMs"] = LIST_TTL_MS
        result["cacheScope"] = "private"
        return result

    async def _skillsGet(self, request: Request, context: RequestContext) -> Dict[str, Any]:
        uri = self._uriParam(request)
        skill = (await self.registry.features.currentSkills()).get(uri)
        if skill is None:
            raise ProtocolError(
                INVALID_PARAMS, f"No skill is served at {uri[:200]}", data={"uri": uri[:500]}
            )
        return {"skill": skill, "ttlMs": LIST_TTL_MS, "cacheScope": "private"}

    async def _directoryRead(self, request: Request, context: RequestContext) -> Dict[str, Any]:
        uri = self._uriParam(request)
        skills = await self.registry.features.currentSkills()
        if not skills.isDirectory(uri):
            raise ProtocolError(
                INVALID_PARAMS, f"{uri[:200]} is not a directory resource", data={"uri": uri[:500]}
            )
        return _page("resources", skills.directory(uri, request.params.get("cursor")))

    async def _subscribe(self, request: Request, context: RequestContext) -> Dict[str, Any]:
        if not isinstance(request.params.get("uri"), str):
            raise ProtocolError(INVALID_PARAMS, 'a "uri" is required')
        return {}

    async def _promptsList(self, request: Request, context: RequestContext) -> Dict[str, Any]:
        features = self.registry.features
        return self._listed(request, context, "prompts",
                            [p.descriptor() for p in features.prompts.values()])

    async def _promptsGet(self, request: Request, context: RequestContext) -> Dict[str, Any]:
        name = request.params.get("name")
        prompt = self.registry.features.prompts.get(name) if isinstance(name, str) else None
        if prompt is None:
            raise ProtocolError(INVALID_PARAMS, f"Unknown prompt: {str(name)[:100]}")
        arguments = request.params.get("arguments") or {}
        if not isinstance(arguments, dict) or not all(
            isinstance(v, str) for v in arguments.values()
        ):
            raise ProtocolError(INVALID_PARAMS, "Prompt arguments must be strings")
        missing = [a.name for a in prompt.arguments if a.required and a.name not in arguments]
        if missing:
            raise ProtocolError(INVALID_PARAMS, f"Missing prompt arguments: {', '.join(missing)}")
        if prompt.asksForInput:
            return await self._promptWithInput(request, context, prompt, arguments)
        return {"description": prompt.description, "messages": prompt.get(arguments)}

    async def _promptWithInput(
        self, request: Request, context: RequestContext, prompt: Any, arguments: Dict[str, Any]
    ) -> Dict[str, Any]:
        """
        C{prompts/get} of a prompt that may ask the client for input: MRTR
        in 2026-07-28, a request on the response stream before.
        """
        outcome = await self._withInput(
            request, context, "prompts/get", prompt.name, arguments,
            lambda clientRequest: prompt.get(arguments, clientRequest),
            f"The prompt {prompt.name}",
        )
        if isinstance(outcome, _InputRequired):
            return outcome.result
        return {"description": prompt.description, "messages": outcome}

    async def _withInput(
        self, request: Request, context: RequestContext, method: str, name: str,
        arguments: Any, call: Callable[[Callable[..., "Deferred[Any]"]], Any], what: str,
    ) -> Any:
        """
        Run C{call(clientRequest)} (a prompt or resource handler that may
        ask the client for input) and return what it returns, or an
        L{_InputRequired} when, in 2026-07-28, the round ends to ask.

        @raise ProtocolError: C{-32602} when the client refused or cannot
            be asked, C{-32603} when the handler failed (logged).
        @raise RequestCancelled: it was cancelled.
        """
        inputRound: Optional[InputRound] = None
        sent: List[Tuple[str, RequestID]] = []
        clientRequest: Callable[..., Deferred[Any]]
        if context.modern:
            inputRound = self._inputRound(request, context, method, name, arguments)
            clientRequest = inputRound.clientRequest
        elif context.send is not None:
            clientRequest = self._clientRequester(context, sent)
        else:
            clientRequest = _noClientRequests
        d = maybeDeferred(call, clientRequest)
        d.addTimeout(self.registry.defaultTimeout, self.clock)
        try:
            if inputRound is None:
                value = await d
            else:
                value = await self._untilInputNeeded(d, inputRound)
        except ClientRequestError as e:
            raise ProtocolError(INVALID_PARAMS, str(e)) from None
        except CancelledError:
            raise RequestCancelled() from None
        except Exception:
            self.log.failure("{what} failed", what=what)
            raise ProtocolError(INTERNAL_ERROR, f"{what} failed") from None
        finally:
            if inputRound is not None:
                inputRound.close()
            for pending in sent:
                self._outgoing.pop(pending, None)
        if inputRound is not None and inputRound.pending:
            return _InputRequired(
                self._inputRequired(context, method, name, arguments, inputRound)
            )
        return value

    # -- multi round-trip requests (2026-07-28) -------------------------------

    def _inputRound(
        self, request: Request, context: RequestContext, method: str, name: str, arguments: Any
    ) -> InputRound:
        """
        The answers a retried request carries: its C{inputResponses}, and
        the answers of earlier rounds in its verified C{requestState}.

        @raise ProtocolError: C{-32602} for malformed C{inputResponses} or
            a C{requestState} that fails verification.
        """
        params = request.params
        known = parseInputResponses(params)
        if "requestState" in params:
            try:
                earlier = self.requestStates.open(
                    params["requestState"], context.principal, method, name, arguments
                )
            except InvalidRequestState as e:
                self.log.warn(
                    "Refused the requestState of {method} {name} from client {clientID}: {reason}",
                    method=method, name=name, clientID=context.principal.clientID,
                    subject=context.principal.subject, reason=str(e),
                )
                raise ProtocolError(
                    INVALID_PARAMS,
                    "Invalid requestState: altered, expired, or issued for another request",
                ) from None
            # Answers of earlier rounds are the signed ones.
            known.update(earlier)
        return InputRound(known, context.clientCapabilities, self.clock)

    async def _untilInputNeeded(
        self, d: "Deferred[Any]", inputRound: InputRound, taskCall: Optional[TaskCall] = None,
    ) -> Any:
        """
        The result of C{d}, or C{None} (and C{d} cancelled) as soon as the
        handler waits for an answer the client has not given yet, or
        L{_BECAME_TASK} as soon as the tool of C{taskCall} has started its
        task (C{d} then goes on, its result kept for the task).
        """
        outcome: Deferred[Tuple[str, Any]] = Deferred(lambda _: d.cancel())
        handedOver = []

        def first(value: Any, which: str) -> Any:
            if not outcome.called:
                if which == "task" and value is not None:
                    handedOver.append(True)
                outcome.callback((which, value))
                return None
            if which == "done" and handedOver:
                return value  # for the task (TaskManager.run)
            return None

        d.addBoth(first, "done")
        inputRound.needed.addBoth(first, "input")
        if taskCall is not None:
            taskCall.started.addBoth(first, "task")
        which, value = await outcome
        if taskCall is not None and taskCall.failure is not None:
            # The task could not be created (the limit, the store): that
            # is the answer, whatever the tool made of it.
            if not d.called:
                d.cancel()
            d.addErrback(lambda f: None)
            taskCall.failure.raiseException()
        if which == "task":
            assert taskCall is not None
            if value is None:
                # The task could not be created (the store): fail closed.
                d.cancel()
                assert taskCall.failure is not None
                taskCall.failure.raiseException()
            return _BECAME_TASK
        if which == "input":
            inputRound.interrupt()
            if not d.called:
                # Still busy elsewhere (not only waiting for answers).
                d.cancel()
            return None
        if isinstance(value, Failure):
            value.raiseException()
        return value

    def _inputRequired(
        self, context: RequestContext, method: str, name: str, arguments: Any,
        inputRound: InputRound,
    ) -> Dict[str, Any]:
        state = self.requestStates.seal(
            context.principal, method, name, arguments, inputRound.asked
        )
        if len(state) > MAX_STATE_LENGTH:
            # The next round would refuse it: fail now, and say why.
            self.log.warn(
                "{method} {name}: the answers of client {clientID} are too large to carry "
                "in a requestState ({length} characters)",
                method=method, name=name, clientID=context.principal.clientID,
                length=len(state),
            )
            raise ProtocolError(
                INVALID_PARAMS, "The answers given are too large to carry to the next round"
            )
        self.log.info(
            "{method} {name} asks client {clientID} for input: {keys}",
            method=method, name=name, clientID=context.principal.clientID,
            subject=context.principal.subject, keys=sorted(inputRound.pending),
        )
        return {
            "resultType": "input_required",
            "inputRequests": dict(inputRound.pending),
            "requestState": state,
        }

    async def _complete(self, request: Request, context: RequestContext) -> Dict[str, Any]:
        ref = request.params.get("ref")
        argument = request.params.get("argument")
        if (
            not isinstance(ref, dict)
            or not isinstance(argument, dict)
            or not isinstance(argument.get("name"), str)
            or not isinstance(argument.get("value"), str)
        ):
            raise ProtocolError(INVALID_PARAMS, "completion/complete needs a ref and an argument")
        values, total = self.registry.features.complete(ref, argument["name"], argument["value"])
        return {"completion": {"values": values, "total": total, "hasMore": total > len(values)}}

    def _taskStarted(
        self, taskCall: TaskCall, d: "Deferred[Dict[str, Any]]", context: RequestContext
    ) -> Dict[str, Any]:
        """
        Hand the running call C{d} over to its task; return the
        C{CreateTaskResult}.
        """
        assert self.tasks is not None and taskCall.record is not None
        self.tasks.run(taskCall, d)
        fields = context.logFields
        if fields is not None and "tool" not in fields:
            fields.update(tool=taskCall.name, toolOutcome="task",
                          clientID=context.principal.clientID, subject=context.principal.subject)
        return createResult(taskCall.record)

    async def _toolsCall(self, request: Request, context: RequestContext) -> Dict[str, Any]:
        params = request.params
        name = params.get("name")
        if not isinstance(name, str):
            raise ProtocolError(INVALID_PARAMS, 'tools/call needs a string "name"')
        tool = self.registry.get(name)
        if tool is None:
            raise ProtocolError(INVALID_PARAMS, f"Unknown tool: {name}")
        arguments = params.get("arguments")
        if arguments is None:
            arguments = {}
        if not isinstance(arguments, dict):
            raise ProtocolError(INVALID_PARAMS, '"arguments" must be an object')
        missing = {
            capability: value
            for capability, value in tool.requiredClientCapabilities.items()
            if capability not in context.clientCapabilities
        }
        if missing:
            if context.modern:
                raise ProtocolError(
                    MISSING_CLIENT_CAPABILITY,
                    "Missing required client capability",
                    data={"requiredCapabilities": missing},
                    httpStatus=400,
                )
            return errorResult(
                f"The tool {name} needs client capabilities the client did not "
                f"declare: {', '.join(sorted(missing))}"
            )
        # The tasks extension (2026-07-28): a task when the tool supports
        # one and the request declares the extension.
        wantsTask = False
        if self.tasks is not None and context.modern and tool.taskSupport != "forbidden":
            if optedIn(context.clientCapabilities):
                wantsTask = True
            elif tool.taskSupport == "required":
                raise missingExtension()
        upFront = wantsTask and not tool.startsTaskItself

        progress: Optional[_Progress] = None
        token = progressToken(params)
        if token is not None and context.send is not None and not upFront:
            progress = _Progress(token, context.send)
        logSender: Optional[_LogSender] = None
        if context.logLevel is not None and context.send is not None and not upFront:
            logSender = _LogSender(context.logLevel, name, context.send)

        inputRound: Optional[InputRound] = None
        sent: List[Tuple[str, RequestID]] = []
        extra: Dict[str, Any] = {}
        if context.modern:
            # 2026-07-28 forbids independent requests on a response stream:
            # the tool asks through multi round-trip requests.
            inputRound = self._inputRound(request, context, "tools/call", name, arguments)
            extra["clientRequest"] = inputRound.clientRequest
        elif context.send is not None:
            extra["clientRequest"] = self._clientRequester(context, sent)
        taskCall: Optional[TaskCall] = None
        if wantsTask:
            assert self.tasks is not None
            taskCall = TaskCall(
                self.tasks, context.principal, name, context.clientCapabilities, inputRound
            )
            extra.update(clientRequest=taskCall.clientRequest, startTask=taskCall.toolStartTask)
        toolContext = ToolContext(
            clock=self.clock,
            subject=context.principal.subject,
            clientID=context.principal.clientID,
            scopes=context.principal.scopes,
            requestID=request.id,
            httpClient=self.httpClient,
            runInThread=self.runInThread,
            clientCapabilities=context.clientCapabilities,
            progress=progress if progress is not None else _noProgress,
            logMessage=logSender if logSender is not None else _noLog,
            log=self._toolLogger(name),
            **extra,
        )
        if upFront:
            assert taskCall is not None and inputRound is not None
            inputRound.close()
            # Durably created before the tool runs and before we answer.
            await taskCall.startTask()
            return self._taskStarted(taskCall, self.registry.callTool(tool, arguments, toolContext),
                                     context)
        key = (context.scope, request.id)
        started = self.clock.seconds()
        d = self.registry.callTool(tool, arguments, toolContext)
        if key in self._inFlight:
            # A reused id: the newer call wins the cancellation slot.
            self.log.warn("Request id {requestID} reused while in flight",
                          requestID=truncateForLog(request.id, 100))
        call = _InFlight(d)
        self._inFlight[key] = call
        try:
            if inputRound is None:
                result = await d
            else:
                result = await self._untilInputNeeded(d, inputRound, taskCall)
        except ToolProtocolError as e:
            raise ProtocolError(e.code, e.message, data=e.data) from None
        except CancelledError:
            raise RequestCancelled() from None
        finally:
            if inputRound is not None:
                inputRound.close()
            if self._inFlight.get(key) is call:
                del self._inFlight[key]
            if progress is not None:
                progress.active = False
            if logSender is not None:
                logSender.active = False
            for pending in sent:
                # Unanswered requests of a finished call are forgotten.
                self._outgoing.pop(pending, None)
        if result is _BECAME_TASK:
            assert taskCall is not None
            return self._taskStarted(taskCall, d, context)
        if call.cancelled:
            # The tool turned its cancellation into a result: still no
            # response is due.
            raise RequestCancelled()
        if inputRound is not None and result is None:
            return self._inputRequired(context, "tools/call", name, arguments, inputRound)
        outcome = "error" if result.get("isError") else "ok"
        durationMs = int((self.clock.seconds() - started) * 1000)
        fields = context.logFields
        if fields is not None and "tool" not in fields:
            fields.update(tool=name, toolOutcome=outcome, toolMs=durationMs,
                          clientID=context.principal.clientID, subject=context.principal.subject)
        else:
            self.log.info(
                "Tool {tool} called by client {clientID}: {outcome} in {durationMs}ms",
                tool=name, clientID=context.principal.clientID, subject=context.principal.subject,
                outcome=outcome, durationMs=durationMs,
            )
        return result
