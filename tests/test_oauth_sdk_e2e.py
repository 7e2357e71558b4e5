"""
Notes for the end-to-end test of the official MCP Python SDK client
(C{mcp} 2.3.0, C{mcp.client.auth.OAuthClientProvider}) against a real
C{twistd -n mcpsvc} process. No tests here yet: the lead writes them with
the process harness in C{tests/process.py}.

The same flow already runs in process, without sockets, in
C{mcpsvc/oauth/test/test_sdk_client.py} (the SDK's C{httpx2.AsyncClient}
with a C{MockTransport} that hands requests to the Klein resources); copy
its handlers. What the real-process version needs:

 1. Server settings: C{AUTHORIZE_MODE=auto} (consent/login pages are a
    later issue; in those modes the authorization endpoint answers
    C{error=temporarily_unavailable}), C{SERVER_URL=http://127.0.0.1:<port>}
    (the issuer, exactly, no trailing slash), C{DCR_AUTH_TOKEN} set,
    C{STORE=memory} or a temp SQLite path.

 2. The provider: C{OAuthClientProvider(server_url=SERVER_URL + "/mcp",
    client_metadata=..., storage=..., redirect_handler=...,
    callback_handler=...)}.
    - C{storage}: any object with async C{get_tokens}/C{set_tokens}/
      C{get_client_info}/C{set_client_info}.
    - C{client_metadata}: C{redirect_uris=["http://127.0.0.1:<any
      port>/callback"]} (loopback: allowed by the default
      C{DCR_REDIRECT_PATTERNS}; any port matches at authorize time),
      C{grant_types=["authorization_code", "refresh_token"]}.
    - The SDK has no way to send an initial access token with its
      registration request (it builds a bare request; client default
      headers are not applied to it). mcpsvc accepts the token as
      C{token_value} in the JSON body, so subclass C{OAuthClientMetadata}
      with a C{token_value: str | None = None} field and set it. (Or
      pre-register with C{mcpsvc clients add} and return that client from
      C{storage.get_client_info}, which skips DCR.)
    - The SDK omits C{token_endpoint_auth_method}; mcpsvc then registers
      C{client_secret_basic} (RFC 7591 default) and returns a secret; the
      SDK sends Basic and also C{client_id} in the body (accepted).
    - It picks up C{scope} from metadata: "mcp:tools mcp:read
      offline_access" (offline_access adds C{prompt=consent}, ignored).
 3. C{redirect_handler(url)}: GET the URL without following redirects
    (C{httpx2.get(url, follow_redirects=False)}), keep the C{Location}.
    C{callback_handler()}: parse C{code}, C{state} and C{iss} from it into
    C{mcp.shared.auth.AuthorizationCodeResult}; the SDK rejects a missing
    C{iss} (we advertise C{authorization_response_iss_parameter_supported}).
    No listener on the callback port is needed.
 4. Order of requests the SDK makes (asserted in the in-process test):
    POST /mcp (401 with C{resource_metadata}), GET
    /.well-known/oauth-protected-resource/mcp, GET
    /.well-known/oauth-authorization-server, POST /oauth/register, GET
    /oauth/authorize, POST /oauth/token, POST /mcp with the token.
    The real test goes through C{mcp.client.streamable_http} instead of a
    bare POST, with C{auth=provider}; C{initialize} + C{tools/list} then
    need the MCP endpoint (issue 3) wired to C{BearerAuthenticator}.
 5. Refresh: set C{provider.context.token_expiry_time = 1.0} (the SDK
    uses wall-clock C{time.time()}); its next request refreshes first
    (with C{resource}). Revocation: POST /oauth/revoke with the stored
    client credentials and C{token=<access token>}; then a request with
    that token (not through the provider, which would re-authorize on 401)
    answers 401 with C{error="invalid_token"}.
"""
