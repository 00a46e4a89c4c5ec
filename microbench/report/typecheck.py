"""Checking a JSON value against a frozen dataclass: required fields present, each of its
declared type (an int fits float; a bool fits neither), with one-line messages that name where
in the file the value sits. The run schema (report/schema.py) is built on it."""
from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any


def build_part(cls, value, where: str, fail):
    if isinstance(cls, list):
        if not isinstance(value, list) or not value:
            fail(f"'{where}' is {describe(value)}; it needs at least one entry")
        return [build(cls[0], v, f"{where}[{i}]", fail) for i, v in enumerate(value)]
    return build(cls, value, where, fail)


def build(cls, value, where: str, fail):
    """cls(**value) after checking that value is an object holding cls's required fields with
    the declared types; unknown keys are ignored."""
    if not isinstance(value, dict):
        fail(f"'{where}' is {describe(value)}, where an object belongs")
    hints = typing.get_type_hints(cls)
    kw = {}
    for f in dataclasses.fields(cls):
        if f.name == "raw":
            continue
        if f.name not in value:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                fail(f"'{where}' has no '{f.name}'")
            continue
        v = value[f.name]
        if not fits(v, hints[f.name]):
            fail(f"'{where}.{f.name}' is {describe(v)}, where {type_name(hints[f.name])} belongs")
        kw[f.name] = v
    return cls(**kw)


def fits(v, tp) -> bool:
    """Whether a JSON value fits a type hint (an int fits float; a bool fits neither)."""
    if tp is Any:
        return True
    if tp is type(None):
        return v is None
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return any(fits(v, a) for a in typing.get_args(tp))
    if origin is list:
        (item,) = typing.get_args(tp)
        return isinstance(v, list) and all(fits(x, item) for x in v)
    if tp is float:
        return isinstance(v, (int, float)) and not isinstance(v, bool)
    if tp is int:
        return isinstance(v, int) and not isinstance(v, bool)
    return isinstance(v, tp)


def type_name(tp) -> str:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(type_name(a) for a in typing.get_args(tp))
    if origin is list:
        return f"a list of {type_name(typing.get_args(tp)[0])}s"
    return {float: "a number", int: "an integer", str: "a string", bool: "true or false",
            dict: "an object", list: "a list", type(None): "null"}.get(tp, getattr(tp, "__name__", str(tp)))


def json_name(v) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "true or false",
            type(None): "null"}.get(type(v), "a number")


def describe(v) -> str:
    text = repr(v)
    shown = text if len(text) <= 40 else text[:37] + "..."
    if isinstance(v, (dict, list)) and not v:
        return "empty"
    return f"{json_name(v)} ({shown})" if not isinstance(v, (dict, list)) else json_name(v)
