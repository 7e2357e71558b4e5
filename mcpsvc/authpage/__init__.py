"""
The authorization page of mcpsvc's OAuth server: consent and login modes,
their local accounts (C{mcpsvc users}) and remembered approvals
(C{mcpsvc grants}). See L{mcpsvc.authpage.approver}.

Importing this package imports neither Klein nor the reactor.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, List, Optional

if TYPE_CHECKING:  # pragma: no cover
    from twisted.internet.interfaces import IReactorTime

    from mcpsvc.config import Config
    from mcpsvc.oauth.app import IApprover

__all__ = ["buildApprover", "startupWarnings"]


def buildApprover(
    config: "Config",
    *,
    store: Any,
    clock: "IReactorTime",
    runInThread: Optional[Callable[..., Any]] = None,
) -> "IApprover":
    """
    The approver for C{config.authorizeMode}: L{ConsentApprover},
    L{LoginApprover}, or (C{auto}) L{mcpsvc.oauth.app.AutoApprover}.

    @param runInThread: runs blocking work (scrypt, reading the users file)
        off the reactor thread; required in login mode.
    """
    from mcpsvc.oauth.app import AutoApprover

    if config.authorizeMode == "auto":
        return AutoApprover(secret=config.jwtSecret.encode("utf-8"))
    from mcpsvc.authpage.approver import ConsentApprover, LoginApprover

    if config.authorizeMode == "login":
        if runInThread is None:
            raise ValueError("login mode needs runInThread")
        return LoginApprover(config=config, store=store, clock=clock, runInThread=runInThread)
    if runInThread is None:
        from twisted.internet.defer import maybeDeferred

        runInThread = maybeDeferred
    return ConsentApprover(config=config, store=store, clock=clock, runInThread=runInThread)


def startupWarnings(config: "Config") -> List[str]:
    """
    What an operator should hear at start-up about the authorization page:
    in login mode, an accounts file that is missing, unreadable or empty
    (nobody could sign in, so every authorization would fail).
    """
    if config.authorizeMode != "login":
        return []
    from mcpsvc.authpage.users import UsersError, loadUsers

    path = config.loginUsersFile
    try:
        users = loadUsers(path)
    except UsersError as e:
        return [f"AUTHORIZE_MODE=login, but the accounts file is unusable ({e}): nobody can sign in"]
    if not users:
        return [
            f"AUTHORIZE_MODE=login, but {path} holds no accounts: nobody can sign in until one is "
            f"added with `mcpsvc users add NAME`"
        ]
    return []
