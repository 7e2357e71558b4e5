"""
The official MCP Python SDK (PyPI: C{mcp}) serving the same request as
mcpsvc, for bench/run.py's side-by-side row:

    .venv/bin/python bench/sdk_server.py --port 8124 --secret "$JWT_SECRET" \\
        --issuer http://127.0.0.1:8124 [--audience http://127.0.0.1:8124/mcp]

  - Streamable HTTP on C{/mcp}, stateless, JSON responses (the SDK's
    fastest mode, and the same shape as mcpsvc with C{SESSIONS=off}),
    served by uvicorn in one process with the SDK's default settings
    (its own DNS-rebinding protection on, for 127.0.0.1).
  - Bearer tokens checked by a C{TokenVerifier} that verifies the HS256
    JWT exactly as C{baseline.py} does (pyjwt: C{typ}, C{iss}, C{aud},
    C{exp}/C{nbf}/C{iat}, required claims); no revocation store (mcpsvc
    checks one on every request, so this favours the SDK).
  - One tool, C{calculate}, with the same input schema as mcpsvc's and the
    same evaluator (C{mcpsvc.tools.core.evaluate}), returning the same
    structured result (C{structuredContent} and a text block).
  - C{GET /ready}: 200.

The SDK logs at WARNING here (its default INFO logs every request to
stderr through the standard library, which mcpsvc's figures would then be
compared against unfairly in the other direction).
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Annotated, Any, Dict, Optional, Union

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))

import uvicorn  # noqa: E402
from pydantic import BaseModel, Field  # noqa: E402
from starlette.requests import Request  # noqa: E402
from starlette.responses import JSONResponse  # noqa: E402

from baseline import Verifier  # noqa: E402
from mcp.server.auth.provider import AccessToken  # noqa: E402
from mcp.server.auth.settings import AuthSettings  # noqa: E402
from mcp.server.mcpserver import MCPServer  # noqa: E402
from mcp.server.transport_security import TransportSecuritySettings  # noqa: E402
from mcpsvc.tools.core import MAX_EXPRESSION_LENGTH, evaluate  # noqa: E402


class JWTVerifier:
    """
    The SDK's C{TokenVerifier}, verifying like the baseline and mcpsvc.
    """

    def __init__(self, verifier: Verifier) -> None:
        self.verifier = verifier

    async def verify_token(self, token: str) -> Optional[AccessToken]:
        claims = self.verifier.verify(token)
        if claims is None:
            return None
        return AccessToken(token=token, client_id=claims["client_id"], scopes=claims["scope"].split(),
                           expires_at=int(claims["exp"]), resource=self.verifier.audience,
                           subject=claims["sub"])


class Calculation(BaseModel):
    expression: str
    result: Union[int, float]
    text: str


def build(secret: str, issuer: str, audience: str, port: int) -> Any:
    server = MCPServer(
        "sdk-bench",
        token_verifier=JWTVerifier(Verifier(secret, issuer, audience)),
        auth=AuthSettings(issuer_url=issuer, resource_server_url=audience, required_scopes=["mcp:tools"],
                          validate_token_resource=False),  # the verifier checks aud itself
        log_level="WARNING",
    )

    @server.tool(description="Evaluate an arithmetic expression.")
    def calculate(expression: Annotated[str, Field(min_length=1, max_length=MAX_EXPRESSION_LENGTH)]) -> Calculation:
        result = evaluate(expression)
        if isinstance(result, float) and result.is_integer() and abs(result) < 2**53:
            text = repr(result)
        else:
            text = str(result)
        return Calculation(expression=expression, result=result, text=text)

    security = TransportSecuritySettings(allowed_hosts=[f"127.0.0.1:{port}"],
                                         allowed_origins=[f"http://127.0.0.1:{port}"])
    app = server.streamable_http_app(json_response=True, stateless_http=True, transport_security=security)

    async def ready(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ready"})

    app.add_route("/ready", ready, methods=["GET"])
    return app


def main(argv: Optional[list] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--secret", default=os.environ.get("JWT_SECRET"), help="default: $JWT_SECRET")
    parser.add_argument("--issuer", required=True)
    parser.add_argument("--audience", help="default: ISSUER/mcp")
    args = parser.parse_args(argv)
    if not args.secret or len(args.secret.encode("utf-8")) < 32:
        parser.error("--secret (or JWT_SECRET) of at least 32 bytes is required")
    app = build(args.secret, args.issuer, args.audience or args.issuer + "/mcp", args.port)
    config: Dict[str, Any] = {"host": "127.0.0.1", "port": args.port, "log_level": "warning",
                              "access_log": False, "lifespan": "on"}
    uvicorn.run(app, **config)


if __name__ == "__main__":
    main()
