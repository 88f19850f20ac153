"""Fallback chains and A/B routing over prompters: Prompter-like objects (the same verbs) that pick, per
input, which prompter answers, and say which one did.

    chain = primary.with_fallback(secondary, min_confidence=0.7)
    result = chain.predict_with_confidence("Invoice from ...")
    result.extra["answered_by"]           # "primary" or "fallback"

    router = ABRouter({"a": p1, "b": p2}, weights={"a": 0.9, "b": 0.1})
    result = router.predict_with_confidence("...", key="customer-42")   # the same key -> the same variant
    result.extra["variant"], router.metrics()

Confidence is read per field when the result has per-field confidences (the minimum over ``fields``, or
over every field), else the overall ``confidence``: :func:`effective_confidence`. A threshold is a number
(every field must reach it) or a map of field paths to numbers (``{"total": 0.9, "*": 0.6}``: ``"*"`` for the
fields not named): :func:`fields_below` says which fields fall short. The service's ``min_confidence``, the
store's ``review_below`` and the fallback chain's ``min_confidence`` all take either.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from .._fanout import fan_out
from .._result import ExtractionResult, Usage
from ..errors import BatchError, ConfigurationError, DspydanticError
from .thresholds import Threshold, check_threshold, effective_confidence, fields_below

__all__ = [
    "ABRouter",
    "Fallback",
    "Threshold",
    "VariantStats",
    "check_threshold",
    "effective_confidence",
    "fields_below",
    "stable_fraction",
]

def _item(text: Any, inputs: Mapping[str, Any]) -> Any:
    if text is not None and inputs:
        return {"text": text, **inputs}
    if text is not None:
        return text
    if not inputs:
        raise ConfigurationError("nothing to extract from: pass text=..., image_path=..., or pdf_path=...")
    return dict(inputs)


def _as_kwargs(item: Any) -> tuple[Any, dict[str, Any]]:
    """``item`` (a str, a dict of input keywords or template variables, an Example) as call arguments."""
    from .._example import INPUT_KEYS, Example

    if isinstance(item, Example):
        return None, item.input_kwargs()
    if isinstance(item, Mapping) and item and set(item) <= INPUT_KEYS:
        return None, dict(item)
    return item, {}


class _PrompterLike:
    """The verbs of a Prompter, built on ``_extract`` / ``_aextract`` (one item each)."""

    model: Any

    def _extract(self, item: Any, key: str | None) -> ExtractionResult[Any]:
        raise NotImplementedError

    async def _aextract(self, item: Any, key: str | None) -> ExtractionResult[Any]:
        raise NotImplementedError

    def predict_with_confidence(self, text: Any = None, *, key: str | None = None, **inputs: Any) -> Any:
        return self._extract(_item(text, inputs), key)

    def predict(self, text: Any = None, *, key: str | None = None, **inputs: Any) -> Any:
        return self._extract(_item(text, inputs), key).data

    run = predict
    __call__ = predict

    async def apredict_with_confidence(self, text: Any = None, *, key: str | None = None, **inputs: Any) -> Any:
        return await self._aextract(_item(text, inputs), key)

    async def apredict(self, text: Any = None, *, key: str | None = None, **inputs: Any) -> Any:
        return (await self._aextract(_item(text, inputs), key)).data

    arun = apredict

    def predict_batch(
        self,
        inputs: Iterable[Any],
        max_workers: int = 4,
        on_error: str = "raise",
        *,
        with_confidence: bool = False,
        keys: Sequence[str | None] | None = None,
    ) -> list[Any]:
        """As :meth:`Prompter.predict_batch` (``keys``: one routing key per input, for :class:`ABRouter`)."""
        items = list(inputs)
        _check_batch(max_workers, on_error, keys, items)

        def one(i: int) -> Any:
            try:
                res = self._extract(items[i], keys[i] if keys else None)
                return res if with_confidence else res.data
            except Exception as exc:
                return exc

        return _finish(fan_out(one, range(len(items)), max_workers), on_error)

    async def apredict_batch(
        self,
        inputs: Iterable[Any],
        max_workers: int = 4,
        on_error: str = "raise",
        *,
        with_confidence: bool = False,
        keys: Sequence[str | None] | None = None,
    ) -> list[Any]:
        """Native async batch, at most ``max_workers`` items in flight; results in input order."""
        items = list(inputs)
        _check_batch(max_workers, on_error, keys, items)
        sem = asyncio.Semaphore(max_workers)

        async def one(i: int) -> Any:
            async with sem:
                try:
                    res = await self._aextract(items[i], keys[i] if keys else None)
                    return res if with_confidence else res.data
                except Exception as exc:
                    return exc

        return _finish(list(await asyncio.gather(*(one(i) for i in range(len(items))))), on_error)


def _check_batch(max_workers: int, on_error: str, keys: Sequence[Any] | None, items: list[Any]) -> None:
    if on_error not in ("raise", "return"):
        raise ConfigurationError(f"on_error must be 'raise' or 'return', got {on_error!r}")
    if not isinstance(max_workers, int) or max_workers < 1:
        raise ConfigurationError(f"max_workers must be a positive int, got {max_workers!r}")
    if keys is not None and len(keys) != len(items):
        raise ConfigurationError(f"keys has {len(keys)} entries for {len(items)} inputs")


def _finish(results: list[Any], on_error: str) -> list[Any]:
    failed = {i: r for i, r in enumerate(results) if isinstance(r, Exception)}
    for i, exc in failed.items():
        if isinstance(exc, DspydanticError):
            exc.batch_index = i  # type: ignore[attr-defined]
    if failed and on_error == "raise":
        first = min(failed)
        raise BatchError(
            f"{len(failed)} of {len(results)} items failed; first (item {first}): {failed[first]}",
            results=results, errors=failed,
        ) from failed[first]
    return results


def _call(member: Any, item: Any) -> ExtractionResult[Any]:
    text, kwargs = _as_kwargs(item)
    return member.predict_with_confidence(text, **kwargs)


async def _acall(member: Any, item: Any) -> ExtractionResult[Any]:
    text, kwargs = _as_kwargs(item)
    return await member.apredict_with_confidence(text, **kwargs)


# --------------------------------------------------------------------------------------------------
# fallback


class Fallback(_PrompterLike):
    """Tries each prompter in order; the next one is asked when one raises (an LM or extraction error: not a
    bad input, which every member would refuse) or answers below ``min_confidence`` (a number every field
    must reach, or a map of field paths to numbers: see :func:`fields_below`). The last one's answer is
    taken whatever its confidence. When the last one fails too, the best answer seen below the threshold is
    returned, if any; otherwise the last error is raised.

    The result says who answered: ``extra["answered_by"]`` (a name from ``names``: by default ``"primary"``,
    ``"fallback"``, ``"fallback2"``...), ``extra["fallback_trail"]`` (what happened with each one asked), and
    its ``usage`` is summed over every prompter asked.
    """

    def __init__(
        self,
        prompters: Sequence[Any],
        *,
        min_confidence: Threshold | None = None,
        names: Sequence[str] | None = None,
        fields: Sequence[str] | None = None,
    ) -> None:
        members = list(prompters)
        if len(members) < 2:
            raise ConfigurationError("a fallback chain needs at least two prompters")
        if min_confidence is not None:
            min_confidence = check_threshold(min_confidence, getattr(members[0], "model", None))
        default = ["primary", "fallback"] + [f"fallback{i}" for i in range(2, len(members))]
        self.names = list(names) if names is not None else default
        if len(self.names) != len(members) or len(set(self.names)) != len(members):
            raise ConfigurationError("names must give one distinct name per prompter")
        self.prompters = members
        self.min_confidence = min_confidence
        self.fields = list(fields) if fields else None
        self.model = members[0].model

    def __repr__(self) -> str:
        return f"Fallback({', '.join(self.names)}, min_confidence={self.min_confidence})"

    def with_fallback(self, *others: Any, min_confidence: Threshold | None = None) -> Fallback:
        return Fallback(
            [*self.prompters, *others],
            min_confidence=self.min_confidence if min_confidence is None else min_confidence,
            fields=self.fields,
        )

    def _good(self, result: ExtractionResult[Any]) -> tuple[bool, float, dict[str, tuple[float, float]]]:
        conf = effective_confidence(result, self.fields)
        below = {} if self.min_confidence is None else fields_below(result, self.min_confidence, self.fields)
        return not below, conf, below

    def _step(self, i: int, outcome: ExtractionResult[Any] | Exception, state: _Trail) -> ExtractionResult[Any] | None:
        """Record one member's outcome; returns the result to give back, or None to ask the next one."""
        name, last = self.names[i], i == len(self.prompters) - 1
        if isinstance(outcome, Exception):
            if isinstance(outcome, ConfigurationError) or not isinstance(outcome, DspydanticError):
                raise outcome  # a bad input or a bug: no other prompter will do better
            state.trail.append({"name": name, "outcome": "error", "error": f"{type(outcome).__name__}: {outcome}"})
            usage = getattr(outcome, "usage", None)
            if isinstance(usage, Usage):
                state.usage.add(usage)
            if last:
                if state.best is not None:
                    return state.done(state.best[1], state.best[0])
                raise outcome
            return None
        state.usage.add(outcome.usage)
        ok, conf, below = self._good(outcome)
        step: dict[str, Any] = {"name": name, "outcome": "ok" if ok else "low_confidence", "confidence": conf}
        if below:
            step["fields_below"] = {f: c for f, (c, _) in below.items()}
        state.trail.append(step)
        if ok or last:
            return state.done(outcome, name)
        if state.best is None or conf > effective_confidence(state.best[1], self.fields):
            state.best = (name, outcome)
        return None

    def _extract(self, item: Any, key: str | None) -> ExtractionResult[Any]:
        state = _Trail()
        for i, member in enumerate(self.prompters):
            try:
                outcome: ExtractionResult[Any] | Exception = _call(member, item)
            except Exception as exc:
                outcome = exc
            result = self._step(i, outcome, state)
            if result is not None:
                return result
        raise AssertionError("unreachable: the last member always answers or raises")

    async def _aextract(self, item: Any, key: str | None) -> ExtractionResult[Any]:
        state = _Trail()
        for i, member in enumerate(self.prompters):
            try:
                outcome: ExtractionResult[Any] | Exception = await _acall(member, item)
            except Exception as exc:
                outcome = exc
            result = self._step(i, outcome, state)
            if result is not None:
                return result
        raise AssertionError("unreachable: the last member always answers or raises")


class _Trail:
    def __init__(self) -> None:
        self.trail: list[dict[str, Any]] = []
        self.usage = Usage()
        self.best: tuple[str, ExtractionResult[Any]] | None = None

    def done(self, result: ExtractionResult[Any], name: str) -> ExtractionResult[Any]:
        out = replace(result, usage=self.usage, extra={**result.extra})
        out.extra["answered_by"] = name
        out.extra["fallback_trail"] = self.trail
        return out


# --------------------------------------------------------------------------------------------------
# A/B routing


def stable_fraction(key: str, salt: str = "") -> float:
    """A number in [0, 1) that depends only on ``salt`` and ``key`` (SHA-256: the same in every process and
    on every machine, unlike Python's salted ``hash()``)."""
    digest = hashlib.sha256(f"{salt}\x00{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def _content_key(item: Any) -> str:
    try:
        raw = json.dumps(item, sort_keys=True, default=repr, ensure_ascii=False)
    except (TypeError, ValueError):
        raw = repr(item)
    return hashlib.sha256(raw.encode()).hexdigest()


@dataclass
class VariantStats:
    """What one variant of an :class:`ABRouter` did in this process."""

    requests: int = 0
    errors: int = 0
    confidence_sum: float = 0.0
    latency_sum: float = 0.0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        ok = self.requests - self.errors
        return {
            "requests": self.requests,
            "errors": self.errors,
            "mean_confidence": self.confidence_sum / ok if ok else None,
            "mean_latency_s": self.latency_sum / self.requests if self.requests else None,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "cost_usd": self.cost_usd,
        }


class ABRouter(_PrompterLike):
    """Sends each input to one of several prompters (variants), sticky by a key.

    ``weights`` (a mapping or a sequence in the variants' order; default: equal) are normalised. The variant
    of a key is fixed by a stable hash of (``salt``, key): the same key gets the same variant in every
    process, every restart and every machine, as long as the variants, weights and salt are unchanged. The
    key is the ``key=`` given to a verb, else ``key(item)`` when a ``key`` function was given, else a hash
    of the input's content (the same document always gets the same variant).

    Each result carries ``extra["variant"]``; :meth:`metrics` gives per-variant counts, errors, mean
    confidence and latency, tokens and cost.
    """

    def __init__(
        self,
        variants: Mapping[str, Any],
        weights: Mapping[str, float] | Sequence[float] | None = None,
        key: Callable[[Any], str] | None = None,
        *,
        salt: str = "dspydantic-ab",
    ) -> None:
        if not variants:
            raise ConfigurationError("an ABRouter needs at least one variant")
        self.variants = dict(variants)
        names = list(self.variants)
        if weights is None:
            w = [1.0] * len(names)
        elif isinstance(weights, Mapping):
            unknown = set(weights) - set(names)
            if unknown:
                raise ConfigurationError(f"weights name unknown variant(s) {sorted(unknown)}")
            w = [float(weights.get(n, 0.0)) for n in names]
        else:
            w = [float(x) for x in weights]
            if len(w) != len(names):
                raise ConfigurationError(f"{len(w)} weights for {len(names)} variants")
        if any(x < 0 for x in w) or sum(w) <= 0:
            raise ConfigurationError("weights must be non-negative with a positive sum")
        total = sum(w)
        self.weights = {n: x / total for n, x in zip(names, w, strict=True)}
        self.key = key
        self.salt = salt
        self.model = next(iter(self.variants.values())).model
        self._stats = {n: VariantStats() for n in names}
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"ABRouter({self.weights!r})"

    def assign(self, key: str) -> str:
        """The variant of ``key``."""
        x = stable_fraction(str(key), self.salt)
        acc = 0.0
        last = None
        for name, weight in self.weights.items():
            if weight <= 0:
                continue
            acc += weight
            last = name
            if x < acc:
                return name
        assert last is not None
        return last  # rounding: x was within float error of 1

    def _key(self, item: Any, key: str | None) -> str:
        if key is not None:
            return str(key)
        if self.key is not None:
            return str(self.key(item))
        return _content_key(item)

    def _record(self, name: str, result: ExtractionResult[Any] | None, latency: float) -> None:
        with self._lock:
            s = self._stats[name]
            s.requests += 1
            s.latency_sum += latency
            if result is None:
                s.errors += 1
                return
            s.confidence_sum += result.confidence
            s.prompt_tokens += result.usage.prompt_tokens
            s.completion_tokens += result.usage.completion_tokens
            s.cost_usd += result.usage.cost_usd or 0.0

    def _tag(self, name: str, result: ExtractionResult[Any]) -> ExtractionResult[Any]:
        out = replace(result, extra={**result.extra, "variant": name})
        return out

    def _extract(self, item: Any, key: str | None) -> ExtractionResult[Any]:
        name = self.assign(self._key(item, key))
        t0 = time.perf_counter()
        try:
            result = _call(self.variants[name], item)
        except Exception as exc:
            self._record(name, None, time.perf_counter() - t0)
            exc.variant = name  # type: ignore[attr-defined]
            raise
        self._record(name, result, time.perf_counter() - t0)
        return self._tag(name, result)

    async def _aextract(self, item: Any, key: str | None) -> ExtractionResult[Any]:
        name = self.assign(self._key(item, key))
        t0 = time.perf_counter()
        try:
            result = await _acall(self.variants[name], item)
        except Exception as exc:
            self._record(name, None, time.perf_counter() - t0)
            exc.variant = name  # type: ignore[attr-defined]
            raise
        self._record(name, result, time.perf_counter() - t0)
        return self._tag(name, result)

    def metrics(self) -> dict[str, dict[str, Any]]:
        """Per variant: requests, errors, mean confidence, mean latency, tokens and cost (this process)."""
        with self._lock:
            return {name: s.as_dict() for name, s in self._stats.items()}
