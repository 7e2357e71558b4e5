"""
Tests for L{mcpsvc.mcp.changes}: the change bus, the tool set reload, and
the Redis relay between instances (against a real C{redis-server}).
"""

from __future__ import annotations

import json
import tempfile
from typing import Any, List, Mapping

from twisted.internet import reactor
from twisted.internet.defer import succeed
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.task import Clock, deferLater
from twisted.logger import capturedLogs, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase, TestCase

from mcpsvc.config import Config
from mcpsvc.mcp.changes import (
    ChangeBus,
    RedisChangeRelay,
    ToolSetReloader,
    buildChangeRelay,
    decodeChange,
    encodeChange,
)
from mcpsvc.mcp.protocol import ProtocolError
from mcpsvc.mcp.subscriptions import Change
from mcpsvc.storage.redis import RedisConnection, redisConnector
from mcpsvc.testing.redis import RedisServer
from mcpsvc.tools import buildToolRegistry
from mcpsvc.tools.interfaces import Tool, ToolContext, ToolPackContext
from mcpsvc.tools.registry import ToolRegistry

_SCHEMA = {"type": "object"}


def _tool(name: str) -> Tool:
    return Tool(name=name, description=f"The {name} tool.", inputSchema=_SCHEMA,
                call=lambda arguments, context: name)


class EncodingTests(SynchronousTestCase):
    def test_roundTrip(self) -> None:
        """
        A change and its origin survive the channel.
        """
        for change in (Change("tools"), Change("resource", "file:///x")):
            self.assertEqual(decodeChange(encodeChange(change, "me")), ("me", change))
        self.assertEqual(decodeChange(encodeChange(Change("tools"), "me").encode()),
                         ("me", Change("tools")))

    def test_taskIsAHint(self) -> None:
        """
        A task change crosses the channel as its id only: the record it
        carried here stays here.
        """
        from mcpsvc.mcp.subscriptions import taskChange
        from mcpsvc.storage.test.base import task

        change = taskChange(task(taskID="t-1", payload={"result": {"secret": 1}}))
        message = encodeChange(change, "me")
        self.assertEqual(json.loads(message), {"v": 1, "origin": "me", "kind": "task", "task": "t-1"})
        origin, decoded = decodeChange(message)
        self.assertEqual((origin, decoded.kind, decoded.taskID, decoded.record),
                         ("me", "task", "t-1", None))

    def test_malformed(self) -> None:
        """
        Anything that is not a version 1 change message is C{None}.
        """
        for message in (b"\xff", "not json", "[]", '{"v":2,"origin":"a","kind":"tools"}',
                        '{"v":1,"origin":1,"kind":"tools"}', '{"v":1,"origin":"a","kind":"x"}',
                        '{"v":1,"origin":"a","kind":"resource"}', "x" * 5000, 42,
                        '{"v":1,"origin":"a","kind":"task"}',
                        '{"v":1,"origin":"a","kind":"task","task":""}',
                        '{"v":1,"origin":"a","kind":"task","task":"%s"}' % ("x" * 129),
                        # unhashable or odd kinds, origins and uris
                        '{"v":1,"origin":"a","kind":[]}', '{"v":1,"origin":"a","kind":{}}',
                        '{"v":1,"origin":[],"kind":"tools"}',
                        '{"v":1,"origin":"a","kind":"resource","uri":["x"]}',
                        '{"v":[1],"origin":"a","kind":"tools"}',
                        # deep nesting, constants, duplicate members
                        "[" * 2000 + "]" * 2000, '{"v":' * 900 + "1" + "}" * 900,
                        '{"v":1,"origin":"a","kind":"tools","x":NaN}',
                        '{"v":1,"origin":"a","kind":"tools","kind":"resources"}',
                        b"\x00" * 4096, bytearray(b"{}"), None,
                        # logged fields: bounded and printable
                        '{"v":1,"origin":"' + "o" * 65 + '","kind":"tools"}',
                        '{"v":1,"origin":"a\\nforged log line","kind":"tools"}',
                        '{"v":1,"origin":"a","kind":"resource","uri":"x\\u001b[2J"}',
                        '{"v":1,"origin":"a","kind":"resource","uri":"' + "u" * 2049 + '"}'):
            self.assertIsNone(decodeChange(message), message)

    def test_garbageNeverRaises(self) -> None:
        """
        Whatever a process with access to the Redis publishes on the
        channel, receiving it never raises and logs no traceback; the log
        line quotes at most 200 characters of it.
        """
        bus = ChangeBus(origin="here")
        seen: List[Change] = []
        bus.subscribe(seen.append)
        with capturedLogs() as events:
            for message in ('{"v":1,"origin":"a","kind":[]}', "[" * 3000 + "]" * 3000,
                            b"x" * 10_000_000, ["list"], {"kind": "tools"}):
                bus.received(message)
        self.assertEqual(seen, [])
        self.assertEqual(self.flushLoggedErrors(), [])
        self.assertTrue(all(len(e.get("message", "")) <= 200 for e in events))


class BusTests(SynchronousTestCase):
    def test_publishDeliversInOrder(self) -> None:
        """
        A published change reaches every sink, in the order they
        subscribed, and the relay gets the encoded message.
        """
        bus = ChangeBus(origin="here")
        seen: List[Any] = []
        bus.subscribe(lambda change: seen.append(("first", change)))
        bus.subscribe(lambda change: seen.append(("second", change)))
        relayed: List[str] = []

        class Relay:
            def publish(self, message: str) -> None:
                relayed.append(message)

        bus.relay = Relay()  # type: ignore[assignment]
        bus.toolsChanged()
        self.assertEqual(seen, [("first", Change("tools")), ("second", Change("tools"))])
        self.assertEqual([decodeChange(m) for m in relayed], [("here", Change("tools"))])

    def test_failingSinkLogged(self) -> None:
        """
        A sink that raises is logged; the others still get the change.
        """
        bus = ChangeBus()
        seen: List[Change] = []

        def broken(change: Change) -> None:
            raise ZeroDivisionError()

        bus.subscribe(broken)
        bus.subscribe(seen.append)
        bus.publish(Change("tools"))
        self.assertEqual(seen, [Change("tools")])
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)

    def test_received(self) -> None:
        """
        A message from another instance is delivered; our own is not
        (it was delivered when published); a malformed one is dropped.
        """
        bus = ChangeBus(origin="here")
        seen: List[Change] = []
        bus.subscribe(seen.append)
        bus.received(encodeChange(Change("tools"), "elsewhere").encode())
        bus.received(encodeChange(Change("tools"), "here"))
        bus.received(b"garbage")
        self.assertEqual(seen, [Change("tools")])


class ThrottleTests(SynchronousTestCase):
    def test_stormCoalesced(self) -> None:
        """
        With a clock, a change is delivered at once, and the same change
        again within C{minInterval} seconds is delivered once, at the end
        of the interval, however many times it came (a storm of reloads
        from the channel, a pack, SIGHUP); other changes are not held up.
        """
        clock = Clock()
        bus = ChangeBus(origin="here", clock=clock, minInterval=1.0)
        seen: List[Change] = []
        bus.subscribe(seen.append)
        for _ in range(500):
            bus.received(encodeChange(Change("tools"), "elsewhere"))
            bus.toolsChanged()
        self.assertEqual(seen, [Change("tools")])
        bus.received(encodeChange(Change("resource", "file:///a"), "elsewhere"))
        self.assertEqual(seen, [Change("tools"), Change("resource", "file:///a")])
        clock.advance(1.0)
        self.assertEqual(seen, [Change("tools"), Change("resource", "file:///a"),
                                Change("tools")])
        clock.advance(5.0)
        self.assertEqual(len(seen), 3)
        bus.toolsChanged()
        self.assertEqual(len(seen), 4)


    def test_taskChangesNotCoalesced(self) -> None:
        """
        Task changes are never held back: this instance's own writes of a
        task and another instance's hint about it, close together, are all
        delivered at once (a hint held back or merged with a local record
        would leave the running work waiting for an answer it was sent).
        """
        from mcpsvc.mcp.subscriptions import taskChange
        from mcpsvc.storage.test.base import task

        clock = Clock()
        bus = ChangeBus(origin="here", clock=clock, minInterval=1.0)
        seen: List[Change] = []
        bus.subscribe(seen.append)
        bus.publish(taskChange(task(taskID="t-1")))
        bus.publish(taskChange(task(taskID="t-1")))
        bus.received(encodeChange(Change("task", taskID="t-1"), "elsewhere"))
        self.assertEqual(len(seen), 3)
        self.assertEqual([c.record is None for c in seen], [False, False, True])

class ReloadTests(SynchronousTestCase):
    def test_replaceTools(self) -> None:
        """
        L{ToolRegistry.replaceTools} swaps the tool set (listing, calls,
        cursors of the old listing refused) and says whether it changed.
        """
        registry = ToolRegistry([_tool("a"), _tool("b")], clock=Clock(), pageSize=1)
        _, cursor = registry.listTools()
        self.assertFalse(registry.replaceTools(ToolRegistry([_tool("a"), _tool("b")],
                                                            clock=Clock())))
        self.assertTrue(registry.replaceTools(ToolRegistry([_tool("c")], clock=Clock())))
        self.assertEqual(registry.names, ["c"])
        self.assertIsNone(registry.get("a"))
        self.assertRaises(ProtocolError, registry.listTools, cursor)

    def test_reloaderRebuilds(self) -> None:
        """
        On a tools change the registry is rebuilt from the packs; other
        kinds leave it alone; an invalid new tool set keeps the current
        one and is logged.
        """
        current = {"tools": [_tool("a")]}
        registry = ToolRegistry(current["tools"], clock=Clock())
        registry.rebuild = lambda: ToolRegistry(current["tools"], clock=Clock())
        reloader = ToolSetReloader(registry)
        current["tools"] = [_tool("a"), _tool("b")]
        reloader(Change("prompts"))
        self.assertEqual(registry.names, ["a"])
        reloader(Change("tools"))
        self.assertEqual(registry.names, ["a", "b"])
        current["tools"] = [_tool("a"), _tool("a")]
        events: List[Mapping[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        reloader(Change("tools"))
        self.assertEqual(registry.names, ["a", "b"])
        self.assertTrue(any("defined twice" in str(e.get("why")) for e in events))

    def test_packSignalsChange(self) -> None:
        """
        A pack calls C{context.toolsChanged()}; with the bus and the
        reloader wired as the service does, the registry lists the new tool
        and a listener hears of it. The pack's C{state} survives the
        rebuild.
        """
        from zope.interface import provider

        from mcpsvc.tools.interfaces import IToolProvider

        contexts: List[ToolPackContext] = []

        @provider(IToolProvider)
        class Pack:
            packName = "dyn"

            @staticmethod
            def tools(context: ToolPackContext) -> List[Tool]:
                contexts.append(context)
                return [_tool(n) for n in context.state.get("names", ["a"])]

        bus = ChangeBus()
        registry = buildToolRegistry(
            Config(toolPacks=("dyn",)), clock=Clock(), providers=[Pack],
            toolsChanged=bus.toolsChanged,
        )
        heard: List[Change] = []
        bus.subscribe(ToolSetReloader(registry))
        bus.subscribe(heard.append)
        self.assertEqual(registry.names, ["a"])
        contexts[0].state["names"] = ["a", "z"]
        contexts[0].toolsChanged()
        self.assertEqual(registry.names, ["a", "z"])
        self.assertEqual(heard, [Change("tools")])
        self.assertIs(contexts[1].state, contexts[0].state)

    def test_conformanceTrigger(self) -> None:
        """
        The conformance pack's C{test_trigger_tool_change} adds, then
        removes, C{test_dynamic_tool}.
        """
        from mcpsvc.plugins.mcpsvc_tools import conformance

        bus = ChangeBus()
        registry = buildToolRegistry(
            Config(toolPacks=("conformance",)), clock=Clock(), providers=[conformance],
            toolsChanged=bus.toolsChanged, runInThread=lambda f, *a, **k: succeed(f(*a, **k)),
        )
        bus.subscribe(ToolSetReloader(registry))
        self.assertNotIn("test_dynamic_tool", registry.names)
        trigger = registry.get("test_trigger_tool_change")
        assert trigger is not None
        context = ToolContext(clock=Clock(), subject="s", clientID="c")
        self.assertEqual(trigger.call({}, context), "test_dynamic_tool added")
        self.assertIn("test_dynamic_tool", registry.names)
        self.assertEqual(trigger.call({}, context), "test_dynamic_tool removed")
        self.assertNotIn("test_dynamic_tool", registry.names)

    def test_conformancePromptTrigger(self) -> None:
        """
        The conformance pack's C{test_trigger_prompt_change} calls
        C{context.promptsChanged()}: listeners hear a C{prompts} change and
        the registry's prompts gain, then lose, C{test_dynamic_prompt}; the
        tools stay.
        """
        from mcpsvc.plugins.mcpsvc_tools import conformance

        bus = ChangeBus()
        registry = buildToolRegistry(
            Config(toolPacks=("conformance",)), clock=Clock(), providers=[conformance],
            toolsChanged=bus.toolsChanged, promptsChanged=bus.promptsChanged,
            runInThread=lambda f, *a, **k: succeed(f(*a, **k)),
        )
        heard: List[Change] = []
        bus.subscribe(ToolSetReloader(registry))
        bus.subscribe(heard.append)
        tools = registry.names
        self.assertNotIn("test_dynamic_prompt", registry.features.prompts)
        trigger = registry.get("test_trigger_prompt_change")
        assert trigger is not None
        context = ToolContext(clock=Clock(), subject="s", clientID="c")
        self.assertEqual(trigger.call({}, context), "test_dynamic_prompt added")
        self.assertIn("test_dynamic_prompt", registry.features.prompts)
        self.assertEqual(heard, [Change("prompts")])
        self.assertEqual(trigger.call({}, context), "test_dynamic_prompt removed")
        self.assertNotIn("test_dynamic_prompt", registry.features.prompts)
        self.assertEqual(registry.names, tools)


class BuildRelayTests(SynchronousTestCase):
    def test_onlyWithRedis(self) -> None:
        """
        The relay exists with C{STORE=redis} (with Sentinel too, following
        the master), on the channel C{<REDIS_PREFIX>changes}.
        """
        from mcpsvc.mcp.changes import SentinelMasterEndpoint

        self.assertIsNone(buildChangeRelay(Config(store="memory"), ChangeBus(), None,
                                           reactor=Clock()))

        class StoreService:
            redisConnection = None

        relay = buildChangeRelay(Config(store="redis", redisPrefix="p:"), ChangeBus(),
                                 StoreService(), reactor=reactor)
        assert relay is not None
        self.assertEqual((relay.channel, relay.name), ("p:changes", "changes"))
        relay = buildChangeRelay(
            Config(store="redis", redisSentinels=(("127.0.0.1", 26379),),
                   redisSentinelMaster="m"), ChangeBus(), StoreService(), reactor=reactor)
        assert relay is not None
        self.assertIsInstance(relay.endpoint, SentinelMasterEndpoint)


class RelayPublishTests(SynchronousTestCase):
    def test_failuresLoggedOnce(self) -> None:
        """
        Publishing failures are logged once (a warning), until a publish
        succeeds again (logged), then once more at the next failure.
        """
        from twisted.internet.defer import fail
        from twisted.logger import capturedLogs

        outcomes: List[Any] = []

        def publish(channel: str, message: str) -> Any:
            outcome = outcomes.pop(0)
            if isinstance(outcome, Exception):
                return fail(outcome)
            return succeed(outcome)

        relay = RedisChangeRelay(ChangeBus(), endpoint=None, channel="c", publish=publish,
                                 clock=Clock())
        outcomes += [ConnectionError("down"), ConnectionError("down"), 1, ConnectionError("again")]
        with capturedLogs() as events:
            for _ in range(4):
                relay.publish("m")
        texts = [(e["log_level"].name, e["log_format"].split(":")[0]) for e in events]
        self.assertEqual(texts, [
            ("warn", "Could not relay a change to the other instances"),
            ("debug", "Could not relay a change to the other instances"),
            ("info", "Relaying changes to the other instances again"),
            ("warn", "Could not relay a change to the other instances"),
        ])


def relayInstance(
    case: TestCase, name: str, connection: RedisConnection, endpoint: Any,
) -> "tuple[ChangeBus, RedisChangeRelay, List[Change]]":
    """
    One instance's change bus and its relay, subscribed through
    C{endpoint} and publishing through C{connection} (opened here), on the
    channel C{test:changes}, stopped in C{case}'s cleanup; with the changes
    the bus saw.
    """
    connection.open()
    case.addCleanup(connection.close)
    bus = ChangeBus(origin=name)
    relay = RedisChangeRelay(
        bus, endpoint=endpoint, channel="test:changes",
        publish=lambda channel, message: connection.handler.publish(channel, message),
        clock=reactor, maxDelay=0.5,
    )
    relay.startService()
    case.addCleanup(relay.stopService)
    seen: List[Change] = []
    bus.subscribe(seen.append)
    return bus, relay, seen


class RedisRelayTests(TestCase):
    """
    Two relays (two instances) on one real Redis.
    """

    timeout = 60

    def setUp(self) -> None:
        self.server = RedisServer(tempfile.mkdtemp(prefix="mcpsvc-relay-")).start()
        self.addCleanup(self.server.stop)

    def instance(self, name: str) -> "tuple[ChangeBus, RedisChangeRelay, List[Change]]":
        connection = RedisConnection(redisConnector(url=self.server.url, maxRetryDelay=0.5))
        return relayInstance(self, name, connection,
                             TCP4ClientEndpoint(reactor, "127.0.0.1", self.server.port))

    async def until(self, condition: Any, seconds: float = 10.0) -> None:
        for _ in range(int(seconds / 0.05)):
            if condition():
                return
            await deferLater(reactor, 0.05, lambda: None)
        self.fail("timed out")

    async def test_acrossInstances(self) -> None:
        """
        A change published on one instance reaches the other once (and the
        publisher once, locally).
        """
        a, relayA, seenA = self.instance("a")
        b, relayB, seenB = self.instance("b")
        await self.until(lambda: relayA.subscribed and relayB.subscribed)
        a.toolsChanged()
        await self.until(lambda: seenB == [Change("tools")])
        await deferLater(reactor, 0.2, lambda: None)
        self.assertEqual(seenA, [Change("tools")])
        self.assertEqual(seenB, [Change("tools")])

    async def test_garbageOnTheChannel(self) -> None:
        """
        Whatever someone with access to the Redis publishes on the channel
        (oversize, binary, deeply nested, wrongly typed), the subscription
        drops it without a traceback and stays subscribed: the next real
        change arrives.
        """
        a, relayA, seenA = self.instance("a")
        await self.until(lambda: relayA.subscribed)
        connection = RedisConnection(redisConnector(url=self.server.url, maxRetryDelay=0.5))
        connection.open()
        self.addCleanup(connection.close)
        for message in ("x" * 1_000_000, b"\xff\xfe\x00" * 100, "[" * 3000 + "]" * 3000,
                        '{"v":1,"origin":"z","kind":[]}', '{"v":1,"origin":"z","kind":{"a":1}}',
                        "", "1e999"):
            await connection.handler.publish("test:changes", message)
        await connection.handler.publish("test:changes", encodeChange(Change("tools"), "z"))
        await self.until(lambda: seenA == [Change("tools")])
        self.assertTrue(relayA.subscribed)
        self.assertEqual(self.flushLoggedErrors(), [])

    async def test_redisDrops(self) -> None:
        """
        When Redis goes away the relay logs it and a publish fails quietly
        (the local listeners still hear); when Redis is back the relay
        subscribes again and changes flow.
        """
        events: List[Mapping[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        a, relayA, seenA = self.instance("a")
        b, relayB, seenB = self.instance("b")
        await self.until(lambda: relayA.subscribed and relayB.subscribed)
        self.server.kill()
        await self.until(lambda: not relayA.subscribed and not relayB.subscribed)
        a.toolsChanged()
        self.assertEqual(seenA, [Change("tools")])
        self.server.start()
        await self.until(lambda: relayA.subscribed and relayB.subscribed)
        # The store's connection pool that publishes reconnects each of its
        # connections on its own schedule, and a publish through one still
        # down is lost by design (the first half shows it): publish until
        # one gets through, a bounded number of times.
        for _ in range(40):
            a.toolsChanged()
            try:
                await self.until(lambda: bool(seenB), seconds=0.25)
                break
            except self.failureException:
                continue
        self.assertTrue(seenB)
        self.assertEqual(set(map(repr, seenB)), {repr(Change("tools"))})
        formats = [str(e.get("log_format")) for e in events]
        self.assertTrue(any(f.startswith("Lost the Redis change channel") for f in formats))
        self.assertTrue(any(f.startswith("Re-subscribed") for f in formats))
        self.flushLoggedErrors()

    async def test_password(self) -> None:
        """
        With a password, the subscription authenticates first.
        """
        self.server.stop()
        self.server = RedisServer(tempfile.mkdtemp(prefix="mcpsvc-relay-"),
                                  password="s3cret").start()
        self.addCleanup(self.server.stop)
        connection = RedisConnection(redisConnector(url=self.server.url))
        connection.open()
        self.addCleanup(connection.close)
        bus = ChangeBus(origin="a")
        relay = RedisChangeRelay(
            bus, endpoint=TCP4ClientEndpoint(reactor, "127.0.0.1", self.server.port),
            channel="test:changes", password="s3cret",
            publish=lambda channel, message: connection.handler.publish(channel, message),
            clock=reactor,
        )
        relay.startService()
        self.addCleanup(relay.stopService)
        seen: List[Change] = []
        bus.subscribe(seen.append)
        await self.until(lambda: relay.subscribed)
        self.server.command("PUBLISH", "test:changes", encodeChange(Change("tools"), "other"))
        await self.until(lambda: seen == [Change("tools")])


class DocumentedExampleTests(SynchronousTestCase):
    def test_catalogPack(self) -> None:
        """
        The example pack of C{docs/notifications.md} works as described:
        calling C{enable_report} adds C{report} to the listed tools, and a
        listener hears of it.
        """
        import os
        import re

        path = os.path.join(os.path.dirname(__file__), "..", "..", "..", "docs", "notifications.md")
        with open(path, encoding="utf-8") as f:
            [code] = re.findall(r"```python\n(.*?)```", f.read(), re.S)
        namespace: dict = {}
        exec(compile(code, "notifications.md", "exec"), namespace)
        bus = ChangeBus()
        registry = buildToolRegistry(
            Config(toolPacks=("catalog",)), clock=Clock(), providers=[namespace["CatalogPack"]],
            toolsChanged=bus.toolsChanged,
        )
        heard: List[Change] = []
        bus.subscribe(ToolSetReloader(registry))
        bus.subscribe(heard.append)
        self.assertEqual(registry.names, ["enable_report", "lookup"])
        enable = registry.get("enable_report")
        assert enable is not None
        self.assertEqual(enable.call({}, ToolContext(clock=Clock(), subject="s", clientID="c")),
                         "report enabled")
        self.assertEqual(registry.names, ["enable_report", "lookup", "report"])
        self.assertEqual(heard, [Change("tools")])


class ReentrantSignalTests(SynchronousTestCase):
    def test_signalDuringRebuild(self) -> None:
        """
        A pack that calls C{toolsChanged()} from C{tools(context)} does not
        start a rebuild inside the rebuild (which would never end): the
        reloader ignores it, with a warning; the registry is rebuilt once.
        """
        from zope.interface import provider

        from mcpsvc.tools.interfaces import IToolProvider

        @provider(IToolProvider)
        class Noisy:
            packName = "noisy"

            @staticmethod
            def tools(context: ToolPackContext) -> List[Tool]:
                if context.state.get("built"):
                    context.toolsChanged()
                context.state["built"] = True
                return [_tool("a")]

        bus = ChangeBus()
        registry = buildToolRegistry(Config(toolPacks=("noisy",)), clock=Clock(),
                                     providers=[Noisy], toolsChanged=bus.toolsChanged)
        heard: List[Change] = []
        rebuilds: List[Any] = []
        rebuild = registry.rebuild
        assert rebuild is not None
        registry.rebuild = lambda: rebuilds.append(1) or rebuild()  # type: ignore[func-returns-value]
        bus.subscribe(ToolSetReloader(registry))
        bus.subscribe(heard.append)
        events: List[Mapping[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        bus.toolsChanged()
        self.assertEqual((registry.names, len(rebuilds)), (["a"], 1))
        self.assertTrue(any("while the packs were being rebuilt" in str(e.get("log_format"))
                            for e in events))


class SentinelRelayTests(TestCase):
    """
    The relay through Sentinel (a real master and Sentinel).
    """

    timeout = 60

    async def test_throughSentinel(self) -> None:
        """
        With C{REDIS_SENTINELS}, the subscription connects to the master
        Sentinel names, and a change published through the store's
        Sentinel-managed pool reaches another instance.
        """
        import os

        from mcpsvc.mcp.changes import SentinelMasterEndpoint

        base = tempfile.mkdtemp(prefix="mcpsvc-relay-sentinel-")
        master = RedisServer(os.path.join(base, "master")).start()
        self.addCleanup(master.kill)
        sentinel = RedisServer(os.path.join(base, "sentinel"),
                               sentinelFor=("mymaster", master.port)).start()
        self.addCleanup(sentinel.kill)

        def instance(name: str) -> "tuple[ChangeBus, RedisChangeRelay, List[Change]]":
            connection = RedisConnection(redisConnector(
                sentinels=[(sentinel.host, sentinel.port)], sentinelMaster="mymaster"))
            return relayInstance(self, name, connection, SentinelMasterEndpoint(
                reactor, lambda: connection.handler.discoverMaster("mymaster")))

        a, relayA, seenA = instance("a")
        b, relayB, seenB = instance("b")
        for _ in range(200):
            if relayA.subscribed and relayB.subscribed:
                break
            await deferLater(reactor, 0.05, lambda: None)
        self.assertTrue(relayA.subscribed and relayB.subscribed)
        a.toolsChanged()
        for _ in range(200):
            if seenB:
                break
            await deferLater(reactor, 0.05, lambda: None)
        self.assertEqual(seenB, [Change("tools")])


class SilentServerTests(TestCase):
    timeout = 30

    async def test_setUpTimesOut(self) -> None:
        """
        A server that accepts the connection but never answers SUBSCRIBE
        is given up on after C{timeout}, logged, and tried again.
        """
        from twisted.internet.protocol import Factory, Protocol

        connections: List[Any] = []

        class Silent(Protocol):
            def connectionMade(self) -> None:
                connections.append(self)

        port = reactor.listenTCP(0, Factory.forProtocol(Silent), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        events: List[Mapping[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        bus = ChangeBus()
        relay = RedisChangeRelay(
            bus, endpoint=TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port),
            channel="c", publish=lambda channel, message: succeed(0), clock=reactor,
            timeout=0.2, maxDelay=0.2,
        )
        relay.startService()
        self.addCleanup(relay.stopService)
        for _ in range(200):
            if len(connections) >= 2:
                break
            await deferLater(reactor, 0.05, lambda: None)
        self.assertGreaterEqual(len(connections), 2)
        self.assertFalse(relay.subscribed)
        self.assertTrue(any(str(e.get("log_format", "")).startswith("Cannot subscribe")
                            for e in events))
