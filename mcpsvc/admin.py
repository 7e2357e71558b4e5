# -*- test-case-name: mcpsvc.test.test_admin -*-
"""
Admin subcommands of the C{mcpsvc} command that open the configured store:
C{clients ...}, C{tokens revoke}, C{keys rotate}, C{tools reload}.

Each command validates the configuration exactly as the server does, opens
the store (SQLite or Redis; the server may be running at the same time),
runs, and closes the store before exiting.
"""

from __future__ import annotations

import json
import sys
from typing import Any, Awaitable, Callable, Dict, List, Optional, TextIO, Tuple

from twisted.internet.defer import Deferred
from twisted.python import usage

from mcpsvc.cli import CommandGroup, subcommand
from mcpsvc.config import Config, ConfigError

__all__ = ["withStore"]


class _StoreOptions(usage.Options):
    optParameters = [["env-file", None, ".env", "The .env file to read (if it exists)."]]

    def overrides(self) -> Dict[str, str]:
        return {}


def _config(options: Any, err: TextIO) -> Optional[Config]:
    from mcpsvc.tap import configFromOptions

    try:
        return configFromOptions(options)
    except ConfigError as e:
        err.write("Configuration is invalid:\n")
        for error in e.errors:
            err.write(f"  - {error}\n")
        return None


def withStore(
    config: Config,
    action: Callable[[Any, Any], Awaitable[int]],
    err: TextIO,
    reactor: Any = None,
) -> int:
    """
    Open the store of C{config}, run C{await action(store, reactor)} and
    close the store; return the action's exit status (1 on a store error).
    """
    from twisted.internet import task

    from mcpsvc.storage import StoreError, buildStoreService

    result: List[int] = [1]

    async def main(reactor: Any) -> None:
        service = buildStoreService(config, reactor=reactor, clock=reactor)
        service.startService()
        try:
            result[0] = await action(service.store, reactor)
        except StoreError as e:
            err.write(f"Store error: {e.__class__.__name__}: {e}\n")
            result[0] = 1
        finally:
            await service.stopService()

    if reactor is not None:
        d = Deferred.fromCoroutine(main(reactor))
        d.addErrback(lambda f: err.write(f"{f.getErrorMessage()}\n"))
        return result[0]
    try:
        task.react(lambda r: Deferred.fromCoroutine(main(r)))
    except SystemExit as e:
        if e.code not in (0, None):
            return int(e.code)
    return result[0]


def _confidential(record: Any) -> bool:
    from mcpsvc.oauth.clients import isConfidential

    return isConfidential(record.metadata)


def _describe(record: Any) -> Dict[str, Any]:
    """
    A client for C{clients list --json} and C{clients show}: whether it is
    confidential (from its method: a secret or C{private_key_jwt}),
    whether it has a secret, and whether it is a metadata document client
    (its record is a cached copy of the document at its URL).
    """
    from mcpsvc.oauth.clients import authMethod, usesSecret
    from mcpsvc.storage.admin import isDocumentRecord

    metadata = dict(record.metadata)
    return {
        "client_id": record.clientID,
        "client_name": metadata.get("client_name"),
        "auth_method": authMethod(metadata),
        "confidential": _confidential(record),
        "has_secret": usesSecret(metadata) and record.secretHash is not None,
        "metadata_document": isDocumentRecord(record),
        "created_at": record.createdAt,
        "metadata": metadata,
    }


# --------------------------------------------------------------------------
# clients


class ClientsListOptions(_StoreOptions):
    synopsis = "[--json]"
    optFlags = [["json", None, "Print JSON."]]


class ClientsIDOptions(_StoreOptions):
    synopsis = "CLIENT_ID"

    def parseArgs(self, clientID: str) -> None:
        self["client-id"] = clientID


class ClientsExportOptions(_StoreOptions):
    synopsis = "[FILE]"

    def parseArgs(self, path: str = "-") -> None:
        self["file"] = path


class ClientsImportOptions(_StoreOptions):
    synopsis = "FILE"
    optFlags = [["replace", None, "Replace clients that exist already (default: skip them)."]]

    def parseArgs(self, path: str) -> None:
        self["file"] = path


class ClientsAddOptions(_StoreOptions):
    synopsis = "--name NAME --redirect-uri URI [--redirect-uri URI ...] [options]"
    optParameters = _StoreOptions.optParameters + [
        ["name", None, None, "Client name shown on the authorization page."],
        ["grant-types", None, "authorization_code,refresh_token", "Comma list of grant types."],
        ["auth-method", None, "client_secret_basic",
         "client_secret_basic, client_secret_post, private_key_jwt or none (public client)."],
        ["jwks", None, None,
         "private_key_jwt: a file holding the client's public keys (a JWK Set, or one JWK)."],
        ["jwks-uri", None, None,
         "private_key_jwt: the https URL where the client publishes its public keys."],
        ["scope", None, None,
         "Space or comma list of scopes the client may ask for (default: mcp:tools mcp:read "
         "mcp:write; a request naming none gets mcp:tools mcp:read)."],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["redirect-uris"] = []

    def opt_redirect_uri(self, uri: str) -> None:
        """A redirect URI (repeatable)."""
        self["redirect-uris"].append(uri)

    def postOptions(self) -> None:
        if not self["name"]:
            raise usage.UsageError("--name is required")
        if self["jwks"] and self["jwks-uri"]:
            raise usage.UsageError("give --jwks or --jwks-uri, not both")
        if (self["jwks"] or self["jwks-uri"]) and self["auth-method"] != "private_key_jwt":
            raise usage.UsageError("--jwks and --jwks-uri go with --auth-method private_key_jwt")


class ClientsOptions(CommandGroup):
    noun = "clients"
    synopsis = "list|show|add|remove|rotate-secret|export|import"
    subCommands = [
        ["list", None, ClientsListOptions, "List registered clients."],
        ["show", None, ClientsIDOptions, "Show one client."],
        ["add", None, ClientsAddOptions, "Register a client; prints its secret once."],
        ["remove", None, ClientsIDOptions, "Remove a client."],
        ["rotate-secret", None, ClientsIDOptions, "Give a client a new secret; prints it once."],
        ["export", None, ClientsExportOptions, "Export the client registry as JSON."],
        ["import", None, ClientsImportOptions,
         "Import clients from our export or the guide's registered_clients.json."],
    ]


def _printable(value: Any) -> str:
    """
    C{value} for one line of a terminal: control and other unprintable
    characters escaped (a name stored before registration refused them
    must not move the cursor, clear the screen or forge a line).
    """
    return "".join(c if c.isprintable() else ascii(c)[1:-1] for c in str(value))


@subcommand("clients", ClientsOptions, "Manage OAuth clients.")
def clientsCommand(options: Any, out: TextIO, err: TextIO) -> int:
    sub = options.subCommand
    subOptions = options.subOptions
    config = _config(subOptions, err)
    if config is None:
        return 1
    if config.store == "memory":
        err.write("warning: STORE=memory: changes are lost when this command exits\n")

    from mcpsvc.storage import NoSuchClient
    from mcpsvc.storage.admin import exportClients, importClients

    async def action(store: Any, reactor: Any) -> int:
        if sub == "list":
            records = await store.listClients()
            if subOptions["json"]:
                out.write(json.dumps([_describe(r) for r in records], indent=2) + "\n")
            else:
                from mcpsvc.oauth.clients import authMethod
                from mcpsvc.storage.admin import isDocumentRecord

                for r in records:
                    kind = "confidential" if _confidential(r) else "public"
                    origin = "document" if isDocumentRecord(r) else "registered"
                    out.write(f"{_printable(r.clientID)}\t{kind}\t"
                              f"{_printable(authMethod(r.metadata))}\t{origin}\t"
                              f"{_printable(r.metadata.get('client_name') or '')}\n")
                out.write(f"{len(records)} client(s)\n")
            return 0
        if sub in ("show", "remove"):
            clientID = subOptions["client-id"]
            try:
                if sub == "show":
                    out.write(json.dumps(_describe(await store.getClient(clientID)), indent=2) + "\n")
                else:
                    from mcpsvc.storage.admin import isDocumentRecord

                    document = isDocumentRecord(await store.getClient(clientID))
                    await store.deleteClient(clientID)
                    # Its access tokens are refused from now on (they would
                    # otherwise live until they expire).
                    from mcpsvc.storage.interfaces import clientRevocationID

                    await store.revokeJTI(clientRevocationID(clientID),
                                          reactor.seconds() + config.accessTokenLifetime)
                    out.write(f"Removed client {clientID}; its access tokens are refused from now on\n")
                    if document:
                        out.write(
                            "It is a metadata document client: its next request fetches its "
                            "document again (access tokens it gets in the next "
                            f"{config.accessTokenLifetime} seconds are refused too); to keep it "
                            "out, add its host to CIMD_DENIED_HOSTS\n")
            except NoSuchClient:
                err.write(f"No such client: {clientID}\n")
                return 1
            return 0
        if sub == "export":
            exported = await exportClients(store)
            data = json.dumps(exported, indent=2) + "\n"
            skipped = len(await store.listClients()) - len(exported["clients"])
            if skipped > 0:
                err.write(f"{skipped} metadata document client(s) not exported: they are "
                          "fetched again from their URL on first use\n")
            if subOptions["file"] == "-":
                out.write(data)
            else:
                with open(subOptions["file"], "w") as f:
                    f.write(data)
                out.write(f"Exported to {subOptions['file']}\n")
            return 0
        if sub == "import":
            with open(subOptions["file"]) as f:
                data = json.load(f)
            count = await importClients(store, data, reactor.seconds(), replace=subOptions["replace"])
            out.write(f"Imported {count} client(s)\n")
            return 0
        return await _oauthClientCommand(sub, subOptions, store, reactor, config, out, err)

    return withStore(config, action, err)


def _readJWKS(path: str) -> Dict[str, Any]:
    """
    Read a JWK Set (or a single JWK, made a set of one) from C{path}.

    @raise ValueError: unreadable or not JSON.
    """
    try:
        with open(path, encoding="utf-8") as f:
            document = json.load(f)
    except OSError as e:
        raise ValueError(f"cannot read {path}: {e.strerror or e}") from None
    except ValueError as e:
        raise ValueError(f"{path} is not JSON: {e}") from None
    if isinstance(document, dict) and "keys" not in document and "kty" in document:
        document = {"keys": [document]}
    if not isinstance(document, dict):
        raise ValueError(f"{path} must hold a JWK Set (a JSON object)")
    return document


async def _oauthClientCommand(
    sub: str, options: Any, store: Any, reactor: Any, config: Config, out: TextIO, err: TextIO
) -> int:
    from mcpsvc.oauth import admin as oauthAdmin
    from mcpsvc.storage import NoSuchClient

    if sub == "add":
        grants = [g.strip() for g in options["grant-types"].split(",") if g.strip()]
        jwks = None
        if options["jwks"]:
            try:
                jwks = _readJWKS(options["jwks"])
            except ValueError as e:
                err.write(f"Cannot add client: {e}\n")
                return 1
        try:
            record, secret = await oauthAdmin.addClient(
                store, reactor.seconds(), name=options["name"],
                redirectURIs=options["redirect-uris"], grantTypes=grants,
                authMethod=options["auth-method"], scope=options["scope"],
                jwks=jwks, jwksURI=options["jwks-uri"], privateKeyJWT=config.privateKeyJWT,
                production=config.production,
            )
        except oauthAdmin.AdminError as e:
            err.write(f"Cannot add client: {e}\n")
            return 1
        out.write(f"client_id:     {record.clientID}\n")
        if record.jwks is not None:
            kids = [str(k.get("kid", "-")) for k in record.jwks.get("keys", [])]
            out.write(f"jwks:          {len(kids)} public key(s), kid {', '.join(kids)}\n")
        if record.jwksURI is not None:
            out.write(f"jwks_uri:      {record.jwksURI}\n")
        if secret is not None:
            out.write(f"client_secret: {secret}\n")
            out.write("The secret is shown once; only its hash is stored.\n")
        return 0
    if sub == "rotate-secret":
        try:
            _, secret = await oauthAdmin.rotateSecret(store, options["client-id"])
        except NoSuchClient:
            err.write(f"No such client: {options['client-id']}\n")
            return 1
        except oauthAdmin.AdminError as e:
            err.write(f"Cannot rotate: {e}\n")
            return 1
        out.write(f"client_secret: {secret}\n")
        out.write("The secret is shown once; only its hash is stored.\n")
        return 0
    err.write(f"Unknown clients command {sub}\n")  # pragma: no cover
    return 2


# --------------------------------------------------------------------------
# tokens


class TokensRevokeOptions(_StoreOptions):
    synopsis = "TOKEN|-"
    longdesc = "Revoke an access token (JWT) or a refresh token (its whole family). '-' reads it from standard input."

    def parseArgs(self, token: str) -> None:
        self["token"] = token


class TokensOptions(CommandGroup):
    noun = "tokens"
    synopsis = "revoke TOKEN"
    subCommands = [["revoke", None, TokensRevokeOptions, "Revoke a token."]]


@subcommand("tokens", TokensOptions, "Revoke tokens.")
def tokensCommand(options: Any, out: TextIO, err: TextIO) -> int:
    subOptions = options.subOptions
    config = _config(subOptions, err)
    if config is None:
        return 1
    token = subOptions["token"]
    if token == "-":
        token = sys.stdin.readline().strip()

    async def action(store: Any, reactor: Any) -> int:
        from mcpsvc.oauth import admin as oauthAdmin
        from mcpsvc.oauth import buildAccessTokens

        message = await oauthAdmin.revokeToken(store, buildAccessTokens(config), reactor.seconds(), token)
        out.write(message + "\n")
        return 1 if message.endswith("nothing to do") else 0

    return withStore(config, action, err)


# --------------------------------------------------------------------------
# keys


class KeysRotateOptions(_StoreOptions):
    optParameters = _StoreOptions.optParameters + [
        ["algorithm", "a", "ES256", "ES256 or RS256."],
    ]


class KeysListOptions(_StoreOptions):
    pass


class KeysOptions(CommandGroup):
    noun = "keys"
    synopsis = "rotate|list"
    subCommands = [
        ["rotate", None, KeysRotateOptions, "Publish a new key in JWT_KEYS_DIR; it signs after JWT_KEY_PUBLISH_DELAY."],
        ["list", None, KeysListOptions, "Show each key in JWT_KEYS_DIR: signing, waiting, retired or removable."],
    ]


def _iso(when: float) -> str:
    from datetime import datetime, timezone

    return datetime.fromtimestamp(when, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")


def keyStates(config: Config, now: float) -> List[Tuple[Any, str, str]]:
    """
    Each key of C{config}'s ring, with its state at C{now} (C{signing},
    C{waiting}, C{retired}, C{removable}) and what happens next.

    @raise mcpsvc.oauth.tokens.KeyLoadError: a key file is unusable.
    """
    from mcpsvc.oauth.tokens import LEEWAY, loadKeyRing

    ring = loadKeyRing(config.jwtSecret, config.jwtPrivateKeyFile, config.jwtKeysDir,
                       publishDelay=config.jwtKeyPublishDelay)
    signer = ring.signingAt(now)
    published = ring.publishedAt(now, config.accessTokenLifetime)
    states = []
    for key in ring.ordered:
        retired = ring.retiredAt(key)
        until = None if retired is None else retired + config.accessTokenLifetime + LEEWAY
        if key is signer:
            state = "signing"
            note = "until " + _iso(retired) if retired is not None and retired > now else "now"
        elif key.activatesAt > now and ring.ordered.index(key) > ring.ordered.index(signer):
            state, note = "waiting", "published; signs from " + _iso(key.activatesAt)
        elif key in published:
            state = "retired"
            note = "published until " + _iso(until) if until is not None else ""
        else:
            state, note = "removable", "every token it signed has expired"
        states.append((key, state, note))
    return states


@subcommand("keys", KeysOptions, "Manage signing keys.")
def keysCommand(options: Any, out: TextIO, err: TextIO) -> int:
    subOptions = options.subOptions
    config = _config(subOptions, err)
    if config is None:
        return 1
    if not config.jwtKeysDir:
        err.write("JWT_KEYS_DIR is not set: key rotation needs a directory of keys\n")
        return 1
    from twisted.internet import reactor

    from mcpsvc.oauth import admin as oauthAdmin
    from mcpsvc.oauth.tokens import KeyLoadError

    now = reactor.seconds()
    if options.subCommand == "list":
        try:
            states = keyStates(config, now)
        except KeyLoadError as e:
            err.write(f"Cannot read the keys: {e}\n")
            return 1
        for key, state, note in states:
            out.write(f"{state:9}  {key.alg}  {key.kid}  {key.path}  {note}\n")
        return 0
    try:
        path = oauthAdmin.rotateKeys(config.jwtKeysDir, subOptions["algorithm"], now=now)
    except oauthAdmin.AdminError as e:
        err.write(f"Cannot rotate keys: {e}\n")
        return 1
    delay = config.jwtKeyPublishDelay
    out.write(f"New signing key: {path.path}\n")
    out.write(
        f"Restart (or reload) every instance now: they publish it in the JWKS at once and sign "
        f"with it from {_iso(now + delay)} (JWT_KEY_PUBLISH_DELAY={delay}). The previous key "
        f"stays published until every token it signed has expired "
        f"(ACCESS_TOKEN_LIFETIME={config.accessTokenLifetime} seconds later); "
        f"'mcpsvc keys list' says when its file can be removed.\n"
    )
    return 0


# --------------------------------------------------------------------------
# tools


class ToolsReloadOptions(_StoreOptions):
    longdesc = (
        "Ask every running instance sharing this Redis (STORE=redis) to reload its tool packs "
        "and tell listening clients (notifications/tools/list_changed). With SQLite or memory, "
        "send SIGHUP to the server process instead."
    )


class ToolsOptions(CommandGroup):
    noun = "tools"
    synopsis = "reload"
    subCommands = [["reload", None, ToolsReloadOptions, "Reload the tool packs of every instance."]]


@subcommand("tools", ToolsOptions, "Reload the tool packs of running instances.")
def toolsCommand(options: Any, out: TextIO, err: TextIO) -> int:
    config = _config(options.subOptions, err)
    if config is None:
        return 1
    if config.store != "redis":
        err.write(
            f"STORE={config.store}: there is no channel to the server; send it SIGHUP instead "
            "(kill -HUP <pid>; under --workers, to the parent, which forwards it)\n"
        )
        return 1
    from twisted.internet import task

    from mcpsvc.mcp.changes import CHANNEL_SUFFIX, encodeChange
    from mcpsvc.mcp.subscriptions import Change
    from mcpsvc.storage import buildStoreService

    result: List[int] = [1]

    async def main(reactor: Any) -> None:
        service = buildStoreService(config, reactor=reactor, clock=reactor)
        service.startService()
        try:
            d = service.redisConnection.handler.publish(  # type: ignore[attr-defined]
                config.redisPrefix + CHANNEL_SUFFIX, encodeChange(Change("tools"), "mcpsvc-cli")
            )
            d.addTimeout(config.storeTimeout, reactor)
            receivers = await d
            out.write(f"Asked {receivers} instance(s) to reload their tool packs\n")
            result[0] = 0
        except Exception as e:
            err.write(f"Cannot reach Redis: {e.__class__.__name__}: {e}\n")
        finally:
            await service.stopService()

    try:
        task.react(lambda r: Deferred.fromCoroutine(main(r)))
    except SystemExit as e:
        if e.code not in (0, None):
            return int(e.code)
    return result[0]
