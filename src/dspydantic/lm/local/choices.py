"""Where the local model decides a choice field: the log-probabilities of each value there, and the fitted
biases added (see :mod:`dspydantic._choices`).

A logits processor that follows the answer as it is written. At a step where the answer stands at the start of
a choice field's value (or inside it) and the values still possible begin with different tokens, that is the
decision: it records each value's log-probability there (the first such step of each field) and adds the
value's bias to those tokens' logits. Tokens the values share (the opening quote of ``"low"`` / ``"high"``)
are not a decision and are left alone.
"""

from __future__ import annotations

import json
import math
from typing import Any

__all__ = ["ChoiceGuide"]


class ChoiceGuide:
    """Logits processor over one generation (``n_prompt``: the prompt's token count)."""

    def __init__(self, llama: Any, n_prompt: int, choices: dict[str, list[Any]],
                 biases: dict[str, dict[str, float]], known: frozenset[str]) -> None:
        from dspydantic._choices import value_key
        from dspydantic._schema import schema_path

        self._llama = llama
        self._n_prompt = n_prompt
        self._choices = {path: [(value_key(v), json.dumps(v, ensure_ascii=False)) for v in values]
                         for path, values in choices.items()}
        #: no choice value is written in more characters than this (a cheap test before reading the JSON)
        self._longest = max((len(r) for options in self._choices.values() for _, r in options), default=0)
        self._biases = biases
        self._known = known
        self._schema_path = schema_path
        self._tokens: dict[str, list[int]] = {}
        #: field path -> JSON value -> natural-log probability at the field's first decision
        self.logprobs: dict[str, dict[str, float]] = {}
        self._text = b""
        self._seen = 0

    def _first_tokens(self, remainder: str) -> list[int]:
        ids = self._tokens.get(remainder)
        if ids is None:
            ids = self._llama.tokenize(remainder.encode("utf-8"), add_bos=False, special=False)
            self._tokens[remainder] = ids
        return ids[:1]

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        from dspydantic._choices import open_value

        generated = input_ids[self._n_prompt + self._seen :]
        if len(generated):
            self._text += self._llama.detokenize([int(t) for t in generated])
            self._seen += len(generated)
        text = self._text.decode("utf-8", errors="ignore")
        # a value starts after ":", "[" or ","; further from the last of them than any choice is long, the
        # answer is writing something else (a long string): no need to read the whole prefix
        start = max(text.rfind(":"), text.rfind("["), text.rfind(","))
        if start < 0 or len(text) - start - 1 > self._longest + 4:
            return scores
        where = open_value(text)
        if where is None:
            return scores
        path = self._schema_path(where[0], self._known)
        options = self._choices.get(path)
        if options is None:
            return scores
        written = where[1]
        firsts: dict[str, set[int]] = {}
        for key, rendering in options:
            if not rendering.startswith(written):
                continue
            rest = rendering[len(written) :]
            if not rest:
                return scores  # a value is complete (a prefix of a longer one): not a decision
            ids = set(self._first_tokens(rest))
            if not written and not text.endswith((" ", "\n")):
                ids |= set(self._first_tokens(" " + rest))
            firsts[key] = ids
        if len(firsts) < 2:
            return scores
        seen: set[int] = set()
        for ids in firsts.values():
            if ids & seen:
                return scores  # the values still share a first token: the decision comes later
            seen |= ids
        if path not in self.logprobs:
            self.logprobs[path] = self._record(scores, firsts)
        bias = self._biases.get(path)
        if bias:
            for key, ids in firsts.items():
                b = bias.get(key)
                if b:
                    for t in ids:
                        scores[t] += b
        return scores

    @staticmethod
    def _record(scores: Any, firsts: dict[str, set[int]]) -> dict[str, float]:
        import numpy as np

        row = np.asarray(scores, dtype=np.float64)
        peak = float(row.max())
        lse = peak + math.log(float(np.exp(row - peak).sum()))
        out = {}
        for key, ids in firsts.items():
            vals = [float(row[t]) for t in ids]
            top = max(vals)
            out[key] = top + math.log(sum(math.exp(v - top) for v in vals)) - lse
        return out
