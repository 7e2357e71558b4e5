"""
Tests for L{mcpsvc.oauth.redirects}.
"""

from twisted.trial.unittest import SynchronousTestCase

from mcpsvc.config import DEFAULT_REDIRECT_PATTERNS, Config
from mcpsvc.oauth.redirects import (
    RedirectURIError,
    findRegistered,
    isLoopback,
    matchesPattern,
    validateRedirectURI,
)

SNOW = "https://dev12345.service-now.com/oauth_redirect.do"


class ValidateTests(SynchronousTestCase):
    def test_httpsAndLoopbackAccepted(self) -> None:
        """
        https URIs and http loopback URIs (any port) are accepted.
        """
        for uri in (
            SNOW,
            "https://app.example.com/cb?x=1",
            "http://127.0.0.1/cb",
            "http://127.0.0.1:8765/callback",
            "http://localhost:3000/cb",
            "http://[::1]:9000/cb",
        ):
            self.assertEqual(validateRedirectURI(uri), uri)

    def test_refused(self) -> None:
        """
        http on other hosts, other schemes, fragments, user information,
        relative URIs, bad ports and odd characters are refused.
        """
        for uri in (
            "http://example.com/cb",
            "http://127.0.0.1.evil.com/cb",
            "javascript:alert(1)",
            "ftp://example.com/cb",
            "https://example.com/cb#frag",
            "https://user:pw@example.com/cb",
            "https://evil.com@dev12345.service-now.com/oauth_redirect.do",
            "http://127.0.0.1@evil.com/cb",
            "/relative",
            "https:/example.com/cb",
            "https://example.com:99999/cb",
            "https://example.com/c b",
            "https://example.com\\@evil.com/",
            "https:///cb",
            "",
        ):
            self.assertRaises(RedirectURIError, validateRedirectURI, uri)

    def test_patterns(self) -> None:
        """
        The default patterns allow loopback only; C{SERVICENOW_INSTANCE}
        adds that instance and no other; C{SERVICENOW_ANY_INSTANCE} adds
        every instance.
        """
        other = "https://dev99999.service-now.com/oauth_redirect.do"
        patterns = DEFAULT_REDIRECT_PATTERNS
        validateRedirectURI("http://127.0.0.1:5555/callback", patterns)
        validateRedirectURI("http://localhost/cb", patterns)
        for uri in (SNOW, other, "https://app.example.com/cb"):
            self.assertRaises(RedirectURIError, validateRedirectURI, uri, patterns)
        pinned = Config(servicenowInstance="https://dev12345.service-now.com").redirectPatterns
        validateRedirectURI(SNOW, pinned)
        validateRedirectURI("http://127.0.0.1:5555/callback", pinned)
        self.assertRaises(RedirectURIError, validateRedirectURI, other, pinned)
        anyInstance = Config(servicenowAnyInstance=True).redirectPatterns
        validateRedirectURI(SNOW, anyInstance)
        validateRedirectURI(other, anyInstance)
        self.assertRaises(
            RedirectURIError, validateRedirectURI, "https://app.example.com/cb", anyInstance
        )


class PatternTests(SynchronousTestCase):
    def test_hostWildcardIsOneLabel(self) -> None:
        """
        C{*} in a host matches exactly one DNS label.
        """
        pattern = "https://*.service-now.com/oauth_redirect.do"
        self.assertTrue(matchesPattern(SNOW, pattern))
        self.assertTrue(matchesPattern("https://DEV1.service-now.com/oauth_redirect.do", pattern))
        self.assertFalse(matchesPattern("https://a.b.service-now.com/oauth_redirect.do", pattern))
        self.assertFalse(matchesPattern("https://evilservice-now.com/oauth_redirect.do", pattern))
        self.assertFalse(matchesPattern("https://service-now.com/oauth_redirect.do", pattern))
        self.assertFalse(matchesPattern("https://x.service-now.com.evil.com/oauth_redirect.do", pattern))

    def test_pathMustMatch(self) -> None:
        """
        The path of a pattern without a wildcard must match exactly.
        """
        pattern = "https://*.service-now.com/oauth_redirect.do"
        self.assertFalse(matchesPattern(SNOW + "/x", pattern))
        self.assertFalse(matchesPattern(SNOW + "?next=evil", pattern))
        self.assertFalse(matchesPattern("http://dev12345.service-now.com/oauth_redirect.do", pattern))
        self.assertFalse(matchesPattern("https://dev12345.service-now.com:444/oauth_redirect.do", pattern))

    def test_loopbackPatternIgnoresPort(self) -> None:
        """
        A loopback pattern matches any port and, with C{/*}, any path.
        """
        self.assertTrue(matchesPattern("http://127.0.0.1:4000/a/b?c=d", "http://127.0.0.1/*"))
        self.assertFalse(matchesPattern("http://127.0.0.2:4000/a", "http://127.0.0.1/*"))


class FindRegisteredTests(SynchronousTestCase):
    def test_exact(self) -> None:
        """
        A registered URI matches itself.
        """
        self.assertEqual(findRegistered(SNOW, [SNOW]), SNOW)

    def test_openRedirectTricks(self) -> None:
        """
        Extra path, added query, user information, another port, another
        scheme, other case, a fragment and a trailing slash all fail.
        """
        for uri in (
            SNOW + "/evil",
            SNOW + "?next=https://evil.com",
            "https://evil.com@dev12345.service-now.com/oauth_redirect.do",
            "https://dev12345.service-now.com:8443/oauth_redirect.do",
            "http://dev12345.service-now.com/oauth_redirect.do",
            "https://DEV12345.service-now.com/oauth_redirect.do",
            SNOW + "#x",
            SNOW + "/",
            "https://dev12345.service-now.com/oauth_redirect.DO",
        ):
            self.assertIsNone(findRegistered(uri, [SNOW]), uri)

    def test_loopbackAnyPort(self) -> None:
        """
        A registered loopback http URI matches on any port (RFC 8252), but
        only with the same host, path and query.
        """
        registered = ["http://127.0.0.1/callback", "http://localhost:3000/cb"]
        self.assertEqual(
            findRegistered("http://127.0.0.1:51234/callback", registered),
            "http://127.0.0.1:51234/callback",
        )
        self.assertEqual(
            findRegistered("http://localhost:9/cb", registered), "http://localhost:9/cb"
        )
        self.assertIsNone(findRegistered("http://127.0.0.1:51234/callback/x", registered))
        self.assertIsNone(findRegistered("http://127.0.0.1:51234/callback?x", registered))
        self.assertIsNone(findRegistered("http://localhost:51234/callback", registered))
        self.assertIsNone(findRegistered("https://127.0.0.1:51234/callback", registered))
        self.assertIsNone(findRegistered("http://user@127.0.0.1:5/callback", registered))

    def test_noPortForgivenessOffLoopback(self) -> None:
        """
        Ports are compared on non-loopback hosts.
        """
        self.assertIsNone(findRegistered("https://a.example:444/cb", ["https://a.example/cb"]))

    def test_isLoopback(self) -> None:
        """
        L{isLoopback} recognises http loopback URIs only.
        """
        self.assertTrue(isLoopback("http://[::1]:8/x"))
        self.assertFalse(isLoopback("https://127.0.0.1/x"))
        self.assertFalse(isLoopback("http://example.com/x"))
