"""The schema of every study's named results (results/<name>.json `values`).

Each study declares its results as a dataclass of `Results` in its own module: one field per
top-level key, its Python type and one line of help (`described(help)`), and the measures `lab2prod
compare` judges (latency, accuracy, size), so nothing reads meaning from a key's spelling. The
schema (JSON types and help) is derived from those fields: it is written once.

`record()` checks what a notebook records against its schema; `compare` asks `measure_kind`; the
report shows the help beside each value; the tests check every study's schema against a real run.
"""

from __future__ import annotations

import re
import types
import typing
from dataclasses import dataclass, field, fields
from fnmatch import fnmatchcase
from typing import ClassVar

from lab2prod.core.errors import Lab2ProdError

__all__ = ["Measure", "ResultSchema", "Results", "described", "json_types", "check_values", "MODEL_CARD"]

_JSON_TYPES = {"string": str, "integer": int, "number": (int, float), "boolean": bool, "object": dict,
               "array": list, "null": type(None)}
_PYTHON_TO_JSON = {str: "string", int: "integer", float: "number", bool: "boolean", dict: "object", list: "array",
                   tuple: "array", type(None): "null"}


@dataclass(frozen=True)
class Measure:
    """A quantity `compare` judges: `pattern` matches flattened result paths (`benchmark.rows[*].p99_ms`;
    `[*]` is one row of a list, keyed by its identifying columns) and `kind` says how:
    latency (a P99 judged with the body of its distribution), accuracy (higher is better, a fraction
    or points), size (bytes, lower is better)."""

    pattern: str
    kind: str

    def matches(self, path: str) -> bool:
        return fnmatchcase(re.sub(r"\[[^\]]*\]", "[*]", path), self.pattern.replace("[*]", "[[]*[]]"))


@dataclass(frozen=True)
class ResultSchema:
    """One study's results: {key: (JSON types separated by |, help)} and the measures in them."""

    name: str
    fields: dict[str, tuple[str, str]]
    measures: tuple[Measure, ...] = field(default_factory=tuple)

def described(help: str):
    """One field of a study's results: required, with its line of help."""
    return field(metadata={"help": help})


MODEL_CARD = "the model as loaded: spec, family, parameters, input shape, held-out accuracy"


def json_types(annotation) -> str:
    """The JSON types of a field's Python type, joined by |: `float | None` is number|null."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        return "|".join(json_types(arg) for arg in typing.get_args(annotation))
    kind = _PYTHON_TO_JSON.get(typing.get_origin(annotation) or annotation)
    if kind is None:
        raise TypeError(f"a results field cannot be {annotation!r}: use str, int, float, bool, dict, list or None")
    return kind


@dataclass(kw_only=True)
class Results:
    """A study's named results. A subclass names its study and declares one field per key with
    `described(help)`; `schema()` derives the JSON types and help from those fields."""

    study: ClassVar[str] = ""
    measures: ClassVar[tuple[Measure, ...]] = ()

    @classmethod
    def schema(cls) -> ResultSchema:
        hints = typing.get_type_hints(cls)
        return ResultSchema(cls.study, {f.name: (json_types(hints[f.name]), f.metadata.get("help", ""))
                                        for f in fields(cls)}, tuple(cls.measures))

    def values(self) -> dict:
        """The fields as a dict, key by key (values left as they are; record() makes them JSON)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if not cls.study:
            raise TypeError(f"{cls.__name__} must name its study: study: ClassVar[str] = '<short name>'")


def check_values(schema: ResultSchema | None, values: dict) -> None:
    """Raise Lab2ProdError naming the key when `values` (plain JSON values, what a notebook records)
    lacks a key of the schema, has one it does not declare, or one of the wrong JSON type. Values
    without a schema (a study added without a Results class) pass."""
    if schema is None:
        return
    name = schema.name
    missing = sorted(set(schema.fields) - set(values))
    extra = sorted(set(values) - set(schema.fields))
    if missing or extra:
        raise Lab2ProdError(f"results {name!r} do not follow their Results class: missing {missing}, undeclared "
                            f"{extra}; record what the class declares, or declare the new field")
    for key, (types_, _) in schema.fields.items():
        if not any(_is(values[key], kind) for kind in types_.split("|")):
            raise Lab2ProdError(f"results {name}.{key} is {type(values[key]).__name__}, the schema says {types_}")


def _is(value, kind: str) -> bool:
    if isinstance(value, bool):
        return kind == "boolean"
    return isinstance(value, _JSON_TYPES[kind])


def measure_kind(schema: ResultSchema | None, path: str) -> str | None:
    """latency, accuracy or size for a flattened results path the schema declares as a measure; None
    for everything else (context, not judged)."""
    for measure in schema.measures if schema else ():
        if measure.matches(path):
            return measure.kind
    return None
