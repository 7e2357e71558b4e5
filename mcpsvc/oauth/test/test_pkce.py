"""
Tests for L{mcpsvc.oauth.pkce}.
"""

from twisted.trial.unittest import SynchronousTestCase

from mcpsvc.oauth import pkce

# RFC 7636 appendix B.
RFC_VERIFIER = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"
RFC_CHALLENGE = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"


class PKCETests(SynchronousTestCase):
    def test_challengeForMatchesRFC7636(self) -> None:
        """
        L{pkce.challengeFor} computes the RFC 7636 appendix B example.
        """
        self.assertEqual(pkce.challengeFor(RFC_VERIFIER), RFC_CHALLENGE)

    def test_verifierMatches(self) -> None:
        """
        The right verifier matches its S256 challenge; another does not.
        """
        self.assertTrue(pkce.verifierMatches(RFC_VERIFIER, RFC_CHALLENGE))
        self.assertFalse(pkce.verifierMatches(RFC_VERIFIER[:-1] + "Y", RFC_CHALLENGE))

    def test_plainNeverMatches(self) -> None:
        """
        With the C{plain} method even the challenge itself does not match.
        """
        self.assertFalse(pkce.verifierMatches(RFC_VERIFIER, RFC_VERIFIER, "plain"))

    def test_verifierSyntax(self) -> None:
        """
        Verifiers are 43 to 128 unreserved characters.
        """
        self.assertTrue(pkce.isValidVerifier("a" * 43))
        self.assertTrue(pkce.isValidVerifier("a-._~" * 25 + "abc"))
        self.assertFalse(pkce.isValidVerifier("a" * 42))
        self.assertFalse(pkce.isValidVerifier("a" * 129))
        self.assertFalse(pkce.isValidVerifier("a" * 42 + "+"))
        self.assertFalse(pkce.isValidVerifier("a" * 42 + "\u00e9"))

    def test_shortVerifierNeverMatches(self) -> None:
        """
        A verifier that is too short fails even if its hash is the challenge.
        """
        short = "abc"
        self.assertFalse(pkce.verifierMatches(short, pkce.challengeFor(short)))

    def test_checkChallenge(self) -> None:
        """
        Missing challenge, missing method, C{plain} and malformed challenges
        are refused; a good S256 challenge passes.
        """
        self.assertIsNone(pkce.checkChallenge(RFC_CHALLENGE, "S256"))
        self.assertIn("required", pkce.checkChallenge(None, "S256") or "")
        self.assertIn("S256", pkce.checkChallenge(RFC_CHALLENGE, None) or "")
        self.assertIn("plain", pkce.checkChallenge(RFC_CHALLENGE, "plain") or "")
        self.assertIsNotNone(pkce.checkChallenge("short", "S256"))
        self.assertIsNotNone(pkce.checkChallenge(RFC_CHALLENGE, "s256"))
