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

from twisted.logger import capturedLogs, formatEvent
from twisted.trial.unittest import SynchronousTestCase

from mcpsvc.authpage import users
from mcpsvc.cli import run


#: Cheap scrypt parameters for tests that are not about the cost (the
#: default, N=2**17, takes ~0.7 s and 128 MiB per hash).
FAST = {"n": 2**10, "r": 8, "p": 1}
#: The parameters mcpsvc used before: N=2**14.
OLD = {"n": 2**14, "r": 8, "p": 1}


class DefaultCostTests(SynchronousTestCase):
    def test_scryptParameters(self) -> None:
        """
        By default, entries are scrypt N=2**17, r=8, p=1 (OWASP) with a
        per-user 16-byte salt.
        """
        self.assertEqual(users.SCRYPT, {"n": 2**17, "r": 8, "p": 1})
        entry = users.hashPassword("a good password", 5, salt=b"s" * 16)
        self.assertEqual(entry["scrypt"], {"n": 131072, "r": 8, "p": 1})
        expected = hashlib.scrypt(b"a good password", salt=b"s" * 16, n=2**17, r=8, p=1,
                                  maxmem=256 * 1024 * 1024, dklen=32)
        self.assertEqual(base64.b64decode(entry["hash"]), expected)
        self.assertTrue(users.checkPassword("a good password", entry))

    def test_oldHashUpgradedToDefault(self) -> None:
        """
        An entry of the old default (N=2**14) still verifies, and its first
        successful sign-in rewrites it at N=2**17.
        """
        path = self.mktemp()
        users.saveUsers(path, {"alice": users.hashPassword("a good password", 3, params=OLD)})
        printed = users.verifyLogin(path, "alice", "a good password")
        self.assertIsNotNone(printed)
        entry = users.loadUsers(path)["alice"]
        self.assertEqual(entry["scrypt"], {"n": 2**17, "r": 8, "p": 1})
        self.assertEqual(entry["created"], 3)
        self.assertEqual(users.verifyLogin(path, "alice", "a good password"), printed)


class HashTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.patch(users, "SCRYPT", FAST)

    def test_hashAndCheck(self) -> None:
        """
        An entry records its parameters and a per-user 16-byte salt; the
        right password matches, another does not.
        """
        entry = users.hashPassword("a good password", 5, salt=b"s" * 16)
        self.assertEqual(entry["scrypt"], FAST)
        expected = hashlib.scrypt(b"a good password", salt=b"s" * 16, n=2**10, r=8, p=1, dklen=32)
        self.assertEqual(base64.b64decode(entry["hash"]), expected)
        self.assertTrue(users.checkPassword("a good password", entry))
        self.assertFalse(users.checkPassword("a good passwore", entry))
        other = users.hashPassword("a good password", 5)
        self.assertNotEqual(other["salt"], users.hashPassword("a good password", 5)["salt"])

    def test_unreasonableParameters(self) -> None:
        """
        An entry with absurd parameters (a hand-edited file) does not match
        and costs nothing; it is not a crash.
        """
        entry = users.hashPassword("a good password", 5)
        for params in ({"n": 2**30, "r": 8, "p": 1}, {"n": 1000, "r": 8, "p": 1},
                       {"n": 2**10, "r": 0, "p": 1}, {"n": "x", "r": 8, "p": 1}, {}):
            self.assertFalse(users.checkPassword("a good password", dict(entry, scrypt=params)))

    def test_upgradeOnSignIn(self) -> None:
        """
        A correct sign-in to an entry with weaker parameters rewrites it
        with the current ones, atomically (mode 0600, no temporary file
        left), keeping its creation time and fingerprint; a wrong password
        or an unknown account changes nothing.
        """
        path = os.path.abspath(self.mktemp())
        weak = {"n": 2**8, "r": 8, "p": 1}
        users.saveUsers(path, {
            "alice": users.hashPassword("a good password", 7, params=weak),
            "bob": users.hashPassword("bob's password", 8, params=weak),
        })
        before = users.loadUsers(path)
        printed = users.fingerprint(before["alice"])
        self.assertIsNone(users.verifyLogin(path, "alice", "wrong password"))
        self.assertIsNone(users.verifyLogin(path, "carol", "a good password"))
        self.assertEqual(users.loadUsers(path), before)
        with capturedLogs() as events:
            self.assertEqual(users.verifyLogin(path, "alice", "a good password"), printed)
        after = users.loadUsers(path)
        self.assertEqual(after["alice"]["scrypt"], FAST)
        self.assertEqual(after["alice"]["created"], 7)
        self.assertNotEqual(after["alice"]["hash"], before["alice"]["hash"])
        self.assertEqual(users.fingerprint(after["alice"]), printed)
        self.assertEqual(users.currentFingerprint(path, "alice"), printed)
        self.assertEqual(after["bob"], before["bob"])
        self.assertTrue(users.checkPassword("a good password", after["alice"]))
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
        self.assertEqual(os.listdir(os.path.dirname(path)), [os.path.basename(path)])
        self.assertTrue(any("Upgraded the password hash of alice" in formatEvent(e)
                            for e in events), events)
        self.assertNotIn("a good password", open(path).read())
        # Done once: the next sign-in leaves the file alone.
        mtime = os.stat(path).st_mtime_ns
        users.verifyLogin(path, "alice", "a good password")
        self.assertEqual(os.stat(path).st_mtime_ns, mtime)
        # A new password still ends the sessions of the old one.
        users.setPassword(path, "alice", "another password", 0)
        self.assertNotEqual(users.currentFingerprint(path, "alice"), printed)

    def test_upgradeLosesToAChange(self) -> None:
        """
        If the entry changed between the check and the rewrite (a new
        password, set by C{mcpsvc users passwd}), the rewrite is dropped:
        the old password is never written back.
        """
        path = self.mktemp()
        weak = {"n": 2**8, "r": 8, "p": 1}
        users.saveUsers(path, {"alice": users.hashPassword("a good password", 7, params=weak)})
        verified = users.loadUsers(path)["alice"]
        users.setPassword(path, "alice", "the new password", 0)
        self.assertFalse(users._rehash(path, "alice", verified, "a good password",
                                       users.fingerprint(verified), FAST))
        self.assertIsNone(users.verifyLogin(path, "alice", "a good password"))
        self.assertIsNotNone(users.verifyLogin(path, "alice", "the new password"))

    def test_upgradeFailureKeepsSignIn(self) -> None:
        """
        A file that cannot be rewritten (read-only directory) does not fail
        the sign-in; a warning says the upgrade did not happen.
        """
        weak = {"n": 2**8, "r": 8, "p": 1}
        path = self.mktemp()
        users.saveUsers(path, {"alice": users.hashPassword("a good password", 7, params=weak)})

        def refuse(path: str, users: object) -> None:
            raise OSError(30, "Read-only file system")

        self.patch(users, "saveUsers", refuse)
        with capturedLogs() as events:
            self.assertIsNotNone(users.verifyLogin(path, "alice", "a good password"))
        self.assertTrue(any("Could not upgrade the password hash of alice" in formatEvent(e)
                            for e in events), events)

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
        self.patch(users, "SCRYPT", FAST)
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

    def setUp(self) -> None:
        self.patch(users, "SCRYPT", FAST)

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
