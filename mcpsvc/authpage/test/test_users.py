"""
Tests for L{mcpsvc.authpage.users} and C{mcpsvc users ...}.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import stat
import sys
from typing import List, Tuple

from twisted.trial.unittest import SynchronousTestCase

from mcpsvc.authpage import users
from mcpsvc.cli import run


class HashTests(SynchronousTestCase):
    def test_scryptParameters(self) -> None:
        """
        Entries are scrypt N=2**14, r=8, p=1 with a per-user 16-byte salt.
        """
        entry = users.hashPassword("a good password", 5, salt=b"s" * 16)
        self.assertEqual(entry["scrypt"], {"n": 16384, "r": 8, "p": 1})
        expected = hashlib.scrypt(b"a good password", salt=b"s" * 16, n=16384, r=8, p=1, dklen=32)
        self.assertEqual(base64.b64decode(entry["hash"]), expected)
        self.assertTrue(users.checkPassword("a good password", entry))
        self.assertFalse(users.checkPassword("a good passwore", entry))
        other = users.hashPassword("a good password", 5)
        self.assertNotEqual(other["salt"], users.hashPassword("a good password", 5)["salt"])

    def test_shortPasswordRefused(self) -> None:
        self.assertRaises(users.UsersError, users.hashPassword, "short", 0)

    def test_names(self) -> None:
        self.assertEqual(users.normalizeName(" Alice@Example.COM "), "alice@example.com")
        for bad in ("", "a b", "x" * 65, "<script>", "-lead"):
            self.assertIsNone(users.normalizeName(bad))

    def test_verifyLogin(self) -> None:
        path = self.mktemp()
        users.addUser(path, "alice", "a good password", 0)
        printed = users.verifyLogin(path, "ALICE", "a good password")
        self.assertEqual(printed, users.currentFingerprint(path, "alice"))
        self.assertIsNone(users.verifyLogin(path, "alice", "wrong password"))
        self.assertIsNone(users.verifyLogin(path, "nobody", "a good password"))
        users.setPassword(path, "alice", "another password", 0)
        self.assertNotEqual(users.currentFingerprint(path, "alice"), printed)

    def test_fileModeAndShape(self) -> None:
        path = self.mktemp()
        users.addUser(path, "alice", "a good password", 7)
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
        with open(path) as f:
            data = json.load(f)
        self.assertEqual(data["version"], 1)
        self.assertEqual(sorted(data["users"]["alice"]), ["created", "hash", "salt", "scrypt"])
        self.assertNotIn("a good password", open(path).read())

    def test_notAUsersFile(self) -> None:
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("[1, 2]")
        self.assertRaises(users.UsersError, users.loadUsers, path)


class _Stdin(io.StringIO):
    def isatty(self) -> bool:
        return False


class UsersCommandTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.path = os.path.abspath(self.mktemp())

    def mcpsvc(self, *argv: str, stdin: str = "") -> Tuple[int, str, str]:
        self.patch(sys, "stdin", _Stdin(stdin))
        out, err = io.StringIO(), io.StringIO()
        status = run(["users", argv[0], "--users-file", self.path, *argv[1:]], out, err)
        return status, out.getvalue(), err.getvalue()

    def test_addListPasswdRemove(self) -> None:
        status, out, err = self.mcpsvc("add", "Alice", stdin="a good password\n")
        self.assertEqual((status, err), (0, ""))
        self.assertIn("Added account alice", out)
        self.assertIsNotNone(users.verifyLogin(self.path, "alice", "a good password"))
        status, out, _ = self.mcpsvc("list")
        self.assertEqual(out.splitlines()[0], "alice")
        status, _, err = self.mcpsvc("add", "alice", stdin="another password\n")
        self.assertEqual(status, 1)
        self.assertIn("exists", err)
        status, out, _ = self.mcpsvc("passwd", "alice", stdin="another password\n")
        self.assertEqual(status, 0)
        self.assertIsNone(users.verifyLogin(self.path, "alice", "a good password"))
        self.assertIsNotNone(users.verifyLogin(self.path, "alice", "another password"))
        status, out, _ = self.mcpsvc("remove", "alice")
        self.assertEqual(status, 0)
        self.assertEqual(users.listUsers(self.path), [])
        self.assertEqual(self.mcpsvc("remove", "alice")[0], 1)

    def test_passwordNeverFromArgv(self) -> None:
        """
        There is no password option; an extra argument is a usage error.
        """
        status, _, err = self.mcpsvc("add", "alice", "secret-on-argv")
        self.assertEqual(status, 2)
        self.assertFalse(os.path.exists(self.path))

    def test_emptyOrShortPassword(self) -> None:
        self.assertEqual(self.mcpsvc("add", "alice", stdin="\n")[0], 1)
        status, _, err = self.mcpsvc("add", "alice", stdin="short\n")
        self.assertEqual(status, 1)
        self.assertIn("8 to 1024", err)

    def test_badName(self) -> None:
        status, _, err = self.mcpsvc("add", "no spaces", stdin="a good password\n")
        self.assertEqual(status, 1)
        self.assertIn("account names", err)

    def test_prompt(self) -> None:
        """
        On a terminal the password is prompted twice, and must match.
        """
        answers: List[str] = ["a good password", "a different one"]

        class TTY(_Stdin):
            def isatty(self) -> bool:
                return True

        import getpass

        self.patch(getpass, "getpass", lambda prompt="": answers.pop(0))
        self.patch(sys, "stdin", TTY(""))
        out, err = io.StringIO(), io.StringIO()
        self.assertEqual(run(["users", "add", "--users-file", self.path, "alice"], out, err), 1)
        self.assertIn("differ", err.getvalue())

    def test_defaultFromEnvironment(self) -> None:
        """
        Without --users-file, LOGIN_USERS_FILE from the environment.
        """
        self.patch(os, "environ", dict(os.environ, LOGIN_USERS_FILE=self.path))
        self.patch(sys, "stdin", _Stdin("a good password\n"))
        out, err = io.StringIO(), io.StringIO()
        self.assertEqual(run(["users", "add", "--env-file", "", "bob"], out, err), 0, err.getvalue())
        self.assertEqual(users.listUsers(self.path), ["bob"])


class StartupWarningTests(SynchronousTestCase):
    """
    L{mcpsvc.authpage.startupWarnings}: login mode with nobody to sign in
    is said at start-up, by L{mcpsvc.service.buildService} too.
    """

    def config(self, mode: str, path: str):  # type: ignore[no-untyped-def]
        from mcpsvc.config import loadConfig

        return loadConfig({"JWT_SECRET": "x" * 32, "STORE": "memory", "AUTHORIZE_MODE": mode,
                           "LOGIN_USERS_FILE": path})

    def test_warnings(self) -> None:
        from mcpsvc.authpage import startupWarnings

        path = os.path.join(self.mktemp(), "users.json")
        [missing] = startupWarnings(self.config("login", path))
        self.assertIn("holds no accounts", missing)
        self.assertIn("mcpsvc users add", missing)
        self.assertEqual(startupWarnings(self.config("consent", path)), [])
        users.addUser(path, "alice", "correct horse battery", 0.0)
        self.assertEqual(startupWarnings(self.config("login", path)), [])
        with open(path, "w") as f:
            f.write("[]")
        [unusable] = startupWarnings(self.config("login", path))
        self.assertIn("unusable", unusable)

    def test_loggedByBuildService(self) -> None:
        from twisted.internet.testing import MemoryReactorClock
        from twisted.logger import capturedLogs

        from mcpsvc.service import buildService

        path = os.path.join(self.mktemp(), "users.json")
        with capturedLogs() as events:
            buildService(self.config("login", path), reactor=MemoryReactorClock())
        texts = [e.get("warning", "") for e in events if e.get("log_level") is not None
                 and e["log_level"].name == "warn"]
        self.assertTrue(any("holds no accounts" in t for t in texts), texts)
