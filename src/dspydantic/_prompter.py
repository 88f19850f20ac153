"""``Prompter``: the public verbs. Composes schema, renderer and a backend stack; holds no protocol detail.

The backend stack is ``CachingBackend(RetryingBackend(backend))`` (:mod:`dspydantic.lm.layers`): retries and
the cache are layers around the backend, not methods here. The extraction *plan* is one generator (sans-IO,
:mod:`dspydantic._plan`): it yields requests and receives answers; two small drivers run it, sync and async,
so they cannot drift. The batch verbs' bodies are in :mod:`dspydantic._batch`.

``Prompter`` is generic in the user's model: ``Prompter(model=Invoice)`` is a ``Prompter[Invoice]`` whose
``run()`` returns an ``Invoice`` for a type checker too (free-text mode, ``model=None``, is a
``Prompter[BaseModel]``).

Size: the one public façade; every verb is a few lines delegating to its own module (plan, batch, persist,
optimize, integrations), and the typed overloads of the batch verbs alone take ~50 lines.
"""

from __future__ import annotations

import copy
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Generic, Literal, Unpack, cast, overload

from pydantic import BaseModel
from typing_extensions import TypeVar

from . import _batch, _plan
from ._batch import BatchOptions, OnError, Progress
from ._cache import CacheBackend, resolve_cache
from ._compat import LEGACY_INIT_KEYS, LegacyPrompterAPI, apply_legacy_init, pop_legacy_init, renamed_path
from ._example import Example
from ._inputs import InputDoc, InputKeywords, check_input_options, input_keywords
from ._observe import extraction
from ._options import DEFAULT_SAMPLE_TEMPERATURE, PROMPTER_ARGS, check_confidence, check_runtime
from ._plan import Plan
from ._render import Demo, PromptState, Renderer
from ._result import ExtractionResult
from ._schema import ensure_model, free_text_model, model_schema
from .confidence.answer import AnswerCheck
from .errors import ConfigurationError
from .lm import LMBackend, LMRequest, resolve_backend
from .lm.settings import SETTING_NAMES, ModelSettings

__all__ = ["Input", "OnError", "Prompter"]

log = logging.getLogger("dspydantic")

#: the user's model class a Prompter extracts (``BaseModel`` in free-text mode)
T = TypeVar("T", bound=BaseModel, default=BaseModel, covariant=True)
#: the model class ``Prompter.load(..., model=M)`` is given
M = TypeVar("M", bound=BaseModel, default=BaseModel)
#: one positional input of a verb: the text, a dict of template variables or input keywords, or an Example
Input = str | Mapping[str, Any] | Example | None


class Prompter(LegacyPrompterAPI, Generic[T]):
    """Extracts instances of a Pydantic model with an LLM, and optimizes its own prompts.

    Each Prompter owns its LM backend (it never calls ``dspy.configure``). See the README for the choice
    of backend from ``model_id`` / ``lm``. dspydantic 0.1's ``optimized_*`` arguments and attributes are
    accepted (see :class:`~dspydantic._compat.LegacyPrompterAPI` and docs/migrating-from-0.1.md).
    """

    def __init__(
        self,
        model: type[T] | None = None,
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
        require_grounding: bool | Iterable[str] | None = None,
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
        self.model: type[T] = cast("type[T]", ensure_model(model) if model is not None else free_text_model())
        self.free_text = model is None
        self.model_id = model_id
        self._base_schema = model_schema(self.model)
        #: True (every free string field), a set of field paths, False, or None: the backend's default (the
        #: embedded model: "absent is an answer", see :attr:`grounded_fields`); see :mod:`dspydantic.confidence`
        self.require_grounding = require_grounding
        self._answer_check: AnswerCheck | None = None
        if require_grounding is not None:
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
        self._answer_check = None  # the default grounding is the backend's

    # -- prompt state ------------------------------------------------------------------------------
    @property
    def temperature(self) -> float | None:
        return self.settings.temperature

    @property
    def max_tokens(self) -> int | None:
        return self.settings.max_tokens

    def _derive(
        self, *, state: PromptState | None = None, lm: LMBackend | None = None, confidence_samples: int | None = None
    ) -> Prompter[T]:
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
                self._base_schema, self.grounded_fields, grounding=not self.free_text
            )
        return check

    @property
    def grounded_fields(self) -> bool | Iterable[str]:
        """The fields whose values must be found in the document: ``require_grounding`` when given, else the
        backend's default. Backends with ``absent_is_an_answer`` (the embedded model) null an optional free
        string value the document does not contain (:func:`dspydantic.confidence.absent_fields`): a small
        model fills every field it is shown, and on SNIPS weather this lifts zero-shot from 0.10 to 0.59
        (docs/benchmarks.md). Other backends: no field."""
        if self.require_grounding is not None:
            return self.require_grounding
        if self.free_text or not getattr(self._backend, "absent_is_an_answer", False):
            return False
        from .confidence import absent_fields

        return absent_fields(self._base_schema)  # the schema answers are checked against (a loaded one too)

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

    # -- the plan of one extraction (:mod:`dspydantic._plan`; shared by the sync and the async driver) --
    def _plan(self, item: Any, renderer: Renderer | None = None, *, confidence: bool = True) -> Plan:
        return _plan.plan(self, item, renderer, confidence=confidence)

    def _plan_messages(self, messages: list[dict[str, Any]], renderer: Renderer, *, source: str | None) -> Plan:
        return _plan.plan_messages(self, messages, renderer, source=source)

    def _chunks(self, doc: InputDoc, renderer: Renderer) -> list[str] | None:
        return _plan.split_chunks(self, doc, renderer)

    def _request(
        self, renderer: Renderer, messages: list[dict[str, Any]], settings: ModelSettings | None = None
    ) -> LMRequest:
        return _plan.build_request(self, renderer, messages, settings)

    def _input(self, item: Any) -> InputDoc:
        return _plan.input_doc(item)

    # -- the two drivers -----------------------------------------------------------------------------
    # ``_observe.extraction`` brackets each extraction (cost on the usage, one log record, the tracing hooks):
    # once per item, whichever verb or batch path runs it. The optimizer's DSPy adapter passes ``lm`` (the LM
    # DSPy hands it) to try candidate prompts; those trial runs are not extractions of the user's and are not
    # observed (the optimizer reports its own progress and usage).
    # ``data_only``: the caller keeps only ``result.data`` (``run``, ``apredict``, the batch verbs without
    # ``with_confidence``); unless an observer is there to see the result, its confidence is not computed.
    def _run_plan(
        self, item: Any, *, lm: LMBackend | None = None, renderer: Renderer | None = None, data_only: bool = False
    ) -> ExtractionResult[T]:
        if lm is not None:
            return _plan.drive(self._plan(item, renderer), lm)
        with extraction(self) as obs:
            plan = self._plan(item, renderer, confidence=not data_only or obs.observed)
            return obs.finish(_plan.drive(plan, self._lm))

    async def _arun_plan(
        self, item: Any, *, lm: LMBackend | None = None, data_only: bool = False
    ) -> ExtractionResult[T]:
        if lm is not None:
            return await _plan.adrive(self._plan(item), lm)
        with extraction(self) as obs:
            plan = self._plan(item, confidence=not data_only or obs.observed)
            return obs.finish(await _plan.adrive(plan, self._lm))

    # -- public verbs ------------------------------------------------------------------------------
    # ``input`` (positional only) is one input, read exactly as a batch item is (see ``input_keywords``:
    # a str is the text, a dict made only of input keywords is those keywords, any other dict is template
    # variables, an Example its input); ``inputs`` are the input keywords by name (``text=``, ``pdf_path=``...).
    def predict_with_confidence(self, input: Input = None, /, **inputs: Unpack[InputKeywords]) -> ExtractionResult[T]:
        """Extract one input; returns data, confidence, raw output and usage (summed over re-asks)."""
        return self._run_plan(_item(input, inputs))

    def predict(self, input: Input = None, /, **inputs: Unpack[InputKeywords]) -> T:
        """Extract one input into an instance of the model (text, template dict, image or PDF)."""
        return self._run_plan(_item(input, inputs), data_only=True).data

    def run(self, input: Input = None, /, **inputs: Unpack[InputKeywords]) -> T:
        """Alias of :meth:`predict`."""
        return self._run_plan(_item(input, inputs), data_only=True).data

    __call__ = run

    async def apredict_with_confidence(
        self, input: Input = None, /, **inputs: Unpack[InputKeywords]
    ) -> ExtractionResult[T]:
        return await self._arun_plan(_item(input, inputs))

    async def apredict(self, input: Input = None, /, **inputs: Unpack[InputKeywords]) -> T:
        """Native async :meth:`predict` (async HTTP; the local model runs in a worker thread)."""
        return (await self._arun_plan(_item(input, inputs), data_only=True)).data

    arun = apredict

    # The batch verbs' result type follows ``on_error`` and ``with_confidence``: with "raise" (the default) every
    # slot holds a result (a failure raises BatchError); with "return" a failed slot holds its exception.
    @overload
    def predict_batch(self, inputs: Iterable[Any], max_workers: int = ..., on_error: Literal["raise"] = ..., *,
                      with_confidence: Literal[False] = ..., **options: Unpack[BatchOptions]) -> list[T]: ...
    @overload
    def predict_batch(self, inputs: Iterable[Any], max_workers: int = ..., on_error: Literal["raise"] = ..., *,
                      with_confidence: Literal[True], **options: Unpack[BatchOptions]) -> list[ExtractionResult[T]]: ...
    @overload
    def predict_batch(self, inputs: Iterable[Any], max_workers: int = ..., on_error: OnError = ..., *,
                      with_confidence: Literal[False] = ..., **options: Unpack[BatchOptions],
                      ) -> list[T | Exception]: ...
    @overload
    def predict_batch(self, inputs: Iterable[Any], max_workers: int = ..., on_error: OnError = ..., *,
                      with_confidence: Literal[True], **options: Unpack[BatchOptions],
                      ) -> list[ExtractionResult[T] | Exception]: ...
    @overload
    def predict_batch(self, inputs: Iterable[Any], max_workers: int = ..., on_error: OnError = ..., *,
                      with_confidence: bool, **options: Unpack[BatchOptions],
                      ) -> list[ExtractionResult[T] | T | Exception]: ...
    def predict_batch(
        self, inputs: Iterable[Any], max_workers: int = 4, on_error: OnError = "raise", *,
        with_confidence: bool = False, max_concurrency: int | None = None, on_progress: Progress | None = None,
    ) -> list[Any]:
        """Extract many inputs, ``max_workers`` at a time; results in input order.

        On an OpenAI-compatible endpoint the batch runs on the async HTTP engine (as :meth:`apredict_batch`,
        from this thread); on other backends on ``max_workers`` threads.

        ``on_error="return"`` puts the exception in a failed item's slot; ``"raise"`` lets every item
        finish, then raises :class:`BatchError` (whose ``results`` hold everything that succeeded).
        """
        workers = _batch.check_workers(max_concurrency or max_workers, on_error)
        out = _batch.run_batch(self, list(inputs), workers, with_confidence=with_confidence, on_progress=on_progress)
        return _batch.finish(out, on_error)

    @overload
    async def apredict_batch(self, inputs: Iterable[Any], max_workers: int = ..., on_error: Literal["raise"] = ..., *,
                             with_confidence: Literal[False] = ..., **options: Unpack[BatchOptions]) -> list[T]: ...
    @overload
    async def apredict_batch(self, inputs: Iterable[Any], max_workers: int = ..., on_error: Literal["raise"] = ..., *,
                             with_confidence: Literal[True], **options: Unpack[BatchOptions],
                             ) -> list[ExtractionResult[T]]: ...
    @overload
    async def apredict_batch(self, inputs: Iterable[Any], max_workers: int = ..., on_error: OnError = ..., *,
                             with_confidence: Literal[False] = ..., **options: Unpack[BatchOptions],
                             ) -> list[T | Exception]: ...
    @overload
    async def apredict_batch(self, inputs: Iterable[Any], max_workers: int = ..., on_error: OnError = ..., *,
                             with_confidence: Literal[True], **options: Unpack[BatchOptions],
                             ) -> list[ExtractionResult[T] | Exception]: ...
    @overload
    async def apredict_batch(self, inputs: Iterable[Any], max_workers: int = ..., on_error: OnError = ..., *,
                             with_confidence: bool, **options: Unpack[BatchOptions],
                             ) -> list[ExtractionResult[T] | T | Exception]: ...
    async def apredict_batch(
        self, inputs: Iterable[Any], max_workers: int = 4, on_error: OnError = "raise", *,
        with_confidence: bool = False, max_concurrency: int | None = None, on_progress: Progress | None = None,
    ) -> list[Any]:
        """Native async batch: at most ``max_workers`` extractions in flight; results in input order."""
        workers = _batch.check_workers(max_concurrency or max_workers, on_error)
        out = await _batch.arun_batch(
            self, list(inputs), workers, with_confidence=with_confidence, on_progress=on_progress
        )
        return _batch.finish(out, on_error)

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

    # -- identity: one fingerprint for the store, workers, service and batch jobs ------------------------
    @property
    def fingerprint(self) -> str:
        """sha256 hex of everything that decides what this prompter answers (schema, prompts, field
        descriptions, demos, LM, sampling settings); the same in every process and for a ``load()`` copy.
        See :mod:`dspydantic._fingerprint`."""
        from ._fingerprint import prompter_fingerprint

        return prompter_fingerprint(self)

    @property
    def version(self) -> str:
        """The first 12 hex digits of :attr:`fingerprint` (what the service and the stores show)."""
        return self.fingerprint[:12]

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
        """Write this prompter to a versioned directory of JSON (atomic; no secrets; through a symbolic link,
        into the directory it points to)."""
        from .persist import save_prompter

        save_prompter(self, renamed_path("save", path, "save_path", save_path))

    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str] | None = None,
        model: type[M] | None = None,
        model_id: str | None = None,
        *,
        load_path: str | os.PathLike[str] | None = None,
        **kwargs: Any,
    ) -> Prompter[M]:
        """Load a saved prompter; checks the saved schema against ``model`` (or rebuilds a model class).

        The endpoint and key come from the arguments (``api_base=``, ``api_key=``, ``lm=``) or the environment,
        never from the directory: ``trust_saved_endpoint=True`` uses the saved ``api_base``, with the
        ``api_key=`` of this call only (never a key from the environment). See :mod:`dspydantic.persist.load`.
        Typed as a ``Prompter[M]`` for the ``model=M`` given (``Prompter[BaseModel]`` without one).
        """
        from .persist import load_prompter

        path = renamed_path("load", path, "load_path", load_path)
        return cast("Prompter[M]", load_prompter(cls, path, model=model, model_id=model_id, **kwargs))

    def with_fallback(self, *others: Any, min_confidence: float | Mapping[str, float] | None = None) -> Any:
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
