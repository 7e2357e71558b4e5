"""
Tests for L{mcpsvc.tools.buildToolRegistry} and plugin discovery.
"""

import os
import sys
import textwrap

from twisted.internet.task import Clock
from twisted.plugin import IPlugin
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

import mcpsvc.plugins
from mcpsvc.config import Config
from mcpsvc.tools import IToolProvider, buildToolRegistry, discoverProviders, enabledPacks

DROP_IN = textwrap.dedent(
    '''
    from twisted.plugin import IPlugin
    from zope.interface import implementer

    from mcpsvc.tools.interfaces import IToolProvider, Tool


    @implementer(IPlugin, IToolProvider)
    class WeatherPack:
        packName = "weather"

        def tools(self, context):
            return [
                Tool(
                    name="weather_now",
                    description="Always sunny.",
                    inputSchema={"type": "object"},
                    call=lambda arguments, context: "sunny",
                )
            ]


    weather = WeatherPack()
    '''
)


class BuildTests(SynchronousTestCase):
    def test_builtinPlugins(self) -> None:
        """
        The built-in packs are plugins providing L{IToolProvider}.
        """
        providers = {p.packName: p for p in discoverProviders()}
        for name in ("core", "files", "llm", "conformance"):
            self.assertIn(name, providers)
            verifyObject(IToolProvider, providers[name])
            self.assertTrue(IPlugin.providedBy(providers[name]))

    def test_enabledPacks(self) -> None:
        """
        TOOL_PACKS lists packs; FILES_ROOT and LLM_URL enable theirs.
        """
        self.assertEqual(enabledPacks(Config()), {"core"})
        self.assertEqual(
            enabledPacks(Config(toolPacks=(), filesRoot="/srv", llmURL="http://x")),
            {"files", "llm"},
        )

    def test_defaultIsCore(self) -> None:
        """
        The default configuration exposes the core tools only.
        """
        registry = buildToolRegistry(Config(), clock=Clock())
        self.assertEqual(registry.names, ["calculate", "echo_message", "get_timestamp"])
        self.assertEqual(registry.defaultTimeout, 30.0)

    def test_conformanceOnlyWhenListed(self) -> None:
        """
        The conformance fixtures appear only when the pack is listed.
        """
        registry = buildToolRegistry(Config(toolPacks=("conformance",)), clock=Clock())
        self.assertIn("test_simple_text", registry.names)
        self.assertNotIn("echo_message", registry.names)

    def test_unknownPackWarns(self) -> None:
        """
        An enabled pack that no plugin provides is skipped with a warning.
        """
        registry = buildToolRegistry(Config(toolPacks=("core", "nope")), clock=Clock())
        self.assertEqual(len(registry), 3)

    def test_dropIn(self) -> None:
        """
        A module dropped into the plugin package adds its pack's tools, with
        no other change, once the pack is enabled.
        """
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        with open(os.path.join(directory, "dropin_weather.py"), "w") as f:
            f.write(DROP_IN)
        mcpsvc.plugins.__path__.append(directory)
        self.addCleanup(mcpsvc.plugins.__path__.remove, directory)
        self.addCleanup(sys.modules.pop, "mcpsvc.plugins.dropin_weather", None)

        without = buildToolRegistry(Config(), clock=Clock())
        self.assertNotIn("weather_now", without.names)
        registry = buildToolRegistry(Config(toolPacks=("core", "weather")), clock=Clock())
        self.assertIn("weather_now", registry.names)
        tools, _ = registry.listTools()
        self.assertIn(
            {"name": "weather_now", "description": "Always sunny.", "inputSchema": {"type": "object"}},
            tools,
        )
