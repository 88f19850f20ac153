"""Rebuild a Pydantic model class from a saved JSON schema.

Used by :func:`dspydantic._persist.load_prompter` when no ``model=`` is given. The rebuilt class validates
what the original validated for the common field types: ``str``/``int``/``float``/``bool``, ``Optional``,
``Literal``/enums (as ``Literal``), ``date``/``datetime``/``time``/``timedelta``/``UUID`` (from ``format``),
``Decimal`` (``number | string``), nested objects, lists, ``dict[str, ...]``, defaults, descriptions and the
usual constraints (lengths, bounds, pattern, item counts). Anything unknown becomes ``Any`` rather than
failing: the saved schema is still what the LM is shown.
"""

from __future__ import annotations

import datetime as dt
import keyword
import re
import uuid
from decimal import Decimal
from typing import Annotated, Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema, create_model

from .errors import PersistenceError

__all__ = ["rebuild_model"]

_FORMATS: dict[str, Any] = {
    "date": dt.date,
    "date-time": dt.datetime,
    "time": dt.time,
    "duration": dt.timedelta,
    "uuid": uuid.UUID,
}
_SIMPLE: dict[str, Any] = {"string": str, "integer": int, "number": float, "boolean": bool, "null": type(None)}
_STRING_CONSTRAINTS = {"minLength": "min_length", "maxLength": "max_length", "pattern": "pattern"}
_NUMBER_CONSTRAINTS = {
    "minimum": "ge",
    "maximum": "le",
    "exclusiveMinimum": "gt",
    "exclusiveMaximum": "lt",
    "multipleOf": "multiple_of",
}
_ARRAY_CONSTRAINTS = {"minItems": "min_length", "maxItems": "max_length"}
_OBJECT_CONSTRAINTS = {"minProperties": "min_length", "maxProperties": "max_length"}
_RESERVED = set(dir(BaseModel))


def _pascal(name: str) -> str:
    words = re.split(r"[^A-Za-z0-9]+", name)
    out = "".join(w[:1].upper() + w[1:] for w in words if w)
    if not out or not out[0].isalpha():
        out = "M" + out
    return out


def _identifier(name: str) -> str:
    """A valid Python class name derived from ``name``."""
    cleaned = re.sub(r"[^A-Za-z0-9_]", "_", name) or "Model"
    if cleaned[0].isdigit():
        cleaned = "M" + cleaned
    return cleaned


class _Builder:
    def __init__(self, schema: dict[str, Any]) -> None:
        self.defs: dict[str, Any] = dict(schema.get("$defs") or {})
        self.models: dict[str, type[BaseModel]] = {}
        self.building: set[str] = set()
        self.names: set[str] = set()
        self.built: list[type[BaseModel]] = []

    # -- naming --------------------------------------------------------------------------------------
    def unique(self, name: str) -> str:
        base = _identifier(name)
        out, n = base, 2
        while out in self.names:
            out, n = f"{base}{n}", n + 1
        self.names.add(out)
        return out

    # -- types ---------------------------------------------------------------------------------------
    def ref(self, ref: str) -> Any:
        if not ref.startswith("#/$defs/"):
            return Any  # a reference we cannot follow: accept anything
        name = ref.split("/")[-1]
        if name in self.models:
            return self.models[name]
        if name in self.building:  # recursive model: forward reference, resolved by model_rebuild
            return _identifier(name)
        target = self.defs.get(name)
        if not isinstance(target, dict):
            raise PersistenceError(f"the saved schema refers to #/$defs/{name}, which it does not define")
        self.building.add(name)
        try:
            if "properties" in target:
                model = self.model(target, _identifier(name), register=name)
                return model
            return self.type_of(target, name)
        finally:
            self.building.discard(name)

    def type_of(self, node: Any, hint: str) -> Any:
        """The Python type (with constraints as ``Annotated`` metadata) of one schema node."""
        if node is True or node == {}:
            return Any
        if not isinstance(node, dict):
            return Any
        if "$ref" in node:
            return self.ref(str(node["$ref"]))
        variants = node.get("anyOf") or node.get("oneOf")
        if isinstance(variants, list) and variants:
            return self.union(variants, hint)
        if "const" in node:
            return Literal[node["const"]]
        if isinstance(node.get("enum"), list) and node["enum"]:
            values = tuple(node["enum"])
            lit: Any = Literal[values]
            if len(values) == 1:  # keep the saved schema shape ({"enum": [v]}, not {"const": v})
                shape = {k: node[k] for k in ("enum", "type") if k in node}
                return Annotated[lit, WithJsonSchema(shape)]
            return lit
        t = node.get("type")
        if isinstance(t, list):
            return self.union([{**node, "type": x} for x in t], hint)
        if t == "object":
            if "properties" in node:
                return self.model(node, hint)
            extra = node.get("additionalProperties")
            value = self.type_of(extra, f"{hint}Value") if isinstance(extra, dict) else Any
            return self.constrained(dict[str, value], node, _OBJECT_CONSTRAINTS)  # type: ignore[valid-type]
        if t == "array":
            items = node.get("items")
            item = self.type_of(items, f"{hint}Item") if isinstance(items, dict) else Any
            return self.constrained(list[item], node, _ARRAY_CONSTRAINTS)  # type: ignore[valid-type]
        if t == "string":
            fmt = node.get("format")
            if isinstance(fmt, str) and fmt in _FORMATS:
                return _FORMATS[fmt]
            base = self.constrained(str, node, _STRING_CONSTRAINTS)
            if isinstance(fmt, str):  # a format we do not map (email, uri, ...): keep it in the schema
                shape = {k: v for k, v in node.items() if k not in ("description", "default", "title")}
                return Annotated[base, WithJsonSchema(shape)]
            return base
        if t in ("integer", "number"):
            return self.constrained(_SIMPLE[t], node, _NUMBER_CONSTRAINTS)
        if t in _SIMPLE:
            return _SIMPLE[t]
        return Any

    def union(self, variants: list[Any], hint: str) -> Any:
        dicts = [v for v in variants if isinstance(v, dict)]
        nullable = any(v.get("type") == "null" for v in dicts)
        rest = [v for v in dicts if v.get("type") != "null"]
        kinds = sorted(str(v.get("type")) for v in rest)
        decimal_like = kinds == ["number", "string"] and not any(
            "format" in v or "enum" in v or "const" in v for v in rest
        )
        if decimal_like:
            inner: Any = Decimal
        elif not rest:
            inner = type(None)
        elif len(rest) == 1:
            inner = self.type_of(rest[0], hint)
        else:
            types = tuple(self.type_of(v, hint) for v in rest)
            inner = Union[types]  # noqa: UP007 - built at run time from a tuple
        if nullable and inner is not type(None):
            return Optional[inner]  # noqa: UP045 - may wrap a forward-reference string
        return inner

    @staticmethod
    def constrained(base: Any, node: dict[str, Any], mapping: dict[str, str]) -> Any:
        kwargs = {kw: node[key] for key, kw in mapping.items() if key in node}
        return Annotated[base, Field(**kwargs)] if kwargs else base

    # -- models --------------------------------------------------------------------------------------
    def model(self, node: dict[str, Any], name: str, *, register: str | None = None) -> type[BaseModel]:
        class_name = self.unique(name)
        required = set(node.get("required") or [])
        fields: dict[str, Any] = {}
        for i, (fname, sub) in enumerate((node.get("properties") or {}).items()):
            sub = sub if isinstance(sub, dict) else {}
            annotation = self.type_of(sub, f"{class_name}{_pascal(fname)}")
            kwargs: dict[str, Any] = {}
            if isinstance(sub.get("description"), str):
                kwargs["description"] = sub["description"]
            if fname in required:
                pass
            elif "default" in sub:
                kwargs["default"] = sub["default"]
            elif sub.get("type") == "array":
                kwargs["default_factory"] = list
            elif sub.get("type") == "object" and "properties" not in sub:
                kwargs["default_factory"] = dict
            else:
                kwargs["default"] = None
            py_name = fname
            if not fname.isidentifier() or keyword.iskeyword(fname) or fname.startswith("_") or fname in _RESERVED:
                py_name = f"field_{i}"
                while py_name in fields or py_name in (node.get("properties") or {}):
                    py_name += "_"
                kwargs["alias"] = fname
            fields[py_name] = (annotation, Field(**kwargs))
        config = ConfigDict(populate_by_name=True)
        if node.get("additionalProperties") is False:
            config = ConfigDict(populate_by_name=True, extra="forbid")
        doc = node.get("description")
        model: type[BaseModel] = create_model(
            class_name, __config__=config, __doc__=doc if isinstance(doc, str) else None, **fields
        )
        if register is not None:
            self.models[register] = model
        self.built.append(model)
        return model


def rebuild_model(schema: dict[str, Any], name: str = "Model") -> type[BaseModel]:
    """A Pydantic model class equivalent to the object ``schema`` (an inlined or ``$defs`` JSON schema).

    ``name`` is the class name of the root model; nested models are named after their path.
    Raises :class:`PersistenceError` when the schema is not an object schema with properties.
    """
    if not isinstance(schema, dict) or schema.get("type", "object") != "object" or not isinstance(
        schema.get("properties"), dict
    ):
        raise PersistenceError(
            "the saved model schema is not an object schema with properties; pass model=YourModel to load()"
        )
    builder = _Builder(schema)
    root = builder.model(schema, name)
    namespace = {_identifier(k): v for k, v in builder.models.items()}
    for model in builder.built:
        try:
            model.model_rebuild(force=True, _types_namespace=namespace)
        except Exception as exc:  # pydantic raises several error types for unresolvable schemas
            raise PersistenceError(f"could not rebuild a model class from the saved schema: {exc}") from exc
    return root
