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
