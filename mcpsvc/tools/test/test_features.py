"""
Tests for L{mcpsvc.tools.features} and the features of the conformance
pack, over HTTP.
"""

import json
from typing import Any, Dict

from twisted.trial.unittest import SynchronousTestCase

from mcpsvc.config import Config
from mcpsvc.mcp.test.helpers import MODERN_META, Harness
from mcpsvc.tools.features import Features, FeatureSet, Resource, ResourceTemplate


class FeatureSetTests(SynchronousTestCase):
    def test_empty(self) -> None:
        """
        No features: no capabilities.
        """
        features = FeatureSet()
        self.assertEqual(features.capabilities(modern=False), {})
        self.assertIsNone(features.read("test://x"))

    def test_templates(self) -> None:
        """
        Template variables match one segment; exact resources win.
        """
        template = ResourceTemplate(
            uriTemplate="test://t/{id}/data", name="t", description="T",
            read=lambda uri, v: [{"uri": uri, "text": v["id"]}])
        exact = Resource(uri="test://t/1/data", name="one", description="One",
                         read=lambda uri: [{"uri": uri, "text": "exact"}])
        features = FeatureSet([Features(resources=[exact], templates=[template])])
        self.assertEqual(features.read("test://t/1/data"), [{"uri": "test://t/1/data", "text": "exact"}])
        self.assertEqual(features.read("test://t/42/data")[0]["text"], "42")
        self.assertIsNone(features.read("test://t/4/2/data"))
        self.assertIsNone(features.read("test://t/.*/dataX"))

    def test_duplicates(self) -> None:
        """
        Two packs may not define one resource.
        """
        r = Resource(uri="a://b", name="b", description="B", read=lambda uri: [])
        self.assertRaises(ValueError, FeatureSet, [Features(resources=[r]), Features(resources=[r])])


class ConformanceFeaturesOverHTTPTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.h = Harness(self)
        self.h.servePacks(Config(toolPacks=("conformance",)))
        self.sid = self.h.initialize()

    def rpc(self, method: str, params: Any = None) -> Dict[str, Any]:
        status, message = self.h.json(self.h.call(1, method, params), {"Mcp-Session-Id": self.sid})
        self.assertEqual(status, 200)
        return message

    def test_capabilities(self) -> None:
        """
        With the pack enabled, resources, prompts and completions are
        declared.
        """
        _, body = self.h.post(self.h.call(1, "initialize", {"protocolVersion": "2025-06-18"}))
        capabilities = json.loads(body)["result"]["capabilities"]
        self.assertEqual(capabilities["resources"], {"listChanged": False, "subscribe": True})
        self.assertEqual(capabilities["prompts"], {"listChanged": False})
        self.assertEqual(capabilities["completions"], {})
        # 2026-07-28: prompt list changes reach subscriptions/listen streams.
        modern = self.h.app.dispatcher.capabilities(modern=True)
        self.assertEqual(modern["prompts"], {"listChanged": True})
        self.assertEqual(modern["resources"], {"listChanged": False})

    def test_resources(self) -> None:
        """
        Resources list, read (also through the template) and subscribe;
        unknown ones get -32002.
        """
        uris = [r["uri"] for r in self.rpc("resources/list")["result"]["resources"]]
        self.assertIn("test://static-text", uris)
        templates = self.rpc("resources/templates/list")["result"]["resourceTemplates"]
        self.assertEqual(templates[0]["uriTemplate"], "test://template/{id}/data")
        text = self.rpc("resources/read", {"uri": "test://static-text"})["result"]["contents"][0]
        self.assertEqual(text["mimeType"], "text/plain")
        data = self.rpc("resources/read", {"uri": "test://template/123/data"})["result"]["contents"][0]
        self.assertEqual(json.loads(data["text"])["id"], "123")
        missing = self.rpc("resources/read", {"uri": "test://nope"})["error"]
        self.assertEqual(missing["code"], -32002)
        self.assertEqual(self.rpc("resources/subscribe", {"uri": "test://watched-resource"})["result"], {})
        self.assertEqual(self.rpc("resources/unsubscribe", {"uri": "test://watched-resource"})["result"], {})
        self.assertEqual(self.rpc("resources/list", {"cursor": "x"})["error"]["code"], -32602)

    def test_prompts(self) -> None:
        """
        Prompts list and get with argument substitution; bad requests get
        -32602.
        """
        names = [p["name"] for p in self.rpc("prompts/list")["result"]["prompts"]]
        self.assertIn("test_prompt_with_arguments", names)
        messages = self.rpc("prompts/get", {"name": "test_prompt_with_arguments",
                                            "arguments": {"arg1": "A", "arg2": "B"}})["result"]["messages"]
        self.assertEqual(messages[0]["content"]["text"], "Prompt with arguments: arg1='A', arg2='B'")
        for params in ({"name": "nope"}, {"name": "test_prompt_with_arguments"},
                       {"name": "test_simple_prompt", "arguments": {"x": 1}}):
            self.assertEqual(self.rpc("prompts/get", params)["error"]["code"], -32602, params)

    def test_complete(self) -> None:
        """
        Completion returns matching values.
        """
        completion = self.rpc("completion/complete", {
            "ref": {"type": "ref/prompt", "name": "test_prompt_with_arguments"},
            "argument": {"name": "arg1", "value": "par"}})["result"]["completion"]
        self.assertEqual(completion, {"values": ["paris", "park", "party"], "total": 3, "hasMore": False})
        self.assertEqual(self.rpc("completion/complete", {})["error"]["code"], -32602)

    def test_modernNotFound(self) -> None:
        """
        In the 2026-07-28 era an unknown resource is -32602, lists carry
        caching hints, and subscriptions are gone (404).
        """
        def modern(method: str, params: Dict[str, Any], name: Any = None) -> Any:
            headers = self.h.modernHeaders(method)
            if name is not None:
                headers["Mcp-Name"] = name
            return self.h.post(self.h.call(1, method, dict(params, _meta=MODERN_META)), headers)

        response, body = modern("resources/read", {"uri": "test://nope"}, "test://nope")
        self.assertEqual(json.loads(body)["error"]["code"], -32602)
        response, body = modern("resources/list", {})
        self.assertEqual(json.loads(body)["result"]["cacheScope"], "private")
        response, body = modern("resources/subscribe", {"uri": "test://watched-resource"})
        self.assertEqual(response.code, 404)
        response, body = modern("server/discover", {})
        self.assertNotIn("subscribe", json.loads(body)["result"]["capabilities"]["resources"])
