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

import json
import os
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Dict, List, Optional, Tuple

from twisted.trial.unittest import SynchronousTestCase

from mcpsvc.testing.redis import freePort
from tests.flow import REDIRECT, Flow, http
from tests.process import SECRET, McpsvcProcess

REDIRECT2 = "http://127.0.0.1:33418/v2/callback"


class DocumentServer:
    """
    A loopback HTTP server publishing one client metadata document, whose
    body, status and headers a test changes as it goes.

    @ivar hits: the paths requested.
    """

    def __init__(self) -> None:
        self.status = 200
        self.document: Dict[str, Any] = {}
        self.headers: Dict[str, str] = {"Cache-Control": "max-age=0"}
        self.hits: List[str] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - the http.server API
                server.hits.append(self.path)
                body = json.dumps(server.document).encode()
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
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.port}/oauth/client.json"

    def stop(self) -> None:
        """
        Stop answering: connections are refused from now on.
        """
        if self.thread.is_alive():
            self.httpd.shutdown()
            self.httpd.server_close()
            self.thread.join(10)


class DocumentClientEndToEndTests(SynchronousTestCase):
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
            self.assertIn("not a public address", body["error_description"])
            self.assertNotIn("location", headers)
        status, body = self.token({"grant_type": "refresh_token", "refresh_token": "x.y",
                                   "client_id": f"https://localhost:{self.documents.port}/c.json"})
        self.assertEqual((status, body["error"]), (401, "invalid_client"), body)
        self.assertEqual(self.documents.hits, [])
        process.waitFor(lambda r: "refused (address)" in r.get("text", ""), 10)
        status, _, body = http(self.url + "/oauth/register", method="POST", body={
            "client_name": "dcr", "redirect_uris": [REDIRECT], "token_endpoint_auth_method": "none",
        }, headers={"Authorization": "Bearer " + iat})
        self.assertEqual(status, 201, body)
        self.assertNotIn("Traceback", process.output)
