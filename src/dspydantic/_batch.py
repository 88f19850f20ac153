"""The bodies of ``Prompter.predict_batch`` / ``apredict_batch``: fan-out in input order, per-item errors.

A failed item's exception takes its slot (tagged with ``batch_index``); :func:`finish` then returns the list
(``on_error="return"``) or raises one :class:`~dspydantic.BatchError` holding every result
(``on_error="raise"``). Provider batch jobs (``integrations/_batch_bridge.py``) finish the same way.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal, TypedDict

from ._fanout import fan_out
from .errors import BatchError, ConfigurationError, DspydanticError

if TYPE_CHECKING:
    from ._prompter import Prompter

OnError = Literal["raise", "return"]
Progress = Callable[[int, int], None]


class BatchOptions(TypedDict, total=False):
    """The batch verbs' keywords besides ``on_error`` and ``with_confidence`` (for their typed overloads)."""

    max_concurrency: int | None
    on_progress: Progress | None


def run_batch(
    p: Prompter[Any], items: list[Any], workers: int, *, with_confidence: bool, on_progress: Progress | None
) -> list[Any]:
    """Every item extracted on ``workers`` threads (or, on the async HTTP engine, as one async batch
    from this thread); a failed item's slot holds its exception."""
    run_sync = getattr(p.backend, "run_sync", None)
    if callable(run_sync) and workers > 1 and len(items) > 1:
        # a backend on the async HTTP engine: the batch runs as one async batch there, no thread per item
        out: list[Any] = run_sync(arun_batch(p, items, workers, with_confidence=with_confidence,
                                             on_progress=on_progress))
        return out
    results: list[Any] = [None] * len(items)
    done = itertools.count(1)  # next() on a count is atomic: safe from the worker threads

    def one(i: int) -> None:
        try:
            res = p._run_plan(items[i], data_only=not with_confidence)
            results[i] = res if with_confidence else res.data
        except Exception as exc:
            results[i] = tag(exc, i)
        finished = next(done)
        if on_progress is not None:
            on_progress(finished, len(items))

    fan_out(one, range(len(items)), workers)
    return results


async def arun_batch(
    p: Prompter[Any], items: list[Any], workers: int, *, with_confidence: bool, on_progress: Progress | None
) -> list[Any]:
    """Every item extracted with at most ``workers`` in flight; a failed item's slot holds its exception."""
    width = min(workers, max(1, len(items)))
    results: list[Any] = [None] * len(items)
    queue = iter(range(len(items)))  # shared by the workers: next() never yields an index twice
    done = 0

    async def worker() -> None:
        nonlocal done
        for i in queue:
            try:
                res = await p._arun_plan(items[i], data_only=not with_confidence)
                results[i] = res if with_confidence else res.data
            except Exception as exc:
                results[i] = tag(exc, i)
            done += 1
            if on_progress is not None:
                on_progress(done, len(items))

    # ``width`` workers pulling the next index: memory and scheduling stay O(concurrency), not O(items)
    await asyncio.gather(*(worker() for _ in range(width)))
    return results


def check_workers(n: int, on_error: str) -> int:
    if on_error not in ("raise", "return"):
        raise ConfigurationError(f"on_error must be 'raise' or 'return', got {on_error!r}")
    if not isinstance(n, int) or n < 1:
        raise ConfigurationError(f"max_workers must be a positive int, got {n!r}")
    return n


def tag(exc: Exception, index: int) -> Exception:
    if isinstance(exc, DspydanticError):
        exc.batch_index = index  # type: ignore[attr-defined]
    return exc


def finish(results: list[Any], on_error: str) -> list[Any]:
    """``results`` as they are (``on_error="return"``), or a :class:`BatchError` when an item failed."""
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
