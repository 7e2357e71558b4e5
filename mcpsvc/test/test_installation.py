"""
Tests for L{mcpsvc.installation}: the plugin visibility check and the
version commands. (A real wheel and a real editable install, each in a
fresh virtualenv, are in C{tests/test_install.py}.)
"""

from __future__ import annotations

import io
import os
import platform
from importlib import metadata

from twisted import version as twistedVersion
from twisted.trial.unittest import SynchronousTestCase

from mcpsvc import __version__, cli
from mcpsvc.installation import PLUGIN_MODULE, pluginDirectories, pluginProblem, versionText
from mcpsvc.tap import Options


class PluginProblemTests(SynchronousTestCase):
    def directory(self, withPlugin: bool) -> str:
        path = os.path.abspath(self.mktemp())
        os.makedirs(path)
        if withPlugin:
            with open(os.path.join(path, PLUGIN_MODULE), "w") as f:
                f.write("# plugin\n")
        return path

    def test_found(self) -> None:
        """
        A plugin directory holding C{mcpsvc_plugin.py}: no problem.
        """
        self.assertIsNone(pluginProblem([self.directory(False), self.directory(True)]))

    def test_missing(self) -> None:
        """
        No directory holds the plugin: the problem names the directories
        searched, the symptom and the fix.
        """
        empty = self.directory(False)
        problem = pluginProblem([empty])
        assert problem is not None
        self.assertIn(empty, problem)
        self.assertIn('"Unknown command: mcpsvc"', problem)
        self.assertIn("`pip install .`", problem)
        self.assertIn("`pip install -e .`", problem)
        self.assertIsNotNone(pluginProblem([]))

    def test_thisInstallation(self) -> None:
        """
        The installation running these tests can serve C{twistd mcpsvc}.
        """
        self.assertIsNone(pluginProblem(), pluginDirectories())


class CommandWarningTests(SynchronousTestCase):
    def test_warns(self) -> None:
        """
        When the plugin is invisible, every C{mcpsvc} command first warns
        on stderr with the fix, then runs.
        """
        out, err = io.StringIO(), io.StringIO()
        status = cli.run(["gen-secret"], out, err, checkPlugin=lambda: "the plugin is gone")
        self.assertEqual(status, 0)
        self.assertEqual(err.getvalue(), "mcpsvc: warning: the plugin is gone\n")
        self.assertEqual(len(out.getvalue().strip()), 43)

    def test_quietWhenFine(self) -> None:
        """
        Nothing is said when the plugin is visible.
        """
        out, err = io.StringIO(), io.StringIO()
        self.assertEqual(cli.run(["gen-secret"], out, err, checkPlugin=lambda: None), 0)
        self.assertEqual(err.getvalue(), "")


class VersionTests(SynchronousTestCase):
    def test_text(self) -> None:
        """
        The version text names mcpsvc's version first, then Twisted's and
        Python's.
        """
        self.assertEqual(
            versionText(),
            f"mcpsvc {__version__} (Twisted {twistedVersion.short()}, "
            f"Python {platform.python_version()})",
        )

    def test_metadata(self) -> None:
        """
        The installed package metadata carries the same version.
        """
        self.assertEqual(metadata.version("mcpsvc"), __version__)

    def test_adminCommand(self) -> None:
        """
        C{mcpsvc --version} prints it and exits 0.
        """
        out, err = io.StringIO(), io.StringIO()
        with self.assertRaises(SystemExit) as caught:
            cli.run(["--version"], out, err, checkPlugin=lambda: None)
        self.assertEqual(caught.exception.code, 0)
        self.assertEqual(out.getvalue(), versionText() + "\n")

    def test_twistdPlugin(self) -> None:
        """
        C{twistd mcpsvc --version} prints the same (not Twisted's own
        version line) and exits 0.
        """
        out = io.StringIO()
        self.patch(__import__("sys"), "stdout", out)
        with self.assertRaises(SystemExit) as caught:
            Options().parseOptions(["--version"])
        self.assertEqual(caught.exception.code, 0)
        self.assertEqual(out.getvalue(), versionText() + "\n")
