"""Pydantic model <-> JSON schema, field paths, per-path descriptions, rebuilding a class from a schema.

Field paths are dotted: ``vendor``, ``address.city``; items of a list are ``items[].name``; values of a
``dict[str, Model]`` are ``prices{}.amount``. Everything per field is keyed by its path, never by position.
This module is the one source of that grammar: :func:`walk_fields` lists a schema's paths, :func:`join_path`,
:func:`ancestor_paths`, :func:`owning_path` and :func:`schema_path` compute with them, :func:`legacy_path`
translates to dspydantic 0.1's form.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Callable, Iterator
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


#: the class attribute that marks the free-text model (a flag on the class, not a guess from its fields; not a
#: base class either: defining a model class at import would make pydantic load its plugins up front)
_FREE_TEXT_FLAG = "__dspydantic_free_text__"


def free_text_model() -> type[BaseModel]:
    """The model used when a Prompter has no model: a single free-text ``output`` field, flagged so that an
    answer which is not JSON is the ``output`` itself (a user's own model is never free text, whatever its
    fields are called)."""
    model = create_model("Output", output=(str, Field(description="The answer as free text")))
    setattr(model, _FREE_TEXT_FLAG, True)
    return model


def is_free_text(model: type[BaseModel]) -> bool:
    """Whether ``model`` is the free-text model (see :func:`free_text_model`), or derived from it."""
    return bool(getattr(model, _FREE_TEXT_FLAG, False))


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


def join_path(parent: str, name: str) -> str:
    """``parent.name`` (just ``name`` at the top)."""
    return f"{parent}.{name}" if parent else name


def ancestor_paths(path: str) -> list[str]:
    """Field paths above ``path``: ``a.b[].c`` -> ``["a", "a.b"]``."""
    parts = path.split(".")
    return [".".join(parts[:i]).removesuffix("[]").removesuffix("{}") for i in range(1, len(parts))]


def owning_path(path: str, known: set[str] | frozenset[str]) -> str | None:
    """The deepest field path of ``known`` that is ``path`` or contains it (``tags[]`` -> ``tags``)."""
    p = path
    while p:
        if p in known:
            return p
        cut = max(p.rfind("."), p.rfind("["), p.rfind("{"))
        if cut <= 0:
            return None
        p = p[:cut]
    return None


def schema_path(segments: tuple[str | int, ...], known: set[str] | frozenset[str]) -> str:
    """The field path of an instance path (keys and list indices): list indices become ``[]``, keys of a
    ``dict[str, X]`` field ``{}``; ``known`` are the field paths of the schema (from :func:`walk_fields`)."""
    cur = ""
    for seg in segments:
        if isinstance(seg, int):
            cur += "[]"
            continue
        candidate = join_path(cur, seg)
        cur = candidate if candidate in known else f"{cur}{{}}"
    return cur


def legacy_path(path: str) -> str:
    """dspydantic 0.1's form of a field path: no ``[]`` / ``{}`` (``items[].name`` -> ``items.name``)."""
    return path.replace("[]", "").replace("{}", "")


def legacy_paths(schema: dict[str, Any]) -> dict[str, str]:
    """0.1 field path -> our path, for every field of an (inlined) schema (the first path wins a clash)."""
    out: dict[str, str] = {}
    for path, _, _ in walk_fields(schema):
        out.setdefault(legacy_path(path), path)
    return out


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

    def number_node(out: dict[str, Any]) -> dict[str, Any]:
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

    return map_schema(schema, number_node)


def map_schema(schema: dict[str, Any], change: Callable[[dict[str, Any]], dict[str, Any]]) -> dict[str, Any]:
    """A copy of a JSON schema with ``change`` applied to every schema node, children first. Literal values
    (``enum``, ``const``, ``default``, ``examples``) are not walked, and the names under ``properties`` /
    ``$defs`` are names, not keywords. The one walker of the grammar transforms."""

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
        return change(out)

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
