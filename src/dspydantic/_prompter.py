"""``Prompter``: the public verbs. Composes schema, renderer and a backend stack; holds no protocol detail.

The backend stack is ``CachingBackend(RetryingBackend(backend))`` (:mod:`dspydantic.lm.layers`): retries and
the cache are layers around the backend, not methods here. The extraction *plan* is one generator (sans-IO):
it yields requests and receives answers; two small drivers run it, sync and async, so they cannot drift.
"""

from __future__ import annotations

import asyncio
import copy
import itertools
import json
import logging
import os
from collections.abc import Callable, Generator, Iterable, Mapping, Sequence
from typing import Any, Literal, Unpack

from pydantic import BaseModel

from ._cache import CacheBackend, resolve_cache
from ._compat import LEGACY_INIT_KEYS, LegacyPrompterAPI, apply_legacy_init, pop_legacy_init, renamed_path
from ._example import Example
from ._fanout import fan_out
from ._inputs import InputDoc, InputKeywords, build_input, check_input_options, input_keywords
from ._observe import extraction
from ._options import DEFAULT_SAMPLE_TEMPERATURE, PROMPTER_ARGS, check_confidence, check_runtime
from ._render import Demo, OutputParseError, PromptState, Renderer
from ._result import ExtractionResult, Usage
from ._schema import ensure_model, free_text_model, model_schema
from .confidence.answer import AnswerCheck, merge_chunk_confidences
from .errors import BatchError, ConfigurationError, DspydanticError, ExtractionError
from .lm import LMBackend, LMRequest, LMResponse, resolve_backend
from .lm.settings import SETTING_NAMES, ModelSettings

log = logging.getLogger("dspydantic")

OnError = Literal["raise", "return"]
# The plan of one extraction: yields requests, receives responses, returns the result.
_Plan = Generator[LMRequest, LMResponse, ExtractionResult[Any]]


class Prompter(LegacyPrompterAPI):
    """Extracts instances of a Pydantic model with an LLM, and optimizes its own prompts.

    Each Prompter owns its LM backend (it never calls ``dspy.configure``). See the README for the choice
    of backend from ``model_id`` / ``lm``. dspydantic 0.1's ``optimized_*`` arguments and attributes are
    accepted (see :class:`~dspydantic._compat.LegacyPrompterAPI` and docs/migrating-from-0.1.md).
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
        top_p: float | None = None,
        seed: int | None = None,
        stop: str | list[str] | tuple[str, ...] | None = None,
        presence_penalty: float | None = None,
        frequency_penalty: float | None = None,
        extra_body: Mapping[str, Any] | None = None,
        max_retries: int = 2,
        lm_retries: int = 2,
        retry_backoff: float = 0.5,
        retry_max_time: float | None = 60.0,
        timeout: float = 120.0,
        connect_timeout: float | None = None,
        verify: bool | str = True,
        proxy: str | None = None,
        max_connections: int = 100,
        logprobs: bool | None = None,
        context_window: int | None = None,
        require_grounding: bool | Iterable[str] = False,
        confidence_samples: int = 0,
        sample_temperature: float = DEFAULT_SAMPLE_TEMPERATURE,
        calibrator: Any = None,
        **backend_options: Any,
    ) -> None:
        # dspydantic 0.1's optimized_* arguments: popped before the backend checks the remaining keywords
        legacy = pop_legacy_init(backend_options)
        check_runtime(
            max_retries=max_retries, lm_retries=lm_retries, retry_backoff=retry_backoff,
            retry_max_time=retry_max_time, timeout=timeout, connect_timeout=connect_timeout, verify=verify,
            proxy=proxy, max_connections=max_connections, logprobs=logprobs, context_window=context_window,
        )
        check_confidence(
            confidence_samples=confidence_samples, sample_temperature=sample_temperature, calibrator=calibrator
        )
        #: sampling settings sent with every request (and part of every cache key)
        self.settings = ModelSettings(
            temperature=temperature, max_tokens=max_tokens, top_p=top_p, seed=seed,
            stop=stop,
            presence_penalty=presence_penalty, frequency_penalty=frequency_penalty, extra_body=extra_body,
        )
        self.model: type[BaseModel] = ensure_model(model) if model is not None else free_text_model()
        self.free_text = model is None
        self.model_id = model_id
        self._base_schema = model_schema(self.model)
        #: True (every free string field), a set of field paths, or False; see :mod:`dspydantic.confidence`
        self.require_grounding = require_grounding
        self._answer_check: AnswerCheck | None = None
        self.answer_check  # noqa: B018 - a bad require_grounding fails here, before any backend is built
        #: extra sampled answers per extraction for the agreement signal (each is one more LM call)
        self.confidence_samples = confidence_samples
        self.sample_temperature = float(sample_temperature)
        #: a fitted :class:`dspydantic.confidence.Calibrator` (``calibrate()``/``optimize()`` set it)
        self.calibrator = calibrator
        self._backend: LMBackend = resolve_backend(
            model_id, lm=lm, api_key=api_key, api_base=api_base, timeout=timeout, context_window=context_window,
            transport={"connect_timeout": connect_timeout, "verify": verify, "proxy": proxy,
                       "max_connections": max_connections},
            accepted=(*PROMPTER_ARGS, *SETTING_NAMES, *LEGACY_INIT_KEYS),
            **backend_options,
        )
        check = getattr(self.backend, "check_settings", None)
        if callable(check):
            check(self.settings)
        self.api_base = api_base
        self.max_retries = max_retries
        self.lm_retries = lm_retries
        self.retry_backoff = float(retry_backoff)
        self.retry_max_time = retry_max_time
        self.timeout = float(timeout)
        self.logprobs = bool(getattr(self.backend, "cheap_logprobs", False)) if logprobs is None else logprobs
        self.cache = resolve_cache(cache)
        # what the plan drivers call: the backend wrapped in the retry and cache layers
        self._lm: LMBackend = self._stack(self._backend)
        self._state = PromptState(
            system_prompt=system_prompt,
            instruction_prompt=instruction_prompt,
            field_descriptions=dict(field_descriptions or {}),
            demos=tuple(demos or ()),
        )
        self._original_state = self._state
        self._renderer: Renderer | None = None
        self.optimization_result: Any = None
        if legacy:
            apply_legacy_init(self, legacy)

    def __repr__(self) -> str:
        return f"Prompter(model={self.model.__name__}, backend={self.backend!r})"

    # -- the backend and the layers around it ------------------------------------------------------
    def _stack(self, backend: LMBackend) -> LMBackend:
        from .lm.layers import CachingBackend, RetryingBackend

        lm: LMBackend = RetryingBackend(
            backend, retries=self.lm_retries, backoff=self.retry_backoff, max_time=self.retry_max_time
        )
        return CachingBackend(lm, self.cache) if self.cache is not None else lm

    @property
    def backend(self) -> LMBackend:
        """The LM backend: the bottom of the stack the extractions call (retries and the cache wrap it).

        Assigning one (e.g. a wrapper of it, such as ``dspydantic.integrations.observe.TracingBackend``)
        rebuilds the retry and cache layers around it: every LM call reaches it, retries and the cache still
        apply."""
        return self._backend

    @backend.setter
    def backend(self, value: LMBackend) -> None:
        self._backend = value
        self._lm = self._stack(value)

    # -- prompt state ------------------------------------------------------------------------------
    @property
    def temperature(self) -> float | None:
        return self.settings.temperature

    @property
    def max_tokens(self) -> int | None:
        return self.settings.max_tokens

    def _derive(
        self, *, state: PromptState | None = None, lm: LMBackend | None = None, confidence_samples: int | None = None
    ) -> Prompter:
        """A shallow copy serving ``state`` and/or calling ``lm`` (e.g. a budgeted stack) instead of ours,
        and/or sampling ``confidence_samples`` extra answers per extraction."""
        clone = copy.copy(self)
        if state is not None:
            clone.state = state
        if lm is not None:
            clone._lm = lm
        if confidence_samples is not None:
            clone.confidence_samples = confidence_samples
        clone.optimization_result = None
        return clone

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
    def _plan(self, item: Any, renderer: Renderer | None = None) -> _Plan:
        doc = self._input(item)
        renderer = renderer if renderer is not None else self.renderer
        chunks = self._chunks(doc, renderer)
        if chunks is None:
            return (yield from self._plan_doc(doc, renderer))
        # a long document: extract per chunk, merge (scalars by agreement, lists by union)
        from ._merge import merge_extractions

        results: list[ExtractionResult[Any]] = []
        failures: list[ExtractionError] = []
        for chunk in chunks:
            part = InputDoc(parts=({"type": "text", "text": chunk},), text=chunk, kind=doc.kind,
                            variables=doc.variables)
            try:
                results.append((yield from self._plan_doc(part, renderer)))
            except ExtractionError as exc:
                log.debug("chunk %d of %d gave no valid extraction: %s", len(results) + len(failures), len(chunks), exc)
                failures.append(exc)
        usage = Usage()
        for r in results:
            usage.add(r.usage)
        for f in failures:
            if isinstance(f.usage, Usage):
                usage.add(f.usage)
        if not results:
            last = failures[-1] if failures else None
            truncated = bool(failures) and all(f.truncated for f in failures)
            raise ExtractionError(
                f"no chunk of the {len(chunks)}-chunk document gave a valid {self.model.__name__}"
                + (" (every chunk's answer was cut by the token limit)" if truncated else "")
                + (f"; last: {last}" if last is not None else ""),
                raw_output=last.raw_output if last is not None else None,
                errors=[e for f in failures for e in f.errors],
                attempts=max((f.attempts for f in failures), default=0),
                usage=usage,
                truncated=truncated,
            )
        dumps = [r.data.model_dump(mode="json", by_alias=True) for r in results]
        merged = merge_extractions(dumps, self._base_schema, [r.confidence for r in results])
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

    def _chunks(self, doc: InputDoc, renderer: Renderer) -> list[str] | None:
        """Split a text document that does not fit the backend's context window (else None)."""
        window = getattr(self.backend, "context_window", None)
        if not window or doc.has_images:
            return None
        from ._chunking import chunk_budget, estimate_tokens, split_text

        doc_tokens = estimate_tokens(doc.text)
        if doc_tokens + (self.max_tokens or 512) < window // 2:  # the common case: clearly fits
            return None
        overhead = estimate_tokens(json.dumps(renderer.messages("", doc.variables), ensure_ascii=False))
        budget = chunk_budget(window, overhead, self.max_tokens or 512)
        if doc_tokens <= budget:
            return None
        return [c.text for c in split_text(doc.text, max_tokens=budget, overlap_tokens=min(64, budget // 8))]

    def _request(
        self, renderer: Renderer, messages: list[dict[str, Any]], settings: ModelSettings | None = None
    ) -> LMRequest:
        """The extraction request for rendered ``messages`` (the optimizer's student sends exactly this too,
        so candidates are scored, and cached, as inference would send them)."""
        return LMRequest(
            messages=messages,
            json_schema=renderer.schema,
            schema_name=renderer.schema_name,
            settings=settings if settings is not None else self.settings,
            logprobs=self.logprobs,
        )

    def _larger_limit(self, request: LMRequest, response: LMResponse) -> tuple[int | None, int | None]:
        """``(limit that was hit, a larger one the model allows or None)`` after ``finish_reason="length"``:
        double the limit, capped by the context window when it is known."""
        limit = request.settings.max_tokens or getattr(self.backend, "max_tokens", None) or response.completion_tokens
        if not isinstance(limit, int) or limit <= 0:
            return None, None
        bigger = limit * 2
        window = getattr(self.backend, "context_window", None)
        if isinstance(window, int) and window > 0:
            bigger = min(bigger, window - max(response.prompt_tokens, 1) - 1)
        return limit, (bigger if bigger > limit else None)

    def _plan_doc(self, doc: InputDoc, renderer: Renderer) -> _Plan:
        return (yield from self._plan_messages(
            renderer.messages(doc.as_content(), doc.variables), renderer, source=doc.text or None
        ))

    def _plan_messages(self, messages: list[dict[str, Any]], renderer: Renderer, *, source: str | None) -> _Plan:
        """The attempts of one extraction from its rendered messages: ask, parse, check, re-ask. ``source``
        is the document's text the values are grounded in. (Provider batch jobs send the first request
        themselves and resume here with its answer.)"""
        check = self.answer_check
        usage = Usage()
        errors: list[Any] = []
        raw = ""
        cached_all = True
        settings = self.settings
        grown = False
        attempt = 1
        while True:
            request = self._request(renderer, messages, settings)
            response = yield request
            raw = response.text
            cached_all = _count(usage, response) and cached_all
            if response.finish_reason == "length":  # cut by the token limit: never parsed, never cached
                limit, bigger = self._larger_limit(request, response)
                if bigger is not None and not grown:
                    log.debug("answer cut at max_tokens=%s; asking once more with max_tokens=%d", limit, bigger)
                    settings, grown = settings.replace(max_tokens=bigger), True
                    continue
                raise ExtractionError(
                    f"the answer was cut by the token limit (max_tokens={limit if limit else 'the default'}"
                    f"{', also after one retry with a larger limit' if grown else ''}): raise max_tokens"
                    + (" (the context window allows no more)" if limit and bigger is None else ""),
                    raw_output=raw,
                    errors=[*errors, [{"type": "truncated", "msg": "output cut by the token limit"}]],
                    attempts=attempt,
                    usage=usage,
                    truncated=True,
                )
            try:
                data = renderer.parse(raw)
                # grounding in the source and require_grounding (an ungrounded required value is re-asked)
                data, assessment = check.check(
                    renderer, raw, data, source, token_logprobs=response.token_logprobs,
                    token_texts=response.token_texts, attempt=attempt,
                )
            except OutputParseError as exc:
                errors.append(exc.errors)
                if attempt <= self.max_retries:
                    log.debug("answer did not validate (attempt %d): %s", attempt, exc.feedback)
                    messages = renderer.reask(messages, raw, exc)
                    attempt += 1
                    continue
                raise ExtractionError(
                    f"no valid {self.model.__name__} after {attempt} attempts; last errors: {errors[-1]}",
                    raw_output=raw,
                    errors=errors,
                    attempts=attempt,
                    usage=usage,
                ) from None
            # validated, and grounded where grounding is required: the cache layer may keep it now (an answer
            # that failed the grounding check was re-asked above and is never cached as good)
            response.confirm()
            samples: list[dict[str, Any] | None] = []  # opt-in agreement signal: extra sampled answers
            for i in range(1, self.confidence_samples + 1):
                sampled = yield self._request(
                    renderer, messages, settings.replace(temperature=self.sample_temperature, seed=i)
                )
                cached_all = _count(usage, sampled) and cached_all
                # a sample cut by the token limit or that does not validate counts as one that disagrees
                sample = None if sampled.finish_reason == "length" else check.sample(renderer, sampled.text)
                if sample is not None:
                    sampled.confirm()
                samples.append(sample)
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

    def _input(self, item: Any) -> InputDoc:
        """One input as a document: an InputDoc as is, an Example's input, else :func:`input_keywords`
        (the one rule for a str or a dict, shared by every verb and batch item)."""
        if isinstance(item, InputDoc):
            return item
        kwargs = item.input_kwargs() if isinstance(item, Example) else input_keywords(item)
        doc = build_input(**kwargs)
        try:
            doc.text.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise ConfigurationError(
                f"the input is not valid Unicode text: {exc.object[exc.start:exc.end]!r} at position {exc.start} "
                "is a lone surrogate (typically from bytes decoded with errors='surrogateescape'); clean it first, "
                "e.g. text.encode('utf-8', 'replace').decode('utf-8')"
            ) from None
        return doc

    # -- the two drivers -----------------------------------------------------------------------------
    # ``_observe.extraction`` brackets each extraction (cost on the usage, one log record, the tracing hooks):
    # once per item, whichever verb or batch path runs it. The optimizer's DSPy adapter passes ``lm`` (the LM
    # DSPy hands it) to try candidate prompts; those trial runs are not extractions of the user's and are not
    # observed (the optimizer reports its own progress and usage).
    def _run_plan(
        self, item: Any, *, lm: LMBackend | None = None, renderer: Renderer | None = None
    ) -> ExtractionResult[Any]:
        if lm is not None:
            return self._drive(item, lm, renderer)
        with extraction(self) as obs:
            return obs.finish(self._drive(item, self._lm, renderer))

    async def _arun_plan(self, item: Any, *, lm: LMBackend | None = None) -> ExtractionResult[Any]:
        if lm is not None:
            return await self._adrive(item, lm)
        with extraction(self) as obs:
            return obs.finish(await self._adrive(item, self._lm))

    def _drive(self, item: Any, backend: LMBackend, renderer: Renderer | None = None) -> ExtractionResult[Any]:
        plan = self._plan(item, renderer)
        request = next(plan)
        while True:
            response = backend.complete(request)
            try:
                request = plan.send(response)
            except StopIteration as stop:
                return stop.value

    async def _adrive(self, item: Any, backend: LMBackend) -> ExtractionResult[Any]:
        plan = self._plan(item)
        request = next(plan)
        while True:
            response = await backend.acomplete(request)
            try:
                request = plan.send(response)
            except StopIteration as stop:
                return stop.value

    # -- public verbs ------------------------------------------------------------------------------
    # ``input`` (positional only) is one input, read exactly as a batch item is (see ``input_keywords``:
    # a str is the text, a dict made only of input keywords is those keywords, any other dict is template
    # variables, an Example its input); ``inputs`` are the input keywords by name (``text=``, ``pdf_path=``...).
    def predict_with_confidence(
        self, input: str | Mapping[str, Any] | Example | None = None, /, **inputs: Unpack[InputKeywords]
    ) -> ExtractionResult[Any]:
        """Extract one input; returns data, confidence, raw output and usage (summed over re-asks)."""
        return self._run_plan(_item(input, inputs))

    def predict(
        self, input: str | Mapping[str, Any] | Example | None = None, /, **inputs: Unpack[InputKeywords]
    ) -> Any:
        """Extract one input into an instance of the model (text, template dict, image or PDF)."""
        return self._run_plan(_item(input, inputs)).data

    def run(
        self, input: str | Mapping[str, Any] | Example | None = None, /, **inputs: Unpack[InputKeywords]
    ) -> Any:
        """Alias of :meth:`predict`."""
        return self._run_plan(_item(input, inputs)).data

    __call__ = run

    async def apredict_with_confidence(
        self, input: str | Mapping[str, Any] | Example | None = None, /, **inputs: Unpack[InputKeywords]
    ) -> ExtractionResult[Any]:
        return await self._arun_plan(_item(input, inputs))

    async def apredict(
        self, input: str | Mapping[str, Any] | Example | None = None, /, **inputs: Unpack[InputKeywords]
    ) -> Any:
        """Native async :meth:`predict` (async HTTP; the local model runs in a worker thread)."""
        return (await self._arun_plan(_item(input, inputs))).data

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
        """Extract many inputs, ``max_workers`` at a time; results in input order.

        On an OpenAI-compatible endpoint the batch runs on the async HTTP engine (as :meth:`apredict_batch`,
        from this thread); on other backends on ``max_workers`` threads.

        ``on_error="return"`` puts the exception in a failed item's slot; ``"raise"`` lets every item
        finish, then raises :class:`BatchError` (whose ``results`` hold everything that succeeded).
        """
        items = list(inputs)
        workers = _workers(max_concurrency or max_workers, on_error)
        run_sync = getattr(self.backend, "run_sync", None)
        if callable(run_sync) and workers > 1 and len(items) > 1:
            # a backend on the async HTTP engine: the batch runs as one async batch there, no thread per item
            out = run_sync(self.apredict_batch(items, max_workers=workers, on_error="return",
                                               with_confidence=with_confidence, on_progress=on_progress))
            return _finish(out, on_error)
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

        fan_out(one, range(len(items)), workers)
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
        """Native async batch: at most ``max_workers`` extractions in flight; results in input order."""
        items = list(inputs)
        width = min(_workers(max_concurrency or max_workers, on_error), max(1, len(items)))
        results: list[Any] = [None] * len(items)
        queue = iter(range(len(items)))  # shared by the workers: next() never yields an index twice
        done = 0

        async def worker() -> None:
            nonlocal done
            for i in queue:
                try:
                    res = await self._arun_plan(items[i])
                    results[i] = res if with_confidence else res.data
                except Exception as exc:
                    results[i] = _tag(exc, i)
                done += 1
                if on_progress is not None:
                    on_progress(done, len(items))

        # ``width`` workers pulling the next index: memory and scheduling stay O(concurrency), not O(items)
        await asyncio.gather(*(worker() for _ in range(width)))
        return _finish(results, on_error)

    # -- provider batch jobs (OpenAI Batch API) live in an integration module -----------------------
    def submit_batch(
        self, inputs: Iterable[Any], *, name: str | None = None, store: Any = None, **kwargs: Any
    ) -> Any:
        """Submit every input as one provider batch job (about half the price, answers within 24 h);
        returns a :class:`~dspydantic.integrations.batch_jobs.BatchJob`. See that module."""
        from .integrations.batch_jobs import submit_batch

        return submit_batch(self, inputs, name=name, store=store, **kwargs)

    def resume_batch(self, id_or_path: str | os.PathLike[str], *, store: Any = None) -> Any:
        """The batch job recorded at ``id_or_path`` (a job file, or a job id in ``store`` or the default
        directory), e.g. in a new process; this prompter must be the one that submitted it."""
        from .integrations.batch_jobs import resume_batch

        return resume_batch(self, id_or_path, store=store)

    # -- optimization, evaluation and persistence live in their own modules ------------------------
    def optimize(self, examples: Sequence[Example], *args: Any, **kwargs: Any) -> Any:
        """Improve prompts, field descriptions and demos from examples; see :mod:`dspydantic.optimize`.
        (``args``: dspydantic 0.1's positional arguments, see :mod:`dspydantic.optimize._compat`.)"""
        from .optimize._compat import translate_optimize_kwargs
        from .optimize.run import optimize_prompter

        return optimize_prompter(self, examples, **translate_optimize_kwargs(self, kwargs, args))

    def calibrate(self, examples: Sequence[Example], *, method: str = "auto", **kwargs: Any) -> Any:
        """Fit this prompter's field-confidence calibrator on held-out labelled examples (never the ones
        its demos or prompts were made from); returns a :class:`dspydantic.confidence.CalibrationReport`."""
        from .confidence.fit import calibrate_prompter

        return calibrate_prompter(self, examples, method=method, **kwargs)

    def evaluate(self, examples: Sequence[Example], evaluator: Any = None, **kwargs: Any) -> Any:
        """Score this prompter on held-out examples (overall, per field, P/R/F1, failing examples)."""
        from .optimize.report import evaluate_prompter

        return evaluate_prompter(self, examples, evaluator=evaluator, **kwargs)

    def save(
        self, path: str | os.PathLike[str] | None = None, *, save_path: str | os.PathLike[str] | None = None
    ) -> None:
        """Write this prompter to a versioned directory of JSON (atomic; no secrets)."""
        from ._persist import save_prompter

        save_prompter(self, renamed_path("save", path, "save_path", save_path))

    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str] | None = None,
        model: type[BaseModel] | None = None,
        model_id: str | None = None,
        *,
        load_path: str | os.PathLike[str] | None = None,
        **kwargs: Any,
    ) -> Prompter:
        """Load a saved prompter; checks the saved schema against ``model`` (or rebuilds a model class)."""
        from ._persist import load_prompter

        path = renamed_path("load", path, "load_path", load_path)
        return load_prompter(cls, path, model=model, model_id=model_id, **kwargs)

    def with_fallback(self, *others: Any, min_confidence: float | None = None) -> Any:
        """A Prompter-like chain that tries ``others`` in turn when this one fails or answers below
        ``min_confidence``; see :class:`dspydantic.integrations.routing.Fallback`."""
        from .integrations.routing import Fallback  # a leaf without optional dependencies

        return Fallback([self, *others], min_confidence=min_confidence)

    def close(self) -> None:
        """Close the backend's connections (every event loop's and the sync engine's)."""
        self._lm.close()

    async def aclose(self) -> None:
        """Wait for pending cache writes, then close the backend's connections."""
        closer = getattr(self._lm, "aclose", None)
        if closer is not None:
            await closer()
        else:
            self._lm.close()


def _item(item: Any, keywords: Mapping[str, Any]) -> dict[str, Any]:
    """The input keywords of one call: the positional input read by the one rule (as a batch item is),
    plus the keywords given by name (the one input spec checks both)."""
    check_input_options(keywords)
    merged: dict[str, Any] = {}
    if isinstance(item, Example):
        merged = item.input_kwargs()
    elif item is not None:
        merged = input_keywords(item)
    both = sorted(set(merged) & set(keywords))
    if both:
        raise ConfigurationError(f"input keyword(s) {both} given both in the input and by name; give each once")
    merged.update(keywords)
    if not merged:
        raise ConfigurationError("nothing to extract from: pass text=..., image_path=..., or pdf_path=...")
    return merged


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


def _count(usage: Usage, response: LMResponse) -> bool:
    """Add one answer to ``usage``; returns whether the cache layer served it."""
    if response.cached:
        usage.cache_hits += 1
    else:
        usage.calls += 1
        usage.prompt_tokens += response.prompt_tokens
        usage.completion_tokens += response.completion_tokens
    return response.cached
