"""
Tests for L{mcpsvc.oauth.clients} and L{mcpsvc.oauth.scopes}.
"""

from twisted.trial.unittest import SynchronousTestCase

from mcpsvc.config import Config
from mcpsvc.oauth.clients import (
    ClientMetadataError,
    clientScopes,
    isConfidential,
    normalizeMetadata,
    registrationResponse,
)
from mcpsvc.oauth.scopes import (
    DEFAULT_SCOPES,
    InvalidScope,
    effectiveScopes,
    grantScope,
    missingScopes,
    parseScope,
)

SNOW = "https://dev12345.service-now.com/oauth_redirect.do"
#: What registration accepts with SERVICENOW_INSTANCE set (and loopback).
DEFAULT_REDIRECT_PATTERNS = Config(servicenowInstance="https://dev12345.service-now.com").redirectPatterns


class NormalizeTests(SynchronousTestCase):
    def assertMetadataError(self, error: str, raw: dict) -> ClientMetadataError:
        e = self.assertRaises(
            ClientMetadataError, normalizeMetadata, raw, patterns=DEFAULT_REDIRECT_PATTERNS
        )
        self.assertEqual(e.error, error)
        return e

    def test_defaults(self) -> None:
        """
        A minimal request becomes a confidential client_secret_basic client
        with the authorization_code grant, response type code and every
        scope it may ask for; unknown fields are dropped.
        """
        md = normalizeMetadata(
            {"redirect_uris": [SNOW], "client_name": "SN", "frobnicate": 1},
            patterns=DEFAULT_REDIRECT_PATTERNS,
        )
        self.assertEqual(
            md,
            {
                "redirect_uris": [SNOW],
                "token_endpoint_auth_method": "client_secret_basic",
                "grant_types": ["authorization_code"],
                "response_types": ["code"],
                "scope": "mcp:tools mcp:read mcp:write",
                "client_name": "SN",
            },
        )
        self.assertTrue(isConfidential(md))

    def test_publicClient(self) -> None:
        """
        C{none} makes a public client.
        """
        md = normalizeMetadata(
            {
                "redirect_uris": ["http://127.0.0.1:3333/cb"],
                "token_endpoint_auth_method": "none",
                "grant_types": ["authorization_code", "refresh_token"],
            }
        )
        self.assertFalse(isConfidential(md))
        self.assertEqual(md["grant_types"], ["authorization_code", "refresh_token"])

    def test_privateKeyJWTNeedsKeys(self) -> None:
        """
        C{private_key_jwt} without keys is a clean C{invalid_client_metadata}
        naming what is missing.
        """
        e = self.assertMetadataError(
            "invalid_client_metadata",
            {"redirect_uris": [SNOW], "token_endpoint_auth_method": "private_key_jwt"},
        )
        self.assertIn("jwks", e.description)

    def test_badGrantsAndResponses(self) -> None:
        """
        Unknown grant types, implicit, inconsistent response types and
        public client_credentials clients are refused.
        """
        self.assertMetadataError(
            "invalid_client_metadata", {"redirect_uris": [SNOW], "grant_types": ["password"]}
        )
        self.assertMetadataError(
            "invalid_client_metadata", {"redirect_uris": [SNOW], "response_types": ["token"]}
        )
        self.assertMetadataError(
            "invalid_client_metadata",
            {"grant_types": ["client_credentials"], "response_types": ["code"]},
        )
        self.assertMetadataError(
            "invalid_client_metadata",
            {"grant_types": ["client_credentials"], "token_endpoint_auth_method": "none"},
        )
        self.assertMetadataError("invalid_client_metadata", {"redirect_uris": [SNOW], "grant_types": []})

    def test_clientCredentialsWithoutRedirects(self) -> None:
        """
        A client_credentials-only client needs no redirect URI and gets no
        response types.
        """
        md = normalizeMetadata({"grant_types": ["client_credentials", "refresh_token"]})
        self.assertEqual(md["grant_types"], ["client_credentials"])
        self.assertEqual(md["response_types"], [])

    def test_redirectErrors(self) -> None:
        """
        Missing, malformed, http non-loopback and non-allow-listed redirect
        URIs are C{invalid_redirect_uri}.
        """
        self.assertMetadataError("invalid_redirect_uri", {})
        self.assertMetadataError("invalid_redirect_uri", {"redirect_uris": "nope"})
        self.assertMetadataError("invalid_redirect_uri", {"redirect_uris": [1]})
        self.assertMetadataError("invalid_redirect_uri", {"redirect_uris": ["http://example.com/cb"]})
        self.assertMetadataError("invalid_redirect_uri", {"redirect_uris": ["https://example.com/cb"]})

    def test_noPatternsForAdmin(self) -> None:
        """
        Without patterns (administrative registration) any https URI passes.
        """
        md = normalizeMetadata({"redirect_uris": ["https://example.com/cb"]}, patterns=None)
        self.assertEqual(md["redirect_uris"], ["https://example.com/cb"])

    def test_scopesCommaListAndUnknownDropped(self) -> None:
        """
        ServiceNow-style comma lists are parsed; unknown scopes are dropped;
        nothing known means the default scopes.
        """
        md = normalizeMetadata({"redirect_uris": [SNOW], "scope": "mcp:tools,openid, profile"},
                               patterns=None)
        self.assertEqual(md["scope"], "mcp:tools")
        md = normalizeMetadata({"redirect_uris": [SNOW], "scope": "openid email profile"},
                               patterns=None)
        self.assertEqual(md["scope"], "mcp:tools mcp:read mcp:write")
        self.assertEqual(clientScopes(md), frozenset({"mcp:tools", "mcp:read", "mcp:write"}))

    def test_dynamicRegistrationMayAskForEveryScope(self) -> None:
        """
        A dynamically registered client may ask for every scope, whatever it
        named (offline_access is kept when named).
        """
        md = normalizeMetadata({"redirect_uris": [SNOW], "scope": "mcp:read,offline_access"},
                               patterns=DEFAULT_REDIRECT_PATTERNS)
        self.assertEqual(md["scope"], "mcp:tools mcp:read mcp:write offline_access")

    def test_typeErrors(self) -> None:
        """
        Wrongly typed fields are C{invalid_client_metadata}.
        """
        self.assertMetadataError("invalid_client_metadata", {"redirect_uris": [SNOW], "scope": 5})
        self.assertMetadataError("invalid_client_metadata", {"redirect_uris": [SNOW], "client_name": ["x"]})
        self.assertMetadataError(
            "invalid_client_metadata", {"redirect_uris": [SNOW], "token_endpoint_auth_method": 1}
        )

    def test_controlCharactersRefused(self) -> None:
        """
        Text fields (a name that the admin commands print to a terminal,
        the logs and the consent page show) may not contain control
        characters: no terminal escape sequences, no forged log lines.
        Other scripts and direction marks are kept.
        """
        for name in ("x\x1b]0;pwned\x07", "x\nFAKE LOG LINE", "x\r", "x\x00", "x\x9b31m",
                     "x\x7f"):
            self.assertMetadataError("invalid_client_metadata",
                                     {"redirect_uris": [SNOW], "client_name": name})
        self.assertMetadataError("invalid_client_metadata",
                                 {"redirect_uris": [SNOW], "client_uri": "https://a.example/\x1b"})
        md = normalizeMetadata({"redirect_uris": [SNOW], "client_name": "\u05e9\u05dc\u05d5\u05dd \u200fApp"},
                               patterns=DEFAULT_REDIRECT_PATTERNS)
        self.assertEqual(md["client_name"], "\u05e9\u05dc\u05d5\u05dd \u200fApp")

    def test_registrationResponse(self) -> None:
        """
        The response carries the metadata, the id, the issue time and, for
        confidential clients, the secret with C{client_secret_expires_at} 0.
        """
        body = registrationResponse("cid", {"scope": "mcp:read"}, 1750000000.5, "s3cret")
        self.assertEqual(
            body,
            {
                "scope": "mcp:read",
                "client_id": "cid",
                "client_id_issued_at": 1750000000,
                "client_secret": "s3cret",
                "client_secret_expires_at": 0,
            },
        )
        self.assertNotIn("client_secret", registrationResponse("cid", {}, 0, None))


class ScopeTests(SynchronousTestCase):
    def test_parse(self) -> None:
        """
        Scopes split on spaces and commas, without duplicates.
        """
        self.assertEqual(parseScope("a, b  c,a"), ["a", "b", "c"])
        self.assertEqual(parseScope(None), [])

    def test_grant(self) -> None:
        """
        Asking for nothing gives everything allowed; asking for a subset
        narrows; asking for more is L{InvalidScope}; unknown scopes are
        ignored; C{offline_access} is always accepted.
        """
        allowed = frozenset({"mcp:tools", "mcp:read"})
        self.assertEqual(grantScope(None, allowed), "mcp:tools mcp:read")
        self.assertEqual(grantScope("mcp:read", allowed), "mcp:read")
        self.assertEqual(grantScope("openid", allowed), "mcp:tools mcp:read")
        self.assertEqual(grantScope("mcp:read offline_access", allowed), "mcp:read offline_access")
        self.assertRaises(InvalidScope, grantScope, "mcp:tools", frozenset({"mcp:read"}))

    def test_grantDefault(self) -> None:
        """
        With a default, asking for nothing (or only unknown scopes) gives
        the default scopes the client may have; C{mcp:write} only when
        named.
        """
        allowed = frozenset({"mcp:tools", "mcp:read", "mcp:write"})
        self.assertEqual(grantScope(None, allowed, DEFAULT_SCOPES), "mcp:tools mcp:read")
        self.assertEqual(grantScope("openid,email", allowed, DEFAULT_SCOPES), "mcp:tools mcp:read")
        self.assertEqual(grantScope("mcp:write", allowed, DEFAULT_SCOPES), "mcp:write")
        self.assertEqual(grantScope(None, frozenset({"mcp:read"}), DEFAULT_SCOPES), "mcp:read")
        self.assertEqual(grantScope(None, frozenset({"mcp:write"}), DEFAULT_SCOPES), "mcp:write")

    def test_hierarchy(self) -> None:
        """
        C{mcp:tools} includes C{mcp:read}; C{mcp:write} includes both;
        unknown scopes include nothing.
        """
        self.assertEqual(effectiveScopes({"mcp:tools"}), {"mcp:tools", "mcp:read"})
        self.assertEqual(effectiveScopes({"mcp:write"}), {"mcp:write", "mcp:tools", "mcp:read"})
        self.assertEqual(missingScopes({"mcp:read"}, ["mcp:tools"]), ["mcp:tools"])
        self.assertEqual(missingScopes({"mcp:tools"}, ["mcp:read"]), [])
        self.assertEqual(missingScopes({"admin", "mcp"}, ["mcp:read"]), ["mcp:read"])
        self.assertEqual(missingScopes({"mcp:tools"}, ["mcp:tools", "mcp:write"]), ["mcp:write"])
