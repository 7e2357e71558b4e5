# -*- test-case-name: mcpsvc.storage.test.test_hashing -*-
"""
Tests for L{mcpsvc.storage.hashing}.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from mcpsvc.storage.hashing import hashSecret, newSecret, secretMatches


class HashingTests(SynchronousTestCase):
    def test_hash(self) -> None:
        self.assertEqual(
            hashSecret("abc"),
            "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
        )

    def test_matches(self) -> None:
        stored = hashSecret("s3cret")
        self.assertTrue(secretMatches("s3cret", stored))
        self.assertFalse(secretMatches("s3cret ", stored))
        self.assertFalse(secretMatches("s3cret", "sha256:"))

    def test_newSecret(self) -> None:
        a, b = newSecret(), newSecret()
        self.assertNotEqual(a, b)
        self.assertEqual(len(a), 43)  # 32 bytes, unpadded base64url
        self.assertNotIn("=", a)
