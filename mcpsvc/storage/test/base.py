# -*- test-case-name: mcpsvc.storage.test -*-
"""
The behavioural suite every L{IStore} backend must pass.

A backend's test class mixes L{StoreTestsMixin} into a trial test case and
supplies L{StoreTestsMixin.makeStore}. Test methods are coroutines:
  - with a L{twisted.trial.unittest.TestCase} they run on the reactor (real
    threads, real Redis);
  - with a L{SynchronousTestCase} (memory, SQLite with a synchronous
    C{runInThread}) each is wrapped so that it must complete without the
    reactor, through C{successResultOf}; a store answering asynchronously
    there fails the test.

Time is a L{Clock} at a realistic epoch (L{EPOCH}); expiry is exercised by
advancing it or by passing C{now}.
"""

from __future__ import annotations

import functools
import inspect
import json
from typing import Any, Callable, Coroutine, List, Type

from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface.verify import verifyObject

from mcpsvc.storage.hashing import hashSecret
from mcpsvc.storage.interfaces import (
    AlreadyUsed,
    ClientRecord,
    CodeMismatch,
    CodeRecord,
    Conflict,
    IStore,
    NoSuchClient,
    NoSuchCode,
    NoSuchFamily,
    NoSuchSession,
    NoSuchTask,
    RateDecision,
    RefreshFamily,
    RotationOutcome,
    RotationResult,
    SessionRecord,
    SweepReport,
    TaskRecord,
    TooManyTasks,
)

__all__ = [
    "EPOCH", "StoreTestsMixin", "SweepCountTestsMixin", "client", "code", "family", "session",
    "task",
]

EPOCH = 1_700_000_000.0


def client(clientID: str = "client-1", **kw: Any) -> ClientRecord:
    values: dict = dict(
        clientID=clientID,
        secretHash=hashSecret("secret-" + clientID),
        metadata={
            "client_name": "ServiceNow \u00e9t\u00e9",
            "redirect_uris": ["https://x.service-now.com/oauth_redirect.do"],
            "grant_types": ["authorization_code", "refresh_token"],
            "nested": {"a": [1, 2.5, None, True]},
        },
        createdAt=EPOCH,
    )
    values.update(kw)
    return ClientRecord(**values)


def code(codeHash: str = "sha256:code-1", expiresAt: float = EPOCH + 600, **kw: Any) -> CodeRecord:
    values: dict = dict(
        codeHash=codeHash,
        clientID="client-1",
        redirectURI="https://x.service-now.com/oauth_redirect.do",
        codeChallenge="E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM",
        codeChallengeMethod="S256",
        scope="mcp",
        resource="http://127.0.0.1:3000/mcp",
        subject="alice",
        familyID="fam-" + codeHash,
        expiresAt=expiresAt,
    )
    values.update(kw)
    return CodeRecord(**values)


def family(familyID: str = "fam-1", currentHash: str = "sha256:r0", **kw: Any) -> RefreshFamily:
    values: dict = dict(
        familyID=familyID,
        clientID="client-1",
        subject="alice",
        scope="mcp",
        resource="http://127.0.0.1:3000/mcp",
        currentHash=currentHash,
        createdAt=EPOCH,
        expiresAt=EPOCH + 86400,
        lastAccessJTI="jti-0",
        lastAccessExpiresAt=EPOCH + 3600,
    )
    values.update(kw)
    return RefreshFamily(**values)


def session(sessionID: str = "sess-1", expiresAt: float = EPOCH + 3600, **kw: Any) -> SessionRecord:
    values: dict = dict(
        sessionID=sessionID,
        subject="alice",
        clientID="client-1",
        protocolVersion="2025-06-18",
        createdAt=EPOCH,
        expiresAt=expiresAt,
        data={"clientInfo": {"name": "now-assist", "version": "1.0"}},
    )
    values.update(kw)
    return SessionRecord(**values)


def task(taskID: str = "task-1", expiresAt: float = EPOCH + 3600, **kw: Any) -> TaskRecord:
    values: dict = dict(
        taskID=taskID,
        subject="alice",
        clientID="client-1",
        method="tools/call",
        name="slow_compute",
        status="working",
        createdAt=EPOCH,
        updatedAt=EPOCH,
        expiresAt=expiresAt,
        pollInterval=1.0,
        payload={"keys": ["a"], "inputRequests": {"a": {"method": "elicitation/create",
                                                         "params": {"message": "\u00e9t\u00e9"}}}},
    )
    values.update(kw)
    return TaskRecord(**values)


def _synchronously(f: Callable[..., Coroutine[Any, Any, Any]]) -> Callable[..., None]:
    @functools.wraps(f)
    def run(self: SynchronousTestCase) -> None:
        self.successResultOf(Deferred.fromCoroutine(f(self)))

    return run


class StoreTestsMixin:
    """
    The conformance suite. Subclasses define L{makeStore}; C{self.clock} is
    set (at L{EPOCH}) before it is called.
    """

    clock: Clock
    store: Any

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if issubclass(cls, SynchronousTestCase) and not issubclass(cls, TestCase):
            for name in dir(cls):
                if name.startswith("test_"):
                    method = getattr(cls, name)
                    if inspect.iscoroutinefunction(method):
                        setattr(cls, name, _synchronously(method))

    def makeStore(self) -> Any:
        """
        Return the store under test (using C{self.clock}); register its
        cleanup with C{addCleanup}.
        """
        raise NotImplementedError()

    def setUp(self) -> Any:
        self.clock = Clock()
        self.clock.advance(EPOCH)
        self.store = self.makeStore()

    def now(self) -> float:
        return self.clock.seconds()

    async def assertFails(self, d: "Deferred[Any]", *types: Type[BaseException]) -> Any:
        """
        Await C{d}, which must fail with one of C{types}; return the exception.
        """
        try:
            result = await d
        except types as e:  # type: ignore[misc]
            return e
        self.fail(f"{d!r} succeeded with {result!r}, expected {types}")  # type: ignore[attr-defined]

    async def gather(self, *ds: "Deferred[Any]") -> List[Any]:
        """
        Wait for every Deferred; return their results or exceptions, in order.
        """
        results = await DeferredList(list(ds), consumeErrors=True)
        return [value if ok else value.value for ok, value in results]

    # ------------------------------------------------------------------ misc

    async def test_interface(self) -> None:
        self.assertTrue(verifyObject(IStore, self.store))
        self.assertIn(self.store.backendName, ("memory", "sqlite", "redis"))

    async def test_ping(self) -> None:
        self.assertIsNone(await self.store.ping())

    # --------------------------------------------------------------- clients

    async def test_createGetClient(self) -> None:
        record = client()
        self.assertIsNone(await self.store.createClient(record))
        got = await self.store.getClient("client-1")
        self.assertEqual(got, record)
        self.assertEqual(got.metadata["nested"], {"a": [1, 2.5, None, True]})

    async def test_publicClient(self) -> None:
        record = client("pub", secretHash=None, secretExpiresAt=EPOCH + 10.25)
        await self.store.createClient(record)
        self.assertEqual(await self.store.getClient("pub"), record)

    async def test_createClientConflict(self) -> None:
        await self.store.createClient(client())
        await self.assertFails(self.store.createClient(client(metadata={})), Conflict)
        self.assertNotEqual((await self.store.getClient("client-1")).metadata, {})

    async def test_getClientMissing(self) -> None:
        await self.assertFails(self.store.getClient("nope"), NoSuchClient)

    async def test_listClients(self) -> None:
        self.assertEqual(await self.store.listClients(), [])
        for clientID in ("b", "c", "a"):
            await self.store.createClient(client(clientID))
        self.assertEqual([c.clientID for c in await self.store.listClients()], ["a", "b", "c"])

    async def test_updateClient(self) -> None:
        await self.store.createClient(client())
        updated = client(metadata={"client_name": "renamed"}, secretHash=hashSecret("new"))
        self.assertIsNone(await self.store.updateClient(updated))
        self.assertEqual(await self.store.getClient("client-1"), updated)

    async def test_updateClientMissing(self) -> None:
        await self.assertFails(self.store.updateClient(client("ghost")), NoSuchClient)
        await self.assertFails(self.store.getClient("ghost"), NoSuchClient)

    async def test_deleteClient(self) -> None:
        await self.store.createClient(client("a"))
        await self.store.createClient(client("b"))
        self.assertIsNone(await self.store.deleteClient("a"))
        await self.assertFails(self.store.getClient("a"), NoSuchClient)
        self.assertEqual([c.clientID for c in await self.store.listClients()], ["b"])
        await self.assertFails(self.store.deleteClient("a"), NoSuchClient)

    async def test_metadataDocumentClient(self) -> None:
        """
        A client resolved from a Client ID Metadata Document: its id is the
        document's URL, its metadata carries the nested C{cimd} object and
        C{jwks}; it round-trips, is listed, and is replaced by a newer copy.
        """
        url = "https://app.example.com/oauth/client.json?v=1&x=%20"
        record = client(url, secretHash=None, metadata={
            "client_name": "Example",
            "redirect_uris": ["http://127.0.0.1:3000/callback"],
            "token_endpoint_auth_method": "private_key_jwt",
            "jwks": {"keys": [{"kty": "EC", "crv": "P-256", "x": "x", "y": "y"}]},
            "cimd": {"document_sha256": "sha256:" + "a" * 64, "fetched_at": EPOCH + 0.5,
                     "fresh_until": EPOCH + 60.5, "changed_at": EPOCH + 0.5,
                     "host": "app.example.com"},
        })
        await self.store.createClient(record)
        self.assertEqual(await self.store.getClient(url), record)
        self.assertIn(url, [c.clientID for c in await self.store.listClients()])
        newer = client(url, secretHash=None, metadata=dict(
            record.metadata, cimd=dict(record.metadata["cimd"], fresh_until=EPOCH + 120.25)))
        await self.store.updateClient(newer)
        self.assertEqual((await self.store.getClient(url)).metadata["cimd"]["fresh_until"],
                         EPOCH + 120.25)

    async def test_removeIdleDocumentClients(self) -> None:
        """
        Document clients whose document went stale before the bound and
        that hold no live refresh family are removed; one with a live
        family, one used since (its copy renewed), and registered clients
        (even stale-looking ones, even under a URL id) are kept; a revoked
        or expired family does not keep a client.
        """
        def documentClient(url: str, freshUntil: float) -> ClientRecord:
            return client(url, secretHash=None, metadata={
                "client_name": "doc", "redirect_uris": ["http://127.0.0.1/cb"],
                "token_endpoint_auth_method": "none",
                "cimd": {"document_sha256": "sha256:x", "fetched_at": freshUntil - 60,
                         "fresh_until": freshUntil, "changed_at": freshUntil - 60,
                         "host": "app.example.com"},
            })

        base = "https://app.example.com/"
        await self.store.createClient(documentClient(base + "idle", EPOCH - 100))
        await self.store.createClient(documentClient(base + "granted", EPOCH - 100))
        await self.store.createClient(documentClient(base + "revoked", EPOCH - 100))
        await self.store.createClient(documentClient(base + "expired", EPOCH - 100))
        await self.store.createClient(documentClient(base + "recent", EPOCH - 10))
        await self.store.createClient(client("registered"))
        await self.store.createClient(client(base + "preregistered", secretHash=None))
        await self.store.createFamily(family("f1", clientID=base + "granted"))
        await self.store.createFamily(family("f2", clientID=base + "revoked"))
        await self.store.revokeFamily("f2", self.now())
        await self.store.createFamily(family("f3", clientID=base + "expired",
                                             expiresAt=EPOCH + 10))
        self.clock.advance(20)
        self.assertEqual(await self.store.removeIdleDocumentClients(EPOCH - 50, self.now()), 3)
        self.assertEqual(
            [c.clientID for c in await self.store.listClients()],
            sorted([base + "granted", base + "recent", "registered", base + "preregistered"]))
        self.assertEqual(await self.store.removeIdleDocumentClients(EPOCH - 50, self.now()), 0)
        await self.assertFails(self.store.getClient(base + "idle"), NoSuchClient)
        # Gone: a later use creates the record again.
        await self.store.createClient(documentClient(base + "idle", self.now() + 60))
        self.assertEqual(await self.store.removeIdleDocumentClients(self.now(), self.now()), 1)
        self.assertEqual(len(await self.store.listClients()), 4, "recent went stale too")

    async def test_metadataDocumentSharedByInstances(self) -> None:
        """
        Two resolvers (two server instances) on one store: the document one
        of them fetched is the other's stored copy, used without fetching
        while fresh; a later fetch by either is seen by both.
        """
        from mcpsvc.oauth.cimd import CIMDSettings, ClientDocuments
        from mcpsvc.oauth.fetch import FetchedDocument

        url = "https://app.example.com/client.json"
        clock = Clock()
        clock.advance(EPOCH)

        class Fetcher:
            def __init__(self) -> None:
                self.fetched = 0
                self.name = "Example"

            def checkURL(self, url: str) -> Any:
                return None

            def fetchJSON(self, url: str, maxBytes: int = 0) -> Any:
                from twisted.internet.defer import succeed

                self.fetched += 1
                body = {"client_id": url, "client_name": self.name,
                        "redirect_uris": ["http://127.0.0.1/cb"],
                        "token_endpoint_auth_method": "none"}
                raw = json.dumps(body).encode()
                return succeed(FetchedDocument(url=url, json=body, body=raw,
                                               headers={"cache-control": "max-age=60"},
                                               fetchedAt=clock.seconds()))

        one, two = Fetcher(), Fetcher()
        settings = CIMDSettings(production=True, minLifetime=0)
        first = ClientDocuments(store=self.store, fetcher=one, clock=clock, settings=settings)
        second = ClientDocuments(store=self.store, fetcher=two, clock=clock, settings=settings)
        resolved = await first.resolve(url)
        self.assertEqual(await second.resolve(url), resolved)
        self.assertEqual((one.fetched, two.fetched), (1, 0))
        clock.advance(60)
        two.name = "Renamed"
        renamed = await second.resolve(url)
        self.assertEqual(renamed.metadata["client_name"], "Renamed")
        self.assertEqual(renamed.createdAt, EPOCH)
        self.assertEqual(await first.resolve(url), renamed)
        self.assertEqual((one.fetched, two.fetched), (1, 1))

    # ----------------------------------------------------------------- codes

    async def test_consumeCode(self) -> None:
        record = code()
        self.assertIsNone(await self.store.storeCode(record))
        got = await self.store.consumeCode(record.codeHash, self.now())
        self.assertEqual(got, record)
        self.assertFalse(got.used)

    async def test_consumeCodeTwice(self) -> None:
        record = code()
        await self.store.storeCode(record)
        await self.store.consumeCode(record.codeHash, self.now())
        e = await self.assertFails(self.store.consumeCode(record.codeHash, self.now() + 1), AlreadyUsed)
        self.assertEqual(e.record.familyID, record.familyID)
        self.assertEqual(e.record.codeHash, record.codeHash)
        self.assertTrue(e.record.used)

    async def test_consumeCodeMissing(self) -> None:
        await self.assertFails(self.store.consumeCode("sha256:nothing", self.now()), NoSuchCode)

    async def test_consumeCodeExpired(self) -> None:
        record = code(expiresAt=self.now() + 600)
        await self.store.storeCode(record)
        await self.assertFails(self.store.consumeCode(record.codeHash, self.now() + 600), NoSuchCode)
        self.clock.advance(601)
        await self.assertFails(self.store.consumeCode(record.codeHash, self.now()), NoSuchCode)

    async def test_usedCodeExpires(self) -> None:
        record = code()
        await self.store.storeCode(record)
        await self.store.consumeCode(record.codeHash, self.now())
        await self.assertFails(self.store.consumeCode(record.codeHash, record.expiresAt + 1), NoSuchCode)

    async def test_storeCodeConflict(self) -> None:
        await self.store.storeCode(code())
        await self.assertFails(self.store.storeCode(code(subject="mallory")), Conflict)
        self.assertEqual((await self.store.consumeCode(code().codeHash, self.now())).subject, "alice")

    async def test_consumeCodeConcurrently(self) -> None:
        """
        Of several consumers issued before any answer is awaited, exactly one
        gets the record; every other one gets L{AlreadyUsed}.
        """
        record = code()
        await self.store.storeCode(record)
        now = self.now()
        results = await self.gather(*[self.store.consumeCode(record.codeHash, now) for _ in range(5)])
        winners = [r for r in results if isinstance(r, CodeRecord)]
        losers = [r for r in results if isinstance(r, AlreadyUsed)]
        self.assertEqual((len(winners), len(losers)), (1, 4), results)
        self.assertEqual(winners[0], record)

    async def test_consumeCodeMismatchKeepsIt(self) -> None:
        """
        A code presented by another client, with another PKCE challenge or
        another redirect URI is refused and left unused: the client it was
        issued to can still redeem it.
        """
        record = code()
        await self.store.storeCode(record)
        now = self.now()
        for kw, field in (
            ({"clientID": "mallory"}, "client_id"),
            ({"clientID": "client-1", "codeChallenge": "A" * 43}, "code_verifier"),
            ({"clientID": "client-1", "redirectURI": "https://evil.example/cb"}, "redirect_uri"),
            ({"clientID": "client-1", "codeChallenge": record.codeChallenge[:-1]}, "code_verifier"),
        ):
            e = await self.assertFails(self.store.consumeCode(record.codeHash, now, **kw), CodeMismatch)
            self.assertEqual(e.field, field)
        got = await self.store.consumeCode(
            record.codeHash, now, clientID="client-1", codeChallenge=record.codeChallenge,
            redirectURI=record.redirectURI,
        )
        self.assertEqual(got, record)

    async def test_consumeUsedCodeMismatch(self) -> None:
        """
        A used code presented by another client or without its verifier is
        a mismatch, not a replay (no L{AlreadyUsed}: nothing gets revoked).
        """
        record = code()
        await self.store.storeCode(record)
        now = self.now()
        await self.store.consumeCode(record.codeHash, now, clientID="client-1")
        e = await self.assertFails(
            self.store.consumeCode(record.codeHash, now, clientID="mallory"), CodeMismatch
        )
        self.assertEqual(e.field, "client_id")
        e = await self.assertFails(
            self.store.consumeCode(record.codeHash, now, clientID="client-1", codeChallenge="x" * 43),
            CodeMismatch,
        )
        self.assertEqual(e.field, "code_verifier")
        replay = await self.assertFails(
            self.store.consumeCode(
                record.codeHash, now, clientID="client-1", codeChallenge=record.codeChallenge
            ),
            AlreadyUsed,
        )
        self.assertEqual(replay.record.familyID, record.familyID)

    async def test_consumeCodeConcurrentlyWithMismatches(self) -> None:
        """
        Concurrent consumers, some of them wrong: the wrong ones are
        refused, exactly one right one wins, the other right ones are
        replays.
        """
        record = code()
        await self.store.storeCode(record)
        now = self.now()
        right = dict(clientID="client-1", codeChallenge=record.codeChallenge)
        wrong = dict(clientID="client-1", codeChallenge="B" * 43)
        results = await self.gather(
            *[self.store.consumeCode(record.codeHash, now, **kw) for kw in (wrong, right) * 4]
        )
        self.assertEqual(
            sorted(type(r).__name__ for r in results),
            ["AlreadyUsed"] * 3 + ["CodeMismatch"] * 4 + ["CodeRecord"],
            results,
        )

    # -------------------------------------------------------------- families

    def rotate(self, presented: str, new: str, now: float, familyID: str = "fam-1",
               grace: float = 60, jti: str = "jti-x", issued: bool = False,
               replays: int = 1) -> "Deferred[RotationResult]":
        return self.store.rotateRefresh(
            familyID, presented, new, "sealed:" + new, now + grace, jti, now + 3600, now,
            issued=issued, maxGraceReplays=replays,
        )

    async def test_createGetFamily(self) -> None:
        record = family()
        self.assertIsNone(await self.store.createFamily(record))
        self.assertEqual(await self.store.getFamily("fam-1", self.now()), record)

    async def test_createFamilyConflict(self) -> None:
        await self.store.createFamily(family())
        await self.assertFails(self.store.createFamily(family(subject="mallory")), Conflict)

    async def test_getFamilyMissingOrExpired(self) -> None:
        await self.assertFails(self.store.getFamily("fam-x", self.now()), NoSuchFamily)
        await self.store.createFamily(family(expiresAt=self.now() + 100))
        await self.assertFails(self.store.getFamily("fam-1", self.now() + 100), NoSuchFamily)

    async def test_rotate(self) -> None:
        await self.store.createFamily(family())
        now = self.now() + 5
        result = await self.rotate("sha256:r0", "sha256:r1", now, jti="jti-1")
        self.assertEqual(result.outcome, RotationOutcome.ROTATED)
        f = result.family
        self.assertEqual(
            (f.currentHash, f.previousHash, f.sealedSuccessor, f.graceUntil, f.lastAccessJTI,
             f.lastAccessExpiresAt, f.rotations),
            ("sha256:r1", "sha256:r0", "sealed:sha256:r1", now + 60, "jti-1", now + 3600, 1),
        )
        self.assertEqual(await self.store.getFamily("fam-1", now), f)
        again = await self.rotate("sha256:r1", "sha256:r2", now + 1)
        self.assertEqual((again.outcome, again.family.rotations), (RotationOutcome.ROTATED, 2))

    async def test_rotateGrace(self) -> None:
        await self.store.createFamily(family())
        now = self.now()
        rotated = await self.rotate("sha256:r0", "sha256:r1", now)
        retry = await self.rotate("sha256:r0", "sha256:other", now + 59, jti="jti-retry")
        self.assertEqual(retry.outcome, RotationOutcome.GRACE)
        self.assertEqual(retry.family.currentHash, "sha256:r1")
        self.assertEqual(retry.family.sealedSuccessor, rotated.family.sealedSuccessor)
        self.assertEqual(retry.family.rotations, 1)
        self.assertEqual(retry.family.lastAccessJTI, "jti-retry")
        stored = await self.store.getFamily("fam-1", now + 59)
        self.assertEqual(stored, retry.family)

    async def test_rotateReusedAfterGrace(self) -> None:
        await self.store.createFamily(family())
        now = self.now()
        rotated = await self.rotate("sha256:r0", "sha256:r1", now, jti="jti-1")
        result = await self.rotate("sha256:r0", "sha256:r9", now + 60, jti="jti-9")
        self.assertEqual(result.outcome, RotationOutcome.REUSED)
        self.assertEqual(result.family, rotated.family)
        await self.assertFails(self.store.getFamily("fam-1", now + 60), NoSuchFamily)
        self.assertTrue(await self.store.isRevoked("jti-1", now + 60))
        self.assertFalse(await self.store.isRevoked("jti-9", now + 60))
        await self.assertFails(self.rotate("sha256:r1", "sha256:r2", now + 61), NoSuchFamily)

    async def test_rotateUnknownHashRevokesNothing(self) -> None:
        """
        A token the family never issued (the family id plus random bytes)
        changes nothing: the family stays live, its token still rotates.
        """
        await self.store.createFamily(family())
        now = self.now()
        await self.rotate("sha256:r0", "sha256:r1", now)
        before = await self.store.getFamily("fam-1", now)
        result = await self.rotate("sha256:forged", "sha256:r9", now + 1, jti="jti-9")
        self.assertEqual(result.outcome, RotationOutcome.UNKNOWN)
        self.assertEqual(result.family, before)
        self.assertEqual(await self.store.getFamily("fam-1", now + 1), before)
        self.assertFalse(await self.store.isAnyRevoked(["jti-x", "family:fam-1"], now + 1))
        # also after the grace window
        result = await self.rotate("sha256:forged", "sha256:r9", now + 100)
        self.assertEqual(result.outcome, RotationOutcome.UNKNOWN)
        self.assertEqual(
            (await self.rotate("sha256:r1", "sha256:r2", now + 101)).outcome, RotationOutcome.ROTATED
        )

    async def test_rotateIssuedOlderTokenRevokes(self) -> None:
        """
        A token the caller proves this family issued (C{issued}) that is
        neither current nor previous is reuse: the family is revoked.
        """
        await self.store.createFamily(family())
        result = await self.rotate("sha256:older", "sha256:r1", self.now(), issued=True)
        self.assertEqual(result.outcome, RotationOutcome.REUSED)
        self.assertEqual(result.family, family())
        self.assertTrue(await self.store.isRevoked("jti-0", self.now()))
        self.assertTrue(await self.store.isRevoked("family:fam-1", self.now()))
        self.assertIsNone(await self.store.revokeFamily("fam-1", self.now()))

    async def test_rotateCurrentIsNeverReuse(self) -> None:
        """
        C{issued} never turns the current token into reuse.
        """
        await self.store.createFamily(family())
        result = await self.rotate("sha256:r0", "sha256:r1", self.now(), issued=True)
        self.assertEqual(result.outcome, RotationOutcome.ROTATED)

    async def test_rotateGraceBounded(self) -> None:
        """
        The grace window answers at most C{maxGraceReplays} replays of the
        previous token; one more is reuse. A rotation starts the count
        again.
        """
        await self.store.createFamily(family())
        now = self.now()
        await self.rotate("sha256:r0", "sha256:r1", now)
        for i in range(3):
            result = await self.rotate("sha256:r0", "sha256:x", now + 1, replays=3)
            self.assertEqual((result.outcome, result.family.graceReplays),
                             (RotationOutcome.GRACE, i + 1))
        self.assertEqual((await self.store.getFamily("fam-1", now + 1)).graceReplays, 3)
        result = await self.rotate("sha256:r0", "sha256:x", now + 2, replays=3)
        self.assertEqual(result.outcome, RotationOutcome.REUSED)
        await self.assertFails(self.store.getFamily("fam-1", now + 2), NoSuchFamily)

    async def test_rotateResetsGraceReplays(self) -> None:
        await self.store.createFamily(family())
        now = self.now()
        await self.rotate("sha256:r0", "sha256:r1", now)
        self.assertEqual((await self.rotate("sha256:r0", "sha256:x", now)).outcome, RotationOutcome.GRACE)
        rotated = await self.rotate("sha256:r1", "sha256:r2", now + 1)
        self.assertEqual((rotated.outcome, rotated.family.graceReplays), (RotationOutcome.ROTATED, 0))
        self.assertEqual(
            (await self.rotate("sha256:r1", "sha256:x", now + 2)).outcome, RotationOutcome.GRACE
        )
        self.assertEqual(
            (await self.rotate("sha256:r1", "sha256:x", now + 2)).outcome, RotationOutcome.REUSED
        )

    async def test_rotateNoGraceReplays(self) -> None:
        """
        With C{maxGraceReplays=0} the previous token is reuse at once.
        """
        await self.store.createFamily(family())
        now = self.now()
        await self.rotate("sha256:r0", "sha256:r1", now)
        result = await self.rotate("sha256:r0", "sha256:x", now, replays=0)
        self.assertEqual(result.outcome, RotationOutcome.REUSED)

    async def test_rotateOlderTokenReused(self) -> None:
        """
        Only the immediately previous token has a grace window; an older
        one is reuse when the caller proves it was issued by the family
        (the store keeps only the current and previous hashes).
        """
        await self.store.createFamily(family())
        now = self.now()
        await self.rotate("sha256:r0", "sha256:r1", now)
        await self.rotate("sha256:r1", "sha256:r2", now + 1)
        result = await self.rotate("sha256:r0", "sha256:r3", now + 2)
        self.assertEqual(result.outcome, RotationOutcome.UNKNOWN)
        result = await self.rotate("sha256:r0", "sha256:r3", now + 2, issued=True)
        self.assertEqual(result.outcome, RotationOutcome.REUSED)

    async def test_rotateMissingFamily(self) -> None:
        await self.assertFails(self.rotate("sha256:r0", "sha256:r1", self.now()), NoSuchFamily)
        await self.store.createFamily(family(expiresAt=self.now() + 10))
        await self.assertFails(self.rotate("sha256:r0", "sha256:r1", self.now() + 10), NoSuchFamily)

    async def test_rotateConcurrently(self) -> None:
        """
        Two workers presenting the same current token at once: one
        ROTATED, the other GRACE with the winner's successor; the loser's
        own successor is never live.
        """
        await self.store.createFamily(family())
        now = self.now()
        a, b = await self.gather(
            self.rotate("sha256:r0", "sha256:a1", now, jti="jti-a"),
            self.rotate("sha256:r0", "sha256:b1", now, jti="jti-b"),
        )
        self.assertEqual(
            sorted([a.outcome.value, b.outcome.value]),
            [RotationOutcome.GRACE.value, RotationOutcome.ROTATED.value],
        )
        winner, loser = (a, b) if a.outcome is RotationOutcome.ROTATED else (b, a)
        self.assertEqual(loser.family.currentHash, winner.family.currentHash)
        self.assertEqual(loser.family.sealedSuccessor, winner.family.sealedSuccessor)
        live = winner.family.currentHash
        dead = "sha256:b1" if live == "sha256:a1" else "sha256:a1"
        self.assertEqual((await self.store.getFamily("fam-1", now)).currentHash, live)
        # the loser's own successor was never handed out: unknown, harmless
        result = await self.rotate(dead, "sha256:x", now + 1)
        self.assertEqual(result.outcome, RotationOutcome.UNKNOWN)
        self.assertEqual((await self.store.getFamily("fam-1", now + 1)).currentHash, live)

    async def test_revokeFamily(self) -> None:
        record = family()
        await self.store.createFamily(record)
        now = self.now()
        self.assertFalse(await self.store.isRevoked("jti-0", now))
        self.assertEqual(await self.store.revokeFamily("fam-1", now), record)
        await self.assertFails(self.store.getFamily("fam-1", now), NoSuchFamily)
        self.assertTrue(await self.store.isRevoked("jti-0", now))
        self.assertFalse(await self.store.isRevoked("jti-0", record.lastAccessExpiresAt))
        self.assertIsNone(await self.store.revokeFamily("fam-1", now))
        self.assertIsNone(await self.store.revokeFamily("fam-unknown", now))
        await self.assertFails(self.rotate("sha256:r0", "sha256:r1", now), NoSuchFamily)

    async def test_isAnyRevoked(self) -> None:
        now = self.now()
        await self.store.revokeJTI("a", now + 10)
        await self.store.revokeJTI("b", now + 1)
        self.assertTrue(await self.store.isAnyRevoked(["x", "a"], now))
        self.assertTrue(await self.store.isAnyRevoked(("b",), now))
        self.assertFalse(await self.store.isAnyRevoked(["x", "y"], now))
        self.assertFalse(await self.store.isAnyRevoked(["b", "x"], now + 1))
        checks = [self.store.isAnyRevoked([f"n{i}", "a" if i % 3 == 0 else "z"], now) for i in range(9)]
        self.assertEqual([await d for d in checks], [i % 3 == 0 for i in range(9)])

    async def test_revokeFamilyDenyListsTheFamily(self) -> None:
        """
        Revoking a family (directly, or on reuse of a stale token) also
        deny-lists the family's id, for the family's lifetime: every access
        token issued from it is refused, not only the newest.
        """
        from mcpsvc.storage.interfaces import familyRevocationID

        now = self.now()
        await self.store.createFamily(family())
        await self.store.createFamily(family("fam-2", lastAccessJTI="jti-2"))
        self.assertFalse(await self.store.isRevoked(familyRevocationID("fam-1"), now))
        await self.store.revokeFamily("fam-1", now)
        self.assertTrue(await self.store.isRevoked(familyRevocationID("fam-1"), now))
        self.assertTrue(await self.store.isRevoked(familyRevocationID("fam-1"), EPOCH + 86399))
        self.assertFalse(await self.store.isRevoked(familyRevocationID("fam-1"), EPOCH + 86400))
        self.assertFalse(await self.store.isRevoked(familyRevocationID("fam-2"), now))
        # Reuse detection revokes the family the same way.
        await self.rotate("sha256:r0", "sha256:r1", now, familyID="fam-2")
        result = await self.rotate("sha256:r0", "sha256:r2", now + 3600, familyID="fam-2")
        self.assertEqual(result.outcome, RotationOutcome.REUSED)
        self.assertTrue(await self.store.isRevoked(familyRevocationID("fam-2"), now + 3600))

    async def test_revokedFamilyIdNotReused(self) -> None:
        await self.store.createFamily(family())
        await self.store.revokeFamily("fam-1", self.now())
        await self.assertFails(self.store.createFamily(family()), Conflict)
        await self.assertFails(self.store.getFamily("fam-1", self.now()), NoSuchFamily)

    async def test_listFamilies(self) -> None:
        now = self.now()
        await self.store.createFamily(family("f1"))
        await self.store.createFamily(family("f2", clientID="client-2"))
        await self.store.createFamily(family("f3"))
        await self.store.createFamily(family("f4", expiresAt=now + 10))
        await self.store.revokeFamily("f3", now)
        ids = lambda fs: sorted(f.familyID for f in fs)  # noqa: E731
        self.assertEqual(ids(await self.store.listFamilies(None, now)), ["f1", "f2", "f4"])
        self.assertEqual(ids(await self.store.listFamilies("client-1", now)), ["f1", "f4"])
        self.assertEqual(ids(await self.store.listFamilies("client-1", now + 10)), ["f1"])
        self.assertEqual(await self.store.listFamilies("nobody", now), [])

    # ----------------------------------------------------------- revocations

    async def test_revokeJTI(self) -> None:
        now = self.now()
        self.assertFalse(await self.store.isRevoked("jti-1", now))
        self.assertIsNone(await self.store.revokeJTI("jti-1", now + 100))
        self.assertTrue(await self.store.isRevoked("jti-1", now))
        self.assertTrue(await self.store.isRevoked("jti-1", now + 99.5))
        self.assertFalse(await self.store.isRevoked("jti-1", now + 100))
        self.assertFalse(await self.store.isRevoked("jti-2", now))

    # ---------------------------------------------------- client assertions

    async def test_useAssertionIDOnce(self) -> None:
        """
        The first use of a client assertion's jti is accepted and recorded;
        a second use before it expires is a replay.
        """
        now = self.now()
        self.assertIs(await self.store.useAssertionID("client-1", "jti-1", now + 60, now), True)
        self.assertIs(await self.store.useAssertionID("client-1", "jti-1", now + 60, now), False)
        self.assertIs(await self.store.useAssertionID("client-1", "jti-1", now + 90, now + 59), False)

    async def test_useAssertionIDPerClient(self) -> None:
        """
        Assertion ids are scoped by client: another client may use the same
        jti, and another jti of the same client is a first use.
        """
        now = self.now()
        self.assertTrue(await self.store.useAssertionID("client-1", "jti-1", now + 60, now))
        self.assertTrue(await self.store.useAssertionID("client-2", "jti-1", now + 60, now))
        self.assertTrue(await self.store.useAssertionID("client-1", "jti-2", now + 60, now))
        self.assertFalse(await self.store.useAssertionID("client-2", "jti-1", now + 60, now))

    async def test_useAssertionIDExpires(self) -> None:
        """
        Once its expiry has passed, a jti counts as unused again (the
        assertion itself is refused as expired before the store is asked);
        an already expired one is not stored.
        """
        now = self.now()
        self.assertTrue(await self.store.useAssertionID("client-1", "jti-1", now + 5, now))
        self.clock.advance(10)
        now = self.now()
        self.assertTrue(await self.store.useAssertionID("client-1", "jti-1", now + 5, now))
        self.assertFalse(await self.store.useAssertionID("client-1", "jti-1", now + 5, now))
        self.assertTrue(await self.store.useAssertionID("client-1", "old", now - 1, now))
        self.assertTrue(await self.store.useAssertionID("client-1", "old", now + 5, now))

    async def test_useAssertionIDConcurrent(self) -> None:
        """
        Of several concurrent uses of one jti, exactly one is the first.
        """
        now = self.now()
        results = await self.gather(
            *[self.store.useAssertionID("client-1", "jti-c", now + 60, now) for _ in range(6)]
        )
        self.assertEqual(sorted(results), [False] * 5 + [True])

    async def test_useAssertionIDUnicode(self) -> None:
        """
        Client ids (CIMD URLs) and jti values with any characters are kept
        apart exactly.
        """
        now = self.now()
        self.assertTrue(await self.store.useAssertionID("https://c.example/\u00e9", "a\u0000b", now + 60, now))
        self.assertTrue(await self.store.useAssertionID("https://c.example/\u00e9", "a", now + 60, now))
        self.assertFalse(await self.store.useAssertionID("https://c.example/\u00e9", "a\u0000b", now + 60, now))

    # -------------------------------------------------------------- sessions

    async def test_createGetSession(self) -> None:
        record = session()
        self.assertEqual(await self.store.createSession(record), [])
        self.assertEqual(await self.store.getSession("sess-1", self.now()), record)
        await self.assertFails(self.store.createSession(session(subject="bob")), Conflict)

    async def test_getSessionMissingOrExpired(self) -> None:
        await self.assertFails(self.store.getSession("nope", self.now()), NoSuchSession)
        await self.store.createSession(session(expiresAt=self.now() + 30))
        await self.assertFails(self.store.getSession("sess-1", self.now() + 30), NoSuchSession)

    async def test_touchSession(self) -> None:
        now = self.now()
        await self.store.createSession(session(expiresAt=now + 30))
        self.assertIsNone(await self.store.touchSession("sess-1", now + 90, now + 20))
        got = await self.store.getSession("sess-1", now + 60)
        self.assertEqual(got.expiresAt, now + 90)
        await self.assertFails(self.store.touchSession("sess-1", now + 200, now + 90), NoSuchSession)
        await self.assertFails(self.store.touchSession("nope", now + 200, now), NoSuchSession)

    async def test_deleteSession(self) -> None:
        await self.store.createSession(session())
        self.assertIs(await self.store.deleteSession("sess-1"), True)
        self.assertIs(await self.store.deleteSession("sess-1"), False)
        await self.assertFails(self.store.getSession("sess-1", self.now()), NoSuchSession)

    async def test_countSessions(self) -> None:
        now = self.now()
        self.assertEqual(await self.store.countSessions(now), 0)
        await self.store.createSession(session("s1", expiresAt=now + 10))
        await self.store.createSession(session("s2", expiresAt=now + 20))
        await self.store.createSession(session("s3", expiresAt=now + 30))
        await self.store.deleteSession("s3")
        self.assertEqual(await self.store.countSessions(now), 2)
        self.assertEqual(await self.store.countSessions(now + 10), 1)
        await self.store.touchSession("s1", now + 40, now + 5)
        self.assertEqual(await self.store.countSessions(now + 25), 1)

    async def test_createSessionLimit(self) -> None:
        """
        With a C{limit}, C{createSession} ends the principal's live sessions
        beyond the C{limit - 1} most recently used, least recently used
        first, stores the new one, and ends nobody else's.
        """
        now = self.now()
        create = lambda sessionID, limit, **kw: self.store.createSession(  # noqa: E731
            session(sessionID, **kw), limit=limit)
        self.assertEqual(await create("s1", 3, expiresAt=now + 10, createdAt=now), [])
        self.assertEqual(await create("s2", 3, expiresAt=now + 20, createdAt=now + 1), [])
        self.assertEqual(await create("s3", 3, expiresAt=now + 30, createdAt=now + 2), [])
        await self.store.createSession(session("bob", subject="bob", expiresAt=now + 5), limit=1)
        await self.store.createSession(session("other", clientID="client-2", expiresAt=now + 5), limit=1)
        # Using s1 makes it the most recently used.
        await self.store.touchSession("s1", now + 40, now)
        self.assertEqual(await create("s4", 3, expiresAt=now + 50, createdAt=now + 3), ["s2"])
        await self.assertFails(self.store.getSession("s2", now), NoSuchSession)
        self.assertEqual((await self.store.getSession("s1", now)).sessionID, "s1")
        self.assertEqual((await self.store.getSession("s4", now)).sessionID, "s4")
        self.assertEqual(await self.store.countSessions(now), 5)
        # Touched again, s3 is used after s1.
        await self.store.touchSession("s3", now + 45, now)
        self.assertEqual(await create("s5", 2, expiresAt=now + 60, createdAt=now + 4), ["s1", "s3"])
        self.assertEqual(await self.store.countSessions(now), 4)
        # Without a limit nothing is ended.
        self.assertEqual(await self.store.createSession(session("s6", expiresAt=now + 70)), [])
        self.assertEqual(await self.store.countSessions(now), 5)
        self.assertEqual((await self.store.getSession("bob", now)).subject, "bob")
        self.assertEqual((await self.store.getSession("other", now)).clientID, "client-2")

    async def test_createSessionLimitNeverRefuses(self) -> None:
        """
        The new session is always stored, even when the others have the same
        expiry and creation time and a greater id; a conflicting id ends
        nothing.
        """
        now = self.now()
        for sessionID in ("b", "c"):
            await self.store.createSession(session(sessionID, expiresAt=now + 60, createdAt=now), limit=2)
        self.assertEqual(
            await self.store.createSession(session("a", expiresAt=now + 60, createdAt=now), limit=2), ["b"])
        self.assertEqual((await self.store.getSession("a", now)).sessionID, "a")
        await self.assertFails(
            self.store.createSession(session("a", expiresAt=now + 60, createdAt=now), limit=1), Conflict)
        self.assertEqual((await self.store.getSession("c", now)).sessionID, "c")
        self.assertEqual(await self.store.countSessions(now), 2)

    async def test_createSessionLimitSkipsEndedAndExpired(self) -> None:
        """
        Deleted and expired sessions are neither counted nor reported;
        equal expiries end the older session first.
        """
        now = self.now()
        await self.store.createSession(session("gone", expiresAt=now + 50))
        await self.store.deleteSession("gone")
        await self.store.createSession(session("short", expiresAt=now + 5))
        await self.store.createSession(session("old", expiresAt=now + 60, createdAt=now))
        await self.store.createSession(session("new", expiresAt=now + 60, createdAt=now + 1))
        self.clock.advance(6)
        self.assertEqual(
            await self.store.createSession(session("n1", expiresAt=now + 70, createdAt=now + 6), limit=2),
            ["old"])
        self.assertEqual(
            await self.store.createSession(session("n2", expiresAt=now + 70, createdAt=now + 6), limit=1),
            ["new", "n1"])
        self.assertEqual(await self.store.countSessions(now + 6), 1)

    async def test_createSessionLimitAnySubject(self) -> None:
        """
        Subjects and client ids with any characters are their own
        principals.
        """
        now = self.now()
        await self.store.createSession(session("a", subject="\u00e5lice \U0001f600", expiresAt=now + 30))
        await self.store.createSession(session("b", subject="\u00e5lice", clientID="\U0001f600 client-1",
                                               expiresAt=now + 30))
        await self.store.touchSession("a", now + 90, now)
        self.assertEqual(await self.store.createSession(
            session("a2", subject="\u00e5lice \U0001f600", expiresAt=now + 30), limit=1), ["a"])
        self.assertEqual(await self.store.createSession(
            session("b2", subject="\u00e5lice", clientID="\U0001f600 client-1", expiresAt=now + 30),
            limit=1), ["b"])

    async def test_createSessionLimitConcurrent(self) -> None:
        """
        The limit is applied atomically with the creation: of many creations
        by one principal started at once, every one is stored and ends what
        it must, and the principal ends with exactly C{limit} live sessions.
        """
        now = self.now()
        for i in range(2):
            await self.store.createSession(session(f"old{i}", expiresAt=now + 30), limit=3)
        results = await self.gather(*[
            self.store.createSession(session(f"n{i:02}", expiresAt=now + 60), limit=3) for i in range(12)
        ])
        self.assertTrue(all(isinstance(r, list) for r in results), results)
        ended = [sessionID for r in results for sessionID in r]
        self.assertEqual(len(ended), len(set(ended)))
        self.assertEqual(len(ended), 2 + 12 - 3)
        self.assertIn("old0", ended)
        self.assertIn("old1", ended)
        self.assertEqual(await self.store.countSessions(now), 3)
        live = [f"n{i:02}" for i in range(12) if f"n{i:02}" not in ended]
        self.assertEqual(len(live), 3)
        for sessionID in live:
            self.assertEqual((await self.store.getSession(sessionID, now)).sessionID, sessionID)

    # ----------------------------------------------------------- rate limits

    async def test_tokenBucket(self) -> None:
        now = self.now()
        take = lambda t, cost=1: self.store.takeToken("ip:1", 3, 0.5, t, cost)  # noqa: E731
        self.assertEqual(await take(now), RateDecision(allowed=True, remaining=2, retryAfter=0))
        self.assertEqual((await take(now)).remaining, 1)
        self.assertEqual((await take(now)).remaining, 0)
        denied = await take(now)
        self.assertEqual((denied.allowed, denied.remaining), (False, 0))
        self.assertAlmostEqual(denied.retryAfter, 2.0)
        denied = await take(now + 1)
        self.assertFalse(denied.allowed)
        self.assertAlmostEqual(denied.retryAfter, 1.0)
        self.assertEqual(await take(now + 2), RateDecision(allowed=True, remaining=0, retryAfter=0))
        # long idle: refilled to capacity, never above
        self.assertEqual((await take(now + 1000)).remaining, 2)
        # cost
        self.assertEqual((await take(now + 1000, 2)).remaining, 0)
        denied = await take(now + 1000, 2)
        self.assertFalse(denied.allowed)
        self.assertAlmostEqual(denied.retryAfter, 4.0)

    async def test_tokenBucketRefund(self) -> None:
        """
        A negative cost gives tokens back, never beyond the capacity.
        """
        now = self.now()
        for _ in range(3):
            await self.store.takeToken("r", 3, 0.001, now)
        self.assertFalse((await self.store.takeToken("r", 3, 0.001, now)).allowed)
        refund = await self.store.takeToken("r", 3, 0.001, now, -1)
        self.assertEqual((refund.allowed, refund.remaining), (True, 1))
        self.assertEqual((await self.store.takeToken("r", 3, 0.001, now)).remaining, 0)
        for _ in range(5):
            refund = await self.store.takeToken("r", 3, 0.001, now, -1)
        self.assertEqual(refund.remaining, 3)
        self.assertEqual((await self.store.takeToken("r", 3, 0.001, now)).remaining, 2)

    async def test_tokenBucketKeys(self) -> None:
        now = self.now()
        for _ in range(2):
            await self.store.takeToken("a", 2, 1, now)
        self.assertFalse((await self.store.takeToken("a", 2, 1, now)).allowed)
        self.assertTrue((await self.store.takeToken("b", 2, 1, now)).allowed)

    async def test_tokenBucketConcurrent(self) -> None:
        now = self.now()
        results = await self.gather(*[self.store.takeToken("k", 5, 0.001, now) for _ in range(8)])
        self.assertEqual(sum(1 for r in results if r.allowed), 5)

    # ----------------------------------------------------------------- tasks

    async def test_createGetTask(self) -> None:
        """
        A created task reads back field for field (payload JSON, a missing
        and a present status message); its id cannot be created twice.
        """
        record = task()
        self.assertIsNone(await self.store.createTask(record))
        self.assertEqual(await self.store.getTask("task-1", self.now()), record)
        other = task("task-2", statusMessage="half way", version=7)
        await self.store.createTask(other)
        self.assertEqual(await self.store.getTask("task-2", self.now()), other)
        await self.assertFails(self.store.createTask(task(subject="bob")), Conflict)

    async def test_getTaskMissingOrExpired(self) -> None:
        """
        An unknown task, and a task at or past its C{expiresAt}, are not
        found.
        """
        await self.assertFails(self.store.getTask("nope", self.now()), NoSuchTask)
        await self.store.createTask(task(expiresAt=self.now() + 30))
        self.assertEqual((await self.store.getTask("task-1", self.now() + 29)).taskID, "task-1")
        await self.assertFails(self.store.getTask("task-1", self.now() + 30), NoSuchTask)

    async def test_replaceTaskComparesVersion(self) -> None:
        """
        C{replaceTask} stores the record only over the version before it:
        a stale writer gets C{False} and changes nothing.
        """
        now = self.now()
        await self.store.createTask(task())
        done = task(version=2, status="completed", updatedAt=now + 5,
                    payload={"result": {"content": [{"type": "text", "text": "ok"}]}})
        self.assertIs(await self.store.replaceTask(done, now + 5), True)
        stale = task(version=2, status="cancelled", statusMessage="late")
        self.assertIs(await self.store.replaceTask(stale, now + 6), False)
        self.assertIs(await self.store.replaceTask(task(version=9), now + 6), False)
        self.assertEqual(await self.store.getTask("task-1", now + 6), done)

    async def test_replaceTaskMissingOrExpired(self) -> None:
        """
        Replacing an unknown or expired task fails with L{NoSuchTask} and
        does not bring it back.
        """
        now = self.now()
        await self.assertFails(self.store.replaceTask(task(version=2), now), NoSuchTask)
        await self.store.createTask(task(expiresAt=now + 10))
        await self.assertFails(
            self.store.replaceTask(task(version=2, expiresAt=now + 100), now + 10), NoSuchTask
        )
        await self.assertFails(self.store.getTask("task-1", now + 10), NoSuchTask)

    async def test_replaceTaskSetsExpiry(self) -> None:
        """
        The replacing record's C{expiresAt} is the task's new lifetime.
        """
        now = self.now()
        await self.store.createTask(task(expiresAt=now + 10))
        self.assertIs(await self.store.replaceTask(task(version=2, expiresAt=now + 100), now), True)
        self.assertEqual((await self.store.getTask("task-1", now + 50)).version, 2)
        self.assertIs(await self.store.replaceTask(task(version=3, expiresAt=now + 20), now + 1), True)
        await self.assertFails(self.store.getTask("task-1", now + 20), NoSuchTask)

    async def test_replaceTaskConcurrent(self) -> None:
        """
        Of several writers racing from the same version, exactly one wins.
        """
        now = self.now()
        await self.store.createTask(task())
        results = await self.gather(*[
            self.store.replaceTask(task(version=2, statusMessage=f"writer {i}"), now)
            for i in range(6)
        ])
        self.assertEqual(sorted(results), [False] * 5 + [True])
        winner = results.index(True)
        self.assertEqual((await self.store.getTask("task-1", now)).statusMessage, f"writer {winner}")

    async def test_createTaskLimit(self) -> None:
        """
        With a C{limit}, C{createTask} refuses (L{TooManyTasks}) a task
        whose principal (subject and client) already has C{limit} live
        tasks; tasks that are over, expired, or another principal's do not
        count; without a limit nothing is counted.
        """
        now = self.now()
        await self.store.createTask(task("a"), limit=2)
        await self.store.createTask(task("b", status="input_required"), limit=2)
        failure = await self.assertFails(self.store.createTask(task("c"), limit=2), TooManyTasks)
        self.assertEqual(failure.limit, 2)
        await self.assertFails(self.store.getTask("c", now), NoSuchTask)
        # another principal, and no limit: counted apart / not counted
        await self.store.createTask(task("bob", subject="bob"), limit=2)
        await self.store.createTask(task("other-client", clientID="client-2"), limit=2)
        await self.store.createTask(task("unlimited"))
        # a task over frees its place
        self.assertIs(await self.store.replaceTask(task("a", version=2, status="completed"), now), True)
        await self.store.createTask(task("c"), limit=3)
        await self.assertFails(self.store.createTask(task("d"), limit=3), TooManyTasks)
        # an expired task frees its place
        await self.store.createTask(task("short", subject="carol", expiresAt=now + 5), limit=1)
        await self.assertFails(self.store.createTask(task("e", subject="carol"), limit=1), TooManyTasks)
        await self.store.createTask(task("e", subject="carol", createdAt=now + 5), limit=1)

    async def test_createTaskLimitExcludesLapsedLeases(self) -> None:
        """
        A task not over whose C{leaseUntil} is at or before the new task's
        C{createdAt} (its instance stopped renewing it) does not count
        against the limit; one whose lease still runs (renewed by
        C{replaceTask}), or with no lease (C{0}), does; the lease reads
        back.
        """
        now = self.now()
        await self.store.createTask(task("leased", leaseUntil=now + 10), limit=2)
        self.assertEqual((await self.store.getTask("leased", now)).leaseUntil, now + 10)
        await self.store.createTask(task("unleased", status="input_required"), limit=2)
        await self.assertFails(
            self.store.createTask(task("early", createdAt=now + 9), limit=2), TooManyTasks)
        # renewed before it lapsed: it still counts after the first lease
        self.assertIs(await self.store.replaceTask(
            task("leased", version=2, leaseUntil=now + 100), now + 5), True)
        await self.assertFails(
            self.store.createTask(task("renewed", createdAt=now + 50), limit=2), TooManyTasks)
        # lapsed: its place is free
        await self.store.createTask(task("late", createdAt=now + 100), limit=2)
        await self.assertFails(
            self.store.createTask(task("later", createdAt=now + 101), limit=2), TooManyTasks)
        # a lapsed task is still readable (its readers settle it as failed)
        self.assertEqual((await self.store.getTask("leased", now + 101)).status, "working")

    async def test_createTaskLimitConcurrent(self) -> None:
        """
        The limit is counted atomically: of several creations racing for
        the last places, exactly that many succeed.
        """
        await self.store.createTask(task("first"), limit=3)
        results = await self.gather(*[
            self.store.createTask(task(f"t{i}"), limit=3) for i in range(6)
        ])
        self.assertEqual(sum(1 for r in results if r is None), 2)
        self.assertEqual(sum(1 for r in results if isinstance(r, TooManyTasks)), 4)

    # ----------------------------------------------------------------- sweep

    async def test_sweepKeepsLiveRecords(self) -> None:
        now = self.now()
        await self.store.createClient(client())
        await self.store.storeCode(code("sha256:live"))
        await self.store.storeCode(code("sha256:dead", expiresAt=now + 5))
        await self.store.createFamily(family("live"))
        await self.store.createFamily(family("dead", expiresAt=now + 5))
        await self.store.revokeJTI("jti-live", now + 100)
        await self.store.createSession(session("live"))
        await self.store.createSession(session("dead", expiresAt=now + 5))
        await self.store.createTask(task("live"))
        await self.store.createTask(task("dead", expiresAt=now + 5))
        self.clock.advance(10)
        report = await self.store.sweep(self.now())
        self.assertIsInstance(report, SweepReport)
        now = self.now()
        self.assertEqual((await self.store.getClient("client-1")).clientID, "client-1")
        self.assertEqual((await self.store.consumeCode("sha256:live", now)).codeHash, "sha256:live")
        await self.assertFails(self.store.consumeCode("sha256:dead", now), NoSuchCode)
        self.assertEqual([f.familyID for f in await self.store.listFamilies(None, now)], ["live"])
        self.assertTrue(await self.store.isRevoked("jti-live", now))
        self.assertEqual((await self.store.getSession("live", now)).sessionID, "live")
        self.assertEqual(await self.store.countSessions(now), 1)
        self.assertEqual((await self.store.getTask("live", now)).taskID, "live")
        await self.assertFails(self.store.getTask("dead", now), NoSuchTask)


class SweepCountTestsMixin:
    """
    For backends that expire nothing by themselves (memory, SQLite): the
    sweep removes every expired record and counts them. Mix in after
    L{StoreTestsMixin}.
    """

    async def test_sweepCounts(self) -> None:
        store, now = self.store, self.now()  # type: ignore[attr-defined]
        await store.storeCode(code("sha256:c1", expiresAt=now + 5))
        await store.storeCode(code("sha256:c2", expiresAt=now + 50))
        await store.createFamily(family("f1", expiresAt=now + 5))
        await store.createFamily(family("f2", expiresAt=now + 5))
        await store.revokeFamily("f2", now)  # tombstones go too, once expired
        await store.createFamily(family("f3"))
        await store.revokeJTI("j1", now + 5)
        await store.createSession(session("s1", expiresAt=now + 5))
        await store.createSession(session("s2"))
        await store.createTask(task("t1", expiresAt=now + 5))
        await store.createTask(task("t2"))
        await store.takeToken("full-soon", 10, 1, now)  # full again at now + 1
        await store.takeToken("busy", 100, 1, now, 50)  # full again at now + 50
        await store.useAssertionID("client-1", "a1", now + 5, now)
        await store.useAssertionID("client-1", "a2", now + 50, now)
        empty = await store.sweep(now)
        self.assertEqual(empty.total, 0)  # type: ignore[attr-defined]
        report = await store.sweep(now + 10)
        self.assertEqual(  # type: ignore[attr-defined]
            dict(report.removed),
            {"codes": 1, "families": 2, "revocations": 1, "sessions": 1, "tasks": 1,
             "assertions": 1, "buckets": 1},
        )
        again = await store.sweep(now + 10)
        self.assertEqual(again.total, 0)  # type: ignore[attr-defined]
        # the live assertion id was kept
        self.assertFalse(await store.useAssertionID("client-1", "a2", now + 50, now + 10))  # type: ignore[attr-defined]
        # the busy bucket was kept: 50 + 10 refilled, minus this take
        self.assertEqual((await store.takeToken("busy", 100, 1, now + 10)).remaining, 59)  # type: ignore[attr-defined]
