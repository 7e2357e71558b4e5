"""
End-to-end benchmark of mcpsvc (issue 8), against the floor of our stack.

    .venv/bin/python bench/run.py [--quick] [--workers N] [--profile] [--only ...]

Starts, on loopback only, mcpsvc with the SQLite store, then with the Redis
store (and its own redis-server), and the bare twisted.web + pyjwt baseline
(bench/baseline.py); pins the servers to one core and wrk to the other
(taskset); obtains real tokens through the OAuth endpoints (AUTHORIZE_MODE=
auto); drives each server with wrk through Lua scripts that check every
response; prints a table and writes bench/results/<timestamp>.json.

See bench/README.md for what each figure means.
"""

from __future__ import annotations

import argparse
import atexit
import base64
import datetime
import hashlib
import http.client
import json
import os
import platform
import re
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple
from urllib.parse import parse_qs, urlencode, urlsplit

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
sys.path.insert(0, HERE)
VENV_BIN = os.path.dirname(sys.executable)
TWISTD = os.path.join(VENV_BIN, "twistd")
RESULTS = os.path.join(HERE, "results")
CALL_LUA = os.path.join(HERE, "mcp_call.lua")
FLOWS_LUA = os.path.join(HERE, "flows.lua")
REDIRECT = "http://127.0.0.1:9/cb"
PROTOCOL = "2025-06-18"
#: Raised for the benchmark only (defaults: register 20/3600, token 50/900,
#: authorize 60/900 per address); every request comes from 127.0.0.1.
RATE_LIMITS = {
    "RATE_LIMIT_REGISTER": "1000000/1",
    "RATE_LIMIT_TOKEN": "1000000/1",
    "RATE_LIMIT_AUTHORIZE": "1000000/1",
    "RATE_LIMIT_INITIALIZE": "1000000/1",
    # Raised, not off: the per-instance tool-call limiter still runs.
    "TOOL_RATE_LIMIT": "1000000/1",
}
TOOL_CALL = {"jsonrpc": "2.0", "id": 1, "method": "tools/call",
             "params": {"name": "echo_message", "arguments": {"message": "hi"}}}
#: The tools/call requests the bench drives, each with a text that must be
#: in every response (wrk's Lua checks it): C{calculate} (a real tool:
#: schema-validated argument, the safe evaluator, an output schema, so
#: structuredContent and a text block) is the headline; C{word_count}, the
#: worked example of docs/tool-plugins.md, loaded as a third-party plugin
#: (PYTHONPATH=docs/examples, TOOL_PACKS=core,textstats), has a larger
#: input schema (a bounded string, an integer with bounds and a default)
#: and a nested output schema; C{echo_message} is the cheapest tool.
TOOLS: Dict[str, Tuple[Dict[str, Any], str]] = {
    "calculate": ({"expression": "2+3"}, '"result":5,'),
    "word_count": ({"text": "the quick brown fox jumps over the lazy dog and the cat", "top": 3},
                   '"words":12,'),
    "echo_message": ({"message": "hi"}, '"text":"hi"'),
}
EXAMPLES = os.path.join(ROOT, "docs", "examples")


def toolEnv(token: str, tool: str, session: Optional[str] = None) -> Dict[str, str]:
    """
    The environment of mcp_call.lua for a tools/call of C{tool}.
    """
    arguments, expect = TOOLS[tool]
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": tool, "arguments": arguments}}
    env = {"MCP_TOKEN": token, "MCP_BODY": json.dumps(body, separators=(",", ":")), "MCP_EXPECT": expect}
    if session:
        env["MCP_SESSION"] = session
    return env


def say(text: str = "") -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


class BenchError(Exception):
    pass


# -- processes -----------------------------------------------------------------

class Processes:
    """
    Every child process the harness starts; L{stopAll} ends them (SIGTERM,
    then SIGKILL after a bounded wait). Registered with atexit and called in
    a finally block.
    """

    def __init__(self) -> None:
        self.children: List[subprocess.Popen] = []
        self.extra: List[Any] = []  # objects with .stop() (RedisServer)

    def start(self, argv: Sequence[str], env: Dict[str, str], cwd: str, logPath: str) -> subprocess.Popen:
        with open(logPath, "ab") as log:
            proc = subprocess.Popen(list(argv), env=env, cwd=cwd, stdin=subprocess.DEVNULL,
                                    stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.children.append(proc)
        return proc

    def stop(self, proc: Optional[subprocess.Popen], timeout: float = 20.0) -> Optional[int]:
        if proc is None:
            return None
        if proc.poll() is None:
            try:
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
            except ProcessLookupError:
                pass
        if proc in self.children:
            self.children.remove(proc)
        return proc.returncode

    def stopAll(self) -> None:
        for proc in list(self.children):
            try:
                self.stop(proc)
            except Exception as e:  # keep stopping the others
                say(f"warning: could not stop pid {proc.pid}: {e}")
        for thing in list(self.extra):
            try:
                thing.stop()
            except Exception as e:
                say(f"warning: could not stop {thing!r}: {e}")
        self.extra.clear()


PROCS = Processes()
atexit.register(PROCS.stopAll)


def _onSignal(number: int, frame: Any) -> None:
    raise SystemExit(128 + number)


def treePids(pid: int) -> List[int]:
    """
    C{pid} and its descendants (for --workers: every worker process).
    """
    out, todo = [], [pid]
    while todo and len(out) < 1000:
        p = todo.pop()
        out.append(p)
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    todo += [int(c) for c in f.read().split()]
        except OSError:
            pass
    return out


def rssKiB(pid: int) -> Optional[int]:
    """
    VmRSS of C{pid} plus its descendants, KiB.
    """
    total, found = 0, False
    for p in treePids(pid):
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
                        found = True
        except OSError:
            pass
    return total if found else None


def freePort() -> int:
    from mcpsvc.testing.redis import freePort as _free
    return _free()


# -- HTTP ----------------------------------------------------------------------

def request(base: str, method: str, path: str, headers: Optional[Dict[str, str]] = None,
            body: Optional[bytes] = None, timeout: float = 10.0) -> Tuple[int, Dict[str, str], bytes]:
    parts = urlsplit(base)
    assert parts.hostname == "127.0.0.1", base
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        data = response.read()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, data
    finally:
        conn.close()


def mcpHeaders(token: str, session: Optional[str] = None) -> Dict[str, str]:
    headers = {"Authorization": "Bearer " + token, "Content-Type": "application/json",
               "Accept": "application/json, text/event-stream", "MCP-Protocol-Version": PROTOCOL}
    if session:
        headers["Mcp-Session-Id"] = session
    return headers


def toolCallOK(status: int, body: bytes) -> bool:
    if not 200 <= status < 300:
        return False
    try:
        message = json.loads(body)
    except ValueError:
        return False
    return isinstance(message, dict) and isinstance(message.get("result"), dict) \
        and message["result"].get("isError") is not True


def waitReady(base: str, proc: subprocess.Popen, logPath: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BenchError(f"server exited with {proc.returncode}; log:\n{tail(logPath)}")
        try:
            if request(base, "GET", "/ready", timeout=1.0)[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.02)  # bounded by the deadline
    raise BenchError(f"{base}/ready did not answer 200 within {timeout}s; log:\n{tail(logPath)}")


def tail(path: str, lines: int = 30) -> str:
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-lines:])
    except OSError:
        return "(no log)"


# -- OAuth ---------------------------------------------------------------------

def register(base: str, iat: str) -> Dict[str, str]:
    status, _, body = request(base, "POST", "/oauth/register", {
        "Authorization": "Bearer " + iat, "Content-Type": "application/json"},
        json.dumps({"client_name": "bench", "redirect_uris": [REDIRECT],
                    "grant_types": ["authorization_code", "refresh_token"],
                    "token_endpoint_auth_method": "client_secret_post"}).encode())
    if status != 201:
        raise BenchError(f"registration answered {status}: {body[:300]!r}")
    client = json.loads(body)
    return {"client_id": client["client_id"], "client_secret": client["client_secret"]}


def authorize(base: str, client: Dict[str, str]) -> Dict[str, Any]:
    """
    One authorization code flow (PKCE S256) -> the token response.
    """
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    query = urlencode({"response_type": "code", "client_id": client["client_id"], "redirect_uri": REDIRECT,
                       "code_challenge": challenge, "code_challenge_method": "S256", "state": "x",
                       "scope": "mcp:tools"})
    status, headers, body = request(base, "GET", "/oauth/authorize?" + query)
    if status not in (302, 303) or "location" not in headers:
        raise BenchError(f"authorize answered {status}: {body[:300]!r}")
    code = parse_qs(urlsplit(headers["location"]).query).get("code", [None])[0]
    if not code:
        raise BenchError(f"no code in {headers['location']!r}")
    form = urlencode({"grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT,
                      "code_verifier": verifier, "client_id": client["client_id"],
                      "client_secret": client["client_secret"]}).encode()
    status, _, body = request(base, "POST", "/oauth/token",
                              {"Content-Type": "application/x-www-form-urlencoded"}, form)
    if status != 200:
        raise BenchError(f"token endpoint answered {status}: {body[:300]!r}")
    return json.loads(body)


# -- wrk -----------------------------------------------------------------------

def ensureTool(name: str, package: str, required: bool = True) -> Optional[str]:
    path = shutil.which(name)
    if path:
        return path
    if os.geteuid() != 0:
        message = f"{name} is not installed and we are not root: run `sudo apt-get install -y {package}`"
        if required:
            raise BenchError(message)
        say("warning: " + message)
        return None
    say(f"installing {package} with apt-get ...")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for argv in (["apt-get", "update"], ["apt-get", "install", "-y", package]):
        done = subprocess.run(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=900)
        if done.returncode != 0:
            message = f"`{' '.join(argv)}` failed:\n{done.stdout.decode(errors='replace')[-2000:]}"
            if required:
                raise BenchError(message)
            say("warning: " + message)
            return None
    return shutil.which(name)


class Pinning:
    def __init__(self, serverCPUs: str, clientCPUs: str) -> None:
        self.taskset = shutil.which("taskset")
        self.server, self.client = serverCPUs, clientCPUs
        self.enabled = bool(self.taskset) and (os.cpu_count() or 1) >= 2 and serverCPUs != "none"
        if not self.enabled:
            say("warning: not pinning (needs taskset and 2+ cores): server and wrk share the CPUs")

    def prefix(self, which: str) -> List[str]:
        if not self.enabled:
            return []
        return [self.taskset, "-c", self.server if which == "server" else self.client]

    def pinPid(self, pid: int) -> None:
        if self.enabled:
            os.sched_setaffinity(pid, {int(c) for c in _cpuList(self.server)})


def _cpuList(spec: str) -> List[int]:
    out: List[int] = []
    for part in spec.split(","):
        if "-" in part:
            a, b = part.split("-")
            out += list(range(int(a), int(b) + 1))
        else:
            out.append(int(part))
    return out


def runWrk(pin: Pinning, url: str, script: str, connections: int, duration: float,
           env: Dict[str, str], args: Sequence[str] = (), timeoutSeconds: int = 5) -> Dict[str, Any]:
    argv = pin.prefix("client") + [
        "wrk", "-t1", f"-c{connections}", f"-d{max(1, int(round(duration)))}s", f"--timeout={timeoutSeconds}s",
        "--latency", "-s", script, url]
    if args:
        argv += ["--"] + list(args)
    done = subprocess.run(argv, env=dict(os.environ, **env), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          timeout=duration + 60)
    output = done.stdout.decode("utf-8", "replace")
    match = re.search(r"^BENCHJSON (.*)$", output, re.M)
    if done.returncode != 0 or not match:
        raise BenchError(f"wrk failed ({done.returncode}):\n{output[-3000:]}")
    result = json.loads(match.group(1))
    result["rps"] = result["ok"] / (result["duration_us"] / 1e6) if result["duration_us"] else 0.0
    if result["failed"] or result.get("pool_empty"):
        say("    " + "\n    ".join(l for l in output.splitlines() if l and not l.startswith("BENCHJSON"))[-1500:])
    return result


# -- the servers ---------------------------------------------------------------

class Server:
    """
    One server process under test (mcpsvc or the baseline).
    """

    def __init__(self, name: str, proc: subprocess.Popen, base: str, logPath: str, startedAt: float) -> None:
        self.name, self.proc, self.base, self.logPath, self.startedAt = name, proc, base, logPath, startedAt

    @property
    def rss(self) -> Optional[int]:
        return rssKiB(self.proc.pid)

    def alive(self) -> None:
        if self.proc.poll() is not None:
            raise BenchError(f"{self.name} exited with {self.proc.returncode}; log:\n{tail(self.logPath)}")


def openSession(base: str, access: str, note: Callable[[str], None] = say) -> str:
    """
    C{initialize} (with a session) and C{notifications/initialized}; the
    session id.
    """
    status, headers, answer = request(base, "POST", "/mcp", mcpHeaders(access), json.dumps(
        {"jsonrpc": "2.0", "id": 0, "method": "initialize",
         "params": {"protocolVersion": PROTOCOL, "capabilities": {},
                    "clientInfo": {"name": "bench", "version": "1"}}}).encode())
    session = headers.get("mcp-session-id")
    if status != 200 or not session:
        raise BenchError(f"initialize answered {status} without a session: {answer[:300]!r}")
    status, _, answer = request(base, "POST", "/mcp", mcpHeaders(access, session),
                                b'{"jsonrpc":"2.0","method":"notifications/initialized"}')
    if status != 202:
        note(f"notifications/initialized answered {status}: {answer[:200]!r}")
    return session


class Bench:
    def __init__(self, options: argparse.Namespace) -> None:
        self.o = options
        self.tmp = tempfile.mkdtemp(prefix="mcpsvc-bench-")
        self.secret = secrets.token_urlsafe(48)
        self.iat = "bench-iat-" + secrets.token_urlsafe(32)
        self.pin = Pinning(options.server_cpus, options.client_cpus)
        self.points: List[Dict[str, Any]] = []
        self.extras: Dict[str, Any] = {}
        self.notes: List[str] = []
        self.workersArgs: List[str] = []
        self.redis: Any = None
        self.baselineServer: Optional[Server] = None
        self.baselineEnv: Dict[str, str] = {}

    # ----- mcpsvc
    def mcpsvcEnv(self, store: str, port: int, sessions: bool) -> Dict[str, str]:
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": os.environ.get("HOME", "/root"),
            "PYTHONUNBUFFERED": "1",
            "JWT_SECRET": self.secret,
            "DCR_AUTH_TOKEN": self.iat,
            "AUTHORIZE_MODE": "auto",
            "SERVER_URL": f"http://127.0.0.1:{port}",
            "LOG_FORMAT": self.o.log_format,
            "LOG_LEVEL": self.o.log_level,
            "SESSIONS": "on" if sessions else "off",
            "STORE": store,
        }
        if "word_count" in self.o.tools:
            env["PYTHONPATH"] = EXAMPLES
            env["TOOL_PACKS"] = "core,textstats"
        env.update(RATE_LIMITS)
        env.update(self.o.server_env)
        if store == "sqlite":
            env["STORE_PATH"] = os.path.join(self.tmp, "mcpsvc.sqlite3")
        elif store == "redis":
            env["REDIS_URL"] = self.redis.url
        return env

    def startMcpsvc(self, store: str, port: int, sessions: bool, wait: bool = True) -> Server:
        logPath = os.path.join(self.tmp, f"mcpsvc-{store}.log")
        argv = self.pin.prefix("server") + [
            TWISTD, "--pidfile=", "-n", "mcpsvc", "--listen", f"tcp:{port}:interface=127.0.0.1"
        ] + self.workersArgs
        startedAt = time.perf_counter()
        proc = PROCS.start(argv, self.mcpsvcEnv(store, port, sessions), self.tmp, logPath)
        server = Server(f"mcpsvc-{store}", proc, f"http://127.0.0.1:{port}", logPath, startedAt)
        if wait:
            waitReady(server.base, proc, logPath)
        return server

    def stopServer(self, server: Optional[Server]) -> None:
        if server is not None:
            code = PROCS.stop(server.proc)
            if code not in (0, None):
                self.note(f"{server.name} exited with status {code} on SIGTERM; log tail:\n{tail(server.logPath, 10)}")

    def note(self, text: str) -> None:
        self.notes.append(text)
        say("NOTE: " + text)

    def coldStart(self, store: str, port: int, token: str) -> Tuple[Server, float]:
        """
        Start mcpsvc and send tools/call in a tight loop until one succeeds;
        return the server and the seconds from Popen to that success.
        """
        server = self.startMcpsvc(store, port, sessions=False, wait=False)
        body = json.dumps(TOOL_CALL).encode()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            server.alive()
            try:
                status, _, answer = request(server.base, "POST", "/mcp", mcpHeaders(token), body, timeout=5)
                if toolCallOK(status, answer):
                    return server, time.perf_counter() - server.startedAt
            except OSError:
                pass
            time.sleep(0.002)  # bounded by the deadline
        raise BenchError(f"no successful tools/call within 30 s of starting; log:\n{tail(server.logPath)}")

    # ----- measuring
    def measure(self, server: Server, target: str, flow: str, connections: int, script: str,
                path: str, env: Callable[[], Dict[str, str]], args: Sequence[str] = (),
                paired: bool = False) -> Dict[str, Any]:
        """
        C{repeat} wrk runs of one point. With C{paired} (mcpsvc's
        C{tools/call} points) each run follows a baseline run of the same
        length and connections, so the ratio compares runs seconds apart:
        this machine's speed drifts over a 15-minute bench by more than
        the differences being measured.
        """
        runs = []
        for i in range(self.o.repeat):
            pair = None
            if paired and self.baselineServer is not None:
                self.baselineServer.alive()
                pair = runWrk(self.pin, self.baselineServer.base + "/mcp", CALL_LUA, connections,
                              self.o.duration, self.baselineEnv)
            server.alive()
            result = runWrk(self.pin, server.base + path, script, connections, self.o.duration, env(), args)
            server.alive()
            result["rss_kib"] = server.rss
            if pair is not None:
                result["baseline_rps"] = pair["rps"]
                result["baseline_failed"] = pair["failed"]
            runs.append(result)
            say(f"  {target:<15} {flow:<17} c={connections:<3} run {i + 1}: {result['rps']:9.1f} req/s  "
                f"p50 {result['p50_us'] / 1000:7.2f} ms  p99 {result['p99_us'] / 1000:7.2f} ms  "
                f"failed {result['failed']}  rss {fmtMiB(result['rss_kib'])}"
                + ("" if pair is None else f"  (baseline just before: {pair['rps']:.1f} req/s)"))
        point = {
            "target": target, "flow": flow, "connections": connections, "runs": runs,
            "rps": statistics.median(r["rps"] for r in runs),
            "rps_min": min(r["rps"] for r in runs), "rps_max": max(r["rps"] for r in runs),
            "p50_ms": statistics.median(r["p50_us"] for r in runs) / 1000,
            "p99_ms": statistics.median(r["p99_us"] for r in runs) / 1000,
            "failed": sum(r["failed"] for r in runs),
            "rss_kib": runs[-1]["rss_kib"],
        }
        ratios = [r["rps"] / r["baseline_rps"] for r in runs if r.get("baseline_rps")]
        if ratios:
            point["paired_ratio"] = statistics.median(ratios)
        self.points.append(point)
        return point

    def warmup(self, server: Server, script: str, path: str, env: Dict[str, str]) -> None:
        result = runWrk(self.pin, server.base + path, script, 64, self.o.warmup, env)
        if result["failed"]:
            self.note(f"{server.name}: {result['failed']} failed responses during warm-up")

    def wanted(self, flow: str) -> bool:
        return self.o.only is None or flow in self.o.only

    # ----- the phases
    def startScript(self, name: str, script: str) -> Server:
        """
        Start one of the bench's own servers (C{baseline.py},
        C{sdk_server.py}) on a free loopback port, verifying tokens of this
        bench's secret with itself as issuer.
        """
        port = freePort()
        issuer = f"http://127.0.0.1:{port}"
        logPath = os.path.join(self.tmp, f"{name}.log")
        argv = self.pin.prefix("server") + [sys.executable, os.path.join(HERE, script), "--port", str(port),
                                            "--issuer", issuer]
        env = {"PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", "/root"),
               "JWT_SECRET": self.secret, "PYTHONPATH": ROOT}
        proc = PROCS.start(argv, env, self.tmp, logPath)
        return Server(name, proc, issuer, logPath, time.perf_counter())

    def baseline(self) -> None:
        """
        Start the baseline, measure its own rows, and leave it running
        (stopped by L{stopBaseline}): each mcpsvc C{tools/call} run is
        paired with a baseline run just before it (see L{measure}).
        """
        from baseline import mint
        server = self.startScript("baseline", "baseline.py")
        proc, issuer = server.proc, server.base
        self.baselineServer = server
        waitReady(server.base, proc, server.logPath)
        token = mint(self.secret, issuer, issuer + "/mcp")
        status, _, answer = request(server.base, "POST", "/mcp", mcpHeaders(token), json.dumps(TOOL_CALL).encode())
        if not toolCallOK(status, answer):
            raise BenchError(f"baseline answered {status}: {answer[:200]!r}")
        self.extras.setdefault("idle_rss_kib", {})["baseline"] = server.rss
        say(f"baseline: pid {proc.pid}, idle RSS {fmtMiB(server.rss)}")
        self.baselineEnv = {"MCP_TOKEN": token}
        self.warmup(server, CALL_LUA, "/mcp", self.baselineEnv)
        for c in self.o.connections:
            self.measure(server, "baseline", "tools/call", c, CALL_LUA, "/mcp", lambda: self.baselineEnv)

    def stopBaseline(self) -> None:
        server, self.baselineServer = self.baselineServer, None
        self.stopServer(server)

    def mcpsvc(self, store: str) -> None:
        target = f"mcpsvc-{store}"
        port = freePort()
        server: Optional[Server] = None
        try:
            # First start: creates the store; get a client and a token.
            server = self.startMcpsvc(store, port, sessions=False)
            client = register(server.base, self.iat)
            tokens = authorize(server.base, client)
            access = tokens["access_token"]
            self.stopServer(server)
            server = None
            # Cold starts: the store and the token already exist (a restart).
            colds = []
            for i in range(self.o.cold_starts):
                if server is not None:
                    self.stopServer(server)
                server, seconds = self.coldStart(store, port, access)
                colds.append(seconds)
            assert server is not None
            idle = server.rss
            self.extras.setdefault("cold_start_ms", {})[target] = [round(s * 1000, 1) for s in colds]
            self.extras.setdefault("idle_rss_kib", {})[target] = idle
            say(f"{target}: pid {server.proc.pid}, cold start {', '.join(f'{s * 1000:.0f} ms' for s in colds)}, "
                f"idle RSS {fmtMiB(idle)}")
            if self.wanted("tools/call"):
                for tool in self.o.tools:
                    callEnv = toolEnv(access, tool)
                    self.checkCall(server, callEnv)
                    self.warmup(server, CALL_LUA, "/mcp", callEnv)
                    for c in self.o.connections:
                        self.measure(server, target, f"tools/call {tool}", c, CALL_LUA, "/mcp",
                                     lambda callEnv=callEnv: callEnv, paired=True)
            if self.wanted("refresh"):
                for c in self.o.connections:
                    def chained(c: int = c) -> Dict[str, str]:
                        # one fresh family per connection, never used before, plus one: wrk
                        # calls request() once at start-up to check the script (that token
                        # is taken from the pool but never sent)
                        families = [authorize(server.base, client)["refresh_token"] for _ in range(c + 1)]
                        return {"BENCH_FLOW": "refresh", "REFRESH_TOKENS": ",".join(families),
                                "CLIENT_ID": client["client_id"], "CLIENT_SECRET": client["client_secret"]}
                    self.measure(server, target, "refresh (rotate)", c, FLOWS_LUA, "/oauth/token", chained)
            # Only when asked for: since REFRESH_GRACE_REPLAYS (default 3) a
            # token replayed more often than that is reuse and ends the grant.
            if self.o.only is not None and "refresh_grace" in self.o.only:
                for c in self.o.connections:
                    def grace() -> Dict[str, str]:
                        return {"BENCH_FLOW": "refresh_grace",
                                "REFRESH_TOKENS": authorize(server.base, client)["refresh_token"],
                                "CLIENT_ID": client["client_id"], "CLIENT_SECRET": client["client_secret"]}
                    self.measure(server, target, "refresh (grace)", c, FLOWS_LUA, "/oauth/token", grace)
            if self.wanted("register"):
                for c in self.o.connections:
                    self.measure(server, target, "register", c, FLOWS_LUA, "/oauth/register",
                                 lambda: {"BENCH_FLOW": "register", "DCR_AUTH_TOKEN": self.iat})
            self.stopServer(server)
            server = None
            if self.wanted("initialize") or self.wanted("tools/call+session"):
                # SESSIONS=on (the default): initialize, and tools/call inside a session.
                server = self.startMcpsvc(store, port, sessions=True)
                session = openSession(server.base, access, self.note)
                headline = self.o.tools[0]
                sessionEnv = toolEnv(access, headline, session)
                if self.wanted("tools/call+session"):
                    self.checkCall(server, sessionEnv)
                    self.warmup(server, CALL_LUA, "/mcp", sessionEnv)
                    for c in self.o.connections:
                        self.measure(server, target, f"tools/call+session {headline}", c, CALL_LUA, "/mcp",
                                     lambda: sessionEnv, paired=True)
                if self.wanted("initialize"):
                    for c in self.o.connections:
                        self.measure(server, target, "initialize", c, FLOWS_LUA, "/mcp",
                                     lambda: {"BENCH_FLOW": "initialize", "MCP_TOKEN": access})
            self.scanLog(target, server.logPath if server else os.path.join(self.tmp, f"mcpsvc-{store}.log"))
        finally:
            self.stopServer(server)

    def checkCall(self, server: Server, env: Dict[str, str]) -> None:
        """
        One request as wrk will send it: a tool result with the expected text.
        """
        status, _, answer = request(server.base, "POST", "/mcp", mcpHeaders(env["MCP_TOKEN"], env.get("MCP_SESSION")),
                                    env["MCP_BODY"].encode())
        if not toolCallOK(status, answer) or env["MCP_EXPECT"].encode() not in answer:
            raise BenchError(f"{server.name} answered {status} without {env['MCP_EXPECT']!r}: {answer[:300]!r}")

    def sdk(self) -> None:
        """
        The official MCP Python SDK (bench/sdk_server.py) on the headline
        request, C{tools/call calculate}, paired with the baseline like
        mcpsvc, so the two are compared through runs seconds apart.
        """
        from baseline import mint
        server = self.startScript("mcp-sdk", "sdk_server.py")
        proc, issuer = server.proc, server.base
        try:
            waitReady(server.base, proc, server.logPath)
            import mcp
            callEnv = toolEnv(mint(self.secret, issuer, issuer + "/mcp"), "calculate")
            self.checkCall(server, callEnv)
            self.extras.setdefault("idle_rss_kib", {})["mcp-sdk"] = server.rss
            self.extras["sdk_version"] = getattr(mcp, "__version__", None) or _distVersion("mcp")
            say(f"official MCP Python SDK {self.extras['sdk_version']}: pid {proc.pid}, idle RSS {fmtMiB(server.rss)}")
            self.warmup(server, CALL_LUA, "/mcp", callEnv)
            for c in self.o.connections:
                self.measure(server, "mcp-sdk", "tools/call calculate", c, CALL_LUA, "/mcp", lambda: callEnv,
                             paired=True)
        finally:
            self.stopServer(server)

    def scanLog(self, target: str, path: str) -> None:
        """
        Count error-level records and 5xx request events in the server log.
        """
        levels: Dict[str, int] = {}
        statuses: Dict[str, int] = {}
        texts: Dict[str, int] = {}
        closed = 0
        try:
            with open(path, errors="replace") as f:
                for line in f:
                    if not line.startswith("{"):
                        closed += _scanTextLine(line, levels, statuses, texts)
                        continue
                    if '"level": "info"' in line and '"status": 4' not in line and '"status": 5' not in line:
                        continue  # the request log of a successful request: most lines
                    try:
                        record = json.loads(line)
                    except ValueError:
                        continue
                    if not isinstance(record, dict):
                        continue
                    level = str(record.get("level"))
                    if level in ("warn", "error", "critical"):
                        levels[level] = levels.get(level, 0) + 1
                        text = str(record.get("text", ""))[:120]
                        texts[text] = texts.get(text, 0) + 1
                    if record.get("eventType") == "request" and record.get("status") == 499 \
                            and record.get("aborted"):
                        # Client closed before any response (wrk stops with
                        # requests in flight at the end of each run).
                        closed += 1
                    elif record.get("eventType") == "request" and isinstance(record.get("status"), int) \
                            and record["status"] >= 400:
                        key = f"{record.get('method')} {record.get('path')} {record['status']}"
                        statuses[key] = statuses.get(key, 0) + 1
        except OSError:
            return
        self.extras.setdefault("server_log", {})[target] = {"levels": levels, "non2xx": statuses,
                                                            "texts": dict(sorted(texts.items(), key=lambda kv: -kv[1])[:10]),
                                                            "client_closed": closed}
        if levels or statuses:
            self.note(f"{target} log: {levels} {statuses} {dict(list(texts.items())[:5])}")
        if closed:
            self.note(f"{target}: {closed} requests closed by the client before a response "
                      "(logged 499 aborted; wrk stopping with requests in flight)")


_TEXT_LINE = re.compile(r"^\S+ \[(?P<namespace>[^\]#]*)#(?P<level>\w+)\] (?P<text>.*)$")
_TEXT_REQUEST = re.compile(r"^(?P<method>\S+) (?P<path>\S+) (?P<status>\d{3}) ")


def _scanTextLine(line: str, levels: Dict[str, int], statuses: Dict[str, int], texts: Dict[str, int]) -> int:
    """
    L{Bench.scanLog} for one line of the text format (twistd's): count
    warnings and worse, and 4xx/5xx request lines; return 1 for a request
    the client closed before any response (status 499), else 0.
    """
    match = _TEXT_LINE.match(line.rstrip("\n"))
    if match is None:
        return 0
    level, text = match.group("level"), match.group("text")
    if level in ("warn", "error", "critical"):
        levels[level] = levels.get(level, 0) + 1
        texts[text[:120]] = texts.get(text[:120], 0) + 1
    request = _TEXT_REQUEST.match(text) if match.group("namespace").endswith("McpsvcRequest") else None
    if request is None or int(request.group("status")) < 400:
        return 0
    if request.group("status") == "499":
        return 1
    key = f"{request.group('method')} {request.group('path')} {request.group('status')}"
    statuses[key] = statuses.get(key, 0) + 1
    return 0


def _distVersion(name: str) -> Optional[str]:
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def fmtMiB(kib: Optional[int]) -> str:
    return "?" if kib is None else f"{kib / 1024:.1f} MiB"


# -- output --------------------------------------------------------------------

def table(bench: Bench) -> str:
    base = {p["connections"]: p["rps"] for p in bench.points if p["target"] == "baseline"}
    header = ["target", "flow", "conns", "req/s", "(min-max)", "p50 ms", "p99 ms", "failed", "RSS MiB", "/ baseline"]
    rows = []
    for p in bench.points:
        ratio = ""
        share = p.get("paired_ratio")
        if share is None and p["target"] != "baseline" and base.get(p["connections"]):
            share = p["rps"] / base[p["connections"]]
        if share is not None and p["flow"].startswith("tools/call") and p["target"] != "baseline":
            ratio = f"{100 * share:.0f} %"
        rows.append([p["target"], p["flow"], str(p["connections"]), f"{p['rps']:,.0f}",
                     f"{p['rps_min']:,.0f}-{p['rps_max']:,.0f}", f"{p['p50_ms']:.2f}", f"{p['p99_ms']:.2f}",
                     str(p["failed"]), "?" if p["rss_kib"] is None else f"{p['rss_kib'] / 1024:.1f}", ratio])
    widths = [max(len(r[i]) for r in rows + [header]) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
             for r in [header] + rows]
    lines.insert(1, "-" * len(lines[0]))
    out = "\n".join(lines) + "\n"
    colds = bench.extras.get("cold_start_ms", {})
    idles = bench.extras.get("idle_rss_kib", {})
    for name in sorted(set(colds) | set(idles)):
        cs = colds.get(name)
        out += (f"{name:<15} cold start (process start -> first OK tools/call): "
                f"{'n/a' if not cs else ', '.join(f'{c:.0f} ms' for c in cs)}"
                f"{'' if not cs or len(cs) < 2 else f' (median {statistics.median(cs):.0f} ms)'};"
                f"  idle RSS {fmtMiB(idles.get(name))}\n")
    sdk = {p["connections"]: p for p in bench.points if p["target"] == "mcp-sdk"}
    for p in bench.points:
        other = sdk.get(p["connections"])
        if other is None or p["target"] == "mcp-sdk" or p["flow"] != other["flow"]:
            continue
        line = (f"{p['target']} / official SDK, {p['flow']}, {p['connections']} connections: "
                f"{p['rps'] / other['rps']:.2f}x req/s")
        if p.get("paired_ratio") and other.get("paired_ratio"):
            line += f" ({p['paired_ratio'] / other['paired_ratio']:.2f}x through their baseline pairs)"
        out += line + "\n"
    floor = bench.extras.get("stack_rss_kib")
    if floor:
        out += ("idle RSS of the fixed stack alone (a python that only imports the libraries mcpsvc "
                f"serves with, see STACK): {fmtMiB(floor)}\n")
    return out


#: What mcpsvc cannot serve without: twistd and its reactor (with TLS),
#: twisted.web and its templates, Klein, pyjwt and cryptography, jsonschema,
#: prometheus_client, sqlite3. Importing only these gives the RSS floor
#: under mcpsvc's own code and state.
STACK = ("twisted.scripts.twistd", "twisted.internet.reactor", "twisted.web.server", "twisted.web.template",
         "klein", "jwt", "cryptography.hazmat.primitives.ciphers.aead", "jsonschema", "prometheus_client",
         "sqlite3")


def stackRSS() -> Optional[int]:
    """
    VmRSS (KiB) of a fresh interpreter of the venv that imported L{STACK}.
    """
    code = ("import sys\nfor m in sys.argv[1:]: __import__(m)\n"
            "print([l.split()[1] for l in open('/proc/self/status') if l.startswith('VmRSS:')][0])")
    try:
        out = subprocess.run([sys.executable, "-c", code, *STACK], capture_output=True, text=True, timeout=60)
        return int(out.stdout.strip())
    except (OSError, ValueError, subprocess.SubprocessError):
        return None


# -- profile -------------------------------------------------------------------

def ensurePySpy() -> str:
    path = os.path.join(VENV_BIN, "py-spy")
    if os.path.exists(path):
        return path
    say("installing py-spy into the venv ...")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "py-spy"], check=True, timeout=600)
    if not os.path.exists(path):
        raise BenchError("pip installed py-spy but there is no " + path)
    return path


FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>.*?)(?::(?P<line>\d+))?\)$")


def frameKey(frame: str) -> str:
    """
    C{"func (file:line)"} -> C{"func (file)"}: one entry per function.
    """
    match = FRAME.match(frame.strip())
    if not match:
        return frame.strip()
    path = match.group("file")
    for marker in ("site-packages/", "/lib/python3"):
        if marker in path:
            path = path.split(marker, 1)[1]
    if path.startswith(ROOT + "/"):
        path = path[len(ROOT) + 1:]
    return f"{match.group('func')} ({path})"


def readCollapsed(path: str) -> List[Tuple[List[str], int]]:
    stacks = []
    with open(path, errors="replace") as f:
        for line in f:
            line = line.rstrip("\n")
            stack, _, count = line.rpartition(" ")
            if stack and count.isdigit():
                stacks.append((stack.split(";"), int(count)))
    return stacks


THREAD = re.compile(r"^thread \((?:0x[0-9a-fA-F]+|\d+)\)(?:: .*)?$")


def splitThread(frames: List[str]) -> Tuple[str, List[str]]:
    """
    py-spy --threads puts C{"thread (0x...)"} (after any process frame) at
    the root of each stack; return it and the Python frames.
    """
    for i, f in enumerate(frames[:3]):
        if THREAD.match(f.strip()):
            return f.strip(), frames[i + 1:]
    return "thread (?)", frames


def _tops(stacks: List[Tuple[List[str], int]], top: int) -> List[str]:
    total = sum(c for _, c in stacks) or 1
    own: Dict[str, int] = {}
    cumulative: Dict[str, int] = {}
    for frames, count in stacks:
        if not frames:
            continue
        keys = [frameKey(f) for f in frames]
        own[keys[-1]] = own.get(keys[-1], 0) + count
        for k in set(keys):
            cumulative[k] = cumulative.get(k, 0) + count
    out = [f"{'own %':>7} {'cum %':>7}  function (file)   [top {top} by own time; % of these samples]"]
    for k, n in sorted(own.items(), key=lambda kv: -kv[1])[:top]:
        out.append(f"{100 * n / total:7.2f} {100 * cumulative[k] / total:7.2f}  {k}")
    ours = [(k, n) for k, n in cumulative.items() if "mcpsvc/" in k and "/test" not in k]
    out += [f"{'cum %':>7} {'own %':>7}  mcpsvc function (file)   [top 20 by cumulative time]"]
    for k, n in sorted(ours, key=lambda kv: -kv[1])[:20]:
        out.append(f"{100 * n / total:7.2f} {100 * own.get(k, 0) / total:7.2f}  {k}")
    return out


def profileSummary(stacks: List[Tuple[List[str], int]], rate: int, seconds: float, top: int = 25) -> str:
    """
    Own/cumulative time per function: for the reactor thread (the one that
    runs C{ReactorBase.mainLoop}: the one that has to go faster), then for
    all threads together.
    """
    byThread: Dict[str, List[Tuple[List[str], int]]] = {}
    for frames, count in stacks:
        thread, rest = splitThread(frames)
        byThread.setdefault(thread, []).append((rest, count))
    counts = {t: sum(c for _, c in s) for t, s in byThread.items()}
    reactor = max(byThread, key=lambda t: sum(c for f, c in byThread[t]
                                              if any("ReactorBase.mainLoop" in x for x in f)))
    expected = rate * seconds
    out = [f"{sum(counts.values())} samples at {rate} Hz over ~{seconds:.0f} s (py-spy drops the samples it "
           f"sees as idle), by thread: "
           + ", ".join(f"{t}{' (reactor)' if t == reactor else ''}: {n} (~{100 * n / expected:.0f} % of the run)"
                       for t, n in sorted(counts.items(), key=lambda kv: -kv[1]))]
    out += ["", "REACTOR THREAD"] + _tops(byThread[reactor], top)
    out += ["", "ALL THREADS"] + _tops([(splitThread(f)[1], c) for f, c in stacks], top)
    return "\n".join(out)


def flamegraphSVG(stacks: List[Tuple[List[str], int]], title: str, width: int = 1600) -> str:
    """
    A static flame graph (root at the bottom, hover a box for its name and
    share) from collapsed stacks.
    """
    tree: Dict[str, Any] = {"n": 0, "c": {}}
    for frames, count in stacks:
        node = tree
        node["n"] += count
        for f in frames:
            key = frameKey(f)
            node = node["c"].setdefault(key, {"n": 0, "c": {}})
            node["n"] += count
    total = tree["n"] or 1
    rowH, font = 16, 11
    boxes: List[Tuple[float, int, float, str, int]] = []
    depthMax = 0

    def walk(node: Dict[str, Any], x: float, depth: int) -> None:
        nonlocal depthMax
        for name, child in sorted(node["c"].items()):
            w = width * child["n"] / total
            if w >= 0.3:
                boxes.append((x, depth, w, name, child["n"]))
                depthMax = max(depthMax, depth)
                walk(child, x, depth + 1)
            x += w

    walk(tree, 0.0, 0)
    height = (depthMax + 1) * rowH + 40

    def esc(s: str) -> str:
        return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'font-family="monospace" font-size="{font}">',
             f'<rect width="100%" height="100%" fill="#fdfdf5"/>',
             f'<text x="4" y="16" font-size="13">{esc(title)} ({total} samples)</text>']
    for x, depth, w, name, n in boxes:
        y = height - (depth + 1) * rowH - 4
        h = int(hashlib.md5(name.encode()).hexdigest()[:4], 16)
        color = f"rgb({205 + h % 50},{80 + (h >> 4) % 120},{40 + (h >> 8) % 50})"
        if "mcpsvc/" in name:
            color = f"rgb({70 + h % 40},{150 + (h >> 4) % 60},{210 + (h >> 8) % 40})"
        label = name if w > 7 * len(name) else name[: max(0, int(w / 7) - 2)] + ".." if w > 30 else ""
        parts.append(f'<g><title>{esc(name)}: {n} samples, {100 * n / total:.2f} %</title>'
                     f'<rect x="{x:.1f}" y="{y}" width="{max(w - 0.5, 0.3):.1f}" height="{rowH - 1}" fill="{color}"/>'
                     + (f'<text x="{x + 2:.1f}" y="{y + rowH - 4}">{esc(label)}</text>' if label else "")
                     + "</g>")
    parts.append("</svg>")
    return "\n".join(parts)


def profile(bench: Bench, stamp: str) -> Dict[str, Any]:
    pyspy = ensurePySpy()
    store = [s for s in bench.o.stores.split(",") if s][0]
    port = freePort()
    bench.redis = None
    if store == "redis":
        ensureTool("redis-server", "redis-server")
        from mcpsvc.testing.redis import RedisServer

        bench.redis = RedisServer(os.path.join(bench.tmp, "redis"), appendonly=False).start()
        PROCS.extra.append(bench.redis)
        bench.pin.pinPid(bench.redis.process.pid)
    sessions = bench.o.profile_flow == "tools/call+session"
    server = bench.startMcpsvc(store, port, sessions=sessions)
    try:
        client = register(server.base, bench.iat)
        access = authorize(server.base, client)["access_token"]
        env = toolEnv(access, bench.o.tools[0], openSession(server.base, access) if sessions else None)
        bench.checkCall(server, env)
        bench.warmup(server, CALL_LUA, "/mcp", env)
        raw = os.path.join(RESULTS, f"{stamp}-profile-{store}.txt")
        svg = os.path.join(RESULTS, f"{stamp}-profile-{store}.svg")
        duration = bench.o.profile_duration
        argv = bench.pin.prefix("client") + [
            pyspy, "record", "--pid", str(server.proc.pid), "--rate", str(bench.o.profile_rate),
            "--duration", str(int(duration) + 1), "--format", "raw", "--output", raw, "--threads"]
        if bench.workersArgs:
            argv.append("--subprocesses")
        spyLog = os.path.join(bench.tmp, "py-spy.log")
        spy = PROCS.start(argv, dict(os.environ), bench.tmp, spyLog)
        time.sleep(0.5)  # let py-spy attach before the load starts
        if spy.poll() is not None:
            raise BenchError(f"py-spy exited with {spy.returncode}:\n{tail(spyLog)}")
        result = runWrk(bench.pin, server.base + "/mcp", CALL_LUA, 64, duration, env)
        say(f"  under py-spy: {result['rps']:.1f} req/s, p99 {result['p99_us'] / 1000:.2f} ms, "
            f"failed {result['failed']}")
        try:
            spy.wait(duration + 30)
        except subprocess.TimeoutExpired:
            PROCS.stop(spy)
        if spy.returncode != 0 or not os.path.exists(raw):
            raise BenchError(f"py-spy failed ({spy.returncode}):\n{tail(spyLog)}")
        PROCS.stop(spy)
        stacks = readCollapsed(raw)
        with open(svg, "w") as f:
            f.write(flamegraphSVG(stacks, f"mcpsvc ({store}) {bench.o.profile_flow}, 64 connections, {duration:.0f} s"))
        summary = profileSummary(stacks, bench.o.profile_rate, duration)
        say(f"\nprofile: {svg}\n         {raw} (collapsed stacks: open it in https://www.speedscope.app)\n")
        say(summary)
        return {"raw": raw, "svg": svg, "wrk": result, "summary": summary}
    finally:
        bench.stopServer(server)


# -- main ----------------------------------------------------------------------

def supportsWorkers() -> bool:
    done = subprocess.run([TWISTD, "mcpsvc", "--help"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          timeout=60, cwd=tempfile.gettempdir(), env={"PATH": os.environ.get("PATH", "")})
    return "--workers" in done.stdout.decode(errors="replace")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="2 s per point, once (a smoke test)")
    parser.add_argument("--duration", type=float, help="seconds per point (default 10; --quick 2)")
    parser.add_argument("--repeat", type=int, help="runs per point (default 3; --quick 1)")
    parser.add_argument("--warmup", type=float, help="warm-up seconds at 64 connections (default 3; --quick 1)")
    parser.add_argument("--connections", default="1,64", help="comma list (default 1,64)")
    parser.add_argument("--cold-starts", type=int, help="cold starts to measure per store (default 3; --quick 1)")
    parser.add_argument("--stores", default="sqlite,redis", help="mcpsvc stores to run (default sqlite,redis)")
    parser.add_argument("--only", help="comma list of flows: tools/call, tools/call+session, initialize, "
                                       "refresh, refresh_grace, register (default: all but refresh_grace, which needs "
                                       "--server-env REFRESH_GRACE_REPLAYS=100 and still ends its grant after 100)")
    parser.add_argument("--no-baseline", action="store_true")
    parser.add_argument("--tools", default=",".join(TOOLS),
                        help="tools for the tools/call flows, the first is the headline (also used for "
                             f"tools/call+session); default {','.join(TOOLS)}")
    parser.add_argument("--no-sdk", action="store_true",
                        help="skip the official MCP Python SDK's row (bench/sdk_server.py)")
    parser.add_argument("--server-env", action="append", default=[], metavar="NAME=VALUE",
                        help="extra environment for the mcpsvc processes (repeatable), for experiments: "
                             "e.g. --server-env LOG_LEVEL=warn")
    parser.add_argument("--workers", type=int, help="mcpsvc worker processes (when twistd mcpsvc supports it)")
    parser.add_argument("--log-format", default="text", choices=["text", "json"],
                        help="mcpsvc LOG_FORMAT (default text, the default: twistd's format on standard output, "
                             "to a file)")
    parser.add_argument("--log-level", default="info",
                        help="mcpsvc LOG_LEVEL (default info, the production default: every request is logged, "
                             "to a file)")
    parser.add_argument("--server-cpus", default="0", help="taskset CPU list for the servers (default 0; "
                                                            "'none': no pinning)")
    parser.add_argument("--client-cpus", default="1", help="taskset CPU list for wrk (default 1)")
    parser.add_argument("--profile", action="store_true",
                        help="instead of the benchmark: py-spy mcpsvc (the first of --stores) during one "
                             "64-connection run")
    parser.add_argument("--profile-flow", default="tools/call", choices=["tools/call", "tools/call+session"],
                        help="what --profile drives (default tools/call), with the first of --tools")
    parser.add_argument("--profile-duration", type=float, default=10.0)
    parser.add_argument("--profile-rate", type=int, default=100, help="py-spy samples per second (default 100)")
    o = parser.parse_args()
    o.duration = o.duration or (2.0 if o.quick else 10.0)
    o.repeat = o.repeat or (1 if o.quick else 3)
    o.warmup = o.warmup or (1.0 if o.quick else 3.0)
    o.cold_starts = o.cold_starts or (1 if o.quick else 3)
    o.connections = [int(c) for c in o.connections.split(",")]
    o.only = None if not o.only else set(o.only.split(","))
    o.tools = [t for t in o.tools.split(",") if t]
    unknown = [t for t in o.tools if t not in TOOLS]
    if unknown or not o.tools:
        parser.error(f"--tools takes a comma list of {', '.join(TOOLS)}")
    pairs = [item.partition("=") for item in o.server_env]
    bad = [name for name, eq, _ in pairs if not eq or not name]
    if bad:
        parser.error(f"--server-env takes NAME=VALUE, not {bad[0]!r}")
    o.server_env = {name: value for name, _, value in pairs}

    signal.signal(signal.SIGTERM, _onSignal)
    os.makedirs(RESULTS, exist_ok=True)
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    bench: Optional[Bench] = None
    try:
        ensureTool("wrk", "wrk")
        bench = Bench(o)
        if o.workers and o.workers > 1:
            if supportsWorkers():
                bench.workersArgs = ["--workers", str(o.workers)]
                say(f"workers: {o.workers} (all pinned to CPUs {o.server_cpus})")
            else:
                say("workers: not supported yet")
        if o.profile:
            report = profile(bench, stamp)
            path = os.path.join(RESULTS, f"{stamp}-profile.json")
            with open(path, "w") as f:
                json.dump(report, f, indent=2)
            return 0
        stores = [s for s in o.stores.split(",") if s]
        if "redis" in stores and not ensureTool("redis-server", "redis-server", required=False):
            say("redis-server unavailable: skipping the Redis store")
            stores.remove("redis")
        say(f"mcpsvc bench: {o.duration:g} s per point x {o.repeat}, connections {o.connections}, "
            f"warm-up {o.warmup:g} s; server CPUs {o.server_cpus}, wrk CPUs {o.client_cpus}; "
            f"LOG_FORMAT={o.log_format}, LOG_LEVEL={o.log_level}; rate limits raised for the bench: "
            + ", ".join(f"{k}={v}" for k, v in RATE_LIMITS.items()))
        say(f"scratch directory (logs, SQLite file): {bench.tmp}")
        bench.extras["stack_rss_kib"] = stackRSS()
        if not o.no_baseline:
            bench.baseline()
        if not o.no_sdk and (o.only is None or "tools/call" in o.only):
            bench.sdk()
        for store in stores:
            if store == "redis":
                from mcpsvc.testing.redis import RedisServer
                bench.redis = RedisServer(os.path.join(bench.tmp, "redis"), appendonly=False).start()
                PROCS.extra.append(bench.redis)
                bench.pin.pinPid(bench.redis.process.pid)
            try:
                bench.mcpsvc(store)
            finally:
                if store == "redis" and bench.redis is not None:
                    bench.redis.stop()
                    PROCS.extra.remove(bench.redis)
                    bench.redis = None
        bench.stopBaseline()
        out = table(bench)
        say("\n" + out)
        say("refresh (rotate): every request uses a never-used refresh token (chained in Lua, one family per "
            "connection): real rotations.")
        report = {
            "timestamp": stamp, "options": {k: (sorted(v) if isinstance(v, set) else v) for k, v in vars(o).items()},
            "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": sys.version.split()[0],
                        "loadavg_end": os.getloadavg()},
            "rate_limits": RATE_LIMITS, "points": bench.points, "extras": bench.extras, "notes": bench.notes,
            "table": out,
        }
        path = os.path.join(RESULTS, f"{stamp}.json")
        with open(path, "w") as f:
            json.dump(report, f, indent=2)
        say(f"results: {path}")
        return 0
    except BenchError as e:
        say(f"bench failed: {e}")
        return 1
    finally:
        PROCS.stopAll()
        if bench is not None and not os.environ.get("BENCH_KEEP_TMP"):
            shutil.rmtree(bench.tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
