# -*- test-case-name: mcpsvc.tools.test.test_build -*-
"""
Tools: the L{IToolProvider} plugin interface, the built-in packs and the
registry of enabled tools.

L{buildToolRegistry} finds every tool pack with
C{twisted.plugin.getPlugins(IToolProvider, mcpsvc.plugins)} and keeps the
enabled ones: those listed in C{TOOL_PACKS}, plus C{files} when
C{FILES_ROOT} is set, C{skills} when C{SKILLS_DIR} is set and C{llm} when
C{LLM_URL} is set.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, FrozenSet, Iterable, List, Optional

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from mcpsvc.tools.features import Features, FeatureSet, IFeatureProvider
from mcpsvc.tools.interfaces import (
    IToolProvider,
    Tool,
    ToolContext,
    ToolError,
    ToolPackContext,
    ToolResult,
    textContent,
)
from mcpsvc.tools.registry import InvalidTool, ToolRegistry

__all__ = [
    "IToolProvider",
    "Tool",
    "ToolContext",
    "ToolError",
    "ToolPackContext",
    "ToolResult",
    "ToolRegistry",
    "InvalidTool",
    "textContent",
    "buildToolRegistry",
    "discoverProviders",
    "enabledPacks",
]

log = Logger()


def enabledPacks(config: Any) -> FrozenSet[str]:
    """
    The names of the packs C{config} enables.
    """
    packs = set(config.toolPacks)
    if config.filesRoot:
        packs.add("files")
    if getattr(config, "skillsDir", None):
        packs.add("skills")
    if config.llmURL:
        packs.add("llm")
    return frozenset(packs)


def discoverProviders() -> List[Any]:
    """
    Return every L{IToolProvider} plugin in the L{mcpsvc.plugins} package.
    """
    from twisted.plugin import getPlugins

    import mcpsvc.plugins

    return list(getPlugins(IToolProvider, mcpsvc.plugins))


def _deferToThread(f: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    from twisted.internet.threads import deferToThread

    return deferToThread(f, *args, **kwargs)


def buildToolRegistry(
    config: Any,
    *,
    clock: IReactorTime,
    runInThread: Optional[Callable[..., Any]] = None,
    httpClient: Any = None,
    providers: Optional[Iterable[Any]] = None,
    metrics: Any = None,
    toolsChanged: Optional[Callable[[], None]] = None,
    promptsChanged: Optional[Callable[[], None]] = None,
    state: Optional[Dict[str, Any]] = None,
) -> ToolRegistry:
    """
    Build the registry of the tools C{config} enables.

    @param runInThread: runs blocking callables off the reactor thread
        (default: the reactor's thread pool).
    @param httpClient: a treq-compatible client for packs that call out
        (default: the C{treq} module).
    @param providers: the tool providers to choose from (default: the
        plugins found by L{discoverProviders}).
    @param metrics: a L{mcpsvc.metrics.Metrics} fed the outcome of every
        tool call (C{mcpsvc_tool_calls}), or C{None}.
    @param toolsChanged: what C{ToolPackContext.toolsChanged} calls (the
        change bus's C{toolsChanged}); by default nothing.
    @param promptsChanged: what C{ToolPackContext.promptsChanged} calls
        (the change bus's C{promptsChanged}); by default nothing.
    @param state: the packs' C{ToolPackContext.state} (kept by
        C{registry.rebuild}, which builds the same way).
    @raise InvalidTool: a tool is misdefined (bad name, duplicate, invalid
        schema): a configuration error, reported at startup.
    """
    packs = enabledPacks(config)
    if providers is not None:
        providers = list(providers)
    if state is None:
        state = {}
    context = ToolPackContext(
        config=config,
        clock=clock,
        runInThread=runInThread if runInThread is not None else _deferToThread,
        httpClient=httpClient,
        toolsChanged=toolsChanged if toolsChanged is not None else _nothing,
        promptsChanged=promptsChanged if promptsChanged is not None else _nothing,
        state=state,
    )
    candidates = list(providers) if providers is not None else discoverProviders()
    tools: List[Tool] = []
    features: List[Features] = []
    found = set()
    for provider in sorted(candidates, key=lambda p: str(p.packName)):
        if provider.packName not in packs or provider.packName in found:
            continue
        found.add(provider.packName)
        if IFeatureProvider.providedBy(provider):
            features.append(provider.features(context))
        packTools = list(provider.tools(context))
        log.info(
            "Tool pack {pack} enabled with {count} tool(s)",
            pack=provider.packName, count=len(packTools),
        )
        tools.extend(packTools)
    for missing in sorted(packs - found):
        log.warn("Tool pack {pack} is enabled but no plugin provides it", pack=missing)
    registry = ToolRegistry(
        tools, clock=clock, defaultTimeout=config.toolTimeout, features=FeatureSet(features),
        rateLimit=getattr(config, "toolRateLimit", None), metrics=metrics,
    )

    def rebuild() -> ToolRegistry:
        # Plugins are discovered again (a pack module added since start-up
        # is found) unless they were given.
        return buildToolRegistry(
            config, clock=clock, runInThread=runInThread, httpClient=httpClient,
            providers=providers, toolsChanged=toolsChanged, state=state,
            promptsChanged=promptsChanged,
        )

    registry.rebuild = rebuild
    return registry


def _nothing() -> None:
    pass
