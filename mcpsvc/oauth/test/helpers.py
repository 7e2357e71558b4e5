"""
Shared fixtures for the OAuth tests.
"""

from __future__ import annotations

import base64
import json
from typing import Any, Dict, List, Optional, Tuple
from urllib.parse import parse_qs, urlsplit

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from treq.testing import StubTreq
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from mcpsvc.config import Config
from mcpsvc.oauth import buildOAuth, pkce
from mcpsvc.storage.memory import MemoryStore

EPOCH = 1_750_000_000.0
SERVER = "https://mcp.example.com"
SNOW = "https://dev12345.service-now.com/oauth_redirect.do"
SECRET = "s" * 40
IAT = "initial-access-token-0123456789abcdef"
VERIFIER = "v" * 43 + "-._~0123456789"
CHALLENGE = pkce.challengeFor(VERIFIER)


def makeConfig(**changes: Any) -> Config:
    base = Config(
        serverURL=SERVER,
        issuer=SERVER,
        jwtSecret=SECRET,
        dcrAuthToken=IAT,
        authorizeMode="auto",
        store="memory",
        # As in production: registration accepts this instance's redirect
        # URI (SNOW), not every *.service-now.com tenant.
        servicenowInstance="https://dev12345.service-now.com",
    )
    return base.replace(**changes)


def ecPEM() -> bytes:
    return ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def rsaPEM(bits: int = 2048) -> bytes:
    return rsa.generate_private_key(public_exponent=65537, key_size=bits).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def basic(clientID: str, secret: str) -> str:
    return "Basic " + base64.b64encode(f"{clientID}:{secret}".encode()).decode()


def queryOf(location: str) -> Dict[str, str]:
    parsed = parse_qs(urlsplit(location).query, keep_blank_values=True)
    return {k: v[0] for k, v in parsed.items()}


class GatedStore:
    """
    Wraps a store; while C{gated}, calls to the method named C{method}
    wait until L{release}, so that two requests can be in flight at once.
    """

    def __init__(self, store: Any, method: str) -> None:
        self._store = store
        self._method = method
        self.gated = False
        self.waiting: List["Deferred[None]"] = []

    def __getattr__(self, name: str) -> Any:
        original = getattr(self._store, name)
        if name != self._method:
            return original

        def gatedCall(*args: Any) -> Any:
            if not self.gated:
                return original(*args)

            async def later() -> Any:
                gate: "Deferred[None]" = Deferred()
                self.waiting.append(gate)
                await gate
                return await original(*args)

            return Deferred.fromCoroutine(later())

        return gatedCall

    def release(self) -> None:
        waiting, self.waiting = self.waiting, []
        for gate in waiting:
            gate.callback(None)


class OAuthTestCase(SynchronousTestCase):
    """
    An L{OAuthApp} over a L{MemoryStore} and a L{Clock}, driven with
    L{StubTreq}.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(EPOCH)
        self.store = MemoryStore(self.clock)
        self.configure(makeConfig())

    def configure(self, config: Config) -> None:
        self.config = config
        self.oauth, self.bearer = buildOAuth(config, store=self.store, clock=self.clock,
                                             **self.oauthOptions(config))
        self.stub = StubTreq(self.oauth.resource())

    def oauthOptions(self, config: Config) -> Dict[str, Any]:
        """
        More arguments of L{buildOAuth} for C{config} (a fetcher...): none.
        """
        return {}

    def url(self, path: str) -> str:
        return SERVER + path

    def request(self, method: str, path: str, **kw: Any) -> Tuple[Any, Any]:
        """
        Make a request; return the response and its decoded JSON body (or
        the raw bytes when it is not JSON).
        """
        kw.setdefault("allow_redirects", False)
        response = self.successResultOf(self.stub.request(method, self.url(path), **kw))
        content = self.successResultOf(response.content())
        try:
            body = json.loads(content) if content else None
        except ValueError:
            body = content
        return response, body

    def header(self, response: Any, name: str) -> Optional[str]:
        values = response.headers.getRawHeaders(name)
        return values[0] if values else None

    def assertOAuthError(self, response: Any, body: Any, status: int, error: str) -> None:
        self.assertEqual((response.code, body and body.get("error")), (status, error), body)

    def register(
        self, metadata: Dict[str, Any], token: Optional[str] = IAT, how: str = "bearer"
    ) -> Dict[str, Any]:
        headers = {}
        if token is not None and how == "bearer":
            headers["Authorization"] = "Bearer " + token
        elif token is not None and how == "bare":
            headers["Authorization"] = token
        elif token is not None:
            metadata = dict(metadata, token_value=token)
        response, body = self.request("POST", "/oauth/register", json=metadata, headers=headers)
        self.assertEqual(response.code, 201, body)
        return body  # type: ignore[no-any-return]

    def addAdminClient(self, scope: Optional[str] = None, grantTypes: Any = None) -> Dict[str, Any]:
        """
        Register a confidential client as C{mcpsvc clients add} does (its
        C{scope} caps what it may ask for); return it like L{register}.
        """
        from mcpsvc.oauth.admin import addClient

        record, secret = self.successResultOf(Deferred.fromCoroutine(addClient(
            self.store, self.clock.seconds(), "admin-client", [SNOW],
            grantTypes=grantTypes or ("authorization_code", "refresh_token"), scope=scope,
        )))
        return dict(record.metadata, client_id=record.clientID, client_secret=secret)

    def registerPublic(self, redirect: str = "http://127.0.0.1/callback") -> Dict[str, Any]:
        return self.register(
            {
                "client_name": "public",
                "redirect_uris": [redirect],
                "token_endpoint_auth_method": "none",
                "grant_types": ["authorization_code", "refresh_token"],
            }
        )

    def registerConfidential(self, method: str = "client_secret_basic", **extra: Any) -> Dict[str, Any]:
        metadata = {
            "client_name": "ServiceNow",
            "redirect_uris": [SNOW],
            "token_endpoint_auth_method": method,
            "grant_types": ["authorization_code", "refresh_token"],
        }
        metadata.update(extra)
        return self.register(metadata)

    def authorizeParams(self, client: Dict[str, Any], **changes: Optional[str]) -> Dict[str, str]:
        params = {
            "response_type": "code",
            "client_id": client["client_id"],
            "redirect_uri": client["redirect_uris"][0],
            "code_challenge": CHALLENGE,
            "code_challenge_method": "S256",
            "state": "st-123",
            "resource": SERVER + "/mcp",
        }
        params.update(changes)  # type: ignore[arg-type]
        return {k: v for k, v in params.items() if v is not None}

    def authorize(self, client: Dict[str, Any], **changes: Optional[str]) -> Tuple[Any, Dict[str, str]]:
        response, body = self.request(
            "GET", "/oauth/authorize", params=self.authorizeParams(client, **changes)
        )
        location = self.header(response, "location")
        return response, (queryOf(location) if location else body)

    def getCode(self, client: Dict[str, Any], **changes: Optional[str]) -> str:
        response, query = self.authorize(client, **changes)
        self.assertEqual(response.code, 302, query)
        return query["code"]

    def clientAuth(self, client: Dict[str, Any], form: Dict[str, str]) -> Dict[str, Any]:
        method = client["token_endpoint_auth_method"]
        if method == "client_secret_basic":
            return {"data": form, "headers": {"Authorization": basic(client["client_id"], client["client_secret"])}}
        if method == "client_secret_post":
            return {"data": dict(form, client_id=client["client_id"], client_secret=client["client_secret"])}
        return {"data": dict(form, client_id=client["client_id"])}

    def tokenRequest(self, client: Dict[str, Any], form: Dict[str, str]) -> Tuple[Any, Any]:
        return self.request("POST", "/oauth/token", **self.clientAuth(client, form))

    def exchange(self, client: Dict[str, Any], code: str, **changes: Optional[str]) -> Tuple[Any, Any]:
        form = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": client["redirect_uris"][0],
            "code_verifier": VERIFIER,
            "resource": SERVER + "/mcp",
        }
        form.update(changes)  # type: ignore[arg-type]
        return self.tokenRequest(client, {k: v for k, v in form.items() if v is not None})

    def obtainTokens(self, client: Dict[str, Any]) -> Dict[str, Any]:
        response, body = self.exchange(client, self.getCode(client))
        self.assertEqual(response.code, 200, body)
        return body  # type: ignore[no-any-return]

    def refresh(self, client: Dict[str, Any], token: str, **extra: str) -> Tuple[Any, Any]:
        return self.tokenRequest(client, dict({"grant_type": "refresh_token", "refresh_token": token}, **extra))
