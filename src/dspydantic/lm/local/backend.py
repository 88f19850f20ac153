"""The local backend: :class:`LocalBackend` (the :class:`LMBackend` protocol over an embedded llama.cpp model)
and :func:`resolve_local` for the ``local`` model ids.

One call: messages -> the model's chat template -> tokens; the KV cache is prepared from the longest saved
prefix (:mod:`.states`); a JSON schema becomes a grammar (:mod:`.grammar`), checked lazily under greedy
decoding; log-probabilities come from a logits processor (:mod:`.logprobs`). All of it under the lock of the
one loaded model (:mod:`.model`).
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar

from dspydantic.errors import ConfigurationError, LMError
from dspydantic.lm._assemble import DEFAULT_MODEL, extra_for, fingerprint, resolve_model_file
from dspydantic.lm._base import LMRequest, LMResponse
from dspydantic.lm.local import _llama
from dspydantic.lm.local.choices import ChoiceGuide
from dspydantic.lm.local.grammar import LazyGrammar, bound_string_lengths, every_key_written
from dspydantic.lm.local.logprobs import LogprobRecorder
from dspydantic.lm.local.model import (
    SharedModel,
    acquire_model,
    check_not_forked,
    is_current,
    mark_computing,
    release_model,
)
from dspydantic.lm.settings import ModelSettings

# the public names are re-exported by dspydantic.lm.local (its __all__)

DEFAULT_N_CTX = 4096
DEFAULT_MAX_TOKENS = 512
DEFAULT_STRING_MAX_LENGTH = 300

#: llama.cpp sampling options a request may pass in ``ModelSettings.extra_body``
_EXTRA_OPTIONS = frozenset({"top_k", "min_p", "repeat_penalty", "typical_p", "tfs_z", "mirostat_mode",
                            "mirostat_tau", "mirostat_eta"})


def local_model_path(name: str = DEFAULT_MODEL) -> Path:
    """Path of a local model file, assembling (and verifying) the default Qwen model if needed."""
    return resolve_model_file(name)[0]


def _messages_to_text(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Chat messages with list content joined to a string; image parts are refused (text-only model)."""
    out = []
    for message in messages:
        content = message.get("content")
        if isinstance(content, list):
            texts = []
            for part in content:
                kind = part.get("type") if isinstance(part, dict) else None
                if kind == "text":
                    texts.append(str(part.get("text", "")))
                elif kind in ("image_url", "input_image", "image"):
                    raise ConfigurationError(
                        "the local model is text-only: it cannot read image inputs; "
                        "use a vision-capable model id for images"
                    )
                else:
                    raise ConfigurationError(
                        f"unsupported message content part for the local model: {kind!r}"
                    )
            message = {**message, "content": "\n".join(texts)}
        elif content is None:
            message = {**message, "content": ""}
        out.append(message)
    return out


#: environment variable that sizes llama.cpp's threads when ``n_threads`` is not given; multi-process
#: launchers (``dspydantic worker --concurrency N``, ``serve --workers N``) set it to cores // N
THREADS_ENV = "DSPYDANTIC_LOCAL_THREADS"


def _demo_dates_as_written(messages: list[dict[str, Any]], schema: dict[str, Any]) -> list[dict[str, Any]]:
    """Each answer that follows a document (a few-shot demo's) with its dates written as that document writes
    them, as the grammar of :func:`dspydantic._dates.dates_as_text` has the model write them."""
    from dspydantic._dates import dates_as_written

    out = list(messages)
    for i in range(1, len(out)):
        answer, document = out[i], out[i - 1]
        if answer.get("role") == "assistant" and document.get("role") == "user":
            text, source = answer.get("content"), document.get("content")
            if isinstance(text, str) and isinstance(source, str):
                written = dates_as_written(text, source, schema)
                if written is not text:
                    out[i] = {**answer, "content": written}
    return out


def _default_threads() -> int:
    """``DSPYDANTIC_LOCAL_THREADS`` when set, else every core this process may run on."""
    raw = os.environ.get(THREADS_ENV, "").strip()
    if raw:
        if not raw.isdigit() or int(raw) < 1:
            raise ConfigurationError(f"{THREADS_ENV} must be a positive integer, got {raw!r}")
        return int(raw)
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


@dataclass(eq=False)
class LocalBackend:
    """The embedded llama.cpp backend (see :mod:`dspydantic.lm.local`).

    ``model`` is a known model name (``"qwen2.5-0.5b"``, ``"smollm2-135m"``) or a path to a GGUF file.
    The model is loaded once per process per (file, ``n_ctx``) and shared by every backend using it.
    ``n_threads`` is llama.cpp's thread count; by default ``DSPYDANTIC_LOCAL_THREADS`` when set, else every
    core. llama.cpp's threads spin: processes that together run more threads than there are cores slow
    each other down many times over, so several processes should share the cores (cores // processes).
    """

    model: str = DEFAULT_MODEL
    n_ctx: int = DEFAULT_N_CTX
    n_threads: int | None = None
    max_tokens: int = DEFAULT_MAX_TOKENS
    string_max_length: int | None = DEFAULT_STRING_MAX_LENGTH
    #: KV states of other prompt prefixes kept in RAM for interleaved callers (0 disables)
    max_saved_states: int = 4
    #: greedy constrained decoding checks the grammar on the top token only (same output, faster)
    lazy_grammar: bool = True
    #: number fields are written as text in the grammar (see :func:`dspydantic._schema.numbers_as_text`)
    numbers_as_text: bool = True
    #: date fields are written as the document writes them and read back as ISO (:mod:`dspydantic._dates`)
    dates_as_text: bool = True
    #: every key that may be null is written (a value or null) instead of left out (:func:`every_key_written`)
    every_key: bool = True
    #: token log-probabilities cost nothing extra here: Prompters ask for them by default (confidence)
    cheap_logprobs: ClassVar[bool] = True
    #: the fitted choice biases of a prompt state (``PromptState.choice_bias``) are applied where the model
    #: decides a choice field (see :mod:`dspydantic._choices`); other backends never get them
    choice_bias: ClassVar[bool] = True
    #: Prompters on this backend null an optional free string value the document does not contain, unless
    #: they set ``require_grounding`` (see ``Prompter.grounded_fields``)
    absent_is_an_answer: ClassVar[bool] = True
    cache_id: str = field(init=False)
    context_window: int | None = field(init=False)
    model_path: Path = field(init=False)
    _shared: SharedModel | None = field(init=False, default=None, repr=False)
    _closed: bool = field(init=False, default=False, repr=False)

    def __post_init__(self) -> None:
        _llama.require(extra_for(self.model))
        if self.n_ctx < 256:
            raise ConfigurationError(f"n_ctx must be at least 256, got {self.n_ctx}")
        path, label, sha = resolve_model_file(self.model)
        self.model_path = path
        # what shapes the grammar changes the answers: a cache never replays one decoded under other choices
        shaped = [name for name, on in (("keys", self.every_key), ("numbers", self.numbers_as_text),
                                        ("dates", self.dates_as_text)) if on]
        grammar = "+".join(shaped) or "json"
        self.cache_id = f"local:{label}:{(sha or fingerprint(path))[:12]}:{grammar}:{self.string_max_length}"
        self.context_window = self.n_ctx

    # -- protocol -----------------------------------------------------------------------------------

    def complete(self, request: LMRequest) -> LMResponse:
        messages = _messages_to_text(request.messages)  # refuses images before anything is loaded
        check_not_forked()
        shared = self._model()
        schema = None
        answer_schema = request.json_schema
        choices: dict[str, list[Any]] = {}
        biases: dict[str, dict[str, float]] = {}
        if answer_schema is not None:
            from dspydantic._choices import choice_biases, choice_fields, strip_choice_bias

            biases = choice_biases(answer_schema)
            answer_schema = strip_choice_bias(answer_schema)  # the grammar and the parsers see the plain schema
            choices = choice_fields(answer_schema)
            schema = bound_string_lengths(answer_schema, self.string_max_length)
            if self.every_key:  # the model answers each optional key instead of skipping it
                schema = every_key_written(schema)
            if self.numbers_as_text:  # "1.200,50" as written, read by the answer's parser
                from dspydantic._schema import numbers_as_text

                schema = numbers_as_text(schema)
            if self.dates_as_text:  # "March 5, 2024" as written, turned into ISO below
                from dspydantic._dates import dates_as_text

                schema = dates_as_text(schema)
                messages = _demo_dates_as_written(messages, answer_schema)
        settings = request.settings
        self.check_settings(settings)
        options: dict[str, Any] = dict(settings.extra_body or {})
        for name in ("top_p", "seed", "presence_penalty", "frequency_penalty"):
            value = getattr(settings, name)
            if value is not None:
                options[name] = value
        if settings.stop:
            options["stop"] = list(settings.stop)
        temperature = 0.0 if settings.temperature is None else float(settings.temperature)
        max_tokens = settings.max_tokens if settings.max_tokens is not None else self.max_tokens
        with shared.lock:
            tokens, stop, stopping = shared.render(messages)
            if len(tokens) + 1 >= shared.n_ctx:
                raise LMError(
                    f"the prompt has {len(tokens)} tokens, more than the local model's context window of "
                    f"{shared.n_ctx} allows (raise n_ctx or shorten the input)"
                )
            grammar = shared.grammars.get(schema) if schema is not None else None
            reused = shared.states.prepare(tokens, use_saved_states=self.max_saved_states > 0)
            repeat_penalty = float(options.pop("repeat_penalty", 1.0))
            recorder = LogprobRecorder() if request.logprobs else None
            gate = None
            if grammar is not None and temperature == 0.0 and repeat_penalty == 1.0 and self.lazy_grammar:
                gate = LazyGrammar(shared.llama, grammar)
                grammar = None
            guide = None
            if choices:  # the choice fields' decisions: recorded, and the fitted biases added there
                from dspydantic._schema import walk_fields

                known = frozenset(path for path, _, _ in walk_fields(answer_schema or {}))
                guide = ChoiceGuide(shared.llama, len(tokens), choices, biases, known)
            processors = None
            if recorder is not None or gate is not None or guide is not None:
                # the gate first: where the grammar overrules the model's top token, the recorder sees the
                # masked row and records the chosen token's probability among the tokens the grammar allows
                # (a forced `"}` after the last key is not the model doubting that key's value); where the
                # top token is allowed the row is the raw one, as without a grammar
                # (the choice biases before both: the gate checks, and the recorder sees, the biased row)
                processors = _llama.logits_processors([p for p in (guide, gate, recorder) if p is not None])
            extra_stop = options.pop("stop", None)
            if extra_stop:
                stop = stop + ([extra_stop] if isinstance(extra_stop, str) else list(extra_stop))
            mark_computing()
            try:
                out: Any = shared.llama.create_completion(
                    prompt=tokens,
                    max_tokens=max_tokens,
                    temperature=temperature,
                    stop=stop,
                    stopping_criteria=stopping,
                    grammar=grammar,
                    logits_processor=processors,
                    repeat_penalty=repeat_penalty,
                    **options,
                )
            except Exception as exc:
                shared.llama.reset()
                raise LMError(f"local model call failed: {exc}") from exc
            finally:
                if gate is not None:
                    shared.stats.grammar_steps += gate.steps
                    shared.stats.grammar_full_masks += gate.full_masks
                    gate.close()
            shared.stats.calls += 1
            shared.stats.prompt_tokens += len(tokens)
            shared.stats.evaluated_prompt_tokens += len(tokens) - reused
            choice = out["choices"][0]
            usage = out.get("usage") or {}
            text = choice.get("text") or ""
            completion_tokens = int(usage.get("completion_tokens", 0))
            logprobs = None
            texts = None
            if recorder is not None:
                tail = None
                if choice.get("finish_reason") == "length":
                    tail = self._tail_token(shared, recorder, text)
                logprobs = recorder.finish(completion_tokens, tail)
                texts = recorder.texts(shared.llama, len(logprobs))
        if self.numbers_as_text and answer_schema is not None and choice.get("finish_reason") != "length":
            from dspydantic._schema import numbers_from_text

            text = numbers_from_text(text, answer_schema)  # back to the JSON numbers the schema asks for
        if self.dates_as_text and answer_schema is not None and choice.get("finish_reason") != "length":
            from dspydantic._dates import dates_from_text

            text = dates_from_text(text, answer_schema)  # back to the ISO dates the schema asks for
        return LMResponse(
            text=text,
            prompt_tokens=int(usage.get("prompt_tokens", len(tokens))),
            completion_tokens=completion_tokens,
            finish_reason=choice.get("finish_reason"),
            token_logprobs=logprobs,
            token_texts=texts,
            choice_logprobs=(guide.logprobs or None) if guide is not None else None,
        )

    @staticmethod
    def check_settings(settings: ModelSettings) -> None:
        """``extra_body`` may hold llama.cpp sampling options only (top_k, min_p, repeat_penalty, ...)."""
        unknown = sorted(set(settings.extra_body or {}) - _EXTRA_OPTIONS)
        if unknown:
            raise ConfigurationError(
                f"extra_body {unknown} means nothing to the local model; it accepts {sorted(_EXTRA_OPTIONS)}"
            )

    async def acomplete(self, request: LMRequest) -> LMResponse:
        # llama.cpp releases the GIL while it computes; the event loop keeps running meanwhile
        return await asyncio.to_thread(self.complete, request)

    def close(self) -> None:
        if self._shared is not None and not self._closed:
            release_model(self._shared)
        self._closed = True
        self._shared = None

    # -- helpers ------------------------------------------------------------------------------------

    @property
    def stats(self) -> dict[str, int]:
        """Counters of the shared model: calls, prompt tokens, prompt tokens actually evaluated (the rest
        came from the KV cache), prefix state saves and restores, and constrained decoding steps with how
        many of them needed the full-vocabulary grammar mask."""
        shared = self._model()
        with shared.lock:
            return dict(vars(shared.stats))

    def count_tokens(self, messages: list[dict[str, Any]]) -> int:
        """Number of prompt tokens ``messages`` render to."""
        shared = self._model()
        with shared.lock:
            return len(shared.render(_messages_to_text(messages))[0])

    def _model(self) -> SharedModel:
        if self._closed:
            raise ConfigurationError("this LocalBackend is closed")
        shared = self._shared
        if shared is None or not is_current(shared, self.model_path, self.n_ctx):
            shared = acquire_model(
                self.model_path, self.n_ctx, self.n_threads or _default_threads(), self.max_saved_states
            )
            self._shared = shared
        return shared

    @staticmethod
    def _tail_token(shared: SharedModel, recorder: LogprobRecorder, text: str) -> int | None:
        """Id of the last generated token when it was never evaluated (the token limit was hit)."""
        llama = shared.llama
        head = llama.detokenize(recorder.token_ids).decode("utf-8", errors="ignore")
        if not text.startswith(head) or len(text) == len(head):
            return None
        ids = llama.tokenize(text[len(head) :].encode("utf-8"), add_bos=False, special=False)
        return int(ids[0]) if len(ids) == 1 else None

    def __enter__(self) -> LocalBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def resolve_local(model_id: str, *, context_window: int | None = None, **kwargs: Any) -> LocalBackend:
    """Backend for ``"local"``, ``"local/<name>"`` or ``"local:<path to .gguf>"``.

    ``context_window`` (when not None) is the llama.cpp context size ``n_ctx``; other ``kwargs`` go to
    :class:`LocalBackend` (``n_ctx``, ``n_threads``, ``max_tokens``, ``string_max_length``, ...).
    Raises :class:`MissingExtraError` when llama-cpp-python or the model packages are not installed.
    """
    if model_id == "local":
        name = DEFAULT_MODEL
    elif model_id.startswith("local/"):
        name = model_id[len("local/") :]
    elif model_id.startswith("local:"):
        name = model_id[len("local:") :]
        if not name:
            raise ConfigurationError("'local:' needs a path to a GGUF file, e.g. 'local:/models/x.gguf'")
    else:
        raise ConfigurationError(f"not a local model id: {model_id!r}")
    if context_window is not None:
        kwargs["n_ctx"] = context_window
    from dspydantic._options import check_keywords  # a mistyped option is named, never a raw TypeError

    check_keywords(kwargs, [f.name for f in fields(LocalBackend) if f.init and f.name != "model"],
                   "the local model")
    return LocalBackend(model=name, **kwargs)
