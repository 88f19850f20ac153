"""The confidence step of the extraction plan: check one validated answer against its source, and turn the
assessment into the result's ``field_confidences``, ``spans``, ``ungrounded`` and overall ``confidence``.

The Prompter's plan (``_prompter.py``) calls :meth:`AnswerCheck.check` after an answer validated (it may
raise :class:`~dspydantic._render.OutputParseError`, which the plan turns into a re-ask like any other
validation error) and :meth:`AnswerCheck.confidences` once the answer is final.

The overall confidence of a result is the **minimum** of its field confidences: an extraction is as
trustworthy as its weakest field (and a router that checks it never lets a doubtful field through).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ValidationError

from .._render import OutputParseError, Renderer
from .assess import (
    NULL_CANONICAL,
    Assessment,
    FieldPlan,
    apply_required,
    assess,
    canonical_values,
    field_plan,
    with_agreement,
)
from .signals import FieldSignals, reask_factor

if TYPE_CHECKING:
    from .calibration import Calibrator

__all__ = ["AnswerCheck", "Confidences", "merge_chunk_confidences"]


@dataclass
class Confidences:
    """What the plan puts on the :class:`~dspydantic.ExtractionResult`."""

    confidence: float
    field_confidences: dict[str, float]
    field_signals: dict[str, FieldSignals]
    spans: dict[str, list[tuple[int, int]]]
    ungrounded: list[str]
    source: str
    calibrated: bool


class AnswerCheck:
    """Per-prompter: the field plan of its schema and its grounding policy."""

    def __init__(self, schema: dict[str, Any], require: bool | Iterable[str] | None, *, grounding: bool = True):
        self.plan: FieldPlan = field_plan(schema, require)
        self.grounding = grounding

    def check(
        self,
        renderer: Renderer,
        raw: str,
        data: BaseModel,
        source: str | None,
        *,
        token_logprobs: Sequence[float] | None,
        token_texts: Sequence[str] | None,
        attempt: int,
    ) -> tuple[BaseModel, Assessment]:
        """Assess a validated answer; apply ``require_grounding`` (ungrounded values of those fields become
        None, or leave their list, where the field allows it; else an :class:`OutputParseError` for the
        re-ask says which value the document does not contain)."""
        dumped = data.model_dump(mode="json", by_alias=True)
        a = assess(
            raw,
            self.plan,
            source,
            token_logprobs=token_logprobs,
            token_texts=token_texts,
            attempts=attempt,
            fallback=dumped,
            grounding=self.grounding,
        )
        if not a.violations or a.answer is None:
            return data, a
        fixed, problems = apply_required(a.answer, a.violations, self.plan)
        if problems:
            raise OutputParseError(
                "These values do not occur in the document (a value must be copied from it):\n" + "\n".join(problems),
                [{"type": "ungrounded", "loc": tuple(v.segments), "msg": "value not found in the document",
                  "input": v.value} for v in a.violations if v.path not in self.plan.nullable],
            )
        try:
            data = renderer.model.model_validate(fixed)
        except ValidationError as exc:
            raise OutputParseError(
                "Values not found in the document were removed, and then the answer was not valid:\n"
                + "\n".join(f"- {'.'.join(map(str, e.get('loc', ())))}: {e.get('msg')}" for e in exc.errors()),
                exc.errors(include_url=False),
            ) from None
        return data, a

    def sample(self, renderer: Renderer, raw: str) -> dict[str, Any] | None:
        """One extra sampled answer as JSON data (None when it does not validate), corrected by the state's
        field typing as the answer was."""
        try:
            data = renderer.retyped(renderer.parse(raw))[0]
        except OutputParseError:
            return None
        return dict(data.model_dump(mode="json", by_alias=True))

    def retype(self, renderer: Renderer, data: BaseModel, a: Assessment) -> tuple[BaseModel, Assessment]:
        """The answer corrected by the state's field typing (:mod:`dspydantic._retype`), its evidence moved
        with each moved value: the target field gets the value's signals, spans and grounding, the field it
        left those of a null value."""
        data, moves = renderer.retyped(data)
        for m in moves:
            before = a.signals.get(m.source)
            if m.target is not None:
                if before is not None:
                    a.signals[m.target] = before
                if m.source in a.spans:
                    a.spans[m.target] = a.spans[m.source]
                if m.source in a.canonical:
                    a.canonical[m.target] = a.canonical[m.source]
                a.ungrounded = [m.target if p == m.source else p for p in a.ungrounded]
            else:
                a.ungrounded = [p for p in a.ungrounded if p != m.source]
            if before is not None:
                a.signals[m.source] = replace(before, logprob=None, min_logprob=None, first_logprob=None,
                                              n_tokens=0, grounding=None, shared_span=False, null=True)
            a.spans.pop(m.source, None)
            a.canonical[m.source] = NULL_CANONICAL
        return data, a

    def confidences(
        self,
        a: Assessment,
        *,
        samples: Sequence[Mapping[str, Any] | None] = (),
        calibrator: Calibrator | None = None,
        logprobs: bool = False,
    ) -> Confidences:
        with_agreement(a, samples, self.plan)
        fields = {p: calibrator.predict(s, p) if calibrator is not None else s.raw for p, s in a.signals.items()}
        attempts = max((s.attempts for s in a.signals.values()), default=1)
        overall = min(fields.values()) if fields else reask_factor(attempts)
        source = "logprobs" if logprobs else "agreement" if samples else "attempts"
        return Confidences(
            confidence=round(overall, 6),
            field_confidences=fields,
            field_signals=dict(a.signals),
            spans=a.spans,
            ungrounded=list(a.ungrounded),
            source=source,
            calibrated=calibrator is not None,
        )

    def regrounded(self, data: BaseModel, source: str | None) -> Assessment:
        """Grounding of final data against the whole document (after chunks were merged)."""
        dumped = data.model_dump(mode="json", by_alias=True)
        return assess(json.dumps(dumped, ensure_ascii=False), self.plan, source, grounding=self.grounding)


def merge_chunk_confidences(
    check: AnswerCheck, merged: Mapping[str, Any], parts: Sequence[tuple[Mapping[str, Any], Mapping[str, float]]]
) -> dict[str, float]:
    """Field confidences of a merged multi-chunk result: for each field, the highest confidence among the
    chunks that gave the merged value, else the lowest over the chunks that had the field."""
    target = canonical_values(merged, check.plan)
    out: dict[str, float] = {}
    canon = [canonical_values(dumped, check.plan) for dumped, _ in parts]
    for path, value in target.items():
        agreeing = [
            conf[path] for c, (_, conf) in zip(canon, parts, strict=True) if c.get(path) == value and path in conf
        ]
        having = [conf[path] for _, conf in parts if path in conf]
        if agreeing:
            out[path] = max(agreeing)
        elif having:
            out[path] = min(having)
    return out
