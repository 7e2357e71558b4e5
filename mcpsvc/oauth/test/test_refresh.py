"""
Tests for L{mcpsvc.oauth.refresh}.
"""

from twisted.trial.unittest import SynchronousTestCase

from mcpsvc.oauth.refresh import (
    RefreshTokens,
    newFamilyID,
    newRefreshToken,
    sealSuccessor,
    splitRefreshToken,
    unsealSuccessor,
)


class RefreshTokenTests(SynchronousTestCase):
    def test_shape(self) -> None:
        """
        A refresh token is C{<familyID>.<secret>} and splits back.
        """
        family = newFamilyID()
        token = newRefreshToken(family)
        parts = splitRefreshToken(token)
        assert parts is not None
        self.assertEqual(parts[0], family)
        self.assertNotEqual(newRefreshToken(family), token)

    def test_malformed(self) -> None:
        """
        Tokens without our shape do not split.
        """
        for token in ("", "abc", "a.b", "x" * 20 + "." + "y" * 10, "a.b.c", "x" * 20 + "." + "y!" * 10):
            self.assertIsNone(splitRefreshToken(token), token)

    def test_sealRoundTrip(self) -> None:
        """
        Only the presented token the successor was sealed for opens it, and
        only for the same family.
        """
        family = newFamilyID()
        old, new = newRefreshToken(family), newRefreshToken(family)
        sealed = sealSuccessor(old, new, family)
        self.assertNotIn(new, sealed)
        self.assertEqual(unsealSuccessor(old, sealed, family), new)
        self.assertIsNone(unsealSuccessor(new, sealed, family))
        self.assertIsNone(unsealSuccessor(old, sealed, newFamilyID()))
        self.assertIsNone(unsealSuccessor(old, "garbage!", family))


class TaggedRefreshTokenTests(SynchronousTestCase):
    """
    L{RefreshTokens}: tokens this server minted are recognised; forgeries
    built from a family id are not.
    """

    def setUp(self) -> None:
        self.tokens = RefreshTokens("s" * 32)

    def test_minted(self) -> None:
        family = newFamilyID()
        token = self.tokens.new(family)
        parts = splitRefreshToken(token)
        assert parts is not None
        self.assertEqual(parts[0], family)
        self.assertTrue(self.tokens.minted(token))
        self.assertNotEqual(self.tokens.new(family), token)

    def test_forgeries(self) -> None:
        """
        The family id plus random bytes, an untagged token, a token of
        another family's tag, a tampered tag, another server's token and
        junk are not ours.
        """
        family = newFamilyID()
        token = self.tokens.new(family)
        secret = token.split(".", 1)[1]
        flipped = secret[:-2] + ("A" if secret[-2] != "A" else "B") + secret[-1]
        for forged in (
            newRefreshToken(family),
            family + "." + "A" * 64,
            newFamilyID() + "." + secret,
            family + "." + flipped,
            RefreshTokens("t" * 32).new(family),
            family + "." + secret[:40],
            "junk",
            family + ".!!!!!!!!!!!!!!!!!!!!",
        ):
            self.assertFalse(self.tokens.minted(forged), forged)
        self.assertTrue(RefreshTokens("s" * 32).minted(token))
