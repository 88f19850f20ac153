"""KV-cache prefix states of a loaded local model.

llama.cpp keeps the KV cache of the previous prompt and re-evaluates only the tokens after the longest common
prefix. Prompts put the static part (instructions, field descriptions, demos) first and the document last, so
consecutive calls of one prompter only evaluate the document. When another caller with a different prefix comes
in between, the current KV state is saved into a small LRU before it is overwritten, and restored when its
prefix comes back (a ~10 MB memcpy instead of re-evaluating hundreds of tokens).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from dspydantic.lm.local import _llama

__all__ = ["PrefixStates", "common_prefix"]

#: a saved state is restored only if it saves at least this many prompt tokens over the live KV cache
MIN_RESTORE_GAIN = 16
#: the live KV state is saved before being overwritten only if at least this many tokens would be lost
MIN_SAVE_TOKENS = 64


def common_prefix(a: Any, b: Any) -> int:
    """Length of the common prefix of two int sequences (numpy arrays or lists)."""
    import numpy as np

    n = min(len(a), len(b))
    if n == 0:
        return 0
    diff = np.flatnonzero(np.asarray(a[:n]) != np.asarray(b[:n]))
    return int(diff[0]) if diff.size else n


@dataclass(slots=True, eq=False)
class _SavedState:
    tokens: Any  # numpy int array: input ids the KV cache holds
    data: Any  # ctypes buffer from _llama.save_state
    size: int


class PrefixStates:
    """The saved KV states of one model (least recently used first), at most ``max_states`` and
    ``max_bytes``. Not thread-safe: the model's lock is held around every call."""

    def __init__(self, llama: Any, max_states: int, max_bytes: int = 512 * 1024 * 1024) -> None:
        self._llama = llama
        self.max_states = max_states
        self.max_bytes = max_bytes
        self._saved: list[_SavedState] = []
        self.saves = 0
        self.restores = 0

    def prepare(self, tokens: list[int], use_saved_states: bool = True) -> int:
        """Make the KV cache hold the longest available prefix of ``tokens``; return its length."""
        live = _llama.live_tokens(self._llama)
        live_common = common_prefix(live, tokens)
        if not use_saved_states or self.max_states <= 0:
            return live_common
        best: _SavedState | None = None
        best_common = 0
        for state in self._saved:
            common = common_prefix(state.tokens, tokens)
            if common > best_common:
                best, best_common = state, common
        if len(live) - live_common >= MIN_SAVE_TOKENS:
            # the live state is about to be (mostly) overwritten by a different prompt: keep it, unless a
            # saved state already holds (nearly) all of it
            covered = max((common_prefix(s.tokens, live) for s in self._saved), default=0)
            if covered < len(live) - MIN_SAVE_TOKENS:
                self._save_live()
        if best is not None and best_common >= live_common + MIN_RESTORE_GAIN:
            # by identity (saving the live state above may already have evicted it from the LRU)
            self._saved[:] = [s for s in self._saved if s is not best]
            self._saved.append(best)
            del self._saved[: max(0, len(self._saved) - self.max_states)]
            _llama.restore_state(self._llama, best.data, best.size, best.tokens)
            self.restores += 1
            return best_common
        return live_common

    def clear(self) -> None:
        self._saved.clear()

    def _save_live(self) -> None:
        saved = _llama.save_state(self._llama)
        if saved is None:  # pragma: no cover - llama.cpp contract
            return
        data, size = saved
        tokens = _llama.live_tokens(self._llama).copy()
        # a newer state of the same prefix family replaces the older one
        self._saved = [s for s in self._saved if common_prefix(s.tokens, tokens) < len(s.tokens) // 2]
        self._saved.append(_SavedState(tokens=tokens, data=data, size=size))
        while len(self._saved) > self.max_states or (
            len(self._saved) > 1 and sum(s.size for s in self._saved) > self.max_bytes
        ):
            self._saved.pop(0)
        self.saves += 1
