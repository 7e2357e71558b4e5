# -*- test-case-name: mcpsvc.tools.test.test_files -*-
"""
The C{files} tool pack: C{file_read}, C{file_write}, C{file_list}, confined
to C{FILES_ROOT}.

Confinement: paths are relative (no absolute paths, no C{..} component, no
NUL); the resolved real path (symlinks followed) must stay inside the real
root; the last component is opened with C{O_NOFOLLOW} so a symlink swapped
in after the check is refused. Reads and writes are limited in size, lists
in length. All file system work runs through C{runInThread}, off the
reactor thread.
"""

from __future__ import annotations

import errno
import os
import stat
from typing import Any, Dict, List, Mapping

from mcpsvc.tools.interfaces import Tool, ToolContext, ToolError, ToolPackContext

__all__ = ["filesTools", "Confinement", "MAX_READ", "MAX_WRITE", "MAX_LIST"]

MAX_READ = 1024 * 1024
MAX_WRITE = 1024 * 1024
MAX_LIST = 1000
MAX_PATH = 1024


class Confinement:
    """
    Maps client paths to real paths inside C{root}.
    """

    def __init__(self, root: str) -> None:
        self.root = os.path.realpath(root)

    def _clean(self, path: str) -> List[str]:
        if not isinstance(path, str) or len(path) > MAX_PATH or "\x00" in path:
            raise ToolError("Invalid path")
        try:
            path.encode("utf-8")
        except UnicodeEncodeError:
            raise ToolError("Invalid path: it is not valid Unicode text") from None
        if path.startswith(("/", "\\")) or os.path.isabs(path) or (len(path) > 1 and path[1] == ":"):
            raise ToolError("Paths must be relative to the files root")
        parts = [p for p in path.replace("\\", "/").split("/") if p not in ("", ".")]
        if any(p == ".." for p in parts):
            raise ToolError('Paths must not contain ".."')
        return parts

    def _inside(self, real: str) -> bool:
        return real == self.root or real.startswith(self.root.rstrip(os.sep) + os.sep)

    def resolve(self, path: str) -> str:
        """
        Return the real path of an existing or new entry C{path}.

        @raise ToolError: the path is invalid or escapes the root.
        """
        parts = self._clean(path)
        candidate = os.path.join(self.root, *parts)
        real = os.path.realpath(candidate)
        if not self._inside(real):
            raise ToolError("The path is outside the files root")
        return real

    def relative(self, real: str) -> str:
        rel = os.path.relpath(real, self.root)
        return "." if rel == os.curdir else rel.replace(os.sep, "/")


def _readFile(confinement: Confinement, path: str, maxBytes: int) -> Dict[str, Any]:
    real = confinement.resolve(path)
    try:
        fd = os.open(real, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        raise ToolError(f"No such file: {path}") from None
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise ToolError("Symbolic links are not followed") from None
        raise ToolError(f"Cannot open {path}") from None
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        raise ToolError(f"Not a regular file: {path}")
    with os.fdopen(fd, "rb") as f:
        if info.st_size > maxBytes:
            raise ToolError(f"The file is larger than {maxBytes} bytes")
        data = f.read(maxBytes + 1)
    if len(data) > maxBytes:
        raise ToolError(f"The file is larger than {maxBytes} bytes")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ToolError("The file is not UTF-8 text") from None
    return {"path": confinement.relative(real), "content": text, "size": len(data)}


def _writeFile(
    confinement: Confinement, path: str, content: str, overwrite: bool, maxBytes: int
) -> Dict[str, Any]:
    data = content.encode("utf-8")
    if len(data) > maxBytes:
        raise ToolError(f"The content is larger than {maxBytes} bytes")
    real = confinement.resolve(path)
    if real == confinement.root:
        raise ToolError("Cannot write the files root")
    parent = os.path.dirname(real)
    if not os.path.isdir(parent):
        raise ToolError("The parent directory does not exist")
    flags = os.O_WRONLY | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    flags |= os.O_TRUNC if overwrite else os.O_EXCL
    try:
        fd = os.open(real, flags, 0o644)
    except FileExistsError:
        raise ToolError(f"{path} exists (set overwrite to replace it)") from None
    except IsADirectoryError:
        raise ToolError(f"{path} is a directory") from None
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise ToolError("Symbolic links are not followed") from None
        raise ToolError(f"Cannot write {path}") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise ToolError(f"Not a regular file: {path}")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
    except OSError as e:
        raise ToolError(f"Cannot write {path}: {os.strerror(e.errno or 0)}") from None
    return {"path": confinement.relative(real), "size": len(data)}


def _listDirectory(confinement: Confinement, path: str, maxEntries: int) -> Dict[str, Any]:
    real = confinement.resolve(path)
    if not os.path.isdir(real):
        raise ToolError(f"No such directory: {path}")
    entries: List[Dict[str, Any]] = []
    truncated = False
    try:
        with os.scandir(real) as it:
            listed = sorted(it, key=lambda e: e.name)
    except OSError:
        raise ToolError(f"Cannot list {path}") from None
    for entry in listed:
        if len(entries) >= maxEntries:
            truncated = True
            break
        size = None
        try:
            if entry.is_symlink():
                kind = "symlink"
            elif entry.is_dir(follow_symlinks=False):
                kind = "directory"
            else:
                kind = "file"
                size = entry.stat(follow_symlinks=False).st_size
        except OSError:
            # Removed while we listed it.
            continue
        # A name that is not UTF-8 (surrogate-escaped bytes) is shown with
        # replacement characters: a response cannot carry the raw bytes.
        name = os.fsencode(entry.name).decode("utf-8", "replace")
        item: Dict[str, Any] = {"name": name, "type": kind}
        if size is not None:
            item["size"] = size
        entries.append(item)
    return {"path": confinement.relative(real), "entries": entries, "truncated": truncated}


def filesTools(
    context: ToolPackContext,
    *,
    maxRead: int = MAX_READ,
    maxWrite: int = MAX_WRITE,
    maxList: int = MAX_LIST,
) -> List[Tool]:
    """
    Return the C{files} pack's tools, or none when C{FILES_ROOT} is unset.
    """
    root = context.config.filesRoot
    if not root:
        return []
    confinement = Confinement(root)
    runInThread = context.runInThread

    def fileRead(arguments: Mapping[str, Any], call: ToolContext) -> Any:
        return runInThread(_readFile, confinement, arguments["path"], maxRead)

    def fileWrite(arguments: Mapping[str, Any], call: ToolContext) -> Any:
        return runInThread(
            _writeFile, confinement, arguments["path"], arguments["content"],
            bool(arguments.get("overwrite", False)), maxWrite,
        )

    def fileList(arguments: Mapping[str, Any], call: ToolContext) -> Any:
        return runInThread(_listDirectory, confinement, arguments.get("path", "."), maxList)

    pathSchema = {"type": "string", "minLength": 1, "maxLength": MAX_PATH,
                  "description": "A path relative to the files root."}
    return [
        Tool(
            name="file_read",
            title="Read a file",
            description=f"Read a UTF-8 text file (at most {maxRead} bytes) under the files root.",
            inputSchema={"type": "object", "properties": {"path": pathSchema},
                         "required": ["path"], "additionalProperties": False},
            outputSchema={"type": "object", "properties": {
                "path": {"type": "string"}, "content": {"type": "string"},
                "size": {"type": "integer"}}, "required": ["path", "content", "size"]},
            annotations={"readOnlyHint": True, "openWorldHint": False},
            call=fileRead,
        ),
        Tool(
            name="file_write",
            title="Write a file",
            description=(
                f"Write UTF-8 text (at most {maxWrite} bytes) to a file under the files root; "
                "refuses to replace an existing file unless overwrite is true."
            ),
            inputSchema={"type": "object", "properties": {
                "path": pathSchema,
                "content": {"type": "string"},
                "overwrite": {"type": "boolean", "default": False}},
                "required": ["path", "content"], "additionalProperties": False},
            outputSchema={"type": "object", "properties": {
                "path": {"type": "string"}, "size": {"type": "integer"}},
                "required": ["path", "size"]},
            annotations={"readOnlyHint": False, "destructiveHint": True, "openWorldHint": False},
            # It replaces and creates files: only for tokens granted mcp:write.
            requiredScope="mcp:write",
            call=fileWrite,
        ),
        Tool(
            name="file_list",
            title="List a directory",
            description=f"List a directory under the files root (at most {maxList} entries).",
            inputSchema={"type": "object", "properties": {
                "path": dict(pathSchema, default=".")}, "additionalProperties": False},
            outputSchema={"type": "object", "properties": {
                "path": {"type": "string"},
                "entries": {"type": "array", "items": {"type": "object"}},
                "truncated": {"type": "boolean"}},
                "required": ["path", "entries", "truncated"]},
            annotations={"readOnlyHint": True, "openWorldHint": False},
            call=fileList,
        ),
    ]
