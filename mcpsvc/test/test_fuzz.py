"""
Property-based fuzzing of every HTTP route (hypothesis), in memory.

Each example is one request, built from random and mutated parts (method,
path, query string, headers, body, form fields, tokens), fed as raw bytes
to a real L{HTTPChannel} of the whole mcpsvc site (every app, the request
class, the body limit, the metrics) over a L{StringTransport}. Nothing
touches a socket or the real clock, so a few hundred requests take a few
seconds.

Every answer must:
  - not be a 5xx;
  - leave no traceback in the log (each example checks the events it
    caused; trial would also fail the test for a logged failure);
  - be in the error format of its path when it is an error (JSON-RPC
    under C{/mcp}, OAuth C{{"error", "error_description"}} under the
    OAuth paths, C{{"error", "message"}} elsewhere; an HTML page where the
    authorization endpoint shows one to a person).

The routes are read from the site itself (L{enumerateRoutes}): a new
route is fuzzed without touching this file, and a resource of a kind this
file cannot read fails L{RouteTests}.

The example count is bounded by the C{mcpsvc} hypothesis profile
(C{MCPSVC_FUZZ_EXAMPLES}, default 150 per property) and the run is
derandomized, so CI is deterministic and quick; set a larger count and
C{MCPSVC_FUZZ_RANDOM=1} to search further by hand.
"""

from __future__ import annotations

import base64
import json
import os
import tempfile
import urllib.parse
from typing import Any, Dict, List, Optional, Sequence, Tuple

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet.defer import maybeDeferred, succeed
from twisted.internet.task import Clock
from twisted.logger import LogLevel, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from mcpsvc.config import Config, RateLimit
from mcpsvc.http.site import McpsvcSite
from mcpsvc.metrics import Metrics
from mcpsvc.oauth import pkce
from mcpsvc.service import buildRootResource
from mcpsvc.storage.memory import MemoryStore
from mcpsvc.test.fakes import rawRequest

EXAMPLES = int(os.environ.get("MCPSVC_FUZZ_EXAMPLES", "150"))
settings.register_profile(
    "mcpsvc",
    max_examples=EXAMPLES,
    derandomize=not os.environ.get("MCPSVC_FUZZ_RANDOM"),
    database=None,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                           HealthCheck.filter_too_much],
)
FUZZ = settings.get_profile("mcpsvc")

SERVER = "http://127.0.0.1:3000"
IAT = "fuzz-initial-access-token-0123456789"
SECRET = "f" * 40
METRICS_TOKEN = "fuzz-metrics-token-0123456789"
REDIRECT = "http://127.0.0.1:33418/callback"
#: The metadata document client (served by a scripted agent: the fuzz
#: suite never resolves a name nor connects anywhere).
DOC_URL = "https://client.example.com/fuzz/client.json"
DOCUMENT = {"client_id": DOC_URL, "client_name": "fuzz document client",
            "redirect_uris": [REDIRECT], "grant_types": ["authorization_code", "refresh_token"],
            "token_endpoint_auth_method": "none"}
MODERN = "2026-07-28"
VERIFIER = "v" * 43
OAUTH_PREFIXES = ("/oauth/", "/authorize", "/token", "/register", "/revoke")
BIG = RateLimit(count=1_000_000, seconds=1)
MODERN = "2026-07-28"
MODERN_META = {
    "io.modelcontextprotocol/protocolVersion": MODERN,
    "io.modelcontextprotocol/clientCapabilities": {},
    "io.modelcontextprotocol/clientInfo": {"name": "fuzz", "version": "1"},
}
TASKS_META = {
    "io.modelcontextprotocol/protocolVersion": MODERN,
    "io.modelcontextprotocol/clientCapabilities": {
        "extensions": {"io.modelcontextprotocol/tasks": {}}, "elicitation": {}},
    "io.modelcontextprotocol/clientInfo": {"name": "fuzz", "version": "1"},
}


# -- the routes ---------------------------------------------------------------


def enumerateRoutes(resource: Any) -> List[Tuple[str, Tuple[str, ...]]]:
    """
    Every C{(path, methods)} the root resource serves, read from the
    resources themselves: the L{Dispatcher}'s table, each Klein app's URL
    map, and the C{/mcp} leaf's own paths and methods.

    @raise TypeError: a resource of a kind this function cannot read.
    """
    from klein.resource import KleinResource

    from mcpsvc.http.app import Dispatcher
    from mcpsvc.mcp.app import McpResource

    if not isinstance(resource, Dispatcher):
        raise TypeError(f"the root is {resource!r}, not a Dispatcher")
    found: Dict[str, set] = {}
    seen = set()
    children = [r.resource for r in resource._routes] + [resource._fallback]
    for child in children:
        if id(child) in seen:
            continue
        seen.add(id(child))
        if isinstance(child, KleinResource):
            for rule in child._app.url_map.iter_rules():
                found.setdefault(rule.rule, set()).update(rule.methods or ())
        elif isinstance(child, McpResource):
            for path in child._paths:
                found.setdefault(path.decode(), set()).update(m.decode() for m in child._methods)
        else:
            raise TypeError(f"cannot enumerate the routes of {child!r}")
    return sorted((path, tuple(sorted(methods))) for path, methods in found.items())


# -- the service under test ---------------------------------------------------


class Service:
    """
    The whole site on a memory store, with a client, tokens and an MCP
    session already made (so that mutated requests reach past
    authentication), in C{auto} and C{consent} authorization modes.
    """

    def __init__(self) -> None:
        self.clock = Clock()
        self.clock.advance(1_750_000_000)
        self.store = MemoryStore(self.clock)
        self.filesRoot = tempfile.mkdtemp(prefix="mcpsvc-fuzz-")
        with open(os.path.join(self.filesRoot, "hello.txt"), "w") as f:
            f.write("hello\n")
        base = Config(
            serverURL=SERVER, issuer=SERVER, jwtSecret=SECRET, dcrAuthToken=IAT,
            store="memory", authorizeMode="auto", metricsToken=METRICS_TOKEN,
            toolPacks=("core", "conformance"), filesRoot=self.filesRoot, toolRateLimit=None,
            rateLimitRegister=BIG, rateLimitToken=BIG, rateLimitAuthorize=BIG,
            rateLimitRevoke=BIG,
        )
        self.metrics = Metrics()
        self.assertions = 0
        self.auto = self._site(base)
        self.consent = self._site(base.replace(authorizeMode="consent"))
        self._provision()

    def _site(self, config: Config) -> McpsvcSite:
        def runInThread(f: Any, *a: Any, **kw: Any) -> Any:
            return maybeDeferred(f, *a, **kw)

        from mcpsvc.oauth.fetch import FetchPolicy, SafeFetcher
        from mcpsvc.oauth.test.fakehttp import FakeAgent, document

        # Production fetch rules (https, port 443, public hosts: checked on
        # the URL), a scripted agent and a resolver that knows nothing:
        # no lookup, no connection.
        agent = FakeAgent()
        agent.serve(DOC_URL, document(DOCUMENT, Cache_Control="max-age=60"))
        fetcher = SafeFetcher(reactor=None, clock=self.clock, agent=agent,
                              resolve=lambda host, port: succeed([]),
                              policy=FetchPolicy(production=True))
        resource = buildRootResource(
            config, store=self.store, clock=self.clock, reactor=self.clock,
            runInThread=runInThread, metrics=self.metrics, fetcher=fetcher,
        )
        self.resource = resource
        return McpsvcSite(resource, clock=self.clock, metrics=self.metrics, logRequests=False)

    def send(self, site: McpsvcSite, method: str, path: str, headers: Sequence[Tuple[bytes, bytes]] = (),
             body: bytes = b"") -> Tuple[int, Dict[str, List[str]], bytes]:
        return send(site, raw(method.encode(), path.encode(), headers, body))[:3]

    def _provision(self) -> None:
        status, _, body = self.send(self.auto, "POST", "/oauth/register", [
            (b"Authorization", b"Bearer " + IAT.encode()), (b"Content-Type", b"application/json"),
        ], json.dumps({
            "client_name": "fuzz", "redirect_uris": [REDIRECT],
            "grant_types": ["authorization_code", "refresh_token", "client_credentials"],
            "token_endpoint_auth_method": "client_secret_post",
        }).encode())
        assert status == 201, (status, body)
        self.client = json.loads(body)
        query = urllib.parse.urlencode({
            "response_type": "code", "client_id": self.client["client_id"],
            "redirect_uri": REDIRECT, "code_challenge": pkce.challengeFor(VERIFIER),
            "code_challenge_method": "S256", "state": "s", "scope": "mcp:tools mcp:read",
        })
        self.authorizeQuery = query
        status, headers, body = self.send(self.auto, "GET", "/oauth/authorize?" + query)
        assert status == 302, (status, body)
        location = headers["location"][0]
        code = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(location).query))["code"]
        status, _, body = self.send(self.auto, "POST", "/oauth/token", [
            (b"Content-Type", b"application/x-www-form-urlencoded"),
        ], urllib.parse.urlencode({
            "grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT,
            "code_verifier": VERIFIER, "client_id": self.client["client_id"],
            "client_secret": self.client["client_secret"],
        }).encode())
        assert status == 200, (status, body)
        self.tokens = json.loads(body)
        status, headers, body = self.send(self.auto, "POST", "/mcp", self.mcpHeaders(session=False), json.dumps({
            "jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
                "protocolVersion": "2025-06-18", "capabilities": {},
                "clientInfo": {"name": "fuzz", "version": "1"}},
        }).encode())
        assert status == 200, (status, body)
        self.sessionID = headers["mcp-session-id"][0]
        status, _, _ = self.send(self.auto, "POST", "/mcp", self.mcpHeaders(),
                                 b'{"jsonrpc":"2.0","method":"notifications/initialized"}')
        assert status == 202, status
        # A private_key_jwt client (RFC 7523) with an inline JWK Set.
        from cryptography.hazmat.primitives.asymmetric import ec
        import jwt as pyjwt

        self.assertionKey = ec.generate_private_key(ec.SECP256R1())
        public = json.loads(pyjwt.algorithms.ECAlgorithm.to_jwk(self.assertionKey.public_key()))
        public.update(kid="fuzz-key", alg="ES256", use="sig")
        status, _, body = self.send(self.auto, "POST", "/oauth/register", [
            (b"Authorization", b"Bearer " + IAT.encode()), (b"Content-Type", b"application/json"),
        ], json.dumps({
            "client_name": "fuzz-jwt", "grant_types": ["client_credentials"],
            "token_endpoint_auth_method": "private_key_jwt", "jwks": {"keys": [public]},
        }).encode())
        assert status == 201, (status, body)
        self.jwtClient = json.loads(body)
        # Tasks (2026-07-28 tasks extension) waiting for input: one whose
        # id is fuzzed by get/update, one by cancel.
        self.taskIDs = [self.startTask("multi_input") for _ in range(2)]
        # The consent page's form, whose fields (csrf_token...) are mutated.
        status, _, page = self.send(self.consent, "GET", "/oauth/authorize?" + query)
        assert status == 200, (status, page)
        self.consentFields = _hiddenFields(page.decode("utf-8"))
        assert "csrf_token" in self.consentFields, self.consentFields

    def assertion(self, **changes: Any) -> str:
        """
        A fresh, valid client assertion of the C{private_key_jwt} client
        (C{changes} replace claims; a C{None} removes one).
        """
        import jwt as pyjwt

        self.assertions += 1
        now = int(self.clock.seconds())
        claims: Dict[str, Any] = {
            "iss": self.jwtClient["client_id"], "sub": self.jwtClient["client_id"],
            "aud": SERVER, "iat": now, "exp": now + 60, "jti": f"fuzz-{self.assertions:09d}",
        }
        claims.update(changes)
        claims = {k: v for k, v in claims.items() if v is not None}
        return pyjwt.api_jws.encode(json.dumps(claims).encode(), self.assertionKey,
                                    algorithm="ES256", headers={"kid": "fuzz-key"})

    def startTask(self, tool: str) -> str:
        body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {
            "name": tool, "arguments": {}, "_meta": TASKS_META}}).encode()
        status, _, answer = self.send(self.auto, "POST", "/mcp", self.modernHeaders("tools/call", tool),
                                      body)
        assert status == 200, (status, answer)
        taskID = json.loads(answer)["result"]["taskId"]
        self.clock.advance(0)  # the task publishes its questions
        return str(taskID)

    def modernHeaders(self, method: str, name: Optional[str]) -> List[Tuple[bytes, bytes]]:
        headers = [
            (b"Authorization", b"Bearer " + self.tokens["access_token"].encode()),
            (b"Content-Type", b"application/json"),
            (b"Accept", b"application/json, text/event-stream"),
            (b"MCP-Protocol-Version", MODERN.encode()),
            (b"Mcp-Method", method.encode()),
        ]
        if name is not None:
            headers.append((b"Mcp-Name", name.encode("utf-8", "surrogatepass")))
        return headers

    def mcpHeaders(self, session: bool = True) -> List[Tuple[bytes, bytes]]:
        headers = [
            (b"Authorization", b"Bearer " + self.tokens["access_token"].encode()),
            (b"Content-Type", b"application/json"),
            (b"Accept", b"application/json, text/event-stream"),
            (b"MCP-Protocol-Version", b"2025-06-18"),
        ]
        if session:
            headers.append((b"Mcp-Session-Id", self.sessionID.encode()))
        return headers


def _hiddenFields(page: str) -> Dict[str, str]:
    import html
    import re

    fields = {}
    for match in re.finditer(r'<input type="hidden" name="([^"]+)" value="([^"]*)"', page):
        fields[html.unescape(match.group(1))] = html.unescape(match.group(2))
    return fields


def raw(method: bytes, target: bytes, headers: Sequence[Tuple[bytes, bytes]], body: bytes) -> bytes:
    lines = [method + b" " + target + b" HTTP/1.1", b"Host: 127.0.0.1:3000"]
    lines += [name + b": " + value for name, value in headers]
    lines.append(b"Content-Length: " + str(len(body)).encode())
    lines.append(b"Connection: close")
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def send(site: McpsvcSite, data: bytes) -> Tuple[int, Dict[str, List[str]], bytes, bool]:
    """
    One request; the status (0 when no response has started: an open
    stream), headers, body, and whether the connection is still open.
    """
    status, headers, body, transport = rawRequest(site, data)
    stillOpen = not transport.disconnecting
    if stillOpen:
        transport.loseConnection()
    return status, headers, body, stillOpen


# -- strategies ---------------------------------------------------------------

_json_leaf = (
    st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=30)
    # JSON integers have no bound; these overflow a float.
    | st.sampled_from([10 ** 400, -(10 ** 400), 2 ** 1024])
)
json_values = st.recursive(
    _json_leaf,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=12,
)

#: JSON text no ordinary encoder writes, found by hand or by this suite.
NASTY_JSON = [
    "[" * 5000 + "]" * 5000,
    '{"a":' * 3000 + "1" + "}" * 3000,
    '"\\ud800"', '"\\udfff x"', '{"\\ud800":1}', "1e999", "-1e999", "1" * 5000,
    "NaN", "Infinity", "[1,]", "{", "\"\\u0000\"", "\ufeff{}", "[]", "{}", "null", "0",
    '"' + "x" * 5000 + '"',
]

nasty_json_text = st.sampled_from(NASTY_JSON)


@st.composite
def mutated_json(draw: Any, seed: Any) -> bytes:
    """
    C{seed} (a valid request body) with values replaced by random or nasty
    JSON, or the whole body replaced.
    """
    choice = draw(st.integers(0, 5))
    if choice == 0:
        return draw(nasty_json_text).encode("utf-8", "surrogatepass")
    if choice == 1:
        return json.dumps(draw(json_values)).encode()
    value = json.loads(json.dumps(seed))
    target = value
    # Walk down to a random container, then replace or add one member.
    for _ in range(draw(st.integers(0, 3))):
        if isinstance(target, dict) and target:
            key = draw(st.sampled_from(sorted(target)))
            if isinstance(target[key], (dict, list)):
                target = target[key]
        elif isinstance(target, list) and target:
            index = draw(st.integers(0, len(target) - 1))
            if isinstance(target[index], (dict, list)):
                target = target[index]
    marker = "\x00NASTY\x00"
    replacement: Any = draw(json_values | st.just(marker))
    if isinstance(target, dict):
        key = draw(st.sampled_from(sorted(target)) if target and draw(st.booleans()) else st.text(max_size=10))
        target[key] = replacement
    elif isinstance(target, list):
        target.append(replacement)
    text = json.dumps(value)
    if marker in text or choice == 5:
        nasty = draw(nasty_json_text)
        text = text.replace(json.dumps(marker), nasty) if marker in text else text
    return text.encode("utf-8", "surrogatepass")


header_bytes = st.binary(max_size=60).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b""))
header_text = st.text(max_size=40).map(lambda t: t.replace("\r", "").replace("\n", "").encode("utf-8", "replace"))


@st.composite
def tokens(draw: Any, valid: str) -> bytes:
    """
    Tokens: the valid access token mutated (header or payload swapped for
    random or nasty JSON, signature cut, characters changed), or random.
    """
    head, payload, signature = valid.split(".")

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    choice = draw(st.integers(0, 5))
    if choice == 0:
        head = b64(draw(nasty_json_text).encode("utf-8", "surrogatepass"))
    elif choice == 1:
        payload = b64(json.dumps(draw(json_values)).encode())
    elif choice == 2:
        head = b64(json.dumps(draw(json_values)).encode())
    elif choice == 3:
        signature = signature[: draw(st.integers(0, len(signature)))]
    elif choice == 4:
        return draw(header_bytes)
    token = ".".join([head, payload, signature])
    if draw(st.booleans()):
        position = draw(st.integers(0, len(token)))
        token = token[:position] + draw(st.text(max_size=3)) + token[position:]
    return token.encode("utf-8", "replace")[:9000]


non_ascii = st.text(st.characters(min_codepoint=0x80, exclude_categories=["Cs"]), min_size=1, max_size=3)


@st.composite
def form_body(draw: Any, seed: Dict[str, str]) -> bytes:
    fields = dict(seed)
    for _ in range(draw(st.integers(0, 3))):
        key = draw(st.sampled_from(sorted(seed)) | st.text(max_size=10))
        if key in fields and draw(st.booleans()):
            # A small change to the valid value: it still looks right to
            # the first checks (a token keeps its "v1." and its dots).
            value = fields[key]
            position = draw(st.integers(0, len(value)))
            cut = draw(st.integers(0, 3))
            inserted = draw(st.text(min_size=1, max_size=3) | non_ascii)
            fields[key] = value[:position] + inserted + value[position + cut:]
        else:
            fields[key] = draw(st.text(max_size=40) | nasty_json_text | st.just(""))
    pairs = list(fields.items())
    if draw(st.integers(0, 4)) == 0 and pairs:
        pairs.append(draw(st.sampled_from(pairs)))  # a repeated parameter
    body = urllib.parse.urlencode(pairs, encoding="utf-8", errors="surrogatepass").encode()
    if draw(st.integers(0, 4)) == 0:
        body += draw(st.binary(max_size=20))
    return body


@st.composite
def query_string(draw: Any, seed: str) -> str:
    if draw(st.integers(0, 4)) == 0:
        junk = draw(st.binary(max_size=40))
        return "?" + urllib.parse.quote_from_bytes(junk, safe="=&%")
    fields = list(urllib.parse.parse_qsl(seed))
    for _ in range(draw(st.integers(0, 3))):
        key = draw(st.sampled_from([k for k, _ in fields] + ["access_token", "x"]) if fields
                   else st.text(max_size=8))
        fields.append((key, draw(st.text(max_size=30))))
    if fields and draw(st.booleans()):
        del fields[draw(st.integers(0, len(fields) - 1))]
    return "?" + urllib.parse.urlencode(fields, encoding="utf-8", errors="surrogatepass")


#: Ways to spell, or nearly spell, a client id URL: other hosts and
#: address forms, user information, ports, encodings, dot segments,
#: fragments, plain http, IDNA, trailing dots, spaces, control characters.
URL_PARTS = [
    "https://", "http://", "HTTPS://", "https:/", "https:///", "//", "https://user@",
    "https://client.example.com@", "https://client.example.com:", ":443", ":8443", ":0",
    ":99999", "127.0.0.1", "2130706433", "0x7f.1", "0177.0.0.1", "[::1]", "[fe80::1%25eth0]",
    "[::ffff:127.0.0.1]", "[64:ff9b::a00:1]", "[2002:a00:1::]", "169.254.169.254", "localhost",
    "app.localhost.", "xn--80ak6aa92e.com", "ex%61mple.com", "client.example.com.",
    "/./", "/../", "/%2e%2e/", "#frag", "?q=1", "\\", " ", "\t", "\x00", "%00",
    "\u0430", "\u202e", "/" * 3, "a" * 300,
]


@st.composite
def client_id_urls(draw: Any) -> str:
    """
    The metadata document URL, mutated with the parts of L{URL_PARTS}
    (inserted, appended or replacing a piece), or one built from them.
    """
    if draw(st.integers(0, 4)) == 0:
        parts = draw(st.lists(st.sampled_from(URL_PARTS), min_size=1, max_size=5))
        return "".join(parts)
    url = DOC_URL
    for _ in range(draw(st.integers(0, 3))):
        position = draw(st.integers(0, len(url)))
        cut = draw(st.integers(0, 12))
        inserted = draw(st.sampled_from(URL_PARTS) | st.text(max_size=4))
        url = url[:position] + inserted + url[position + cut:]
    return url


METHODS = ["GET", "POST", "DELETE", "HEAD", "OPTIONS", "PUT", "PATCH"]
methods = st.sampled_from(METHODS) | st.from_regex(r"[A-Z]{1,12}", fullmatch=True)
CONTENT_TYPES = [b"application/json", b"application/x-www-form-urlencoded", b"text/plain",
                 b"application/json; charset=utf-8", b"multipart/form-data; boundary=x", b""]


# -- checks ---------------------------------------------------------------------


class LogWatch:
    """
    The log events at error level or above, and those carrying a failure.
    """

    def __init__(self) -> None:
        self.bad: List[Dict[str, Any]] = []

    def __call__(self, event: Dict[str, Any]) -> None:
        level = event.get("log_level")
        if event.get("log_failure") is not None or level in (LogLevel.error, LogLevel.critical):
            self.bad.append(event)

    def take(self) -> List[str]:
        from twisted.logger import formatEvent

        out = []
        for event in self.bad:
            text = formatEvent(event)
            failure = event.get("log_failure")
            if failure is not None:
                text += "\n" + failure.getTraceback()
            out.append(text)
        self.bad = []
        return out


def family(path: str) -> str:
    path = path.split("?", 1)[0]
    if path == "/mcp" or path.startswith("/mcp/"):
        return "jsonrpc"
    for prefix in OAUTH_PREFIXES:
        if path == prefix.rstrip("/") or path.startswith(prefix):
            return "oauth"
    return "plain"


class FuzzMixin:
    """
    The checks every property makes about one request.
    """

    service: Service
    watch: LogWatch

    def setUp(self) -> None:
        self.service = _service(type(self))
        self.watch = LogWatch()
        globalLogPublisher.addObserver(self.watch)
        self.addCleanup(globalLogPublisher.removeObserver, self.watch)  # type: ignore[attr-defined]

    def check(self, site: McpsvcSite, method: str, target: str,
              headers: Sequence[Tuple[bytes, bytes]], body: bytes) -> Tuple[int, Any]:
        data = raw(method.encode("latin-1"), target.encode("latin-1"), headers, body)
        status, responseHeaders, responseBody, stillOpen = send(site, data)
        where = f"{method} {target[:200]!r} headers={list(headers)!r:.600} body={body[:300]!r}"
        bad = self.watch.take()
        assert not bad, f"{where} logged:\n" + "\n".join(bad)
        if status == 0:
            # No response started: only an open stream may do that.
            assert stillOpen, f"{where}: no response and the connection closed"
            return status, None
        assert status < 500, f"{where} -> {status} {responseBody[:300]!r}"
        parsed = None
        contentType = (responseHeaders.get("content-type") or [""])[0]
        if contentType.startswith("application/json") and responseBody and method != "HEAD":
            parsed = json.loads(responseBody)
        if status >= 400 and method != "HEAD" and responseBody:
            self.checkFormat(where, target, status, contentType, parsed)
        return status, parsed

    def checkFormat(self, where: str, target: str, status: int, contentType: str, parsed: Any) -> None:
        kind = family(target)
        if contentType.startswith("text/html"):
            # The authorization endpoint shows a person an error page.
            assert kind == "oauth" and "authorize" in target.split("?")[0], f"{where}: HTML error"
            return
        assert isinstance(parsed, dict), f"{where} -> {status} {contentType} {parsed!r:.300}"
        if kind == "jsonrpc":
            assert parsed.get("jsonrpc") == "2.0", f"{where}: {parsed!r:.300}"
            error = parsed.get("error")
            assert isinstance(error, dict) and isinstance(error.get("code"), int) \
                and isinstance(error.get("message"), str), f"{where}: {parsed!r:.300}"
        elif kind == "oauth":
            assert isinstance(parsed.get("error"), str), f"{where}: {parsed!r:.300}"
            assert "message" not in parsed, f"{where}: {parsed!r:.300}"
        else:
            assert isinstance(parsed.get("error"), str) and isinstance(parsed.get("message"), str), \
                f"{where}: {parsed!r:.300}"


_shared: Dict[Any, Service] = {}


def _service(owner: Any = None) -> Service:
    """
    One L{Service} per test class (building and provisioning it is the
    slow part), so that one class revoking the shared tokens does not
    change what another reaches.
    """
    if owner not in _shared:
        _shared[owner] = Service()
    return _shared[owner]


# -- the properties -------------------------------------------------------------


class RouteTests(SynchronousTestCase):
    def test_enumerated(self) -> None:
        """
        The routes are read from the site: every app contributes its own
        (so a new route is fuzzed by L{AnyRouteFuzzTests} as it is added).
        """
        routes = dict(enumerateRoutes(_service().resource))
        for path in ("/mcp", "/oauth/register", "/oauth/token", "/oauth/introspect",
                     "/oauth/authorize", "/oauth/revoke", "/health", "/metrics",
                     "/.well-known/oauth-protected-resource/mcp"):
            self.assertIn(path, routes)
        self.assertIn("POST", routes["/oauth/token"])

    def test_unknownResource(self) -> None:
        """
        A resource this suite cannot read fails the enumeration, rather
        than leaving its routes unfuzzed.
        """
        from twisted.web.resource import Resource

        from mcpsvc.http.app import Dispatcher

        with self.assertRaises(TypeError):
            enumerateRoutes(Dispatcher([("/x", Resource())], Resource()))


ROUTES = enumerateRoutes(_service().resource)


class AnyRouteFuzzTests(FuzzMixin, SynchronousTestCase):
    """
    Random requests to every route: any method, headers from the set the
    routes read (valid, mutated or random bytes), any body.
    """

    @FUZZ
    @given(data=st.data())
    def test_anyRoute(self, data: Any) -> None:
        service = self.service
        path, allowed = data.draw(st.sampled_from(ROUTES), label="route")
        method = data.draw(st.sampled_from(list(allowed)) | methods, label="method")
        suffix = data.draw(st.sampled_from(["", "", "/", "/x", "%ff", "%00"]), label="suffix")
        target = path + suffix + data.draw(st.sampled_from(["", "?" + service.authorizeQuery])
                                           | query_string(""), label="query")
        names = [b"Authorization", b"Content-Type", b"Accept", b"Mcp-Session-Id",
                 b"MCP-Protocol-Version", b"Origin", b"Cookie", b"X-Request-ID", b"Last-Event-ID",
                 b"X-API-Key", b"Mcp-Method", b"Mcp-Name", b"X-Forwarded-For", b"Expect",
                 b"Access-Control-Request-Method", b"User-Agent"]
        valid = dict(service.mcpHeaders())
        headers = []
        for name in data.draw(st.lists(st.sampled_from(names), max_size=6, unique=True), label="names"):
            choice = data.draw(st.integers(0, 3))
            if choice == 0 and name in valid:
                value = valid[name]
            elif choice == 1 and name == b"Authorization":
                value = b"Bearer " + data.draw(tokens(service.tokens["access_token"]))
            elif choice == 2:
                value = data.draw(header_text)
            else:
                value = data.draw(header_bytes)
            headers.append((name, value.strip()))
        body = data.draw(st.sampled_from([b""]) | st.binary(max_size=200)
                         | mutated_json({"jsonrpc": "2.0", "id": 1, "method": "tools/list"})
                         | form_body({"grant_type": "client_credentials"}), label="body")
        self.check(service.auto, method, target, headers, body)


class OAuthFuzzTests(FuzzMixin, SynchronousTestCase):
    """
    Mutated OAuth requests: registration bodies, token, revocation and
    introspection forms and JSON, client credentials, tokens.
    """

    @FUZZ
    @given(data=st.data())
    def test_register(self, data: Any) -> None:
        seed = {"client_name": "fuzz", "redirect_uris": [REDIRECT], "scope": "mcp:tools",
                "grant_types": ["authorization_code", "refresh_token"],
                "token_endpoint_auth_method": "client_secret_post", "token_value": IAT}
        body = data.draw(mutated_json(seed))
        auth = data.draw(st.sampled_from([b"Bearer " + IAT.encode(), b""]) | header_bytes
                         | tokens(self.service.tokens["access_token"]).map(lambda t: b"Bearer " + t))
        path = data.draw(st.sampled_from(["/oauth/register", "/register"]))
        headers = [(b"Content-Type", b"application/json")] + ([(b"Authorization", auth)] if auth else [])
        self.check(self.service.auto, "POST", path, headers, body)

    @FUZZ
    @given(data=st.data())
    def test_tokenEndpoints(self, data: Any) -> None:
        service = self.service
        client = service.client
        path = data.draw(st.sampled_from(["/oauth/token", "/token", "/oauth/revoke", "/revoke",
                                          "/oauth/introspect"]))
        token = data.draw(st.sampled_from([service.tokens["access_token"], service.tokens["refresh_token"]]))
        seed = {
            "grant_type": data.draw(st.sampled_from(["refresh_token", "client_credentials",
                                                     "authorization_code", "password"])),
            "refresh_token": service.tokens["refresh_token"], "token": token,
            "client_id": client["client_id"], "client_secret": client["client_secret"],
            "code": "x", "redirect_uri": REDIRECT, "code_verifier": VERIFIER,
            "scope": "mcp:tools", "resource": SERVER + "/mcp",
        }
        if data.draw(st.booleans()):
            ctype, body = b"application/x-www-form-urlencoded", data.draw(form_body(seed))
        else:
            ctype, body = b"application/json", data.draw(mutated_json(seed))
        headers = [(b"Content-Type", data.draw(st.sampled_from([ctype]) | st.sampled_from(CONTENT_TYPES)))]
        if data.draw(st.booleans()):
            user = data.draw(st.sampled_from([client["client_id"]]) | st.text(max_size=20))
            password = data.draw(st.sampled_from([client["client_secret"]]) | st.text(max_size=20))
            credentials = f"{urllib.parse.quote(user)}:{urllib.parse.quote(password)}".encode()
            value = data.draw(st.sampled_from([b"Basic " + base64.b64encode(credentials)])
                              | header_bytes.map(lambda b: b"Basic " + b))
            headers.append((b"Authorization", value))
        self.check(service.auto, "POST", path, headers, body)

    @FUZZ
    @given(data=st.data())
    def test_clientAssertion(self, data: Any) -> None:
        """
        C{private_key_jwt} forms: a valid assertion (fresh, replayed or
        with claims changed), mutated, re-signed with C{none} or HS256
        (the public key as the secret), with C{jwk}/C{jku}/C{x5u} headers,
        with another authentication method too; never a 5xx, an
        C{invalid_client} (or another OAuth error) otherwise.
        """
        import jwt as pyjwt

        service = self.service
        clientID = service.jwtClient["client_id"]
        choice = data.draw(st.integers(0, 6), label="assertion")
        if choice == 0:
            assertion = service.assertion()
        elif choice == 1:
            claim = data.draw(st.sampled_from(["iss", "sub", "aud", "exp", "iat", "nbf", "jti"]))
            assertion = service.assertion(**{claim: data.draw(json_values)})
        elif choice == 2:
            assertion = data.draw(tokens(service.assertion())).decode("utf-8", "replace")
        elif choice == 3:
            claims = pyjwt.decode(service.assertion(), options={"verify_signature": False})
            assertion = pyjwt.encode(claims, None, algorithm="none")
        elif choice == 4:
            from cryptography.hazmat.primitives import serialization

            pem = service.assertionKey.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
            claims = pyjwt.decode(service.assertion(), options={"verify_signature": False})
            head, payload, _ = service.assertion().split(".")
            import hashlib
            import hmac

            signature = base64.urlsafe_b64encode(hmac.new(
                pem, f"{head}.{payload}".encode(), hashlib.sha256).digest()).rstrip(b"=").decode()
            header = base64.urlsafe_b64encode(json.dumps(
                {"alg": "HS256", "typ": "JWT", "kid": "fuzz-key"}).encode()).rstrip(b"=").decode()
            assertion = f"{header}.{payload}.{signature}"
        elif choice == 5:
            from cryptography.hazmat.primitives.asymmetric import ec

            other = ec.generate_private_key(ec.SECP256R1())
            jwk = json.loads(pyjwt.algorithms.ECAlgorithm.to_jwk(other.public_key()))
            extra = data.draw(st.sampled_from([{"jwk": jwk}, {"jku": "http://127.0.0.1:9/jwks"},
                                               {"x5u": "http://127.0.0.1:9/x5u"}]))
            claims = pyjwt.decode(service.assertion(), options={"verify_signature": False})
            assertion = pyjwt.encode(claims, other, algorithm="ES256",
                                     headers=dict(extra, kid=data.draw(st.sampled_from(["fuzz-key", "x"]))))
        else:
            assertion = data.draw(st.text(max_size=60) | nasty_json_text)
        seed = {"grant_type": "client_credentials", "client_assertion": assertion,
                "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                "client_id": clientID, "scope": "mcp:tools", "token": service.tokens["access_token"]}
        if data.draw(st.booleans()):
            seed["client_secret"] = service.client["client_secret"]
        path = data.draw(st.sampled_from(["/oauth/token", "/token", "/oauth/revoke", "/revoke",
                                          "/oauth/introspect"]))
        mutated = data.draw(st.booleans(), label="mutated")
        body = data.draw(form_body(seed)) if mutated else urllib.parse.urlencode(seed).encode()
        headers = [(b"Content-Type", b"application/x-www-form-urlencoded")]
        if data.draw(st.integers(0, 4)) == 0:
            headers.append((b"Authorization", b"Basic " + base64.b64encode(
                f"{clientID}:x".encode())))
        status, parsed = self.check(service.auto, "POST", path, headers, body)
        if choice in (3, 4, 5) and not mutated:
            # none, HS256 keyed with the public key, a key in the header:
            # never accepted.
            assert status == 401 or (status == 400 and parsed.get("error") == "invalid_request"), \
                (choice, status, parsed)

    @FUZZ
    @given(data=st.data())
    def test_authorizeQuery(self, data: Any) -> None:
        """
        The authorization endpoint by query string, in both modes.
        """
        service = self.service
        site = data.draw(st.sampled_from([service.auto, service.consent]))
        target = "/oauth/authorize" + data.draw(query_string(service.authorizeQuery))
        self.check(site, "GET", target, [], b"")

    @FUZZ
    @given(data=st.data())
    def test_consentForm(self, data: Any) -> None:
        """
        The consent form with its hidden fields (C{csrf_token} included)
        changed a little, so that they pass the first checks.
        """
        service = self.service
        fields = dict(service.consentFields, decision="approve")
        name = data.draw(st.sampled_from(sorted(fields)), label="field")
        value = fields[name]
        position = data.draw(st.sampled_from([len(value) // 2, 0, len(value)])
                             | st.integers(0, len(value)), label="position")
        inserted = data.draw(non_ascii | st.text(max_size=3), label="inserted")
        fields[name] = value[:position] + inserted + value[position:]
        body = data.draw(st.just(urllib.parse.urlencode(fields).encode()) | form_body(fields))
        self.check(service.consent, "POST", "/oauth/authorize",
                   [(b"Content-Type", b"application/x-www-form-urlencoded")], body)


class DocumentClientFuzzTests(FuzzMixin, SynchronousTestCase):
    """
    Authorization and token requests whose C{client_id} is a URL (Client ID
    Metadata Documents): the document URL mutated into other hosts, address
    forms, ports and encodings.
    """

    def test_reached(self) -> None:
        """
        The unmutated document client is resolved and authorized (so the
        mutations start from a request that works); a listen stream opens.
        """
        service = self.service
        fields = dict(urllib.parse.parse_qsl(service.authorizeQuery), client_id=DOC_URL)
        status, _ = self.check(service.auto, "GET",
                               "/oauth/authorize?" + urllib.parse.urlencode(fields), [], b"")
        self.assertEqual(status, 302)
        for url in ("https://client.example.com:8443/fuzz/client.json",
                    "https://2130706433/fuzz/client.json"):
            fields["client_id"] = url
            status, body = self.check(service.auto, "GET",
                                      "/oauth/authorize?" + urllib.parse.urlencode(fields),
                                      [(b"Accept", b"application/json")], b"")
            self.assertEqual((status, body["error"]), (400, "invalid_client"))
        body = json.dumps({"jsonrpc": "2.0", "id": 9, "method": "subscriptions/listen", "params": {
            "_meta": {"io.modelcontextprotocol/protocolVersion": MODERN,
                      "io.modelcontextprotocol/clientCapabilities": {},
                      "io.modelcontextprotocol/clientInfo": {"name": "fuzz", "version": "1"}},
            "notifications": {"toolsListChanged": True}}}).encode()
        status, _ = self.check(service.auto, "POST", "/mcp",
                               service.modernHeaders("subscriptions/listen", None), body)
        self.assertEqual(status, 200)

    @FUZZ
    @given(data=st.data())
    def test_authorize(self, data: Any) -> None:
        service = self.service
        site = data.draw(st.sampled_from([service.auto, service.consent]), label="site")
        clientID = data.draw(client_id_urls() | st.just(DOC_URL), label="client_id")
        fields = dict(urllib.parse.parse_qsl(service.authorizeQuery))
        fields["client_id"] = clientID
        query = urllib.parse.urlencode(fields, encoding="utf-8", errors="surrogatepass")
        target = "/oauth/authorize" + data.draw(query_string(query) | st.just("?" + query))
        self.check(site, "GET", target, [(b"Accept", data.draw(st.sampled_from(
            [b"text/html", b"application/json", b""])))], b"")

    @FUZZ
    @given(data=st.data())
    def test_tokenEndpoints(self, data: Any) -> None:
        service = self.service
        path = data.draw(st.sampled_from(["/oauth/token", "/oauth/revoke", "/oauth/introspect"]))
        seed = {
            "grant_type": data.draw(st.sampled_from(["authorization_code", "refresh_token",
                                                     "client_credentials"])),
            "client_id": data.draw(client_id_urls() | st.just(DOC_URL), label="client_id"),
            "code": "x", "redirect_uri": REDIRECT, "code_verifier": VERIFIER,
            "refresh_token": service.tokens["refresh_token"], "token": "t",
        }
        if data.draw(st.booleans()):
            seed["client_secret"] = "s"
        if data.draw(st.booleans()):
            ctype, body = b"application/x-www-form-urlencoded", data.draw(form_body(seed))
        else:
            ctype = b"application/x-www-form-urlencoded"
            body = urllib.parse.urlencode(seed, encoding="utf-8", errors="surrogatepass").encode()
        self.check(service.auto, "POST", path, [(b"Content-Type", ctype)], body)


class ListenFuzzTests(FuzzMixin, SynchronousTestCase):
    """
    C{subscriptions/listen} (2026-07-28) with mutated filters, ids and
    headers: a stream, or a JSON-RPC error, never a 5xx.
    """

    @FUZZ
    @given(data=st.data())
    def test_listen(self, data: Any) -> None:
        service = self.service
        seed = {"jsonrpc": "2.0", "id": 9, "method": "subscriptions/listen", "params": {
            "_meta": {
                "io.modelcontextprotocol/protocolVersion": MODERN,
                "io.modelcontextprotocol/clientCapabilities": {},
                "io.modelcontextprotocol/clientInfo": {"name": "fuzz", "version": "1"},
            },
            "notifications": {"toolsListChanged": True, "promptsListChanged": False,
                              "resourceSubscriptions": ["file:///hello.txt"]},
        }}
        body = data.draw(mutated_json(seed) | st.just(json.dumps(seed).encode()))
        headers = service.modernHeaders("subscriptions/listen", None)
        if data.draw(st.booleans()):
            index = data.draw(st.integers(0, len(headers) - 1))
            name, _ = headers[index]
            headers[index] = (name, data.draw(header_bytes | header_text))
        self.check(service.auto, "POST", "/mcp", headers, body)


class McpFuzzTests(FuzzMixin, SynchronousTestCase):
    """
    Mutated JSON-RPC to C{/mcp} from an authenticated session: every
    method, tool calls with random arguments to every built-in tool.
    """

    @FUZZ
    @given(data=st.data())
    def test_mcp(self, data: Any) -> None:
        service = self.service
        tool = data.draw(st.sampled_from(["calculate", "echo_message", "get_timestamp", "file_read",
                                          "file_write", "file_list", "test_simple_text", "nope"]))
        arguments = {"calculate": {"expression": "2**4000*1.5"}, "echo_message": {"message": "hi"},
                     "get_timestamp": {"timezone": "UTC"}, "file_read": {"path": "hello.txt"},
                     "file_write": {"path": "out.txt", "content": "x", "overwrite": True},
                     "file_list": {"path": "."}}.get(tool, {})
        method = data.draw(st.sampled_from([
            "tools/call", "tools/list", "resources/list", "resources/read", "resources/templates/list",
            "prompts/list", "prompts/get", "completion/complete", "ping", "logging/setLevel",
            "initialize", "resources/subscribe", "notifications/cancelled", "nope"]))
        params: Dict[str, Any] = {"name": tool, "arguments": arguments} if method == "tools/call" else {}
        seed: Any = {"jsonrpc": "2.0", "id": 7, "method": method, "params": params}
        if data.draw(st.integers(0, 5)) == 0:
            seed = [seed, {"jsonrpc": "2.0", "method": "notifications/initialized"}]
        body = data.draw(mutated_json(seed))
        headers = service.mcpHeaders()
        if data.draw(st.booleans()):
            index = data.draw(st.integers(0, len(headers) - 1))
            name, _ = headers[index]
            headers[index] = (name, data.draw(header_bytes | header_text))
        self.check(service.auto, "POST", "/mcp", headers, body)

    @FUZZ
    @given(expression=st.text(max_size=60) | st.from_regex(
        r"[0-9.e()*/+%-]{1,8}(\*\*|\*|/|//|%|\+|-)[0-9.e()*/+%-]{1,8}(\*\*|\*|/)[0-9.e]{1,6}", fullmatch=True)
        | st.sampled_from(["2**4000*1.5", "2**4000/3", "sqrt(2**4000)", "round(2**4000*1.0)",
                           "2**4000%1.5", "(" * 300 + "1" + ")" * 300, "-" * 999 + "1"]))
    def test_calculate(self, expression: str) -> None:
        """
        C{calculate} answers every expression with a result or an
        explained tool error (never "internal error").
        """
        service = self.service
        body = json.dumps({"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {
            "name": "calculate", "arguments": {"expression": expression}}}).encode()
        status, parsed = self.check(service.auto, "POST", "/mcp", service.mcpHeaders(), body)
        if status == 200 and isinstance(parsed, dict) and "result" in parsed:
            result = parsed["result"]
            if result.get("isError"):
                text = result["content"][0]["text"]
                assert "internal error" not in text, (expression, text)


class TasksFuzzTests(FuzzMixin, SynchronousTestCase):
    """
    Mutated C{tasks/get}, C{tasks/update}, C{tasks/cancel} and task
    C{tools/call} requests (2026-07-28, tasks extension) on tasks waiting
    for input: ids, answers of any shape and size, capabilities, headers.
    """

    @FUZZ
    @given(data=st.data())
    def test_tasks(self, data: Any) -> None:
        service = self.service
        method = data.draw(st.sampled_from(["tasks/get", "tasks/update", "tasks/cancel", "tools/call"]),
                           label="method")
        taskID = service.taskIDs[1 if method == "tasks/cancel" else 0]
        answer = data.draw(st.sampled_from([
            {"action": "accept", "content": {"name": "Ada"}}, {"action": "decline"},
            {"action": "accept", "content": "x"}, {"role": "assistant", "content": []},
        ]) | json_values, label="answer")
        params: Dict[str, Any] = {"taskId": taskID, "_meta": TASKS_META}
        if method == "tasks/update":
            params["inputResponses"] = {data.draw(st.sampled_from(["first", "second", "other"])): answer}
        if method == "tools/call":
            params = {"name": data.draw(st.sampled_from(["multi_input", "confirm_delete",
                                                         "failing_job", "protocol_error_job"])),
                      "arguments": {}, "_meta": TASKS_META}
        body = data.draw(st.just(json.dumps({"jsonrpc": "2.0", "id": 5, "method": method,
                                             "params": params}).encode())
                         | mutated_json({"jsonrpc": "2.0", "id": 5, "method": method, "params": params}),
                         label="body")
        name = params.get("name", taskID)
        headers = service.modernHeaders(method, data.draw(st.sampled_from([name, None])
                                                           | st.text(max_size=20), label="name"))
        self.check(service.auto, "POST", "/mcp", headers, body)
        service.clock.advance(data.draw(st.sampled_from([0, 0, 1, 30]), label="advance"))
        bad = self.watch.take()
        assert not bad, "the task logged:\n" + "\n".join(bad)


class SkillsFuzzTests(FuzzMixin, SynchronousTestCase):
    """
    Mutated C{skills/list}, C{skills/get}, C{resources/directory/read} and
    C{resources/read} of skill files (2026-07-28, the skills extension):
    URIs near the served ones (traversal, encodings, prefixes), cursors of
    any shape, headers.
    """

    @FUZZ
    @given(data=st.data())
    def test_skills(self, data: Any) -> None:
        service = self.service
        method = data.draw(st.sampled_from(["skills/list", "skills/get", "resources/directory/read",
                                            "resources/read"]), label="method")
        uri = data.draw(st.sampled_from([
            "skill://release-notes/SKILL.md", "skill://release-notes", "skill://acme",
            "skill://release-notes/templates/major", "skill://release-notes/../acme/SKILL.md",
            "skill://release-notes/%2e%2e/SKILL.md", "skill:///SKILL.md", "skill://", "file:///etc/passwd",
        ]) | st.text(max_size=40).map(lambda t: "skill://" + t) | json_values, label="uri")
        params: Dict[str, Any] = {"uri": uri, "_meta": MODERN_META}
        if method == "skills/list":
            params = {"_meta": MODERN_META}
        if data.draw(st.booleans(), label="cursor?"):
            params["cursor"] = data.draw(st.text(max_size=30) | json_values, label="cursor")
        body = data.draw(st.just(json.dumps({"jsonrpc": "2.0", "id": 9, "method": method,
                                             "params": params}).encode())
                         | mutated_json({"jsonrpc": "2.0", "id": 9, "method": method, "params": params}),
                         label="body")
        name = uri if method == "resources/read" and isinstance(uri, str) else None
        headers = service.modernHeaders(method, name)
        status, parsed = self.check(service.auto, "POST", "/mcp", headers, body)
        if status == 200 and isinstance(parsed, dict) and "error" in parsed:
            # Bad input is invalid params (or an unknown method), never internal.
            assert parsed["error"]["code"] != -32603, parsed


class MetricsLabelTests(FuzzMixin, SynchronousTestCase):
    """
    Whatever requests arrive, the request metric's labels stay within
    fixed sets: an invented method is C{other}, an unknown path C{other}.
    """

    @FUZZ
    @given(method=methods, path=st.text(max_size=20).map(lambda t: "/" + urllib.parse.quote(t)))
    def test_labelsBounded(self, method: str, path: str) -> None:
        self.check(self.service.auto, method, path, [], b"")
        known = {"GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH", "other"}
        for metric in self.service.metrics.requests.collect():
            for sample in metric.samples:
                labels = sample.labels
                assert labels["method"] in known, labels
                assert labels["status"].isdigit() and len(labels["status"]) == 3, labels
