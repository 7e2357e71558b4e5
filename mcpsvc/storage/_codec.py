# -*- test-case-name: mcpsvc.storage.test.test_memory -*-
"""
Flattening of the storage records (L{mcpsvc.storage.interfaces}) into rows
(SQLite) and string hashes (Redis), and back.

Every record is a flat C{attrs} class whose fields are one of: C{str},
C{Optional[str]}, C{float}, C{int}, C{bool} or C{Mapping[str, Any]}; mappings
travel as JSON text.
"""

from __future__ import annotations

import json
from typing import Any, Dict, List, Mapping, Tuple, Type, TypeVar

import attrs

__all__ = ["fieldKinds", "toRow", "fromRow", "toStrings", "fromStrings"]

T = TypeVar("T")

_KINDS = {
    "str": "str",
    "Optional[str]": "optstr",
    "float": "float",
    "int": "int",
    "bool": "bool",
    "Mapping[str, Any]": "json",
}

_cache: Dict[type, List[Tuple[str, str]]] = {}


def fieldKinds(cls: type) -> List[Tuple[str, str]]:
    """
    Return C{(name, kind)} for every field of the record class C{cls}.
    """
    kinds = _cache.get(cls)
    if kinds is None:
        kinds = []
        for a in attrs.fields(cls):
            annotation = a.type if isinstance(a.type, str) else getattr(a.type, "__name__", "")
            kind = _KINDS.get(annotation.replace('"', ""))
            if kind is None:  # pragma: no cover - a new record shape
                raise TypeError(f"unsupported field type {a.type!r} of {cls.__name__}.{a.name}")
            kinds.append((a.name, kind))
        _cache[cls] = kinds
    return kinds


def toRow(record: Any) -> Dict[str, Any]:
    """
    Flatten C{record} into SQLite values (C{None}, C{str}, C{float}, C{int}).
    """
    row: Dict[str, Any] = {}
    for name, kind in fieldKinds(type(record)):
        value = getattr(record, name)
        if kind == "json":
            value = json.dumps(dict(value), sort_keys=True, separators=(",", ":"))
        elif kind == "bool":
            value = int(bool(value))
        elif kind == "float":
            value = float(value)
        row[name] = value
    return row


def fromRow(cls: Type[T], row: Mapping[str, Any]) -> T:
    """
    Build a C{cls} from a row made by L{toRow} (extra columns are ignored).
    """
    values: Dict[str, Any] = {}
    for name, kind in fieldKinds(cls):
        value = row[name]
        if kind == "json":
            value = json.loads(value)
        elif kind == "bool":
            value = bool(value)
        elif kind == "float":
            value = float(value)
        elif kind == "int":
            value = int(value)
        values[name] = value
    return cls(**values)  # type: ignore[call-arg]


def toStrings(record: Any) -> Dict[str, str]:
    """
    Flatten C{record} into a string hash; C{None} fields are left out.
    Floats use C{repr}, which round-trips exactly.
    """
    out: Dict[str, str] = {}
    for name, value in toRow(record).items():
        if value is None:
            continue
        out[name] = repr(value) if isinstance(value, float) else str(value)
    return out


def fromStrings(cls: Type[T], mapping: Mapping[str, str]) -> T:
    """
    Build a C{cls} from a hash made by L{toStrings} (extra fields ignored).
    """
    row: Dict[str, Any] = {}
    defaults = {a.name: a.default for a in attrs.fields(cls)}
    for name, kind in fieldKinds(cls):
        value: Any = mapping.get(name)
        if value is None:
            default = defaults.get(name, attrs.NOTHING)
            # a field added after the record was written: its default
            row[name] = None if kind == "optstr" or default is attrs.NOTHING else default
            continue
        if kind == "bool":
            value = value not in ("0", "", "false")
        row[name] = value
    return fromRow(cls, row)
