"""
The documentation agrees with the code: the README and C{docs/*.md}.

  - the configuration table of C{docs/configuration.md} lists every
    variable of L{mcpsvc.config.VARIABLES}, with its default, and nothing
    else; its option table lists every option of C{twistd mcpsvc};
  - every C{mcpsvc <command>} and C{twistd mcpsvc --option} written in a
    code span or block exists, with its options;
  - every relative link points to an existing file (and heading);
  - the worked tool plugin example loads through the real plugin
    discovery and works through the registry;
  - the README opens with the two commands.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import sys
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.plugin import IPlugin, pluginPackagePaths
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = os.path.join(ROOT, "docs")
README = os.path.join(ROOT, "README.md")
CONTRIBUTING = os.path.join(ROOT, "CONTRIBUTING.md")
CONFIGURATION = os.path.join(DOCS, "configuration.md")
TOOL_PLUGINS = os.path.join(DOCS, "tool-plugins.md")
EXAMPLE = os.path.join(DOCS, "examples", "mcpsvc", "plugins", "wordcount.py")


def documents() -> List[str]:
    """
    The README, every Markdown file in C{docs/}, and C{CONTRIBUTING.md}.
    """
    found = [README]
    for name in sorted(os.listdir(DOCS)):
        if name.endswith(".md"):
            found.append(os.path.join(DOCS, name))
    found.append(CONTRIBUTING)
    return found


def read(path: str) -> str:
    with open(path, encoding="utf-8") as f:
        return f.read()


def relative(path: str) -> str:
    return os.path.relpath(path, ROOT)


# --------------------------------------------------------------------------
# Markdown helpers


_FENCE = re.compile(r"^```([^\n`]*)\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)
_INLINE = re.compile(r"`([^`\n]+)`")


def fencedBlocks(text: str) -> List[Tuple[str, str]]:
    """
    The fenced code blocks of C{text}: (info string, body).
    """
    return [(m.group(1).strip(), m.group(2)) for m in _FENCE.finditer(text)]


def withoutFences(text: str) -> str:
    return _FENCE.sub("", text)


def codeLines(text: str) -> Iterator[str]:
    """
    Every line of code in C{text}: the lines of fenced blocks (except JSON
    and Python, which are not command lines), then every inline code span
    (with backslash continuations joined).
    """
    for info, body in fencedBlocks(text):
        if info in ("json", "python"):
            continue
        for line in body.replace("\\\n", " ").splitlines():
            yield line
    for match in _INLINE.finditer(withoutFences(text)):
        yield match.group(1)


def tables(text: str) -> List[Tuple[List[str], List[List[str]]]]:
    """
    The pipe tables of C{text}: (header cells, rows of cells).
    """
    found = []
    lines = withoutFences(text).splitlines()
    i = 0
    while i < len(lines):
        if (
            lines[i].startswith("|")
            and i + 1 < len(lines)
            and re.fullmatch(r"\|(\s*:?-+:?\s*\|)+\s*", lines[i + 1])
        ):
            header = splitRow(lines[i])
            rows = []
            i += 2
            while i < len(lines) and lines[i].startswith("|"):
                rows.append(splitRow(lines[i]))
                i += 1
            found.append((header, rows))
        else:
            i += 1
    return found


def splitRow(line: str) -> List[str]:
    cells = re.split(r"(?<!\\)\|", line.strip())
    return [c.strip() for c in cells[1:-1]]


def slug(heading: str) -> str:
    """
    The anchor GitHub gives a heading.
    """
    text = heading.strip().lower().replace("`", "")
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(text: str) -> List[str]:
    found = []
    counts: Dict[str, int] = {}
    for match in re.finditer(r"^#{1,6}\s+(.*?)\s*#*\s*$", withoutFences(text), re.MULTILINE):
        base = slug(match.group(1))
        n = counts.get(base, 0)
        counts[base] = n + 1
        found.append(base if n == 0 else f"{base}-{n}")
    return found


# --------------------------------------------------------------------------
# (a) the configuration table


def configurationRows() -> List[List[str]]:
    """
    The rows of every C{| variable | default | meaning |} table of
    C{docs/configuration.md}.
    """
    rows = []
    for header, body in tables(read(CONFIGURATION)):
        if [h.lower() for h in header] == ["variable", "default", "meaning"]:
            rows.extend(body)
    return rows


def parseDefault(cell: str) -> Optional[str]:
    if cell == "*(unset)*":
        return None
    if cell == "*(empty)*":
        return ""
    match = re.fullmatch(r"`([^`]*)`", cell)
    if match is None:
        raise ValueError(f"default cell {cell!r} is not `value`, *(unset)* or *(empty)*")
    return match.group(1)


class ConfigurationTableTests(SynchronousTestCase):
    def test_everyVariableDocumented(self) -> None:
        """
        Every variable the code reads has a row, and every row names a
        variable the code reads, once.
        """
        from mcpsvc.config import VARIABLES

        names = []
        for row in configurationRows():
            self.assertEqual(len(row), 3, row)
            match = re.fullmatch(r"`([A-Z][A-Z0-9_]*)`", row[0])
            self.assertIsNotNone(match, f"bad variable cell {row[0]!r}")
            assert match is not None
            names.append(match.group(1))
            self.assertTrue(row[2], f"{row[0]} has no meaning")
        self.assertEqual(len(names), len(set(names)), "a variable is listed twice")
        self.assertEqual(
            sorted(set(VARIABLES) - set(names)), [], "variables missing from docs/configuration.md"
        )
        self.assertEqual(
            sorted(set(names) - set(VARIABLES)), [], "documented variables the code does not read"
        )

    def test_defaults(self) -> None:
        """
        Every documented default is the code's.
        """
        from mcpsvc.config import VARIABLES

        for row in configurationRows():
            name = row[0].strip("`")
            self.assertEqual(parseDefault(row[1]), VARIABLES[name][0], f"default of {name}")

    def test_uppercaseNamesAreReal(self) -> None:
        """
        A variable-like name in a code span of the configuration page is a
        real variable (or a known non-variable).
        """
        from mcpsvc.config import VARIABLES

        others = {"NODE_ENV", "COUNT", "SECONDS"}
        text = read(CONFIGURATION)
        for match in _INLINE.finditer(withoutFences(text)):
            for word in re.findall(r"\b[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+\b", match.group(1)):
                self.assertTrue(word in VARIABLES or word in others, f"unknown variable {word}")

    def test_everyOptionDocumented(self) -> None:
        """
        The option table lists every option of C{twistd mcpsvc}, and each
        option that overrides a variable names it.
        """
        from mcpsvc.tap import OPTION_VARIABLES

        documented: Dict[str, str] = {}
        for header, body in tables(read(CONFIGURATION)):
            if [h.lower() for h in header][:2] != ["option", "variable"]:
                continue
            for row in body:
                for option in re.findall(r"`(--[a-z-]+)`", row[0]):
                    documented[option[2:]] = row[1].strip("`")
        expected = {name.rstrip("=") for name in longOptions(tapOptions())} - {"version"}
        self.assertEqual(sorted(expected - set(documented)), [], "options missing from the table")
        self.assertEqual(sorted(set(documented) - expected), [], "documented options that do not exist")
        for option, variable in OPTION_VARIABLES.items():
            self.assertEqual(documented[option], variable, f"--{option}")


# --------------------------------------------------------------------------
# (b) commands and options


def tapOptions() -> usage.Options:
    from mcpsvc.tap import Options

    return Options()


def longOptions(options: usage.Options) -> List[str]:
    return [name.rstrip("=") for name in options.longOpt]


def optionNames(options: usage.Options) -> List[str]:
    names = longOptions(options)
    names.extend(options.shortOpt.replace(":", ""))
    return names


def subCommands(options: usage.Options) -> Dict[str, Any]:
    return {entry[0]: entry[2] for entry in (getattr(options, "subCommands", None) or [])}


_STOP = re.compile(r"\||&&|;|,|\)|\s(?:#|>|<|2>)")


def commandWords(line: str, start: int) -> List[str]:
    """
    The words of the command that starts at C{start} in C{line}, up to a
    pipe, a redirection, a comment or the end of the line.
    """
    rest = line[start:]
    stop = _STOP.search(rest)
    if stop is not None:
        rest = rest[: stop.start()]
    try:
        return shlex.split(rest)
    except ValueError:
        return rest.split()


#: Words that follow "mcpsvc" in its log lines, not commands.
_LOG_WORDS = frozenset({"listening", "stopped"})


def mcpsvcCommands(text: str) -> Iterator[Tuple[str, List[str]]]:
    """
    Every C{mcpsvc ...} admin command in the code of C{text}: (the line,
    the words after C{mcpsvc}).
    """
    for line in codeLines(text):
        # At a command position: the start of the line or span, after a
        # shell operator, "$(" or "sudo", or opening a comment.
        for match in re.finditer(
            r"(?:^\s*(?:\$\s+)?|[(;|&]\s*|#\s+|sudo\s+)(?:\S*/)?mcpsvc (?=[a-z-])", line
        ):
            words = commandWords(line, match.end())
            if words and words[0] in _LOG_WORDS:
                continue  # a log line quoted ("mcpsvc listening on ...")
            yield line, words


def twistdCommands(text: str) -> Iterator[Tuple[str, List[str], List[str]]]:
    """
    Every C{twistd ... mcpsvc ...} (and C{scripts/serve.sh ...}) in the
    code of C{text}: (the line, twistd's words, mcpsvc's words).
    """
    for line in codeLines(text):
        for match in re.finditer(r"(?:^|\s)(?:\S*/)?twistd(?=\s)", line):
            words = commandWords(line, match.end())
            if "mcpsvc" not in words:
                continue
            at = words.index("mcpsvc")
            yield line, words[:at], words[at + 1 :]
        for match in re.finditer(r"(?:^|\s)scripts/serve\.sh(?=\s|$)", line):
            yield line, [], commandWords(line, match.end())


def checkOptions(testCase: SynchronousTestCase, options: usage.Options, words: Sequence[str],
                 where: str) -> None:
    names = optionNames(options)
    for word in words:
        if not word.startswith("-") or word in ("-", "--"):
            continue
        name = word.lstrip("-").split("=", 1)[0]
        if not word.startswith("--"):
            name = name[:1]
        testCase.assertIn(name, names, f"{where}: unknown option {word}")


class CommandTests(SynchronousTestCase):
    def test_adminCommandsExist(self) -> None:
        """
        Every C{mcpsvc COMMAND [SUBCOMMAND] [--options]} written in the
        documentation is a command of the C{mcpsvc} CLI, with options it
        has.
        """
        from mcpsvc.cli import Options

        seen = 0
        for path in documents():
            for line, words in mcpsvcCommands(read(path)):
                where = f"{relative(path)}: {line.strip()}"
                options: usage.Options = Options()
                commands = subCommands(options)
                first = words[0] if words else ""
                if first.startswith("-"):
                    checkOptions(self, options, words, where)
                    continue
                self.assertIn(first, commands, f"{where}: no command {first!r}")
                options = commands[first]()
                rest = words[1:]
                nested = subCommands(options)
                if nested:
                    if rest and not rest[0].startswith("-") and rest[0].isidentifier():
                        self.assertIn(rest[0], nested, f"{where}: no command {first} {rest[0]}")
                        options = nested[rest[0]]()
                        rest = rest[1:]
                checkOptions(self, options, rest, where)
                seen += 1
        self.assertGreater(seen, 20)

    def test_everyCommandDocumented(self) -> None:
        """
        Every command of the C{mcpsvc} CLI is mentioned somewhere.
        """
        from mcpsvc.cli import Options

        mentioned = set()
        for path in documents():
            for _, words in mcpsvcCommands(read(path)):
                if words:
                    mentioned.add(words[0])
        self.assertEqual(sorted(set(subCommands(Options())) - mentioned), [])

    def test_twistdOptionsExist(self) -> None:
        """
        Every option given to C{twistd mcpsvc} (or to C{scripts/serve.sh},
        which passes them on) exists, and so does every twistd option
        before C{mcpsvc}.
        """
        from twisted.scripts.twistd import ServerOptions

        seen = 0
        for path in documents():
            for line, before, after in twistdCommands(read(path)):
                where = f"{relative(path)}: {line.strip()}"
                checkOptions(self, ServerOptions(), before, where)
                checkOptions(self, tapOptions(), after, where)
                seen += 1
        self.assertGreater(seen, 10)

    def test_optionsInProse(self) -> None:
        """
        Every C{--option} named in a code span next to C{twistd mcpsvc}
        in the configuration page exists.
        """
        names = longOptions(tapOptions())
        for option in re.findall(r"`--([a-z][a-z-]*)`", read(CONFIGURATION)):
            if option in ("pidfile", "logfile", "logger", "uid", "gid", "env-file", "help"):
                continue
            self.assertIn(option, names)


# --------------------------------------------------------------------------
# (c) links


_LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")


class LinkTests(SynchronousTestCase):
    def test_relativeLinks(self) -> None:
        """
        Every relative link points to an existing file and, with a
        fragment, to a heading of that file.
        """
        checked = 0
        for path in documents():
            text = read(path)
            for target in _LINK.findall(withoutFences(text)):
                if re.match(r"[a-z][a-z0-9+.-]*:", target):
                    continue
                file, _, fragment = target.partition("#")
                resolved = os.path.normpath(os.path.join(os.path.dirname(path), file)) if file else path
                where = f"{relative(path)}: {target}"
                self.assertTrue(resolved.startswith(ROOT + os.sep), f"{where}: outside the repository")
                self.assertTrue(os.path.exists(resolved), f"{where}: no such file")
                if fragment:
                    self.assertTrue(resolved.endswith(".md"), f"{where}: fragment into a non-Markdown file")
                    self.assertIn(fragment, anchors(read(resolved)), f"{where}: no such heading")
                checked += 1
        self.assertGreater(checked, 30)

    def test_docsLinkedFromReadme(self) -> None:
        """
        The README links every page of C{docs/} and C{CONTRIBUTING.md}.
        """
        linked = {
            os.path.normpath(os.path.join(ROOT, target.partition("#")[0]))
            for target in _LINK.findall(read(README))
        }
        for path in documents()[1:]:
            self.assertIn(path, linked, f"README does not link {relative(path)}")

    def test_nothingOutsideTheRepository(self) -> None:
        """
        No document sends the reader to a file outside the repository (a
        clone has nothing beside it), in a link or in a path written out.
        """
        for path in documents():
            text = read(path)
            for match in re.finditer(r"(?<![\w.])\.\./[\w./-]+", text):
                target = os.path.normpath(os.path.join(os.path.dirname(path), match.group(0)))
                self.assertTrue(target.startswith(ROOT + os.sep),
                                f"{relative(path)}: {match.group(0)} is outside the repository")

    def test_contributorGuides(self) -> None:
        """
        The architecture overview and the contributing guide exist and cover
        what a contributor needs.
        """
        architecture = read(os.path.join(DOCS, "architecture.md"))
        for heading in ("The path of a request", "Stores", "OAuth", "MCP", "Tools",
                        "Where to add a component"):
            self.assertIn(slug(heading), anchors(architecture), heading)
        contributing = read(CONTRIBUTING)
        for heading in ("Set up and run the tests", "House style", "Errors", "Logging and audit",
                        "Tests", "A tool pack", "An HTTP route", "A store method",
                        "A configuration variable"):
            self.assertIn(slug(heading), anchors(contributing), heading)


# --------------------------------------------------------------------------
# (d) the worked tool plugin example


class ToolPluginExampleTests(SynchronousTestCase):
    def setUp(self) -> None:
        """
        Install the example as the documentation says: in a C{mcpsvc/plugins}
        directory (no C{__init__.py}) under a C{sys.path} entry, found by
        L{pluginPackagePaths}, added to the plugin package's path.
        """
        import mcpsvc.plugins

        base = os.path.abspath(self.mktemp())
        directory = os.path.join(base, "mcpsvc", "plugins")
        os.makedirs(directory)
        shutil.copy(EXAMPLE, directory)
        self.patch(sys, "path", sys.path + [base])
        extra = [p for p in pluginPackagePaths("mcpsvc.plugins") if p.startswith(base)]
        self.assertEqual(extra, [directory])
        mcpsvc.plugins.__path__.append(directory)
        self.addCleanup(mcpsvc.plugins.__path__.remove, directory)
        self.addCleanup(sys.modules.pop, "mcpsvc.plugins.wordcount", None)
        self.clock = Clock()

    def registry(self, runInThread: Any = None) -> Any:
        from mcpsvc.config import Config
        from mcpsvc.tools import buildToolRegistry

        if runInThread is None:
            runInThread = lambda f, *a, **kw: succeed(f(*a, **kw))  # noqa: E731
        return buildToolRegistry(
            Config(toolPacks=("core", "textstats")), clock=self.clock, runInThread=runInThread
        )

    def call(self, registry: Any, arguments: Dict[str, Any], progress: Optional[list] = None) -> Any:
        from mcpsvc.tools.interfaces import ToolContext

        def record(value: float, total: Optional[float] = None, message: Optional[str] = None) -> None:
            if progress is not None:
                progress.append((value, total, message))

        return registry.callTool(
            registry.get("word_count"),
            arguments,
            ToolContext(clock=self.clock, subject="s", clientID="c", progress=record),
        )

    def test_discovered(self) -> None:
        """
        Discovery finds the pack; it provides the plugin interfaces, and is
        enabled only when listed in TOOL_PACKS.
        """
        from mcpsvc.config import Config
        from mcpsvc.tools import IToolProvider, buildToolRegistry, discoverProviders

        providers = {p.packName: p for p in discoverProviders()}
        self.assertIn("textstats", providers)
        verifyObject(IToolProvider, providers["textstats"])
        self.assertTrue(IPlugin.providedBy(providers["textstats"]))
        self.assertNotIn("word_count", buildToolRegistry(Config(), clock=self.clock).names)
        self.assertIn("word_count", self.registry().names)

    def test_listed(self) -> None:
        """
        C{tools/list} describes the tool with both schemas and a timeout.
        """
        registry = self.registry()
        tools, _ = registry.listTools()
        descriptor = next(t for t in tools if t["name"] == "word_count")
        self.assertEqual(descriptor["inputSchema"]["required"], ["text"])
        self.assertIn("outputSchema", descriptor)
        self.assertEqual(registry.get("word_count").timeout, 10.0)

    def test_call(self) -> None:
        """
        A call returns structured content and a text block, and reports
        progress once per chunk.
        """
        progress: list = []
        text = "\n".join(["the cat and the hat"] * 1200)
        result = self.successResultOf(self.call(self.registry(), {"text": text, "top": 2}, progress))
        self.assertNotIn("isError", result)
        self.assertEqual(
            result["structuredContent"],
            {
                "words": 6000,
                "distinctWords": 4,
                "characters": len(text),
                "lines": 1200,
                "top": [{"word": "the", "count": 2400}, {"word": "and", "count": 1200}],
            },
        )
        self.assertEqual(result["content"][0]["type"], "text")
        self.assertEqual(
            progress,
            [(500, 1200, "500 of 1200 lines"), (1000, 1200, "1000 of 1200 lines"),
             (1200, 1200, "1200 of 1200 lines")],
        )

    def test_documentedCall(self) -> None:
        """
        The call shown in docs/tool-plugins.md gives the result shown there.
        """
        result = self.successResultOf(
            self.call(self.registry(), {"text": "the cat and the hat", "top": 1})
        )
        self.assertEqual(
            result["structuredContent"],
            {"words": 5, "distinctWords": 4, "characters": 19, "lines": 1,
             "top": [{"word": "the", "count": 2}]},
        )
        self.assertIn(result["content"][0]["text"].replace('"', '\\"'), read(TOOL_PLUGINS))

    def test_toolError(self) -> None:
        """
        A text without words is an C{isError} result with the tool's message.
        """
        result = self.successResultOf(self.call(self.registry(), {"text": "  \n -- "}))
        self.assertEqual(
            result, {"content": [{"type": "text", "text": "The text contains no words"}], "isError": True}
        )

    def test_invalidArguments(self) -> None:
        """
        Arguments outside the input schema never reach the tool.
        """
        result = self.successResultOf(self.call(self.registry(), {"text": "a", "top": 0}))
        self.assertTrue(result["isError"])
        self.assertEqual(
            result["content"][0]["text"], "Invalid arguments: top: 0 is less than the minimum of 1"
        )

    def test_timeout(self) -> None:
        """
        A chunk still running after the tool's timeout is cancelled, no
        further chunk starts, and the client gets an C{isError} result.
        """
        pending: List[Deferred] = []
        cancelled: List[Deferred] = []

        def runInThread(f: Any, *args: Any, **kwargs: Any) -> Deferred:
            d: Deferred = Deferred(cancelled.append)
            pending.append(d)
            return d

        d = self.call(self.registry(runInThread), {"text": "a\n" * 2000})
        self.assertNoResult(d)
        self.clock.advance(9.9)
        self.assertNoResult(d)
        self.clock.advance(0.1)
        result = self.successResultOf(d)
        self.assertEqual(
            result,
            {"content": [{"type": "text", "text": "The tool word_count timed out after 10 seconds"}],
             "isError": True},
        )
        self.assertEqual(len(pending), 1)
        self.assertEqual(cancelled, pending)

    def test_asksInEveryEra(self) -> None:
        """
        C{count_word} asks its question once in the code: as a multi
        round-trip request for a 2026-07-28 client, on the response stream
        for a 2025-06-18 one; both get the same answer.
        """
        from mcpsvc.mcp.dispatcher import Dispatcher, RequestContext
        from mcpsvc.mcp.protocol import Request, Response
        from mcpsvc.principal import Principal

        dispatcher = Dispatcher(self.registry(), clock=self.clock, stateKey=b"k" * 32)
        principal = Principal(subject="s", clientID="c", scopes=frozenset({"mcp:tools", "mcp:read"}))
        arguments = {"text": "the cat and the hat"}
        answer = {"action": "accept", "content": {"word": "The"}}

        def handle(params: Dict[str, Any], context: Any) -> Any:
            d = Deferred.fromCoroutine(dispatcher.handleRequest(
                Request(id=1, method="tools/call", params=params), context))
            self.clock.advance(0)
            return d

        modern = RequestContext(principal=principal, protocolVersion="2026-07-28", modern=True,
                                clientCapabilities={"elicitation": {}})
        first = self.successResultOf(handle({"name": "count_word", "arguments": arguments}, modern))
        self.assertEqual(first["resultType"], "input_required")
        self.assertEqual(first["inputRequests"]["word"]["method"], "elicitation/create")
        second = self.successResultOf(handle({
            "name": "count_word", "arguments": arguments, "inputResponses": {"word": answer},
            "requestState": first["requestState"]}, modern))
        self.assertEqual(second["content"], [{"type": "text", "text": "'the' appears 2 times."}])

        sent: List[Dict[str, Any]] = []
        legacy = RequestContext(principal=principal, protocolVersion="2025-06-18", scope="s:1",
                                clientCapabilities={"elicitation": {}}, send=sent.append)
        d = handle({"name": "count_word", "arguments": arguments}, legacy)
        self.assertEqual([m["method"] for m in sent], ["elicitation/create"])
        dispatcher.handleResponse(Response(id=sent[0]["id"], result=answer), legacy)
        self.assertEqual(self.successResultOf(d)["content"], second["content"])

    def test_printedInFull(self) -> None:
        """
        docs/tool-plugins.md shows the example module exactly as it is.
        """
        blocks = [body for info, body in fencedBlocks(read(TOOL_PLUGINS)) if info == "python"]
        self.assertIn(read(EXAMPLE), blocks)


# --------------------------------------------------------------------------
# (e) the README's opening


class ReadmeTests(SynchronousTestCase):
    def test_opensWithTheTwoCommands(self) -> None:
        """
        The README is a title, one sentence, and then the two commands:
        C{scripts/serve.sh} and C{scripts/test.sh}, in the first code block.
        """
        text = read(README)
        lines = text.splitlines()
        self.assertEqual(lines[0], "# mcpsvc")
        fence = text.index("```")
        before = text[:fence]
        self.assertNotIn("##", before)
        paragraphs = [p for p in before.split("\n\n")[1:] if p.strip()]
        self.assertLessEqual(len(paragraphs), 2, "more than the sentence before the commands")
        self.assertEqual(paragraphs[0].count(". "), 0, "the opening is one sentence")
        info, body = fencedBlocks(text)[0]
        self.assertEqual(info, "sh")
        commands = [line.split()[0] for line in body.splitlines() if line.strip()]
        self.assertEqual(commands, ["scripts/serve.sh", "scripts/test.sh"])
        for script in commands:
            self.assertTrue(os.access(os.path.join(ROOT, script), os.X_OK), script)
