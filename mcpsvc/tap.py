# -*- test-case-name: mcpsvc.test.test_tap -*-
"""
C{twistd mcpsvc}: command-line options, then configuration, then the
service tree. Nothing here performs network I/O.
"""

from __future__ import annotations

import os
import sys
from typing import Any, Dict, List, Mapping, Optional, Tuple

from twisted.application.service import IService
from twisted.python import usage

from mcpsvc.config import (
    Config,
    ConfigError,
    ensureDevelopmentSecrets,
    loadConfig,
    readEnvironment,
)
from mcpsvc.storage.hashing import newSecret

__all__ = ["Options", "makeService", "configFromOptions", "OPTION_VARIABLES"]

#: Command-line options that override an environment variable.
OPTION_VARIABLES: Dict[str, str] = {
    "port": "PORT",
    "host": "HOST",
    "server-url": "SERVER_URL",
    "environment": "ENVIRONMENT",
    "store": "STORE",
    "store-path": "STORE_PATH",
    "redis-url": "REDIS_URL",
    "deployment-type": "DEPLOYMENT_TYPE",
    "log-level": "LOG_LEVEL",
    "log-format": "LOG_FORMAT",
    "auth-mode": "AUTH_MODE",
    "authorize-mode": "AUTHORIZE_MODE",
    "sessions": "SESSIONS",
    "tool-packs": "TOOL_PACKS",
    "shutdown-timeout": "SHUTDOWN_TIMEOUT",
    "var-dir": "VAR_DIR",
}


class Options(usage.Options):
    """
    Options of C{twistd mcpsvc}. Each overrides the environment variable of
    the same meaning (see C{.env.example}); secrets are never options, since
    argv is visible to every user of the machine.
    """

    synopsis = "[options]"
    longdesc = (
        "Serve the MCP endpoint and the OAuth 2.1 authorization server. "
        "Configuration comes from the environment and .env; these options "
        "override it."
    )

    optParameters = [
        ["env-file", None, ".env", "The .env file to read (if it exists)."],
        ["port", "p", None, "Port of the default listener (PORT)."],
        ["host", None, None, "Interface of the default listener (HOST)."],
        ["server-url", None, None, "Public base URL (SERVER_URL)."],
        ["environment", None, None, "development or production (ENVIRONMENT)."],
        ["store", None, None, "sqlite, redis or memory (STORE)."],
        ["store-path", None, None, "SQLite database file (STORE_PATH)."],
        ["redis-url", None, None, "Redis URL (REDIS_URL)."],
        ["deployment-type", None, None, "single-server or multi-server."],
        ["log-level", None, None, "debug, info, warn, error, critical."],
        ["log-format", None, None, "text or json (LOG_FORMAT)."],
        ["auth-mode", None, None, "oauth or none (AUTH_MODE)."],
        ["authorize-mode", None, None, "consent, login or auto."],
        ["sessions", None, None, "on or off (SESSIONS)."],
        ["tool-packs", None, None, "Comma list of tool packs (TOOL_PACKS)."],
        ["shutdown-timeout", None, None, "Seconds to drain on stop."],
        ["var-dir", None, None, "Directory for generated development state."],
        ["workers", None, 1,
         "Worker processes sharing the listening socket(s) (tcp: listeners; "
         "SQLite or Redis store).", int],
    ]

    compData = usage.Completions(
        optActions={
            "env-file": usage.CompleteFiles("*"),
            "store-path": usage.CompleteFiles("*"),
            "environment": usage.CompleteList(["development", "production"]),
            "store": usage.CompleteList(["sqlite", "redis", "memory"]),
        }
    )

    def __init__(self) -> None:
        super().__init__()
        self["listen"] = []
        self["metrics-listen"] = []

    def opt_version(self) -> None:
        """
        Print the version of mcpsvc (and of Twisted and Python) and exit.
        """
        from mcpsvc.installation import versionText

        sys.stdout.write(versionText() + "\n")
        sys.stdout.flush()
        raise SystemExit(0)

    def opt_listen(self, description: str) -> None:
        """
        Add a strports description to listen on (repeatable), e.g.
        tcp:3000:interface=127.0.0.1, ssl:443:privateKey=key.pem:certKey=cert.pem,
        systemd:domain=INET:index=0. Default: tcp:$PORT:interface=$HOST.
        """
        self["listen"].append(description)

    def opt_metrics_listen(self, description: str) -> None:
        """
        Serve /metrics, without a token, on this strports description too
        (repeatable), e.g. tcp:9100:interface=127.0.0.1.
        """
        self["metrics-listen"].append(description)

    def overrides(self) -> Dict[str, str]:
        return {
            variable: str(self[option])
            for option, variable in OPTION_VARIABLES.items()
            if self[option] is not None
        }

    def postOptions(self) -> None:
        # Choose the log observer now: twistd builds its logger right after
        # parsing, before makeService runs.
        raw = readEnvironment(os.environ, self["env-file"])
        raw.update(self.overrides())
        parent = getattr(self, "parent", None)
        if parent is not None and not parent.get("logger"):
            from mcpsvc import logs

            logs.configuredLevel = raw.get("LOG_LEVEL") or None
            # twistd resolves these names itself, after our postOptions.
            if (raw.get("LOG_FORMAT") or "text").strip().lower() == "json":
                parent["logger"] = "mcpsvc.logs.jsonObserver"
            elif parent.get("logfile") in (None, "-") and parent.get("nodaemon"):
                # twistd's text format on standard output, buffered per
                # reactor turn; --logfile keeps twistd's own file handling.
                parent["logger"] = "mcpsvc.logs.textObserver"


def configFromOptions(
    options: Mapping[str, Any], environ: Optional[Mapping[str, str]] = None
) -> Config:
    """
    Build the validated L{Config}: C{.env}, then the environment, then the
    options; generate development secrets where allowed.

    @raise ConfigError: listing every problem.
    """
    raw = readEnvironment(os.environ if environ is None else environ, options.get("env-file"))
    overrides = options.overrides() if hasattr(options, "overrides") else {}
    raw.update(overrides)
    raw, notices = ensureDevelopmentSecrets(raw, newSecret)
    listen: Tuple[str, ...] = tuple(options.get("listen") or ())
    config = loadConfig(raw, listen=listen)
    return config.replace(
        notices=tuple(notices) + config.notices, metricsListen=tuple(options.get("metrics-listen") or ())
    )


def makeService(options: Options) -> IService:
    """
    The twistd entry point: options to config to service tree. Invalid
    configuration prints every error and exits non-zero before anything
    listens.
    """
    from twisted.internet import reactor

    try:
        config = configFromOptions(options)
    except ConfigError as e:
        _printErrors(e.errors)
        raise SystemExit(1)
    from mcpsvc import workers

    count = options.get("workers")
    count = 1 if count is None else int(count)
    if count < 1:
        _printErrors(["--workers must be at least 1"])
        raise SystemExit(1)
    if workers.workerIndex() is not None:
        # A worker of --workers N (the parent's child): serve the sockets
        # the parent bound and passed down.
        config = config.replace(listen=workers.workerListen())
    elif count > 1:
        # The parent: a supervisor, no application (the dev secrets above
        # are in VAR_DIR files, which the workers read).
        try:
            workers.checkWorkers(config, count)
        except workers.WorkerError as e:
            _printErrors([str(e)])
            raise SystemExit(1)
        return workers.WorkerSupervisor(
            count, config.listen, reactor=reactor, argv=sys.argv,
            drainTimeout=float(config.shutdownTimeout),
        )
    from mcpsvc.service import buildService

    service = buildService(config, reactor=reactor, handleSignals=True)
    watch = workers.lifeline(reactor)
    if watch is not None:
        watch.setServiceParent(service)
    return service


def _printErrors(errors: List[str]) -> None:
    sys.stderr.write("mcpsvc: invalid configuration:\n")
    for error in errors:
        sys.stderr.write(f"  - {error}\n")
    sys.stderr.flush()
