# -*- test-case-name: mcpsvc.tools.test.test_build -*-
"""
mcpsvc's built-in tool packs, as plugins: C{core}, C{files}, C{llm},
C{skills} (no tools: the skills of C{SKILLS_DIR}) and the test-only
C{conformance}. Each pack builds its tools only when it is
enabled (see L{mcpsvc.tools.enabledPacks}).
"""

from typing import Callable, List

from twisted.plugin import IPlugin
from zope.interface import implementer

from mcpsvc.tools.features import Features, IFeatureProvider
from mcpsvc.tools.interfaces import IToolProvider, Tool, ToolPackContext


@implementer(IPlugin, IToolProvider)
class _BuiltinPack:
    def __init__(self, packName: str, module: str, function: str) -> None:
        self.packName = packName
        self._module = module
        self._function = function

    def tools(self, context: ToolPackContext) -> List[Tool]:
        from importlib import import_module

        build: Callable[[ToolPackContext], List[Tool]] = getattr(
            import_module(self._module), self._function
        )
        return build(context)

    def __repr__(self) -> str:
        return f"<tool pack {self.packName}>"


@implementer(IFeatureProvider)
class _BuiltinFeaturePack(_BuiltinPack):
    def __init__(self, packName: str, module: str, function: str, featuresFunction: str) -> None:
        super().__init__(packName, module, function)
        self._featuresFunction = featuresFunction

    def features(self, context: ToolPackContext) -> Features:
        from importlib import import_module

        build: Callable[[ToolPackContext], Features] = getattr(
            import_module(self._module), self._featuresFunction
        )
        return build(context)


core = _BuiltinPack("core", "mcpsvc.tools.core", "coreTools")
files = _BuiltinPack("files", "mcpsvc.tools.files", "filesTools")
llm = _BuiltinPack("llm", "mcpsvc.tools.llm", "llmTools")
skills = _BuiltinFeaturePack("skills", "mcpsvc.tools.skilldir", "skillsTools", "skillsFeatures")
conformance = _BuiltinFeaturePack(
    "conformance", "mcpsvc.tools.conformance", "conformanceTools", "conformanceFeatures"
)
