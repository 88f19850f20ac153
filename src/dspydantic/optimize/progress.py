"""Progress of an optimization: ``on_progress(event)`` callbacks always, a rich bar when asked or on a TTY.

Events are plain dicts with an ``"event"`` key: ``start``, ``stage``, ``lm_call`` (usage so far),
``candidate`` (a score), ``proposal``, ``score`` (baseline/candidate on the validation split) and
``done``. Callbacks may be called from worker threads; an exception in a callback is logged, not raised.
"""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Callable
from types import TracebackType
from typing import Any

log = logging.getLogger("dspydantic")


class Progress:
    def __init__(
        self,
        on_progress: Callable[[dict[str, Any]], None] | None,
        *,
        verbose: bool = False,
        max_calls: int | None = None,
    ) -> None:
        self.on_progress = on_progress
        self.verbose = verbose
        self.max_calls = max_calls
        self.show_bar = verbose or _is_tty()
        self._bar: Any = None
        self._task: Any = None
        self._stage = "starting"
        self._lock = threading.Lock()

    def __enter__(self) -> Progress:
        if self.show_bar:
            try:
                from rich.console import Console
                from rich.progress import (
                    BarColumn,
                    MofNCompleteColumn,
                    SpinnerColumn,
                    TextColumn,
                    TimeElapsedColumn,
                )
                from rich.progress import (
                    Progress as RichProgress,
                )

                self._bar = RichProgress(
                    SpinnerColumn(),
                    TextColumn("[bold]optimize[/bold] {task.description}"),
                    BarColumn(),
                    MofNCompleteColumn(),
                    TextColumn("LM requests"),
                    TimeElapsedColumn(),
                    # the stream as it is now: DSPy's output is filtered out of sys.stderr later (see _quiet)
                    console=Console(file=sys.stderr),
                    transient=not self.verbose,
                )
                self._bar.start()
                self._task = self._bar.add_task(self._stage, total=self.max_calls)
            except Exception:  # a progress bar must never break a run
                log.debug("no progress bar", exc_info=True)
                self._bar = None
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._bar is not None:
            try:
                self._bar.stop()
            except Exception:
                pass
            self._bar = None

    def emit(self, event: dict[str, Any]) -> None:
        kind = event.get("event")
        if kind == "stage":
            self._stage = str(event.get("stage", ""))
            if self.verbose:
                log.info("optimize: %s", {k: v for k, v in event.items() if k != "event"})
        elif kind in ("score", "start", "done") and self.verbose:
            log.info("optimize %s: %s", kind, {k: v for k, v in event.items() if k != "event"})
            self._say(event)
        if self._bar is not None:
            try:
                with self._lock:
                    if kind == "lm_call":
                        self._bar.update(self._task, completed=event.get("requests", 0), description=self._stage)
                    else:
                        self._bar.update(self._task, description=self._describe(event))
            except Exception:
                pass
        if self.on_progress is not None:
            try:
                self.on_progress(dict(event))
            except Exception:  # the user's callback must not break the run
                log.warning("on_progress callback raised", exc_info=True)

    def _say(self, event: dict[str, Any]) -> None:
        """Verbose mode: one readable line per milestone on the progress bar's console (stderr)."""
        if self._bar is None:
            return
        kind = event.get("event")
        if kind == "start":
            text = (f"optimizer {event.get('optimizer')} ({event.get('reason')}); {event.get('n_train')} training, "
                    f"{event.get('n_val')} validation examples; demo budget {event.get('demo_budget')}")
        elif kind == "score":
            text = f"{event.get('what')} score on the validation split: {float(event.get('score') or 0):.3f}"
        else:
            text = str(event.get("message", ""))
        try:
            self._bar.console.print(text, markup=False, highlight=False)
        except Exception:  # never break a run for a progress line
            pass

    def lm_call(self, snapshot: dict[str, Any]) -> None:
        self.emit({"event": "lm_call", "stage": self._stage, **snapshot})

    def _describe(self, event: dict[str, Any]) -> str:
        if event.get("event") == "score" and event.get("score") is not None:
            return f"{self._stage}: {event.get('what')} {float(event['score']):.3f}"
        if event.get("event") == "candidate" and event.get("score") is not None:
            return f"{self._stage}: candidate {float(event['score']):.3f}"
        return self._stage


def _is_tty() -> bool:
    try:
        return bool(sys.stderr.isatty())
    except (AttributeError, ValueError):
        return False
