"""Demos chosen per input: the labelled examples of a pool whose words are most like the document's.

A :class:`~dspydantic.PromptState` with ``nearest_demos=k`` and a ``demo_pool`` shows, after its fixed
``demos``, the ``k`` pool demos nearest to each document (as DSPy's ``KNNFewShot`` does, under the same demo
budget). "Nearest" is the cosine of tf-idf word vectors (lower-cased ``\\w+`` words, smoothed idf over the
pool): cheap, deterministic, no embedding model. Ties go to the earlier pool demo; the nearest demo is shown
last, right before the document. A document sharing no word with the pool gets the first ``k`` pool demos.
Only the text of a demo or document counts (the text parts of a multimodal one).
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._render import Demo

__all__ = ["MAX_NEAREST", "NearestDemos", "content_text"]

#: the most demos a state may choose per input (load() refuses more)
MAX_NEAREST = 64
_WORD = re.compile(r"\w+")


def content_text(content: str | Sequence[Any]) -> str:
    """The text of a document or demo input (text parts of OpenAI content parts, joined)."""
    if isinstance(content, str):
        return content
    texts = [str(p.get("text", "")) for p in content if isinstance(p, dict) and p.get("type") == "text"]
    return "\n".join(texts)


def _words(text: str) -> Counter[str]:
    return Counter(_WORD.findall(text.lower()))


class NearestDemos:
    """A tf-idf index over a pool of demos; :meth:`pick` returns the ``k`` nearest to a document."""

    def __init__(self, pool: Sequence[Demo]) -> None:
        self.pool = tuple(pool)
        docs = [_words(content_text(d.input)) for d in self.pool]
        df = Counter(w for d in docs for w in d)
        n = len(docs)
        self._idf = {w: math.log((1 + n) / (1 + c)) + 1.0 for w, c in df.items()}
        self._unseen = math.log(1 + n) + 1.0  # the idf of a word no pool demo has
        #: word -> [(pool index, normalised weight)]: a document's similarities are one pass over its words
        self._postings: dict[str, list[tuple[int, float]]] = {}
        for i, d in enumerate(docs):
            for w, x in self._vector(d).items():
                self._postings.setdefault(w, []).append((i, x))

    def _vector(self, counts: Counter[str]) -> dict[str, float]:
        v = {w: c * self._idf.get(w, self._unseen) for w, c in counts.items()}
        norm = math.sqrt(sum(x * x for x in v.values())) or 1.0
        return {w: x / norm for w, x in v.items()}

    def pick(self, content: str | Sequence[Any], k: int) -> tuple[Demo, ...]:
        """The ``k`` pool demos nearest to ``content``, the nearest last."""
        if k <= 0 or not self.pool:
            return ()
        sims = [0.0] * len(self.pool)
        for w, q in self._vector(_words(content_text(content))).items():
            for i, x in self._postings.get(w, ()):
                sims[i] += q * x
        order = sorted(range(len(self.pool)), key=lambda i: (-sims[i], i))[:k]
        return tuple(self.pool[i] for i in reversed(order))
