"""
Tests for L{mcpsvc.config}.
"""

import os
import stat

from twisted.trial.unittest import SynchronousTestCase

from mcpsvc.config import (
    VARIABLES,
    Config,
    ConfigError,
    ensureDevelopmentSecrets,
    loadConfig,
    readEnvironment,
    summary,
)

SECRET = "s" * 32


def valid(**extra: str) -> dict:
    raw = {"JWT_SECRET": SECRET}
    raw.update(extra)
    return raw


class LoadConfigTests(SynchronousTestCase):
    """
    L{loadConfig} validates every setting and reports every error at once.
    """

    def errorsFor(self, **raw: str) -> list:
        with self.assertRaises(ConfigError) as cm:
            loadConfig(raw)
        return cm.exception.errors

    def test_defaults(self) -> None:
        """
        With only a JWT secret, the defaults are those of DESIGN.md.
        """
        config = loadConfig(valid())
        self.assertEqual(config.port, 3000)
        self.assertEqual(config.host, "127.0.0.1")
        self.assertEqual(config.listen, ("tcp:3000:interface=127.0.0.1",))
        self.assertEqual(config.serverURL, "http://127.0.0.1:3000")
        self.assertEqual(config.issuer, config.serverURL)
        self.assertEqual(config.resourceURL, "http://127.0.0.1:3000/mcp")
        self.assertEqual(config.store, "sqlite")
        self.assertEqual(config.storePath, "./var/mcpsvc.sqlite3")
        self.assertEqual(config.accessTokenLifetime, 3600)
        self.assertEqual(config.refreshTokenLifetime, 90 * 86400)
        self.assertEqual(config.authorizationCodeLifetime, 600)
        self.assertEqual(config.toolPacks, ("core",))
        self.assertTrue(config.sessions)
        self.assertFalse(config.production)

    def test_shortSecret(self) -> None:
        """
        A JWT secret shorter than 32 bytes is refused.
        """
        errors = self.errorsFor(JWT_SECRET="short")
        self.assertEqual(len(errors), 1)
        self.assertIn("JWT_SECRET must be at least 32 bytes", errors[0])

    def test_secretCountsBytes(self) -> None:
        """
        The 32 is counted in bytes of UTF-8, not characters.
        """
        loadConfig(valid(JWT_SECRET="é" * 16))
        self.errorsFor(JWT_SECRET="é" * 15)

    def test_missingSecret(self) -> None:
        """
        A missing JWT secret is an error.
        """
        self.assertIn("JWT_SECRET is required", self.errorsFor()[0])

    def test_dcrTokenLength(self) -> None:
        """
        DCR_AUTH_TOKEN, when set, has at least 32 characters.
        """
        errors = self.errorsFor(JWT_SECRET=SECRET, DCR_AUTH_TOKEN="x" * 31)
        self.assertIn("DCR_AUTH_TOKEN must be at least 32 characters", errors[0])
        self.assertEqual(loadConfig(valid(DCR_AUTH_TOKEN="x" * 32)).dcrAuthToken, "x" * 32)

    def test_servicenowInstanceHTTPS(self) -> None:
        """
        SERVICENOW_INSTANCE must be an https URL; it becomes a CORS origin.
        """
        self.assertIn("https://", self.errorsFor(JWT_SECRET=SECRET, SERVICENOW_INSTANCE="http://x.service-now.com")[0])
        config = loadConfig(valid(SERVICENOW_INSTANCE="https://dev1.service-now.com/"))
        self.assertEqual(config.allowedOrigins, ("https://dev1.service-now.com",))

    def test_serverURLRules(self) -> None:
        """
        SERVER_URL is absolute, has no trailing slash and no path.
        """
        self.assertIn("absolute", self.errorsFor(JWT_SECRET=SECRET, SERVER_URL="example.com")[0])
        self.assertIn("slash", self.errorsFor(JWT_SECRET=SECRET, SERVER_URL="https://example.com/")[0])
        self.assertIn("no path", self.errorsFor(JWT_SECRET=SECRET, SERVER_URL="https://example.com/x")[0])

    def test_productionRules(self) -> None:
        """
        Production requires an https SERVER_URL and refuses AUTH_MODE=none.
        """
        errors = self.errorsFor(
            JWT_SECRET=SECRET, ENVIRONMENT="production",
            SERVER_URL="http://example.com", AUTH_MODE="none",
        )
        self.assertEqual(len(errors), 2)
        self.assertIn("https:// in production", errors[0])
        self.assertIn("AUTH_MODE=none", errors[1])
        self.assertIn(
            "SERVER_URL is required in production",
            self.errorsFor(JWT_SECRET=SECRET, ENVIRONMENT="production")[0],
        )

    def test_lifetimes(self) -> None:
        """
        Lifetimes are positive integers.
        """
        errors = self.errorsFor(
            JWT_SECRET=SECRET, ACCESS_TOKEN_LIFETIME="0",
            REFRESH_TOKEN_LIFETIME="-5", AUTHORIZATION_CODE_LIFETIME="ten",
        )
        self.assertEqual(len(errors), 3)

    def test_port(self) -> None:
        """
        PORT is between 1 and 65535.
        """
        self.assertIn("PORT", self.errorsFor(JWT_SECRET=SECRET, PORT="70000")[0])
        self.assertIn("PORT", self.errorsFor(JWT_SECRET=SECRET, PORT="http")[0])

    def test_store(self) -> None:
        """
        STORE is one of the known backends.
        """
        self.assertIn("STORE must be one of", self.errorsFor(JWT_SECRET=SECRET, STORE="postgres")[0])

    def test_multiServerNeedsRedis(self) -> None:
        """
        A multi-server deployment without Redis is refused.
        """
        errors = self.errorsFor(JWT_SECRET=SECRET, DEPLOYMENT_TYPE="multi-server")
        self.assertIn("requires STORE=redis", errors[0])
        loadConfig(valid(DEPLOYMENT_TYPE="multi-server", STORE="redis"))

    def test_allErrorsAtOnce(self) -> None:
        """
        Every problem is reported in one L{ConfigError}.
        """
        errors = self.errorsFor(
            JWT_SECRET="short", DCR_AUTH_TOKEN="short", PORT="0", STORE="nope",
            SERVICENOW_INSTANCE="ftp://x", ACCESS_TOKEN_LIFETIME="x",
            DEPLOYMENT_TYPE="multi-server", CORS_ORIGINS="*",
        )
        self.assertEqual(len(errors), 8, errors)

    def test_corsNeverWildcard(self) -> None:
        """
        CORS_ORIGINS refuses C{*}.
        """
        self.assertIn("explicit", self.errorsFor(JWT_SECRET=SECRET, CORS_ORIGINS="*")[0])

    def test_listenOverride(self) -> None:
        """
        Explicit listen descriptions replace the default.
        """
        config = loadConfig(valid(), listen=("tcp:0",))
        self.assertEqual(config.listen, ("tcp:0",))

    def test_summaryHidesSecrets(self) -> None:
        """
        The summary carries secret lengths, never values.
        """
        config = loadConfig(valid(DCR_AUTH_TOKEN="d" * 40, MCP_API_KEY="k" * 20))
        text = repr(summary(config))
        self.assertNotIn(SECRET, text)
        self.assertNotIn("d" * 40, text)
        self.assertNotIn("k" * 20, text)
        self.assertEqual(summary(config)["jwtSecretLength"], 32)


class ReadEnvironmentTests(SynchronousTestCase):
    """
    L{readEnvironment} merges C{.env} under the process environment.
    """

    def test_precedence(self) -> None:
        """
        The environment wins over C{.env}; C{.env} fills what is missing.
        """
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("PORT=4000\nHOST=0.0.0.0\nJWT_SECRET=fromfile\n")
        raw = readEnvironment({"PORT": "5000", "UNRELATED": "x"}, path)
        self.assertEqual(raw, {"PORT": "5000", "HOST": "0.0.0.0", "JWT_SECRET": "fromfile"})

    def test_nodeEnvAlias(self) -> None:
        """
        NODE_ENV is accepted for ENVIRONMENT.
        """
        self.assertEqual(readEnvironment({"NODE_ENV": "production"}, None)["ENVIRONMENT"], "production")
        self.assertEqual(
            readEnvironment({"NODE_ENV": "production", "ENVIRONMENT": "development"}, None)["ENVIRONMENT"],
            "development",
        )

    def test_missingFile(self) -> None:
        """
        A missing C{.env} is fine.
        """
        self.assertEqual(readEnvironment({}, self.mktemp()), {})


class DevelopmentSecretsTests(SynchronousTestCase):
    """
    L{ensureDevelopmentSecrets} generates secrets once in development only.
    """

    def test_generatedOnceAndReused(self) -> None:
        """
        A missing JWT secret and DCR token are generated into VAR_DIR with
        mode 0600, announced, and reused on the next start.
        """
        varDir = self.mktemp()
        values = iter(["a" * 43, "b" * 43, "c" * 43, "d" * 43])
        raw, notices = ensureDevelopmentSecrets({"VAR_DIR": varDir}, lambda: next(values))
        self.assertEqual(raw["JWT_SECRET"], "a" * 43)
        self.assertEqual(raw["DCR_AUTH_TOKEN"], "b" * 43)
        self.assertEqual(len(notices), 2)
        self.assertIn("generated", notices[0])
        mode = stat.S_IMODE(os.stat(os.path.join(varDir, "jwt_secret")).st_mode)
        self.assertEqual(mode, 0o600)
        again, notices2 = ensureDevelopmentSecrets({"VAR_DIR": varDir}, lambda: next(values))
        self.assertEqual(again["JWT_SECRET"], "a" * 43)
        self.assertEqual(again["DCR_AUTH_TOKEN"], "b" * 43)
        self.assertIn("using the development value", notices2[0])
        loadConfig(again)

    def test_setValuesKept(self) -> None:
        """
        Configured values are never replaced.
        """
        raw, notices = ensureDevelopmentSecrets(
            {"VAR_DIR": self.mktemp(), "JWT_SECRET": SECRET, "DCR_AUTH_TOKEN": "t" * 32},
            lambda: self.fail("generated"),
        )
        self.assertEqual(raw["JWT_SECRET"], SECRET)
        self.assertEqual(notices, [])

    def test_productionNeverGenerates(self) -> None:
        """
        In production nothing is generated, so validation reports the gap.
        """
        raw, notices = ensureDevelopmentSecrets(
            {"VAR_DIR": self.mktemp(), "ENVIRONMENT": "production"},
            lambda: self.fail("generated"),
        )
        self.assertNotIn("JWT_SECRET", raw)
        self.assertEqual(notices, [])


class EnvExampleTests(SynchronousTestCase):
    """
    C{.env.example} documents every variable, each with a comment.
    """

    def test_everyVariableDocumented(self) -> None:
        """
        Every variable in L{VARIABLES} appears in C{.env.example} after a
        comment line.
        """
        here = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        with open(os.path.join(here, ".env.example")) as f:
            lines = f.read().splitlines()
        import re

        def variable(line: str) -> "str | None":
            # NAME=value, or a documented-but-unset "# NAME=" (optionally
            # followed by a space and a remark).
            match = re.fullmatch(r"([A-Z][A-Z0-9_]*)=.*", line) or re.fullmatch(
                r"# ([A-Z][A-Z0-9_]*)=(\s.*)?", line
            )
            return match.group(1) if match else None

        seen = {}
        for index, line in enumerate(lines):
            name = variable(line)
            if name is not None:
                self.assertNotIn(name, seen, f"{name} appears twice")
                seen[name] = index
        self.assertEqual(sorted(set(VARIABLES) - set(seen)), [])
        for name, index in seen.items():
            self.assertTrue(
                index > 0 and lines[index - 1].startswith("# ") and variable(lines[index - 1]) is None,
                f"{name} has no comment on the line before it",
            )


class DevelopmentServerURLTests(SynchronousTestCase):
    def test_followsListen(self) -> None:
        """
        Without SERVER_URL, development derives it from the first explicit
        listener's port (and https for an ssl listener).
        """
        self.assertEqual(loadConfig(valid(), listen=("tcp:8080",)).serverURL, "http://127.0.0.1:8080")
        self.assertEqual(
            loadConfig(valid(), listen=("ssl:8443:privateKey=k:certKey=c",)).serverURL,
            "https://127.0.0.1:8443",
        )
        self.assertEqual(loadConfig(valid(PORT="4000"), listen=("tcp:0",)).serverURL, "http://127.0.0.1:4000")


class ReprTests(SynchronousTestCase):
    def test_secretsHiddenFromRepr(self) -> None:
        """
        A L{Config} in a log event's repr never shows a secret.
        """
        config = loadConfig(valid(DCR_AUTH_TOKEN="d" * 40, MCP_API_KEY="k" * 20, METRICS_TOKEN="m" * 20,
                                  REDIS_PASSWORD="p" * 12))
        text = repr(config)
        for secret in (SECRET, "d" * 40, "k" * 20, "m" * 20, "p" * 12):
            self.assertNotIn(secret, text)
