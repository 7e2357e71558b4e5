"""
The ways a Python user installs mcpsvc, each into a fresh virtualenv:

  - a wheel built with C{python -m build} (sdist first, then the wheel
    from the sdist, as an index would get it), installed with pip;
  - C{pip install .} from a checkout;
  - C{pip install -e .} from a checkout (a plain PEP 660 editable
    install, no config settings).

In each, C{twistd --help} lists C{mcpsvc}, C{mcpsvc --help} works and says
nothing about the installation, C{mcpsvc --version} and C{twistd mcpsvc
--version} agree, and C{twistd -n mcpsvc} run from a directory outside the
checkout answers C{/health} with the same version. The wheel's metadata is
checked field by field, and a plugin file removed from an installation is
noticed by C{mcpsvc}.

The checkout is copied first (the builds write into it). pip runs as a user
would, with build isolation; its wheel cache makes the dependencies quick
to install. The three virtualenvs are made once, in parallel, for the whole
module.
"""

from __future__ import annotations

import atexit
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import urllib.request
from typing import Dict, List, Optional, Sequence

from twisted.trial.unittest import SynchronousTestCase

from mcpsvc import __version__
from tests.process import HERE, SECRET, McpsvcProcess

#: What a fresh copy of the checkout leaves out.
_IGNORE = shutil.ignore_patterns(
    ".git", ".venv", "node_modules", "__pycache__", "*.pyc", "build", "dist", "*.egg-info",
    "var", "_trial_temp*", "dropin.cache", "results",
)
#: Per step, seconds.
TIMEOUT = 600


def _environ() -> Dict[str, str]:
    """
    The environment of every command: ours (pip's configuration and
    cache), without anything that would point Python at this checkout or
    at our virtualenv.
    """
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME", "PYTHONSTARTUP")}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def run(argv: Sequence[str], cwd: Optional[str] = None) -> "subprocess.CompletedProcess[str]":
    return subprocess.run(list(argv), cwd=cwd, env=_environ(), capture_output=True, text=True,
                          timeout=TIMEOUT)


def _baseInterpreter() -> str:
    """
    The interpreter our virtualenv was made from (a fresh virtualenv must
    not be made from another one's).
    """
    base = getattr(sys, "_base_executable", None) or sys.executable
    return base if os.path.exists(base) else sys.executable


class Installation:
    """
    A fresh virtualenv with mcpsvc installed one way.
    """

    def __init__(self, root: str, name: str) -> None:
        self.root = os.path.join(root, name)
        self.name = name
        self.log: List[str] = []

    def bin(self, name: str) -> str:
        return os.path.join(self.root, "bin", name)

    def sitePackages(self) -> str:
        out = subprocess.run(
            [self.bin("python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            capture_output=True, text=True, check=True, env=_environ(),
        )
        return out.stdout.strip()

    def steps(self, src: str, dist: str) -> List[List[str]]:
        """
        The commands that make this installation.
        """
        pip = [self.bin("python"), "-m", "pip", "install", "-q", "--no-compile"]
        create = [_baseInterpreter(), "-m", "venv", self.root]
        if self.name == "wheel":
            return [
                create,
                pip + ["build"],
                [self.bin("python"), "-m", "build", "--outdir", dist, src],
                # pip install dist/mcpsvc-*.whl, resolved once the wheel exists.
                pip + ["@wheel@"],
            ]
        if self.name == "checkout":
            return [create, pip + [src]]
        return [create, pip + ["-e", src]]


def _prepare(root: str) -> Dict[str, object]:
    """
    Copy the checkout and make the three installations, concurrently.
    """
    src = os.path.join(root, "mcpsvc-checkout")
    shutil.copytree(HERE, src, ignore=_IGNORE)
    dist = os.path.join(root, "dist")
    installs = {name: Installation(root, name) for name in ("wheel", "checkout", "editable")}
    # The editable one gets its own copy: the wheel build writes build/
    # and *.egg-info into the tree it builds.
    editableSrc = os.path.join(root, "editable-checkout")
    shutil.copytree(HERE, editableSrc, ignore=_IGNORE)
    pending = {name: inst.steps(editableSrc if name == "editable" else src, dist)
               for name, inst in installs.items()}
    running: Dict[str, "subprocess.Popen[str]"] = {}
    failures: Dict[str, str] = {}
    while pending or running:
        for name in list(pending):
            if name in running:
                continue
            if not pending[name]:
                del pending[name]
                continue
            argv = pending[name].pop(0)
            if "@wheel@" in argv:
                wheels = [f for f in os.listdir(dist) if f.endswith(".whl")]
                argv = [os.path.join(dist, wheels[0]) if a == "@wheel@" else a for a in argv]
            installs[name].log.append("$ " + " ".join(argv))
            running[name] = subprocess.Popen(argv, env=_environ(), stdout=subprocess.PIPE,
                                             stderr=subprocess.STDOUT, text=True)
        if not running:
            break
        # Wait for any one of them (bounded), in turn.
        name = next(iter(running))
        proc = running.pop(name)
        output, _ = proc.communicate(timeout=TIMEOUT)
        installs[name].log.append(output)
        if proc.returncode != 0:
            failures[name] = "\n".join(installs[name].log)
            pending.pop(name, None)
    return {"src": src, "editableSrc": editableSrc, "dist": dist, "installs": installs,
            "failures": failures}


class InstallTestsMixin:
    """
    The checks every installation passes. C{kind} names the installation.
    """

    kind: str
    _state: Dict[str, object] = {}
    _root: Optional[str] = None

    @classmethod
    def setUpClass(cls) -> None:
        if not InstallTestsMixin._state:
            InstallTestsMixin._root = tempfile.mkdtemp(prefix="mcpsvc-install-")
            atexit.register(shutil.rmtree, InstallTestsMixin._root, True)
            InstallTestsMixin._state.update(_prepare(InstallTestsMixin._root))

    def setUp(self) -> None:
        failures = self._state["failures"]
        assert isinstance(failures, dict)
        self.assertNotIn(self.kind, failures, failures.get(self.kind))
        installs = self._state["installs"]
        assert isinstance(installs, dict)
        self.install: Installation = installs[self.kind]

    def runIn(self, *argv: str, cwd: Optional[str] = None) -> "subprocess.CompletedProcess[str]":
        workdir = cwd or os.path.abspath(self.mktemp())  # type: ignore[attr-defined]
        os.makedirs(workdir, exist_ok=True)
        return run([self.install.bin(argv[0]), *argv[1:]], cwd=workdir)

    def test_twistdListsThePlugin(self) -> None:
        """
        C{twistd --help}, outside the checkout, lists C{mcpsvc}; C{twistd
        mcpsvc --help} shows its options.
        """
        result = self.runIn("twistd", "--help")
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertRegex(result.stdout, r"(?m)^\s+mcpsvc\s+MCP server")
        result = self.runIn("twistd", "mcpsvc", "--help")
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
        self.assertIn("--authorize-mode", result.stdout)

    def test_adminCommand(self) -> None:
        """
        C{mcpsvc --help} lists the commands and warns about nothing.
        """
        result = self.runIn("mcpsvc", "--help")
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn("check-config", result.stdout)
        self.assertEqual(result.stderr, "")

    def test_versions(self) -> None:
        """
        C{mcpsvc --version} and C{twistd mcpsvc --version} print the same
        line, naming this checkout's version.
        """
        admin = self.runIn("mcpsvc", "--version")
        plugin = self.runIn("twistd", "mcpsvc", "--version")
        self.assertEqual((admin.returncode, plugin.returncode), (0, 0), admin.stderr + plugin.stderr)
        self.assertTrue(admin.stdout.startswith(f"mcpsvc {__version__} (Twisted "), admin.stdout)
        self.assertEqual(admin.stdout, plugin.stdout)

    def test_serves(self) -> None:
        """
        C{twistd -n mcpsvc} from the installation answers C{/health}, with
        the version.
        """
        workdir = os.path.abspath(self.mktemp())  # type: ignore[attr-defined]
        os.makedirs(workdir)
        process = McpsvcProcess(
            workdir, env={"JWT_SECRET": SECRET, "STORE": "memory"}, twistd=self.install.bin("twistd")
        )
        self.addCleanup(process.kill)  # type: ignore[attr-defined]
        process.start()
        with urllib.request.urlopen(process.url + "/health", timeout=10) as response:
            body = json.loads(response.read())
        self.assertEqual((response.status, body["status"], body["version"]), (200, "healthy", __version__))
        self.assertEqual(process.stop(), 0)
        self.assertNotIn("Traceback", process.output)


class WheelTests(InstallTestsMixin, SynchronousTestCase):
    kind = "wheel"

    def test_builtBoth(self) -> None:
        """
        C{python -m build} made an sdist and a wheel; the wheel holds the
        plugin file beside the package, and neither holds the tests.
        """
        dist = self._state["dist"]
        assert isinstance(dist, str)
        names = sorted(os.listdir(dist))
        self.assertEqual([n.rsplit(".", 2)[-2:] for n in names if n.endswith(".tar.gz")], [["tar", "gz"]])
        (wheel,) = [n for n in names if n.endswith(".whl")]
        self.assertTrue(wheel.startswith(f"mcpsvc-{__version__}-py3-none-any"), wheel)
        import zipfile

        with zipfile.ZipFile(os.path.join(dist, wheel)) as z:
            files = z.namelist()
        self.assertIn("twisted/plugins/mcpsvc_plugin.py", files)
        self.assertNotIn("twisted/__init__.py", files)
        self.assertNotIn("twisted/plugins/__init__.py", files)
        self.assertIn("mcpsvc/tap.py", files)
        self.assertEqual([f for f in files if f.startswith(("tests/", "bench/", "docs/"))], [])

    def test_metadata(self) -> None:
        """
        The installed metadata is complete: name, version, summary, the
        README as a Markdown description, license, project URLs,
        classifiers and the Python versions; C{pip show} prints them.
        """
        script = (
            "import json; from importlib import metadata; m = metadata.metadata('mcpsvc'); "
            "print(json.dumps({k: m.get_all(k) for k in set(m.keys())} | "
            "{'body': m.get_payload()}))"
        )
        result = run([self.install.bin("python"), "-c", script])
        self.assertEqual(result.returncode, 0, result.stderr)
        fields = json.loads(result.stdout)
        self.assertEqual(fields["Name"], ["mcpsvc"])
        self.assertEqual(fields["Version"], [__version__])
        self.assertEqual(fields["Summary"],
                         ["MCP server with its own OAuth 2.1 authorization server, on Twisted"])
        self.assertEqual(fields["Description-Content-Type"], ["text/markdown"])
        # The README, its relative links made absolute (into the repository).
        with open(os.path.join(HERE, "README.md"), encoding="utf-8") as f:
            readme = f.read()
        body = fields["body"]
        self.assertTrue(body.startswith("# mcpsvc\n"), body[:40])
        self.assertEqual(re.findall(r"\]\((?!https?:)([^)]+)\)", body), [])
        source = dict(u.split(", ", 1) for u in fields["Project-URL"])["Source"]
        links = re.findall(r"\]\(" + re.escape(source) + r"/blob/main/([^)#]+)", body)
        self.assertEqual(links, re.findall(r"\]\((?!https?:|#)([^)#]+)", readme))
        self.assertGreater(len(links), 5)
        for link in links:
            self.assertTrue(os.path.exists(os.path.join(HERE, link)), link)
        self.assertEqual(len(body.strip()), len(readme.strip()) + len(links) * len(source + "/blob/main/"))
        self.assertEqual(fields["Requires-Python"], [">=3.11"])
        self.assertTrue(fields["License-Expression"][0])
        urls = dict(u.split(", ", 1) for u in fields["Project-URL"])
        self.assertEqual(sorted(urls), ["Documentation", "Issues", "Source"])
        classifiers = fields["Classifier"]
        self.assertIn("Programming Language :: Python :: 3.11", classifiers)
        self.assertIn("Framework :: Twisted", classifiers)
        self.assertTrue(fields["Keywords"])
        # pip show (the pip of our virtualenv: a current one) reads it.
        shown = run([sys.executable, "-m", "pip", "--python", self.install.bin("python"),
                     "show", "mcpsvc"])
        self.assertEqual(shown.returncode, 0, shown.stderr)
        self.assertIn(f"Version: {__version__}\n", shown.stdout)
        self.assertIn("Summary: MCP server with its own OAuth 2.1", shown.stdout)
        self.assertIn("License-Expression: " + fields["License-Expression"][0], shown.stdout)
        self.assertIn("Requires: ", shown.stdout)
        self.assertIn("twisted", shown.stdout.split("Requires: ", 1)[1].split("\n", 1)[0])

    def test_pluginMissingIsReported(self) -> None:
        """
        With the plugin file gone from the installation (a repackaging that
        dropped it), twistd no longer lists mcpsvc, and C{mcpsvc} says so,
        with the fix; it still runs its command.
        """
        plugin = os.path.join(self.install.sitePackages(), "twisted", "plugins", "mcpsvc_plugin.py")
        aside = plugin + ".aside"
        os.rename(plugin, aside)
        self.addCleanup(os.rename, aside, plugin)
        result = self.runIn("twistd", "--help")
        self.assertNotRegex(result.stdout, r"(?m)^\s+mcpsvc\s")
        result = self.runIn("mcpsvc", "gen-secret")
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn("mcpsvc: warning: twistd cannot find the mcpsvc plugin", result.stderr)
        self.assertIn("`pip install .`", result.stderr)


class CheckoutTests(InstallTestsMixin, SynchronousTestCase):
    kind = "checkout"


class EditableTests(InstallTestsMixin, SynchronousTestCase):
    kind = "editable"

    def test_editsShowAtOnce(self) -> None:
        """
        It is editable: a change to the checkout's version shows in the
        next C{mcpsvc --version}, with no reinstall; the plugin is found in
        the checkout itself.
        """
        editableSrc = self._state["editableSrc"]
        assert isinstance(editableSrc, str)
        path = os.path.join(editableSrc, "mcpsvc", "_version.py")
        with open(path) as f:
            original = f.read()

        def write(text: str) -> None:
            with open(path, "w") as f:
                f.write(text)

        self.addCleanup(write, original)
        write('__version__ = "9.9.9.dev1"\n')
        result = self.runIn("mcpsvc", "--version")
        self.assertTrue(result.stdout.startswith("mcpsvc 9.9.9.dev1 "), result.stdout + result.stderr)
        where = run([self.install.bin("python"), "-c",
                     "import twisted.plugins, os; print(os.pathsep.join(twisted.plugins.__path__))"],
                    cwd=os.path.abspath(os.sep))
        self.assertIn(os.path.join(editableSrc, "twisted", "plugins"), where.stdout.strip().split(os.pathsep))
        self.assertTrue(re.search(r"mcpsvc", self.runIn("twistd", "--help").stdout))
