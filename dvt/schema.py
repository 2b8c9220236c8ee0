"""A JSON Schema of params.yaml, derived from the config dataclasses (types and keys; ranges stay in them).

Snakemake validates its configuration against workflow/schemas/params.schema.yaml, which is this
schema written out (`python -m dvt.schema > workflow/schemas/params.schema.yaml`); a test keeps the
file equal to what the dataclasses say, so there is one source of truth.
"""

from __future__ import annotations

import dataclasses
import sys
import types
import typing
from typing import Any, Literal

import yaml

from dvt.config import _FLOAT, Config

# PyYAML reads `1e-3` as a string; the loader accepts such strings as floats, so the schema does too.
_NUMBER = {"anyOf": [{"type": "number"}, {"type": "string", "pattern": f"^\\s*{_FLOAT.pattern}\\s*$"}]}


def schema_of(tp: Any) -> dict[str, Any]:
    """The JSON Schema of one annotation of the config dataclasses."""
    origin = typing.get_origin(tp)
    if origin in (types.UnionType, typing.Union):
        options = [schema_of(a) for a in typing.get_args(tp) if a is not type(None)]
        return {"anyOf": [*options, {"type": "null"}]}
    if origin is Literal:
        return {"enum": list(typing.get_args(tp))}
    if origin is tuple:
        return {"type": "array", "items": schema_of(typing.get_args(tp)[0])}
    if origin is dict:
        return {"type": "object", "additionalProperties": schema_of(typing.get_args(tp)[1])}
    if dataclasses.is_dataclass(tp):
        hints = typing.get_type_hints(tp)
        props = {f.name: schema_of(hints[f.name]) for f in dataclasses.fields(tp)}
        return {"type": "object", "properties": props, "additionalProperties": False}
    simple = {bool: {"type": "boolean"}, int: {"type": "integer"}, str: {"type": "string"}, float: _NUMBER}
    if tp in simple:
        return dict(simple[tp])
    raise TypeError(f"config annotation not handled: {tp!r}")


def params_schema() -> dict[str, Any]:
    return {"$schema": "https://json-schema.org/draft/2020-12/schema",
            "description": "params.yaml of the DVT workflow (generated from dvt/config.py by `python -m dvt.schema`)",
            **schema_of(Config), "type": "object"}


def main() -> None:
    yaml.safe_dump(params_schema(), sys.stdout, sort_keys=False)


if __name__ == "__main__":
    main()
