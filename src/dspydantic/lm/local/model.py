"""One loaded llama.cpp model per process and (file, context size), shared by every backend using it.

A llama.cpp context is not thread-safe: every use of a :class:`SharedModel` holds its ``lock``. It keeps the
model's compiled grammars (:mod:`.grammar`), its saved KV prefix states (:mod:`.states`) and usage counters.
"""

from __future__ import annotations

import contextlib
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dspydantic.errors import ConfigurationError, LMError
from dspydantic.lm.local import _llama
from dspydantic.lm.local.grammar import GrammarCache
from dspydantic.lm.local.states import PrefixStates

__all__ = [
    "SharedModel",
    "acquire_model",
    "check_not_forked",
    "is_current",
    "mark_computing",
    "release_model",
    "unload_local_models",
]


@dataclass
class _Stats:
    calls: int = 0
    prompt_tokens: int = 0
    evaluated_prompt_tokens: int = 0
    state_saves: int = 0
    state_restores: int = 0
    grammar_steps: int = 0
    grammar_full_masks: int = 0


class SharedModel:
    """One loaded llama.cpp model (weights + context)."""

    def __init__(self, path: Path, n_ctx: int, n_threads: int, max_saved_states: int) -> None:
        _llama.require()
        self.path = path
        self.n_ctx = n_ctx
        self.lock = threading.Lock()
        self.refcount = 0
        self._stats = _Stats()
        self.llama: Any = _llama.load(path, n_ctx, n_threads)
        self.formatter: Any = _llama.chat_formatter(self.llama)
        self.grammars = GrammarCache(self.llama)
        self.states = PrefixStates(self.llama, max_saved_states)

    @property
    def stats(self) -> _Stats:
        self._stats.state_saves = self.states.saves
        self._stats.state_restores = self.states.restores
        return self._stats

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


_models: dict[tuple[str, int], SharedModel] = {}
_models_lock = threading.Lock()
#: pid of the process in which llama.cpp computed; its OpenMP thread pool does not survive fork()
_compute_pid: int | None = None


def mark_computing() -> None:
    """Record that llama.cpp computes in this process (see :func:`check_not_forked`)."""
    global _compute_pid
    _compute_pid = os.getpid()


def check_not_forked() -> None:
    if _compute_pid is not None and _compute_pid != os.getpid():
        raise LMError(
            "the local model already ran in the parent of this forked process; llama.cpp's OpenMP thread "
            "pool does not survive fork(), so it would hang here. Load and use the model only after the "
            "fork (e.g. create the Prompter inside the worker; Celery: --pool=solo/threads or "
            "worker_process_init), or start workers with the 'spawn' method."
        )


def acquire_model(path: Path, n_ctx: int, n_threads: int, max_saved_states: int) -> SharedModel:
    key = (str(path), n_ctx)
    with _models_lock:
        shared = _models.get(key)
        if shared is None:
            shared = SharedModel(path, n_ctx, n_threads, max_saved_states)
            _models[key] = shared
        shared.states.max_states = max(shared.states.max_states, max_saved_states)
        shared.refcount += 1
        return shared


def release_model(shared: SharedModel) -> None:
    with _models_lock:
        shared.refcount -= 1


def is_current(shared: SharedModel | None, path: Path, n_ctx: int) -> bool:
    """Whether ``shared`` is still the loaded model for (path, n_ctx) (not unloaded since)."""
    return shared is not None and _models.get((str(path), n_ctx)) is shared


def unload_local_models() -> None:
    """Free every loaded local model (backends still open reload theirs on the next call)."""
    with _models_lock:
        items = list(_models.values())
        _models.clear()
    for shared in items:
        with shared.lock:
            shared.states.clear()
            with contextlib.suppress(Exception):
                shared.llama.close()
