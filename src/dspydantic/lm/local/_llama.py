"""Every use of llama-cpp-python beyond its documented high-level API, in one place, behind a version check.

The local backend goes below ``Llama.create_completion`` in a few places; all of them are here:

* ``Llama._model`` (``vocab``, ``token_get_text``): the vocabulary a grammar sampler needs, the BOS/EOS text
  the chat template renders;
* ``LlamaGrammar._grammar``: the GBNF text of the grammar built from a JSON schema;
* ``Llama.input_ids`` / ``n_tokens`` written and ``Llama._requires_eval`` set after a KV-state restore;
* the low-level C API (``llama_sampler_init_grammar`` / ``accept`` / ``apply`` / ``free``,
  ``llama_token_data(_array)``, ``llama_state_get_size`` / ``get_data`` / ``set_data``), whose signatures
  change between minor versions.

These moved before within 0.x minor versions, so importing this module checks the installed version: a
llama-cpp-python outside :data:`SUPPORTED_SERIES` raises :class:`UnsupportedLlamaVersionError` (tested with
:data:`TESTED_VERSION`, the version the ``[local]`` extra pins). When llama-cpp-python is not installed at all,
importing this module works and the first use raises :class:`MissingExtraError` naming the ``[local]`` extra.
``llama_cpp`` itself (~0.5 s to import) is imported only when a model is loaded.
"""

from __future__ import annotations

import ctypes
import importlib.util
from importlib import metadata
from pathlib import Path
from typing import Any

from dspydantic.errors import ConfigurationError, LMError, MissingExtraError

__all__ = [
    "SUPPORTED_SERIES",
    "TESTED_VERSION",
    "GrammarSampler",
    "UnsupportedLlamaVersionError",
    "chat_formatter",
    "check_version",
    "compile_grammar",
    "gbnf_from_json_schema",
    "grammar_text",
    "installed_version",
    "live_tokens",
    "load",
    "logits_processors",
    "require",
    "restore_state",
    "save_state",
]

#: the llama-cpp-python (major, minor) series this module is written against
SUPPORTED_SERIES = (0, 3)
#: the version the ``[local]`` extra pins and the tests run on
TESTED_VERSION = "0.3.36"


class UnsupportedLlamaVersionError(MissingExtraError):
    """The installed llama-cpp-python is not the series the local backend supports (a :class:`MissingExtraError`:
    the fix is the same, install the ``[local]`` extra)."""

    def __init__(self, found: str) -> None:
        super().__init__("local", "llama-cpp-python")
        series = ".".join(map(str, SUPPORTED_SERIES))
        self.found = found
        self.args = (
            f"llama-cpp-python {found} is installed, but the local backend supports {series}.x only (tested with "
            f"{TESTED_VERSION}, which the [local] and [smollm] extras pin): pip install 'dspydantic[local]'",
        )

    def __str__(self) -> str:
        return str(self.args[0])


def installed_version() -> str | None:
    """The installed llama-cpp-python version, or None when it is not installed."""
    try:
        return metadata.version("llama-cpp-python")
    except metadata.PackageNotFoundError:
        if importlib.util.find_spec("llama_cpp") is None:
            return None
        import llama_cpp  # importable without distribution metadata (a source checkout)

        return str(getattr(llama_cpp, "__version__", "unknown"))


def check_version(version: str | None) -> None:
    """Raise :class:`UnsupportedLlamaVersionError` unless ``version`` is in :data:`SUPPORTED_SERIES` (None, not
    installed, passes: :func:`require` reports that when the backend is used)."""
    if version is None:
        return
    head = version.split(".")[:2]
    if tuple(int(p) if p.isdigit() else -1 for p in head) != SUPPORTED_SERIES:
        raise UnsupportedLlamaVersionError(version)


check_version(installed_version())


def require(extra: str = "local") -> None:
    """:class:`MissingExtraError` naming ``extra`` when llama-cpp-python is not installed (cheap: nothing is
    imported)."""
    if importlib.util.find_spec("llama_cpp") is None:
        raise MissingExtraError(extra, "llama-cpp-python")


def _lib() -> Any:
    try:
        import llama_cpp
    except ImportError as exc:
        raise MissingExtraError("local", "llama-cpp-python") from exc
    return llama_cpp


# --------------------------------------------------------------------------------------------- model


def load(path: Path, n_ctx: int, n_threads: int) -> Any:
    """A ``llama_cpp.Llama`` for ``path`` (no ``logits_all``: evaluation is ~8x faster without it)."""
    llama_cpp = _lib()
    try:
        return llama_cpp.Llama(
            model_path=str(path),
            n_ctx=n_ctx,
            n_threads=n_threads,
            n_threads_batch=n_threads,
            logits_all=False,
            verbose=False,
        )
    except Exception as exc:  # llama.cpp reports a bad file as ValueError/RuntimeError
        raise LMError(f"could not load the local model {path}: {exc}") from exc


def chat_formatter(llama: Any) -> Any | None:
    """The model's own chat template as llama-cpp-python's Jinja2 formatter (None when the GGUF has none)."""
    from llama_cpp import llama_chat_format

    template = llama.metadata.get("tokenizer.chat_template")
    if not template:
        return None
    eos_id = llama.token_eos()
    bos_id = llama.token_bos()
    model = llama._model
    return llama_chat_format.Jinja2ChatFormatter(
        template=template,
        eos_token=model.token_get_text(eos_id) if eos_id != -1 else "",
        bos_token=model.token_get_text(bos_id) if bos_id != -1 else "",
        stop_token_ids=[eos_id],
    )


def logits_processors(processors: list[Any]) -> Any:
    from llama_cpp import LogitsProcessorList

    return LogitsProcessorList(processors)


# ------------------------------------------------------------------------------------------- grammar


def gbnf_from_json_schema(schema_json: str) -> str:
    """llama-cpp-python's JSON-schema-to-GBNF conversion (any error it raises propagates)."""
    from llama_cpp.llama_grammar import LlamaGrammar

    return str(LlamaGrammar.from_json_schema(schema_json, verbose=False)._grammar)


def compile_grammar(llama: Any, gbnf: str) -> Any:
    """A ``LlamaGrammar`` for ``create_completion(grammar=...)``, once llama.cpp itself accepted the text
    (:class:`ConfigurationError` otherwise: llama-cpp-python would only fail at sampling time)."""
    from llama_cpp.llama_grammar import LlamaGrammar

    lc = _lib()
    probe = lc.llama_sampler_init_grammar(llama._model.vocab, gbnf.encode("utf-8"), b"root")
    if not probe:
        raise ConfigurationError("the grammar built from this JSON schema was rejected by llama.cpp")
    lc.llama_sampler_free(probe)
    return LlamaGrammar.from_string(gbnf, verbose=False)


def grammar_text(grammar: Any) -> str:
    """The GBNF text of a compiled ``LlamaGrammar``."""
    return str(grammar._grammar)


class GrammarSampler:
    """llama.cpp's grammar sampler driven by hand over raw logits, for one generation."""

    def __init__(self, llama: Any, gbnf: str) -> None:
        import numpy as np

        lc = self._lc = _lib()
        n_vocab = llama.n_vocab()
        self._sampler = lc.llama_sampler_init_grammar(llama._model.vocab, gbnf.encode("utf-8"), b"root")
        if not self._sampler:
            raise ConfigurationError("the grammar built from this JSON schema was rejected by llama.cpp")
        dtype = np.dtype([("id", np.intc), ("logit", np.single), ("p", np.single)], align=True)
        self._one = np.zeros(1, dtype=dtype)
        self._all = np.zeros(n_vocab, dtype=dtype)
        self._ids = np.arange(n_vocab, dtype=np.intc)
        data_p = ctypes.POINTER(lc.llama_token_data)
        self._one_arr = lc.llama_token_data_array(self._one.ctypes.data_as(data_p), 1, -1, False)
        self._all_arr = lc.llama_token_data_array(self._all.ctypes.data_as(data_p), n_vocab, -1, False)

    def accept(self, token: int) -> None:
        """Advance the grammar past ``token``."""
        self._lc.llama_sampler_accept(self._sampler, token)

    def allows(self, token: int) -> bool:
        """Whether the grammar allows ``token`` next."""
        import numpy as np

        one = self._one
        one["id"][0] = token
        one["logit"][0] = 0.0
        self._one_arr.size = 1
        self._one_arr.selected = -1
        self._lc.llama_sampler_apply(self._sampler, ctypes.byref(self._one_arr))
        return bool(np.isfinite(one["logit"][0]))

    def mask(self, scores: Any) -> Any:
        """A copy of ``scores`` (one logit per vocabulary token) with the disallowed tokens at -inf."""
        full = self._all
        full["id"] = self._ids
        full["logit"] = scores
        self._all_arr.size = len(full)
        self._all_arr.selected = -1
        self._all_arr.sorted = False
        self._lc.llama_sampler_apply(self._sampler, ctypes.byref(self._all_arr))
        return full["logit"].copy()

    def close(self) -> None:
        if self._sampler:
            self._lc.llama_sampler_free(self._sampler)
            self._sampler = None


# ------------------------------------------------------------------------------------------ KV state


def live_tokens(llama: Any) -> Any:
    """The input ids the KV cache holds now (a numpy view)."""
    return llama.input_ids[: llama.n_tokens]


def save_state(llama: Any) -> tuple[Any, int] | None:
    """The context's state (KV cache included) as a ctypes buffer and its size; None if llama.cpp wrote more
    than it announced."""
    lc = _lib()
    ctx = llama.ctx
    size = int(lc.llama_state_get_size(ctx))
    buf = (ctypes.c_uint8 * size)()
    written = int(lc.llama_state_get_data(ctx, buf, size))
    if written > size:  # pragma: no cover - llama.cpp contract
        return None
    return buf, written


def restore_state(llama: Any, data: Any, size: int, tokens: Any) -> None:
    """Put a saved state back, holding ``tokens``; the logits are recomputed from the first token after it."""
    lc = _lib()
    if int(lc.llama_state_set_data(llama.ctx, data, size)) != size:
        llama.reset()
        raise LMError("restoring a saved llama.cpp state failed")
    n = len(tokens)
    llama.input_ids[:n] = tokens
    llama.n_tokens = n
    llama._requires_eval = True
