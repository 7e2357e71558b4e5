# -*- test-case-name: mcpsvc.storage.test.test_admin -*-
"""
Tests for L{mcpsvc.storage.admin}.
"""

from __future__ import annotations

import json
from typing import Any, Dict

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from mcpsvc.storage.admin import exportClients, importClients
from mcpsvc.storage.hashing import hashSecret, secretMatches
from mcpsvc.storage.memory import MemoryStore
from mcpsvc.storage.test.base import EPOCH, client

GUIDE = {
    "mcp-client-abc": {
        "clientId": "mcp-client-abc",
        "clientSecret": "plain-secret-1",
        "clientName": "ServiceNow MCP Client",
        "redirectUris": ["https://dev1.service-now.com/oauth_redirect.do"],
        "grantTypes": ["authorization_code", "refresh_token"],
        "createdAt": "2025-10-01T12:00:00.000Z",
    },
    "public-1": {
        "clientName": "CLI",
        "redirectUris": ["http://localhost/cb"],
        "grantTypes": ["authorization_code"],
        "tokenEndpointAuthMethod": "none",
        "createdAt": 1759320000000,
    },
}


class AdminTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.store = MemoryStore(Clock())

    def run_(self, coroutine):  # type: ignore[no-untyped-def]
        return self.successResultOf(Deferred.fromCoroutine(coroutine))

    def test_importGuide(self) -> None:
        self.assertEqual(self.run_(importClients(self.store, GUIDE, EPOCH)), 2)
        c = self.successResultOf(self.store.getClient("mcp-client-abc"))
        self.assertTrue(secretMatches("plain-secret-1", c.secretHash))
        self.assertEqual(c.metadata["client_name"], "ServiceNow MCP Client")
        self.assertEqual(c.metadata["redirect_uris"], ["https://dev1.service-now.com/oauth_redirect.do"])
        self.assertEqual(c.metadata["token_endpoint_auth_method"], "client_secret_basic")
        self.assertEqual(c.createdAt, 1759320000.0)
        public = self.successResultOf(self.store.getClient("public-1"))
        self.assertIsNone(public.secretHash)
        self.assertEqual(public.metadata["token_endpoint_auth_method"], "none")
        self.assertEqual(public.createdAt, 1759320000.0)

    def test_exportHasNoPlaintext(self) -> None:
        self.run_(importClients(self.store, GUIDE, EPOCH))
        exported = self.run_(exportClients(self.store))
        text = json.dumps(exported)
        self.assertNotIn("plain-secret-1", text)
        self.assertIn(hashSecret("plain-secret-1"), text)
        self.assertEqual([c["clientID"] for c in exported["clients"]], ["mcp-client-abc", "public-1"])

    def test_roundTrip(self) -> None:
        """
        Registered clients of every method round-trip as stored, keys
        (C{jwks}, C{jwks_uri}) included; a metadata document client's
        cached record is not exported.
        """
        from mcpsvc.testing.clientkeys import ClientKey

        public = dict(client("b").metadata, token_endpoint_auth_method="none")
        self.successResultOf(self.store.createClient(client("a")))
        self.successResultOf(self.store.createClient(client("b", secretHash=None, metadata=public)))
        for name, keys in (("c", {"jwks": ClientKey("ES256").jwks()}),
                           ("d", {"jwks_uri": "https://agent.example.com/jwks.json"})):
            metadata = dict(client(name).metadata, token_endpoint_auth_method="private_key_jwt", **keys)
            self.successResultOf(self.store.createClient(client(name, secretHash=None, metadata=metadata)))
        document = dict(public, cimd={"document_sha256": "sha256:x", "fetched_at": EPOCH,
                                      "fresh_until": EPOCH + 60, "changed_at": EPOCH,
                                      "host": "app.example.com"})
        url = "https://app.example.com/client.json"
        self.successResultOf(self.store.createClient(client(url, secretHash=None, metadata=document)))
        exported = json.loads(json.dumps(self.run_(exportClients(self.store))))
        self.assertEqual([c["clientID"] for c in exported["clients"]], ["a", "b", "c", "d"])
        other = MemoryStore(Clock())
        self.assertEqual(self.run_(importClients(other, exported, EPOCH + 5)), 4)
        self.assertEqual(self.successResultOf(other.listClients()),
                         [c for c in self.successResultOf(self.store.listClients()) if c.clientID != url])

    def test_documentClientsNotImported(self) -> None:
        """
        A metadata document client in an export (made by an older version)
        is skipped, not counted.
        """
        exported = {"format": "mcpsvc-clients", "version": 1, "clients": [{
            "clientID": "https://app.example.com/client.json", "secretHash": None,
            "metadata": {"token_endpoint_auth_method": "none", "cimd": {"host": "app.example.com"}},
        }]}
        self.assertEqual(self.run_(importClients(self.store, exported, EPOCH)), 0)
        self.assertEqual(self.successResultOf(self.store.listClients()), [])

    def test_credentialsAgreeWithMethod(self) -> None:
        """
        An entry whose credentials contradict its method (a secret method
        without a secret, a secret on a public or private_key_jwt client,
        private_key_jwt without keys) fails the import; nothing is
        imported. A guide entry carries its keys.
        """
        def entry(clientID: str, method: str, secretHash: Any = None, **metadata: Any) -> Dict[str, Any]:
            return {"clientID": clientID, "secretHash": secretHash,
                    "metadata": dict(metadata, token_endpoint_auth_method=method)}

        for bad in (entry("x", "client_secret_basic"), entry("x", "none", "sha256:h"),
                    entry("x", "private_key_jwt", "sha256:h", jwks_uri="https://a.example/j"),
                    entry("x", "private_key_jwt"), entry("x", "client_secret_jwt", "sha256:h")):
            data = {"format": "mcpsvc-clients", "version": 1,
                    "clients": [entry("ok", "none"), bad]}
            self.failureResultOf(Deferred.fromCoroutine(importClients(self.store, data, EPOCH)),
                                 ValueError)
        self.assertEqual(self.successResultOf(self.store.listClients()), [])
        guide = {"agent": {"clientName": "agent", "redirectUris": ["https://a.example/cb"],
                           "tokenEndpointAuthMethod": "private_key_jwt",
                           "jwksUri": "https://a.example/jwks.json"}}
        self.assertEqual(self.run_(importClients(self.store, guide, EPOCH)), 1)
        record = self.successResultOf(self.store.getClient("agent"))
        self.assertEqual((record.jwksURI, record.secretHash), ("https://a.example/jwks.json", None))

    def test_existingSkipped(self) -> None:
        self.successResultOf(self.store.createClient(client("mcp-client-abc")))
        self.assertEqual(self.run_(importClients(self.store, GUIDE, EPOCH)), 1)
        kept = self.successResultOf(self.store.getClient("mcp-client-abc"))
        self.assertEqual(kept, client("mcp-client-abc"))

    def test_existingReplaced(self) -> None:
        self.successResultOf(self.store.createClient(client("mcp-client-abc")))
        self.assertEqual(self.run_(importClients(self.store, GUIDE, EPOCH, replace=True)), 2)
        replaced = self.successResultOf(self.store.getClient("mcp-client-abc"))
        self.assertTrue(secretMatches("plain-secret-1", replaced.secretHash))

    def test_rejectsGarbage(self) -> None:
        for bad in ([1, 2], {"x": "not an object"}, "text"):
            d = Deferred.fromCoroutine(importClients(self.store, bad, EPOCH))
            self.failureResultOf(d, ValueError)
        self.assertEqual(self.successResultOf(self.store.listClients()), [])
