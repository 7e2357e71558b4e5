"""
Tests for L{mcpsvc.http.jsonio}: the one JSON decoder and its helpers.
"""

from __future__ import annotations

import json

from twisted.trial.unittest import SynchronousTestCase

from mcpsvc.http.jsonio import MAX_DEPTH, InvalidJSON, decodeJSON, dumpJSON, truncateForLog


class DecodeJSONTests(SynchronousTestCase):
    def reason(self, data: "bytes | str", **kw: object) -> str:
        with self.assertRaises(InvalidJSON) as cm:
            decodeJSON(data, **kw)  # type: ignore[arg-type]
        self.assertIsInstance(cm.exception, ValueError)
        return cm.exception.reason

    def test_valid(self) -> None:
        self.assertEqual(decodeJSON(b'{"a":[1,2.5,"x",null,true]}'), {"a": [1, 2.5, "x", None, True]})
        self.assertEqual(decodeJSON('"\\ud83d\\ude00"'), "\U0001f600")  # a proper pair
        self.assertEqual(decodeJSON('"\\\\ud800"'), "\\ud800")  # an escaped backslash
        nested = "[" * MAX_DEPTH + "]" * MAX_DEPTH
        self.assertIsInstance(decodeJSON(nested), list)

    def test_depth(self) -> None:
        """
        Nesting beyond the limit is refused, however deep (the parser's
        own recursion limit is never reached as a RecursionError).
        """
        for depth in (MAX_DEPTH + 1, 2000, 100_000):
            self.assertIn("nested deeper", self.reason("[" * depth + "]" * depth, maxBytes=None))
            self.assertIn("nested deeper", self.reason('{"a":' * depth + "1" + "}" * depth, maxBytes=None))
        self.assertIn("nested deeper", self.reason("[[[1]]]", maxDepth=2))

    def test_surrogates(self) -> None:
        """
        A lone surrogate anywhere (value, key, deep inside) is refused.
        """
        for text in ('"\\ud800"', '{"\\udfff":1}', '[1,{"a":["x\\uDBFFy"]}]', '"\\ude00\\ud83d"'):
            self.assertIn("surrogate", self.reason(text))
        self.assertIn("surrogate", self.reason('"\ud800"'))  # already in the str

    def test_numbersAndConstants(self) -> None:
        for text in ("NaN", "Infinity", "-Infinity", "1e999", "[-1e400]"):
            self.reason(text)
        self.assertIn("digits", self.reason("1" * 5000))

    def test_encodingAndSize(self) -> None:
        self.assertIn("UTF-8", self.reason(b'"\xff"'))
        self.assertIn("UTF-8", self.reason(b'"\xed\xa0\x80"'))  # an encoded surrogate
        self.assertIn("bytes", self.reason(b"[1]", maxBytes=2))
        self.reason(b"{")
        self.reason(b"")
        self.reason(None)  # type: ignore[arg-type]


class DumpAndTruncateTests(SynchronousTestCase):
    def test_dumpSurrogate(self) -> None:
        """
        A lone surrogate that reached a response some other way is written
        escaped instead of failing the response.
        """
        self.assertEqual(json.loads(dumpJSON({"a": "\ud800"})), {"a": "\ud800"})
        self.assertEqual(dumpJSON({"a": "\u00e9"}), '{"a":"\u00e9"}'.encode("utf-8"))

    def test_truncate(self) -> None:
        value = {"name": "n" * 1000, "list": list(range(100)), "deep": [[[[["x"]]]]], 7: 2**100}
        cut = truncateForLog(value, limit=10)
        self.assertLess(len(repr(cut)), 600)
        self.assertTrue(cut["name"].startswith("n" * 10))
        self.assertIn("1000 chars", cut["name"])
        self.assertEqual(len(cut["list"]), 21)
        self.assertEqual(cut["7"], "(large number)")
        self.assertIsNone(truncateForLog(None))
        self.assertEqual(truncateForLog("short"), "short")
