"""``BatchQueue``: an asyncio batching queue in front of a prompter.

    queue = BatchQueue(prompter, max_batch=16, max_wait=0.05)
    result = await queue.submit("Invoice from ...")      # from any number of tasks at once
    await queue.aclose()                                 # or: async with BatchQueue(...) as queue

Items are collected until ``max_batch`` are waiting or ``max_wait`` seconds passed since the first one, then
extracted as one concurrent batch (``apredict_batch``, at most ``concurrency`` in flight); one batch runs at a
time. Each caller's future gets its own result, or its own exception (the other items are not affected).
Back-pressure: at most ``max_pending`` items wait; ``submit`` then waits for room (``submit_nowait`` raises
``asyncio.QueueFull``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from .._result import ExtractionResult
from ..errors import ConfigurationError, DspydanticError

log = logging.getLogger("dspydantic")

__all__ = ["BatchQueue", "QueueClosedError", "QueueStats"]


class QueueClosedError(DspydanticError):
    """The queue was closed: it takes no more items."""


@dataclass
class QueueStats:
    submitted: int = 0
    batches: int = 0
    extracted: int = 0
    failed: int = 0
    largest_batch: int = 0


_Entry = tuple[Any, "asyncio.Future[ExtractionResult[Any]]"]


class BatchQueue:
    """See the module docs. ``prompter`` is a Prompter or any Prompter-like object with ``apredict_batch``."""

    def __init__(
        self,
        prompter: Any,
        *,
        max_batch: int = 16,
        max_wait: float = 0.05,
        max_pending: int = 1024,
        concurrency: int | None = None,
    ) -> None:
        if not isinstance(max_batch, int) or max_batch < 1:
            raise ConfigurationError(f"max_batch must be a positive int, got {max_batch!r}")
        if max_wait < 0:
            raise ConfigurationError(f"max_wait must be >= 0, got {max_wait!r}")
        if not isinstance(max_pending, int) or max_pending < 1:
            raise ConfigurationError(f"max_pending must be a positive int, got {max_pending!r}")
        self.prompter = prompter
        self.max_batch = max_batch
        self.max_wait = max_wait
        self.max_pending = max_pending
        self.concurrency = concurrency or max_batch
        self.stats = QueueStats()
        self._queue: asyncio.Queue[_Entry] | None = None
        self._worker: asyncio.Task[None] | None = None
        self._closed = False
        self._entering = 0  # producers waiting for room

    # -- producers ---------------------------------------------------------------------------------
    def _ensure_started(self) -> asyncio.Queue[_Entry]:
        if self._closed:
            raise QueueClosedError("this BatchQueue is closed")
        if self._queue is None:
            self._queue = asyncio.Queue(self.max_pending)
            self._worker = asyncio.get_running_loop().create_task(self._run(self._queue), name="BatchQueue")
        return self._queue

    async def submit(self, item: Any) -> ExtractionResult[Any]:
        """Queue ``item`` (waiting for room when ``max_pending`` items wait) and return its result."""
        queue = self._ensure_started()
        future: asyncio.Future[ExtractionResult[Any]] = asyncio.get_running_loop().create_future()
        self._entering += 1
        try:
            await queue.put((item, future))
        finally:
            self._entering -= 1
        self.stats.submitted += 1
        return await future

    def submit_nowait(self, item: Any) -> asyncio.Future[ExtractionResult[Any]]:
        """Queue ``item`` now or raise ``asyncio.QueueFull``; returns the future of its result."""
        queue = self._ensure_started()
        future: asyncio.Future[ExtractionResult[Any]] = asyncio.get_running_loop().create_future()
        queue.put_nowait((item, future))
        self.stats.submitted += 1
        return future

    async def extract(self, item: Any) -> Any:
        """Queue ``item`` and return the extracted model instance."""
        return (await self.submit(item)).data

    @property
    def pending(self) -> int:
        return self._queue.qsize() if self._queue is not None else 0

    # -- the one consumer --------------------------------------------------------------------------
    async def _collect(self, queue: asyncio.Queue[_Entry], first: _Entry) -> list[_Entry]:
        """``first`` and what else arrives within ``max_wait``, up to ``max_batch``."""
        batch = [first]
        deadline = asyncio.get_running_loop().time() + self.max_wait
        while len(batch) < self.max_batch:
            try:
                entry = queue.get_nowait()
            except asyncio.QueueEmpty:
                remaining = deadline - asyncio.get_running_loop().time()
                if remaining <= 0:
                    break
                try:
                    entry = await asyncio.wait_for(queue.get(), remaining)
                except TimeoutError:
                    break
            batch.append(entry)
        return batch

    async def _run(self, queue: asyncio.Queue[_Entry]) -> None:
        try:
            while True:
                batch = await self._collect(queue, await queue.get())
                try:
                    await self._extract(batch)
                finally:
                    for _ in batch:
                        queue.task_done()
        finally:  # cancelled by aclose() once everything queued ran (or by the loop ending): refuse the rest
            while not queue.empty():
                _, fut = queue.get_nowait()
                if not fut.done():
                    fut.set_exception(QueueClosedError("the BatchQueue closed before this item ran"))

    async def _extract(self, batch: list[_Entry]) -> None:
        live = [(item, fut) for item, fut in batch if not fut.done()]  # a cancelled caller is skipped
        if not live:
            return
        self.stats.batches += 1
        self.stats.largest_batch = max(self.stats.largest_batch, len(live))
        try:
            results = await self.prompter.apredict_batch(
                [item for item, _ in live], max_workers=self.concurrency, on_error="return", with_confidence=True
            )
        except Exception as exc:  # the whole batch failed (e.g. a bad argument): every caller is told
            results = [exc] * len(live)
        for (_, fut), res in zip(live, results, strict=True):
            if fut.done():
                continue
            if isinstance(res, BaseException):
                self.stats.failed += 1
                fut.set_exception(res)
            else:
                self.stats.extracted += 1
                fut.set_result(res)

    # -- lifecycle ---------------------------------------------------------------------------------
    async def aclose(self) -> None:
        """Take no more items, finish every item already queued, stop the consumer."""
        if self._closed:
            return
        self._closed = True
        if self._queue is None or self._worker is None:
            return
        while True:  # every item queued, and every producer still waiting for room, runs first
            await self._queue.join()
            if self._entering == 0 and self._queue.empty():
                break
            await asyncio.sleep(0.001)
        self._worker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._worker

    async def __aenter__(self) -> BatchQueue:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()
