"""The one thread-pool fan-out: a function over a list of items, a bounded number at a time, results in order.

Used by every synchronous batch (``Prompter.predict_batch``, the A/B router's, the store's ``process``, the
re-asks of a provider batch job, evaluation). The async batches use tasks on the running loop instead.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

__all__ = ["fan_out"]

T = TypeVar("T")
R = TypeVar("R")


def fan_out(fn: Callable[[T], R], items: Iterable[T], max_workers: int) -> list[R]:
    """``[fn(x) for x in items]`` on at most ``max_workers`` threads; with one worker, or one item, in the
    calling thread.

    An exception ``fn`` raises (a ``BaseException`` such as a budget's stop signal too) is re-raised once every
    call has ended, the first in item order: no worker is still running when the caller sees it.
    """
    todo = list(items)
    if max_workers <= 1 or len(todo) <= 1:
        return [fn(x) for x in todo]
    with ThreadPoolExecutor(max_workers=min(max_workers, len(todo))) as pool:
        futures = [pool.submit(fn, x) for x in todo]
        results: list[R] = []
        first: BaseException | None = None
        for f in futures:
            try:
                results.append(f.result())
            except BaseException as exc:  # re-raised below, after every call ended
                if first is None:
                    first = exc
    if first is not None:
        raise first
    return results
