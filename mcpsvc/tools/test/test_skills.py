"""
Tests for L{mcpsvc.tools.skills} (the skills extension, SEP-2640), its
place in L{mcpsvc.tools.features}, and its methods over HTTP in both
protocol eras.
"""

import base64
import hashlib
import json
from typing import Any, Dict, Optional

from twisted.trial.unittest import SynchronousTestCase

from mcpsvc.config import Config
from mcpsvc.mcp.tasks import TASKS_EXTENSION
from mcpsvc.mcp.test.helpers import MODERN_META, Harness
from mcpsvc.tools.conformance import CONFORMANCE_SKILLS
from mcpsvc.tools.features import Features, FeatureSet, Resource
from mcpsvc.tools.skills import (
    MAX_FILES,
    MAX_SKILL_BYTES,
    PAGE_SIZE,
    SKILLS_EXTENSION,
    InvalidSkill,
    Skill,
    SkillSet,
    parseFrontmatter,
)


def skillMD(name: str, description: str = "Does things", extra: str = "") -> bytes:
    return f"---\nname: {name}\ndescription: {description}\n{extra}---\n\n# {name}\n".encode()


def skill(path: str, files: Optional[Dict[str, bytes]] = None) -> Skill:
    """
    A skill at C{path} named after its last segment, with C{files} besides
    its C{SKILL.md}.
    """
    name = path.rsplit("/", 1)[-1]
    contents = {"SKILL.md": skillMD(name)}
    contents.update(files or {})
    return Skill(path=path, files=contents)


class FrontmatterTests(SynchronousTestCase):
    def test_parsed(self) -> None:
        """
        The front matter is the YAML block between the leading C{---}
        lines, as a JSON object with every field the author wrote; a byte
        order mark and CRLF line ends are accepted.
        """
        text = ("\ufeff---\r\nname: pdf\r\ndescription: 'Fill: forms'\r\nlicense: MIT\r\n"
                "metadata:\r\n  version: 2\r\n  tags: [a, b]\r\n---\r\nBody\r\n")
        self.assertEqual(parseFrontmatter(text), {
            "name": "pdf", "description": "Fill: forms", "license": "MIT",
            "metadata": {"version": 2, "tags": ["a", "b"]}})
        self.assertEqual(parseFrontmatter("---\nname: a\ndescription: b\n---")["name"], "a")

    def test_refused(self) -> None:
        """
        No front matter, YAML that is not a mapping or not JSON (a date, a
        non-string key), or no name or description: refused, saying why.
        """
        for text, why in [
            ("# no front matter\n", "does not begin"),
            ("---\nname: a\ndescription: b\n", "does not begin"),
            ("---\n[1, 2]\n---\n", "not a YAML mapping"),
            ("---\nname: [unclosed\n---\n", "not valid YAML"),
            ("---\nname: a\ndescription: b\ncreated: 2026-01-01\n---\n", "quote it"),
            ("---\nname: a\ndescription: b\n1: x\n---\n", "not a string"),
            ("---\nname: a\ndescription: .nan\n---\n", "not a JSON number"),
            ("---\ndescription: b\n---\n", "no string name"),
            ("---\nname: a\ndescription: '  '\n---\n", "description"),
            ("---\nname: a\ndescription: " + "x" * 1025 + "\n---\n", "longer than 1024"),
            ("---\nname: a\ndescription: b\nx: !!python/object:os.system {}\n---\n", "not valid YAML"),
        ]:
            e = self.assertRaises(InvalidSkill, parseFrontmatter, text)
            self.assertIn(why, str(e), text)


    def test_yamlOnlyWhenParsing(self) -> None:
        """
        PyYAML is imported when a C{SKILL.md} is first parsed, not when the
        server is built: a server without skills does not carry it (2.7 MiB
        of idle memory).
        """
        import subprocess
        import sys

        code = (
            "import sys\n"
            "from mcpsvc.config import Config\n"
            "from mcpsvc.service import buildService\n"
            "from twisted.internet import reactor\n"
            "buildService(Config(jwtSecret='s' * 40, store='memory'), reactor=reactor)\n"
            "print('yaml' in sys.modules)\n"
            "from mcpsvc.tools.skills import parseFrontmatter\n"
            "parseFrontmatter('---\\nname: a\\ndescription: b\\n---\\n')\n"
            "print('yaml' in sys.modules)\n"
        )
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             timeout=120)
        self.assertEqual(out.stdout.split(), ["False", "True"], out.stderr[-2000:])


class SkillSetTests(SynchronousTestCase):
    def test_entry(self) -> None:
        """
        An entry names its C{SKILL.md}, carries the front matter verbatim
        and lists every file once with the SHA-256 digest and size of its
        bytes.
        """
        skills = SkillSet([skill("acme/billing/refunds", {"examples/email.md": b"Dear\n"})])
        [entry], cursor = skills.page()
        self.assertIsNone(cursor)
        body = skillMD("refunds")
        self.assertEqual(entry, {
            "uri": "skill://acme/billing/refunds/SKILL.md",
            "frontmatter": {"name": "refunds", "description": "Does things"},
            "resources": [
                {"uri": "skill://acme/billing/refunds/SKILL.md",
                 "digest": "sha256:" + hashlib.sha256(body).hexdigest(), "size": len(body)},
                {"uri": "skill://acme/billing/refunds/examples/email.md",
                 "digest": "sha256:" + hashlib.sha256(b"Dear\n").hexdigest(), "size": 5},
            ],
        })
        self.assertEqual(skills.get("skill://acme/billing/refunds/SKILL.md"), entry)
        for unknown in ("skill://refunds/SKILL.md", "skill://acme/billing/refunds", None, 3):
            self.assertIsNone(skills.get(unknown))

    def test_read(self) -> None:
        """
        Every file is readable at its URI: text as text, other bytes as a
        base64 blob, with a C{mimeType} (C{SKILL.md}: C{text/markdown}).
        """
        skills = SkillSet([Skill(path="pdf", files={
            "SKILL.md": skillMD("pdf"), "scripts/run.py": b"print(1)\n",
            "assets/logo.bin": b"\xff\x00\xfe", "data.csv": b"a,b\n"},
            mimeTypes={"data.csv": "text/csv; header=present"})])
        self.assertEqual(skills.read("skill://pdf/SKILL.md"), [
            {"uri": "skill://pdf/SKILL.md", "mimeType": "text/markdown",
             "text": skillMD("pdf").decode()}])
        self.assertEqual(skills.read("skill://pdf/scripts/run.py")[0]["mimeType"], "text/x-python")
        self.assertEqual(skills.read("skill://pdf/assets/logo.bin"), [
            {"uri": "skill://pdf/assets/logo.bin", "mimeType": "application/octet-stream",
             "blob": base64.b64encode(b"\xff\x00\xfe").decode()}])
        self.assertEqual(skills.read("skill://pdf/data.csv")[0]["mimeType"], "text/csv; header=present")
        for missing in ("skill://pdf", "skill://pdf/scripts", "skill://pdf/../pdf/SKILL.md",
                        "skill://pdf/nope.md", None):
            self.assertIsNone(skills.read(missing))

    def test_resources(self) -> None:
        """
        Each C{SKILL.md} is a resource named and described from its front
        matter.
        """
        skills = SkillSet([skill("b-skill"), skill("team/a-skill")])
        self.assertEqual(skills.resources(), [
            {"uri": "skill://b-skill/SKILL.md", "name": "b-skill", "description": "Does things",
             "mimeType": "text/markdown"},
            {"uri": "skill://team/a-skill/SKILL.md", "name": "a-skill",
             "description": "Does things", "mimeType": "text/markdown"},
        ])

    def test_directories(self) -> None:
        """
        Every directory (path prefixes, skill roots, subdirectories) lists
        its direct children: subdirectories as C{inode/directory}, files
        with their metadata; a file or an unknown path is no directory.
        """
        skills = SkillSet([skill("acme/refunds", {"t/a.md": b"A", "t/deep/b.md": b"BB"})])
        self.assertEqual(skills.directory("skill://acme"), (
            [{"uri": "skill://acme/refunds", "name": "refunds", "mimeType": "inode/directory"}],
            None))
        children, _ = skills.directory("skill://acme/refunds/t")
        self.assertEqual(children, [
            {"uri": "skill://acme/refunds/t/a.md", "name": "a.md", "mimeType": "text/markdown",
             "size": 1},
            {"uri": "skill://acme/refunds/t/deep", "name": "deep", "mimeType": "inode/directory"},
        ])
        self.assertEqual([c["name"] for c in skills.directory("skill://acme/refunds")[0]],
                         ["SKILL.md", "t"])
        for notDirectory in ("skill://acme/refunds/SKILL.md", "skill://acme/refunds/", "skill://",
                             "skill://nope", "test://acme", None):
            self.assertFalse(skills.isDirectory(notDirectory), notDirectory)
            self.assertIsNone(skills.directory(notDirectory))

    def test_pagination(self) -> None:
        """
        Listings come in pages of L{PAGE_SIZE} entries, each entry whole on
        one page; cursors round-trip, and a foreign, altered or stale
        cursor is refused.
        """
        skills = SkillSet([skill(f"s{i:03d}") for i in range(PAGE_SIZE + 3)])
        first, cursor = skills.page()
        self.assertEqual(len(first), PAGE_SIZE)
        second, last = skills.page(cursor)
        self.assertIsNone(last)
        self.assertEqual([e["uri"] for e in first + second],
                         [f"skill://s{i:03d}/SKILL.md" for i in range(PAGE_SIZE + 3)])
        other = SkillSet([skill(f"t{i:03d}") for i in range(PAGE_SIZE + 3)])
        for bad in (other.page()[1], cursor + "x", "", "x" * 300, 5, "%%%"):
            self.assertIsNone(skills.page(bad), bad)
        # A directory's cursor is not the listing's, nor another directory's.
        big = SkillSet([Skill(path="big", files=dict(
            {"SKILL.md": skillMD("big")}, **{f"f/{i:03d}.md": b"x" for i in range(PAGE_SIZE + 1)}))])
        page, dirCursor = big.directory("skill://big/f")
        self.assertEqual(len(page), PAGE_SIZE)
        self.assertEqual(big.directory("skill://big/f", dirCursor)[0][0]["name"], f"{PAGE_SIZE:03d}.md")
        self.assertIsNone(big.page(dirCursor))
        self.assertIsNone(big.directory("skill://big", dirCursor))

    def test_invalid(self) -> None:
        """
        A skill with a bad path or name, a name its front matter
        contradicts, no C{SKILL.md}, an unsafe file path, or over the
        extension's limits is refused, saying which skill and why.
        """
        for bad, why in [
            (skill("Bad_Name"), "must be 1-64 lowercase"),
            (skill("a--b"), "must be 1-64 lowercase"),
            (skill("-a"), "must be 1-64 lowercase"),
            (skill("x" * 65), "must be 1-64 lowercase"),
            (skill("acme/../pdf"), "each segment"),
            (skill("acme//pdf"), "each segment"),
            (skill(""), "non-empty"),
            (skill("a%20b/pdf"), "each segment"),
            (Skill(path="pdf", files={"SKILL.md": skillMD("other")}), "last segment"),
            (Skill(path="pdf", files={"README.md": b"x"}), "no SKILL.md"),
            (Skill(path="pdf", files={"SKILL.md": b"\xff"}), "not UTF-8"),
            (Skill(path="pdf", files={"SKILL.md": b"# none"}), "front matter"),
            (Skill(path="pdf", files={"SKILL.md": "x"}), "not bytes"),  # type: ignore[dict-item]
            (skill("pdf", {"../x": b""}), "each segment"),
            (Skill(path="pdf", files={"SKILL.md": skillMD("pdf"), "/etc/passwd": b""}),
             "each segment"),
            (Skill(path="pdf", files={"SKILL.md": skillMD("pdf"), "a\\b": b""}), "each segment"),
            (Skill(path="pdf", files=dict({"SKILL.md": skillMD("pdf")},
                                          **{f"f{i}": b"" for i in range(MAX_FILES)})),
             "over the limit of 512"),
            (Skill(path="pdf", files={"SKILL.md": skillMD("pdf"),
                                      "big": b"x" * MAX_SKILL_BYTES}), "over the limit of 16777216"),
        ]:
            e = self.assertRaises(InvalidSkill, SkillSet, [bad])
            self.assertIn(why, str(e), bad.path)

    def test_conflicts(self) -> None:
        """
        Two skills at one path, one URI with two contents, or a path that
        is both a file and a directory are refused; a nested skill whose
        files its enclosing skill lists too (same bytes) is fine.
        """
        self.assertRaises(InvalidSkill, SkillSet, [skill("pdf"), skill("pdf")])
        inner = skillMD("inner")
        SkillSet([skill("outer", {"inner/SKILL.md": inner}), Skill(path="outer/inner",
                                                               files={"SKILL.md": inner})])
        e = self.assertRaises(InvalidSkill, SkillSet, [
            skill("outer", {"inner/SKILL.md": skillMD("inner", "Old")}),
            Skill(path="outer/inner", files={"SKILL.md": inner})])
        self.assertIn("different content", str(e))
        e = self.assertRaises(InvalidSkill, SkillSet, [skill("outer", {"inner": b"file"}),
                                                        skill("outer/inner")])
        self.assertIn("both a file and a directory", str(e))


class FeatureSetSkillTests(SynchronousTestCase):
    def test_none(self) -> None:
        """
        Without skills nothing changes: no extension, no skill resources.
        """
        features = FeatureSet([Features()])
        self.assertFalse(features.hasSkills)
        self.assertEqual(features.capabilities(modern=True), {})

    def test_declared(self) -> None:
        """
        Skills declare the C{resources} capability (their files are
        resources) and, in 2026-07-28 only, the extension with
        C{directoryRead}; their C{SKILL.md} files are listed and every file
        is read like any resource.
        """
        features = FeatureSet([Features(skills=[skill("pdf", {"notes.md": b"N"})])])
        self.assertEqual(features.capabilities(modern=True), {
            "resources": {"listChanged": False},
            "extensions": {SKILLS_EXTENSION: {"directoryRead": True}}})
        self.assertEqual(features.capabilities(modern=False), {"resources": {"listChanged": False}})
        self.assertEqual([r["uri"] for r in features.resourceList()], ["skill://pdf/SKILL.md"])
        self.assertEqual(features.read("skill://pdf/notes.md")[0]["text"], "N")
        self.assertIsNone(features.read("skill://pdf/other.md"))

    def test_clash(self) -> None:
        """
        A pack's resource may not take a skill file's or directory's URI.
        """
        for uri in ("skill://pdf/SKILL.md", "skill://pdf"):
            resource = Resource(uri=uri, name="x", description="X", read=lambda u: [])
            self.assertRaises(ValueError, FeatureSet,
                              [Features(resources=[resource]), Features(skills=[skill("pdf")])])


class SkillsOverHTTPTests(SynchronousTestCase):
    """
    The conformance pack's skills through the MCP endpoint.
    """

    def setUp(self) -> None:
        self.h = Harness(self)
        self.h.servePacks(Config(toolPacks=("conformance",)))

    def modern(self, method: str, params: Dict[str, Any], meta: Optional[Dict[str, Any]] = None,
               name: Optional[str] = None) -> Dict[str, Any]:
        headers = self.h.modernHeaders(method, name)
        body = self.h.call(1, method, dict(params, _meta=meta or MODERN_META))
        response, content = self.h.post(body, headers)
        self.assertEqual(response.code, 200, content)
        return json.loads(content)  # type: ignore[no-any-return]

    def test_discover(self) -> None:
        """
        C{server/discover} declares the extension, with C{directoryRead},
        beside C{resources}, whatever the client declares; a client of the
        tasks extension gets both.
        """
        capabilities = self.modern("server/discover", {})["result"]["capabilities"]
        self.assertEqual(capabilities["extensions"], {SKILLS_EXTENSION: {"directoryRead": True}})
        self.assertIn("resources", capabilities)
        meta = dict(MODERN_META)
        meta["io.modelcontextprotocol/clientCapabilities"] = {"extensions": {TASKS_EXTENSION: {}}}
        capabilities = self.modern("server/discover", {}, meta)["result"]["capabilities"]
        self.assertEqual(set(capabilities["extensions"]), {SKILLS_EXTENSION, TASKS_EXTENSION})

    def test_listAndGet(self) -> None:
        """
        C{skills/list} returns the entries with caching hints and no
        cursor; C{skills/get} the entry of one C{SKILL.md} URI, and
        C{-32602} for any other URI.
        """
        result = self.modern("skills/list", {})["result"]
        self.assertEqual(result["resultType"], "complete")
        self.assertEqual((result["ttlMs"], result["cacheScope"]), (60000, "private"))
        self.assertNotIn("nextCursor", result)
        self.assertEqual([s["uri"] for s in result["skills"]],
                         ["skill://acme/billing/refunds/SKILL.md", "skill://release-notes/SKILL.md"])
        self.assertEqual(len(result["skills"]), len(CONFORMANCE_SKILLS))
        got = self.modern("skills/get", {"uri": "skill://release-notes/SKILL.md"})["result"]
        self.assertEqual(got["skill"], result["skills"][1])
        self.assertEqual(got["skill"]["frontmatter"]["metadata"],
                         {"version": "1.2", "audience": ["operators", "developers"]})
        self.assertIn("ttlMs", got)
        self.assertNotIn("nextCursor", got)
        for params in ({"uri": "skill://release-notes"}, {"uri": "skill://nope/SKILL.md"},
                       {"uri": 5}, {}):
            error = self.modern("skills/get", params)["error"]
            self.assertEqual(error["code"], -32602, params)
        self.assertEqual(self.modern("skills/list", {"cursor": "bogus"})["error"]["code"], -32602)

    def test_readsMatchTheEntry(self) -> None:
        """
        Every file an entry lists reads back with the digest and size the
        entry gives; C{SKILL.md} is listed as a resource named and
        described from its front matter.
        """
        for entry in self.modern("skills/list", {})["result"]["skills"]:
            for resource in entry["resources"]:
                uri = resource["uri"]
                [content] = self.modern("resources/read", {"uri": uri}, name=uri)["result"]["contents"]
                data = content["text"].encode("utf-8")
                self.assertEqual(len(data), resource["size"])
                self.assertEqual("sha256:" + hashlib.sha256(data).hexdigest(), resource["digest"])
        listed = {r["uri"]: r for r in self.modern("resources/list", {})["result"]["resources"]}
        self.assertEqual(listed["skill://release-notes/SKILL.md"]["name"], "release-notes")
        self.assertEqual(listed["skill://release-notes/SKILL.md"]["mimeType"], "text/markdown")
        self.assertNotIn("skill://release-notes/references/STYLE.md", listed)

    def test_directoryRead(self) -> None:
        """
        C{resources/directory/read} lists a directory's children; a file or
        an unknown URI is C{-32602}.
        """
        result = self.modern("resources/directory/read", {"uri": "skill://release-notes/templates"})
        self.assertEqual(result["result"]["resources"], [
            {"uri": "skill://release-notes/templates/major", "name": "major",
             "mimeType": "inode/directory"},
            {"uri": "skill://release-notes/templates/minor.md", "name": "minor.md",
             "mimeType": "text/markdown", "size": 26},
        ])
        for params in ({"uri": "skill://release-notes/SKILL.md"}, {"uri": "skill://nope"}, {},
                       {"uri": "skill://release-notes", "cursor": "bogus"}):
            error = self.modern("resources/directory/read", params)["error"]
            self.assertEqual(error["code"], -32602, params)

    def test_handshakeEras(self) -> None:
        """
        Before 2026-07-28 the extension is neither declared nor served (its
        methods are unknown), and the skill files are ordinary resources.
        """
        _, body = self.h.post(self.h.call(1, "initialize", {"protocolVersion": "2025-11-25"}))
        self.assertNotIn("extensions", json.loads(body)["result"]["capabilities"])
        sid = self.h.initialize()
        for method in ("skills/list", "skills/get", "resources/directory/read"):
            status, message = self.h.json(self.h.call(1, method, {"uri": "skill://release-notes"}),
                                          {"Mcp-Session-Id": sid})
            self.assertEqual(message["error"]["code"], -32601, method)
        status, message = self.h.json(
            self.h.call(1, "resources/read", {"uri": "skill://release-notes/references/STYLE.md"}),
            {"Mcp-Session-Id": sid})
        self.assertEqual(message["result"]["contents"][0]["mimeType"], "text/markdown")

    def test_noSkillsNoExtension(self) -> None:
        """
        Without a pack offering skills the extension is not declared and
        its methods are unknown.
        """
        h = Harness(self)
        response, body = h.post(h.call(1, "server/discover", {"_meta": MODERN_META}),
                                h.modernHeaders("server/discover"))
        self.assertNotIn("extensions", json.loads(body)["result"]["capabilities"])
        response, body = h.post(h.call(1, "skills/list", {"_meta": MODERN_META}),
                                h.modernHeaders("skills/list"))
        self.assertEqual(json.loads(body)["error"]["code"], -32601)
