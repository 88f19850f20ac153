"""Merging the extractions of a long document's chunks into one, guided by the model's JSON schema.

Scalars are voted (most chunks, then the most confident chunk, then the earliest); objects are merged field by
field; lists are the union of their elements (an element subsumed by a fuller one is dropped); a union type
follows the variant most chunks' values match.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Sequence
from typing import Any

from dspydantic.errors import ConfigurationError

__all__ = ["merge_extractions"]


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def _is_missing(value: Any) -> bool:
    """``None`` and blank strings carry no information and never override a value."""
    return value is None or (isinstance(value, str) and not value.strip())


def _vote_key(value: Any) -> str:
    """Values that agree: strings compare case- and whitespace-insensitively, others by canonical JSON."""
    if isinstance(value, str):
        return "s:" + " ".join(value.split()).casefold()
    return "j:" + _canonical(value)


class _Merger:
    def __init__(self, schema: dict[str, Any], confidences: Sequence[float]) -> None:
        self.defs: dict[str, Any] = {}
        for key in ("$defs", "definitions"):
            if isinstance(schema.get(key), dict):
                self.defs.update(schema[key])
        self.root = schema
        self.conf = confidences

    # -- schema helpers -------------------------------------------------------------------------

    def resolve(self, schema: Any, depth: int = 0) -> dict[str, Any]:
        if not isinstance(schema, dict) or depth > 50:
            return {}
        ref = schema.get("$ref")
        if isinstance(ref, str):
            target: Any = None
            if ref == "#":
                target = self.root
            else:
                name = ref.rsplit("/", 1)[-1]
                target = self.defs.get(name)
            rest = {k: v for k, v in schema.items() if k != "$ref"}
            resolved = self.resolve(target, depth + 1)
            return {**resolved, **rest} if rest else resolved
        all_of = schema.get("allOf")
        if isinstance(all_of, list) and all_of:
            merged: dict[str, Any] = {}
            for sub in all_of:
                part = self.resolve(sub, depth + 1)
                props = {**merged.get("properties", {}), **part.get("properties", {})}
                merged = {**merged, **part}
                if props:
                    merged["properties"] = props
            rest = {k: v for k, v in schema.items() if k != "allOf"}
            return {**merged, **rest}
        return schema

    def variants(self, schema: dict[str, Any], depth: int = 0) -> list[dict[str, Any]]:
        """Non-null alternatives of an ``anyOf``/``oneOf``, nested unions flattened; else ``[schema]``."""
        for key in ("anyOf", "oneOf"):
            alts = schema.get(key)
            if isinstance(alts, list) and depth < 20:
                out: list[dict[str, Any]] = []
                for alt in alts:
                    resolved = self.resolve(alt)
                    if resolved.get("type") == "null":
                        continue
                    out.extend(self.variants(resolved, depth + 1))
                return out or [{}]
        return [schema]

    @staticmethod
    def _json_kind(value: Any) -> str:
        if isinstance(value, dict):
            return "object"
        if isinstance(value, list):
            return "array"
        if isinstance(value, bool):
            return "boolean"
        if isinstance(value, int):
            return "integer"
        if isinstance(value, float):
            return "number"
        if isinstance(value, str):
            return "string"
        return "null" if value is None else "unknown"

    def _variant_score(self, variant: dict[str, Any], value: Any) -> int:
        kind = self._json_kind(value)
        vtype = variant.get("type")
        types = set(vtype) if isinstance(vtype, list) else {vtype} if isinstance(vtype, str) else set()
        if not types:
            if "properties" in variant:
                types = {"object"}
            elif "items" in variant or "prefixItems" in variant:
                types = {"array"}
        if types:
            ok = kind in types or (kind == "integer" and "number" in types)
            if not ok:
                return -1
        score = 1
        if "const" in variant:
            return 100 if variant["const"] == value else -1
        if "enum" in variant and isinstance(variant["enum"], list):
            return 50 if value in variant["enum"] else -1
        if kind == "object":
            props = variant.get("properties", {})
            if not isinstance(props, dict):
                return score
            for key, sub in props.items():
                sub_r = self.resolve(sub)
                if key in value and "const" in sub_r:
                    if sub_r["const"] != value[key]:
                        return -1
                    score += 100
            required = variant.get("required", [])
            if isinstance(required, list) and any(r not in value for r in required):
                score -= 10
            if variant.get("additionalProperties") is False and any(k not in props for k in value):
                score -= 10
            score += sum(1 for k in value if k in props)
        return score

    def pick_variant(self, variants: list[dict[str, Any]], value: Any) -> int:
        scores = [self._variant_score(v, value) for v in variants]
        best = max(range(len(variants)), key=lambda i: (scores[i], -i))
        return best

    # -- voting ---------------------------------------------------------------------------------

    def _rank(self, chunk_indices: list[int]) -> tuple[int, float, int]:
        """Sort key (bigger is better): support count, best confidence, earliest chunk."""
        best_conf = max(self.conf[i] for i in chunk_indices)
        return (len(chunk_indices), best_conf, -min(chunk_indices))

    def vote(self, items: list[tuple[int, Any]]) -> Any:
        """The most frequent value; ties: higher chunk confidence, then earliest chunk."""
        groups: dict[str, list[tuple[int, Any]]] = {}
        for idx, value in items:
            groups.setdefault(_vote_key(value), []).append((idx, value))
        winner = max(groups.values(), key=lambda g: self._rank([i for i, _ in g]))
        # the group's most frequent surface form (strings may differ in case/spacing), earliest first
        forms: dict[str, list[int]] = {}
        for idx, value in winner:
            forms.setdefault(_canonical(value), []).append(idx)
        best_form = max(forms.items(), key=lambda kv: self._rank(kv[1]))[0]
        for _, value in winner:
            if _canonical(value) == best_form:
                return value
        return winner[0][1]  # pragma: no cover - unreachable

    # -- merging --------------------------------------------------------------------------------

    def merge(self, items: list[tuple[int, Any]], schema: Any) -> Any:
        """Merge the values ``(chunk index, value)`` found for one position of the schema."""
        resolved = self.resolve(schema)
        present = [(i, v) for i, v in items if not _is_missing(v)]
        if not present:
            non_null = [v for _, v in items if v is not None]
            return non_null[0] if non_null else None

        variants = self.variants(resolved)
        if len(variants) > 1:
            groups: dict[int, list[tuple[int, Any]]] = {}
            for i, v in present:
                groups.setdefault(self.pick_variant(variants, v), []).append((i, v))
            win = max(groups, key=lambda g: self._rank([i for i, _ in groups[g]]))
            return self._merge_typed(groups[win], variants[win])
        return self._merge_typed(present, variants[0])

    def _merge_typed(self, present: list[tuple[int, Any]], schema: dict[str, Any]) -> Any:
        kinds: dict[str, list[tuple[int, Any]]] = {}
        for i, v in present:
            k = self._json_kind(v)
            kinds.setdefault(k if k in ("object", "array") else "scalar", []).append((i, v))
        kind = max(kinds, key=lambda k: self._rank([i for i, _ in kinds[k]]))
        items = kinds[kind]
        if kind == "object":
            return self._merge_objects(items, schema)
        if kind == "array":
            return self._merge_arrays(items, schema)
        return self.vote(items)

    def _merge_objects(self, items: list[tuple[int, dict[str, Any]]], schema: dict[str, Any]) -> dict[str, Any]:
        props = schema.get("properties")
        props = props if isinstance(props, dict) else {}
        extra = schema.get("additionalProperties")
        keys: list[str] = [k for k in props if any(k in v for _, v in items)]
        for _, v in items:
            keys.extend(k for k in v if k not in keys)
        out: dict[str, Any] = {}
        for key in keys:
            sub = props.get(key, extra if isinstance(extra, dict) else {})
            out[key] = self.merge([(i, v[key]) for i, v in items if key in v], sub)
        return out

    def _merge_arrays(self, items: list[tuple[int, list[Any]]], schema: dict[str, Any]) -> list[Any]:
        if "prefixItems" in schema or isinstance(schema.get("items"), list):
            return list(self.vote(items))  # a tuple is one value, not a collection
        union: list[Any] = []
        seen: set[str] = set()
        for _, lst in items:
            for element in lst:
                key = _canonical(element)
                if key not in seen:
                    seen.add(key)
                    union.append(element)
        if any(isinstance(e, dict) for e in union):
            union = _drop_subsumed(union)
        max_items = schema.get("maxItems")
        if isinstance(max_items, int) and len(union) > max_items:
            return list(self.vote(items))  # the union would not validate: take the best whole list
        return union


def _subsumes(big: Any, small: Any) -> bool:
    """Every non-missing field of ``small`` is present with the same value in ``big`` (recursively)."""
    if _is_missing(small):
        return True
    if isinstance(small, dict):
        if not isinstance(big, dict):
            return False
        return all(_subsumes(big.get(k), v) for k, v in small.items())
    if isinstance(small, list):
        if not isinstance(big, list):
            return False
        return all(any(_subsumes(b, s) for b in big) for s in small)
    return not _is_missing(big) and _canonical(big) == _canonical(small)


def _drop_subsumed(elements: list[Any]) -> list[Any]:
    """Drop object elements whose non-null fields are all contained in another element.

    The surviving (more complete) element takes the position of the earliest element it subsumes.
    """
    kept: list[Any] = []
    for element in elements:
        if not isinstance(element, dict):
            kept.append(element)
            continue
        if any(isinstance(k, dict) and _subsumes(k, element) for k in kept):
            continue
        position: int | None = None
        remaining: list[Any] = []
        for k in kept:
            if isinstance(k, dict) and _subsumes(element, k):
                if position is None:
                    position = len(remaining)
                continue
            remaining.append(k)
        if position is None:
            remaining.append(element)
        else:
            remaining.insert(position, element)
        kept = remaining
    return kept


def merge_extractions(
    values: Sequence[dict[str, Any]],
    schema: dict[str, Any],
    confidences: Sequence[float | None] | None = None,
) -> dict[str, Any]:
    """Merge per-chunk extractions (``model_dump(mode="json")`` dicts, in chunk order) into one dict.

    ``schema`` is the model's JSON schema (``model_json_schema()``; ``$defs``/``$ref`` are resolved).

    * scalars: the most frequent non-null value (strings agree case- and whitespace-insensitively; the
      most frequent spelling is kept); ties go to the value seen in the chunk with the higher
      confidence, then to the earliest chunk;
    * objects: merged field by field, recursively; a key absent from a chunk is not a vote;
    * lists: union in chunk order, de-duplicated by canonical JSON; object elements whose non-null fields
      are a subset of another element's are dropped. Tuples (``prefixItems``) are voted on as one value,
      and so is a list whose union would exceed ``maxItems``;
    * unions (``anyOf``/``oneOf``): each value is matched to its variant (discriminator ``const``,
      type, fields); the best-supported variant wins and only its values are merged;
    * ``None`` and blank strings never override a value; a field that is null everywhere stays null.

    ``confidences`` (one per chunk, ``None`` entries count as 0) only break ties.
    """
    if not values:
        raise ConfigurationError("merge_extractions needs at least one extraction")
    if not all(isinstance(v, dict) for v in values):
        raise ConfigurationError("merge_extractions expects dicts (model_dump(mode='json'))")
    if confidences is not None and len(confidences) != len(values):
        raise ConfigurationError(
            f"got {len(confidences)} confidences for {len(values)} extractions; pass one per chunk"
        )
    conf = [float(c) if c is not None else 0.0 for c in (confidences or [0.0] * len(values))]
    if len(values) == 1:
        return copy.deepcopy(dict(values[0]))
    merger = _Merger(schema if isinstance(schema, dict) else {}, conf)
    merged = merger.merge(list(enumerate(values)), schema)
    if not isinstance(merged, dict):  # pragma: no cover - top-level values are dicts
        return dict(values[0])
    return merged
