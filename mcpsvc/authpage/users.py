# -*- test-case-name: mcpsvc.authpage.test.test_users -*-
"""
Local accounts for C{AUTHORIZE_MODE=login}: a JSON file of scrypt hashes
(C{LOGIN_USERS_FILE}), managed with C{mcpsvc users add|remove|list|passwd}.

The file::

    {"version": 1,
     "users": {"alice": {"scrypt": {"n": 131072, "r": 8, "p": 1},
                         "salt": "<base64>", "hash": "<base64>",
                         "created": 1750000000}}}

Each account has its own 16-byte random salt; the hash is
C{hashlib.scrypt(password, salt, n=2**17, r=8, p=1, dklen=32)}, OWASP's
recommendation for scrypt (128 MiB and, measured on a busy 2-core machine,
about 0.7 s: run it with C{runInThread}, never on the reactor thread, and
bound how many run at once). Each entry records its parameters, so hashes
made with weaker ones (N=2**14 before) still verify; L{verifyLogin}
rehashes such an entry with the current parameters on its next successful
sign-in, keeping its L{fingerprint} (C{"fp"}) so open sign-ins survive.
The file is rewritten atomically (temporary file, then rename) with mode
0600, under a lock (L{_locked}) shared by every writer, and read on every
sign-in, so changes take effect without a restart. Account names are
lower-cased.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import hmac
import json
import os
import re
import tempfile
import threading
from typing import Any, Dict, Iterator, List, Mapping, Optional

from twisted.logger import Logger

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

#: scrypt parameters for new hashes (OWASP: N=2**17, r=8, p=1), read at
#: call time: tests make them cheaper with C{patch} or the C{params}
#: arguments.
SCRYPT = {"n": 2**17, "r": 8, "p": 1}
#: Largest parameters accepted from a users file (2**20 is 1 GiB at r=8).
_MAX_N, _MAX_R, _MAX_P = 2**20, 32, 16
_NAME = re.compile(r"[a-z0-9][a-z0-9._@-]{0,63}")
MIN_PASSWORD = 8
MAX_PASSWORD = 1024

# A fixed salt to hash against for unknown accounts, so an unknown name
# costs the same time as a wrong password.
_DUMMY_SALT = base64.b64encode(b"\x00" * 16).decode()
_WRITING = threading.Lock()
log = Logger()


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


def _params(params: Any) -> Dict[str, int]:
    """
    Checked scrypt parameters.

    @raise ValueError: not a mapping of sane C{n} (a power of two), C{r},
        C{p}.
    """
    n, r, p = int(params["n"]), int(params["r"]), int(params["p"])
    if not (1 < n <= _MAX_N and n & (n - 1) == 0 and 1 <= r <= _MAX_R and 1 <= p <= _MAX_P):
        raise ValueError(f"unacceptable scrypt parameters {params!r}")
    return {"n": n, "r": r, "p": p}


def _scrypt(password: str, salt: bytes, params: Mapping[str, int]) -> bytes:
    checked = _params(params)
    n, r, p = checked["n"], checked["r"], checked["p"]
    # scrypt needs 128 * r * (n + p) bytes; leave room for OpenSSL's own.
    maxmem = 128 * r * (n + p) + 32 * 1024 * 1024
    return hashlib.scrypt(
        password.encode("utf-8"), salt=salt, n=n, r=r, p=p, maxmem=maxmem, dklen=32,
    )


def hashPassword(
    password: str, now: float, salt: Optional[bytes] = None,
    params: Optional[Mapping[str, int]] = None,
) -> Dict[str, Any]:
    """
    A new account entry for C{password} (blocking: scrypt).

    @param params: scrypt parameters; L{SCRYPT} by default.
    """
    if not (MIN_PASSWORD <= len(password) <= MAX_PASSWORD):
        raise UsersError(f"passwords must be {MIN_PASSWORD} to {MAX_PASSWORD} characters")
    return _entry(password, now, salt, SCRYPT if params is None else params)


def _entry(password: str, now: float, salt: Optional[bytes],
           params: Mapping[str, int]) -> Dict[str, Any]:
    params = _params(params)
    salt = salt if salt is not None else os.urandom(16)
    return {
        "scrypt": dict(params),
        "salt": base64.b64encode(salt).decode("ascii"),
        "hash": base64.b64encode(_scrypt(password, salt, params)).decode("ascii"),
        "created": int(now),
    }


def checkPassword(password: str, entry: Mapping[str, Any]) -> bool:
    """
    Whether C{password} matches the account C{entry} (blocking: scrypt
    with the entry's own parameters; constant-time comparison).
    """
    if len(password) > MAX_PASSWORD:
        return False
    try:
        salt = base64.b64decode(entry["salt"])
        expected = base64.b64decode(entry["hash"])
        params = entry.get("scrypt") or {"n": 2**14, "r": 8, "p": 1}
        actual = _scrypt(password, salt, params)
    except (KeyError, ValueError, TypeError):
        return False
    return bool(expected) and hmac.compare_digest(actual, expected)


def needsRehash(entry: Mapping[str, Any], params: Optional[Mapping[str, int]] = None) -> bool:
    """
    Whether C{entry} was hashed with weaker scrypt parameters than
    C{params} (L{SCRYPT} by default): a smaller C{n} or C{r}.
    """
    target = _params(SCRYPT if params is None else params)
    try:
        current = _params(entry.get("scrypt") or {"n": 2**14, "r": 8, "p": 1})
    except (KeyError, ValueError, TypeError):
        return True
    return current["n"] < target["n"] or current["r"] < target["r"]


def fingerprint(entry: Mapping[str, Any]) -> str:
    """
    A short value that changes whenever the account's password does; login
    sessions carry it, so a new password ends old sessions. A rehash with
    stronger parameters (same password) keeps it, in C{"fp"}.
    """
    kept = entry.get("fp")
    if isinstance(kept, str) and kept:
        return kept
    return hashlib.sha256(str(entry.get("hash", "")).encode("ascii")).hexdigest()[:16]


@contextlib.contextmanager
def _locked(path: str) -> Iterator[None]:
    """
    Exclusive access to the users file C{path} for a read-modify-write:
    between the threads of this process and, with C{flock} on its
    directory, with other processes (C{mcpsvc users passwd} while the
    server upgrades a hash on sign-in).
    """
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    with _WRITING:
        fd = os.open(directory, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)


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
    entry = hashPassword(password, now)
    with _locked(path):
        users = loadUsers(path)
        if canonical in users:
            raise UsersError(f"account {canonical!r} exists (use passwd to change its password)")
        users[canonical] = entry
        saveUsers(path, users)
    return canonical


def setPassword(path: str, name: str, password: str, now: float) -> str:
    canonical = normalizeName(name) or name
    if canonical not in loadUsers(path):
        raise UsersError(f"no account {canonical!r}")
    entry = hashPassword(password, now)
    with _locked(path):
        users = loadUsers(path)
        if canonical not in users:
            raise UsersError(f"no account {canonical!r}")
        users[canonical] = entry
        saveUsers(path, users)
    return canonical


def removeUser(path: str, name: str) -> str:
    canonical = normalizeName(name) or name
    with _locked(path):
        users = loadUsers(path)
        if canonical not in users:
            raise UsersError(f"no account {canonical!r}")
        del users[canonical]
        saveUsers(path, users)
    return canonical


def listUsers(path: str) -> List[str]:
    return sorted(loadUsers(path))


def verifyLogin(
    path: str, name: str, password: str, params: Optional[Mapping[str, int]] = None
) -> Optional[str]:
    """
    Read the file and check a sign-in (blocking: run in a thread). Returns
    the account's L{fingerprint} on success, C{None} otherwise. An unknown
    account costs one scrypt at the current parameters, like a wrong
    password. A correct password for an entry hashed with weaker
    parameters than C{params} (L{SCRYPT} by default) is rehashed with them
    and the file rewritten atomically, unless the entry changed meanwhile.
    """
    target = _params(SCRYPT if params is None else params)
    canonical = normalizeName(name)
    users = loadUsers(path)
    entry = users.get(canonical) if canonical else None
    if entry is None:
        checkPassword(password, {"scrypt": target, "salt": _DUMMY_SALT, "hash": ""})
        return None
    if not checkPassword(password, entry):
        return None
    printed = fingerprint(entry)
    if needsRehash(entry, target):
        try:
            upgraded = _rehash(path, canonical, entry, password, printed, target)  # type: ignore[arg-type]
        except (OSError, UsersError) as e:
            # The sign-in is good; the upgrade is tried again next time.
            log.warn("Could not upgrade the password hash of {account} in {path}: {why}",
                     account=canonical, path=path, why=str(e))
        else:
            if upgraded:
                log.info("Upgraded the password hash of {account} to scrypt N={n}",
                         account=canonical, n=target["n"])
    return printed


def _rehash(path: str, name: str, verified: Mapping[str, Any], password: str,
            printed: str, params: Mapping[str, int]) -> bool:
    """
    Replace the entry C{verified} of C{name} by a hash of C{password} with
    C{params}, keeping its creation time and fingerprint. Nothing happens
    if the entry is no longer C{verified} (a new password, a removal, or
    another sign-in's rehash got there first).
    """
    new = _entry(password, 0, None, params)
    new["created"] = verified.get("created", 0)
    new["fp"] = printed
    with _locked(path):
        users = loadUsers(path)
        current = users.get(name)
        if current is None or current.get("hash") != verified.get("hash"):
            return False
        users[name] = new
        saveUsers(path, users)
    return True


def currentFingerprint(path: str, name: str) -> Optional[str]:
    """
    The account's fingerprint, or C{None} if it no longer exists (blocking:
    reads the file).
    """
    entry = loadUsers(path).get(name)
    return fingerprint(entry) if entry is not None else None
