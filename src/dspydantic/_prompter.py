"""``Prompter``: the public verbs. Composes schema, renderer, backend and cache; holds no protocol detail."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import json
import logging
import os
import time
from collections.abc import Callable, Generator, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal

from pydantic import BaseModel

from ._cache import CacheBackend, request_key, resolve_cache, response_from_json, response_to_json
from ._example import INPUT_KEYS, Example
from ._inputs import InputDoc, build_input
from ._render import Demo, OutputParseError, PromptState, Renderer
from ._result import ExtractionResult, Usage
from ._schema import ensure_model, free_text_model, model_schema
from .confidence.answer import AnswerCheck, merge_chunk_confidences
from .errors import BatchError, ConfigurationError, DspydanticError, ExtractionError, LMError
from .lm import LMBackend, LMRequest, LMResponse, resolve_backend

log = logging.getLogger("dspydantic")

OnError = Literal["raise", "return"]
# The plan of one extraction: yields requests, receives responses, returns the result.
_Plan = Generator[LMRequest, tuple[LMResponse, bool], ExtractionResult[Any]]


class Prompter:
    """Extracts instances of a Pydantic model with an LLM, and optimizes its own prompts.

    Each Prompter owns its LM backend (it never calls ``dspy.configure``). See the README for the choice
    of backend from ``model_id`` / ``lm``.
    """

    def __init__(
        self,
        model: type[BaseModel] | None = None,
        model_id: str | None = None,
        *,
        lm: Any = None,
        api_key: str | None = None,
        api_base: str | None = None,
        cache: bool | str | CacheBackend | None = False,
        system_prompt: str | None = None,
        instruction_prompt: str | None = None,
        field_descriptions: Mapping[str, str] | None = None,
        demos: Sequence[Demo] | None = None,
        temperature: float | None = None,
        max_tokens: int | None = None,
        max_retries: int = 2,
        lm_retries: int = 2,
        retry_backoff: float = 0.5,
        timeout: float = 120.0,
        logprobs: bool | None = None,
        context_window: int | None = None,
        require_grounding: bool | Iterable[str] = False,
        confidence_samples: int = 0,
        sample_temperature: float = 0.7,
        calibrator: Any = None,
        **lm_kwargs: Any,
    ) -> None:
        if not isinstance(max_retries, int) or max_retries < 0:
            raise ConfigurationError(f"max_retries must be a non-negative int, got {max_retries!r}")
        if isinstance(confidence_samples, bool) or not isinstance(confidence_samples, int) or confidence_samples < 0:
            raise ConfigurationError(f"confidence_samples must be a non-negative int, got {confidence_samples!r}")
        self.model: type[BaseModel] = ensure_model(model) if model is not None else free_text_model()
        self.free_text = model is None
        self.model_id = model_id
        self.backend: LMBackend = resolve_backend(
            model_id, lm=lm, api_key=api_key, api_base=api_base, timeout=timeout,
            context_window=context_window, **lm_kwargs,
        )
        self.api_base = api_base
        self.temperature = temperature
        self.max_tokens = max_tokens
        self.max_retries = max_retries
        self.lm_retries = lm_retries
        self.retry_backoff = retry_backoff
        self.logprobs = bool(getattr(self.backend, "cheap_logprobs", False)) if logprobs is None else logprobs
        self.cache = resolve_cache(cache)
        self._base_schema = model_schema(self.model)
        self._state = PromptState(
            system_prompt=system_prompt,
            instruction_prompt=instruction_prompt,
            field_descriptions=dict(field_descriptions or {}),
            demos=tuple(demos or ()),
        )
        self._original_state = self._state
        self._renderer: Renderer | None = None
        self.optimization_result: Any = None
        #: True (every free string field), a set of field paths, or False; see :mod:`dspydantic.confidence`
        self.require_grounding = require_grounding
        #: extra sampled answers per extraction for the agreement signal (each is one more LM call)
        self.confidence_samples = confidence_samples
        self.sample_temperature = sample_temperature
        #: a fitted :class:`dspydantic.confidence.Calibrator` (``calibrate()``/``optimize()`` set it)
        self.calibrator = calibrator
        self._answer_check: AnswerCheck | None = None
        self.answer_check  # noqa: B018 - a bad require_grounding fails here, before any LM call

    def __repr__(self) -> str:
        return f"Prompter(model={self.model.__name__}, backend={self.backend!r})"

    # -- prompt state ------------------------------------------------------------------------------
    @property
    def state(self) -> PromptState:
        return self._state

    @state.setter
    def state(self, value: PromptState) -> None:
        self._state = value
        self._renderer = None

    def set_base_schema(self, schema: dict[str, Any]) -> None:
        """Show the LM exactly this (saved) schema instead of the one generated from the model class."""
        self._base_schema = schema
        self._renderer = None
        self._answer_check = None

    @property
    def renderer(self) -> Renderer:
        r = self._renderer
        if r is None:
            r = self._renderer = Renderer(self.model, self._state, base_schema=self._base_schema)
        return r

    @property
    def answer_check(self) -> AnswerCheck:
        """Grounding and per-field confidence of answers for this prompter's schema."""
        check = self._answer_check
        if check is None:
            check = self._answer_check = AnswerCheck(
                self._base_schema, self.require_grounding, grounding=not self.free_text
            )
        return check

    @property
    def system_prompt(self) -> str | None:
        return self._state.system_prompt

    @property
    def instruction_prompt(self) -> str | None:
        return self._state.instruction_prompt

    @property
    def field_descriptions(self) -> dict[str, str]:
        return dict(self.renderer.descriptions)

    @property
    def demos(self) -> tuple[Demo, ...]:
        return self._state.demos

    # -- the plan of one extraction (shared by the sync and the async driver) ----------------------
    def _plan(self, item: Any) -> _Plan:
        doc = self._input(item)
        chunks = self._chunks(doc)
        if chunks is None:
            return (yield from self._plan_doc(doc))
        # a long document: extract per chunk, merge (scalars by agreement, lists by union)
        from ._chunking import merge_extractions

        results: list[ExtractionResult[Any]] = []
        for chunk in chunks:
            part = InputDoc(parts=({"type": "text", "text": chunk},), text=chunk, kind=doc.kind,
                            fingerprint=f"{doc.fingerprint}:{len(results)}", variables=doc.variables)
            try:
                results.append((yield from self._plan_doc(part)))
            except ExtractionError as exc:
                log.debug("chunk %d of %d gave no valid extraction: %s", len(results), len(chunks), exc)
        if not results:
            raise ExtractionError(f"no chunk of the {len(chunks)}-chunk document gave a valid {self.model.__name__}")
        dumps = [r.data.model_dump(mode="json", by_alias=True) for r in results]
        merged = merge_extractions(dumps, self._base_schema, [r.confidence for r in results])
        usage = Usage()
        for r in results:
            usage.add(r.usage)
        data = self.model.model_validate(merged)
        # spans against the whole document; each field's confidence from the chunks that gave its value
        grounded = self.answer_check.regrounded(data, doc.text)
        fields = merge_chunk_confidences(
            self.answer_check, data.model_dump(mode="json", by_alias=True),
            [(d, r.field_confidences) for d, r in zip(dumps, results, strict=True)],
        )
        return ExtractionResult(
            data=data,
            confidence=min(fields.values()) if fields else min(r.confidence for r in results),
            raw_output=json.dumps(merged, ensure_ascii=False),
            usage=usage,
            attempts=max(r.attempts for r in results),
            cached=all(r.cached for r in results),
            confidence_source=results[0].confidence_source,
            field_confidences=fields,
            spans=grounded.spans,
            ungrounded=grounded.ungrounded,
            calibrated=results[0].calibrated,
            extra={"chunks": len(chunks), "chunks_extracted": len(results)},
        )

    def _chunks(self, doc: InputDoc) -> list[str] | None:
        """Split a text document that does not fit the backend's context window (else None)."""
        window = getattr(self.backend, "context_window", None)
        if not window or doc.has_images:
            return None
        from ._chunking import chunk_budget, estimate_tokens, split_text

        doc_tokens = estimate_tokens(doc.text)
        if doc_tokens + (self.max_tokens or 512) < window // 2:  # the common case: clearly fits
            return None
        overhead = estimate_tokens(json.dumps(self.renderer.messages("", doc.variables), ensure_ascii=False))
        budget = chunk_budget(window, overhead, self.max_tokens or 512)
        if doc_tokens <= budget:
            return None
        return [c.text for c in split_text(doc.text, max_tokens=budget, overlap_tokens=min(64, budget // 8))]

    def _request(self, renderer: Renderer, messages: list[dict[str, Any]]) -> LMRequest:
        """The extraction request for rendered ``messages`` (the optimizer's student sends exactly this too,
        so candidates are scored, and cached, as inference would send them)."""
        return LMRequest(
            messages=messages,
            json_schema=renderer.schema,
            schema_name=renderer.schema_name,
            temperature=self.temperature,
            max_tokens=self.max_tokens,
            logprobs=self.logprobs,
        )

    def _plan_doc(self, doc: InputDoc) -> _Plan:
        renderer = self.renderer
        check = self.answer_check
        messages = renderer.messages(doc.as_content(), doc.variables)
        usage = Usage()
        errors: list[Any] = []
        raw = ""
        cached_all = True
        for attempt in range(1, self.max_retries + 2):
            request = self._request(renderer, messages)
            response, hit = yield request
            raw = response.text
            cached_all = _count(usage, response, hit) and cached_all
            try:
                data = renderer.parse(raw)
                # grounding in the source and require_grounding (an ungrounded required value is re-asked)
                data, assessment = check.check(
                    renderer, raw, data, doc.text or None, token_logprobs=response.token_logprobs,
                    token_texts=response.token_texts, attempt=attempt,
                )
            except OutputParseError as exc:
                errors.append(exc.errors)
                if attempt <= self.max_retries:
                    log.debug("answer did not validate (attempt %d): %s", attempt, exc.feedback)
                    messages = renderer.reask(messages, raw, exc)
                continue
            samples = []  # opt-in agreement signal: extra sampled answers to the same request
            for i in range(1, self.confidence_samples + 1):
                sampled, hit = yield dataclasses.replace(
                    request, temperature=self.sample_temperature, extra={**request.extra, "seed": i}
                )
                cached_all = _count(usage, sampled, hit) and cached_all
                samples.append(check.sample(renderer, sampled.text))
            conf = check.confidences(
                assessment, samples=samples, calibrator=self.calibrator, logprobs=bool(response.token_logprobs)
            )
            return ExtractionResult(
                data=data,
                confidence=conf.confidence,
                raw_output=raw,
                usage=usage,
                attempts=attempt,
                cached=cached_all,
                confidence_source=conf.source,
                field_confidences=conf.field_confidences,
                spans=conf.spans,
                ungrounded=conf.ungrounded,
                field_signals=conf.field_signals,
                calibrated=conf.calibrated,
            )
        raise ExtractionError(
            f"no valid {self.model.__name__} after {self.max_retries + 1} attempts; last errors: "
            f"{errors[-1] if errors else '?'}",
            raw_output=raw,
            errors=errors,
            attempts=self.max_retries + 1,
            usage=usage,
        )

    def _input(self, item: Any) -> InputDoc:
        if isinstance(item, InputDoc):
            return item
        if isinstance(item, Example):
            item = item.input_kwargs()
        elif isinstance(item, str):
            item = {"text": item}
        elif not isinstance(item, Mapping):
            raise ConfigurationError(
                f"an input must be a str, a dict, an Example or an InputDoc, got {type(item).__name__}"
            )
        kwargs = dict(item) if set(item) <= INPUT_KEYS else {"text": dict(item)}
        return build_input(**kwargs)

    # -- calling the backend (cache, transport retries) --------------------------------------------
    def _cached(self, request: LMRequest) -> tuple[str | None, LMResponse | None]:
        if self.cache is None:
            return None, None
        key = request_key(self.backend.cache_id, request)
        hit = self.cache.get(key)
        return key, (response_from_json(hit) if hit is not None else None)

    def _store(self, key: str | None, response: LMResponse) -> None:
        if key is not None and self.cache is not None:
            self.cache.set(key, response_to_json(response))

    def _call(self, request: LMRequest) -> tuple[LMResponse, bool]:
        key, hit = self._cached(request)
        if hit is not None:
            return hit, True
        for attempt in range(self.lm_retries + 1):
            try:
                response = self.backend.complete(request)
                break
            except LMError as exc:
                if not exc.retryable or attempt == self.lm_retries:
                    raise
                time.sleep(self.retry_backoff * 2**attempt)
        self._store(key, response)
        return response, False

    async def _acall(self, request: LMRequest) -> tuple[LMResponse, bool]:
        key, hit = self._cached(request)
        if hit is not None:
            return hit, True
        for attempt in range(self.lm_retries + 1):
            try:
                response = await self.backend.acomplete(request)
                break
            except LMError as exc:
                if not exc.retryable or attempt == self.lm_retries:
                    raise
                await asyncio.sleep(self.retry_backoff * 2**attempt)
        self._store(key, response)
        return response, False

    def _run_plan(self, item: Any) -> ExtractionResult[Any]:
        plan = self._plan(item)
        request = next(plan)
        while True:
            try:
                request = plan.send(self._call(request))
            except StopIteration as stop:
                return stop.value

    async def _arun_plan(self, item: Any) -> ExtractionResult[Any]:
        plan = self._plan(item)
        request = next(plan)
        while True:
            try:
                request = plan.send(await self._acall(request))
            except StopIteration as stop:
                return stop.value

    # -- public verbs ------------------------------------------------------------------------------
    def predict_with_confidence(
        self, text: str | Mapping[str, Any] | None = None, **inputs: Any
    ) -> ExtractionResult[Any]:
        """Extract one input; returns data, confidence, raw output and usage (summed over re-asks)."""
        return self._run_plan(_item(text, inputs))

    def predict(self, text: str | Mapping[str, Any] | None = None, **inputs: Any) -> Any:
        """Extract one input into an instance of the model (text, template dict, image or PDF)."""
        return self._run_plan(_item(text, inputs)).data

    def run(self, text: str | Mapping[str, Any] | None = None, **inputs: Any) -> Any:
        """Alias of :meth:`predict`."""
        return self._run_plan(_item(text, inputs)).data

    __call__ = run

    async def apredict_with_confidence(
        self, text: str | Mapping[str, Any] | None = None, **inputs: Any
    ) -> ExtractionResult[Any]:
        return await self._arun_plan(_item(text, inputs))

    async def apredict(self, text: str | Mapping[str, Any] | None = None, **inputs: Any) -> Any:
        """Native async :meth:`predict` (async HTTP; the local model runs in a worker thread)."""
        return (await self._arun_plan(_item(text, inputs))).data

    arun = apredict

    def predict_batch(
        self,
        inputs: Iterable[Any],
        max_workers: int = 4,
        on_error: OnError = "raise",
        *,
        with_confidence: bool = False,
        max_concurrency: int | None = None,
        on_progress: Callable[[int, int], None] | None = None,
    ) -> list[Any]:
        """Extract many inputs on ``max_workers`` threads; results in input order.

        ``on_error="return"`` puts the exception in a failed item's slot; ``"raise"`` lets every item
        finish, then raises :class:`BatchError` (whose ``results`` hold everything that succeeded).
        """
        items = list(inputs)
        workers = _workers(max_concurrency or max_workers, on_error)
        results: list[Any] = [None] * len(items)
        done = itertools.count(1)  # next() on a count is atomic: safe from the worker threads

        def one(i: int) -> None:
            try:
                res = self._run_plan(items[i])
                results[i] = res if with_confidence else res.data
            except Exception as exc:
                results[i] = _tag(exc, i)
            finished = next(done)
            if on_progress is not None:
                on_progress(finished, len(items))

        if workers == 1 or len(items) <= 1:
            for i in range(len(items)):
                one(i)
        else:
            with ThreadPoolExecutor(max_workers=min(workers, len(items))) as pool:
                list(pool.map(one, range(len(items))))
        return _finish(results, on_error)

    async def apredict_batch(
        self,
        inputs: Iterable[Any],
        max_workers: int = 4,
        on_error: OnError = "raise",
        *,
        with_confidence: bool = False,
        max_concurrency: int | None = None,
        on_progress: Callable[[int, int], None] | None = None,
    ) -> list[Any]:
        """Native async batch: at most ``max_workers`` requests in flight; results in input order."""
        items = list(inputs)
        sem = asyncio.Semaphore(_workers(max_concurrency or max_workers, on_error))
        done = 0

        async def one(i: int) -> Any:
            nonlocal done
            async with sem:
                try:
                    res = await self._arun_plan(items[i])
                    out = res if with_confidence else res.data
                except Exception as exc:
                    out = _tag(exc, i)
            done += 1
            if on_progress is not None:
                on_progress(done, len(items))
            return out

        results = await asyncio.gather(*(one(i) for i in range(len(items))))
        return _finish(list(results), on_error)

    # -- optimization, evaluation and persistence live in their own modules ------------------------
    def optimize(self, examples: Sequence[Example], **kwargs: Any) -> Any:
        """Improve prompts, field descriptions and demos from examples; see :mod:`dspydantic.optimize`."""
        from .optimize.run import optimize_prompter

        return optimize_prompter(self, examples, **kwargs)

    def calibrate(self, examples: Sequence[Example], *, method: str = "auto", **kwargs: Any) -> Any:
        """Fit this prompter's field-confidence calibrator on held-out labelled examples (never the ones
        its demos or prompts were made from); returns a :class:`dspydantic.confidence.CalibrationReport`."""
        from .confidence.fit import calibrate_prompter

        return calibrate_prompter(self, examples, method=method, **kwargs)

    def evaluate(self, examples: Sequence[Example], evaluator: Any = None, **kwargs: Any) -> Any:
        """Score this prompter on held-out examples (overall, per field, P/R/F1, failing examples)."""
        from .optimize.report import evaluate_prompter

        return evaluate_prompter(self, examples, evaluator=evaluator, **kwargs)

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write this prompter to a versioned directory of JSON (atomic; no secrets)."""
        from ._persist import save_prompter

        save_prompter(self, path)

    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str],
        model: type[BaseModel] | None = None,
        model_id: str | None = None,
        **kwargs: Any,
    ) -> Prompter:
        """Load a saved prompter; checks the saved schema against ``model`` (or rebuilds a model class)."""
        from ._persist import load_prompter

        return load_prompter(cls, path, model=model, model_id=model_id, **kwargs)

    def close(self) -> None:
        self.backend.close()


def _item(text: Any, inputs: dict[str, Any]) -> Any:
    unknown = set(inputs) - INPUT_KEYS
    if unknown:
        raise ConfigurationError(f"unknown input argument(s) {sorted(unknown)}; expected {sorted(INPUT_KEYS)}")
    if text is not None:
        inputs = {"text": text, **inputs}
    if not inputs:
        raise ConfigurationError("nothing to extract from: pass text=..., image_path=..., or pdf_path=...")
    return inputs


def _workers(n: int, on_error: str) -> int:
    if on_error not in ("raise", "return"):
        raise ConfigurationError(f"on_error must be 'raise' or 'return', got {on_error!r}")
    if not isinstance(n, int) or n < 1:
        raise ConfigurationError(f"max_workers must be a positive int, got {n!r}")
    return n


def _tag(exc: Exception, index: int) -> Exception:
    if isinstance(exc, DspydanticError):
        exc.batch_index = index  # type: ignore[attr-defined]
    return exc


def _finish(results: list[Any], on_error: str) -> list[Any]:
    if on_error == "raise":
        failed = {i: r for i, r in enumerate(results) if isinstance(r, Exception)}
        if failed:
            first = min(failed)
            raise BatchError(
                f"{len(failed)} of {len(results)} items failed; first (item {first}): {failed[first]}",
                results=results,
                errors=failed,
            ) from failed[first]
    return results


def _count(usage: Usage, response: LMResponse, hit: bool) -> bool:
    """Add one answer to ``usage``; returns whether it was a cache hit."""
    if hit:
        usage.cache_hits += 1
    else:
        usage.calls += 1
        usage.prompt_tokens += response.prompt_tokens
        usage.completion_tokens += response.completion_tokens
    return hit
