"""
Tests of C{deploy/supervisor/mcpsvc.conf}: parsed as supervisord's INI
dialect, and run for real by a supervisord (Debian package C{supervisor})
in the foreground: start, restart after a crash, clean stop on SIGTERM.
"""

from __future__ import annotations

import configparser
import os
import re
import shlex
import shutil
import signal
import subprocess
import tempfile
import time

from twisted.trial.unittest import SynchronousTestCase

from tests.process import SECRET, TWISTD, McpsvcProcess
from tests.test_deploy import SHIPPED_TWISTD, SHUTDOWN_TIMEOUT_DEFAULT, WorkdirMixin, getJSON, read

SUPERVISORD_CONF = """\
[unix_http_server]
file={sock}
chmod=0700

[supervisord]
nodaemon=true
logfile=/dev/null
logfile_maxbytes=0
pidfile={dir}/supervisord.pid
childlogdir={dir}

[rpcinterface:supervisor]
supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface

[supervisorctl]
serverurl=unix://{sock}

"""


def renderProgram(shipped: str, workdir: str) -> str:
    """
    The shipped program block for a test run: this virtualenv's twistd on a
    kernel-chosen loopback port, run where the test says, as the current
    user, logging to supervisord's stdout (our pipe), considered started
    after 1 s instead of 5. Everything else is as shipped.
    """
    rewrites = [
        (r"^command=/opt/mcpsvc/\.venv/bin/twistd (.*)$",
         f"command={TWISTD} \\1 --listen tcp:0:interface=127.0.0.1"),
        (r"^directory=.*$", f"directory={workdir}"),
        (r"^user=.*\n", ""),
        (r"^startsecs=.*$", "startsecs=1"),
        (r"^stdout_logfile=.*$", "stdout_logfile=/dev/stdout"),
        (r"^stdout_logfile_maxbytes=.*$", "stdout_logfile_maxbytes=0"),
        (r"^stdout_logfile_backups=.*$", "stdout_logfile_backups=0"),
    ]
    text = shipped
    for pattern, replacement in rewrites:
        text, n = re.subn(pattern, replacement, text, flags=re.MULTILINE)
        assert n == 1, f"deploy/supervisor/mcpsvc.conf: {pattern!r} matched {n} lines, expected 1"
    return text


class SupervisordProcess(McpsvcProcess):
    """
    supervisord in the foreground running the shipped program block; its
    output (and mcpsvc's, through C{/dev/stdout}) is read like mcpsvc's.
    """

    def __init__(self, directory: str, socketPath: str) -> None:
        super().__init__(directory, env={"JWT_SECRET": SECRET})
        self.conf = os.path.join(directory, "supervisord.conf")
        with open(self.conf, "w") as f:
            f.write(SUPERVISORD_CONF.format(dir=directory, sock=socketPath))
            f.write(renderProgram(read("supervisor", "mcpsvc.conf"), directory))

    def start(self, expectListening: bool = True, timeout: float = 30.0) -> "McpsvcProcess":
        binary = shutil.which("supervisord") or shutil.which("supervisord", path="/usr/sbin:/usr/bin")
        if binary is None:
            raise AssertionError("supervisord is not installed (Debian package supervisor; scripts/test.sh installs it)")
        self.proc = subprocess.Popen(
            [binary, "-c", self.conf], cwd=self.workdir, env=self.env,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )
        return self

    def ctl(self, *args: str) -> str:
        binary = shutil.which("supervisorctl") or shutil.which("supervisorctl", path="/usr/sbin:/usr/bin")
        assert binary is not None
        result = subprocess.run([binary, "-c", self.conf, *args], capture_output=True, text=True, timeout=60)
        return result.stdout + result.stderr

    def waitForLine(self, needle: str, timeout: float = 30.0) -> str:
        for line in self.lines:
            if needle in line:
                return line
        deadline = time.monotonic() + timeout
        while True:
            line = self._readLine(deadline)
            if line is None or line == "":
                raise AssertionError(f"no {needle!r} from supervisord; output:\n" + "\n".join(self.lines[-40:]))
            if needle in line:
                return line


class SupervisorTests(WorkdirMixin, SynchronousTestCase):
    """
    C{deploy/supervisor/mcpsvc.conf}: a program block supervisord accepts
    and runs as intended.
    """

    def test_programBlock(self) -> None:
        """
        The block parses as supervisord's INI dialect and runs
        C{twistd --pidfile= -n mcpsvc} as a dedicated user, stops it with
        TERM and waits longer than the drain, and restarts it after a crash.
        """
        parser = configparser.RawConfigParser(inline_comment_prefixes=(";",), strict=True)
        parser.read_string(read("supervisor", "mcpsvc.conf"))
        self.assertEqual(parser.sections(), ["program:mcpsvc"])
        program = parser["program:mcpsvc"]
        self.assertEqual(shlex.split(program["command"]), [SHIPPED_TWISTD, "--pidfile=", "-n", "mcpsvc"])
        self.assertEqual(program["stopsignal"], "TERM")
        self.assertGreater(int(program["stopwaitsecs"]), SHUTDOWN_TIMEOUT_DEFAULT + 5)
        self.assertIn(program["autorestart"], ("true", "unexpected"))
        self.assertEqual(program["exitcodes"], "0")
        self.assertNotIn(program["user"], ("root", "0"))
        self.assertEqual(program["directory"], "/var/lib/mcpsvc")
        self.assertIn('LOG_FORMAT="json"', program["environment"])
        self.assertEqual(program["stopasgroup"], "true")

    def test_supervisordRunsIt(self) -> None:
        """
        A real supervisord running the block starts mcpsvc, restarts it
        after it is killed, and stops it with SIGTERM: mcpsvc drains, exits
        0 and supervisord records a clean stop (not a SIGKILL).
        """
        # A short path: the trial temporary directory is too deep for AF_UNIX.
        short = tempfile.mkdtemp(prefix="mcpsvc-sv-")
        self.addCleanup(shutil.rmtree, short, True)
        supervisor = SupervisordProcess(self.workdir(), os.path.join(short, "supervisor.sock"))
        self.addCleanup(supervisor.kill)
        self.addCleanup(supervisor.stop)
        supervisor.start()
        first = supervisor.waitFor(lambda r: "listening on" in r.get("text", ""))
        port = int(str(first["address"]).rsplit(":", 1)[1])
        status, body = getJSON(f"http://127.0.0.1:{port}/health")
        self.assertEqual((status, body["status"]), (200, "healthy"))  # type: ignore[index]
        supervisor.waitForLine("mcpsvc entered RUNNING state")

        pid = int(supervisor.ctl("pid", "mcpsvc").strip())
        os.kill(pid, signal.SIGKILL)
        supervisor.waitForLine("exited: mcpsvc (terminated by SIGKILL; not expected)")
        second = supervisor.waitFor(lambda r: "listening on" in r.get("text", "") and r is not first)
        port = int(str(second["address"]).rsplit(":", 1)[1])
        self.assertEqual(getJSON(f"http://127.0.0.1:{port}/health")[0], 200)

        self.assertIn("mcpsvc: stopped", supervisor.ctl("stop", "mcpsvc"))
        supervisor.waitFor(lambda r: r.get("text") == "mcpsvc stopped")
        supervisor.waitForLine("stopped: mcpsvc (exit status 0)")
        self.assertNotIn("SIGKILL", supervisor.lines[-1])
