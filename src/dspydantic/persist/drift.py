"""Schema drift: how the schema a prompter was saved with differs from the model it is loaded with.

Everything is keyed by a field's dotted path (``items[].name``, ``prices{}.amount``), so descriptions and
verdicts stay with their fields when fields move.
"""

from __future__ import annotations

from typing import Any

from .._schema import _type_hint, ancestor_paths, walk_fields

__all__ = ["field_nodes", "schema_drift"]

# JSON schema keys that constrain a value without changing its type (a change is "compatible")
_CONSTRAINT_KEYS = (
    "minLength", "maxLength", "pattern", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum",
    "multipleOf", "minItems", "maxItems", "uniqueItems", "minProperties", "maxProperties",
)

def field_nodes(schema: dict[str, Any]) -> dict[str, tuple[dict[str, Any], bool]]:
    """path -> (schema node, required) for every field of an inlined object schema."""
    return {path: (node, required) for path, node, required in walk_fields(schema)}


def _variants(node: Any) -> list[dict[str, Any]]:
    if not isinstance(node, dict):
        return [{}]
    alts = node.get("anyOf") or node.get("oneOf")
    if isinstance(alts, list) and alts:
        out: list[dict[str, Any]] = []
        for a in alts:
            out.extend(_variants(a))
        return out
    t = node.get("type")
    if isinstance(t, list):
        return [{**node, "type": x} for x in t]
    return [node]


_SAME, _WIDER, _CHANGED = 0, 1, 2


def _values(v: dict[str, Any]) -> list[Any] | None:
    if "const" in v:
        return [v["const"]]
    if isinstance(v.get("enum"), list):
        return list(v["enum"])
    return None


def _fit_one(s: dict[str, Any], c: dict[str, Any]) -> int:
    """How saved variant ``s`` fits current variant ``c``: same, widened, or changed (does not fit)."""
    if not s or not c:  # "any" on either side
        return _SAME if s == c else (_WIDER if not c else _CHANGED)
    if "$ref" in s or "$ref" in c:
        return _SAME if s.get("$ref") == c.get("$ref") else _CHANGED
    st, ct = s.get("type"), c.get("type")
    result = _SAME
    if st != ct:
        if st == "integer" and ct == "number":
            result = _WIDER
        elif st is None and ct is None:
            pass
        else:
            return _CHANGED
    sf, cf = s.get("format"), c.get("format")
    if sf != cf:
        if cf is None:
            result = _WIDER
        else:
            return _CHANGED
    sv, cv = _values(s), _values(c)
    if sv != cv:
        if cv is None:
            result = _WIDER
        elif sv is None or not all(x in cv for x in sv):
            return _CHANGED
        elif sorted(map(repr, sv)) != sorted(map(repr, cv)):
            result = _WIDER
    if st == "array":
        result = max(result, _fit(s.get("items", {}), c.get("items", {})))
    if st == "object":
        sp, cp = "properties" in s, "properties" in c
        if sp != cp:
            return _CHANGED
        if not sp:
            sa, ca = s.get("additionalProperties"), c.get("additionalProperties")
            if isinstance(sa, dict) or isinstance(ca, dict):
                result = max(result, _fit(sa if isinstance(sa, dict) else {}, ca if isinstance(ca, dict) else {}))
    return result


def _fit(saved: Any, current: Any) -> int:
    sv, cv = _variants(saved), _variants(current)
    worst = _SAME
    for s in sv:
        best = min((_fit_one(s, c) for c in cv), default=_CHANGED)
        if best == _CHANGED:
            return _CHANGED
        worst = max(worst, best)
    if worst == _SAME and len(cv) > len(sv):
        worst = _WIDER
    return worst


def _constraints(node: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for i, v in enumerate(_variants(node)):
        for k in _CONSTRAINT_KEYS:
            if k in v:
                out[f"{i}:{k}"] = v[k]
    for k in _CONSTRAINT_KEYS:
        if k in node:
            out[k] = node[k]
    return out


def schema_drift(saved: dict[str, Any], current: dict[str, Any]) -> tuple[list[str], list[str]]:
    """Differences between a saved and a current (inlined) schema: ``(compatible, incompatible)``.

    Compatible: an added optional field, a changed description, default or constraint, a widened type
    (``int`` -> ``float``, a value added to a ``Literal``, ``X`` -> ``X | None``), a field that became
    optional. Incompatible: a removed field, a changed type, a new required field, a field that became
    required. Each entry names the field by its dotted path.
    """
    old, new = field_nodes(saved), field_nodes(current)
    compatible: list[str] = []
    incompatible: list[str] = []
    broken: set[str] = set()  # paths reported removed/changed: their sub-fields are not reported again
    for path, (node, required) in old.items():
        if any(a in broken for a in ancestor_paths(path)):
            continue
        if path not in new:
            incompatible.append(f"{path}: removed")
            broken.add(path)
            continue
        cnode, crequired = new[path]
        fit = _fit(node, cnode)
        if fit == _CHANGED:
            incompatible.append(f"{path}: type changed from {_type_hint(node)} to {_type_hint(cnode)}")
            broken.add(path)
            continue
        if fit == _WIDER:
            compatible.append(f"{path}: type widened from {_type_hint(node)} to {_type_hint(cnode)}")
        if crequired and not required:
            incompatible.append(f"{path}: became required")
        elif required and not crequired:
            compatible.append(f"{path}: became optional")
        if node.get("description") != cnode.get("description"):
            compatible.append(f"{path}: description changed")
        if node.get("default") != cnode.get("default"):
            compatible.append(f"{path}: default changed")
        if _constraints(node) != _constraints(cnode):
            compatible.append(f"{path}: constraints changed")
    added = {p for p in new if p not in old}
    for path in new:
        if path not in added or any(a in added or a in broken for a in ancestor_paths(path)):
            continue  # a sub-field of a new (or changed) field is reported with it
        if new[path][1]:
            incompatible.append(f"{path}: new required field")
        else:
            compatible.append(f"{path}: added optional field")
    return compatible, incompatible


