"""
Tests for L{mcpsvc.tools.skilldir}: the skills of C{SKILLS_DIR}, read from
real directories (confinement, bounds, rules), refreshed on a clock, and
served over HTTP.
"""

import hashlib
import json
import os
from typing import Any, Dict, List, Tuple

from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.internet.task import Clock
from twisted.logger import capturedLogs
from twisted.trial.unittest import SynchronousTestCase

from mcpsvc.config import Config, ConfigError, loadConfig
from mcpsvc.mcp.test.helpers import MODERN_META, Harness
from mcpsvc.tools import enabledPacks
from mcpsvc.tools import skilldir
from mcpsvc.tools.conformance import CONFORMANCE_SKILLS
from mcpsvc.tools.skilldir import DirectorySkills, scanDirectory
from mcpsvc.tools.skills import MAX_SKILL_BYTES, SKILLS_EXTENSION, Skill, SkillSet


def write(root: str, path: str, data: bytes) -> None:
    full = os.path.join(root, *path.split("/"))
    os.makedirs(os.path.dirname(full), exist_ok=True)
    with open(full, "wb") as f:
        f.write(data)


def skillMD(name: str, description: str = "Does things") -> bytes:
    return f"---\nname: {name}\ndescription: {description}\n---\n\n# {name}\n".encode()


def inThread(f: Any, *a: Any, **kw: Any) -> "Deferred[Any]":
    return maybeDeferred(f, *a, **kw)


class ScanTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.root = os.path.abspath(self.mktemp())
        os.makedirs(self.root)

    def scan(self) -> Tuple[Dict[str, Skill], List[str]]:
        skills, problems = scanDirectory(self.root)
        return {s.path: s for s in skills}, problems

    def test_skills(self) -> None:
        """
        Each directory with a C{SKILL.md} is a skill at its relative path,
        with every file under it (a nested skill's too); names starting
        with C{.} are left out.
        """
        write(self.root, "pdf/SKILL.md", skillMD("pdf"))
        write(self.root, "pdf/references/FORMS.md", b"forms")
        write(self.root, "pdf/.cache/x", b"hidden")
        write(self.root, "pdf/.hidden", b"hidden")
        write(self.root, "acme/billing/refunds/SKILL.md", skillMD("refunds"))
        write(self.root, "acme/billing/refunds/inner/SKILL.md", skillMD("inner"))
        write(self.root, "acme/README.md", b"not a skill")
        skills, problems = self.scan()
        self.assertEqual(problems, [])
        self.assertEqual(sorted(skills), ["acme/billing/refunds", "acme/billing/refunds/inner", "pdf"])
        self.assertEqual(skills["pdf"].files, {"SKILL.md": skillMD("pdf"),
                                               "references/FORMS.md": b"forms"})
        self.assertEqual(sorted(skills["acme/billing/refunds"].files),
                         ["SKILL.md", "inner/SKILL.md"])
        merged, left = SkillSet().withSkills(skills.values())
        self.assertEqual(left, [])
        self.assertEqual(len(merged), 3)

    def test_symlinksNotFollowed(self) -> None:
        """
        Symbolic links, to files or directories, inside or outside the
        directory, are never followed: left out, and reported.
        """
        outside = os.path.abspath(self.mktemp())
        write(outside, "secret.txt", b"secret")
        write(outside, "evil/SKILL.md", skillMD("evil"))
        write(self.root, "pdf/SKILL.md", skillMD("pdf"))
        os.symlink(os.path.join(outside, "secret.txt"), os.path.join(self.root, "pdf", "leak.txt"))
        os.symlink(os.path.join(outside, "evil"), os.path.join(self.root, "evil"))
        os.symlink(os.path.join(self.root, "pdf"), os.path.join(self.root, "loop"))
        skills, problems = self.scan()
        self.assertEqual(sorted(skills), ["pdf"])
        self.assertEqual(sorted(skills["pdf"].files), ["SKILL.md"])
        self.assertEqual(sorted(problems), [
            "evil: a symbolic link, not followed", "loop: a symbolic link, not followed",
            "pdf/leak.txt: a symbolic link, not followed"])

    def test_specialFiles(self) -> None:
        """
        A FIFO is left out (never opened, so never blocks); so is a
        C{SKILL.md} at the top.
        """
        write(self.root, "pdf/SKILL.md", skillMD("pdf"))
        os.mkfifo(os.path.join(self.root, "pdf", "pipe"))
        write(self.root, "SKILL.md", skillMD("top"))
        skills, problems = self.scan()
        self.assertEqual(sorted(skills["pdf"].files), ["SKILL.md"])
        self.assertIn("pdf/pipe: not a regular file, left out", problems)
        self.assertTrue(any("at the top of SKILLS_DIR" in p for p in problems), problems)

    def test_bounds(self) -> None:
        """
        A file over the per-skill limit is not read and its skill is left
        out; a tree deeper than the limit is cut; a directory over the
        file or byte bounds is refused whole.
        """
        write(self.root, "big/SKILL.md", skillMD("big"))
        with open(os.path.join(self.root, "big", "huge.bin"), "wb") as f:
            f.truncate(MAX_SKILL_BYTES + 1)
        write(self.root, "ok/SKILL.md", skillMD("ok"))
        write(self.root, "ok/" + "/".join("d" * 20) + "/deep.md", b"x")
        skills, problems = self.scan()
        self.assertEqual(sorted(skills), ["ok"])
        self.assertEqual(sorted(skills["ok"].files), ["SKILL.md"])
        self.assertTrue(any("huge.bin is larger than" in p for p in problems), problems)
        self.assertTrue(any("deeper than" in p for p in problems), problems)
        self.patch(skilldir, "MAX_DIRECTORY_FILES", 2)
        self.assertRaises(ValueError, scanDirectory, self.root)
        self.patch(skilldir, "MAX_DIRECTORY_FILES", 100)
        self.patch(skilldir, "MAX_DIRECTORY_BYTES", 10)
        e = self.assertRaises(ValueError, scanDirectory, self.root)
        self.assertIn("more than 10 bytes", str(e))

    def test_invalidSkillsLeftOut(self) -> None:
        """
        Skills breaking a rule are left out with the reason; a skill
        taking a pack skill's URI too; the others are served.
        """
        write(self.root, "Bad_Name/SKILL.md", skillMD("Bad_Name"))
        write(self.root, "wrong/SKILL.md", skillMD("other"))
        write(self.root, "space/SKILL.md", skillMD("space"))
        write(self.root, "space/a file.md", b"x")
        write(self.root, "release-notes/SKILL.md", skillMD("release-notes"))
        write(self.root, "good/SKILL.md", skillMD("good"))
        skills, problems = scanDirectory(self.root)
        merged, left = SkillSet(CONFORMANCE_SKILLS).withSkills(skills)
        self.assertEqual([e.uri for e in merged.entries], [
            "skill://acme/billing/refunds/SKILL.md", "skill://good/SKILL.md",
            "skill://release-notes/SKILL.md"])
        self.assertEqual(merged.get("skill://release-notes/SKILL.md")["frontmatter"]["description"],
                         "Write release notes from a list of merged changes")
        self.assertEqual(len(left), 4, left)
        self.assertTrue(any("already served" in p for p in left), left)


class DirectorySkillsTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.root = os.path.abspath(self.mktemp())
        write(self.root, "pdf/SKILL.md", skillMD("pdf"))
        self.clock = Clock()
        self.pack = SkillSet()

    def test_firstRequestWaits(self) -> None:
        """
        The first request waits for the directory to be read (in the
        thread); requests arriving meanwhile share that read.
        """
        pending: List[Deferred[Any]] = []
        calls: List[Any] = []

        def runInThread(f: Any, *a: Any) -> "Deferred[Any]":
            calls.append((f, a))
            d: Deferred[Any] = Deferred()
            pending.append(d)
            return d

        source = DirectorySkills(self.root, clock=self.clock, runInThread=runInThread)
        first = source.current(self.pack)
        second = source.current(self.pack)
        self.assertNoResult(first)
        self.assertEqual(len(calls), 1)
        f, a = calls[0]
        with capturedLogs():
            pending[0].callback(f(*a))
        served = self.successResultOf(first)
        self.assertEqual([e.uri for e in served.entries], ["skill://pdf/SKILL.md"])
        self.assertIs(self.successResultOf(second), served)

    def test_refresh(self) -> None:
        """
        Once the snapshot is L{REFRESH_AFTER} seconds old a request starts
        a new read and still gets the snapshot; a failed read keeps the
        previous one (logged).
        """
        source = DirectorySkills(self.root, clock=self.clock, runInThread=inThread)
        with capturedLogs():
            first = self.successResultOf(source.current(self.pack))
        write(self.root, "new/SKILL.md", skillMD("new"))
        self.clock.advance(skilldir.REFRESH_AFTER - 1)
        self.assertIs(self.successResultOf(source.current(self.pack)), first)
        self.clock.advance(1)
        with capturedLogs():
            # The read runs synchronously here, so the new set is served.
            fresh = self.successResultOf(source.current(self.pack))
        self.assertEqual(len(fresh), 2)
        source.scan = lambda root: (_ for _ in ()).throw(OSError("gone"))
        self.clock.advance(skilldir.REFRESH_AFTER)
        with capturedLogs() as events:
            self.assertIs(self.successResultOf(source.current(self.pack)), fresh)
        self.assertTrue(any("could not be read" in e.get("log_format", "") for e in events))

    def test_firstReadFails(self) -> None:
        """
        When the directory cannot be read at all, the packs' skills are
        served and the read is tried again later.
        """
        def broken(root: str) -> Any:
            raise OSError("permission denied")

        pack = SkillSet(CONFORMANCE_SKILLS)
        source = DirectorySkills(self.root, clock=self.clock, runInThread=inThread, scan=broken)
        with capturedLogs():
            self.assertIs(self.successResultOf(source.current(pack)), pack)
        source.scan = scanDirectory
        self.clock.advance(skilldir.REFRESH_AFTER)
        with capturedLogs():
            self.assertEqual(len(self.successResultOf(source.current(pack))), 3)

    def test_bugDoesNotHang(self) -> None:
        """
        Should serving a read fail unexpectedly, waiting requests still get
        the packs' skills, and the failure is logged with its traceback.
        """
        source = DirectorySkills(self.root, clock=self.clock,
                                 runInThread=lambda f, *a: succeed(None))
        self.assertIs(self.successResultOf(source.current(self.pack)), self.pack)
        self.assertEqual(len(self.flushLoggedErrors(TypeError)), 1)

    def test_problemsLoggedWhenTheyChange(self) -> None:
        """
        What is left out is logged once, not on every read.
        """
        write(self.root, "Bad/SKILL.md", skillMD("Bad"))
        source = DirectorySkills(self.root, clock=self.clock, runInThread=inThread)
        with capturedLogs() as events:
            self.successResultOf(source.current(self.pack))
            self.clock.advance(skilldir.REFRESH_AFTER)
            self.successResultOf(source.current(self.pack))
        warnings = [e for e in events if e.get("log_format") == "SKILLS_DIR: {problem}"]
        self.assertEqual(len(warnings), 1)


class SkillsDirOverHTTPTests(SynchronousTestCase):
    """
    C{SKILLS_DIR} enables the C{skills} pack: the extension is declared and
    the directory's skills are served beside the packs'.
    """

    def setUp(self) -> None:
        self.root = os.path.abspath(self.mktemp())
        write(self.root, "pdf/SKILL.md", skillMD("pdf", "Fill PDF forms"))
        write(self.root, "pdf/templates/invoice.md", b"# Invoice\n")
        self.h = Harness(self)
        config = Config(toolPacks=("core",), skillsDir=self.root)
        self.assertIn("skills", enabledPacks(config))
        self.h.servePacks(config, runInThread=inThread)

    def modern(self, method: str, params: Dict[str, Any], name: Any = None) -> Dict[str, Any]:
        response, content = self.h.post(
            self.h.call(1, method, dict(params, _meta=MODERN_META)),
            self.h.modernHeaders(method, name))
        self.assertEqual(response.code, 200, content)
        return json.loads(content)  # type: ignore[no-any-return]

    def test_served(self) -> None:
        """
        The directory's skills are listed, got, read and browsed.
        """
        capabilities = self.modern("server/discover", {})["result"]["capabilities"]
        self.assertEqual(capabilities["extensions"], {SKILLS_EXTENSION: {"directoryRead": True}})
        self.assertIn("resources", capabilities)
        with capturedLogs():
            [entry] = self.modern("skills/list", {})["result"]["skills"]
        self.assertEqual(entry["frontmatter"], {"name": "pdf", "description": "Fill PDF forms"})
        self.assertEqual(entry["resources"][1], {
            "uri": "skill://pdf/templates/invoice.md",
            "digest": "sha256:" + hashlib.sha256(b"# Invoice\n").hexdigest(), "size": 10})
        uri = "skill://pdf/templates/invoice.md"
        self.assertEqual(self.modern("resources/read", {"uri": uri}, uri)["result"]["contents"],
                         [{"uri": uri, "mimeType": "text/markdown", "text": "# Invoice\n"}])
        self.assertEqual(self.modern("skills/get", {"uri": "skill://pdf/SKILL.md"})["result"]["skill"],
                         entry)
        children = self.modern("resources/directory/read", {"uri": "skill://pdf"})["result"]
        self.assertEqual([c["name"] for c in children["resources"]], ["SKILL.md", "templates"])
        listed = self.modern("resources/list", {})["result"]["resources"]
        self.assertEqual(listed, [{"uri": "skill://pdf/SKILL.md", "name": "pdf",
                                   "description": "Fill PDF forms", "mimeType": "text/markdown"}])
        missing = "skill://pdf/../../etc/passwd"
        self.assertEqual(self.modern("resources/read", {"uri": missing}, missing)["error"]["code"],
                         -32602)

    def test_config(self) -> None:
        """
        C{SKILLS_DIR} must name a directory.
        """
        secret = "s" * 40
        self.assertEqual(loadConfig({"JWT_SECRET": secret, "SKILLS_DIR": self.root}).skillsDir,
                         self.root)
        e = self.assertRaises(ConfigError, loadConfig, {
            "JWT_SECRET": secret, "SKILLS_DIR": os.path.join(self.root, "nope")})
        self.assertIn("SKILLS_DIR", str(e))

