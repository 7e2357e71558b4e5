"""
The official MCP conformance suite (C{@modelcontextprotocol/conformance},
from the npm registry, installed into C{tests/conformance} by the test
command) against a real C{twistd -n mcpsvc} process.

Two versions are pinned in C{tests/conformance/package.json}: 0.1.16 (the
suite's npm C{latest}, its C{active} server suite) and 0.2.0-alpha.12 (as
C{conformance-next}), run with C{--requirements 2025-11-25} and
C{--requirements 2026-07-28}. Scenarios known to fail are listed, with the
reason, in C{tests/conformance/expected-failures.json}: a failure not
listed fails the test, and so does a listed scenario that passes (the list
must stay honest).

The suite's fixture tools, resources and prompts come from the test-only
C{conformance} pack, enabled only here. Authentication is off for this run
(C{AUTH_MODE=none}): the server scenarios speak MCP without OAuth.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from typing import Dict, List, Tuple

from twisted.trial.unittest import SynchronousTestCase

from mcpsvc.testing.redis import freePort
from tests.process import SECRET, McpsvcProcess

HERE = os.path.dirname(os.path.abspath(__file__))
SUITE = os.path.join(HERE, "conformance")
NODE = os.path.join(SUITE, "node_modules", "node", "bin", "node")
CLI = os.path.join(SUITE, "node_modules", "@modelcontextprotocol", "conformance", "dist", "index.js")
NEXT_CLI = os.path.join(SUITE, "node_modules", "conformance-next", "dist", "index.js")
EXPECTED_FAILURES = os.path.join(SUITE, "expected-failures.json")

_SCENARIO = re.compile(r"^([✓✗]) ([A-Za-z0-9_.:-]+): (\d+) passed, (\d+) failed$", re.M)


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


def compareWithExpected(
    scenarios: Dict[str, bool], expected: Dict[str, str]
) -> Tuple[List[str], List[str]]:
    """
    The scenarios that failed without being listed, and the listed ones
    that did not fail (passed, or did not run).
    """
    unexpected = sorted(n for n, ok in scenarios.items() if not ok and n not in expected)
    stale = sorted(n for n in expected if scenarios.get(n, True))
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

    def test_unexpectedAndStale(self) -> None:
        scenarios, _ = parseSummary(self.OUTPUT)
        unexpected, stale = compareWithExpected(
            scenarios, {"tasks-lifecycle": "why", "ping": "why", "gone": "why"}
        )
        self.assertEqual(unexpected, ["caching"])
        self.assertEqual(stale, ["gone", "ping"])

    def test_expectedFileNamesReasons(self) -> None:
        """
        Every listed scenario has a reason.
        """
        with open(EXPECTED_FAILURES, encoding="utf-8") as f:
            listed = json.load(f)
        for revision in ("2025-11-25", "2026-07-28"):
            for name, reason in listed[revision].items():
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

    def _runSuite(self, cli: str, *args: str) -> Tuple[str, subprocess.CompletedProcess]:
        workdir, process = self._server()
        assert process.port is not None
        result = subprocess.run(
            [NODE, cli, "server", "--url", f"http://localhost:{process.port}/mcp", *args],
            cwd=workdir, capture_output=True, text=True, timeout=600,
        )
        self.assertNotIn("Traceback", process.output)
        return result.stdout + result.stderr, result

    def test_serverScenarios(self) -> None:
        """
        Every active server scenario of 0.1.16 passes, with no failed check.
        """
        output, result = self._runSuite(CLI, "--suite", "active")
        scenarios, (passed, failed) = parseSummary(output)
        self.assertEqual(failed, 0, output[output.rfind("=== SUMMARY ===") :])
        self.assertGreaterEqual(passed, 30)
        self.assertEqual(result.returncode, 0)

    def _requirements(self, revision: str, minimum: int) -> None:
        with open(EXPECTED_FAILURES, encoding="utf-8") as f:
            expected = json.load(f)[revision]
        output, result = self._runSuite(NEXT_CLI, "--requirements", revision)
        summary = output[output.rfind("=== SUMMARY ===") :]
        scenarios, (passed, failed) = parseSummary(output)
        self.assertGreaterEqual(len(scenarios), minimum, summary)
        unexpected, stale = compareWithExpected(scenarios, expected)
        self.assertEqual(unexpected, [], "failing, not in expected-failures.json:\n" + summary)
        self.assertEqual(
            stale, [], "listed in expected-failures.json but passing (remove them):\n" + summary
        )
        # The suite's own verdict covers the scored scenarios.
        self.assertEqual(result.returncode, 0, summary)

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
