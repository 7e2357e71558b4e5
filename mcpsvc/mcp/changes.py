# -*- test-case-name: mcpsvc.mcp.test.test_changes -*-
"""
Change notifications between the parts of one instance, and between
instances.

A L{Change} (the tool list changed...) is published on the L{ChangeBus}:
by a tool pack (C{ToolPackContext.toolsChanged()}, C{promptsChanged()}),
by C{SIGHUP}, or by C{mcpsvc tools reload}. The bus hands it to its sinks,
in order: the L{ToolSetReloader} rebuilds the tool registry (the tools,
or the prompts and other features), then the MCP endpoint tells its
listeners (C{subscriptions/listen} streams, handshake-era GET streams).

With C{STORE=redis} the bus also relays every change through a Redis
pub/sub channel (C{<REDIS_PREFIX>changes}), so that every instance sharing
the Redis reloads and notifies its own listeners. L{RedisChangeRelay} is a
service in the tree: it subscribes with its own connection (a subscribed
connection can do nothing else), reconnects with a capped back-off when
Redis drops (through Sentinel: to the master it names at each attempt),
and logs the loss and the recovery; a change published while Redis is down
reaches this instance's listeners only (and is logged). With SQLite or
memory there is one instance (or one per worker, each reloading on the
C{SIGHUP} the supervisor forwards), and the bus is local.

Task status changes travel the same way: every task record an instance
writes is a C{task} change (L{mcpsvc.mcp.subscriptions.taskChange}). On
the channel it is only a hint naming the task id, never its content: an
instance with a C{subscriptions/listen} stream following the task reads
it from the store (the source of truth, and of the owner check) and
notifies; the instance running the task reads it too, so that a
cancellation or an answer received elsewhere acts at once rather than at
its next poll. A hint lost while Redis is down is made up for by
C{tasks/get} and by the next change of the task.

Messages on the channel are JSON objects C{{"v": 1, "origin", "kind",
"uri"?, "task"?}}; a message this instance published (its C{origin}) is not
delivered twice, and anything malformed (over 4096 bytes, not strict JSON,
repeated members, odd types) is logged (200 characters of it) and dropped.
Whoever can publish on the channel can do no more than ask for reloads and
notifications, and a storm of them is coalesced (L{ChangeBus}: one per
second per kind of change).
"""

from __future__ import annotations

import json
import secrets
from typing import Any, Callable, Dict, List, Optional

from twisted.application.internet import ClientService, backoffPolicy
from twisted.application.service import MultiService
from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.internet.interfaces import IReactorTime, IStreamClientEndpoint
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from mcpsvc.mcp.subscriptions import Change
from mcpsvc.mcp.tasks import MAX_TASK_ID

__all__ = [
    "ChangeBus",
    "RedisChangeRelay",
    "ToolSetReloader",
    "SentinelMasterEndpoint",
    "buildChangeRelay",
    "CHANNEL_SUFFIX",
    "encodeChange",
    "decodeChange",
]

#: The channel is C{REDIS_PREFIX} followed by this.
CHANNEL_SUFFIX = "changes"
#: The kinds a message may carry.
_KINDS = frozenset({"tools", "prompts", "resources", "resource", "task"})
#: The longest message accepted from the channel.
_MAX_MESSAGE = 4096

log = Logger()


def encodeChange(change: Change, origin: str) -> str:
    """
    The channel message announcing C{change}, from instance C{origin}.
    """
    body: dict = {"v": 1, "origin": origin, "kind": change.kind}
    if change.uri is not None:
        body["uri"] = change.uri
    if change.taskID is not None:
        body["task"] = change.taskID
    return json.dumps(body, separators=(",", ":"))


def decodeChange(message: Any) -> Optional[tuple]:
    """
    C{(origin, change)} from a channel message, or C{None} when it is not
    one of ours (malformed, another version, an unknown kind).
    """
    if isinstance(message, bytes):
        if len(message) > _MAX_MESSAGE:
            return None
        try:
            message = message.decode("utf-8")
        except UnicodeDecodeError:
            return None
    if not isinstance(message, str) or len(message) > _MAX_MESSAGE:
        return None
    try:
        body = json.loads(message, parse_constant=_noConstant, object_pairs_hook=_unique)
    except (ValueError, RecursionError):
        return None
    if not isinstance(body, dict) or body.get("v") != 1 or isinstance(body.get("v"), bool):
        return None
    origin, kind, uri = body.get("origin"), body.get("kind"), body.get("uri")
    if not isinstance(origin, str) or not isinstance(kind, str) or kind not in _KINDS:
        return None
    if not 0 < len(origin) <= 64 or not origin.isprintable():
        return None  # logged: bounded, no forged lines
    if kind == "resource" and not (isinstance(uri, str) and 0 < len(uri) <= 2048
                                   and uri.isprintable()):
        return None
    if kind == "task":
        taskID = body.get("task")
        if not isinstance(taskID, str) or not 0 < len(taskID) <= MAX_TASK_ID:
            return None
        return origin, Change("task", taskID=taskID)
    return origin, Change(kind, uri if kind == "resource" else None)


def _noConstant(name: str) -> Any:
    raise ValueError(name)


def _unique(pairs: List[Any]) -> dict:
    out = dict(pairs)
    if len(out) != len(pairs):
        raise ValueError("repeated member")
    return out


class ChangeBus:
    """
    Delivers changes to this instance's sinks, and relays them to the other
    instances when a relay is attached.

    With a C{clock}, a storm of the same change (reloads from the channel,
    a pack in a loop, signals) is coalesced: a change is delivered at once,
    and the same change again within C{minInterval} seconds is delivered
    once, when the interval ends. Task changes are not coalesced: each one
    is a task write, bounded by the writes themselves.

    @ivar origin: this instance's id on the channel (random per process).
    """

    log = Logger()

    def __init__(self, origin: Optional[str] = None, *, clock: Optional[IReactorTime] = None,
                 minInterval: float = 1.0) -> None:
        self.origin = origin if origin is not None else secrets.token_hex(8)
        self._sinks: List[Callable[[Change], Any]] = []
        self.relay: Optional["RedisChangeRelay"] = None
        self.clock = clock
        self.minInterval = minInterval
        self._lastDelivered: Dict[Change, float] = {}
        self._pending: Dict[Change, Any] = {}

    def subscribe(self, sink: Callable[[Change], Any]) -> None:
        """
        Call C{sink(change)} for every change, after the sinks already
        subscribed.
        """
        self._sinks.append(sink)

    def publish(self, change: Change) -> None:
        """
        Deliver C{change} here, and to the other instances through the
        relay (if any). Never raises.
        """
        if change.kind == "task":
            self.log.debug("Change published: task {taskID}", kind=change.kind,
                           taskID=(change.taskID or "")[:12])
        else:
            self.log.info("Change published: {kind}", kind=change.kind, uri=change.uri)
        self._deliver(change)
        if self.relay is not None:
            self.relay.publish(encodeChange(change, self.origin))

    def toolsChanged(self) -> None:
        """
        The tool set changed (what packs call, through
        C{ToolPackContext.toolsChanged}).
        """
        self.publish(Change("tools"))

    def promptsChanged(self) -> None:
        """
        A pack's prompts changed (what packs call, through
        C{ToolPackContext.promptsChanged}).
        """
        self.publish(Change("prompts"))

    def received(self, message: Any) -> None:
        """
        A message from the channel: deliver the change it carries, unless
        it is one of ours or not a change at all.
        """
        decoded = decodeChange(message)
        if decoded is None:
            quoted = message[:200] if isinstance(message, (str, bytes, bytearray)) else message
            self.log.warn(
                "Dropped a malformed message on the change channel: {message}",
                message=repr(quoted)[:200],
            )
            return
        origin, change = decoded
        if origin == self.origin:
            return
        if change.kind == "task":
            self.log.debug("Change received from instance {origin}: task {taskID}",
                           origin=origin, kind=change.kind, taskID=(change.taskID or "")[:12])
        else:
            self.log.info("Change received from instance {origin}: {kind}",
                          origin=origin, kind=change.kind, uri=change.uri)
        self._deliver(change)

    def _deliver(self, change: Change) -> None:
        clock = self.clock
        if clock is None or not change.coalescible:
            self._deliverNow(change)
            return
        if change in self._pending:
            return
        now = clock.seconds()
        last = self._lastDelivered.get(change)
        if last is not None and now - last < self.minInterval:
            self._pending[change] = clock.callLater(last + self.minInterval - now,
                                                    self._deliverPending, change)
            return
        self._lastDelivered = {c: t for c, t in self._lastDelivered.items()
                               if now - t < self.minInterval}
        self._lastDelivered[change] = now
        self._deliverNow(change)

    def _deliverPending(self, change: Change) -> None:
        del self._pending[change]
        assert self.clock is not None
        self._lastDelivered[change] = self.clock.seconds()
        self._deliverNow(change)

    def _deliverNow(self, change: Change) -> None:
        for sink in self._sinks:
            try:
                d = maybeDeferred(sink, change)
            except Exception:  # pragma: no cover - maybeDeferred catches
                continue
            d.addErrback(self._sinkFailed, sink)

    def _sinkFailed(self, failure: Failure, sink: Any) -> None:
        self.log.failure("Delivering a change to {sink} failed", failure, sink=repr(sink)[:100])


class ToolSetReloader:
    """
    On a C{tools} change, rebuilds the tool registry from the enabled packs
    (C{registry.rebuild}, set by C{buildToolRegistry}) and swaps the new
    tool set in; on a C{prompts} change, swaps the new features (prompts,
    resources, completions) in. A pack whose new tools or features are
    invalid leaves the current ones in place (logged).
    """

    log = Logger()

    def __init__(self, registry: Any) -> None:
        self.registry = registry
        self._rebuilding = False

    def __call__(self, change: Change) -> None:
        if change.kind not in ("tools", "prompts"):
            return
        rebuild = getattr(self.registry, "rebuild", None)
        if rebuild is None:
            return
        if self._rebuilding:
            # A pack called toolsChanged() from tools(context): the rebuild
            # under way already reads its new state.
            self.log.warn("A tool pack signalled a change while the packs were being rebuilt: "
                          "ignored (call toolsChanged() outside tools(context))")
            return
        before = set(self.registry.names)
        self._rebuilding = True
        try:
            fresh = rebuild()
            if change.kind == "prompts":
                self.registry.features = fresh.features
                self.log.info("Tool pack features reloaded: {count} prompt(s)",
                              count=len(fresh.features.prompts))
                return
            self.registry.replaceTools(fresh)
        except Exception as e:
            self.log.error(
                "Reloading the tool packs failed; the current tools stay: {why}", why=str(e)[:500]
            )
            return
        finally:
            self._rebuilding = False
        after = set(self.registry.names)
        self.log.info(
            "Tool packs reloaded: {count} tool(s), added {added}, removed {removed}",
            count=len(after), added=sorted(after - before), removed=sorted(before - after),
        )


class _Subscriber:
    """
    Builds the subscriber protocol (txredisapi's C{SubscriberProtocol},
    imported late: txredisapi installs the reactor).
    """

    @staticmethod
    def protocolClass() -> Any:
        import txredisapi

        class Subscriber(txredisapi.SubscriberProtocol):  # type: ignore[misc]
            relay: "RedisChangeRelay"

            def connectionMade(self) -> None:
                # Not RedisProtocol.connectionMade: its AUTH failure path
                # calls factory.stopTrying(); ClientService retries instead.
                # A server that never answers is given up on (and retried).
                d = Deferred.fromCoroutine(self._setUp())
                d.addTimeout(self.relay.timeout, self.relay.clock)
                d.addErrback(self._setUpFailed)

            async def _setUp(self) -> None:
                self._ready = True
                self.connected = 1
                relay = self.relay
                if relay.password is not None:
                    args = ["AUTH"] + ([relay.username] if relay.username else []) + [relay.password]
                    reply = await self.execute_command(*args)
                    if isinstance(reply, Exception):
                        raise reply
                await self.subscribe(relay.channel)
                relay._subscribed(self)

            def _setUpFailed(self, failure: Failure) -> None:
                self.relay._setUpFailed(failure)
                if self.transport is not None:
                    self.transport.loseConnection()

            def messageReceived(self, pattern: Any, channel: Any, message: Any) -> None:
                self.relay.bus.received(message)

            def connectionLost(self, why: Any) -> None:
                self.relay._lost(self)
                super().connectionLost(why)

        return Subscriber


class _SubscriberFactory(Factory):
    noisy = False

    def __init__(self, relay: "RedisChangeRelay") -> None:
        self.relay = relay
        self.protocolType = _Subscriber.protocolClass()

    def buildProtocol(self, addr: Any) -> Any:
        protocol = self.protocolType(replyTimeout=None, convertNumbers=False)
        protocol.relay = self.relay
        protocol.factory = self
        return protocol


@implementer(IStreamClientEndpoint)
class _ReportingEndpoint:
    """
    An endpoint whose failures the relay logs (once per outage).
    """

    def __init__(self, endpoint: Any, relay: "RedisChangeRelay") -> None:
        self.endpoint = endpoint
        self.relay = relay

    def connect(self, factory: Any) -> "Deferred[Any]":
        d: Deferred[Any] = self.endpoint.connect(factory)

        def failed(failure: Failure) -> Failure:
            self.relay._setUpFailed(failure)
            return failure

        return d.addErrback(failed)


class RedisChangeRelay(MultiService):
    """
    The Redis pub/sub side of the L{ChangeBus}: a subscription kept open
    (reconnecting) on the channel, and publishing through the store's
    connection pool.

    @param bus: the bus (its C{relay} is set to this service).
    @param endpoint: where Redis listens (a client endpoint).
    @param channel: the channel name.
    @param publish: C{publish(channel, message) -> Deferred}; the store's
        connection (C{handler.publish}).
    @param clock: for the reconnection back-off.
    @param timeout: seconds a publish may take before it is abandoned.
    """

    log = Logger()

    def __init__(
        self, bus: ChangeBus, *, endpoint: Any, channel: str,
        publish: Callable[[str, str], "Deferred[Any]"], clock: IReactorTime,
        password: Optional[str] = None, username: Optional[str] = None,
        timeout: float = 5.0, maxDelay: float = 2.0,
    ) -> None:
        super().__init__()
        self.bus = bus
        self.channel = channel
        self.password = password
        self.username = username
        self.clock = clock
        self.timeout = timeout
        self._publish = publish
        self.endpoint = endpoint
        self._connection: Optional[Any] = None
        self._everConnected = False
        self._failedLogged = False
        self._publishFailing = False
        self.client = ClientService(
            _ReportingEndpoint(endpoint, self), _SubscriberFactory(self),
            retryPolicy=backoffPolicy(initialDelay=0.2, maxDelay=maxDelay),
            clock=clock,
        )
        self.client.setServiceParent(self)
        bus.relay = self

    @property
    def subscribed(self) -> bool:
        return self._connection is not None

    def _subscribed(self, connection: Any) -> None:
        self._connection = connection
        self._failedLogged = False
        if self._everConnected:
            self.log.info("Re-subscribed to the Redis change channel {channel}", channel=self.channel)
        else:
            self.log.info("Subscribed to the Redis change channel {channel}", channel=self.channel)
        self._everConnected = True

    def _setUpFailed(self, failure: Failure) -> None:
        if not self._failedLogged:
            self._failedLogged = True
            self.log.error(
                "Cannot subscribe to the Redis change channel {channel}: {why}; retrying",
                channel=self.channel, why=failure.getErrorMessage() or failure.type.__name__,
            )

    def _lost(self, connection: Any) -> None:
        if self._connection is connection:
            self._connection = None
            if self.running:
                self.log.warn(
                    "Lost the Redis change channel {channel}; changes from other instances are "
                    "missed until it is back (reconnecting)", channel=self.channel,
                )

    def publish(self, message: str) -> None:
        """
        Publish C{message}; a failure is logged (once until a publish
        succeeds again: every task write publishes), never raised.
        """
        try:
            d = self._publish(self.channel, message)
        except Exception as e:
            self._publishFailed(str(e))
            return
        d.addTimeout(self.timeout, self.clock)
        d.addCallbacks(self._published,
                       lambda f: self._publishFailed(f.getErrorMessage() or f.type.__name__))

    def _published(self, ignored: Any) -> None:
        if self._publishFailing:
            self._publishFailing = False
            self.log.info("Relaying changes to the other instances again")

    def _publishFailed(self, why: str) -> None:
        if self._publishFailing:
            self.log.debug("Could not relay a change to the other instances: {why}", why=why)
            return
        self._publishFailing = True
        self.log.warn(
            "Could not relay a change to the other instances: {why} (logged once until "
            "relaying works again)", why=why,
        )

    def stopService(self) -> "Deferred[None]":
        d = super().stopService()
        return d if d is not None else succeed(None)


@implementer(IStreamClientEndpoint)
class SentinelMasterEndpoint:
    """
    Connects to the master that Sentinel names at the time of each attempt,
    so that the relay's subscription follows a failover.

    @param discover: C{() -> Deferred[(host, port)]}.
    """

    def __init__(self, reactor: Any, discover: Callable[[], "Deferred[Any]"],
                 timeout: float = 5.0) -> None:
        self.reactor = reactor
        self.discover = discover
        self.timeout = timeout

    def connect(self, factory: Any) -> "Deferred[Any]":
        from twisted.internet.endpoints import HostnameEndpoint

        async def connect() -> Any:
            host, port = await self.discover()
            endpoint = HostnameEndpoint(self.reactor, host, port, timeout=max(1, int(self.timeout)))
            return await endpoint.connect(factory)

        return Deferred.fromCoroutine(connect())


def buildChangeRelay(
    config: Any, bus: ChangeBus, storeService: Any, *, reactor: Any
) -> Optional[RedisChangeRelay]:
    """
    The L{RedisChangeRelay} for C{config} (C{None} unless C{STORE=redis}).
    Performs no I/O. Publishing goes through the store's connection pool
    (C{storeService.redisConnection}); the subscription has its own
    connection to the same server.

    With Redis Sentinel the subscription connects to the master Sentinel
    names at each attempt (L{SentinelMasterEndpoint}), so it follows a
    failover.
    """
    if config.store != "redis":
        return None
    from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS

    from mcpsvc.storage.redis import parseRedisURL

    connection = storeService.redisConnection
    host, port = config.redisHost, config.redisPort
    username, password, tls = None, config.redisPassword, False
    if config.redisURL:
        parsed = parseRedisURL(config.redisURL)
        host, port, username = parsed["host"], parsed["port"], parsed["username"]
        password, tls = parsed["password"], parsed["tls"]
    endpoint: Any
    if config.redisSentinels:
        endpoint = SentinelMasterEndpoint(
            reactor, lambda: connection.handler.discoverMaster(config.redisSentinelMaster),
            config.storeTimeout,
        )
    else:
        endpoint = HostnameEndpoint(reactor, host, port, timeout=int(config.storeTimeout) or 5)
        if tls:
            from twisted.internet.ssl import optionsForClientTLS

            endpoint = wrapClientTLS(optionsForClientTLS(host), endpoint)

    def publish(channel: str, message: str) -> "Deferred[Any]":
        return connection.handler.publish(channel, message)

    relay = RedisChangeRelay(
        bus, endpoint=endpoint, channel=config.redisPrefix + CHANNEL_SUFFIX, publish=publish,
        clock=reactor, password=password, username=username, timeout=config.storeTimeout,
    )
    relay.setName("changes")
    return relay
