"""dspydantic 0.1's ``dspydantic.extractor``: field descriptions of a Pydantic model by dotted path.

Paths are 0.1's: ``address.street``, and ``items.name`` for a field of the models in a list (we write
``items[].name`` elsewhere; both are accepted here). A Prompter applies descriptions itself
(``Prompter(field_descriptions=...)``, ``prompter.state``); these helpers are for code that used them
directly.
"""

from __future__ import annotations

import copy
import types
import typing
from collections.abc import Mapping
from typing import Any, get_args, get_origin

from pydantic import BaseModel, create_model

from ._schema import iter_field_paths, join_path, legacy_path, model_schema

__all__ = [
    "apply_optimized_descriptions", "create_optimized_model", "extract_field_descriptions", "extract_field_types",
]


def extract_field_descriptions(model: type[BaseModel], prefix: str = "") -> dict[str, str]:
    """Every field path -> its description, or the field's name when it has none (as 0.1 did)."""
    out: dict[str, str] = {}
    for f in iter_field_paths(model_schema(model)):
        path = legacy_path(f.path)
        out.setdefault(join_path(prefix, path), f.description or path.rsplit(".", 1)[-1])
    return out


def extract_field_types(model: type[BaseModel], prefix: str = "") -> dict[str, str]:
    """Every field path -> a readable name of its type (``"str"``, ``"int"``, ``"list[str]"``,
    ``'Literal["a", "b"]'``, ``'Enum["x", "y"]'``, a model's class name), recursing into nested models and the
    models inside lists, dicts and unions with 0.1's paths (``address.street``, ``items.name``)."""
    import enum

    out: dict[str, str] = {}

    def name_of(tp: Any) -> str:
        origin = get_origin(tp)
        if origin is typing.Literal:
            return "Literal[" + ", ".join(f'"{a}"' if isinstance(a, str) else str(a) for a in get_args(tp)) + "]"
        if isinstance(tp, type) and issubclass(tp, enum.Enum):
            values = [m.value for m in tp]
            return "Enum[" + ", ".join(f'"{v}"' if isinstance(v, str) else str(v) for v in values) + "]"
        if origin is None:
            return tp.__name__ if isinstance(tp, type) else str(tp).replace("typing.", "")
        args = get_args(tp)
        if origin in (typing.Union, types.UnionType):
            return "Union[" + ", ".join(name_of(a) for a in args) + "]"
        head = getattr(origin, "__name__", str(origin).replace("typing.", ""))
        return f"{head}[{', '.join(name_of(a) for a in args)}]" if args else head

    def walk(cls: type[BaseModel], at: str, seen: tuple[type, ...]) -> None:
        for field_name, info in cls.model_fields.items():
            path = f"{at}.{field_name}" if at else field_name
            out[path] = name_of(info.annotation)
            for inner in _models_in(info.annotation):
                if inner not in seen:  # a recursive model is named, not expanded forever
                    walk(inner, path, (*seen, inner))

    walk(model, prefix, (model,))
    return out


def _models_in(tp: Any) -> list[type[BaseModel]]:
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return [tp]
    return [m for arg in get_args(tp) for m in _models_in(arg)]


def apply_optimized_descriptions(model: type[BaseModel], optimized_descriptions: Mapping[str, str]) -> dict[str, Any]:
    """The model's JSON schema with these descriptions set (0.1 or our paths; ``$ref``s are inlined and
    titles dropped, unlike 0.1's schema: it is what the Prompter sends as structured-output schema)."""
    from ._compat import our_paths
    from ._schema import apply_descriptions, model_schema

    schema = model_schema(model)
    return apply_descriptions(schema, our_paths(schema, optimized_descriptions, "optimized_descriptions"))


def create_optimized_model(model: type[BaseModel], optimized_descriptions: Mapping[str, str]) -> type[BaseModel]:
    """A subclass of ``model`` (nested models too) whose fields carry these descriptions; validators,
    defaults and methods are inherited. Unknown paths are ignored, as in 0.1."""
    wanted = {legacy_path(str(k)): str(v) for k, v in optimized_descriptions.items()}
    return _rebuild(model, "", wanted, {})


def _rebuild(cls: type[BaseModel], prefix: str, wanted: dict[str, str], done: dict[tuple[type, str], Any]) -> Any:
    key = (cls, prefix)
    if key in done:
        return done[key]
    done[key] = cls  # a recursive model refers to itself unchanged
    fields: dict[str, Any] = {}
    for name, info in cls.model_fields.items():
        path = join_path(prefix, name)
        annotation = _substitute(info.annotation, path, wanted, done)
        description = wanted.get(path)
        if annotation is info.annotation and description is None:
            continue
        new_info = copy.copy(info)
        if description is not None:
            new_info.description = description
        fields[name] = (annotation, new_info)
    if not fields:
        done[key] = cls
        return cls
    new = create_model(cls.__name__, __base__=cls, __module__=cls.__module__, __doc__=cls.__doc__, **fields)
    done[key] = new
    return new


def _substitute(annotation: Any, path: str, wanted: dict[str, str], done: dict[tuple[type, str], Any]) -> Any:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return _rebuild(annotation, path, wanted, done)
    args = get_args(annotation)
    if not args:
        return annotation
    origin = get_origin(annotation)
    if origin is typing.Literal:
        return annotation
    new_args = tuple(_substitute(a, path, wanted, done) if isinstance(a, type) or get_args(a) else a for a in args)
    if all(n is a for n, a in zip(new_args, args, strict=True)):
        return annotation
    if origin is typing.Union or origin is types.UnionType:
        return typing.Union[new_args]  # noqa: UP007 -- built from a tuple
    if origin is typing.Annotated:
        return typing.Annotated[new_args]
    return origin[new_args] if len(new_args) > 1 else origin[new_args[0]]
