"""
Tests for L{mcpsvc.tap}, the plugin, and the admin CLI's configuration
commands.
"""

from __future__ import annotations

import io
import os

from twisted.application.service import IServiceMaker
from twisted.plugin import IPlugin, getPlugins
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from mcpsvc import cli, logs
from mcpsvc.tap import Options, configFromOptions

SECRET = "y" * 32


class OptionsTests(SynchronousTestCase):
    def test_defaults(self) -> None:
        """
        With no arguments every override is unset and no listener is given.
        """
        options = Options()
        options.parseOptions([])
        self.assertEqual(
            dict(options),
            {
                "env-file": ".env", "port": None, "host": None, "server-url": None,
                "environment": None, "store": None, "store-path": None, "redis-url": None,
                "deployment-type": None, "log-level": None, "log-format": None,
                "auth-mode": None, "authorize-mode": None, "sessions": None,
                "tool-packs": None, "shutdown-timeout": None, "var-dir": None,
                "workers": 1, "listen": [], "metrics-listen": [],
            },
        )

    def test_listenRepeats(self) -> None:
        """
        C{--listen} may be given several times.
        """
        options = Options()
        options.parseOptions(["--listen", "tcp:1", "--listen", "ssl:2:privateKey=k:certKey=c"])
        self.assertEqual(options["listen"], ["tcp:1", "ssl:2:privateKey=k:certKey=c"])

    def test_optionsOverrideEnvironment(self) -> None:
        """
        Options beat the environment, which beats C{.env}.
        """
        envFile = self.mktemp()
        with open(envFile, "w") as f:
            f.write(f"JWT_SECRET={SECRET}\nPORT=4000\nSTORE=redis\nHOST=127.0.0.2\n")
        options = Options()
        options.parseOptions(["--env-file", envFile, "--port", "5000"])
        config = configFromOptions(options, {"PORT": "4500", "STORE": "memory", "VAR_DIR": self.mktemp()})
        self.assertEqual((config.port, config.store, config.host), (5000, "memory", "127.0.0.2"))
        self.assertEqual(config.listen, ("tcp:5000:interface=127.0.0.2",))

    def test_unknownOption(self) -> None:
        """
        An unknown option is a usage error.
        """
        self.assertRaises(usage.UsageError, Options().parseOptions, ["--nope"])


class PluginTests(SynchronousTestCase):
    def test_discovered(self) -> None:
        """
        twistd finds the C{mcpsvc} plugin, and it provides L{IServiceMaker}.
        """
        plugins = [p for p in getPlugins(IServiceMaker) if p.tapname == "mcpsvc"]
        self.assertEqual(len(plugins), 1)
        verifyObject(IServiceMaker, plugins[0])
        verifyObject(IPlugin, plugins[0])
        self.assertIsInstance(plugins[0].options(), Options)

    def test_pluginFileInert(self) -> None:
        """
        The plugin file imports nothing but L{ServiceMaker}.
        """
        here = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        with open(os.path.join(here, "twisted", "plugins", "mcpsvc_plugin.py")) as f:
            imports = [line for line in f if line.startswith(("import ", "from "))]
        self.assertEqual(imports, ["from twisted.application.service import ServiceMaker\n"])


class CLITests(SynchronousTestCase):
    def runCLI(self, *argv: str, **environ: str) -> tuple:
        out, err = io.StringIO(), io.StringIO()
        saved = dict(os.environ)
        os.environ.clear()
        os.environ.update(environ)
        try:
            status = cli.run(list(argv), out, err)
        finally:
            os.environ.clear()
            os.environ.update(saved)
        return status, out.getvalue(), err.getvalue()

    def test_genSecret(self) -> None:
        """
        C{gen-secret} prints a fresh URL-safe secret of 32 bytes.
        """
        status, out, _ = self.runCLI("gen-secret")
        status2, out2, _ = self.runCLI("gen-secret")
        self.assertEqual(status, 0)
        self.assertRegex(out.strip(), r"^[A-Za-z0-9_-]{43}$")
        self.assertNotEqual(out, out2)

    def test_checkConfigValid(self) -> None:
        """
        C{check-config} prints a summary without secrets and exits 0.
        """
        status, out, err = self.runCLI(
            "check-config", "--env-file", self.mktemp(), JWT_SECRET=SECRET, STORE="memory",
            VAR_DIR=self.mktemp(),
        )
        self.assertEqual(status, 0, err)
        self.assertIn("Configuration is valid.", out)
        self.assertNotIn(SECRET, out)
        self.assertIn("STORE=memory", err)

    def test_checkConfigInvalid(self) -> None:
        """
        C{check-config} lists every error and exits 1.
        """
        status, out, err = self.runCLI(
            "check-config", "--env-file", self.mktemp(), ENVIRONMENT="production",
            PORT="99999", STORE="nope",
        )
        self.assertEqual(status, 1)
        for expected in ("PORT", "STORE", "JWT_SECRET", "SERVER_URL"):
            self.assertIn(expected, err)

    def test_noCommand(self) -> None:
        """
        No command is a usage error (status 2).
        """
        status, _, err = self.runCLI()
        self.assertEqual(status, 2)
        self.assertIn("a command is required", err)

    def test_warnsOnlyForGeneratedSecret(self) -> None:
        """
        C{check-config} warns about a multi-server deployment only when the
        signing secret is a generated development one, wherever a configured
        one came from (environment or C{.env}).
        """
        envFile = self.mktemp()
        with open(envFile, "w") as f:
            f.write(f"JWT_SECRET={SECRET}\n")
        base = dict(STORE="redis", DEPLOYMENT_TYPE="multi-server", VAR_DIR=self.mktemp())
        _, _, err = self.runCLI("check-config", "--env-file", envFile, **base)
        self.assertNotIn("without a fixed signing key", err)
        _, _, err = self.runCLI("check-config", "--env-file", self.mktemp(), **base)
        self.assertIn("without a fixed signing key", err)

    def test_checkConfigSecretFiles(self) -> None:
        """
        C{check-config} reads secrets from C{<NAME>_FILE} like the server,
        shows none of them, and lists a bad file with the other errors.
        """
        secretPath = self.mktemp()
        with open(secretPath, "w") as f:
            f.write(SECRET + "\n")
        tokenPath = self.mktemp()
        with open(tokenPath, "w") as f:
            f.write("t" * 40 + "\n")
        status, out, err = self.runCLI(
            "check-config", "--env-file", self.mktemp(), JWT_SECRET_FILE=secretPath,
            DCR_AUTH_TOKEN_FILE=tokenPath, STORE="memory", VAR_DIR=self.mktemp(),
        )
        self.assertEqual(status, 0, err)
        self.assertNotIn(SECRET, out + err)
        self.assertIn('"jwtSecretLength": 32', out)
        self.assertIn('"dcrAuthTokenLength": 40', out)
        self.assertNotIn("JWT_SECRET was not set", err)
        missing = os.path.join(self.mktemp(), "absent")
        status, _, err = self.runCLI(
            "check-config", "--env-file", self.mktemp(), ENVIRONMENT="production",
            SERVER_URL="https://mcp.example.com", JWT_SECRET_FILE=missing,
            AUTHORIZE_MODE="auto", DCR_OPEN="true",
        )
        self.assertEqual(status, 1)
        self.assertIn(f"JWT_SECRET_FILE {missing!r} cannot be read", err)
        self.assertIn("AUTHORIZE_MODE=auto with open registration", err)


class LoggerChoiceTests(SynchronousTestCase):
    """
    C{twistd mcpsvc} picks its log observer from C{LOG_FORMAT} while
    twistd parses the command line.
    """

    def parse(self, argv: list, environ: dict) -> dict:
        from twisted.scripts.twistd import ServerOptions

        saved = {k: os.environ.get(k) for k in ("LOG_FORMAT", "LOG_LEVEL")}

        def restore() -> None:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v

        self.addCleanup(restore)
        for k in saved:
            os.environ.pop(k, None)
        os.environ.update(environ)
        config = ServerOptions()
        config.parseOptions(argv + ["mcpsvc", "--env-file", os.devnull])
        return config

    def test_json(self) -> None:
        config = self.parse(["-n"], {"LOG_FORMAT": "json"})
        self.assertIs(config["logger"], logs.jsonObserver)

    def test_textOnStandardOutput(self) -> None:
        """
        The default text format on standard output is twistd's format
        through mcpsvc's buffered, level-filtered observer.
        """
        config = self.parse(["-n"], {})
        self.assertIs(config["logger"], logs.textObserver)

    def test_textToLogfile(self) -> None:
        """
        With C{--logfile}, or daemonized, twistd keeps its own log file
        handling.
        """
        self.assertFalse(self.parse(["-n", "--logfile", "x.log"], {}).get("logger"))
        self.assertFalse(self.parse([], {}).get("logger"))

    def test_explicitLogger(self) -> None:
        config = self.parse(["-n", "--logger", "twisted.logger.jsonFileLogObserver"], {"LOG_FORMAT": "json"})
        from twisted.logger import jsonFileLogObserver

        self.assertIs(config["logger"], jsonFileLogObserver)
