"""
Tests for L{mcpsvc.authpage.signing} and L{mcpsvc.authpage.buildApprover}.
"""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from mcpsvc.authpage import buildApprover
from mcpsvc.authpage.approver import ConsentApprover, LoginApprover
from mcpsvc.authpage.signing import BadSignature, Signer, bindingOf, deriveKey
from mcpsvc.oauth.app import AutoApprover
from mcpsvc.oauth.test.helpers import makeConfig
from mcpsvc.storage.memory import MemoryStore


class SignerTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.signer = Signer(deriveKey("s" * 40, "signing"))

    def reason(self, purpose: str, value: str, now: float) -> str:
        with self.assertRaises(BadSignature) as cm:
            self.signer.verify(purpose, value, now)
        return str(cm.exception)

    def test_roundTrip(self) -> None:
        value = self.signer.sign("csrf", {"id": "x"}, 100)
        self.assertEqual(self.signer.verify("csrf", value, 99.9), {"id": "x", "exp": 100})

    def test_refusals(self) -> None:
        value = self.signer.sign("csrf", {"id": "x"}, 100)
        self.assertEqual(self.reason("csrf", value, 100), "expired")
        self.assertEqual(self.reason("login", value, 0), "altered")
        self.assertEqual(self.reason("csrf", "", 0), "missing")
        self.assertEqual(self.reason("csrf", "v2.a.b", 0), "malformed")
        self.assertEqual(self.reason("csrf", value + "x", 0), "altered")
        other = Signer(deriveKey("t" * 40, "signing")).sign("csrf", {"id": "x"}, 100)
        self.assertEqual(self.reason("csrf", other, 0), "altered")

    def test_nonASCII(self) -> None:
        """
        A value with a non-ASCII character anywhere (a form field or a
        cookie can hold any) is malformed, never an exception.
        """
        value = self.signer.sign("csrf", {"id": "x"}, 100)
        version, payload, mac = value.split(".")
        for bad in (f"{version}.{payload[:5]}\u00e9{payload[5:]}.{mac}", f"{version}.{payload}.{mac}\u00e9",
                    "v1.\u00e9.x", "v1.\ud800.x"):
            self.assertEqual(self.reason("csrf", bad, 0), "malformed")

    def test_keysPerLabel(self) -> None:
        self.assertNotEqual(deriveKey("s" * 40, "a"), deriveKey("s" * 40, "b"))

    def test_binding(self) -> None:
        self.assertNotEqual(bindingOf("a", None), bindingOf("a", ""))
        self.assertNotEqual(bindingOf("a,b"), bindingOf("a", "b"))


class BuildApproverTests(SynchronousTestCase):
    def build(self, mode: str, **kw: object) -> object:
        clock = Clock()
        return buildApprover(makeConfig(authorizeMode=mode), store=MemoryStore(clock), clock=clock, **kw)

    def test_modes(self) -> None:
        runner = lambda f, *a, **kw: None  # noqa: E731
        self.assertIsInstance(self.build("auto"), AutoApprover)
        self.assertIsInstance(self.build("consent"), ConsentApprover)
        self.assertIsInstance(self.build("login", runInThread=runner), LoginApprover)
        self.assertRaises(ValueError, self.build, "login")
