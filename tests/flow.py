"""
The OAuth + MCP flow, step by step, over plain HTTP (urllib), for tests
that drive one or several real mcpsvc processes: each step takes the base
URL of the instance to send it to, so a flow can hop between instances.

Nothing here waits on time: every call is one request with a timeout.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import ssl
import urllib.error
import urllib.parse
import urllib.request
from typing import Any, Dict, Optional, Tuple

REDIRECT = "http://127.0.0.1:33418/callback"
PROTOCOL = "2025-06-18"
ACCEPT = "application/json, text/event-stream"


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def http(
    url: str, method: str = "GET", body: Any = None, headers: Optional[Dict[str, str]] = None,
    form: Optional[Dict[str, str]] = None, context: Optional[ssl.SSLContext] = None,
    timeout: float = 15,
) -> Tuple[int, Dict[str, str], Any]:
    """
    One request, redirects not followed; the status, the headers (names
    lower-cased) and the body (parsed when it is JSON).
    """
    data = None
    headers = dict(headers or {})
    if body is not None:
        data = json.dumps(body).encode()
        headers.setdefault("Content-Type", "application/json")
    elif form is not None:
        data = urllib.parse.urlencode(form).encode()
        headers.setdefault("Content-Type", "application/x-www-form-urlencoded")
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    handlers: list = [_NoRedirect()]
    if context is not None:
        handlers.append(urllib.request.HTTPSHandler(context=context))
    opener = urllib.request.build_opener(*handlers)
    try:
        with opener.open(request, timeout=timeout) as response:
            status, responseHeaders, raw = response.status, response.headers, response.read()
    except urllib.error.HTTPError as e:
        status, responseHeaders, raw = e.code, e.headers, e.read()
    lowered = {k.lower(): v for k, v in responseHeaders.items()}
    try:
        parsed = json.loads(raw)
    except ValueError:
        parsed = raw
    return status, lowered, parsed


def basic(clientID: str, secret: str) -> str:
    quote = urllib.parse.quote
    return "Basic " + base64.b64encode(f"{quote(clientID)}:{quote(secret)}".encode()).decode()


class Flow:
    """
    One client's OAuth + MCP conversation with a service whose public URL
    is C{serverURL} (the issuer and audience).

    @ivar client: the registration response.
    @ivar tokens: the latest token response.
    @ivar sessionID: the MCP session, once initialized.
    """

    def __init__(self, serverURL: str, iat: str, context: Optional[ssl.SSLContext] = None) -> None:
        self.serverURL = serverURL
        self.iat = iat
        self.context = context
        self.client: Dict[str, Any] = {}
        self.tokens: Dict[str, Any] = {}
        self.sessionID: Optional[str] = None
        self.verifier = secrets.token_urlsafe(48)
        digest = hashlib.sha256(self.verifier.encode()).digest()
        self.challenge = base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
        self._id = 0

    def request(self, base: str, path: str, **kw: Any) -> Tuple[int, Dict[str, str], Any]:
        return http(base + path, context=self.context, **kw)

    def register(self, base: str, iat: Optional[str] = None) -> Tuple[int, Dict[str, str], Any]:
        result = self.request(base, "/oauth/register", method="POST", body={
            "client_name": "flow", "redirect_uris": [REDIRECT],
            "token_endpoint_auth_method": "client_secret_basic",
            "grant_types": ["authorization_code", "refresh_token"],
        }, headers={"Authorization": "Bearer " + (iat or self.iat)})
        if result[0] == 201:
            self.client = result[2]
        return result

    def authorize(self, base: str, scope: Optional[str] = None) -> str:
        """
        An authorization request (C{AUTHORIZE_MODE=auto}), for C{scope}
        when given; the code.
        """
        params = {
            "response_type": "code", "client_id": self.client["client_id"],
            "redirect_uri": REDIRECT, "code_challenge": self.challenge,
            "code_challenge_method": "S256", "state": "flow-state",
            "resource": self.serverURL + "/mcp",
        }
        if scope is not None:
            params["scope"] = scope
        query = urllib.parse.urlencode(params)
        status, headers, body = self.request(base, "/oauth/authorize?" + query)
        assert status == 302, (status, body)
        params = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(headers["location"]).query))
        assert "code" in params, params
        return params["code"]

    def _auth(self) -> Dict[str, str]:
        return {"Authorization": basic(self.client["client_id"], self.client["client_secret"])}

    def post(self, base: str, path: str, form: Dict[str, str], aud: str = "") -> Tuple[int, Dict[str, str], Any]:
        """
        POST C{form} to C{path} as the client (C{client_secret_basic}); a
        subclass may authenticate otherwise, C{aud} being the audience of
        a client assertion (the issuer when empty).
        """
        return self.request(base, path, method="POST", headers=self._auth(), form=form)

    def exchange(self, base: str, code: str) -> Tuple[int, Dict[str, str], Any]:
        result = self.post(base, "/oauth/token", {
            "grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT,
            "code_verifier": self.verifier, "resource": self.serverURL + "/mcp",
        })
        if result[0] == 200:
            self.tokens = result[2]
        return result

    def refresh(self, base: str) -> Tuple[int, Dict[str, str], Any]:
        result = self.post(base, "/oauth/token", {
            "grant_type": "refresh_token", "refresh_token": self.tokens["refresh_token"],
        }, aud=self.serverURL + "/oauth/token")
        if result[0] == 200:
            self.tokens = result[2]
        return result

    def revoke(self, base: str, token: str) -> Tuple[int, Dict[str, str], Any]:
        return self.post(base, "/oauth/revoke", {"token": token},
                         aud=self.serverURL + "/oauth/revoke")

    def mcp(self, base: str, method: str, params: Optional[Dict[str, Any]] = None,
            notification: bool = False, token: Optional[str] = None) -> Tuple[int, Dict[str, str], Any]:
        message: Dict[str, Any] = {"jsonrpc": "2.0", "method": method}
        if params is not None:
            message["params"] = params
        if not notification:
            self._id += 1
            message["id"] = self._id
        headers = {
            "Authorization": "Bearer " + (token or self.tokens["access_token"]),
            "Accept": ACCEPT, "MCP-Protocol-Version": PROTOCOL,
        }
        if self.sessionID:
            headers["Mcp-Session-Id"] = self.sessionID
        return self.request(base, "/mcp", method="POST", body=message, headers=headers)

    def initialize(self, base: str) -> Tuple[int, Dict[str, str], Any]:
        self.sessionID = None
        result = self.mcp(base, "initialize", {
            "protocolVersion": PROTOCOL, "capabilities": {},
            "clientInfo": {"name": "flow", "version": "1"},
        })
        if result[0] == 200:
            self.sessionID = result[1].get("mcp-session-id")
            self.mcp(base, "notifications/initialized", notification=True)
        return result

    def callTool(self, base: str, name: str, arguments: Dict[str, Any]) -> Tuple[int, Dict[str, str], Any]:
        return self.mcp(base, "tools/call", {"name": name, "arguments": arguments})


def metricSamples(text: str) -> Dict[Tuple[str, Tuple[Tuple[str, str], ...]], float]:
    """
    Parse Prometheus text into C{(name, sorted labels) -> value}.
    """
    from prometheus_client.parser import text_string_to_metric_families

    out: Dict[Tuple[str, Tuple[Tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out
