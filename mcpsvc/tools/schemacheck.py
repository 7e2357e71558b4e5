# -*- test-case-name: mcpsvc.tools.test.test_schemacheck -*-
"""
Tool schemas, checked fast.

Every C{tools/call} validates its arguments against the tool's input
schema, and every structured result against its output schema (JSON Schema
2020-12, with jsonschema's L{Draft202012Validator}). jsonschema is general
and slow on the hot path: it builds a new validator object for each
subschema it descends into, so checking C{{"expression": "2+3"}} cost
about a tenth of the reactor's time under load.

Most tool schemas use a small set of keywords (an object of typed
properties with bounds, C{required}, C{additionalProperties}). For such a
schema, L{compileFastCheck} builds a plain Python predicate once. The
predicate is I{sound, not complete}: when it returns C{True} the instance
is valid exactly as Draft 2020-12 says; when it returns C{False} the
instance may be invalid, or may be a case it does not decide (C{1.0} as an
C{integer}, say), and jsonschema then decides and describes the errors.
A schema using any other keyword (C{$ref}, C{anyOf}, C{enum} of non-strings,
C{unevaluatedProperties}, ...) gets no predicate at all: jsonschema alone.
So validation never changes; only the cost of valid input does.
"""

from __future__ import annotations

import re
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

from jsonschema import Draft202012Validator

__all__ = ["compileFastCheck", "SchemaChecker"]

Predicate = Callable[[Any], bool]

#: Keywords that never change the validation outcome (annotations; the
#: registry builds its validators without a format checker, so C{format}
#: is an annotation too).
_ANNOTATIONS = frozenset((
    "title", "description", "default", "examples", "deprecated", "readOnly", "writeOnly",
    "$comment", "format", "contentMediaType", "contentEncoding",
))
_KNOWN = _ANNOTATIONS | frozenset((
    "type", "properties", "required", "additionalProperties", "minProperties", "maxProperties",
    "minLength", "maxLength", "pattern", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum",
    "items", "minItems", "maxItems", "enum",
))
_DIALECT = Draft202012Validator.META_SCHEMA["$id"]


class _Unsupported(Exception):
    pass


def _isNumber(value: Any) -> bool:
    return type(value) in (int, float)


_TYPES: Dict[str, Predicate] = {
    "object": lambda v: type(v) is dict,
    "array": lambda v: type(v) is list,
    "string": lambda v: type(v) is str,
    # Draft 2020-12 also counts 1.0 as an integer: not decided here.
    "integer": lambda v: type(v) is int,
    "number": _isNumber,
    "boolean": lambda v: type(v) is bool,
    "null": lambda v: v is None,
}


def _number(schema: Mapping[str, Any], key: str) -> Optional[float]:
    value = schema.get(key)
    if value is None:
        return None
    if not _isNumber(value):
        raise _Unsupported(key)
    return value


def _count(schema: Mapping[str, Any], key: str) -> Optional[int]:
    value = schema.get(key)
    if value is None:
        return None
    if type(value) is not int or value < 0:
        raise _Unsupported(key)
    return value


def _compile(schema: Any) -> Predicate:
    if schema is True:
        return lambda v: True
    if not isinstance(schema, Mapping) or schema is False:
        raise _Unsupported("schema")
    unknown = set(schema) - _KNOWN
    if unknown:
        raise _Unsupported(", ".join(sorted(unknown)))
    checks: List[Predicate] = []

    kind = schema.get("type")
    if kind is not None:
        names = [kind] if isinstance(kind, str) else kind
        if not isinstance(names, list) or not names or any(n not in _TYPES for n in names):
            raise _Unsupported("type")
        typeChecks = [_TYPES[n] for n in names]
        checks.append(typeChecks[0] if len(typeChecks) == 1 else (lambda v: any(c(v) for c in typeChecks)))

    enum = schema.get("enum")
    if enum is not None:
        if not isinstance(enum, list) or not enum or any(type(e) is not str for e in enum):
            raise _Unsupported("enum")
        members = frozenset(enum)
        checks.append(lambda v: type(v) is str and v in members)

    # strings
    minLength, maxLength = _count(schema, "minLength"), _count(schema, "maxLength")
    pattern = schema.get("pattern")
    if minLength is not None or maxLength is not None or pattern is not None:
        low = minLength or 0
        high = maxLength
        regex = None
        if pattern is not None:
            if not isinstance(pattern, str):
                raise _Unsupported("pattern")
            try:
                regex = re.compile(pattern)
            except re.error:
                raise _Unsupported("pattern") from None

        def stringBounds(v: Any) -> bool:
            if type(v) is not str:
                return True
            n = len(v)
            if n < low or (high is not None and n > high):
                return False
            return regex is None or regex.search(v) is not None

        checks.append(stringBounds)

    # numbers
    bounds = [(_number(schema, k), k) for k in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum")]
    if any(b is not None for b, _ in bounds):
        minimum, maximum, exclusiveMinimum, exclusiveMaximum = (b for b, _ in bounds)

        def numberBounds(v: Any) -> bool:
            if not _isNumber(v):
                return True
            if minimum is not None and v < minimum:
                return False
            if maximum is not None and v > maximum:
                return False
            if exclusiveMinimum is not None and v <= exclusiveMinimum:
                return False
            if exclusiveMaximum is not None and v >= exclusiveMaximum:
                return False
            return True

        checks.append(numberBounds)

    # objects
    properties = schema.get("properties")
    required = schema.get("required")
    additional = schema.get("additionalProperties", True)
    minProperties, maxProperties = _count(schema, "minProperties"), _count(schema, "maxProperties")
    if properties is not None or required is not None or additional is not True \
            or minProperties is not None or maxProperties is not None:
        if properties is None:
            properties = {}
        if not isinstance(properties, Mapping) or any(type(k) is not str for k in properties):
            raise _Unsupported("properties")
        propertyChecks = {name: _compile(sub) for name, sub in properties.items()}
        if required is None:
            required = []
        if not isinstance(required, list) or any(type(r) is not str for r in required):
            raise _Unsupported("required")
        needed = tuple(required)
        if additional is False:
            extra: Optional[Predicate] = None
            closed = True
        else:
            extra = None if additional is True else _compile(additional)
            closed = False

        def objectRules(v: Any) -> bool:
            if type(v) is not dict:
                return True
            if minProperties is not None and len(v) < minProperties:
                return False
            if maxProperties is not None and len(v) > maxProperties:
                return False
            for name in needed:
                if name not in v:
                    return False
            for key, value in v.items():
                check = propertyChecks.get(key)
                if check is not None:
                    if not check(value):
                        return False
                elif closed:
                    return False
                elif extra is not None and not extra(value):
                    return False
            return True

        checks.append(objectRules)

    # arrays
    items = schema.get("items")
    minItems, maxItems = _count(schema, "minItems"), _count(schema, "maxItems")
    if items is not None or minItems is not None or maxItems is not None:
        itemCheck = None if items is None else _compile(items)

        def arrayRules(v: Any) -> bool:
            if type(v) is not list:
                return True
            if minItems is not None and len(v) < minItems:
                return False
            if maxItems is not None and len(v) > maxItems:
                return False
            return itemCheck is None or all(itemCheck(item) for item in v)

        checks.append(arrayRules)

    if not checks:
        return lambda v: True
    if len(checks) == 1:
        return checks[0]
    return lambda v: all(check(v) for check in checks)


def compileFastCheck(schema: Any) -> Optional[Predicate]:
    """
    Return a predicate that is C{True} only for instances valid against
    C{schema} (Draft 2020-12), or C{None} when C{schema} uses a keyword it
    does not handle. C{schema} is assumed to be a valid schema already.
    """
    if isinstance(schema, Mapping) and "$schema" in schema:
        if schema["$schema"] != _DIALECT:
            return None
        schema = {k: v for k, v in schema.items() if k != "$schema"}
    try:
        return _compile(schema)
    except (_Unsupported, RecursionError):
        return None


class SchemaChecker:
    """
    One tool schema: the fast predicate when there is one, jsonschema
    always behind it.
    """

    def __init__(self, schema: Mapping[str, Any], maxMessage: int = 2000) -> None:
        self.validator = Draft202012Validator(schema)
        self.fast = compileFastCheck(schema)
        self.maxMessage = maxMessage

    def problems(self, instance: Any) -> Optional[str]:
        """
        A readable description of what is wrong with C{instance} (the
        first five errors, by path), or C{None} when it is valid.
        """
        if self.fast is not None and self.fast(instance):
            return None
        errors: Sequence[Any] = sorted(self.validator.iter_errors(instance), key=lambda e: [str(p) for p in e.absolute_path])
        if not errors:
            return None
        parts = []
        for error in errors[:5]:
            where = "/".join(str(p) for p in error.absolute_path)
            parts.append(f"{where or '(root)'}: {error.message}")
        text = "; ".join(parts)
        if len(text) > self.maxMessage:
            text = text[: self.maxMessage - 3] + "..."
        return text
