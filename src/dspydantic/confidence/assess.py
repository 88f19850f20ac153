"""Per-field assessment of one validated answer: value-token log-probabilities, grounding, agreement.

Used by the Prompter's extraction plan (``_prompter.py``); pure functions of (raw answer, schema, source,
token log-probabilities), no I/O. Field paths are those of :func:`dspydantic._schema.walk_fields`
(``vendor``, ``address.city``, ``items[].name``); a list field's values are pooled under its path.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .._schema import owning_path, schema_path, walk_fields
from ..errors import ConfigurationError
from ._jsonpos import Located, locate_values
from .grounding import ground
from .signals import MIN_LOGPROB, FieldSignals, align_tokens

__all__ = [
    "NULL_CANONICAL", "Assessment", "FieldPlan", "Violation", "absent_fields", "apply_required", "assess", "field_plan",
    "with_agreement",
]

#: string formats whose value is a normalized rendering (not a copy of the source): never grounded
_RENDERED_FORMATS = frozenset({"date", "date-time", "time", "duration"})
#: the JSON-schema flag (``Field(json_schema_extra={"require_grounding": True})``)
SCHEMA_FLAG = "require_grounding"


def _variants(node: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """The node and what it may be: anyOf/oneOf members and list items, recursively (not properties)."""
    out: list[Mapping[str, Any]] = []
    stack: list[Any] = [node]
    while stack:
        n = stack.pop()
        if not isinstance(n, Mapping):
            continue
        out.append(n)
        for key in ("anyOf", "oneOf"):
            if isinstance(n.get(key), list):
                stack.extend(n[key])
        if isinstance(n.get("items"), Mapping):
            stack.append(n["items"])
    return out


def _types(n: Mapping[str, Any]) -> set[str]:
    t = n.get("type")
    return {t} if isinstance(t, str) else {x for x in t if isinstance(x, str)} if isinstance(t, list) else set()


def _free_string(node: Mapping[str, Any]) -> bool:
    """The field can hold a string copied from the source (not an enum, constant or rendered date)."""
    return any(
        "string" in _types(v) and not {"enum", "const"} & v.keys() and v.get("format") not in _RENDERED_FORMATS
        for v in _variants(node)
    )


def _nullable(node: Mapping[str, Any]) -> bool:
    own = [node, *(v for k in ("anyOf", "oneOf") for v in (node.get(k) or []) if isinstance(v, Mapping))]
    return any("null" in _types(v) for v in own)


@dataclass(frozen=True, slots=True)
class FieldPlan:
    """What the assessment needs to know about a schema (computed once per prompter)."""

    paths: frozenset[str]
    groundable: frozenset[str]
    nullable: frozenset[str]
    require_grounding: frozenset[str]


def field_plan(schema: dict[str, Any], require: bool | Iterable[str] | None = None) -> FieldPlan:
    """The field plan of an (inlined) object schema. ``require``: True (every free string field), a set of
    field paths, or None/False; fields flagged ``require_grounding`` in the schema are added."""
    nodes = {path: node for path, node, _ in walk_fields(schema)}
    groundable = frozenset(p for p, n in nodes.items() if _free_string(n))
    nullable = frozenset(p for p, n in nodes.items() if _nullable(n))
    if require is True:
        required = set(groundable)
    elif not require:
        required = set()
    else:
        if isinstance(require, str):
            require = [require]
        required = set(require)
        unknown = sorted(required - set(nodes))
        if unknown:
            raise ConfigurationError(
                f"require_grounding names unknown field path(s) {unknown}; the model's fields are {sorted(nodes)}"
            )
        not_strings = sorted(required - groundable)
        if not_strings:
            raise ConfigurationError(
                f"require_grounding names {not_strings}, which hold no free string: only string values are "
                "grounded in the source (not numbers, enums or dates)"
            )
    required |= {p for p, n in nodes.items() if n.get(SCHEMA_FLAG) is True and p in groundable}
    return FieldPlan(frozenset(nodes), groundable, nullable, frozenset(required))


def absent_fields(model: Any) -> list[str]:
    """The paths of ``model``'s free string fields that allow null: pass them as ``require_grounding`` and a
    value the document does not contain (exact, normalized or fuzzy, see :mod:`.grounding`) becomes null
    there ("absent is an answer"; on the embedded model it lifts SNIPS weather zero-shot from 0.104 to 0.585,
    docs/benchmarks.md). ``model``: a Pydantic model class, or its inlined JSON schema (what a Prompter
    checks answers against). A list of paths, so a saved prompter keeps it."""
    from .._schema import model_schema

    plan = field_plan(model if isinstance(model, dict) else model_schema(model))
    return sorted(plan.groundable & plan.nullable)


@dataclass(frozen=True, slots=True)
class Violation:
    """An ungrounded value in a field that requires grounding (``segments``: where it is in the answer)."""

    path: str
    segments: tuple[str | int, ...]
    value: str


@dataclass
class Assessment:
    """The per-field evidence of one answer."""

    signals: dict[str, FieldSignals]
    spans: dict[str, list[tuple[int, int]]]
    ungrounded: list[str]
    violations: list[Violation]
    #: the answer as parsed from the raw text (None when it could not be located there)
    answer: dict[str, Any] | None
    #: path -> canonical value, for agreement across samples
    canonical: dict[str, str] = field(default_factory=dict)


def _canonical(values: Sequence[Any]) -> str:
    def norm(v: Any) -> Any:
        if isinstance(v, str):
            return " ".join(v.split()).casefold()
        if isinstance(v, float) and v.is_integer():
            return int(v)
        if isinstance(v, list):
            return [norm(x) for x in v]
        if isinstance(v, dict):
            return {k: norm(x) for k, x in v.items()}
        return v

    return json.dumps(sorted(json.dumps(norm(v), sort_keys=True) for v in values), ensure_ascii=False)


def _by_path(located: Sequence[Located], plan: FieldPlan) -> dict[str, list[Located]]:
    out: dict[str, list[Located]] = {}
    for loc in located:
        if loc.segments:
            sp = schema_path(loc.segments, plan.paths)
            if sp in plan.paths:
                out.setdefault(sp, []).append(loc)
    return out


#: the canonical value of a null field (what a field that has no value agrees with)
NULL_CANONICAL = _canonical([None])


def canonical_values(answer: Mapping[str, Any] | None, plan: FieldPlan) -> dict[str, str]:
    """Path -> canonical (normalized, order-free) value of an answer dict; {} for None."""
    if answer is None:
        return {}
    located = locate_values(json.dumps(answer, ensure_ascii=False)) or []
    return {p: _canonical([loc.value for loc in locs]) for p, locs in _by_path(located, plan).items()}


def _is_null(values: Sequence[Any]) -> bool:
    return all(v is None or v == [] or v == {} for v in values)


def assess(
    raw: str,
    plan: FieldPlan,
    source: str | None,
    *,
    token_logprobs: Sequence[float] | None = None,
    token_texts: Sequence[str] | None = None,
    attempts: int = 1,
    fallback: Mapping[str, Any] | None = None,
    grounding: bool = True,
) -> Assessment:
    """Assess one answer. ``raw`` is the LM's text; ``fallback`` (the validated data as JSON) is used when
    no JSON object can be located in ``raw``; ``source`` the document text (None: nothing is grounded)."""
    located = locate_values(raw)
    answer: dict[str, Any] | None = None
    token_spans: list[tuple[int, int]] | None = None
    if located is not None:
        answer = located[-1].value  # the root object is reported last
        if token_logprobs and token_texts and len(token_texts) == len(token_logprobs):
            token_spans = align_tokens(raw, token_texts)
    elif fallback is not None:
        located = locate_values(json.dumps(fallback, ensure_ascii=False)) or []
    else:
        located = []
    answer_lp: float | None = None
    if token_logprobs:
        answer_lp = sum(max(MIN_LOGPROB, x) for x in token_logprobs) / len(token_logprobs)
    by_path = _by_path(located, plan)
    # grounding: every string leaf, pooled under the field that owns it (tags[] -> tags)
    spans: dict[str, list[tuple[int, int]]] = {}
    scores: dict[str, float] = {}
    violations: list[Violation] = []
    ungrounded: list[str] = []
    if grounding and source:
        for loc in located:
            if not isinstance(loc.value, str) or not loc.segments or not loc.value.strip():
                continue
            path = owning_path(schema_path(loc.segments, plan.paths), plan.paths)
            if path is None or path not in plan.groundable:
                continue
            g = ground(loc.value, source)
            scores[path] = min(scores.get(path, 1.0), g.score)
            if g.grounded:
                spans.setdefault(path, []).extend(g.spans)
            else:
                if path not in ungrounded:
                    ungrounded.append(path)
                if path in plan.require_grounding:
                    violations.append(Violation(path, loc.segments, loc.value))
    shared = _shared_spans(spans)
    signals: dict[str, FieldSignals] = {}
    for path, locs in by_path.items():
        lps: list[float] = []
        firsts: list[float] = []
        if token_spans is not None and token_logprobs:
            ranges = [(loc.start, loc.end) for loc in locs]
            seen: set[int] = set()
            for (ts, te), lp in zip(token_spans, token_logprobs, strict=False):
                hit = [k for k, (s, e) in enumerate(ranges) if te > ts and ts < e and te > s]
                if hit:
                    lps.append(max(MIN_LOGPROB, float(lp)))
                    if hit[0] not in seen:  # the first token of this value
                        seen.update(hit)
                        firsts.append(max(MIN_LOGPROB, float(lp)))
        values = [loc.value for loc in locs]
        signals[path] = FieldSignals(
            logprob=sum(lps) / len(lps) if lps else None,
            min_logprob=min(lps) if lps else None,
            first_logprob=min(firsts) if firsts else None,
            answer_logprob=answer_lp,
            n_tokens=len(lps),
            grounding=scores.get(path) if path in plan.groundable and not _is_null(values) else None,
            shared_span=path in shared,
            null=_is_null(values),
            attempts=attempts,
        )
    # fields the answer left out (optional fields take their default): absent, as far as the LM said
    for path in plan.paths:
        if path in signals or "[]" in path or "{}" in path:
            continue
        parent = path.rpartition(".")[0]
        if parent == "" or any(isinstance(loc.value, dict) for loc in by_path.get(parent, ())):
            signals[path] = FieldSignals(answer_logprob=answer_lp, null=True, attempts=attempts)
    canonical = {p: _canonical([loc.value for loc in locs]) for p, locs in by_path.items()}
    return Assessment(
        signals=signals,
        spans={p: sorted(set(s)) for p, s in spans.items()},
        ungrounded=[p for p in signals if p in ungrounded] + [p for p in ungrounded if p not in signals],
        violations=violations,
        answer=answer,
        canonical=canonical,
    )


def _shared_spans(spans: Mapping[str, Sequence[tuple[int, int]]]) -> set[str]:
    """Fields with a span that overlaps a span of another field."""
    flat = sorted((s, e, p) for p, ss in spans.items() for s, e in ss)
    out: set[str] = set()
    for i, (s, e, p) in enumerate(flat):
        for s2, e2, p2 in flat[i + 1 :]:
            if s2 >= e:
                break
            if p2 != p and s2 < e and s < e2:
                out.update((p, p2))
    return out


def with_agreement(assessment: Assessment, samples: Sequence[Mapping[str, Any] | None], plan: FieldPlan) -> None:
    """Add the agreement rate of each field with ``samples`` (other answers; None: one that failed)."""
    if not samples:
        return
    others = [canonical_values(s, plan) for s in samples]
    for path, sig in list(assessment.signals.items()):
        mine = assessment.canonical.get(path)
        agree = sum(1 for o in others if o.get(path, _canonical([None])) == mine)
        assessment.signals[path] = FieldSignals(**{**sig.to_json(), "agreement": agree / len(others)})


def apply_required(
    answer: dict[str, Any], violations: Sequence[Violation], plan: FieldPlan
) -> tuple[dict[str, Any], list[str]]:
    """The answer with each ungrounded value of a field that requires grounding made ``None`` (or dropped
    from its list), and the reasons of those that cannot be (a field that does not allow null)."""
    out = copy.deepcopy(answer)
    problems: list[str] = []
    removals: dict[tuple[str | int, ...], list[int]] = {}
    for v in violations:
        *parent_segs, last = v.segments
        parent: Any = out
        for seg in parent_segs:
            parent = parent[seg]
        if isinstance(last, int):
            removals.setdefault(tuple(parent_segs), []).append(last)
        elif v.path in plan.nullable:
            parent[last] = None
        else:
            problems.append(
                f"- {v.path}: {json.dumps(v.value, ensure_ascii=False)[:80]} does not occur in the document; "
                "copy the value exactly as the document writes it"
            )
    for segs, indices in removals.items():
        parent = out
        for seg in segs:
            parent = parent[seg]
        for i in sorted(set(indices), reverse=True):
            del parent[i]
    return out, problems
