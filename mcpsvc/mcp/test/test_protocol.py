"""
Tests for L{mcpsvc.mcp.protocol}.
"""

from twisted.trial.unittest import SynchronousTestCase

from mcpsvc.mcp.protocol import (
    INVALID_REQUEST,
    LATEST_HANDSHAKE_VERSION,
    PARSE_ERROR,
    Notification,
    ProtocolError,
    Request,
    Response,
    isModern,
    negotiateVersion,
    parseJSON,
    parseMessage,
    progressToken,
)


class ParseTests(SynchronousTestCase):
    def test_parseJSONRefusesGarbage(self) -> None:
        """
        Bodies that are not JSON, not UTF-8 or use C{NaN} fail with -32700.
        """
        for body in (b"{", b"\xff\xfe", b'{"a": NaN}', b""):
            e = self.assertRaises(ProtocolError, parseJSON, body)
            self.assertEqual((e.code, e.httpStatus), (PARSE_ERROR, 400))

    def test_request(self) -> None:
        """
        A message with C{method} and C{id} is a L{Request}; absent params are
        an empty object.
        """
        self.assertEqual(
            parseMessage({"jsonrpc": "2.0", "id": 7, "method": "ping"}),
            Request(id=7, method="ping", params={}),
        )

    def test_notification(self) -> None:
        """
        A message with C{method} and no C{id} is a L{Notification}.
        """
        self.assertEqual(
            parseMessage({"jsonrpc": "2.0", "method": "notifications/initialized"}),
            Notification(method="notifications/initialized"),
        )

    def test_response(self) -> None:
        """
        A message with C{result} or C{error} is a L{Response}.
        """
        self.assertEqual(
            parseMessage({"jsonrpc": "2.0", "id": "a", "result": {}}),
            Response(id="a", result={}),
        )

    def test_invalid(self) -> None:
        """
        Invalid messages fail with -32600 and keep a readable id.
        """
        cases = [
            ([], None),
            ({"jsonrpc": "1.0", "id": 3, "method": "x"}, 3),
            ({"jsonrpc": "2.0", "id": None, "method": "x"}, None),
            ({"jsonrpc": "2.0", "id": True, "method": "x"}, None),
            ({"jsonrpc": "2.0", "id": 4, "method": 5}, 4),
            ({"jsonrpc": "2.0", "id": 5, "method": "x", "params": [1]}, 5),
            ({"jsonrpc": "2.0", "id": 6}, 6),
            ({"jsonrpc": "2.0", "id": 6, "result": 1, "error": {}}, 6),
        ]
        for message, id in cases:
            e = self.assertRaises(ProtocolError, parseMessage, message)
            self.assertEqual((e.code, e.id, e.httpStatus), (INVALID_REQUEST, id, 400), message)


class VersionTests(SynchronousTestCase):
    def test_negotiate(self) -> None:
        """
        A supported handshake version is echoed; anything else gets our
        newest handshake version.
        """
        for version in ("2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25"):
            self.assertEqual(negotiateVersion(version), version)
        for version in ("2026-07-28", "1999-01-01", None, 5):
            self.assertEqual(negotiateVersion(version), LATEST_HANDSHAKE_VERSION)
        self.assertEqual(LATEST_HANDSHAKE_VERSION, "2025-11-25")

    def test_isModern(self) -> None:
        """
        C{server/discover}, modern C{_meta} keys and a modern header (except
        on C{initialize}) select the stateless era.
        """
        modernMeta = {"_meta": {"io.modelcontextprotocol/protocolVersion": "2026-07-28"}}
        self.assertTrue(isModern("server/discover", {}, None))
        self.assertTrue(isModern("tools/list", modernMeta, None))
        self.assertTrue(isModern("initialize", modernMeta, None))
        self.assertTrue(isModern("tools/list", {}, "2026-07-28"))
        self.assertFalse(isModern("initialize", {}, "2026-07-28"))
        self.assertFalse(isModern("tools/list", {"_meta": {"progressToken": 1}}, "2025-06-18"))

    def test_progressToken(self) -> None:
        """
        Progress tokens are strings or integers from C{_meta}.
        """
        self.assertEqual(progressToken({"_meta": {"progressToken": "t"}}), "t")
        self.assertEqual(progressToken({"_meta": {"progressToken": 3}}), 3)
        self.assertIsNone(progressToken({"_meta": {"progressToken": None}}))
        self.assertIsNone(progressToken({"_meta": {"progressToken": True}}))
        self.assertIsNone(progressToken({}))
