"""Pydantic model <-> JSON schema, field paths, per-path descriptions, rebuilding a class from a schema.

Field paths are dotted: ``vendor``, ``address.city``; items of a list are ``items[].name``; values of a
``dict[str, Model]`` are ``prices{}.amount``. Everything per field is keyed by its path, never by position.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, Field, create_model

from .errors import ConfigurationError


def ensure_model(model: Any) -> type[BaseModel]:
    """Return ``model`` if it is a Pydantic model class, else raise a clear ConfigurationError."""
    if isinstance(model, type) and issubclass(model, BaseModel):
        return model
    if isinstance(model, BaseModel):
        raise ConfigurationError(
            f"model must be a Pydantic model class, not an instance of {type(model).__name__}; "
            f"pass {type(model).__name__} itself"
        )
    raise ConfigurationError(
        f"model must be a Pydantic model class (a subclass of pydantic.BaseModel), or None for free text; got {model!r}"
    )


def free_text_model() -> type[BaseModel]:
    """The model used when a Prompter has no model: a single free-text ``output`` field."""
    return create_model("Output", output=(str, Field(description="The answer as free text")))


@dataclass(frozen=True, slots=True)
class FieldPath:
    path: str
    description: str | None
    type_hint: str
    required: bool


def inline_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """Return ``schema`` with every ``$ref`` into ``$defs`` inlined (recursive references are kept)."""
    defs = schema.get("$defs", {})

    def walk(node: Any, stack: tuple[str, ...]) -> Any:
        if isinstance(node, list):
            return [walk(x, stack) for x in node]
        if not isinstance(node, dict):
            return node
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/$defs/"):
            name = ref.split("/")[-1]
            if name in stack:  # recursive model: keep the reference
                return dict(node)
            target = walk(defs.get(name, {}), (*stack, name))
            merged = {k: v for k, v in node.items() if k != "$ref"}
            return {**target, **merged}
        return {k: walk(v, stack) for k, v in node.items() if k != "$defs"}

    out: dict[str, Any] = walk(schema, ())
    if defs and "$ref" in json.dumps(out):
        out["$defs"] = defs  # recursive models still need their definitions
    return out


def _children(node: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(suffix, child schema) pairs below an (inlined) schema node, looking through anyOf/Optional."""
    out: list[tuple[str, dict[str, Any]]] = []
    variants = node.get("anyOf") or node.get("oneOf") or [node]
    for v in variants:
        if not isinstance(v, dict):
            continue
        if v.get("type") == "object" and "properties" in v:
            out.append(("", v))
        elif v.get("type") == "array" and isinstance(v.get("items"), dict):
            out.append(("[]", v["items"]))
        elif v.get("type") == "object" and isinstance(v.get("additionalProperties"), dict):
            out.append(("{}", v["additionalProperties"]))
    return out


def _type_hint(node: dict[str, Any]) -> str:
    if "enum" in node:
        return "one of " + ", ".join(json.dumps(x) for x in node["enum"])
    if "const" in node:
        return f"const {json.dumps(node['const'])}"
    if "anyOf" in node:
        return " | ".join(_type_hint(v) for v in node["anyOf"] if isinstance(v, dict))
    t = node.get("type", "any")
    if t == "array":
        return f"list[{_type_hint(node.get('items', {}))}]"
    if t == "string" and "format" in node:
        return f"string ({node['format']})"
    if t == "object" and "properties" in node:
        return "object"
    return str(t)


def walk_fields(schema: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any], bool]]:
    """``(path, node, required)`` for every field of an (inlined) object schema, parents before children;
    looks through ``Optional``/unions, list items (``[]``) and dict values (``{}``)."""

    def visit(obj: dict[str, Any], prefix: str) -> Iterator[tuple[str, dict[str, Any], bool]]:
        required = set(obj.get("required", []))
        for name, sub in (obj.get("properties") or {}).items():
            if not isinstance(sub, dict):
                continue
            path = f"{prefix}{name}"
            yield path, sub, name in required
            for suffix, child in _children(sub):
                if "properties" in child:
                    yield from visit(child, f"{path}{suffix}.")
                else:  # list of lists, dict of lists, ...
                    for s2, c2 in _children(child):
                        if "properties" in c2:
                            yield from visit(c2, f"{path}{suffix}{s2}.")

    yield from visit(schema, "")


def iter_field_paths(schema: dict[str, Any]) -> list[FieldPath]:
    """Every field path of an (inlined) object schema, parents before children."""
    return [
        FieldPath(path, node.get("description"), _type_hint(node), required)
        for path, node, required in walk_fields(schema)
    ]


def apply_descriptions(schema: dict[str, Any], descriptions: dict[str, str]) -> dict[str, Any]:
    """Return a copy of an inlined schema with each path's description set (unknown paths are ignored)."""
    if not descriptions:
        return schema
    out = copy.deepcopy(schema)
    for path, node, _ in walk_fields(out):
        if path in descriptions:
            node["description"] = descriptions[path]
    return out


def _strip_titles(node: Any) -> Any:
    """Drop the auto-generated ``title`` keys: they cost prompt tokens and carry nothing."""
    if isinstance(node, list):
        return [_strip_titles(x) for x in node]
    if not isinstance(node, dict):
        return node
    out = {}
    for k, v in node.items():
        if k == "title" and isinstance(v, str):
            continue
        if k == "properties" and isinstance(v, dict):
            out[k] = {pk: _strip_titles(pv) for pk, pv in v.items()}
        else:
            out[k] = _strip_titles(v)
    return out


def model_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The model's validation JSON schema, ``$ref``s inlined and titles dropped."""
    return _strip_titles(inline_schema(model.model_json_schema()))


def default_descriptions(schema: dict[str, Any]) -> dict[str, str]:
    """Path -> description as written on the model (only the described fields)."""
    return {f.path: f.description for f in iter_field_paths(schema) if f.description}


def fingerprint(schema: dict[str, Any]) -> str:
    """A short, stable hash of a schema's *structure* (descriptions excluded)."""

    def strip(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: strip(v) for k, v in sorted(node.items()) if k not in ("description", "title")}
        if isinstance(node, list):
            return [strip(x) for x in node]
        return node

    return hashlib.sha256(json.dumps(strip(schema), sort_keys=True).encode()).hexdigest()[:16]


# -- numbers in a constrained-decoding grammar ----------------------------------------------------------

#: what a number field's value may be written as under a grammar: digits with the separators documents use
NUMBER_TEXT_PATTERN = r"^-?[0-9][0-9.,' ]{0,23}$"


def numbers_as_text(schema: dict[str, Any]) -> dict[str, Any]:
    """A copy of a JSON schema for *grammar-constrained decoding* where every ``number``/``integer`` node is a
    string of digits and separators (:data:`NUMBER_TEXT_PATTERN`) instead.

    A JSON-number grammar cannot hold ``1.200,50``: a small model copying it from the document skips the
    comma and writes ``1.20050`` (1.2005), or stops at ``2`` of ``2,380.00``. As text it copies the number
    as written, and the answer's parser reads it (:func:`dspydantic._numbers.parse_number`). Only the
    grammar changes: the prompt and the validation still use the model's schema. (A separate function for
    the grammar code of the local backend, which calls it.)"""

    def walk(node: Any) -> Any:
        if isinstance(node, list):
            return [walk(x) for x in node]
        if not isinstance(node, dict):
            return node
        out: dict[str, Any] = {}
        for key, value in node.items():
            if key in ("enum", "const", "default", "examples"):
                out[key] = value
            elif key in ("properties", "$defs", "definitions", "patternProperties") and isinstance(value, dict):
                out[key] = {name: walk(sub) for name, sub in value.items()}
            else:
                out[key] = walk(value)
        typ = out.get("type")
        numeric = {"number", "integer"}
        if typ in numeric and not {"enum", "const"} & out.keys():
            kept = {k: v for k, v in out.items() if k in ("description", "title")}
            return {**kept, "type": "string", "pattern": NUMBER_TEXT_PATTERN}
        if isinstance(typ, list) and numeric & set(typ):
            rest = {k: v for k, v in out.items() if k != "type"}
            others = [t for t in typ if t not in numeric]
            branches = [{"type": "string", "pattern": NUMBER_TEXT_PATTERN}, *({**rest, "type": t} for t in others)]
            return {"anyOf": branches}
        return out

    result: dict[str, Any] = walk(schema)
    return result


def numbers_from_text(text: str, schema: dict[str, Any]) -> str:
    """The answer of a grammar built by :func:`numbers_as_text`, with each number written as text turned back
    into a JSON number where ``schema`` (the request's, before :func:`numbers_as_text`) wants one, so the
    backend's answer fits the schema it was asked for (``{"total": "1.200,50"}`` -> ``{"total": 1200.5}``).
    Text that is not one JSON object, or has no such value, is returned unchanged; a string that writes no
    number stays a string (validation then refuses it and the Prompter re-asks)."""
    from ._numbers import coerce_number_strings

    try:
        obj = json.loads(text)
    except ValueError:
        return text
    if not isinstance(obj, dict):
        return text
    fixed, changed = coerce_number_strings(obj, inline_schema(schema))
    return json.dumps(fixed, ensure_ascii=False) if changed else text
