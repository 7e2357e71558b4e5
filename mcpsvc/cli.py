# -*- test-case-name: mcpsvc.test.test_cli -*-
"""
The C{mcpsvc} admin command.

    mcpsvc check-config            validate the configuration, print a summary
    mcpsvc gen-secret [--bytes N]  print a fresh random secret
    mcpsvc clients ...             manage OAuth clients (see --help)
    mcpsvc tokens revoke TOKEN     revoke an access or refresh token
    mcpsvc keys rotate|list        publish a new signing key (it signs after a delay), list keys
    mcpsvc users add|passwd|remove|list   accounts of AUTHORIZE_MODE=login
    mcpsvc grants list|revoke      remembered approvals (REMEMBER_APPROVALS=on)

Commands that touch the store open it directly (SQLite or Redis as
configured) and close it when done.
"""

from __future__ import annotations

import json
import sys
from typing import Any, Callable, Dict, List, Optional, Sequence, TextIO

from twisted.python import usage

from mcpsvc.config import ConfigError, summary
from mcpsvc.installation import pluginProblem, versionText
from mcpsvc.storage.hashing import newSecret

__all__ = ["CommandGroup", "main", "run"]


class _CommandOptions(usage.Options):
    optParameters = [["env-file", None, ".env", "The .env file to read (if it exists)."]]

    def overrides(self) -> Dict[str, str]:
        return {}


class CheckConfigOptions(_CommandOptions):
    synopsis = "[--env-file FILE]"
    longdesc = "Validate the configuration exactly as twistd mcpsvc does and print a summary."


class GenSecretOptions(usage.Options):
    synopsis = "[--bytes N]"
    optParameters = [["bytes", "b", 32, "Bytes of entropy.", int]]


_SUBCOMMANDS: List[Any] = [
    ["check-config", None, CheckConfigOptions, "Validate the configuration."],
    ["gen-secret", None, GenSecretOptions, "Print a fresh random secret."],
]
_HANDLERS: Dict[str, Callable[[Any, TextIO, TextIO], int]] = {}


class CommandGroup(usage.Options):
    """
    The options of a command made of subcommands (C{mcpsvc clients add},
    C{mcpsvc keys list}, ...): one of them is required.

    @cvar noun: the group's name, for the error (C{"clients"}).
    """

    noun = "a"

    def postOptions(self) -> None:
        if self.subCommand is None:
            raise usage.UsageError(f"a {self.noun} command is required")


def subcommand(name: str, options: type, help: str) -> Callable[[Callable[..., int]], Callable[..., int]]:
    """
    Register a subcommand: C{options} is its L{usage.Options} class and the
    decorated function C{(options, out, err) -> exit status} runs it.
    """

    def register(f: Callable[..., int]) -> Callable[..., int]:
        _SUBCOMMANDS.append([name, None, options, help])
        _HANDLERS[name] = f
        return f

    return register


class Options(usage.Options):
    synopsis = "mcpsvc COMMAND [options]"

    #: Where C{--version} writes (L{run} sets it).
    out: TextIO = sys.stdout

    def opt_version(self) -> None:
        """
        Print the version of mcpsvc (and of Twisted and Python) and exit.
        """
        self.out.write(versionText() + "\n")
        raise SystemExit(0)

    @property
    def subCommands(self) -> List[Any]:  # type: ignore[override]
        _loadCommands()
        return _SUBCOMMANDS

    def postOptions(self) -> None:
        if self.subCommand is None:
            raise usage.UsageError("a command is required")


def _loadCommands() -> None:
    """
    Import the modules that register more subcommands.
    """
    for module in ("mcpsvc.admin", "mcpsvc.authpage.cli"):
        try:
            __import__(module)
        except ImportError as e:  # pragma: no cover - during bring-up
            if e.name != module:
                raise


def checkConfig(options: Any, out: TextIO, err: TextIO) -> int:
    from mcpsvc.tap import configFromOptions

    try:
        config = configFromOptions(options)
    except ConfigError as e:
        err.write("Configuration is invalid:\n")
        for error in e.errors:
            err.write(f"  - {error}\n")
        return 1
    for notice in config.notices:
        err.write(f"warning: {notice}\n")
    generatedSecret = any(n.startswith("JWT_SECRET was not set") for n in config.notices)
    if config.deploymentType == "multi-server" and generatedSecret and not (
        config.jwtPrivateKeyFile or config.jwtKeysDir
    ):
        err.write(
            "warning: multi-server deployment without a fixed signing key: "
            "every instance must share JWT_SECRET or key files\n"
        )
    if config.store == "memory":
        err.write("warning: STORE=memory loses every client and token on restart\n")
    out.write("Configuration is valid.\n")
    out.write(json.dumps(summary(config), indent=2) + "\n")
    return 0


def genSecret(options: Any, out: TextIO, err: TextIO) -> int:
    nbytes = options["bytes"]
    if nbytes < 16:
        err.write("--bytes must be at least 16\n")
        return 1
    out.write(newSecret(nbytes) + "\n")
    return 0


_HANDLERS["check-config"] = checkConfig
_HANDLERS["gen-secret"] = genSecret


def run(
    argv: Sequence[str],
    out: TextIO = sys.stdout,
    err: TextIO = sys.stderr,
    checkPlugin: Callable[[], Optional[str]] = pluginProblem,
) -> int:
    """
    Run the admin command C{argv} (without the program name); return the
    exit status. First, when this installation cannot serve
    C{twistd mcpsvc} (C{checkPlugin}, L{pluginProblem}), say so on C{err}
    with the fix; the command runs all the same.
    """
    problem = checkPlugin()
    if problem is not None:
        err.write("mcpsvc: warning: " + problem + "\n")
    options = Options()
    options.out = out
    try:
        options.parseOptions(list(argv))
    except usage.UsageError as e:
        err.write(f"{options}\nmcpsvc: {e}\n")
        return 2
    handler = _HANDLERS[options.subCommand]
    return handler(options.subOptions, out, err)


def main(argv: Optional[Sequence[str]] = None) -> None:
    sys.exit(run(sys.argv[1:] if argv is None else argv))
