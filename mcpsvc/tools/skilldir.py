# -*- test-case-name: mcpsvc.tools.test.test_skilldir -*-
"""
The C{skills} pack: the skills of the directory C{SKILLS_DIR}, served by the
skills extension (see L{mcpsvc.tools.skills}). It has no tools.

Every directory under C{SKILLS_DIR} holding a C{SKILL.md} is a skill; its
path relative to C{SKILLS_DIR} is its skill path (C{pdf-processing},
C{acme/billing/refunds}) and every file under it is one of its files
(a nested skill's files are its enclosing skill's too).

Confinement: the tree is walked with directory descriptors, each entry
opened relative to its parent with C{O_NOFOLLOW}: symbolic links are never
followed (they are left out, and logged), so nothing outside the directory
is ever read, even if the tree changes during the walk. Names starting with
C{.} are left out; special files (FIFOs, sockets, devices) too. The walk is
bounded: L{MAX_DEPTH} levels, L{MAX_DIRECTORY_FILES} files and
L{MAX_DIRECTORY_BYTES} bytes in all; no file is read past the per-skill
limit (16 MiB). A skill that breaks a rule (name, front matter, limits) is
left out and logged; the others are served.

The directory is read in a thread (C{runInThread}), when a request first
needs the skills, then again in the background once the last read is
L{REFRESH_AFTER} seconds old (requests meanwhile get the previous
snapshot). A failed read keeps the previous snapshot.
"""

from __future__ import annotations

import os
import stat
from typing import Any, Callable, Dict, List, Optional, Tuple

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from mcpsvc.tools.features import Features
from mcpsvc.tools.interfaces import Tool, ToolPackContext
from mcpsvc.tools.skills import MAX_DEPTH, MAX_SKILL_BYTES, SKILL_FILE, InvalidSkill, Skill, SkillSet

__all__ = [
    "DirectorySkills",
    "scanDirectory",
    "skillsTools",
    "skillsFeatures",
    "MAX_DIRECTORY_FILES",
    "MAX_DIRECTORY_BYTES",
    "REFRESH_AFTER",
]

#: Files read from the directory, in all.
MAX_DIRECTORY_FILES = 10_000
#: Bytes read from the directory, in all (kept in memory).
MAX_DIRECTORY_BYTES = 64 * 1024 * 1024
#: Seconds after which the directory is read again.
REFRESH_AFTER = 60.0

_OPEN_DIRECTORY = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_NOFOLLOW", 0)
_OPEN_FILE = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)


class _Walk:
    """
    One bounded walk of a directory tree.
    """

    def __init__(self) -> None:
        #: Relative path to bytes (C{None}: over the per-skill limit, not read).
        self.files: Dict[str, Optional[bytes]] = {}
        self.skillDirectories: List[List[str]] = []
        self.problems: List[str] = []
        self.total = 0

    def directory(self, fd: int, parts: List[str]) -> None:
        if len(parts) >= MAX_DEPTH:
            self.problems.append(f"{'/'.join(parts)}: deeper than {MAX_DEPTH} levels, left out")
            return
        with os.scandir(fd) as it:
            entries = sorted(it, key=lambda e: e.name)
        for entry in entries:
            name = entry.name
            if name.startswith("."):
                continue
            path = parts + [name]
            where = "/".join(path)
            if entry.is_symlink():
                self.problems.append(f"{where}: a symbolic link, not followed")
            elif entry.is_dir(follow_symlinks=False):
                child = os.open(name, _OPEN_DIRECTORY, dir_fd=fd)
                try:
                    self.directory(child, path)
                finally:
                    os.close(child)
            elif entry.is_file(follow_symlinks=False):
                self.file(fd, name, path)
                if name == SKILL_FILE:
                    self.skillDirectories.append(parts)
            else:
                self.problems.append(f"{where}: not a regular file, left out")

    def file(self, fd: int, name: str, path: List[str]) -> None:
        where = "/".join(path)
        if len(self.files) >= MAX_DIRECTORY_FILES:
            raise InvalidSkill(f"SKILLS_DIR holds more than {MAX_DIRECTORY_FILES} files")
        handle = os.open(name, _OPEN_FILE, dir_fd=fd)
        try:
            info = os.fstat(handle)
            if not stat.S_ISREG(info.st_mode):
                self.problems.append(f"{where}: not a regular file, left out")
                return
            if info.st_size > MAX_SKILL_BYTES:
                self.files[where] = None
                return
            chunks = []
            size = 0
            while size <= MAX_SKILL_BYTES:
                chunk = os.read(handle, min(1024 * 1024, MAX_SKILL_BYTES + 1 - size))
                if not chunk:
                    break
                chunks.append(chunk)
                size += len(chunk)
        finally:
            os.close(handle)
        if size > MAX_SKILL_BYTES:
            self.files[where] = None
            return
        self.total += size
        if self.total > MAX_DIRECTORY_BYTES:
            raise InvalidSkill(f"SKILLS_DIR holds more than {MAX_DIRECTORY_BYTES} bytes")
        self.files[where] = b"".join(chunks)


def scanDirectory(root: str) -> Tuple[List[Skill], List[str]]:
    """
    Read the skills under C{root} (blocking: run it in a thread).

    @return: the skills, and why anything was left out.
    @raise InvalidSkill: the directory is over the bounds of a walk.
    @raise OSError: it cannot be read.
    """
    walk = _Walk()
    fd = os.open(root, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        walk.directory(fd, [])
    finally:
        os.close(fd)
    skills = []
    for parts in walk.skillDirectories:
        if not parts:
            walk.problems.append(
                f"{SKILL_FILE} at the top of SKILLS_DIR: each skill is a directory under it"
            )
            continue
        path = "/".join(parts)
        prefix = path + "/"
        files = {name[len(prefix):]: data for name, data in walk.files.items()
                 if name.startswith(prefix)}
        tooLarge = sorted(name for name, data in files.items() if data is None)
        if tooLarge:
            walk.problems.append(f"skill {path!r}: {tooLarge[0]} is larger than {MAX_SKILL_BYTES} "
                                 "bytes, over the limit of a skill")
            continue
        skills.append(Skill(path=path, files=files))  # type: ignore[arg-type]
    return skills, walk.problems


class DirectorySkills:
    """
    The skills of a directory, with the skills of the packs: the skill
    source of L{mcpsvc.tools.features.Features}.
    """

    log = Logger()

    def __init__(
        self,
        root: str,
        *,
        clock: IReactorTime,
        runInThread: Callable[..., "Deferred[Any]"],
        refreshAfter: float = REFRESH_AFTER,
        scan: Callable[[str], Tuple[List[Skill], List[str]]] = scanDirectory,
    ) -> None:
        self.root = root
        self.clock = clock
        self.runInThread = runInThread
        self.refreshAfter = refreshAfter
        self.scan = scan
        self._pack: Optional[SkillSet] = None
        self._current: Optional[SkillSet] = None
        self._loadedAt = 0.0
        self._loading = False
        self._waiting: List["Deferred[SkillSet]"] = []
        self._problems: Tuple[str, ...] = ()

    def current(self, pack: SkillSet) -> "Deferred[SkillSet]":
        """
        The skills to serve: C{pack} (the packs' skills) with the
        directory's. The first call waits for the directory to be read;
        later ones get the last snapshot at once, and start a new read
        once it is L{REFRESH_AFTER} seconds old.
        """
        if self._current is not None and self._pack is pack:
            if self.clock.seconds() - self._loadedAt >= self.refreshAfter and not self._loading:
                self._load(pack)
            return succeed(self._current)
        d: Deferred[SkillSet] = Deferred()
        self._waiting.append(d)
        if not self._loading:
            self._load(pack)
        return d

    def _read(self, pack: SkillSet) -> Tuple[SkillSet, List[str]]:
        skills, problems = self.scan(self.root)
        merged, left = pack.withSkills(skills)
        return merged, problems + left

    def _load(self, pack: SkillSet) -> None:
        self._loading = True

        def loaded(result: Tuple[SkillSet, List[str]]) -> None:
            merged, problems = result
            if tuple(problems) != self._problems:
                # Reported when they change, not on every read.
                for problem in problems:
                    self.log.warn("SKILLS_DIR: {problem}", problem=problem)
                self._problems = tuple(problems)
            if self._current is None or len(merged) != len(self._current):
                self.log.info("SKILLS_DIR {root}: serving {count} skill(s)", root=self.root,
                              count=len(merged))
            self._settle(pack, merged)

        def failed(failure: Failure) -> None:
            self.log.error("SKILLS_DIR {root} could not be read; the previous skills stay: {why}",
                           root=self.root, why=str(failure.value)[:500])
            self._settle(pack, self._current if self._pack is pack and self._current is not None
                         else pack)

        def broken(failure: Failure) -> None:
            # A bug here must not leave requests waiting.
            self.log.failure("Serving the skills of SKILLS_DIR failed", failure)
            if self._loading:
                self._settle(pack, pack)

        d = self.runInThread(self._read, pack)
        d.addCallbacks(loaded, failed)
        d.addErrback(broken)

    def _settle(self, pack: SkillSet, skills: SkillSet) -> None:
        self._pack = pack
        self._current = skills
        self._loadedAt = self.clock.seconds()
        self._loading = False
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            d.callback(skills)


def skillsTools(context: ToolPackContext) -> List[Tool]:
    """
    The pack has no tools.
    """
    return []


def skillsFeatures(context: ToolPackContext) -> Features:
    """
    The skills of C{SKILLS_DIR}.
    """
    root = context.config.skillsDir
    if not root:
        return Features()
    return Features(skillSource=DirectorySkills(
        os.path.realpath(root), clock=context.clock, runInThread=context.runInThread))
