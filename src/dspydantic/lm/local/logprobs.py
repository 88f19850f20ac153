"""Token log-probabilities of a local generation, recorded by a logits processor.

No ``logits_all`` (which makes evaluation ~8x slower): the processor sees each step's raw logits and reads the
chosen token from the next step's input ids.
"""

from __future__ import annotations

import codecs
import math
from typing import Any

__all__ = ["LogprobRecorder"]


class LogprobRecorder:
    """Logits processor recording the natural-log probability of each generated token.

    llama.cpp calls it with the raw logits of step k (before penalties, grammar and sampling) and the
    ids evaluated so far; the token chosen at step k is only known at step k+1, where it is the last
    input id. So each call scores the previous step's row at ``input_ids[-1]`` and keeps its own row.
    The probabilities are those of the model's distribution as the processors before it left it: the local
    backend puts its lazy grammar gate first, which masks a row only where the grammar rejects the model's
    top token (there the probability is among the allowed tokens; elsewhere the row is the raw one).
    """

    def __init__(self) -> None:
        self.logprobs: list[float] = []
        self.token_ids: list[int] = []
        self._row: Any = None
        self._lse = 0.0

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        import numpy as np

        if self._row is not None:
            token = int(input_ids[-1])
            self.token_ids.append(token)
            self.logprobs.append(min(0.0, float(self._row[token]) - self._lse))
        row = np.array(scores, dtype=np.float64)
        peak = float(row.max())
        self._lse = peak + math.log(float(np.exp(row - peak).sum()))
        self._row = row
        return scores

    def finish(self, completion_tokens: int, tail_token: int | None) -> list[float]:
        """Logprobs of the ``completion_tokens`` text tokens; ``tail_token`` is the id of the last one
        when generation stopped on the token limit (it was sampled but never evaluated)."""
        if len(self.logprobs) < completion_tokens and self._row is not None and tail_token is not None:
            self.logprobs.append(min(0.0, float(self._row[tail_token]) - self._lse))
            self.token_ids.append(tail_token)
        self._row = None
        return self.logprobs[:completion_tokens]

    def texts(self, llama: Any, n: int) -> list[str]:
        """The text of each of the first ``n`` recorded tokens. A character split over several byte-level
        tokens belongs to the token that completes it, so the pieces concatenate to the decoded text."""
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        return [decoder.decode(llama.detokenize([t])) for t in self.token_ids[:n]]
