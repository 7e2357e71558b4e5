"""
The official MCP conformance suite (C{@modelcontextprotocol/conformance},
from the npm registry, installed into C{tests/conformance} by the test
command) against a real C{twistd -n mcpsvc} process.

Two versions are pinned in C{tests/conformance/package.json}: 0.1.16 (the
suite's npm C{latest}, all its server scenarios) and 0.2.0-alpha.12 (as
C{conformance-next}), run with C{--requirements 2025-11-25} and
C{--requirements 2026-07-28}, and with C{--suite all} (every server
scenario, pending and extension ones included). Each run saves every
check (C{-o}); a check that does not pass (failed, skipped or warning) is
not passing: a skipped check is usually a feature the server lacks, and
the suite's own summary does not count it. Checks known not to pass are
listed, with the reason, in C{tests/conformance/expected-failures.json},
per run, as C{scenario/check-id} (or C{scenario/*}: every check of the
scenario): one not listed fails the test, and so does a listed one that
passes (the list must stay honest).

The suite's fixture tools, resources, prompts and skills (the skills
extension's scenarios, C{sep-2640-skills-*}, which the suite runs on the
2026-07-28 wire) come from the test-only C{conformance} pack, enabled only
here. Authentication is off for this run
(C{AUTH_MODE=none}): the server scenarios speak MCP without OAuth.
"""

from __future__ import annotations

import glob
import json
import os
import re
import subprocess
from typing import Any, Dict, List, Mapping, Tuple

from twisted.trial.unittest import SynchronousTestCase

from mcpsvc.testing.redis import freePort
from tests.process import SECRET, McpsvcProcess

HERE = os.path.dirname(os.path.abspath(__file__))
SUITE = os.path.join(HERE, "conformance")
NODE = os.path.join(SUITE, "node_modules", "node", "bin", "node")
CLI = os.path.join(SUITE, "node_modules", "@modelcontextprotocol", "conformance", "dist", "index.js")
NEXT_CLI = os.path.join(SUITE, "node_modules", "conformance-next", "dist", "index.js")
EXPECTED_FAILURES = os.path.join(SUITE, "expected-failures.json")

_SCENARIO = re.compile(r"^([✓✗]) ([A-Za-z0-9_.:-]+): (\d+) passed, (\d+) failed", re.M)
#: The result directory of a scenario: C{server-<scenario>-<timestamp>}.
_RESULT_DIR = re.compile(r"^server-(.+)-\d{4}-\d{2}-\d{2}T\d{2}-\d{2}-\d{2}-\d{3}Z$")
#: The statuses of a passing check.
PASSING = frozenset({"SUCCESS", "INFO"})


def parseSummary(output: str) -> Tuple[Dict[str, bool], Tuple[int, int]]:
    """
    The scenarios of a run's C{=== SUMMARY ===} (name to passed) and its
    total passed and failed checks.
    """
    summary = output[output.rfind("=== SUMMARY ===") :]
    total = re.search(r"Total: (\d+) passed, (\d+) failed", summary)
    if total is None:
        raise AssertionError("no summary in the suite's output:\n" + output[-3000:])
    scenarios = {m.group(2): m.group(1) == "✓" for m in _SCENARIO.finditer(summary)}
    return scenarios, (int(total.group(1)), int(total.group(2)))


def readResults(outputDir: str) -> Dict[str, List[Dict[str, Any]]]:
    """
    The checks of every scenario of a run saved with C{-o outputDir}, by
    scenario name.
    """
    results: Dict[str, List[Dict[str, Any]]] = {}
    for path in glob.glob(os.path.join(outputDir, "*", "checks.json")):
        match = _RESULT_DIR.match(os.path.basename(os.path.dirname(path)))
        if match is None:
            raise AssertionError(f"unexpected result directory: {path}")
        with open(path, encoding="utf-8") as f:
            results.setdefault(match.group(1), []).extend(json.load(f))
    return results


def notPassing(results: Mapping[str, List[Dict[str, Any]]]) -> Dict[str, str]:
    """
    Every check that did not pass, as C{scenario/check-id} to its status
    and message.
    """
    out = {}
    for scenario, checks in results.items():
        for check in checks:
            if check.get("status") not in PASSING:
                message = (check.get("errorMessage") or "")[:300]
                out[f"{scenario}/{check.get('id')}"] = f"{check.get('status')}: {message}"
    return out


def compareChecks(
    found: Mapping[str, str], expected: Mapping[str, str]
) -> Tuple[Dict[str, str], List[str]]:
    """
    The checks not passing without being listed (C{scenario/check-id}, or
    C{scenario/*} for all of a scenario), and the listed entries that match
    no such check (passing now, or not run).
    """
    def listed(key: str) -> bool:
        return key in expected or key.split("/", 1)[0] + "/*" in expected

    unexpected = {key: why for key, why in found.items() if not listed(key)}
    stale = sorted(
        entry for entry in expected
        if not any(key == entry or (entry.endswith("/*") and key.startswith(entry[:-1]))
                   for key in found)
    )
    return unexpected, stale


class SummaryParsingTests(SynchronousTestCase):
    """
    The comparison the suite runs rest on.
    """

    OUTPUT = (
        "=== Running scenario: x ===\n✗ not-in-summary: 0 passed, 1 failed\n"
        "=== SUMMARY ===\n✓ ping: 2 passed, 0 failed\n"
        "✗ tasks-lifecycle: 1 passed, 8 failed\n✗ caching: 1 passed, 1 failed\n\n"
        "Total: 4 passed, 9 failed\n"
    )

    def test_parse(self) -> None:
        scenarios, total = parseSummary(self.OUTPUT)
        self.assertEqual(
            scenarios, {"ping": True, "tasks-lifecycle": False, "caching": False}
        )
        self.assertEqual(total, (4, 9))

    def test_noSummary(self) -> None:
        self.assertRaises(AssertionError, parseSummary, "crashed")

    def test_checks(self) -> None:
        """
        Checks are read from the saved results; a skipped check is not
        passing; a check not passing must be listed by id or by its
        scenario's C{/*}; an entry matching nothing is stale.
        """
        outputDir = self.mktemp()
        for name, checks in {
            "server-ping-2026-12-07T00-10-38-598Z": [{"id": "ping", "status": "SUCCESS"}],
            "server-tasks-x-2026-12-07T00-10-38-598Z": [
                {"id": "a", "status": "SKIPPED", "errorMessage": "not here"},
                {"id": "b", "status": "INFO"}],
            "server-sep-9-y-2026-12-07T00-10-38-598Z": [
                {"id": "c", "status": "SKIPPED"}, {"id": "d", "status": "FAILURE"}],
            "server-z-2026-12-07T00-10-38-598Z": [{"id": "e", "status": "WARNING"}],
        }.items():
            os.makedirs(os.path.join(outputDir, name))
            with open(os.path.join(outputDir, name, "checks.json"), "w") as f:
                json.dump(checks, f)
        results = readResults(outputDir)
        self.assertEqual(sorted(results), ["ping", "sep-9-y", "tasks-x", "z"])
        found = notPassing(results)
        self.assertEqual(sorted(found), ["sep-9-y/c", "sep-9-y/d", "tasks-x/a", "z/e"])
        self.assertEqual(found["tasks-x/a"], "SKIPPED: not here")
        unexpected, stale = compareChecks(
            found, {"sep-9-y/*": "why", "tasks-x/a": "why", "ping/ping": "why", "gone/*": "why"})
        self.assertEqual(list(unexpected), ["z/e"])
        self.assertEqual(stale, ["gone/*", "ping/ping"])

    def test_expectedFileNamesReasons(self) -> None:
        """
        Every listed check has a reason.
        """
        with open(EXPECTED_FAILURES, encoding="utf-8") as f:
            listed = json.load(f)
        for run in ("2025-11-25", "2026-07-28", "all"):
            for name, reason in listed[run].items():
                self.assertIn("/", name)
                self.assertTrue(isinstance(reason, str) and len(reason) > 20, name)


class ConformanceSuiteTests(SynchronousTestCase):
    def _server(self) -> Tuple[str, McpsvcProcess]:
        self.assertTrue(
            os.path.exists(NODE) and os.path.exists(CLI) and os.path.exists(NEXT_CLI),
            "the conformance suite is not installed: run scripts/test.sh "
            "(it runs npm ci in tests/conformance)",
        )
        workdir = os.path.abspath(self.mktemp())
        os.makedirs(workdir)
        port = freePort()
        process = McpsvcProcess(
            workdir,
            env={
                "JWT_SECRET": SECRET,
                "AUTH_MODE": "none",
                "TOOL_PACKS": "core,conformance",
                "STORE": "memory",
                "SERVER_URL": f"http://localhost:{port}",
            },
            listen=[f"tcp:{port}:interface=127.0.0.1"],
        )
        self.addCleanup(process.kill)
        process.start()
        return workdir, process

    def _runSaved(
        self, cli: str, *args: str
    ) -> Tuple[str, subprocess.CompletedProcess, Dict[str, List[Dict[str, Any]]]]:
        """
        Run the suite with its checks saved; the output, the process and
        the checks by scenario.
        """
        workdir, process = self._server()
        assert process.port is not None
        outputDir = os.path.join(workdir, "results")
        result = subprocess.run(
            [NODE, cli, "server", "--url", f"http://localhost:{process.port}/mcp",
             "-o", outputDir, *args],
            cwd=workdir, capture_output=True, text=True, timeout=600,
        )
        self.assertNotIn("Traceback", process.output)
        return result.stdout + result.stderr, result, readResults(outputDir)

    def test_serverScenarios(self) -> None:
        """
        Every server scenario of 0.1.16 (C{--suite all}: active and
        pending) passes, every check of it: none failed, skipped or
        warning.
        """
        output, result, results = self._runSaved(CLI, "--suite", "all")
        scenarios, (passed, failed) = parseSummary(output)
        summary = output[output.rfind("=== SUMMARY ===") :]
        self.assertEqual(failed, 0, summary)
        self.assertGreaterEqual(passed, 40)
        self.assertEqual(notPassing(results), {}, summary)
        self.assertEqual(sorted(results), sorted(scenarios), "a scenario saved no checks")
        self.assertEqual(result.returncode, 0)

    def _checked(self, run: str, minimum: int, *args: str) -> None:
        """
        Run conformance-next with C{args}; every check passes but those
        listed under C{run} in C{expected-failures.json}, which do not.
        """
        with open(EXPECTED_FAILURES, encoding="utf-8") as f:
            expected = json.load(f)[run]
        output, result, results = self._runSaved(NEXT_CLI, *args)
        summary = output[output.rfind("=== SUMMARY ===") :]
        scenarios, (passed, failed) = parseSummary(output)
        self.assertGreaterEqual(len(scenarios), minimum, summary)
        self.assertEqual(sorted(results), sorted(scenarios), "a scenario saved no checks")
        unexpected, stale = compareChecks(notPassing(results), expected)
        self.assertEqual(
            unexpected, {}, "not passing (failed, skipped or warning), not in "
            "expected-failures.json:\n" + json.dumps(unexpected, indent=1) + "\n" + summary,
        )
        self.assertEqual(
            stale, [], "listed in expected-failures.json but passing (remove them):\n" + summary
        )
        # The suite's own verdict (failures, and warnings with --suite).
        self.assertEqual(result.returncode, 0, summary)

    def _requirements(self, revision: str, minimum: int) -> None:
        self._checked(revision, minimum, "--requirements", revision)

    def test_requirements_2025_11_25(self) -> None:
        """
        0.2.0-alpha.12, the scenarios the 2025-11-25 revision requires.
        """
        self._requirements("2025-11-25", 30)

    def test_requirements_2026_07_28(self) -> None:
        """
        0.2.0-alpha.12, the scenarios the 2026-07-28 revision requires
        (MRTR, custom headers, JSON Schema 2020-12 included).
        """
        self._requirements("2026-07-28", 45)

    def test_allScenarios(self) -> None:
        """
        0.2.0-alpha.12, every server scenario (C{--suite all}: pending,
        draft and extension ones included).
        """
        self._checked("all", 60, "--suite", "all")
