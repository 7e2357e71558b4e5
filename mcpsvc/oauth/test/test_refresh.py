"""
Tests for L{mcpsvc.oauth.refresh}.
"""

from twisted.trial.unittest import SynchronousTestCase

from mcpsvc.oauth.refresh import (
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
