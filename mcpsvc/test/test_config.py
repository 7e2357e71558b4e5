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

    def test_taskSettings(self) -> None:
        """
        C{TASK_TTL} (10 seconds to 30 days) and C{TASK_POLL_INTERVAL}
        (above 0, at most 300) default to an hour and a second; values out
        of range are reported together.
        """
        config = loadConfig(valid())
        self.assertEqual((config.taskTTL, config.taskPollInterval), (3600.0, 1.0))
        config = loadConfig(valid(TASK_TTL="60", TASK_POLL_INTERVAL="0.25"))
        self.assertEqual((config.taskTTL, config.taskPollInterval), (60.0, 0.25))
        errors = self.errorsFor(JWT_SECRET=SECRET, TASK_TTL="5", TASK_POLL_INTERVAL="0")
        self.assertEqual(len(errors), 2, errors)
        self.assertIn("TASK_TTL must be between 10 and 2592000", errors[0] + errors[1])
        self.assertIn("TASK_POLL_INTERVAL must be greater than 0", errors[0] + errors[1])
        errors = self.errorsFor(JWT_SECRET=SECRET, TASK_POLL_INTERVAL="301")
        self.assertIn("TASK_POLL_INTERVAL must be at most 300", errors[0])

    def test_taskLimit(self) -> None:
        """
        C{TASK_LIMIT}, the most live tasks of one principal, defaults to 20
        and is between 1 and 10000.
        """
        self.assertEqual(loadConfig(valid()).taskLimit, 20)
        self.assertEqual(loadConfig(valid(TASK_LIMIT="3")).taskLimit, 3)
        for bad in ("0", "10001", "x"):
            errors = self.errorsFor(JWT_SECRET=SECRET, TASK_LIMIT=bad)
            self.assertEqual(len(errors), 1, errors)
            self.assertIn("TASK_LIMIT", errors[0])

    def test_taskLease(self) -> None:
        """
        C{TASK_LEASE} is unset by default (the task manager then takes the
        larger of 10 s and five poll intervals); when set it is a number
        of at least three poll intervals (so it is renewed in time) and at
        most C{TASK_TTL}; each problem is reported.
        """
        from mcpsvc.mcp.tasks import buildTaskManager

        config = loadConfig(valid())
        self.assertIsNone(config.taskLease)
        self.assertEqual(buildTaskManager(config, None, None).lease, 10.0)
        slow = loadConfig(valid(TASK_POLL_INTERVAL="4"))
        self.assertEqual(buildTaskManager(slow, None, None).lease, 20.0)
        config = loadConfig(valid(TASK_LEASE="2", TASK_POLL_INTERVAL="0.5"))
        self.assertEqual(config.taskLease, 2.0)
        self.assertEqual(buildTaskManager(config, None, None).lease, 2.0)
        for env, message in [
            (dict(TASK_LEASE="0"), "TASK_LEASE must be greater than 0"),
            (dict(TASK_LEASE="x"), "TASK_LEASE must be a number"),
            (dict(TASK_LEASE="2"), "TASK_LEASE must be at least 3 x TASK_POLL_INTERVAL (3)"),
            (dict(TASK_LEASE="100", TASK_TTL="60"), "TASK_LEASE must be at most TASK_TTL (60)"),
        ]:
            errors = self.errorsFor(JWT_SECRET=SECRET, **env)
            self.assertEqual(len(errors), 1, errors)
            self.assertIn(message, errors[0])

    def test_privateKeyJWT(self) -> None:
        """
        C{private_key_jwt} is on by default, with a 300 s assertion lifetime
        and a 300 s key cache; C{PRIVATE_KEY_JWT=off} turns it off; bad
        values are all reported at once.
        """
        config = loadConfig(valid())
        self.assertEqual((config.privateKeyJWT, config.clientAssertionMaxLifetime,
                          config.clientJWKSCacheSeconds), (True, 300, 300))
        config = loadConfig(valid(PRIVATE_KEY_JWT="off", CLIENT_ASSERTION_MAX_LIFETIME="60",
                                  CLIENT_JWKS_CACHE_SECONDS="3600"))
        self.assertEqual((config.privateKeyJWT, config.clientAssertionMaxLifetime,
                          config.clientJWKSCacheSeconds), (False, 60, 3600))
        errors = self.errorsFor(**valid(PRIVATE_KEY_JWT="maybe", CLIENT_ASSERTION_MAX_LIFETIME="99999",
                                        CLIENT_JWKS_CACHE_SECONDS="x"))
        self.assertEqual(len(errors), 3, errors)
        self.assertIn("PRIVATE_KEY_JWT must be on or off", errors[0])
        self.assertIn("CLIENT_ASSERTION_MAX_LIFETIME must be between 10 and 3600", errors[1])
        self.assertIn("CLIENT_JWKS_CACHE_SECONDS must be an integer", errors[2])

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


PROD = {
    "ENVIRONMENT": "production",
    "SERVER_URL": "https://mcp.example.com",
    "JWT_SECRET": SECRET,
}


class SecretFileTests(SynchronousTestCase):
    """
    Every secret can be given as C{<NAME>_FILE}: the path of a file that
    holds it.
    """

    def secretFile(self, content: bytes) -> str:
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(content)
        os.chmod(path, 0o600)
        return path

    def errorsFor(self, raw: dict) -> list:
        with self.assertRaises(ConfigError) as cm:
            loadConfig(raw)
        return cm.exception.errors

    def test_everySecret(self) -> None:
        """
        Each secret read from its file (trailing newline stripped) is the
        value the configuration carries.
        """
        from mcpsvc.config import SECRET_VARIABLES

        self.assertEqual(
            sorted(SECRET_VARIABLES),
            sorted(["JWT_SECRET", "DCR_AUTH_TOKEN", "MCP_API_KEY", "METRICS_TOKEN",
                    "REDIS_PASSWORD", "REDIS_URL"]),
        )
        values = {
            "JWT_SECRET": ("jwtSecret", "j" * 40),
            "DCR_AUTH_TOKEN": ("dcrAuthToken", "d" * 40),
            "MCP_API_KEY": ("mcpAPIKey", "m" * 20),
            "METRICS_TOKEN": ("metricsToken", "t" * 20),
            "REDIS_PASSWORD": ("redisPassword", "redis pass"),
            "REDIS_URL": ("redisURL", "redis://:pw@10.0.0.5:6380/2"),
        }
        raw = {}
        for name, (_, value) in values.items():
            raw[name + "_FILE"] = self.secretFile(value.encode() + b"\n")
        config = loadConfig(raw)
        for name, (attribute, value) in values.items():
            self.assertEqual(getattr(config, attribute), value, name)
        # CRLF, as an editor on another system may write it.
        config = loadConfig({"JWT_SECRET_FILE": self.secretFile(b"k" * 32 + b"\r\n")})
        self.assertEqual(config.jwtSecret, "k" * 32)

    def test_sameValidation(self) -> None:
        """
        A value from a file is validated like one given directly, and the
        error says where it came from.
        """
        errors = self.errorsFor({
            "JWT_SECRET_FILE": self.secretFile(b"short\n"),
            "DCR_AUTH_TOKEN_FILE": self.secretFile(b"short\n"),
            "MCP_API_KEY_FILE": self.secretFile(b"short\n"),
            "METRICS_TOKEN_FILE": self.secretFile(b"short\n"),
            "REDIS_URL_FILE": self.secretFile(b"http://x\n"),
        })
        self.assertEqual(len(errors), 5, errors)
        self.assertIn("JWT_SECRET (from JWT_SECRET_FILE) must be at least 32 bytes", errors[0])
        for name in ("DCR_AUTH_TOKEN", "MCP_API_KEY", "METRICS_TOKEN", "REDIS_URL"):
            self.assertTrue(
                any(e.startswith(f"{name} (from {name}_FILE) must") for e in errors), (name, errors)
            )

    def test_bothSet(self) -> None:
        """
        Setting a secret and its file is an error, reported with the others.
        """
        path = self.secretFile(b"x" * 32)
        errors = self.errorsFor({"JWT_SECRET": SECRET, "JWT_SECRET_FILE": path,
                                 "MCP_API_KEY": "k" * 16, "MCP_API_KEY_FILE": path,
                                 "PORT": "0"})
        self.assertIn("JWT_SECRET and JWT_SECRET_FILE are both set: set only one of them", errors)
        self.assertIn("MCP_API_KEY and MCP_API_KEY_FILE are both set: set only one of them", errors)
        self.assertTrue(any(e.startswith("PORT") for e in errors))
        self.assertFalse(any("JWT_SECRET is required" in e for e in errors), errors)

    def test_badFiles(self) -> None:
        """
        A missing, unreadable, empty, multi-line or binary file is an error
        naming the variable and the file, and never showing its content.
        """
        missing = os.path.join(self.mktemp(), "nope")
        unreadable = self.secretFile(b"z" * 40)
        os.chmod(unreadable, 0)
        cases = {
            "JWT_SECRET_FILE": (missing, "cannot be read"),
            "DCR_AUTH_TOKEN_FILE": (self.secretFile(b"\n  \n"), "is empty"),
            "MCP_API_KEY_FILE": (self.secretFile(b"first-line-secret\nsecond-line-secret\n"),
                                 "must hold the value on one line"),
            "METRICS_TOKEN_FILE": (self.secretFile(b"\xff\xfe" * 10), "is not UTF-8 text"),
            "REDIS_PASSWORD_FILE": (self.secretFile(b"p" * (64 * 1024 + 1)), "is larger than"),
        }
        if os.geteuid() != 0:
            cases["REDIS_URL_FILE"] = (unreadable, "cannot be read: Permission denied")
        errors = self.errorsFor({name: path for name, (path, _) in cases.items()})
        for name, (path, message) in cases.items():
            self.assertTrue(
                any(e.startswith(f"{name} {path!r} {message}") for e in errors), (name, errors)
            )
        self.assertFalse(any("secret" in e for e in errors), errors)
        # A missing JWT_SECRET_FILE is not also "JWT_SECRET is required".
        self.assertFalse(any("JWT_SECRET is required" in e for e in errors), errors)

    def test_developmentGeneratesNothingForAFile(self) -> None:
        """
        In development a secret given by file is not generated, and the
        file's value is used.
        """
        varDir = self.mktemp()
        path = self.secretFile(b"f" * 32 + b"\n")
        raw, notices = ensureDevelopmentSecrets(
            {"VAR_DIR": varDir, "JWT_SECRET_FILE": path}, lambda: "g" * 43
        )
        self.assertNotIn("JWT_SECRET", raw)
        self.assertFalse(os.path.exists(os.path.join(varDir, "jwt_secret")))
        self.assertEqual(len(notices), 1)  # DCR_AUTH_TOKEN only
        self.assertEqual(loadConfig(raw).jwtSecret, "f" * 32)

    def test_readEnvironment(self) -> None:
        """
        C{<NAME>_FILE} is read from the environment and from C{.env}.
        """
        envFile = self.mktemp()
        with open(envFile, "w") as f:
            f.write("MCP_API_KEY_FILE=/run/secrets/key\n")
        merged = readEnvironment({"JWT_SECRET_FILE": "/run/secrets/jwt"}, envFile)
        self.assertEqual(merged["JWT_SECRET_FILE"], "/run/secrets/jwt")
        self.assertEqual(merged["MCP_API_KEY_FILE"], "/run/secrets/key")


class MetadataDocumentConfigTests(SynchronousTestCase):
    def test_defaultsAndValues(self) -> None:
        """
        CIMD is on by default with its bounds; every C{CIMD_*} variable is
        read into the configuration (host entries lower-cased).
        """
        config = loadConfig(valid())
        self.assertEqual((config.cimd, config.cimdAllowedHosts, config.cimdDeniedHosts,
                          config.cimdCacheMinSeconds, config.cimdCacheMaxSeconds,
                          config.cimdStaleIfError, config.cimdFetchTimeout),
                         (True, (), (), 60, 86400, 3600, 5.0))
        config = loadConfig(valid(
            CIMD="off", CIMD_ALLOWED_HOSTS="App.Example.com, *.tools.example.org",
            CIMD_DENIED_HOSTS="evil.example.", CIMD_CACHE_MIN_SECONDS="0",
            CIMD_CACHE_MAX_SECONDS="600", CIMD_STALE_IF_ERROR="0", CIMD_FETCH_TIMEOUT="2.5",
        ))
        self.assertEqual((config.cimd, config.cimdAllowedHosts, config.cimdDeniedHosts,
                          config.cimdCacheMinSeconds, config.cimdCacheMaxSeconds,
                          config.cimdStaleIfError, config.cimdFetchTimeout),
                         (False, ("app.example.com", "*.tools.example.org"), ("evil.example",),
                          0, 600, 0, 2.5))

    def test_errorsListed(self) -> None:
        """
        Bad C{CIMD_*} values are all reported at once.
        """
        with self.assertRaises(ConfigError) as cm:
            loadConfig(valid(CIMD="maybe", CIMD_ALLOWED_HOSTS="https://app.example.com/",
                             CIMD_DENIED_HOSTS="a..b", CIMD_CACHE_MIN_SECONDS="700",
                             CIMD_CACHE_MAX_SECONDS="600", CIMD_STALE_IF_ERROR="-1",
                             CIMD_FETCH_TIMEOUT="100"))
        errors = "\n".join(cm.exception.errors)
        for expected in ("CIMD must be on or off", "CIMD_ALLOWED_HOSTS entry",
                         "CIMD_DENIED_HOSTS entry", "must not exceed CIMD_CACHE_MAX_SECONDS",
                         "CIMD_STALE_IF_ERROR must be", "CIMD_FETCH_TIMEOUT must be at most 60"):
            self.assertIn(expected, errors)


class UnsafeCombinationTests(SynchronousTestCase):
    """
    Production refuses combinations that are unsafe by accident, with every
    other error at once.
    """

    def errorsFor(self, raw: dict) -> list:
        with self.assertRaises(ConfigError) as cm:
            loadConfig(raw)
        return cm.exception.errors

    def test_autoWithOpenRegistration(self) -> None:
        """
        C{AUTHORIZE_MODE=auto} with C{DCR_OPEN=true} and no initial access
        token is refused in production, and says why.
        """
        errors = self.errorsFor(dict(PROD, AUTHORIZE_MODE="auto", DCR_OPEN="true", PORT="0",
                                     CIMD="off"))
        self.assertEqual(len(errors), 2, errors)
        self.assertTrue(errors[0].startswith("PORT"))
        self.assertIn("AUTHORIZE_MODE=auto with open registration", errors[1])
        self.assertIn("anyone could register a client and get tokens", errors[1])
        # Each half alone, a token, or development: accepted.
        loadConfig(dict(PROD, AUTHORIZE_MODE="auto", CIMD="off"))
        loadConfig(dict(PROD, DCR_OPEN="true"))
        loadConfig(dict(PROD, AUTHORIZE_MODE="auto", DCR_OPEN="true", DCR_AUTH_TOKEN="i" * 32,
                        CIMD="off"))
        loadConfig(valid(AUTHORIZE_MODE="auto", DCR_OPEN="true"))

    def test_autoWithMetadataDocuments(self) -> None:
        """
        C{AUTHORIZE_MODE=auto} with Client ID Metadata Documents on (the
        default) is refused in production, and says why: anyone can publish
        a document. With C{CIMD=off}, or in development, it is accepted.
        """
        errors = self.errorsFor(dict(PROD, AUTHORIZE_MODE="auto", PORT="0"))
        self.assertEqual(len(errors), 2, errors)
        self.assertIn("AUTHORIZE_MODE=auto with Client ID Metadata Documents", errors[1])
        self.assertIn("Set CIMD=off", errors[1])
        self.assertFalse(loadConfig(dict(PROD, AUTHORIZE_MODE="auto", CIMD="off")).cimd)
        self.assertTrue(loadConfig(dict(PROD, AUTHORIZE_MODE="consent")).cimd)
        self.assertTrue(loadConfig(valid(AUTHORIZE_MODE="auto")).cimd)

    def test_sentinelWithTLSRefused(self) -> None:
        """
        Sentinel with a C{rediss://} URL is refused: it would talk to the
        Sentinels and the master without TLS, password in clear.
        """
        errors = self.errorsFor(valid(
            STORE="redis", REDIS_URL="rediss://:pw@redis.example.com:6380/0",
            REDIS_SENTINELS="10.0.0.1:26379", REDIS_SENTINEL_MASTER="mymaster", PORT="0",
        ))
        self.assertEqual(len(errors), 2, errors)
        self.assertIn("REDIS_SENTINELS with a rediss:// REDIS_URL is not supported", errors[1])
        self.assertIn("password in clear", errors[1])
        self.assertNotIn("pw", errors[1].replace("password", ""))
        loadConfig(valid(STORE="redis", REDIS_URL="redis://:pw@x:6379/0",
                         REDIS_SENTINELS="10.0.0.1:26379", REDIS_SENTINEL_MASTER="mymaster"))
        loadConfig(valid(STORE="redis", REDIS_URL="rediss://:pw@x:6380/0"))


class ServiceNowRedirectTests(SynchronousTestCase):
    """
    Registration accepts the redirect URI of C{SERVICENOW_INSTANCE} only;
    every instance's is an explicit opt-in.
    """

    SNOW = "https://acme.service-now.com/oauth_redirect.do"
    OTHER = "https://dev123456.service-now.com/oauth_redirect.do"

    def accepts(self, config: Config, uri: str) -> bool:
        from mcpsvc.oauth.redirects import matchesPattern

        return any(matchesPattern(uri, p) for p in config.redirectPatterns)

    def test_pinnedToTheInstance(self) -> None:
        """
        With C{SERVICENOW_INSTANCE} (development or production), that
        instance is accepted and no other.
        """
        for raw in (PROD, valid()):
            config = loadConfig(dict(raw, SERVICENOW_INSTANCE="https://acme.service-now.com"))
            self.assertFalse(config.servicenowAnyInstance)
            self.assertTrue(self.accepts(config, self.SNOW))
            self.assertFalse(self.accepts(config, self.OTHER))
            self.assertTrue(self.accepts(config, "http://127.0.0.1:8765/callback"))

    def test_productionWithoutInstance(self) -> None:
        """
        Production without C{SERVICENOW_INSTANCE} accepts no ServiceNow
        instance, and says so when registration is enabled.
        """
        config = loadConfig(dict(PROD, DCR_AUTH_TOKEN="i" * 32))
        self.assertFalse(self.accepts(config, self.OTHER))
        self.assertIn(
            "SERVICENOW_INSTANCE is not set: no ServiceNow instance can register dynamically",
            config.notices,
        )

    def test_developmentWithoutInstance(self) -> None:
        """
        Development without C{SERVICENOW_INSTANCE} accepts every instance,
        with a notice.
        """
        config = loadConfig(valid())
        self.assertTrue(config.servicenowAnyInstance)
        self.assertTrue(self.accepts(config, self.OTHER))
        self.assertTrue(any("every ServiceNow instance" in n for n in config.notices))
        config = loadConfig(valid(SERVICENOW_ANY_INSTANCE="off"))
        self.assertFalse(self.accepts(config, self.OTHER))

    def test_explicitOptIn(self) -> None:
        """
        C{SERVICENOW_ANY_INSTANCE=on} accepts every instance, in production
        too, with a notice.
        """
        config = loadConfig(dict(PROD, SERVICENOW_ANY_INSTANCE="on",
                                 SERVICENOW_INSTANCE="https://acme.service-now.com"))
        self.assertTrue(self.accepts(config, self.OTHER))
        self.assertTrue(any("SERVICENOW_ANY_INSTANCE=on" in n for n in config.notices))
        errors = LoadConfigTests.errorsFor(self, **dict(PROD, SERVICENOW_ANY_INSTANCE="maybe"))
        self.assertIn("SERVICENOW_ANY_INSTANCE must be on or off (got 'maybe')", errors)

    def test_wildcardPatternNeedsOptIn(self) -> None:
        """
        The old default wildcard (an C{.env} copied from an older
        C{.env.example}) is refused, saying what to do, unless every
        instance is allowed on purpose.
        """
        old = "https://*.service-now.com/oauth_redirect.do,http://localhost/*"
        for raw in (PROD, valid(SERVICENOW_INSTANCE="https://acme.service-now.com")):
            errors = LoadConfigTests.errorsFor(self, **dict(raw, DCR_REDIRECT_PATTERNS=old))
            self.assertEqual(len(errors), 1, errors)
            self.assertIn("lets every ServiceNow instance register", errors[0])
            self.assertIn("SERVICENOW_ANY_INSTANCE=on", errors[0])
        self.assertIn(
            "lets every ServiceNow instance register",
            LoadConfigTests.errorsFor(self, **dict(
                PROD, DCR_REDIRECT_PATTERNS="https://*.servicenowservices.com/*"))[0],
        )
        config = loadConfig(dict(PROD, DCR_REDIRECT_PATTERNS=old, SERVICENOW_ANY_INSTANCE="on"))
        self.assertTrue(self.accepts(config, self.OTHER))
        # A pinned ServiceNow host in the list is fine.
        loadConfig(dict(PROD, DCR_REDIRECT_PATTERNS="https://acme.service-now.com/oauth_redirect.do"))


class KeyPublishDelayTests(SynchronousTestCase):
    def test_delay(self) -> None:
        """
        C{JWT_KEY_PUBLISH_DELAY} is 600 seconds by default, 0 to 30 days.
        """
        self.assertEqual(loadConfig(valid()).jwtKeyPublishDelay, 600)
        self.assertEqual(loadConfig(valid(JWT_KEY_PUBLISH_DELAY="0")).jwtKeyPublishDelay, 0)
        for bad in ("-1", "x", str(31 * 86400)):
            with self.assertRaises(ConfigError) as cm:
                loadConfig(valid(JWT_KEY_PUBLISH_DELAY=bad))
            self.assertTrue(cm.exception.errors[0].startswith("JWT_KEY_PUBLISH_DELAY"))


class MoreUnsafeCombinationTests(SynchronousTestCase):
    def errorsFor(self, raw: dict) -> list:
        with self.assertRaises(ConfigError) as cm:
            loadConfig(raw)
        return cm.exception.errors

    def test_trustEveryProxy(self) -> None:
        """
        Production refuses a C{TRUSTED_PROXIES} entry that trusts every
        address (anyone could pick their own address and escape the
        per-address limits); development accepts it.
        """
        for everything in ("0.0.0.0/0", "::/0"):
            errors = self.errorsFor(dict(PROD, TRUSTED_PROXIES="127.0.0.1," + everything))
            self.assertEqual(len(errors), 1, errors)
            self.assertIn("trusts every address", errors[0])
            loadConfig(valid(TRUSTED_PROXIES=everything))
        loadConfig(dict(PROD, TRUSTED_PROXIES="127.0.0.1,10.0.0.0/8"))

    def test_redisPasswordInClear(self) -> None:
        """
        In production, a Redis password sent over plain TCP to another
        machine is said at start-up; TLS or loopback says nothing.
        """
        def notices(**raw: str) -> list:
            return [n for n in loadConfig(dict(PROD, STORE="redis", **raw)).notices
                    if "travels in clear" in n]

        self.assertEqual(len(notices(REDIS_URL="redis://:pw@redis.internal:6379/0")), 1)
        self.assertEqual(len(notices(REDIS_HOST="10.0.0.5", REDIS_PASSWORD="pw")), 1)
        self.assertEqual(len(notices(REDIS_SENTINELS="10.0.0.1:26379", REDIS_SENTINEL_MASTER="m",
                                     REDIS_PASSWORD="pw")), 1)
        self.assertEqual(notices(REDIS_URL="rediss://:pw@redis.internal:6380/0"), [])
        self.assertEqual(notices(REDIS_URL="redis://:pw@127.0.0.1:6379/0"), [])
        self.assertEqual(notices(REDIS_URL="redis://redis.internal:6379/0"), [])
