"""
The floor of our stack, for bench/run.py: a bare C{twisted.web} resource
(no Klein, no store, no logging) that verifies an HS256 access token the
way mcpsvc does and returns a fixed JSON-RPC result.

    .venv/bin/python bench/baseline.py --port 8123 --secret "$JWT_SECRET" \\
        --issuer http://127.0.0.1:8123 [--audience http://127.0.0.1:8123/mcp]

  - C{POST /mcp}: C{Authorization: Bearer <jwt>} is verified with pyjwt
    (HS256 only; C{typ} C{at+jwt}; C{iss}, C{aud}, C{exp}, C{nbf}, C{iat}
    checked; C{sub}, C{jti}, C{client_id} and C{scope} required), the body
    is parsed as JSON to echo its C{id} (any JSON-RPC server must), and a
    fixed C{tools/call} result is returned. A bad token is a 401.
  - C{GET /ready}: 200.

What it does not do (and mcpsvc must): the revocation check against the
store, sessions, JSON-RPC dispatch and schema validation, the tool itself,
request logging, CORS/Origin/Host checks, body size limits.

L{mint} signs a token with the claim set mcpsvc issues, for the harness.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any, Optional

import jwt
from twisted.internet import reactor
from twisted.web.resource import Resource
from twisted.web.server import Site

LEEWAY = 30.0
TYPES = ("at+jwt", "application/at+jwt")
RESULT = {"content": [{"type": "text", "text": "hi"}], "isError": False}


def mint(secret: str, issuer: str, audience: str, lifetime: int = 3600) -> str:
    """
    An access token with the claims and header mcpsvc puts in its own.
    """
    now = int(time.time())
    claims = {
        "iss": issuer,
        "sub": "bench",
        "aud": audience,
        "exp": now + lifetime,
        "iat": now,
        "nbf": now,
        "jti": os.urandom(16).hex(),
        "client_id": "bench",
        "scope": "mcp:tools",
    }
    return jwt.encode(claims, secret.encode("utf-8"), algorithm="HS256", headers={"typ": "at+jwt"})


class Verifier:
    def __init__(self, secret: str, issuer: str, audience: str) -> None:
        self.key = secret.encode("utf-8")
        self.issuer = issuer
        self.audience = audience

    def verify(self, token: str) -> Optional[dict]:
        if not token or len(token) > 8192 or token.count(".") != 2:
            return None
        try:
            header = jwt.get_unverified_header(token)
            if header.get("alg") != "HS256" or str(header.get("typ", "")).lower() not in TYPES:
                return None
            claims = jwt.decode(
                token,
                self.key,
                algorithms=["HS256"],
                issuer=self.issuer,
                audience=self.audience,
                leeway=LEEWAY,
                options={"require": ["exp", "iat", "iss", "aud", "sub", "jti"]},
            )
        except jwt.PyJWTError:
            return None
        for name in ("client_id", "scope"):
            if not isinstance(claims.get(name), str):
                return None
        return claims


class MCP(Resource):
    isLeaf = True

    def __init__(self, verifier: Verifier) -> None:
        super().__init__()
        self.verifier = verifier

    def render_POST(self, request: Any) -> bytes:
        request.setHeader(b"content-type", b"application/json")
        raw = (request.getHeader(b"authorization") or b"").decode("latin-1").strip()
        scheme, _, token = raw.partition(" ")
        if scheme.lower() != "bearer" or self.verifier.verify(token.strip()) is None:
            request.setResponseCode(401)
            request.setHeader(b"www-authenticate", b'Bearer error="invalid_token"')
            return b'{"jsonrpc":"2.0","id":null,"error":{"code":-32001,"message":"Unauthorized"}}'
        try:
            message = json.loads(request.content.read())
            id = message.get("id") if isinstance(message, dict) else None
        except ValueError:
            request.setResponseCode(400)
            return b'{"jsonrpc":"2.0","id":null,"error":{"code":-32700,"message":"Parse error"}}'
        return json.dumps({"jsonrpc": "2.0", "id": id, "result": RESULT}, separators=(",", ":")).encode()


class Ready(Resource):
    isLeaf = True

    def render_GET(self, request: Any) -> bytes:
        request.setHeader(b"content-type", b"application/json")
        return b'{"status":"ready"}'


def main(argv: Optional[list] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--secret", default=os.environ.get("JWT_SECRET"), help="default: $JWT_SECRET")
    parser.add_argument("--issuer", required=True)
    parser.add_argument("--audience", help="default: ISSUER/mcp")
    args = parser.parse_args(argv)
    if not args.secret or len(args.secret.encode("utf-8")) < 32:
        parser.error("--secret (or JWT_SECRET) of at least 32 bytes is required")
    root = Resource()
    root.putChild(b"mcp", MCP(Verifier(args.secret, args.issuer, args.audience or args.issuer + "/mcp")))
    root.putChild(b"ready", Ready())
    site = Site(root)
    site.displayTracebacks = False
    reactor.listenTCP(args.port, site, interface="127.0.0.1")
    sys.stdout.write(f"baseline listening on 127.0.0.1:{args.port}\n")
    sys.stdout.flush()
    reactor.run()


if __name__ == "__main__":
    main()
