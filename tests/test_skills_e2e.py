"""
The skills extension end to end: a real C{twistd -n mcpsvc} process with
C{SKILLS_DIR}, over loopback HTTP in the 2026-07-28 era: the built-in
C{skills} plugin is found and enabled by the variable, the directory is
read in the reactor's thread pool, and what lies outside it (a symbolic
link) is never served.
"""

from __future__ import annotations

import hashlib
import json
import os
import urllib.error
import urllib.request
from typing import Any, Dict, Optional

from twisted.trial.unittest import SynchronousTestCase

from mcpsvc.testing.redis import freePort
from tests.process import SECRET, McpsvcProcess

META = {
    "io.modelcontextprotocol/protocolVersion": "2026-07-28",
    "io.modelcontextprotocol/clientCapabilities": {},
    "io.modelcontextprotocol/clientInfo": {"name": "e2e", "version": "1"},
}


def write(root: str, path: str, data: bytes) -> None:
    full = os.path.join(root, *path.split("/"))
    os.makedirs(os.path.dirname(full), exist_ok=True)
    with open(full, "wb") as f:
        f.write(data)


class SkillsDirEndToEndTests(SynchronousTestCase):
    def setUp(self) -> None:
        workdir = os.path.abspath(self.mktemp())
        self.skills = os.path.join(workdir, "skills")
        outside = os.path.join(workdir, "outside")
        write(self.skills, "ops/deploy/SKILL.md",
              b"---\nname: deploy\ndescription: Deploy the service safely\n"
              b"metadata:\n  owner: ops\n---\n\nRun `scripts/check.sh` first.\n")
        write(self.skills, "ops/deploy/scripts/check.sh", b"#!/bin/sh\nexit 0\n")
        write(outside, "secret.txt", b"do not serve\n")
        os.symlink(os.path.join(outside, "secret.txt"),
                   os.path.join(self.skills, "ops", "deploy", "secret.txt"))
        port = freePort()
        self.process = McpsvcProcess(workdir, env={
            "JWT_SECRET": SECRET, "AUTH_MODE": "none", "STORE": "memory",
            "SERVER_URL": f"http://127.0.0.1:{port}", "SKILLS_DIR": self.skills,
        }, listen=[f"tcp:{port}:interface=127.0.0.1"])
        self.addCleanup(self.process.kill)
        self.process.start()
        self.url = f"http://127.0.0.1:{port}/mcp"

    def rpc(self, method: str, params: Dict[str, Any], name: Optional[str] = None) -> Dict[str, Any]:
        headers = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream",
                   "MCP-Protocol-Version": "2026-07-28", "Mcp-Method": method}
        if name is not None:
            headers["Mcp-Name"] = name
        data = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method,
                           "params": dict(params, _meta=META)}).encode()
        request = urllib.request.Request(self.url, data=data, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return json.loads(response.read())  # type: ignore[no-any-return]
        except urllib.error.HTTPError as e:
            return json.loads(e.read())  # type: ignore[no-any-return]

    def test_served(self) -> None:
        """
        The extension is declared; the directory's skill is listed with its
        files' digests, read back byte for byte, browsed; the symbolic link
        is left out (and logged) and cannot be read.
        """
        capabilities = self.rpc("server/discover", {})["result"]["capabilities"]
        self.assertEqual(capabilities["extensions"],
                         {"io.modelcontextprotocol/skills": {"directoryRead": True}})
        [entry] = self.rpc("skills/list", {})["result"]["skills"]
        self.assertEqual(entry["uri"], "skill://ops/deploy/SKILL.md")
        self.assertEqual(entry["frontmatter"], {"name": "deploy", "description": "Deploy the service safely",
                                                "metadata": {"owner": "ops"}})
        self.assertEqual([r["uri"] for r in entry["resources"]],
                         ["skill://ops/deploy/SKILL.md", "skill://ops/deploy/scripts/check.sh"])
        for resource in entry["resources"]:
            uri = resource["uri"]
            [content] = self.rpc("resources/read", {"uri": uri}, uri)["result"]["contents"]
            data = content["text"].encode()
            self.assertEqual(("sha256:" + hashlib.sha256(data).hexdigest(), len(data)),
                             (resource["digest"], resource["size"]))
        children = self.rpc("resources/directory/read", {"uri": "skill://ops/deploy"})["result"]
        self.assertEqual([c["name"] for c in children["resources"]], ["SKILL.md", "scripts"])
        leak = "skill://ops/deploy/secret.txt"
        self.assertEqual(self.rpc("resources/read", {"uri": leak}, leak)["error"]["code"], -32602)
        self.process.waitFor(lambda r: "symbolic link" in json.dumps(r))
        self.assertNotIn("do not serve", self.process.output)
        self.assertNotIn("Traceback", self.process.output)
