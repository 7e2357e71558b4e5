"""
Tests for C{mcpsvc grants list|revoke} (L{mcpsvc.authpage.cli}).
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from typing import Any, Dict, Tuple

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from mcpsvc.authpage.cli import GrantsOptions, grantsAction
from mcpsvc.storage.interfaces import RefreshFamily
from mcpsvc.storage.memory import MemoryStore


class GrantsTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1000)
        self.store = MemoryStore(self.clock)
        for familyID, clientID, subject in (("f1", "c1", "alice"), ("f2", "c1", "bob"), ("f3", "c2", "alice")):
            self.successResultOf(self.store.createFamily(RefreshFamily(
                familyID=familyID, clientID=clientID, subject=subject, scope="mcp:tools",
                resource="https://x/mcp", currentHash="sha256:x", createdAt=1000, expiresAt=5000)))

    def grants(self, *argv: str) -> Tuple[int, str, str]:
        options = GrantsOptions()
        options.parseOptions(list(argv))
        out, err = io.StringIO(), io.StringIO()
        status = self.successResultOf(Deferred.fromCoroutine(
            grantsAction(options.subCommand, options.subOptions, self.store, self.clock.seconds(), out, err)))
        return status, out.getvalue(), err.getvalue()

    def test_list(self) -> None:
        status, out, _ = self.grants("list")
        self.assertEqual(status, 0)
        self.assertIn("f1\tc1\talice\tmcp:tools", out)
        self.assertIn("3 grant(s)", out)
        status, out, _ = self.grants("list", "--client", "c1", "--subject", "bob", "--json")
        data = json.loads(out)
        self.assertEqual([d["grant_id"] for d in data], ["f2"])
        self.assertEqual(sorted(data[0]), ["client_id", "created_at", "expires_at", "grant_id", "scope", "subject"])

    def test_revokeOne(self) -> None:
        status, out, _ = self.grants("revoke", "f1")
        self.assertEqual(status, 0)
        self.assertIn("Revoked grant f1", out)
        self.assertIn("2 grant(s)", self.grants("list")[1])
        status, _, err = self.grants("revoke", "f1")
        self.assertEqual(status, 1)
        self.assertIn("No live grant f1", err)

    def test_revokeSubject(self) -> None:
        status, out, _ = self.grants("revoke", "--subject", "alice")
        self.assertIn("2 grant(s) revoked", out)
        status, out, _ = self.grants("list")
        self.assertIn("f2", out)
        self.assertIn("1 grant(s)", out)

    def test_revokeNeedsOneTarget(self) -> None:
        from twisted.python.usage import UsageError

        self.assertRaises(UsageError, GrantsOptions().parseOptions, ["revoke"])
        self.assertRaises(UsageError, GrantsOptions().parseOptions, ["revoke", "f1", "--subject", "x"])


class GrantsCommandTests(SynchronousTestCase):
    def test_realStore(self) -> None:
        """
        The command opens the configured (SQLite) store and lists nothing
        on a fresh one.
        """
        workdir = os.path.abspath(self.mktemp())
        os.makedirs(workdir)
        env: Dict[str, Any] = dict(os.environ, JWT_SECRET="g" * 40, STORE="sqlite",
                                   STORE_PATH=os.path.join(workdir, "db.sqlite3"), VAR_DIR=workdir)
        mcpsvc = os.path.join(os.path.dirname(sys.executable), "mcpsvc")
        result = subprocess.run([mcpsvc, "grants", "list", "--env-file", ""], env=env, cwd=workdir,
                                capture_output=True, timeout=60)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn(b"0 grant(s)", result.stdout)
