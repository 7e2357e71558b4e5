"""
The official MCP conformance suite's authorization server mode
(C{conformance authorization}, from C{conformance-next},
0.2.0-alpha.12, pinned in C{tests/conformance/package.json}) against the
OAuth authorization server of a real C{twistd -n mcpsvc} process, headless.

The suite has two scenarios, run together (the second needs the metadata
the first fetched, so C{--scenario authorization-code-grant} alone cannot
pass):

 - C{authorization-server-metadata-endpoint}: the RFC 8414 document at
   C{/.well-known/oauth-authorization-server} is JSON, its C{issuer} is
   exactly the C{--url} given, it names the authorization and token
   endpoints, C{response_types_supported} has C{code} and
   C{code_challenge_methods_supported} has C{S256}; a warning (not a
   failure) when C{client_id_metadata_document_supported} is not C{true}.
 - C{authorization-code-grant}: the suite listens on
   C{http://127.0.0.1:<port>/callback}, prints an authorization URL
   (S256 PKCE, C{state}, C{resource} with C{--resource}) for a person to
   open, and waits for the redirect to its callback. The code, C{state}
   and C{iss} of the redirect must each appear once and match; the code is
   then redeemed at the token endpoint, which must answer 200, JSON,
   C{Cache-Control: no-store}, with C{access_token} and C{token_type}.

Here nobody opens a browser: the server runs with C{AUTHORIZE_MODE=auto},
and L{runAuthorizationSuite} plays the browser, fetching the printed URL
and following the authorization server's redirect to the suite's
callback.

Every failed check fails the test, and so does every warning not listed
in L{EXPECTED_WARNINGS} (and a listed one that no longer appears: the list
must stay honest). L{SUITE_LIMITATIONS} lists what the suite cannot test
yet, with the reason.
"""

from __future__ import annotations

import glob
import http.client
import json
import os
import queue
import subprocess
import sys
import threading
import time
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple
from urllib.parse import parse_qs, urlsplit

from twisted.trial.unittest import SynchronousTestCase

from mcpsvc.testing.redis import freePort
from tests.process import SECRET, McpsvcProcess

HERE = os.path.dirname(os.path.abspath(__file__))
SUITE = os.path.join(HERE, "conformance")
NODE = os.path.join(SUITE, "node_modules", "node", "bin", "node")
NEXT_CLI = os.path.join(SUITE, "node_modules", "conformance-next", "dist", "index.js")
MCPSVC = os.path.join(os.path.dirname(sys.executable), "mcpsvc")
DCR_TOKEN = "conformance-initial-access-token-" + "d" * 16

SCENARIOS = ("authorization-server-metadata-endpoint", "authorization-code-grant")

#: Warnings the suite gives that we accept for now: check id -> why. Any
#: other warning fails the test, and so does a listed one that is no
#: longer given (remove it then).
EXPECTED_WARNINGS: Dict[str, str] = {}

#: What the pinned suite cannot test, and what we check instead.
SUITE_LIMITATIONS: Dict[str, str] = {
    "confidential clients": (
        "authorization-code-grant picks the token endpoint authentication method "
        "'none' whenever the metadata lists it, even when given --client-secret "
        "(selectTokenAuthMethod), so a confidential client's code is redeemed "
        "without its secret. Our metadata lists 'none' (public clients) and we "
        "rightly refuse a confidential client that does not authenticate (RFC 6749 "
        "section 3.2.1): the check fails with 'Invalid status code: 401'. "
        "test_confidentialClient asserts exactly that failure, and that the "
        "authorization half (redirect, code, state, iss) was accepted."
    ),
}

#: The one failure L{SUITE_LIMITATIONS} explains.
CONFIDENTIAL_FAILURE = "Invalid status code: 401"


def readChecks(outputDir: str) -> Dict[str, List[Dict[str, Any]]]:
    """
    The checks each scenario wrote (C{-o}: one C{checks.json} in a
    directory named after the scenario).
    """
    found: Dict[str, List[Dict[str, Any]]] = {}
    for scenario in SCENARIOS:
        paths = glob.glob(os.path.join(outputDir, f"authorization-server-{scenario}-*", "checks.json"))
        if len(paths) == 1:
            with open(paths[0], encoding="utf-8") as f:
                found[scenario] = json.load(f)
    return found


def judge(
    checks: Mapping[str, Sequence[Mapping[str, Any]]], expectedWarnings: Mapping[str, str]
) -> Tuple[List[str], List[str], List[str]]:
    """
    The failed checks, the warnings not expected, and the expected
    warnings that were not given, each as C{"scenario/check: message"}
    (the last as check ids). A missing scenario counts as failed.
    """
    failed: List[str] = []
    unexpected: List[str] = []
    warned = set()
    for scenario in SCENARIOS:
        if scenario not in checks:
            failed.append(f"{scenario}: did not run (no checks.json)")
            continue
        for check in checks[scenario]:
            status = check.get("status")
            line = f"{scenario}/{check.get('id')}: {check.get('errorMessage') or check.get('description')}"
            if status == "WARNING":
                warned.add(check.get("id"))
                if check.get("id") not in expectedWarnings:
                    unexpected.append(line)
            elif status != "SUCCESS":
                # FAILURE, and SKIPPED too: a skipped check tested nothing.
                failed.append(f"[{status}] {line}")
    stale = sorted(set(expectedWarnings) - warned)
    return failed, unexpected, stale


class _Lines:
    """
    The lines a child writes, read in a thread so that waiting for one is
    bounded and never blocks on a full pipe.
    """

    def __init__(self, proc: "subprocess.Popen[str]") -> None:
        self.lines: List[str] = []
        self._queue: "queue.Queue[Optional[str]]" = queue.Queue()
        assert proc.stdout is not None
        stdout = proc.stdout

        def pump() -> None:
            for line in stdout:
                self._queue.put(line.rstrip("\n"))
            self._queue.put(None)

        threading.Thread(target=pump, name="conformance-output", daemon=True).start()

    def next(self, deadline: float) -> Optional[str]:
        """
        The next line, or C{None} at the end of the output.

        @raise AssertionError: at the deadline.
        """
        try:
            line = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            raise AssertionError("the suite is stuck; its output:\n" + "\n".join(self.lines[-30:]))
        if line is not None:
            self.lines.append(line)
        return line


def _get(url: str, headers: Mapping[str, str]) -> Tuple[int, Dict[str, str], bytes]:
    """
    One GET, redirects not followed.
    """
    parts = urlsplit(url)
    assert parts.hostname in ("127.0.0.1", "localhost"), url  # loopback only
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    try:
        target = parts.path + ("?" + parts.query if parts.query else "")
        connection.request("GET", target, headers=dict(headers))
        response = connection.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        connection.close()


def playBrowser(authorizationURL: str, callbackPort: int) -> str:
    """
    What a person's browser does with the authorization URL when the
    server approves at once (C{AUTHORIZE_MODE=auto}): load it, and follow
    the redirect to the suite's callback. Returns the redirect.

    @raise AssertionError: when the server does not redirect to the
        callback, or the callback does not answer.
    """
    status, headers, body = _get(
        authorizationURL, {"Accept": "text/html,application/xhtml+xml;q=0.9,*/*;q=0.8"}
    )
    location = headers.get("location", "")
    callback = f"http://127.0.0.1:{callbackPort}/callback?"
    if status != 302 or not location.startswith(callback):
        raise AssertionError(
            f"the authorization endpoint answered {status} {location!r}, not a redirect to "
            f"{callback}: {body[:500]!r}"
        )
    status, _, body = _get(location, {"Accept": "text/html"})
    if status != 200:
        raise AssertionError(f"the suite's callback answered {status}: {body[:200]!r}")
    return location


class SuiteRun:
    """
    One run of C{conformance authorization}: its output, exit status,
    checks per scenario, and the redirect the authorization server made.
    """

    def __init__(
        self, output: str, returncode: int, checks: Dict[str, List[Dict[str, Any]]],
        redirect: Optional[str],
    ) -> None:
        self.output = output
        self.returncode = returncode
        self.checks = checks
        self.redirect = redirect


def runAuthorizationSuite(
    workdir: str, issuer: str, clientID: str, callbackPort: int,
    secret: Optional[str] = None, resource: Optional[str] = None, timeout: float = 180.0,
) -> SuiteRun:
    """
    Run both scenarios against C{issuer}, playing the browser when the
    suite asks for one (L{playBrowser}). A browser step that fails ends the
    suite at once (it would otherwise wait five minutes for its callback).
    """
    outputDir = os.path.join(workdir, "results")
    argv = [
        NODE, NEXT_CLI, "authorization", "--url", issuer, "--client-id", clientID,
        "-p", str(callbackPort), "-o", outputDir,
    ]
    if secret is not None:
        argv += ["--client-secret", secret]
    if resource is not None:
        argv += ["--resource", resource]
    proc = subprocess.Popen(
        argv, cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={"PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", "/root"),
             "NO_COLOR": "1"},
    )
    try:
        lines = _Lines(proc)
        deadline = time.monotonic() + timeout
        authorizationURL: Optional[str] = None
        listening = False
        redirect: Optional[str] = None
        while True:
            line = lines.next(deadline)
            if line is None:
                break
            if line.startswith("http://127.0.0.1:") and "/authorize?" in line:
                authorizationURL = line.strip()
            elif line.startswith(f"Callback server started: http://127.0.0.1:{callbackPort}"):
                listening = True
            if authorizationURL and listening and redirect is None:
                redirect = playBrowser(authorizationURL, callbackPort)
        returncode = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    return SuiteRun("\n".join(lines.lines), returncode, readChecks(outputDir), redirect)


class JudgeTests(SynchronousTestCase):
    """
    The verdict the suite runs rest on.
    """

    #: An allowance for the warning in L{_checks}.
    allowance = {"authorization-server-metadata-cimd": "why"}

    def _checks(self, *extra: Dict[str, Any]) -> Dict[str, List[Dict[str, Any]]]:
        return {
            "authorization-server-metadata-endpoint": [
                {"id": "authorization-server-metadata", "status": "SUCCESS"},
                {"id": "authorization-server-metadata-cimd", "status": "WARNING",
                 "errorMessage": "no cimd"},
            ],
            "authorization-code-grant": [
                {"id": "authorization-code-grant", "status": "SUCCESS"}, *extra,
            ],
        }

    def test_clean(self) -> None:
        self.assertEqual(
            judge(self._checks(), {"authorization-server-metadata-cimd": "why"}), ([], [], [])
        )

    def test_failedAndSkipped(self) -> None:
        failed, _, _ = judge(
            self._checks(
                {"id": "x", "status": "FAILURE", "errorMessage": "boom"},
                {"id": "y", "status": "SKIPPED", "errorMessage": "needs --client-id"},
            ),
            self.allowance,
        )
        self.assertEqual(failed, [
            "[FAILURE] authorization-code-grant/x: boom",
            "[SKIPPED] authorization-code-grant/y: needs --client-id",
        ])

    def test_unexpectedWarning(self) -> None:
        _, unexpected, _ = judge(self._checks(), {})
        self.assertEqual(
            unexpected, ["authorization-server-metadata-endpoint/authorization-server-metadata-cimd: no cimd"]
        )

    def test_staleAllowance(self) -> None:
        checks = self._checks()
        checks["authorization-server-metadata-endpoint"][1]["status"] = "SUCCESS"
        self.assertEqual(
            judge(checks, self.allowance), ([], [], ["authorization-server-metadata-cimd"])
        )

    def test_missingScenario(self) -> None:
        checks = self._checks()
        del checks["authorization-code-grant"]
        failed, _, _ = judge(checks, self.allowance)
        self.assertEqual(failed, ["authorization-code-grant: did not run (no checks.json)"])

    def test_reasons(self) -> None:
        """
        Every allowance says why.
        """
        for reason in (*EXPECTED_WARNINGS.values(), *SUITE_LIMITATIONS.values()):
            self.assertGreater(len(reason), 40)


class AuthorizationServerConformanceTests(SynchronousTestCase):
    """
    Both scenarios against C{twistd -n mcpsvc}: public clients (from
    dynamic registration with an initial access token, and from
    C{mcpsvc clients add}), and a confidential one (L{SUITE_LIMITATIONS}).
    """

    def setUp(self) -> None:
        self.assertTrue(
            os.path.exists(NODE) and os.path.exists(NEXT_CLI),
            "the conformance suite is not installed: run scripts/test.sh "
            "(it runs npm ci in tests/conformance)",
        )
        self.workdir = os.path.abspath(self.mktemp())
        os.makedirs(self.workdir)
        port = freePort()
        self.server = self.issuer = f"http://127.0.0.1:{port}"
        self.callbackPort = freePort()
        self.env = {
            "JWT_SECRET": SECRET,
            "DCR_AUTH_TOKEN": DCR_TOKEN,
            "AUTHORIZE_MODE": "auto",
            "STORE": "sqlite",
            "STORE_PATH": os.path.join(self.workdir, "store.sqlite3"),
            "VAR_DIR": os.path.join(self.workdir, "var"),
            "SERVER_URL": self.server,
        }
        self.listen = f"tcp:{port}:interface=127.0.0.1"

    def _start(self, **env: str) -> None:
        """
        Start the server, with C{env} added to its environment (and the
        admin command's).
        """
        self.env.update(env)
        self.issuer = self.env.get("JWT_ISSUER", self.server)
        self.process = McpsvcProcess(self.workdir, env=self.env, listen=[self.listen])
        self.addCleanup(self.process.kill)
        self.process.start()

    def _addClient(self, authMethod: str, redirectURI: str) -> Tuple[str, Optional[str]]:
        """
        C{mcpsvc clients add}, on the store the server uses.
        """
        result = subprocess.run(
            [MCPSVC, "clients", "add", "--name", f"conformance {authMethod}",
             "--redirect-uri", redirectURI, "--auth-method", authMethod],
            cwd=self.workdir, capture_output=True, text=True, timeout=60,
            env={"PATH": os.environ.get("PATH", ""), **self.env},
        )
        self.assertEqual(result.returncode, 0, result.stderr)
        fields = dict(
            (k.strip(), v.strip()) for k, _, v in
            (line.partition(":") for line in result.stdout.splitlines() if line.startswith("client_"))
        )
        return fields["client_id"], fields.get("client_secret")

    def _register(self, metadata: Mapping[str, Any]) -> Dict[str, Any]:
        """
        Dynamic client registration with the initial access token, as
        ServiceNow does it.
        """
        connection = http.client.HTTPConnection("127.0.0.1", self.process.port, timeout=30)
        try:
            connection.request(
                "POST", "/oauth/register", body=json.dumps(metadata),
                headers={"Content-Type": "application/json",
                         "Authorization": "Bearer " + DCR_TOKEN},
            )
            response = connection.getresponse()
            body = json.loads(response.read())
        finally:
            connection.close()
        self.assertEqual(response.status, 201, body)
        return body  # type: ignore[no-any-return]

    def _runSuite(self, clientID: str, **kwargs: Any) -> SuiteRun:
        """
        Run the suite, then stop the server (reading all of its log: the
        tests look at it) and check that it logged no traceback.
        """
        run = runAuthorizationSuite(
            self.workdir, self.issuer, clientID, self.callbackPort, **kwargs
        )
        self.assertEqual(self.process.stop(), 0)
        self.assertNotIn("Traceback", self.process.output)
        return run

    def _assertConformant(self, run: SuiteRun) -> None:
        failed, unexpected, stale = judge(run.checks, EXPECTED_WARNINGS)
        self.assertEqual(failed, [], "failed checks:\n" + run.output)
        self.assertEqual(
            unexpected, [],
            "warnings not in EXPECTED_WARNINGS (fix mcpsvc, or list them with the reason):\n"
            + run.output,
        )
        self.assertEqual(
            stale, [],
            "listed in EXPECTED_WARNINGS but no longer given (remove them from the list)",
        )
        self.assertEqual(run.returncode, 0, run.output)

    def _redirectParams(self, run: SuiteRun) -> Dict[str, List[str]]:
        assert run.redirect is not None, run.output
        return parse_qs(urlsplit(run.redirect).query)

    def test_publicClientRegistered(self) -> None:
        """
        A public client from dynamic registration, with a loopback redirect
        URI without a port (any port matches, RFC 8252), and the RFC 8707
        C{resource} of our MCP endpoint: every check passes, the only
        warning is an expected one.
        """
        self._start()
        registered = self._register({
            "client_name": "conformance public",
            "redirect_uris": ["http://127.0.0.1/callback"],
            "token_endpoint_auth_method": "none",
            "grant_types": ["authorization_code", "refresh_token"],
            "response_types": ["code"],
        })
        self.assertNotIn("client_secret", registered)
        run = self._runSuite(registered["client_id"], resource=self.server + "/mcp")
        self._assertConformant(run)
        # The authorization server (not only the suite) named itself.
        self.assertEqual(self._redirectParams(run)["iss"], [self.issuer])
        grant = run.checks["authorization-code-grant"][0]["details"]["body"]
        self.assertEqual(grant["token_type"], "Bearer")
        self.assertIn("refresh_token", grant)

    def test_publicClientFromCommand(self) -> None:
        """
        A public client added with C{mcpsvc clients add}, with the exact
        redirect URI the suite asks for, and no C{resource}.
        """
        self._start()
        clientID, secret = self._addClient(
            "none", f"http://127.0.0.1:{self.callbackPort}/callback"
        )
        self.assertIsNone(secret)
        run = self._runSuite(clientID)
        self._assertConformant(run)
        metadata = run.checks["authorization-server-metadata-endpoint"][0]["details"]["body"]
        self.assertEqual(metadata["issuer"], self.issuer)

    def test_issuerWithPath(self) -> None:
        """
        With C{JWT_ISSUER} naming a path, the suite given that issuer finds
        the metadata at the well-known URI followed by the path (RFC 8414
        section 3.1), and the authorization response's C{iss} is that
        issuer.
        """
        self._start(JWT_ISSUER=self.server + "/tenant")
        clientID, _ = self._addClient("none", "http://127.0.0.1/callback")
        run = self._runSuite(clientID, resource=self.server + "/mcp")
        self._assertConformant(run)
        self.assertEqual(self._redirectParams(run)["iss"], [self.issuer])

    def test_confidentialClient(self) -> None:
        """
        A confidential client (C{client_secret_basic}, from
        C{mcpsvc clients add}): the suite redeems its code without the
        secret (L{SUITE_LIMITATIONS}) and we refuse. Everything else
        passes: metadata, and the authorization response.
        """
        self._start()
        clientID, secret = self._addClient(
            "client_secret_basic", f"http://127.0.0.1:{self.callbackPort}/callback"
        )
        assert secret is not None
        run = self._runSuite(clientID, secret=secret, resource=self.server + "/mcp")
        (grant,) = run.checks["authorization-code-grant"]
        self.assertEqual(
            (grant["status"], grant.get("errorMessage")), ("FAILURE", CONFIDENTIAL_FAILURE),
            "the suite now authenticates confidential clients: make this test expect "
            "success and drop the entry from SUITE_LIMITATIONS\n" + run.output,
        )
        self.assertEqual(self._redirectParams(run)["iss"], [self.issuer])
        self.process.waitFor(
            lambda r: r.get("reason") == "used none, registered client_secret_basic"
            and r.get("clientID") == clientID
        )
        others = {k: v for k, v in run.checks.items() if k != "authorization-code-grant"}
        failed, unexpected, stale = judge(
            {**others, "authorization-code-grant": []}, EXPECTED_WARNINGS
        )
        self.assertEqual((failed, unexpected, stale), ([], [], []), run.output)
