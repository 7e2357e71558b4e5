# -*- test-case-name: mcpsvc.authpage.test.test_users -*-
"""
Local accounts for C{AUTHORIZE_MODE=login}: a JSON file of scrypt hashes
(C{LOGIN_USERS_FILE}), managed with C{mcpsvc users add|remove|list|passwd}.

The file::

    {"version": 1,
     "users": {"alice": {"scrypt": {"n": 16384, "r": 8, "p": 1},
                         "salt": "<base64>", "hash": "<base64>",
                         "created": 1750000000}}}

Each account has its own 16-byte random salt; the hash is
C{hashlib.scrypt(password, salt, n=2**14, r=8, p=1, dklen=32)} (about 16 MiB
and tens of milliseconds: run it with C{runInThread}, never on the reactor
thread). The file is rewritten atomically (temporary file, then rename) with
mode 0600, and read on every sign-in, so changes take effect without a
restart. Account names are lower-cased.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import re
import tempfile
from typing import Any, Dict, List, Mapping, Optional

__all__ = [
    "UsersError",
    "normalizeName",
    "hashPassword",
    "checkPassword",
    "loadUsers",
    "saveUsers",
    "addUser",
    "removeUser",
    "setPassword",
    "verifyLogin",
    "fingerprint",
    "SCRYPT",
]

#: scrypt parameters for new hashes.
SCRYPT = {"n": 2**14, "r": 8, "p": 1}
_MAXMEM = 64 * 1024 * 1024
_NAME = re.compile(r"[a-z0-9][a-z0-9._@-]{0,63}")
MIN_PASSWORD = 8
MAX_PASSWORD = 1024

# A fixed entry to hash against for unknown accounts, so an unknown name
# costs the same time as a wrong password.
_DUMMY = {"scrypt": SCRYPT, "salt": base64.b64encode(b"\x00" * 16).decode(), "hash": ""}


class UsersError(ValueError):
    """
    A users-file operation cannot be done; the message says why.
    """


def normalizeName(name: str) -> Optional[str]:
    """
    The canonical account name, or C{None} if C{name} is not acceptable.
    """
    name = name.strip().lower()
    return name if _NAME.fullmatch(name) else None


def _scrypt(password: str, salt: bytes, params: Mapping[str, int]) -> bytes:
    return hashlib.scrypt(
        password.encode("utf-8"), salt=salt, n=int(params["n"]), r=int(params["r"]),
        p=int(params["p"]), maxmem=_MAXMEM, dklen=32,
    )


def hashPassword(password: str, now: float, salt: Optional[bytes] = None) -> Dict[str, Any]:
    """
    A new account entry for C{password} (blocking: scrypt).
    """
    if not (MIN_PASSWORD <= len(password) <= MAX_PASSWORD):
        raise UsersError(f"passwords must be {MIN_PASSWORD} to {MAX_PASSWORD} characters")
    salt = salt if salt is not None else os.urandom(16)
    return {
        "scrypt": dict(SCRYPT),
        "salt": base64.b64encode(salt).decode("ascii"),
        "hash": base64.b64encode(_scrypt(password, salt, SCRYPT)).decode("ascii"),
        "created": int(now),
    }


def checkPassword(password: str, entry: Mapping[str, Any]) -> bool:
    """
    Whether C{password} matches the account C{entry} (blocking: scrypt;
    constant-time comparison).
    """
    if len(password) > MAX_PASSWORD:
        return False
    try:
        salt = base64.b64decode(entry["salt"])
        expected = base64.b64decode(entry["hash"])
        params = entry.get("scrypt") or SCRYPT
        actual = _scrypt(password, salt, params)
    except (KeyError, ValueError, TypeError):
        return False
    return bool(expected) and hmac.compare_digest(actual, expected)


def fingerprint(entry: Mapping[str, Any]) -> str:
    """
    A short value that changes whenever the account's password does; login
    sessions carry it, so a new password ends old sessions.
    """
    return hashlib.sha256(str(entry.get("hash", "")).encode("ascii")).hexdigest()[:16]


def loadUsers(path: str) -> Dict[str, Dict[str, Any]]:
    """
    The accounts in C{path} (none if the file does not exist).

    @raise UsersError: the file is unreadable or not ours.
    """
    try:
        with open(path, "rb") as f:
            data = json.loads(f.read())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:
        raise UsersError(f"cannot read {path}: {e}")
    if not isinstance(data, dict) or not isinstance(data.get("users"), dict):
        raise UsersError(f"{path} is not a users file")
    return dict(data["users"])


def saveUsers(path: str, users: Mapping[str, Mapping[str, Any]]) -> None:
    """
    Write C{users} to C{path} atomically, mode 0600.
    """
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".users-", dir=directory)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump({"version": 1, "users": dict(sorted(users.items()))}, f, indent=2)
            f.write("\n")
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def addUser(path: str, name: str, password: str, now: float) -> str:
    canonical = normalizeName(name)
    if canonical is None:
        raise UsersError(
            "account names are 1-64 characters: letters, digits, '.', '_', '@', '-'"
        )
    users = loadUsers(path)
    if canonical in users:
        raise UsersError(f"account {canonical!r} exists (use passwd to change its password)")
    users[canonical] = hashPassword(password, now)
    saveUsers(path, users)
    return canonical


def setPassword(path: str, name: str, password: str, now: float) -> str:
    canonical = normalizeName(name) or name
    users = loadUsers(path)
    if canonical not in users:
        raise UsersError(f"no account {canonical!r}")
    users[canonical] = hashPassword(password, now)
    saveUsers(path, users)
    return canonical


def removeUser(path: str, name: str) -> str:
    canonical = normalizeName(name) or name
    users = loadUsers(path)
    if canonical not in users:
        raise UsersError(f"no account {canonical!r}")
    del users[canonical]
    saveUsers(path, users)
    return canonical


def listUsers(path: str) -> List[str]:
    return sorted(loadUsers(path))


def verifyLogin(path: str, name: str, password: str) -> Optional[str]:
    """
    Read the file and check a sign-in (blocking: run in a thread). Returns
    the account's L{fingerprint} on success, C{None} otherwise. An unknown
    account costs one scrypt, like a wrong password.
    """
    canonical = normalizeName(name)
    users = loadUsers(path)
    entry = users.get(canonical) if canonical else None
    if entry is None:
        checkPassword(password, _DUMMY)
        return None
    return fingerprint(entry) if checkPassword(password, entry) else None


def currentFingerprint(path: str, name: str) -> Optional[str]:
    """
    The account's fingerprint, or C{None} if it no longer exists (blocking:
    reads the file).
    """
    entry = loadUsers(path).get(name)
    return fingerprint(entry) if entry is not None else None
