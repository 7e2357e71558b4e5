# -*- test-case-name: mcpsvc.tools.test.test_skills -*-
"""
Agent Skills served over MCP: the skills extension
(C{io.modelcontextprotocol/skills}, SEP-2640), without I/O.

A tool pack contributes skills as it contributes resources: a L{Skill} in
L{mcpsvc.tools.features.Features.skills}, the skill's path and its files
(C{SKILL.md} and any supporting file), as bytes. L{SkillSet} checks every
skill once, when the registry is built (a misdefined skill is an
L{InvalidSkill}, reported at start-up), and answers from memory:

 - the entries of C{skills/list} and C{skills/get}: the C{SKILL.md} URI,
   its YAML front matter as a JSON object, and every file of the skill with
   its SHA-256 digest and size;
 - C{resources/read} of each file, at C{skill://<skill-path>/<file-path>};
 - C{resources/directory/read} of each directory (the skill roots, their
   subdirectories and the path prefixes above them);
 - the C{SKILL.md} files as C{resources/list} entries.

Paths are restricted to URI-safe segments (C{A-Z a-z 0-9 . _ ~ -}, never
C{.} or C{..}), so a URI never needs percent-encoding and never escapes its
skill. The final segment of a skill's path is its name, which must follow
the Agent Skills naming rules and equal the C{name} of its front matter.
A skill holds at most L{MAX_FILES} files and L{MAX_SKILL_BYTES} bytes (the
extension's limits); a set holds at most L{MAX_SKILLS} skills.
"""

from __future__ import annotations

import base64
import hashlib
import math
import mimetypes
import re
from typing import Any, Dict, Iterable, List, Mapping, Optional, Tuple

from attrs import field, frozen

__all__ = [
    "SKILLS_EXTENSION",
    "DIRECTORY_MIME_TYPE",
    "SKILL_FILE",
    "SKILL_NAME",
    "MAX_FILES",
    "MAX_SKILL_BYTES",
    "MAX_SKILLS",
    "PAGE_SIZE",
    "InvalidSkill",
    "Skill",
    "SkillSet",
    "parseFrontmatter",
    "compileSkill",
]

#: The extension's identifier.
SKILLS_EXTENSION = "io.modelcontextprotocol/skills"
#: The C{mimeType} of a directory resource.
DIRECTORY_MIME_TYPE = "inode/directory"
#: The file every skill has at its root.
SKILL_FILE = "SKILL.md"
#: A skill name (Agent Skills): 1-64 lowercase letters, digits and hyphens,
#: no leading, trailing or doubled hyphen.
SKILL_NAME = re.compile(r"(?!.*--)[a-z0-9](?:[a-z0-9-]{0,62}[a-z0-9])?")
#: One segment of a skill path or a file path: URI-unreserved characters.
_SEGMENT = re.compile(r"[A-Za-z0-9._~-]{1,128}")
#: The front matter block at the start of a SKILL.md.
_FRONTMATTER = re.compile(r"---\r?\n(.*?)\r?\n---[ \t]*(?:\r?\n|$)", re.S)
#: Files per skill, C{SKILL.md} included (the extension's limit).
MAX_FILES = 512
#: Bytes per skill, summed over its files (the extension's limit: 16 MiB).
MAX_SKILL_BYTES = 16 * 1024 * 1024
#: Skills per server.
MAX_SKILLS = 1000
#: Segments in a skill path, and in a file path.
MAX_DEPTH = 16
#: Bytes of front matter.
MAX_FRONTMATTER = 64 * 1024
#: Longest description (Agent Skills: 1024 characters).
MAX_DESCRIPTION = 1024
#: Entries per page of C{skills/list} and C{resources/directory/read}.
PAGE_SIZE = 50

_MIME_TYPES = {".md": "text/markdown", ".markdown": "text/markdown", ".txt": "text/plain",
               ".py": "text/x-python", ".json": "application/json", ".yaml": "application/yaml",
               ".yml": "application/yaml", ".sh": "text/x-shellscript"}


class InvalidSkill(ValueError):
    """
    A skill is unusable: a bad path or name, no or invalid front matter,
    over a limit, or a URI defined twice. The message says which skill and
    why.
    """


def _jsonValue(value: Any, where: str) -> Any:
    """
    C{value} if it is JSON (strings, finite numbers, booleans, null, lists,
    objects with string keys).

    @raise InvalidSkill: it is not.
    """
    if value is None or isinstance(value, (str, bool, int)):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidSkill(f"{where}: {value!r} is not a JSON number")
        return value
    if isinstance(value, list):
        return [_jsonValue(v, where) for v in value]
    if isinstance(value, dict):
        out = {}
        for key, v in value.items():
            if not isinstance(key, str):
                raise InvalidSkill(f"{where}: the key {key!r} is not a string (quote it)")
            out[key] = _jsonValue(v, f"{where}.{key}")
        return out
    raise InvalidSkill(
        f"{where}: a {type(value).__name__} is not a JSON value (quote it to make it a string)"
    )


def parseFrontmatter(text: str) -> Dict[str, Any]:
    """
    The YAML front matter at the start of a C{SKILL.md}, as a JSON object.

    @raise InvalidSkill: there is none, it is not YAML, not a mapping, holds
        values JSON cannot carry (dates, binary), or lacks a string C{name}
        or a non-empty C{description}.
    """
    if text.startswith("\ufeff"):
        text = text[1:]
    found = _FRONTMATTER.match(text)
    if found is None:
        raise InvalidSkill("SKILL.md does not begin with a --- delimited YAML front matter block")
    if len(found.group(1).encode("utf-8")) > MAX_FRONTMATTER:
        raise InvalidSkill(f"the front matter is longer than {MAX_FRONTMATTER} bytes")
    import yaml  # here, not at the top: 2.7 MiB that a server without skills never needs

    try:
        loaded = yaml.load(found.group(1), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except yaml.YAMLError as e:
        raise InvalidSkill(f"the front matter is not valid YAML: {str(e)[:300]}") from None
    if not isinstance(loaded, dict):
        raise InvalidSkill("the front matter is not a YAML mapping")
    frontmatter = _jsonValue(loaded, "frontmatter")
    name = frontmatter.get("name")
    if not isinstance(name, str) or not name:
        raise InvalidSkill("the front matter has no string name")
    description = frontmatter.get("description")
    if not isinstance(description, str) or not description.strip():
        raise InvalidSkill("the front matter has no non-empty string description")
    if len(description) > MAX_DESCRIPTION:
        raise InvalidSkill(f"the description is longer than {MAX_DESCRIPTION} characters")
    return frontmatter  # type: ignore[no-any-return]


def _segments(path: str, what: str) -> List[str]:
    if not isinstance(path, str) or not path:
        raise InvalidSkill(f"{what} must be a non-empty string")
    parts = path.split("/")
    if len(parts) > MAX_DEPTH:
        raise InvalidSkill(f"{what} {path[:200]!r} has more than {MAX_DEPTH} segments")
    for part in parts:
        if part in (".", "..") or not _SEGMENT.fullmatch(part):
            raise InvalidSkill(
                f"{what} {path[:200]!r}: each segment must be 1-128 of A-Z a-z 0-9 . _ ~ - "
                "and not . or .."
            )
    return parts


def _mimeType(name: str, data: bytes) -> str:
    dot = name.rfind(".")
    if dot > 0 and name[dot:].lower() in _MIME_TYPES:
        return _MIME_TYPES[name[dot:].lower()]
    guessed, _ = mimetypes.guess_type(name, strict=False)
    if guessed:
        return guessed
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return "application/octet-stream"
    return "text/plain"


@frozen(kw_only=True)
class Skill:
    """
    One skill a pack serves.

    @ivar path: the skill path: C{/}-separated segments, the last one the
        skill's name (C{"pdf-processing"}, C{"acme/billing/refunds"}); its
        files are served at C{skill://<path>/<file>}.
    @ivar files: every file of the skill, by its path relative to the skill
        root (C{/}-separated), as bytes; C{"SKILL.md"} is required and
        begins with YAML front matter naming the skill.
    @ivar mimeTypes: the C{mimeType} of a file, by its path, when the one
        guessed from its name does not fit (C{SKILL.md} is always
        C{text/markdown}).
    """

    path: str
    files: Mapping[str, bytes]
    mimeTypes: Mapping[str, str] = field(factory=dict)


@frozen
class _File:
    uri: str
    data: bytes
    mimeType: str

    def contents(self) -> Dict[str, Any]:
        out: Dict[str, Any] = {"uri": self.uri, "mimeType": self.mimeType}
        try:
            out["text"] = self.data.decode("utf-8")
        except UnicodeDecodeError:
            out["blob"] = base64.b64encode(self.data).decode("ascii")
        return out


@frozen
class _Entry:
    uri: str
    name: str
    frontmatter: Dict[str, Any]
    resources: List[Dict[str, Any]]

    def asDict(self) -> Dict[str, Any]:
        return {"uri": self.uri, "frontmatter": self.frontmatter, "resources": self.resources}


_Compiled = Tuple[_Entry, List[_File]]


def compileSkill(skill: Skill) -> _Compiled:
    """
    Check C{skill} and compute its entry (digests included) and files.

    @raise InvalidSkill: it is unusable.
    """
    where = f"skill {str(skill.path)[:200]!r}"
    parts = _segments(skill.path, "the skill path")
    name = parts[-1]
    if not SKILL_NAME.fullmatch(name):
        raise InvalidSkill(
            f"{where}: its name {name!r} (the last path segment) must be 1-64 lowercase letters, "
            "digits and hyphens, without a leading, trailing or doubled hyphen"
        )
    if not isinstance(skill.files, Mapping) or SKILL_FILE not in skill.files:
        raise InvalidSkill(f"{where}: it has no {SKILL_FILE}")
    if len(skill.files) > MAX_FILES:
        raise InvalidSkill(f"{where}: it has {len(skill.files)} files, over the limit of {MAX_FILES}")
    root = "skill://" + "/".join(parts)
    files: List[_File] = []
    total = 0
    for relative in sorted(skill.files):
        data = skill.files[relative]
        if not isinstance(data, bytes):
            raise InvalidSkill(f"{where}: the content of {str(relative)[:200]!r} is not bytes")
        _segments(relative, f"{where}: the file path")
        total += len(data)
        mimeType = "text/markdown" if relative == SKILL_FILE else skill.mimeTypes.get(
            relative) or _mimeType(relative, data)
        files.append(_File(f"{root}/{relative}", data, mimeType))
    if total > MAX_SKILL_BYTES:
        raise InvalidSkill(f"{where}: its files add up to {total} bytes, over the limit of "
                           f"{MAX_SKILL_BYTES}")
    try:
        text = skill.files[SKILL_FILE].decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidSkill(f"{where}: {SKILL_FILE} is not UTF-8 text") from None
    try:
        frontmatter = parseFrontmatter(text)
    except InvalidSkill as e:
        raise InvalidSkill(f"{where}: {e}") from None
    if frontmatter["name"] != name:
        raise InvalidSkill(
            f"{where}: the front matter names it {str(frontmatter['name'])[:100]!r}; the last "
            f"segment of its path must be its name"
        )
    resources = [
        {"uri": f.uri, "digest": "sha256:" + hashlib.sha256(f.data).hexdigest(),
         "size": len(f.data)}
        for f in files
    ]
    return _Entry(f"{root}/{SKILL_FILE}", name, frontmatter, resources), files


def _data(files: List[_File], uri: str) -> bytes:
    return next(f.data for f in files if f.uri == uri)


class SkillSet:
    """
    The skills of every enabled pack, checked and indexed.

    @ivar entries: the skill entries, in path order.
    """

    def __init__(self, skills: Iterable[Skill] = (), compiled: Iterable[_Compiled] = ()) -> None:
        """
        @param compiled: skills already checked by L{compileSkill}.
        @raise InvalidSkill: a skill is unusable, there are too many, or
            two define one URI differently.
        """
        compiled = [compileSkill(skill) for skill in skills] + list(compiled)
        if len(compiled) > MAX_SKILLS:
            raise InvalidSkill(f"{len(compiled)} skills, over the limit of {MAX_SKILLS}")
        compiled.sort(key=lambda c: c[0].uri)
        self.entries: List[_Entry] = []
        self._byURI: Dict[str, _Entry] = {}
        self._files: Dict[str, _File] = {}
        #: Directory path (after C{skill://}) to child name to whether the
        #: child is a directory.
        self._directories: Dict[str, Dict[str, bool]] = {}
        for entry, files in compiled:
            if entry.uri in self._byURI:
                raise InvalidSkill(f"the skill {entry.uri} is defined twice")
            self._byURI[entry.uri] = entry
            self.entries.append(entry)
            for f in files:
                known = self._files.get(f.uri)
                if known is not None and known.data != f.data:
                    # A nested skill's files belong to its enclosing skill
                    # too: the same bytes, or it is two files.
                    raise InvalidSkill(f"{f.uri} is defined twice, with different content")
                self._files[f.uri] = f
        for uri in self._files:
            segments = uri[len("skill://"):].split("/")
            for depth in range(1, len(segments)):
                parent = "/".join(segments[:depth])
                isDirectory = depth < len(segments) - 1
                children = self._directories.setdefault(parent, {})
                if children.get(segments[depth], isDirectory) != isDirectory:
                    raise InvalidSkill(
                        f"skill://{parent}/{segments[depth]} is both a file and a directory"
                    )
                children[segments[depth]] = isDirectory
        for path in self._directories:
            if "skill://" + path in self._files:
                raise InvalidSkill(f"skill://{path} is both a file and a directory")
        self._fingerprint = hashlib.sha256(
            "\n".join(e.uri for e in self.entries).encode("utf-8")
        ).hexdigest()[:12]

    def __bool__(self) -> bool:
        return bool(self.entries)

    def withSkills(self, skills: Iterable[Skill]) -> Tuple["SkillSet", List[str]]:
        """
        These skills and as many of C{skills} as are usable: a skill that is
        invalid, or that takes a URI of these skills (or of an earlier one
        of C{skills}), is left out. Returns the new set and why each skill
        was left out.
        """
        problems: List[str] = []
        kept: List[_Compiled] = [(e, [self._files[r["uri"]] for r in e.resources])
                                 for e in self.entries]
        known: Dict[str, bytes] = {uri: f.data for uri, f in self._files.items()}
        directories = {"skill://" + d for d in self._directories}
        for skill in skills:
            try:
                entry, files = compileSkill(skill)
            except InvalidSkill as e:
                problems.append(str(e))
                continue
            prefixes = set()
            for f in files:
                segments = f.uri.split("/")
                prefixes.update("/".join(segments[:i]) for i in range(3, len(segments)))
            # A nested skill's files are its enclosing skill's too: the
            # same bytes at the same URI are no clash.
            clash = sorted(
                [f.uri for f in files if f.uri in directories
                 or known.get(f.uri, f.data) != f.data]
                + [p for p in prefixes if p in known]
            )
            if entry.uri in (e.uri for e, _ in kept):
                clash.insert(0, entry.uri)
            if clash:
                problems.append(f"skill {skill.path!r}: {clash[0]} is already served")
                continue
            if len(kept) >= MAX_SKILLS:
                problems.append(f"skill {skill.path!r}: over the limit of {MAX_SKILLS} skills")
                continue
            kept.append((entry, files))
            known.update((f.uri, f.data) for f in files)
            directories |= prefixes
        return SkillSet(compiled=kept), problems

    def __len__(self) -> int:
        return len(self.entries)

    # -- skills/list, skills/get ----------------------------------------------

    def _cursor(self, kind: str, offset: int) -> str:
        raw = f"{self._fingerprint}:{kind}:{offset}".encode("ascii")
        return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")

    def _offset(self, kind: str, cursor: Any, total: int) -> Optional[int]:
        """
        The offset C{cursor} names, or C{None} when it is not one of ours
        (another listing, altered, or from before a rebuild).
        """
        if not isinstance(cursor, str) or not 0 < len(cursor) <= 200:
            return None
        try:
            raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode("ascii")
            fingerprint, cursorKind, number = raw.split(":", 2)
            offset = int(number)
        except (ValueError, UnicodeDecodeError):
            return None
        if fingerprint != self._fingerprint or cursorKind != kind or not 0 < offset < total:
            return None
        return offset

    def page(self, cursor: Any = None) -> Optional[Tuple[List[Dict[str, Any]], Optional[str]]]:
        """
        One page of C{skills/list}: the entries and the next cursor
        (C{None} on the last page); C{None} for an invalid cursor.
        """
        offset = 0
        if cursor is not None:
            found = self._offset("list", cursor, len(self.entries))
            if found is None:
                return None
            offset = found
        end = offset + PAGE_SIZE
        nextCursor = self._cursor("list", end) if end < len(self.entries) else None
        return [e.asDict() for e in self.entries[offset:end]], nextCursor

    def get(self, uri: Any) -> Optional[Dict[str, Any]]:
        """
        The entry of the skill whose C{SKILL.md} is at C{uri}, or C{None}.
        """
        entry = self._byURI.get(uri) if isinstance(uri, str) else None
        return entry.asDict() if entry is not None else None

    # -- resources ------------------------------------------------------------

    def resources(self) -> List[Dict[str, Any]]:
        """
        The C{resources/list} entries: each skill's C{SKILL.md}, named and
        described from its front matter.
        """
        return [
            {"uri": e.uri, "name": e.name, "description": e.frontmatter["description"],
             "mimeType": "text/markdown"}
            for e in self.entries
        ]

    def read(self, uri: Any) -> Optional[List[Dict[str, Any]]]:
        """
        The C{resources/read} contents of a skill file, or C{None}.
        """
        found = self._files.get(uri) if isinstance(uri, str) else None
        return [found.contents()] if found is not None else None

    def isDirectory(self, uri: Any) -> bool:
        return (isinstance(uri, str) and uri.startswith("skill://")
                and uri[len("skill://"):] in self._directories)

    def directory(
        self, uri: Any, cursor: Any = None
    ) -> Optional[Tuple[List[Dict[str, Any]], Optional[str]]]:
        """
        One page of the direct children of the directory C{uri} (files with
        their resource metadata, subdirectories as C{inode/directory}) and
        the next cursor; C{None} when C{uri} is no directory or the cursor
        is invalid.
        """
        if not self.isDirectory(uri):
            return None
        children = self._directories[uri[len("skill://"):]]
        names = sorted(children)
        offset = 0
        kind = "dir-" + hashlib.sha256(uri.encode("utf-8")).hexdigest()[:8]
        if cursor is not None:
            found = self._offset(kind, cursor, len(names))
            if found is None:
                return None
            offset = found
        end = offset + PAGE_SIZE
        page = []
        for name in names[offset:end]:
            child = f"{uri}/{name}"
            if children[name]:
                page.append({"uri": child, "name": name, "mimeType": DIRECTORY_MIME_TYPE})
            else:
                f = self._files[child]
                page.append({"uri": child, "name": name, "mimeType": f.mimeType,
                             "size": len(f.data)})
        return page, (self._cursor(kind, end) if end < len(names) else None)
