# -*- test-case-name: mcpsvc.authpage.test.test_cli -*-
"""
C{mcpsvc users ...} (the accounts of C{AUTHORIZE_MODE=login}) and
C{mcpsvc grants ...} (live authorization grants, which are also what a
remembered approval rests on).

    mcpsvc users add NAME        create an account (password from stdin or a prompt)
    mcpsvc users passwd NAME     set a new password (ends its sign-ins)
    mcpsvc users remove NAME     delete an account (ends its sign-ins)
    mcpsvc users list            list account names
    mcpsvc grants list [--client ID] [--subject S] [--json]
    mcpsvc grants revoke GRANT_ID | --subject S [--client ID]

Passwords are never taken from the command line (argv is visible in
C{ps}): with a terminal, C{users add|passwd} prompt twice; otherwise they
read one line from standard input.
"""

from __future__ import annotations

import getpass
import json
import os
import sys
from typing import Any, Dict, List, Optional, TextIO

from twisted.python import usage

from mcpsvc.cli import CommandGroup, subcommand

__all__: List[str] = []


def _now() -> float:
    """
    The current time, from the reactor (as everywhere else in mcpsvc).
    """
    from twisted.internet import reactor

    return float(reactor.seconds())  # type: ignore[attr-defined]


class _UsersOptions(usage.Options):
    optParameters = [
        ["env-file", None, ".env", "The .env file to read (if it exists)."],
        ["users-file", None, None, "The accounts file (default: LOGIN_USERS_FILE)."],
    ]


class _NameOptions(_UsersOptions):
    synopsis = "NAME"

    def parseArgs(self, name: str) -> None:
        self["name"] = name


class UsersOptions(CommandGroup):
    noun = "users"
    synopsis = "add|passwd|remove|list"
    subCommands = [
        ["add", None, _NameOptions, "Create an account; reads the password from stdin or a prompt."],
        ["passwd", None, _NameOptions, "Set an account's password (ends its sign-ins)."],
        ["remove", None, _NameOptions, "Delete an account."],
        ["list", None, _UsersOptions, "List account names."],
    ]


def usersFile(options: Any) -> str:
    """
    The accounts file: C{--users-file}, else C{LOGIN_USERS_FILE} from the
    environment or the C{.env} file, else the default.
    """
    if options["users-file"]:
        return options["users-file"]  # type: ignore[no-any-return]
    from mcpsvc.config import VARIABLES, readEnvironment

    raw = readEnvironment(os.environ, options["env-file"])
    return raw.get("LOGIN_USERS_FILE") or VARIABLES["LOGIN_USERS_FILE"][0] or "./var/users.json"


def readPassword(err: TextIO, stdin: Optional[TextIO] = None) -> Optional[str]:
    """
    A new password: prompted twice on a terminal, else the first line of
    standard input. C{None} (after saying why) if the two differ or none
    was given.
    """
    stdin = stdin if stdin is not None else sys.stdin
    if stdin.isatty():
        first = getpass.getpass("Password: ")
        if getpass.getpass("Again: ") != first:
            err.write("The passwords differ\n")
            return None
        password = first
    else:
        password = stdin.readline().rstrip("\r\n")
    if not password:
        err.write("No password given\n")
        return None
    return password


@subcommand("users", UsersOptions, "Manage the local accounts of AUTHORIZE_MODE=login.")
def usersCommand(options: Any, out: TextIO, err: TextIO) -> int:
    from mcpsvc.authpage import users

    sub = options.subCommand
    subOptions = options.subOptions
    path = usersFile(subOptions)
    try:
        if sub == "list":
            names = users.listUsers(path)
            for name in names:
                out.write(name + "\n")
            out.write(f"{len(names)} account(s) in {path}\n")
            return 0
        name = subOptions["name"]
        if sub == "remove":
            removed = users.removeUser(path, name)
            out.write(f"Removed account {removed}\n")
            return 0
        if sub == "add" and users.normalizeName(name) is None:
            users.addUser(path, name, "", 0)  # raises the naming error
        password = readPassword(err)
        if password is None:
            return 1
        if sub == "add":
            added = users.addUser(path, name, password, _now())
            out.write(f"Added account {added} to {path}\n")
        else:
            changed = users.setPassword(path, name, password, _now())
            out.write(f"Changed the password of {changed}; its sign-ins have ended\n")
        return 0
    except users.UsersError as e:
        err.write(f"{e}\n")
        return 1


# --------------------------------------------------------------------------
# grants


class _StoreOptions(usage.Options):
    optParameters = [["env-file", None, ".env", "The .env file to read (if it exists)."]]

    def overrides(self) -> Dict[str, str]:
        return {}


class GrantsListOptions(_StoreOptions):
    optFlags = [["json", None, "Print JSON."]]
    optParameters = _StoreOptions.optParameters + [
        ["client", None, None, "Only this client's grants."],
        ["subject", None, None, "Only this subject's grants (an account name in login mode)."],
    ]


class GrantsRevokeOptions(_StoreOptions):
    synopsis = "GRANT_ID | --subject SUBJECT [--client CLIENT_ID]"
    optParameters = _StoreOptions.optParameters + [
        ["client", None, None, "With --subject: only this client's grants."],
        ["subject", None, None, "Revoke every grant of this subject."],
    ]

    def parseArgs(self, grantID: Optional[str] = None) -> None:
        self["grant"] = grantID

    def postOptions(self) -> None:
        if bool(self["grant"]) == bool(self["subject"]):
            raise usage.UsageError("give a GRANT_ID or --subject (not both)")


class GrantsOptions(CommandGroup):
    noun = "grants"
    synopsis = "list|revoke"
    longdesc = (
        "A grant is what one approval produced: a refresh token family and its newest "
        "access token. With REMEMBER_APPROVALS=on, a live grant is also what lets the "
        "same person skip the page for the same client; revoking it asks again."
    )
    subCommands = [
        ["list", None, GrantsListOptions, "List live grants."],
        ["revoke", None, GrantsRevokeOptions, "Revoke grants (their tokens stop working)."],
    ]


def _describeGrant(family: Any) -> Dict[str, Any]:
    return {
        "grant_id": family.familyID,
        "client_id": family.clientID,
        "subject": family.subject,
        "scope": family.scope,
        "created_at": family.createdAt,
        "expires_at": family.expiresAt,
    }


async def listGrants(store: Any, now: float, client: Optional[str] = None,
                     subject: Optional[str] = None) -> List[Any]:
    """
    The live grants (refresh families), of one client and/or subject.
    """
    families = await store.listFamilies(client, now)
    return [f for f in families if subject is None or f.subject == subject]


async def revokeGrants(store: Any, now: float, grantID: Optional[str] = None,
                       subject: Optional[str] = None, client: Optional[str] = None) -> List[Any]:
    """
    Revoke one grant by id, or every grant of C{subject} (of C{client});
    return the revoked ones (none: nothing matched).
    """
    if grantID is not None:
        targets = [f for f in await listGrants(store, now, client) if f.familyID == grantID]
    else:
        targets = await listGrants(store, now, client, subject)
    revoked = []
    for f in targets:
        if await store.revokeFamily(f.familyID, now) is not None:
            revoked.append(f)
    return revoked


@subcommand("grants", GrantsOptions, "List or revoke authorization grants.")
def grantsCommand(options: Any, out: TextIO, err: TextIO) -> int:
    from mcpsvc.admin import withStore
    from mcpsvc.config import ConfigError
    from mcpsvc.tap import configFromOptions

    sub = options.subCommand
    subOptions = options.subOptions
    try:
        config = configFromOptions(subOptions)
    except ConfigError as e:
        err.write("Configuration is invalid:\n")
        for error in e.errors:
            err.write(f"  - {error}\n")
        return 1

    async def action(store: Any, reactor: Any) -> int:
        return await grantsAction(sub, subOptions, store, reactor.seconds(), out, err)

    return withStore(config, action, err)


async def grantsAction(sub: str, options: Any, store: Any, now: float, out: TextIO, err: TextIO) -> int:
    """
    Run C{grants list|revoke} against C{store}.
    """
    if sub == "list":
        families = await listGrants(store, now, options["client"], options["subject"])
        if options["json"]:
            out.write(json.dumps([_describeGrant(f) for f in families], indent=2) + "\n")
        else:
            for f in families:
                out.write(f"{f.familyID}\t{f.clientID}\t{f.subject}\t{f.scope}\n")
            out.write(f"{len(families)} grant(s)\n")
        return 0
    revoked = await revokeGrants(store, now, options["grant"], options["subject"], options["client"])
    if options["grant"] and not revoked:
        err.write(f"No live grant {options['grant']}\n")
        return 1
    for f in revoked:
        out.write(f"Revoked grant {f.familyID} ({f.clientID}, {f.subject})\n")
    out.write(f"{len(revoked)} grant(s) revoked\n")
    return 0
