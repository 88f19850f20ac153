"""Keep DSPy's own console output (``print``, tqdm bars, its INFO/WARNING log lines) out of the user's
terminal during ``optimize()``; our progress bar and ``on_progress`` events say what happens instead.

While a run is inside its optimizer stages, ``sys.stdout`` / ``sys.stderr`` are wrapped by a stream that
drops what the *optimizing* threads write and passes everything else through: the thread that called
``optimize()`` and DSPy's worker threads, which inherit the :data:`MARK` key the run sets with
``dspy.context`` (DSPy copies its context into every thread of its ``ParallelExecutor``). Other threads of
the process (a web server, the user's own prints) are untouched. Dropped lines go to the
``dspydantic.dspy`` logger at DEBUG, so nothing is lost for someone who wants it. DSPy's log handler
writes to ``sys.stderr`` at call time, so its log lines are covered by the same stream.

Nested and concurrent runs share one installed wrapper (reference counted).
"""

from __future__ import annotations

import contextlib
import logging
import sys
import threading
from collections.abc import Iterator
from typing import Any, TextIO, cast

log = logging.getLogger("dspydantic.dspy")

#: the ``dspy.context`` key marking a DSPy thread that works for an optimization
MARK = "dspydantic_quiet"

_lock = threading.Lock()
_owners: dict[int, int] = {}  # thread ident -> nesting depth
_installed: dict[str, Any] = {}


def _dspy_marked() -> bool:
    mod = sys.modules.get("dspy.dsp.utils.settings")
    overrides = getattr(mod, "thread_local_overrides", None)
    if overrides is None:
        return False
    try:
        return bool(overrides.get().get(MARK))
    except Exception:  # DSPy internals moved: fall back to the owner threads only
        return False


def _quiet_here() -> bool:
    return threading.get_ident() in _owners or _dspy_marked()


class QuietStream:
    """A text stream that drops the optimizing threads' writes (to the debug log) and forwards the rest.

    After the run it is *retired*, not forgotten: a tqdm bar or handler that captured it during the run
    may still write through it (a bar closed while an exception unwinds, or collected later); writes from
    the run's threads stay dropped."""

    def __init__(self, wrapped: TextIO) -> None:
        self._wrapped = wrapped
        self.owners: set[int] = set()  # every thread that ran an optimization while this was installed
        self.retired = False

    def _quiet(self) -> bool:
        if self.retired:
            return threading.get_ident() in self.owners or _dspy_marked()
        return _quiet_here()

    def write(self, text: str) -> int:
        if self._quiet():
            if text.strip() and "\r" not in text and not text.startswith("\x1b"):
                log.debug("%s", text.rstrip())
            return len(text)
        return self._wrapped.write(text)

    def flush(self) -> None:
        if not self._quiet():
            self._wrapped.flush()

    def __getattr__(self, name: str) -> Any:  # isatty, encoding, fileno, rich_proxied_file, ...
        return getattr(self._wrapped, name)


@contextlib.contextmanager
def quiet(enabled: bool = True) -> Iterator[None]:
    """Silence DSPy's console output of this thread (and of the DSPy threads it starts) for the block."""
    if not enabled:
        yield
        return
    me = threading.get_ident()
    with _lock:
        if not _installed:
            _installed["stdout"], _installed["stderr"] = sys.stdout, sys.stderr
            _installed["quiet"] = (QuietStream(sys.stdout), QuietStream(sys.stderr))
            sys.stdout, sys.stderr = (cast(TextIO, q) for q in _installed["quiet"])
        for q in _installed["quiet"]:
            q.owners.add(me)
        _owners[me] = _owners.get(me, 0) + 1
    try:
        yield
    finally:
        with _lock:
            depth = _owners.pop(me, 1) - 1
            if depth:
                _owners[me] = depth
            if not _owners and _installed:
                # restore only what we installed (someone may have replaced the streams meanwhile)
                if isinstance(sys.stdout, QuietStream):
                    sys.stdout = _installed["stdout"]
                if isinstance(sys.stderr, QuietStream):
                    sys.stderr = _installed["stderr"]
                for q in _installed["quiet"]:
                    q.retired = True
                _installed.clear()
