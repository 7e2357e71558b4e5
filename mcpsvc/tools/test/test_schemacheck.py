"""
Tests for L{mcpsvc.tools.schemacheck}: the fast predicate never calls an
invalid instance valid (checked against jsonschema on generated schemas
and instances), and the built-in tools' schemas take the fast path.
"""

from __future__ import annotations

from typing import Any, Dict

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from mcpsvc.tools.schemacheck import SchemaChecker, compileFastCheck

NAMES = st.sampled_from(["a", "b", "c", "text", "top"])
NUMBERS = st.one_of(st.integers(-5, 5), st.floats(-5, 5, allow_nan=False), st.sampled_from([0.5, 1.0, 2.0]))

JSON = st.recursive(
    st.one_of(st.none(), st.booleans(), NUMBERS, st.text(max_size=4), st.sampled_from(["", "ab", "x1", "é"])),
    lambda children: st.one_of(
        st.lists(children, max_size=3),
        st.dictionaries(NAMES, children, max_size=3),
    ),
    max_leaves=8,
)

TYPES = st.sampled_from(["object", "array", "string", "integer", "number", "boolean", "null"])


LEAF_KEYWORDS = {
    "minLength": st.integers(0, 3),
    "maxLength": st.integers(0, 3),
    "pattern": st.sampled_from(["^a", "[0-9]", "b$"]),
    "minimum": NUMBERS,
    "maximum": NUMBERS,
    "exclusiveMinimum": NUMBERS,
    "exclusiveMaximum": NUMBERS,
    "enum": st.lists(st.sampled_from(["", "ab", "x1", "a"]), min_size=1, max_size=3, unique=True),
    "description": st.text(max_size=3),
    "default": JSON,
}


_STRING_KEYWORDS = ["minLength", "maxLength", "pattern", "enum"]
_NUMBER_KEYWORDS = ["minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"]


@st.composite
def leafSchemas(draw: Any) -> Dict[str, Any]:
    """
    A type (usually) and up to two keywords that matter for it, so that
    instances often satisfy some and fail others.
    """
    kind = draw(st.sampled_from(["string", "string", "integer", "number", "boolean", "null", "object", "array",
                                 None, "several"]))
    schema: Dict[str, Any] = {}
    if kind == "several":
        schema["type"] = draw(st.lists(TYPES, min_size=2, max_size=3, unique=True))
    elif kind is not None:
        schema["type"] = kind
    if kind == "string":
        pool = _STRING_KEYWORDS
    elif kind in ("integer", "number"):
        pool = _NUMBER_KEYWORDS
    elif kind in (None, "several"):
        pool = sorted(LEAF_KEYWORDS)
    else:
        pool = ["description", "default"]
    for name in draw(st.lists(st.sampled_from(pool), max_size=2, unique=True)):
        schema[name] = draw(LEAF_KEYWORDS[name])
    return schema


#: Objects of leaf properties: the shape of nearly every tool schema.
FLAT_OBJECTS = st.fixed_dictionaries(
    {"type": st.just("object"), "properties": st.dictionaries(NAMES, leafSchemas(), min_size=1, max_size=3)},
    optional={
        "required": st.lists(NAMES, max_size=2, unique=True),
        "additionalProperties": st.booleans(),
        "maxProperties": st.integers(0, 2),
    },
)

NESTED = st.recursive(
    st.one_of(leafSchemas(), st.just(True)),
    lambda children: st.one_of(
        st.fixed_dictionaries(
            {"type": st.just("object")},
            optional={
                "properties": st.dictionaries(NAMES, children, max_size=3),
                "required": st.lists(NAMES, max_size=2, unique=True),
                "additionalProperties": st.one_of(st.booleans(), children),
                "minProperties": st.integers(0, 2),
                "maxProperties": st.integers(0, 3),
            },
        ),
        st.fixed_dictionaries(
            {},
            optional={
                "type": st.just("array"),
                "items": children,
                "minItems": st.integers(0, 2),
                "maxItems": st.integers(0, 3),
            },
        ),
    ),
    max_leaves=6,
)

SCHEMAS = st.one_of(leafSchemas(), FLAT_OBJECTS, FLAT_OBJECTS, NESTED)

LEAVES = st.one_of(st.none(), st.booleans(), NUMBERS, st.sampled_from(["", "ab", "x1", "a", "b", "9", "é", "abc"]))


STRINGS = st.one_of(st.sampled_from(["", "a", "b", "ab", "ba", "x1", "9", "é", "abc", "abcd"]), st.text(max_size=5))
_TYPED = {
    "string": STRINGS,
    "integer": st.one_of(st.integers(-6, 6), st.sampled_from([True, False, 1.0, -2.0])),
    "number": st.one_of(NUMBERS, st.integers(-6, 6), st.booleans()),
    "boolean": st.one_of(st.booleans(), st.sampled_from([0, 1])),
    "null": st.one_of(st.none(), st.sampled_from([0, "", False])),
}


def instancesFor(schema: Any, depth: int = 0) -> st.SearchStrategy[Any]:
    """
    Instances shaped like C{schema} (its properties, its items), with
    leaves from a small pool, mixed with arbitrary JSON: most are near a
    boundary of the schema.
    """
    options = [LEAVES, JSON]
    if isinstance(schema, dict):
        kinds = schema.get("type", [])
        for kind in [kinds] if isinstance(kinds, str) else kinds:
            if kind in _TYPED:
                options += [_TYPED[kind]] * 3
    if isinstance(schema, dict) and depth < 4:
        properties = schema.get("properties") or {}
        if properties or schema.get("type") == "object":
            shaped = {name: instancesFor(sub, depth + 1) for name, sub in properties.items()}
            shaped["extra"] = JSON
            options.append(st.fixed_dictionaries({}, optional=shaped))
        if "items" in schema or schema.get("type") == "array":
            options.append(st.lists(instancesFor(schema.get("items", True), depth + 1), max_size=3))
    return st.one_of(options)


class SoundnessTests(SynchronousTestCase):
    """
    Whatever the fast predicate accepts, jsonschema accepts.
    """

    @settings(max_examples=500, derandomize=True, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow])
    @given(st.data())
    def test_acceptedIsValid(self, data: Any) -> None:
        schema = data.draw(SCHEMAS)
        Draft202012Validator.check_schema(schema)
        fast = compileFastCheck(schema)
        self.assertIsNotNone(fast, schema)
        validator = Draft202012Validator(schema)
        for instance in data.draw(st.lists(instancesFor(schema), min_size=1, max_size=10)):
            if fast(instance):
                self.assertTrue(validator.is_valid(instance), (schema, instance))

    @settings(max_examples=200, derandomize=True, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow])
    @given(st.data())
    def test_checkerAgreesWithJsonschema(self, data: Any) -> None:
        """
        L{SchemaChecker.problems} says valid exactly when jsonschema does.
        """
        schema = data.draw(SCHEMAS)
        checker = SchemaChecker(schema)
        validator = Draft202012Validator(schema)
        for instance in data.draw(st.lists(instancesFor(schema), min_size=1, max_size=10)):
            self.assertEqual(checker.problems(instance) is None, validator.is_valid(instance), (schema, instance))


class DecisionTests(SynchronousTestCase):
    """
    What the predicate decides, and what it leaves to jsonschema.
    """

    SCHEMA = {
        "type": "object",
        "properties": {
            "text": {"type": "string", "maxLength": 5, "description": "d"},
            "top": {"type": "integer", "minimum": 1, "maximum": 50, "default": 5},
        },
        "required": ["text"],
        "additionalProperties": False,
    }

    def test_valid(self) -> None:
        fast = compileFastCheck(self.SCHEMA)
        assert fast is not None
        self.assertTrue(fast({"text": "hello", "top": 3}))
        self.assertTrue(fast({"text": ""}))

    def test_invalid(self) -> None:
        fast = compileFastCheck(self.SCHEMA)
        assert fast is not None
        for instance in ({}, {"text": "toolong"}, {"text": "a", "top": 0}, {"text": "a", "top": 51},
                         {"text": "a", "top": True}, {"text": "a", "extra": 1}, {"text": 1}, [], "x"):
            self.assertFalse(fast(instance), instance)

    def test_integralFloatLeftToJsonschema(self) -> None:
        """
        C{1.0} is an integer in Draft 2020-12: the predicate does not
        decide it, and the checker (through jsonschema) accepts it.
        """
        self.assertFalse(compileFastCheck(self.SCHEMA)({"text": "a", "top": 1.0}))  # type: ignore[misc]
        self.assertIsNone(SchemaChecker(self.SCHEMA).problems({"text": "a", "top": 1.0}))

    def test_unsupportedKeywords(self) -> None:
        for schema in (
            {"type": "object", "properties": {"a": {"$ref": "#/$defs/x"}}, "$defs": {"x": {"type": "string"}}},
            {"type": "object", "unevaluatedProperties": False},
            {"anyOf": [{"type": "string"}, {"type": "null"}]},
            {"type": "integer", "multipleOf": 2},
            {"enum": [1, True]},
            {"type": "array", "uniqueItems": True},
            {"$schema": "http://json-schema.org/draft-07/schema#", "type": "object"},
        ):
            self.assertIsNone(compileFastCheck(schema), schema)

    def test_dialectAccepted(self) -> None:
        schema = {"$schema": "https://json-schema.org/draft/2020-12/schema", "type": "object"}
        fast = compileFastCheck(schema)
        assert fast is not None
        self.assertTrue(fast({}))
        self.assertFalse(fast([]))

    def test_problemsDescribed(self) -> None:
        problem = SchemaChecker(self.SCHEMA).problems({"top": 0, "extra": 1})
        assert problem is not None
        self.assertIn("'text' is a required property", problem)
        self.assertIn("top: 0 is less than the minimum of 1", problem)


class BuiltinToolsTests(SynchronousTestCase):
    """
    The built-in tools' schemas all take the fast path.
    """

    def test_coreTools(self) -> None:
        from mcpsvc.tools.core import coreTools
        from mcpsvc.tools.interfaces import ToolPackContext

        try:
            context = ToolPackContext(clock=Clock())  # type: ignore[call-arg]
        except TypeError:
            context = None  # type: ignore[assignment]
        tools = coreTools(context)  # type: ignore[arg-type]
        self.assertTrue(tools)
        for tool in tools:
            self.assertIsNotNone(compileFastCheck(tool.inputSchema), tool.name)
            if tool.outputSchema is not None:
                self.assertIsNotNone(compileFastCheck(tool.outputSchema), tool.name)
