"""
Tests for L{mcpsvc.tools.files}.
"""

import os
from typing import Any, Callable, Dict, List

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from mcpsvc.config import Config
from mcpsvc.tools.files import filesTools
from mcpsvc.tools.interfaces import ToolContext, ToolPackContext
from mcpsvc.tools.registry import ToolRegistry


class FilesToolsTests(SynchronousTestCase):
    def setUp(self) -> None:
        base = os.path.abspath(self.mktemp())
        self.root = os.path.join(base, "root")
        self.outside = os.path.join(base, "outside")
        os.makedirs(os.path.join(self.root, "sub"))
        os.makedirs(self.outside)
        with open(os.path.join(self.root, "hello.txt"), "w") as f:
            f.write("hello")
        with open(os.path.join(self.outside, "secret.txt"), "w") as f:
            f.write("secret")
        self.threaded: List[Callable[..., Any]] = []

        def runInThread(f: Callable[..., Any], *a: Any, **kw: Any) -> "Deferred[Any]":
            self.threaded.append(f)
            return maybeDeferred(f, *a, **kw)

        clock = Clock()
        pack = ToolPackContext(
            config=Config(filesRoot=self.root), clock=clock, runInThread=runInThread
        )
        self.registry = ToolRegistry(
            filesTools(pack, maxRead=100, maxWrite=50, maxList=3), clock=clock
        )
        self.context = ToolContext(clock=clock, subject="s", clientID="c")

    def call(self, name: str, arguments: Dict[str, Any]) -> Dict[str, Any]:
        tool = self.registry.get(name)
        assert tool is not None
        return self.successResultOf(self.registry.callTool(tool, arguments, self.context))

    def assertRefused(self, name: str, arguments: Dict[str, Any], fragment: str = "") -> None:
        result = self.call(name, arguments)
        self.assertTrue(result.get("isError"), (name, arguments, result))
        self.assertIn(fragment, result["content"][0]["text"])

    def test_noRootNoTools(self) -> None:
        """
        Without C{FILES_ROOT} the pack has no tools.
        """
        pack = ToolPackContext(config=Config(), clock=Clock(), runInThread=maybeDeferred)
        self.assertEqual(filesTools(pack), [])

    def test_read(self) -> None:
        """
        C{file_read} reads a file under the root, in a thread.
        """
        result = self.call("file_read", {"path": "hello.txt"})
        self.assertEqual(result["structuredContent"], {"path": "hello.txt", "content": "hello", "size": 5})
        self.assertTrue(self.threaded)

    def test_writeAndList(self) -> None:
        """
        C{file_write} creates files, refuses to overwrite unless asked, and
        C{file_list} lists entries in name order.
        """
        self.assertEqual(
            self.call("file_write", {"path": "sub/new.txt", "content": "abc"})["structuredContent"],
            {"path": "sub/new.txt", "size": 3},
        )
        self.assertRefused("file_write", {"path": "sub/new.txt", "content": "x"}, "exists")
        self.call("file_write", {"path": "sub/new.txt", "content": "xyz", "overwrite": True})
        with open(os.path.join(self.root, "sub", "new.txt")) as f:
            self.assertEqual(f.read(), "xyz")
        listing = self.call("file_list", {})["structuredContent"]
        self.assertEqual(
            listing["entries"],
            [{"name": "hello.txt", "type": "file", "size": 5}, {"name": "sub", "type": "directory"}],
        )
        self.assertFalse(listing["truncated"])

    def test_traversal(self) -> None:
        """
        Absolute paths and C{..} are refused.
        """
        for path in ("../outside/secret.txt", "/etc/passwd", "sub/../../outside/secret.txt",
                     "..", "a\x00b"):
            self.assertRefused("file_read", {"path": path})
            self.assertRefused("file_write", {"path": path, "content": "x"})
        self.assertRefused("file_list", {"path": ".."})

    def test_symlinkEscape(self) -> None:
        """
        Symbolic links leading outside the root are refused, for reading,
        writing and listing.
        """
        os.symlink(os.path.join(self.outside, "secret.txt"), os.path.join(self.root, "link.txt"))
        os.symlink(self.outside, os.path.join(self.root, "linkdir"))
        self.assertRefused("file_read", {"path": "link.txt"}, "outside")
        self.assertRefused("file_read", {"path": "linkdir/secret.txt"}, "outside")
        self.assertRefused("file_write", {"path": "link.txt", "content": "x", "overwrite": True})
        self.assertRefused("file_write", {"path": "linkdir/evil.txt", "content": "x"})
        self.assertRefused("file_list", {"path": "linkdir"})
        with open(os.path.join(self.outside, "secret.txt")) as f:
            self.assertEqual(f.read(), "secret")
        self.assertFalse(os.path.exists(os.path.join(self.outside, "evil.txt")))

    def test_limits(self) -> None:
        """
        Reads, writes and listings are bounded.
        """
        with open(os.path.join(self.root, "big.txt"), "w") as f:
            f.write("x" * 101)
        self.assertRefused("file_read", {"path": "big.txt"}, "larger than 100")
        self.assertRefused("file_write", {"path": "w.txt", "content": "y" * 51}, "larger than 50")
        for i in range(3):
            open(os.path.join(self.root, f"f{i}"), "w").close()
        self.assertTrue(self.call("file_list", {"path": "."})["structuredContent"]["truncated"])

    def test_notText(self) -> None:
        """
        Binary files and directories are not read.
        """
        with open(os.path.join(self.root, "bin"), "wb") as f:
            f.write(b"\xff\xfe")
        self.assertRefused("file_read", {"path": "bin"}, "UTF-8")
        self.assertRefused("file_read", {"path": "sub"})
        self.assertRefused("file_read", {"path": "missing"}, "No such file")
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_awkwardNames(self) -> None:
        """
        A name that is not UTF-8 on disk is listed with replacement
        characters; a directory that cannot be read, a path with a lone
        surrogate and a component too long for the file system are
        explained tool errors.
        """
        with open(os.path.join(os.fsencode(self.root), b"odd-\xff"), "w") as f:
            f.write("x")
        result = self.call("file_list", {"path": "."})
        self.assertFalse(result.get("isError"), result)
        names = [e["name"] for e in result["structuredContent"]["entries"]]
        self.assertIn("hello.txt", names)
        listed = self.call("file_list", {"path": "."})
        self.assertEqual(listed, result)
        self.assertRefused("file_read", {"path": "a\ud800"}, "Invalid path")
        self.assertRefused("file_write", {"path": "a\ud800", "content": "x"}, "Invalid path")
        self.assertRefused("file_read", {"path": "n" * 300}, "Cannot open")
        self.assertRefused("file_write", {"path": "n" * 300, "content": "x"}, "Cannot write")
        locked = os.path.join(self.root, "locked")
        os.makedirs(locked)
        os.chmod(locked, 0)
        self.addCleanup(os.chmod, locked, 0o755)
        if os.geteuid() != 0:  # root reads any directory
            self.assertRefused("file_list", {"path": "locked"}, "Cannot list")
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_undecodableListed(self) -> None:
        """
        The listing of a directory holding a non-UTF-8 name encodes as
        UTF-8 JSON (the name carries U+FFFD, not a lone surrogate).
        """
        import json

        with open(os.path.join(os.fsencode(self.root), b"odd-\xff"), "w") as f:
            f.write("x")
        result = self.call("file_list", {"path": "."})
        names = [e["name"] for e in result["structuredContent"]["entries"]]
        self.assertIn("odd-\ufffd", names)
        json.dumps(result, ensure_ascii=False).encode("utf-8")
