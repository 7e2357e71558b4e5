# -*- test-case-name: mcpsvc.tools.test.test_features -*-
"""
Resources, resource templates, prompts and completions that a pack may
offer besides tools.

mcpsvc is a tools server: none of its production packs offers these, so by
default the C{resources}, C{prompts} and C{completions} capabilities are not
declared and their methods answer C{-32601}. A pack that provides
L{IFeatureProvider} as well as L{IToolProvider} (the test-only
C{conformance} pack does) adds them, and the capabilities are declared
only then.

A pack may also contribute skills (L{mcpsvc.tools.skills.Skill}, the
skills extension): their C{SKILL.md} files are listed as resources and
every file of a skill is read with C{resources/read}, so skills declare
the C{resources} capability too.

Everything here is static and synchronous: the values are computed from the
request alone.
"""

from __future__ import annotations

import re
from typing import Any, Callable, Dict, List, Mapping, Optional, Pattern, Sequence, Tuple

from attrs import field, frozen
from twisted.internet.defer import Deferred, succeed
from zope.interface import Attribute, Interface

from mcpsvc.tools.skills import SKILLS_EXTENSION, Skill, SkillSet

__all__ = [
    "IFeatureProvider",
    "Resource",
    "ResourceTemplate",
    "Prompt",
    "PromptArgument",
    "Features",
    "FeatureSet",
    "Skill",
]


class IFeatureProvider(Interface):
    """
    A pack that offers resources, prompts or completions.
    """

    packName = Attribute("The pack's name, as listed in TOOL_PACKS (C{str}).")

    def features(context: Any) -> "Features":
        """
        Return the pack's features for this configuration (a
        L{mcpsvc.tools.interfaces.ToolPackContext}).
        """


@frozen(kw_only=True)
class Resource:
    """
    A resource with a fixed URI.

    @ivar read: C{read(uri) -> [contents]}, each C{{"uri", "mimeType",
        "text" | "blob"}}; with C{asksForInput}, C{read(uri, clientRequest)},
        which may return a Deferred or a coroutine and ask the client for
        input as a prompt does (2026-07-28: a multi round-trip request).
    @ivar asksForInput: C{read} takes C{clientRequest}.
    """

    uri: str
    name: str
    description: str
    read: Callable[..., Any]
    mimeType: Optional[str] = None
    asksForInput: bool = False

    def descriptor(self) -> Dict[str, Any]:
        out: Dict[str, Any] = {"uri": self.uri, "name": self.name, "description": self.description}
        if self.mimeType is not None:
            out["mimeType"] = self.mimeType
        return out


def _templatePattern(template: str) -> Pattern[str]:
    parts = re.split(r"\{([A-Za-z_][A-Za-z0-9_]*)\}", template)
    regex = ""
    for index, part in enumerate(parts):
        regex += re.escape(part) if index % 2 == 0 else f"(?P<{part}>[^/?#]+)"
    return re.compile(regex)


@frozen(kw_only=True)
class ResourceTemplate:
    """
    A family of resources (RFC 6570 level 1 templates: C{{name}} matches one
    path segment).

    @ivar read: C{read(uri, variables) -> [contents]}; with C{asksForInput},
        C{read(uri, variables, clientRequest)} (see L{Resource}).
    @ivar asksForInput: C{read} takes C{clientRequest}.
    """

    uriTemplate: str
    name: str
    description: str
    read: Callable[..., Any]
    mimeType: Optional[str] = None
    asksForInput: bool = False
    pattern: Pattern[str] = field(init=False)

    @pattern.default
    def _pattern(self) -> Pattern[str]:
        return _templatePattern(self.uriTemplate)

    def match(self, uri: str) -> Optional[Dict[str, str]]:
        found = self.pattern.fullmatch(uri)
        return found.groupdict() if found else None

    def descriptor(self) -> Dict[str, Any]:
        out: Dict[str, Any] = {
            "uriTemplate": self.uriTemplate, "name": self.name, "description": self.description,
        }
        if self.mimeType is not None:
            out["mimeType"] = self.mimeType
        return out


@frozen(kw_only=True)
class PromptArgument:
    name: str
    description: str = ""
    required: bool = False


@frozen(kw_only=True)
class Prompt:
    """
    A prompt.

    @ivar get: C{get(arguments) -> [messages]}, each C{{"role",
        "content"}}; with C{asksForInput},
        C{get(arguments, clientRequest)}, which may return a Deferred or a
        coroutine and ask the client for input exactly as a tool does with
        C{ToolContext.clientRequest} (2026-07-28: a multi round-trip
        request).
    @ivar asksForInput: C{get} takes C{clientRequest}.
    """

    name: str
    description: str
    get: Callable[..., Any]
    arguments: Sequence[PromptArgument] = ()
    asksForInput: bool = False

    def descriptor(self) -> Dict[str, Any]:
        out: Dict[str, Any] = {"name": self.name, "description": self.description}
        if self.arguments:
            out["arguments"] = [
                {"name": a.name, "description": a.description, "required": a.required}
                for a in self.arguments
            ]
        return out


@frozen(kw_only=True)
class Features:
    """
    What one pack offers besides tools.

    @ivar complete: C{complete(ref, argumentName, value) -> [values]}.
    @ivar subscribable: resources accept C{resources/subscribe} (they never
        change, so no update is ever sent).
    @ivar skills: skills (the skills extension), served at
        C{skill://<path>/<file>}.
    @ivar skillSource: skills read at request time (the C{skills} pack's
        L{mcpsvc.tools.skilldir.DirectorySkills}): an object whose
        C{current(packSkills)} returns a Deferred firing with the
        L{SkillSet} to serve, the packs' skills included. At most one pack
        gives one.
    """

    resources: Sequence[Resource] = ()
    templates: Sequence[ResourceTemplate] = ()
    prompts: Sequence[Prompt] = ()
    complete: Optional[Callable[[Mapping[str, Any], str, str], List[str]]] = None
    subscribable: bool = False
    skills: Sequence[Skill] = ()
    skillSource: Any = None


class FeatureSet:
    """
    The features of every enabled pack, merged.

    @ivar skills: the skills of every pack (L{SkillSet}).
    """

    def __init__(self, features: Sequence[Features] = ()) -> None:
        """
        @raise ValueError: two packs define one resource or prompt.
        @raise mcpsvc.tools.skills.InvalidSkill: a skill is misdefined.
        """
        self.resources: Dict[str, Resource] = {}
        self.templates: List[ResourceTemplate] = []
        self.prompts: Dict[str, Prompt] = {}
        self.completers: List[Callable[[Mapping[str, Any], str, str], List[str]]] = []
        self.subscribable = False
        for f in features:
            for resource in f.resources:
                if resource.uri in self.resources:
                    raise ValueError(f"resource {resource.uri!r} is defined twice")
                self.resources[resource.uri] = resource
            self.templates.extend(f.templates)
            for prompt in f.prompts:
                if prompt.name in self.prompts:
                    raise ValueError(f"prompt {prompt.name!r} is defined twice")
                self.prompts[prompt.name] = prompt
            if f.complete is not None:
                self.completers.append(f.complete)
            self.subscribable = self.subscribable or f.subscribable
        self.skills = SkillSet(skill for f in features for skill in f.skills)
        sources = [f.skillSource for f in features if f.skillSource is not None]
        if len(sources) > 1:
            raise ValueError("more than one pack reads skills at request time")
        self.skillSource = sources[0] if sources else None
        for uri in self.resources:
            if self.skills.read(uri) is not None or self.skills.isDirectory(uri):
                raise ValueError(f"resource {uri!r} is also a skill's")

    @property
    def hasResources(self) -> bool:
        # Skill files are resources.
        return bool(self.resources or self.templates or self.hasSkills)

    @property
    def hasSkills(self) -> bool:
        return bool(self.skills) or self.skillSource is not None

    def currentSkills(self) -> "Deferred[SkillSet]":
        """
        The skills to serve now: the packs', and those of the skill source
        if there is one.
        """
        if self.skillSource is None:
            return succeed(self.skills)
        return self.skillSource.current(self.skills)  # type: ignore[no-any-return]

    def resourceList(self, skills: Optional[SkillSet] = None) -> List[Dict[str, Any]]:
        """
        The C{resources/list} entries: the resources, then each skill's
        C{SKILL.md} (its other files are listed in its skill entry).

        @param skills: the skills (default: the packs').
        """
        skills = self.skills if skills is None else skills
        return [r.descriptor() for r in self.resources.values()] + skills.resources()

    @property
    def hasPrompts(self) -> bool:
        return bool(self.prompts)

    @property
    def hasCompletions(self) -> bool:
        return bool(self.completers)

    def capabilities(self, modern: bool) -> Dict[str, Any]:
        """
        The capabilities these features declare.
        """
        capabilities: Dict[str, Any] = {}
        if self.hasResources:
            resources: Dict[str, Any] = {"listChanged": False}
            if self.subscribable and not modern:
                resources["subscribe"] = True
            capabilities["resources"] = resources
        if self.hasPrompts:
            # 2026-07-28: a pack may change its prompts
            # (ToolPackContext.promptsChanged), announced on
            # subscriptions/listen.
            capabilities["prompts"] = {"listChanged": modern}
        if self.hasCompletions:
            capabilities["completions"] = {}
        if self.hasSkills and modern:
            # The extension is defined against 2026-07-28 (the handshake
            # eras' capabilities have no extensions); every directory of
            # the skills can be read.
            capabilities["extensions"] = {SKILLS_EXTENSION: {"directoryRead": True}}
        return capabilities

    def read(self, uri: str) -> Optional[List[Dict[str, Any]]]:
        """
        Return the contents of C{uri}, or C{None} when no resource has it
        (for a resource that asks for input, see L{reader}).
        """
        found = self.reader(uri)
        if found is None:
            return None
        asksForInput, read = found
        if asksForInput:
            from mcpsvc.tools.interfaces import _noClientRequests

            return read(_noClientRequests)  # type: ignore[no-any-return]
        return read()  # type: ignore[no-any-return]

    def reader(self, uri: str) -> Optional[Tuple[bool, Callable[..., Any]]]:
        """
        Whether the resource of C{uri} asks for input, and its reader: a
        call with no argument, or with C{clientRequest} when it asks;
        C{None} when no resource has C{uri}.
        """
        resource = self.resources.get(uri)
        if resource is not None:
            if resource.asksForInput:
                return True, lambda clientRequest: resource.read(uri, clientRequest)
            return False, lambda: resource.read(uri)
        for template in self.templates:
            variables = template.match(uri)
            if variables is not None:
                found = template
                if found.asksForInput:
                    return True, lambda clientRequest: found.read(uri, variables, clientRequest)
                return False, lambda: found.read(uri, variables)
        if self.skills.read(uri) is not None:
            return False, lambda: self.skills.read(uri)
        return None

    def complete(self, ref: Mapping[str, Any], name: str, value: str) -> Tuple[List[str], int]:
        """
        Return up to 100 completion values and the total found.
        """
        values: List[str] = []
        for completer in self.completers:
            values.extend(completer(ref, name, value))
        return values[:100], len(values)
