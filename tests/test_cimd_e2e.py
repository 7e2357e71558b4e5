"""
Client ID Metadata Documents against a real C{twistd -n mcpsvc} process:
a client known only by the URL of its metadata document, served by a test
HTTP server on loopback (development mode), authorizes, calls a tool,
refreshes; a changed document is picked up; while the document's host is
down the stored copy keeps working within the stale-if-error window, and
after it the client is refused cleanly. In production, document URLs on
loopback are refused without a connection.
"""

from __future__ import annotations

import asyncio
import json
import os
import ssl
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Dict, List, Optional, Tuple

from twisted.trial.unittest import SynchronousTestCase

from mcpsvc.testing.redis import freePort
from tests.flow import REDIRECT, Flow, http
from tests.process import SECRET, McpsvcProcess, makeCertificate

REDIRECT2 = "http://127.0.0.1:33418/v2/callback"


class DocumentServer:
    """
    A loopback HTTP server publishing one client metadata document, whose
    body, status and headers a test changes as it goes, and other JSON
    documents at the paths of C{others} (a key set for C{jwks_uri}).

    @ivar hits: the paths requested.
    """

    def __init__(self, tls: Optional[Tuple[str, str]] = None) -> None:
        self.status = 200
        self.document: Dict[str, Any] = {}
        self.others: Dict[str, Any] = {}
        self.headers: Dict[str, str] = {"Cache-Control": "max-age=0"}
        self.hits: List[str] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - the http.server API
                server.hits.append(self.path)
                body = json.dumps(server.others.get(self.path, server.document)).encode()
                self.send_response(server.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                for name, value in server.headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        if tls is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(tls[1], tls[0])
            self.httpd.socket = context.wrap_socket(self.httpd.socket, server_side=True)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.port}/oauth/client.json"

    def urlOf(self, path: str) -> str:
        """
        The URL of C{path} on this server.
        """
        return self.url.split("/oauth/client.json")[0] + path

    def stop(self) -> None:
        """
        Stop answering: connections are refused from now on.
        """
        if self.thread.is_alive():
            self.httpd.shutdown()
            self.httpd.server_close()
            self.thread.join(10)


class DocumentClientMixin:
    """
    A document server and mcpsvc processes started against it.
    """

    def setUp(self) -> None:
        self.documents = DocumentServer()
        self.addCleanup(self.documents.stop)
        self.documents.document = {
            "client_id": self.documents.url,
            "client_name": "e2e document client",
            "redirect_uris": [REDIRECT],
            "grant_types": ["authorization_code", "refresh_token"],
            "response_types": ["code"],
            "token_endpoint_auth_method": "none",
        }
        self.workdir = os.path.abspath(self.mktemp())
        os.makedirs(self.workdir)
        self.port = freePort()

    def start(self, **extra: str) -> McpsvcProcess:
        env = {
            "SERVER_URL": f"http://127.0.0.1:{self.port}",
            "JWT_SECRET": SECRET,
            "AUTHORIZE_MODE": "auto",
            "STORE": "sqlite",
            "STORE_PATH": os.path.join(self.workdir, "store.sqlite3"),
            "CIMD_CACHE_MIN_SECONDS": "0",
            "CIMD_STALE_IF_ERROR": "3600",
            **extra,
        }
        process = McpsvcProcess(self.workdir, env=env,
                                listen=[f"tcp:{self.port}:interface=127.0.0.1"])
        self.addCleanup(process.kill)
        process.start()
        self.url = process.url
        return process

    def flow(self) -> Flow:
        flow = Flow(self.url, "")
        flow.client = dict(self.documents.document)
        return flow

    def token(self, form: Dict[str, str]) -> Tuple[int, Any]:
        status, _, body = http(self.url + "/oauth/token", method="POST", form=form)
        return status, body

    def exchange(self, flow: Flow, redirect: str = REDIRECT) -> Tuple[int, Any]:
        status, body = self.token({
            "grant_type": "authorization_code", "code": self.authorize(flow, redirect),
            "redirect_uri": redirect, "code_verifier": flow.verifier,
            "client_id": self.documents.url, "resource": self.url + "/mcp",
        })
        if status == 200:
            flow.tokens = body
        return status, body

    def authorize(self, flow: Flow, redirect: str = REDIRECT) -> str:
        status, headers, body = self.authorizeRequest(flow, redirect)
        assert status == 302, (status, body)
        query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(headers["location"]).query))
        return query["code"]

    def authorizeRequest(self, flow: Flow, redirect: str = REDIRECT,
                         clientID: Optional[str] = None) -> Tuple[int, Dict[str, str], Any]:
        query = urllib.parse.urlencode({
            "response_type": "code", "client_id": clientID or self.documents.url,
            "redirect_uri": redirect, "code_challenge": flow.challenge,
            "code_challenge_method": "S256", "state": "s", "resource": self.url + "/mcp",
        })
        return http(self.url + "/oauth/authorize?" + query)

    def refresh(self, flow: Flow) -> Tuple[int, Any]:
        status, body = self.token({"grant_type": "refresh_token",
                                   "refresh_token": flow.tokens["refresh_token"],
                                   "client_id": self.documents.url})
        if status == 200:
            flow.tokens = body
        return status, body

    def assertToolWorks(self, flow: Flow) -> None:
        status, _, body = flow.initialize(self.url)
        self.assertEqual(status, 200, body)
        status, _, body = flow.callTool(self.url, "echo_message", {"message": "from a document"})
        self.assertEqual(status, 200, body)
        self.assertFalse(body["result"].get("isError"), body)
        self.assertIn("from a document", json.dumps(body["result"]))



class DocumentClientEndToEndTests(DocumentClientMixin, SynchronousTestCase):
    def test_documentClientLifecycle(self) -> None:
        """
        The whole life of a document client: metadata advertises CIMD; code
        + PKCE as a public client; a tool call; a refresh; a changed
        document applies at once (its lifetime is 0); with the host down
        the stored copy keeps working (stale-if-error, logged); restarted
        with no stale-if-error window, the same client is refused with
        C{invalid_client} on both endpoints, cleanly.
        """
        process = self.start()
        status, _, metadata = http(self.url + "/.well-known/oauth-authorization-server")
        self.assertIs(metadata["client_id_metadata_document_supported"], True)
        self.assertIn("none", metadata["token_endpoint_auth_methods_supported"])

        flow = self.flow()
        status, body = self.exchange(flow)
        self.assertEqual(status, 200, body)
        self.assertToolWorks(flow)
        status, body = self.refresh(flow)
        self.assertEqual(status, 200, body)
        self.assertToolWorks(flow)
        self.assertTrue(self.documents.hits)
        process.waitFor(lambda r: "first seen" in r.get("text", ""), 10)

        # The document changes: the next use fetches it (max-age=0).
        self.documents.document = dict(self.documents.document, redirect_uris=[REDIRECT2])
        status, headers, body = self.authorizeRequest(flow, REDIRECT)
        self.assertEqual(status, 400, body)
        self.assertNotIn("location", headers)
        self.assertEqual(body["error"], "invalid_request")
        status, body = self.exchange(flow, REDIRECT2)
        self.assertEqual(status, 200, body)
        process.waitFor(lambda r: "changed" in r.get("text", "")
                        and "metadata document" in r.get("text", ""), 10)

        # The host goes down: the stored copy is used (stale-if-error).
        self.documents.stop()
        self.assertEqual(self.authorizeRequest(flow, REDIRECT2)[0], 302)
        status, body = self.refresh(flow)
        self.assertEqual(status, 200, body)
        self.assertToolWorks(flow)
        process.waitFor(lambda r: "stale-if-error" in r.get("text", ""), 10)

        # Past the window (restarted without one, on the same store): refused.
        process.stop()
        process = self.start(CIMD_STALE_IF_ERROR="0")
        status, headers, body = self.authorizeRequest(flow, REDIRECT2)
        self.assertEqual((status, body["error"]), (400, "invalid_client"), body)
        self.assertNotIn("location", headers)
        status, body = self.refresh(flow)
        self.assertEqual((status, body["error"]), (401, "invalid_client"), body)
        self.assertIn("cannot be fetched", body["error_description"])
        process.waitFor(lambda r: "Client metadata document" in r.get("text", "")
                        and "refused (connect)" in r.get("text", ""), 10)
        process.waitFor(lambda r: r.get("event_type") == "audit"
                        and r.get("action") == "client.metadata_document"
                        and r.get("outcome") == "denied", 10)
        # A browser gets the error page, not a redirect.
        query = urllib.parse.urlencode({"response_type": "code", "client_id": self.documents.url,
                                        "redirect_uri": REDIRECT2})
        status, headers, page = http(self.url + "/oauth/authorize?" + query,
                                     headers={"Accept": "text/html"})
        self.assertEqual(status, 400)
        self.assertIn(b"published information", page)
        self.assertNotIn("Traceback", process.output)

    def test_loopbackDocumentsRefusedInProduction(self) -> None:
        """
        In production, a document URL on a loopback address (named
        literally, or a name resolving to it) is refused with
        C{invalid_client} and a log line, and the document server is never
        contacted; registration (DCR) is unaffected.
        """
        iat = "initial-access-token-" + "c" * 24
        process = self.start(ENVIRONMENT="production", SERVER_URL="https://mcp.example.com",
                             AUTHORIZE_MODE="consent", DCR_AUTH_TOKEN=iat)
        flow = self.flow()
        for host in ("127.0.0.1", "localhost", "[::1]"):
            url = f"https://{host}:{self.documents.port}/oauth/client.json"
            status, headers, body = self.authorizeRequest(flow, REDIRECT, clientID=url)
            self.assertEqual((status, body["error"]), (400, "invalid_client"), (host, body))
            self.assertIn("does not resolve to a public address", body["error_description"])
            self.assertNotIn("127.0.0.1", body["error_description"])
            self.assertNotIn("location", headers)
        status, body = self.token({"grant_type": "refresh_token", "refresh_token": "x.y",
                                   "client_id": f"https://localhost:{self.documents.port}/c.json"})
        self.assertEqual((status, body["error"]), (401, "invalid_client"), body)
        self.assertEqual(self.documents.hits, [])
        process.waitFor(lambda r: "refused (address)" in r.get("text", "")
                        and "is not a public address" in r.get("text", ""), 10)
        status, _, body = http(self.url + "/oauth/register", method="POST", body={
            "client_name": "dcr", "redirect_uris": [REDIRECT], "token_endpoint_auth_method": "none",
        }, headers={"Authorization": "Bearer " + iat})
        self.assertEqual(status, 201, body)
        self.assertNotIn("Traceback", process.output)


class HTTPSDocumentTests(SynchronousTestCase):
    """
    A document served over https (a loopback server whose certificate the
    mcpsvc process trusts through C{SSL_CERT_FILE}), used by the official
    MCP SDK client: the fetch verifies the certificate for the URL's host.
    """

    def setUp(self) -> None:
        self.workdir = os.path.abspath(self.mktemp())
        os.makedirs(self.workdir)
        self.keyPath, self.certPath = makeCertificate(self.workdir, host="localhost", ca=True)
        self.documents = DocumentServer(tls=(self.keyPath, self.certPath))
        self.addCleanup(self.documents.stop)
        self.documentURL = f"https://localhost:{self.documents.port}/oauth/client.json"
        self.documents.document = {
            "client_id": self.documentURL,
            "client_name": "sdk document client",
            "redirect_uris": [REDIRECT],
            "grant_types": ["authorization_code", "refresh_token"],
            "response_types": ["code"],
            "token_endpoint_auth_method": "none",
        }
        self.documents.headers = {"Cache-Control": "max-age=300"}
        port = freePort()
        process = McpsvcProcess(self.workdir, env={
            "SERVER_URL": f"http://127.0.0.1:{port}",
            "JWT_SECRET": SECRET,
            "AUTHORIZE_MODE": "auto",
            "STORE": "memory",
            "SSL_CERT_FILE": self.certPath,
        }, listen=[f"tcp:{port}:interface=127.0.0.1"])
        self.addCleanup(process.kill)
        self.process = process.start()
        self.url = process.url

    def test_sdkClientWithDocument(self) -> None:
        """
        The SDK client, given C{client_metadata_url}, sees
        C{client_id_metadata_document_supported} and uses its URL as its
        client id instead of registering; it authorizes, calls a tool and
        refreshes; mcpsvc fetched the document once, over TLS.
        """
        from mcp import Client
        from mcp.client.auth import OAuthClientProvider
        from mcp.client.streamable_http import streamable_http_client
        from mcp.shared.auth import OAuthClientMetadata
        import httpx2

        from mcpsvc.testing.sdk import MemoryStorage
        from tests.test_sdk_e2e import BrowserStandIn

        storage = MemoryStorage()
        browser = BrowserStandIn()
        provider = OAuthClientProvider(
            server_url=self.url + "/mcp",
            client_metadata=OAuthClientMetadata(
                client_name="sdk document client", redirect_uris=[REDIRECT],
                grant_types=["authorization_code", "refresh_token"], response_types=["code"],
                token_endpoint_auth_method="none",
            ),
            storage=storage, redirect_handler=browser.redirectHandler,
            callback_handler=browser.callbackHandler, client_metadata_url=self.documentURL,
        )

        async def session() -> Any:
            async with httpx2.AsyncClient(auth=provider) as http_:
                async with Client(streamable_http_client(self.url + "/mcp", http_client=http_),
                                  mode="legacy") as client:
                    return await client.call_tool("echo_message", {"message": "cimd over tls"})

        echoed = asyncio.run(session())
        self.assertFalse(echoed.is_error)
        assert storage.clientInfo is not None and storage.tokens is not None
        self.assertEqual(storage.clientInfo.client_id, self.documentURL)
        first = storage.tokens
        provider.context.token_expiry_time = 1.0
        echoed = asyncio.run(session())
        self.assertFalse(echoed.is_error)
        self.assertNotEqual(storage.tokens.refresh_token, first.refresh_token)
        self.assertEqual(self.documents.hits, ["/oauth/client.json"])
        self.assertFalse(any(r.get("path") == "/oauth/register" for r in self.process.records))

    def test_certificateVerified(self) -> None:
        """
        The same server named by an address its certificate does not cover
        (127.0.0.1 instead of localhost) fails TLS verification: the client
        is refused with C{invalid_client}.
        """
        url = f"https://127.0.0.1:{self.documents.port}/oauth/client.json"
        self.documents.document = dict(self.documents.document, client_id=url)
        query = urllib.parse.urlencode({
            "response_type": "code", "client_id": url, "redirect_uri": REDIRECT,
            "code_challenge": "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM",
            "code_challenge_method": "S256",
        })
        status, headers, body = http(self.url + "/oauth/authorize?" + query)
        self.assertEqual((status, body["error"]), (400, "invalid_client"), body)
        self.assertNotIn("location", headers)
        self.assertIn("TLS handshake failed", body["error_description"])
        self.process.waitFor(lambda r: "refused (tls)" in r.get("text", ""), 10)


class DocumentConsentBrowserTests(SynchronousTestCase):
    """
    The consent page for a client known by its metadata document, in real
    Chromium (the fixtures of L{tests.test_authpage_browser.BrowserTests}).
    """

    from tests.test_authpage_browser import BrowserTests as _Browser

    setUp = _Browser.setUp
    startServer = _Browser.startServer
    callback = _Browser.callback
    authorizeURL = _Browser.authorizeURL
    browser = _Browser.browser
    waitFor = _Browser.waitFor
    waitForURL = _Browser.waitForURL
    screenshots = _Browser.screenshots
    cspViolations = _Browser.cspViolations
    landing = _Browser.landing
    exchange = _Browser.exchange
    _js = True
    del _Browser

    def test_documentHostAndNewMarker(self) -> None:
        """
        The page shows the document's host under "Published by" and marks
        the application as new, before the redirect host; Approve lands on
        the redirect URI and the code exchanges for tokens.
        """
        server = self.startServer("consent")
        cb = self.callback()
        documents = DocumentServer()
        self.addCleanup(documents.stop)
        documents.document = {
            "client_id": documents.url, "client_name": "Acme Published Agent",
            "redirect_uris": [cb.uri], "token_endpoint_auth_method": "none",
            "grant_types": ["authorization_code", "refresh_token"],
        }
        client = {"client_id": documents.url}
        driver = self.browser()
        driver.get(self.authorizeURL(server, client, cb))
        approve = self.waitFor(driver, "#approve")
        self.assertEqual(driver.find_element("id", "client-name").text, "Acme Published Agent")
        self.assertEqual(driver.find_element("id", "document-host").text, "127.0.0.1")
        self.assertIn("New application", driver.find_element("id", "first-seen").text)
        host = driver.find_element("id", "document-host")
        redirect = driver.find_element("id", "redirect-host")
        self.assertLess(host.location["y"], redirect.location["y"])
        self.assertEqual(host.value_of_css_property("font-weight"), "700")
        self.screenshots(driver, "document-consent")
        self.assertEqual(self.cspViolations(driver), [])
        approve.click()
        query = self.landing(self.waitForURL(driver, cb.uri), cb)
        tokens = self.exchange(server, client, cb, query["code"])
        self.assertIn("refresh_token", tokens)


class SharedStoreTests(DocumentClientMixin, SynchronousTestCase):
    """
    Two instances on one Redis see the same resolved document.
    """

    def test_secondInstanceUsesTheStoredDocument(self) -> None:
        """
        Instance A fetches the document (fresh for 300 seconds); the
        document's host goes down; instance B, sharing A's Redis, authorizes
        the client and exchanges the code from the stored copy without
        fetching, and a tool call works on A with B's token.
        """
        from mcpsvc.testing.redis import RedisServer

        redis = RedisServer(os.path.abspath(self.mktemp())).start()
        self.addCleanup(redis.stop)
        self.documents.headers = {"Cache-Control": "max-age=300"}
        shared = {"STORE": "redis", "REDIS_URL": redis.url, "CIMD_CACHE_MIN_SECONDS": "60"}
        first = self.start(**shared)
        firstURL = self.url
        flow = self.flow()
        self.assertEqual(self.authorizeRequest(flow)[0], 302)
        self.assertEqual(len(self.documents.hits), 1)
        self.documents.stop()
        self.port = freePort()
        second = self.start(SERVER_URL=firstURL, **shared)
        query = urllib.parse.urlencode({
            "response_type": "code", "client_id": self.documents.url, "redirect_uri": REDIRECT,
            "code_challenge": flow.challenge, "code_challenge_method": "S256",
            "resource": firstURL + "/mcp",
        })
        status, headers, body = http(second.url + "/oauth/authorize?" + query)
        self.assertEqual(status, 302, body)
        code = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(headers["location"]).query))["code"]
        status, _, body = http(second.url + "/oauth/token", method="POST", form={
            "grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT,
            "code_verifier": flow.verifier, "client_id": self.documents.url,
            "resource": firstURL + "/mcp",
        })
        self.assertEqual(status, 200, body)
        flow.tokens = body
        self.assertEqual(len(self.documents.hits), 1, "the second instance did not fetch")
        self.url = firstURL
        self.assertToolWorks(flow)
        for process in (first, second):
            self.assertNotIn("Traceback", process.output)
