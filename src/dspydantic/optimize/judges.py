"""LLM judges: an LM scores (``score_judge``) or labels (``label_model_grader``) an extracted value."""

from __future__ import annotations

import json
import logging
from typing import Any, ClassVar

from .._render import extract_json
from ..errors import ConfigurationError
from ..lm._base import LMBackend, LMRequest
from ..lm.settings import ModelSettings
from .evaluator_base import Evaluator, InputData
from .values import normalize_value, score_from, values_equal

__all__ = ["LabelModelGrader", "ScoreJudge"]

log = logging.getLogger("dspydantic")


def _as_backend(lm: Any) -> LMBackend:
    if hasattr(lm, "complete"):
        return lm
    from ..lm import resolve_backend

    return resolve_backend(None, lm=lm)


def _dumps(value: Any, limit: int) -> str:
    text = json.dumps(normalize_value(value), ensure_ascii=False, default=str)
    return text if len(text) <= limit else text[:limit] + "…"


class _Judge(Evaluator):
    """Shared part of the LLM judges: the LM, the skip-if-equal prologue of :meth:`evaluate` (each judge
    implements :meth:`_verdict`), the prompt pieces, the call and the JSON parsing."""

    needs_expected = False
    _SYSTEM: ClassVar[str] = ""

    def __init__(self, config: dict[str, Any] | None = None, lm: Any = None) -> None:
        super().__init__(config, lm)
        if self.lm is None:
            from ..lm import _configured_dspy_lm

            self.lm = _configured_dspy_lm()
        if self.lm is None:
            raise ConfigurationError(
                f"the {self.name} evaluator needs an LM: pass lm= (an LMBackend or dspy.LM), "
                "put it in config['lm'] or configure dspy.configure(lm=...)"
            )
        self.backend: LMBackend = _as_backend(self.lm)
        self.temperature = float(self.config.get("temperature", 0.0))
        self.system_prompt: str | None = self.config.get("system_prompt")
        self.skip_if_equal = bool(self.config.get("skip_if_equal", True))
        self.max_input_chars = int(self.config.get("max_input_chars", 8000))

    def evaluate(
        self, extracted: Any, expected: Any, input_data: InputData = None, field_path: str | None = None
    ) -> float:
        """Equal values score 1.0 without a call (``skip_if_equal``); else the judge's :meth:`_verdict`."""
        if self.skip_if_equal and expected is not None and values_equal(extracted, expected):
            return 1.0
        return self._verdict(extracted, expected, input_data, field_path)

    def _verdict(
        self, extracted: Any, expected: Any, input_data: dict[str, Any] | None, field_path: str | None
    ) -> float:
        raise NotImplementedError

    def _context(
        self, extracted: Any, expected: Any, input_data: dict[str, Any] | None, field_path: str | None
    ) -> list[str]:
        parts = []
        if field_path:
            parts.append(f"Field: {field_path}")
        if input_data:
            parts.append(f"Input the value was extracted from:\n{_dumps(input_data, self.max_input_chars)}")
        if expected is not None:
            parts.append(f"Expected value: {_dumps(expected, self.max_input_chars)}")
        parts.append(f"Extracted value: {_dumps(extracted, self.max_input_chars)}")
        return parts

    def _ask(self, user: str, schema: dict[str, Any], schema_name: str) -> dict[str, Any] | None:
        request = LMRequest(
            messages=[
                {"role": "system", "content": self.system_prompt or self._SYSTEM},
                {"role": "user", "content": user},
            ],
            json_schema=schema,
            schema_name=schema_name,
            settings=ModelSettings(temperature=self.temperature),
        )
        response = self.backend.complete(request)
        data = extract_json(response.text)
        if data is None:
            log.warning("%s: could not parse the judge's answer, scoring 0: %.200s", self.name, response.text)
        else:
            response.confirm()  # a usable verdict: the cache layer may keep it
        return data


class ScoreJudge(_Judge):
    """An LLM rates the extracted value from 0 to 1 (``score_judge``, alias ``score_model_grader``).

    The LM gets the criteria, the field path, the input (when given), the expected value (when there
    is one) and the extracted value, and must answer the JSON schema
    ``{"score": number, "reason": string}``. The score is clipped to ``[0, 1]``; an answer that cannot
    be parsed scores 0.0 (with a warning). When the two values are equal under ``exact`` the LM is not
    called and the score is 1.0 (config ``skip_if_equal=False`` turns that off).

    Config: ``criteria`` (str), ``system_prompt`` (str), ``temperature`` (default 0),
    ``max_input_chars`` (default 8000), ``skip_if_equal`` (default ``True``). Needs an LM (the ``lm``
    argument, config ``lm`` or the LM configured in DSPy), else :class:`ConfigurationError`.
    """

    name = "score_judge"
    _SYSTEM = (
        "You are a strict evaluator of data extracted from documents. Compare the extracted value with "
        "the expected value (when given) and the input, following the criteria, and answer with a "
        "score between 0 (wrong) and 1 (perfect) and a short reason."
    )
    SCHEMA: ClassVar[dict[str, Any]] = {
        "type": "object",
        "properties": {"score": {"type": "number"}, "reason": {"type": "string"}},
        "required": ["score", "reason"],
        "additionalProperties": False,
    }

    def __init__(self, config: dict[str, Any] | None = None, lm: Any = None) -> None:
        super().__init__(config, lm)
        self.criteria = str(
            self.config.get(
                "criteria",
                "Score 1 if the extracted value means the same as the expected value (or is fully "
                "correct for the input when no expected value is given), 0 if it is wrong, and in "
                "between for partially correct values.",
            )
        )

    def _verdict(
        self, extracted: Any, expected: Any, input_data: dict[str, Any] | None, field_path: str | None
    ) -> float:
        user = "\n\n".join([f"Criteria: {self.criteria}", *self._context(extracted, expected, input_data, field_path)])
        data = self._ask(user, self.SCHEMA, "judgement")
        if data is None:
            return 0.0
        try:
            return score_from(data.get("score"), "the judge")
        except TypeError:
            log.warning("%s: the judge gave no numeric score, scoring 0: %r", self.name, data)
            return 0.0


class LabelModelGrader(_Judge):
    """An LLM picks one label from a fixed list (``label_model_grader``).

    Two modes:

    * with ``passing_labels`` (as OpenAI's label-model grader): the LM grades the extracted value
      (against the expected value and the input) by choosing one of ``labels``; the score is 1.0 when
      the chosen label is one of ``passing_labels``, else 0.0;
    * without ``passing_labels`` (dspydantic 0.1 behaviour): the LM classifies the extracted value
      into one of ``labels`` and the score is 1.0 when that label equals the expected value
      (case-insensitive), else 0.0.

    The answer follows the JSON schema ``{"label": one of labels, "reason": string}``. Config:
    ``labels`` (alias ``allowed_labels``, required), ``passing_labels``, ``criteria``,
    ``system_prompt``, ``temperature``, ``skip_if_equal`` (default ``True``: equal values score 1.0
    without a call). Needs an LM, else :class:`ConfigurationError`.
    """

    name = "label_model_grader"
    _SYSTEM = "You are a careful grader. Choose exactly one of the allowed labels and give a short reason."

    def __init__(self, config: dict[str, Any] | None = None, lm: Any = None) -> None:
        super().__init__(config, lm)
        labels = self.config.get("labels", self.config.get("allowed_labels"))
        if not labels or not isinstance(labels, (list, tuple)):
            raise ConfigurationError("label_model_grader needs config 'labels': a non-empty list of strings")
        self.labels = [str(label) for label in labels]
        if "exact_match_score" in self.config or "partial_match_score" in self.config:
            from .._compat import warn_deprecated

            warn_deprecated(
                "label_model_grader config exact_match_score / partial_match_score",
                "a label scores 1.0 when it is the expected one and 0.0 otherwise; for partial credit use "
                "passing_labels or a python_code evaluator",
            )
        passing = self.config.get("passing_labels")
        self.passing_labels: list[str] | None = None if passing is None else [str(p) for p in passing]
        # without passing_labels the chosen label is compared with the expected value: a label is needed
        self.needs_expected = self.passing_labels is None
        if self.passing_labels is not None:
            unknown = [p for p in self.passing_labels if p not in self.labels]
            if unknown:
                raise ConfigurationError(f"label_model_grader: passing_labels {unknown} are not in labels")
        self.criteria: str | None = self.config.get("criteria")
        self.schema: dict[str, Any] = {
            "type": "object",
            "properties": {"label": {"type": "string", "enum": self.labels}, "reason": {"type": "string"}},
            "required": ["label", "reason"],
            "additionalProperties": False,
        }

    def _pick(self, data: dict[str, Any] | None) -> str | None:
        if data is None:
            return None
        label = str(data.get("label", "")).strip()
        for allowed in self.labels:
            if allowed.casefold() == label.casefold():
                return allowed
        log.warning("%s: the grader answered a label outside %s: %r", self.name, self.labels, label)
        return None

    def _verdict(
        self, extracted: Any, expected: Any, input_data: dict[str, Any] | None, field_path: str | None
    ) -> float:
        if self.passing_labels is not None:
            task = self.criteria or "Grade the extracted value."
            context = self._context(extracted, expected, input_data, field_path)
            user = "\n\n".join([task, *context, f"Allowed labels: {', '.join(self.labels)}"])
            label = self._pick(self._ask(user, self.schema, "grade"))
            return 1.0 if label is not None and label in self.passing_labels else 0.0
        if expected is None:
            raise ConfigurationError(
                "label_model_grader without passing_labels compares the chosen label with the expected "
                "value, so it needs one; configure passing_labels to grade values without labels"
            )
        task = self.criteria or "Which of the allowed labels does the extracted value correspond to?"
        context = self._context(extracted, None, input_data, field_path)
        user = "\n\n".join([task, *context, f"Allowed labels: {', '.join(self.labels)}"])
        label = self._pick(self._ask(user, self.schema, "label"))
        if label is None:
            return 0.0
        return 1.0 if values_equal(label, expected) else 0.0

