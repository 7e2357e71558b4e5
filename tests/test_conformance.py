"""
The official MCP conformance suite (C{@modelcontextprotocol/conformance},
from the npm registry, installed into C{tests/conformance} by the test
command) against a real C{twistd -n mcpsvc} process.

The suite's fixture tools, resources and prompts come from the test-only
C{conformance} pack, enabled only here. Authentication is off for this run
(C{AUTH_MODE=none}): the server scenarios speak MCP without OAuth.
"""

from __future__ import annotations

import os
import re
import subprocess

from twisted.trial.unittest import SynchronousTestCase

from mcpsvc.testing.redis import freePort
from tests.process import SECRET, McpsvcProcess

HERE = os.path.dirname(os.path.abspath(__file__))
SUITE = os.path.join(HERE, "conformance")
NODE = os.path.join(SUITE, "node_modules", "node", "bin", "node")
CLI = os.path.join(SUITE, "node_modules", "@modelcontextprotocol", "conformance", "dist", "index.js")


class ConformanceSuiteTests(SynchronousTestCase):
    def test_serverScenarios(self) -> None:
        """
        Every active server scenario passes, with no failed check.
        """
        self.assertTrue(
            os.path.exists(NODE) and os.path.exists(CLI),
            "the conformance suite is not installed: run scripts/test.sh "
            "(it runs npm install in tests/conformance)",
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
        result = subprocess.run(
            [NODE, CLI, "server", "--url", f"http://localhost:{port}/mcp", "--suite", "active"],
            cwd=workdir, capture_output=True, text=True, timeout=300,
        )
        output = result.stdout + result.stderr
        summary = output[output.rfind("=== SUMMARY ===") :]
        total = re.search(r"Total: (\d+) passed, (\d+) failed", summary)
        self.assertIsNotNone(total, output[-3000:])
        assert total is not None
        passed, failed = int(total.group(1)), int(total.group(2))
        self.assertEqual(failed, 0, summary)
        self.assertGreaterEqual(passed, 30, summary)
        self.assertEqual(result.returncode, 0, summary)
        self.assertNotIn("Traceback", process.output)
