"""The evidence behind one field's confidence, and how it is combined into one number.

Signals of a field (a dotted path of the schema, see :func:`dspydantic._schema.walk_fields`):

* **value-token probability**: the generated tokens that overlap the field's *value* in the raw JSON answer
  (not its key, not the punctuation between fields), from the token log-probabilities the backend
  returned (the local model always; OpenAI-compatible providers with ``logprobs=True``);
* **agreement**: the fraction of k extra sampled answers that give the field the same value (opt-in,
  ``Prompter(confidence_samples=k)``, k more LM calls);
* **grounding**: whether the field's string values occur in the source (see :mod:`.grounding`);
* **re-asks**: how many attempts the answer needed to validate.

:func:`combine` is the documented, uncalibrated combination; a fitted :class:`~.calibration.Calibrator`
maps the signals to a probability of being right.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["UNGROUNDED_FACTOR", "FieldSignals", "align_tokens", "combine", "reask_factor"]

#: the factor an ungrounded value puts on its field's uncalibrated confidence (a likely hallucination)
UNGROUNDED_FACTOR = 0.25
#: log-probabilities are clamped here (a -inf from a masked token would poison every mean)
MIN_LOGPROB = -30.0


@dataclass(frozen=True, slots=True)
class FieldSignals:
    """What is known about one field of one answer (JSON-safe via :meth:`to_json`).

    ``logprob`` / ``min_logprob`` / ``first_logprob``: mean, minimum and first natural-log probability of
    the value's tokens (None without token log-probabilities or when no token could be aligned to the
    value; the first token is where the model chose between a value and null); ``answer_logprob``:
    the mean over the whole answer (the fallback); ``grounding``: the lowest grounding score of the field's
    string values (1.0 found exactly or normalized, the fuzzy ratio, 0.0 not found; None when the field
    has no string value to ground); ``shared_span``: a grounded value sits where another field's value
    does (two fields read from one place: one of them is likely wrong); ``null``: the value is null (or an
    empty list); ``attempts``: answers needed (1 = no re-ask); ``agreement``: fraction of extra samples
    agreeing (None when not sampled).
    """

    logprob: float | None = None
    min_logprob: float | None = None
    first_logprob: float | None = None
    answer_logprob: float | None = None
    n_tokens: int = 0
    grounding: float | None = None
    shared_span: bool = False
    null: bool = False
    attempts: int = 1
    agreement: float | None = None

    @property
    def ungrounded(self) -> bool:
        return self.grounding is not None and self.grounding <= 0.0

    @property
    def raw(self) -> float:
        """The uncalibrated confidence (see :func:`combine`)."""
        return combine(self)

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None and v is not False}

    @classmethod
    def from_json(cls, data: Any) -> FieldSignals:
        if not isinstance(data, dict):
            raise ValueError("field signals must be an object")
        kwargs: dict[str, Any] = {}
        for name in ("logprob", "min_logprob", "first_logprob", "answer_logprob", "grounding", "agreement"):
            if data.get(name) is not None:
                kwargs[name] = float(data[name])
        kwargs["n_tokens"] = int(data.get("n_tokens", 0))
        kwargs["null"] = bool(data.get("null", False))
        kwargs["shared_span"] = bool(data.get("shared_span", False))
        kwargs["attempts"] = int(data.get("attempts", 1))
        return cls(**kwargs)


def reask_factor(attempts: int) -> float:
    """1.0 for an answer that validated at once, 0.75 after one re-ask, 0.5 after two, ..."""
    return max(0.0, 1.0 - 0.25 * (attempts - 1))


def combine(s: FieldSignals) -> float:
    """The uncalibrated confidence of a field, in [0, 1]:

    ``p × g × r`` where ``p`` is the geometric mean of the probability-like signals present (the
    probability of the value's least likely token — else the whole answer's geometric-mean token
    probability — and the agreement rate), 1.0 when there is none; ``g`` is 1.0 for a grounded or
    non-string value, the fuzzy ratio for a fuzzy match and :data:`UNGROUNDED_FACTOR` for a value not found
    in the source; ``r`` is :func:`reask_factor`.
    """
    logprob = s.min_logprob if s.min_logprob is not None else s.answer_logprob
    parts = []
    if logprob is not None:
        parts.append(math.exp(max(MIN_LOGPROB, min(0.0, logprob))))
    if s.agreement is not None:
        parts.append(max(0.0, min(1.0, s.agreement)))
    p = math.prod(parts) ** (1.0 / len(parts)) if parts else 1.0
    if s.grounding is None or s.grounding >= 1.0:
        g = 1.0
    elif s.grounding > 0.0:
        g = s.grounding
    else:
        g = UNGROUNDED_FACTOR
    return round(max(0.0, min(1.0, p * g * reask_factor(s.attempts))), 6)


def align_tokens(raw: str, tokens: Sequence[str]) -> list[tuple[int, int]] | None:
    """The ``[start, end)`` character range of each generated token in ``raw``, or None when the tokens do
    not spell ``raw`` (more than half of them cannot be placed).

    Tokens are placed left to right; a token that does not continue at the cursor is searched a little
    further on (providers may drop whitespace or send partial UTF-8 sequences as ``\\ufffd``); one that is
    not found gets an empty range at the cursor.
    """
    spans: list[tuple[int, int]] = []
    cursor = 0
    misses = 0
    for token in tokens:
        if not token:
            spans.append((cursor, cursor))
            continue
        if raw.startswith(token, cursor):
            spans.append((cursor, cursor + len(token)))
            cursor += len(token)
            continue
        placed = False
        for text in (token, token.strip()):
            if not text:
                continue
            k = raw.find(text, cursor, cursor + len(token) + 16)
            if k != -1:
                spans.append((k, k + len(text)))
                cursor = k + len(text)
                placed = True
                break
        if not placed:
            misses += 1
            spans.append((cursor, cursor))
    if tokens and misses * 2 > len(tokens):
        return None
    return spans
