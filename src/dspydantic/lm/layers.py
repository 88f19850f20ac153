"""Behaviour added by wrapping a backend: retries, the response cache, budgets. Each is sync + async.

A :class:`~dspydantic.Prompter` calls ``CachingBackend(RetryingBackend(backend))`` (the cache only when one is
configured); an optimization run puts a :class:`BudgetedBackend` on top, so every request of the run is counted
against its budget, cache hits included. Layers forward every other attribute to the backend they wrap.

* :class:`RetryingBackend`: a retryable :class:`~dspydantic.LMError` (transport fault, 408/409/425/429/5xx) is
  tried again up to ``retries`` times after an exponential backoff with full jitter
  (``uniform(0, backoff * 2**attempt)``), or after the server's ``Retry-After``; never beyond ``max_time``
  seconds since the first attempt. This is the only place a request is ever sent twice.
* :class:`CachingBackend`: a hit is served without a call (``response.cached``); a miss is stored only when
  the extraction plan confirms the answer parsed and validated (:meth:`LMResponse.confirm`), so a truncated
  or invalid answer is never replayed. The key covers the backend's ``cache_id`` (endpoint, model, default
  settings), the request's settings, schema and messages; never a key. A failing cache (corrupt file, full or
  read-only disk) turns itself off with one warning; the answer is returned all the same. In async code the
  SQLite work runs in a worker thread (a hit in the in-memory LRU is served inline).
* :class:`BudgetedBackend`: reserves each request against a :class:`Budget` before the call and settles the
  usage after; refuses with :class:`BudgetExhausted` when the budget or the phase is over.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import orjson

from .._cache import CacheBackend, cache_failed, response_from_json, response_to_json
from .._tokens import estimate_message_tokens
from ..errors import LMError
from ._base import LMBackend, LMRequest, LMResponse

__all__ = [
    "Budget",
    "BudgetExhausted",
    "BudgetedBackend",
    "CachingBackend",
    "RetryingBackend",
    "find_layer",
    "unwrap",
]

log = logging.getLogger("dspydantic")
_KEY_VERSION = b"dspydantic-cache-v2\0"
_T = TypeVar("_T")
_L = TypeVar("_L", bound="_Layer")


class _Layer:
    """A backend wrapping another; unknown attributes are the inner backend's."""

    def __init__(self, inner: LMBackend) -> None:
        self.inner = inner

    @property
    def cache_id(self) -> str:
        return self.inner.cache_id

    @property
    def context_window(self) -> int | None:
        return self.inner.context_window

    def __getattr__(self, name: str) -> Any:
        if name == "inner":  # not set yet (copying, unpickling)
            raise AttributeError(name)
        return getattr(self.inner, name)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.inner!r})"

    def close(self) -> None:
        self.inner.close()

    async def aclose(self) -> None:
        closer = getattr(self.inner, "aclose", None)
        if closer is not None:
            await closer()
        else:
            self.inner.close()


def find_layer(backend: LMBackend, kind: type[_L]) -> _L | None:
    """The outermost layer of type ``kind`` in a stack of layers (``backend`` itself included), or None."""
    current: Any = backend
    while isinstance(current, _Layer):
        if isinstance(current, kind):
            return current
        current = current.inner
    return None


def unwrap(backend: LMBackend) -> LMBackend:
    """The backend under every layer of a stack (``backend`` itself when it is not a layer)."""
    while isinstance(backend, _Layer):
        backend = backend.inner
    return backend


# --------------------------------------------------------------------------------------------- retry


class RetryingBackend(_Layer):
    """Retries retryable :class:`LMError`\\ s: exponential backoff with full jitter, ``Retry-After`` honoured,
    at most ``retries`` more attempts and never beyond ``max_time`` seconds since the first one."""

    def __init__(
        self,
        inner: LMBackend,
        *,
        retries: int = 2,
        backoff: float = 0.5,
        max_time: float | None = 60.0,
        rng: Callable[[], float] = random.random,
    ) -> None:
        super().__init__(inner)
        self.retries = retries
        self.backoff = backoff
        self.max_time = max_time
        self._rng = rng

    def _delay(self, exc: LMError, attempt: int, started: float) -> float | None:
        """Seconds to wait before the next attempt, or ``None`` to give up."""
        exc.attempts = attempt + 1
        if not exc.retryable or attempt >= self.retries:
            return None
        delay = exc.retry_after if exc.retry_after is not None else self._rng() * self.backoff * 2**attempt
        if self.max_time is not None and time.monotonic() - started + delay > self.max_time:
            log.info("LM call failed; no retry: %.1f s more would exceed retry_max_time=%g s", delay, self.max_time)
            return None
        log.info("LM call failed (%s); retry %d of %d in %.2f s", exc, attempt + 1, self.retries, delay)
        return delay

    def complete(self, request: LMRequest) -> LMResponse:
        return self.retry(lambda: self.inner.complete(request))

    def retry(self, call: Callable[[], _T]) -> _T:
        """Run ``call`` (any sync call of the wrapped endpoint, e.g. its Files/Batches API) under this policy."""
        started = time.monotonic()
        attempt = 0
        while True:
            try:
                return call()
            except LMError as exc:
                delay = self._delay(exc, attempt, started)
                if delay is None:
                    raise
            if delay > 0:
                time.sleep(delay)
            attempt += 1

    async def acomplete(self, request: LMRequest) -> LMResponse:
        started = time.monotonic()
        attempt = 0
        while True:
            try:
                return await self.inner.acomplete(request)
            except LMError as exc:
                delay = self._delay(exc, attempt, started)
                if delay is None:
                    raise
            if delay > 0:
                await asyncio.sleep(delay)
            attempt += 1


# --------------------------------------------------------------------------------------------- cache


class CachingBackend(_Layer):
    """Serves identical requests from ``cache``; stores an answer only once the plan confirmed it."""

    def __init__(self, inner: LMBackend, cache: CacheBackend) -> None:
        super().__init__(inner)
        self.cache: CacheBackend | None = cache
        self._heads: dict[tuple[Any, ...], tuple[Any, bytes]] = {}
        self._pending: set[asyncio.Future[None]] = set()

    def key(self, request: LMRequest) -> str:
        """SHA-256 over endpoint + model + default settings (``cache_id``), the request's settings, schema,
        logprobs flag and messages. The static part is digested once per (schema, settings)."""
        head_key = (id(request.json_schema), request.schema_name, request.settings, request.logprobs)
        hit = self._heads.get(head_key)
        if hit is None or hit[0] is not request.json_schema:
            static = orjson.dumps(
                [self.inner.cache_id, request.schema_name, request.settings.fingerprint, request.logprobs,
                 request.json_schema],
                option=orjson.OPT_SORT_KEYS,
            )
            hit = (request.json_schema, _KEY_VERSION + hashlib.sha256(static).digest())
            if len(self._heads) >= 64:
                self._heads.clear()
            self._heads[head_key] = hit
        h = hashlib.sha256(hit[1])
        h.update(request.messages_json())
        return h.hexdigest()

    # -- the cache, failing safe -------------------------------------------------------------------
    def _failed(self, what: str, exc: BaseException) -> None:
        if self.cache is not None:
            self.cache = None
            cache_failed(what, exc)

    def _lookup(self, cache: CacheBackend, key: str) -> LMResponse | None:
        try:
            value = cache.get(key)
        except Exception as exc:
            self._failed("read", exc)
            return None
        return response_from_json(value) if value is not None else None

    def _store(self, cache: CacheBackend, key: str, value: dict[str, Any]) -> None:
        try:
            cache.set(key, value)
        except Exception as exc:
            self._failed("write", exc)

    def _on_valid(self, key: str, response: LMResponse, *, background: bool) -> Callable[[], None]:
        def confirm() -> None:
            cache = self.cache
            if cache is None:
                return
            value = response_to_json(response)
            if not background:
                self._store(cache, key, value)
                return
            remember = getattr(cache, "remember", None)
            if remember is not None:  # an identical request right after is a memory hit
                remember(key, value)
            job = asyncio.get_running_loop().run_in_executor(None, self._store, cache, key, value)
            self._pending.add(job)  # SQLite runs off the event loop; flush() / aclose() wait for it
            job.add_done_callback(self._pending.discard)

        return confirm

    # -- answers obtained elsewhere (provider batch jobs) ----------------------------------------------
    def lookup(self, key: str) -> LMResponse | None:
        """The answer cached under ``key`` (see :meth:`key`; ``cached=True``), or None."""
        cache = self.cache
        return self._lookup(cache, key) if cache is not None else None

    def adopt(self, key: str, response: LMResponse) -> LMResponse:
        """Arm an answer this stack did not fetch (e.g. from a provider batch job's output file) for the request
        with this :meth:`key`: it is stored only when the plan confirms it validated (:meth:`LMResponse.confirm`)."""
        response.on_valid = self._on_valid(key, response, background=False)
        return response

    # -- calls ---------------------------------------------------------------------------------------
    def complete(self, request: LMRequest) -> LMResponse:
        cache = self.cache
        if cache is None:
            return self.inner.complete(request)
        key = self.key(request)
        hit = self._lookup(cache, key)
        if hit is not None:
            return hit
        response = self.inner.complete(request)
        response.on_valid = self._on_valid(key, response, background=False)
        return response

    async def acomplete(self, request: LMRequest) -> LMResponse:
        cache = self.cache
        if cache is None:
            return await self.inner.acomplete(request)
        key = self.key(request)
        memory = getattr(cache, "get_memory", None)
        value = memory(key) if memory is not None else None
        hit = response_from_json(value) if value is not None else None
        if hit is None:
            hit = await asyncio.to_thread(self._lookup, cache, key)
        if hit is not None:
            return hit
        response = await self.inner.acomplete(request)
        response.on_valid = self._on_valid(key, response, background=True)
        return response

    async def flush(self) -> None:
        """Wait for the cache writes started from async code."""
        loop = asyncio.get_running_loop()
        mine = [f for f in list(self._pending) if f.get_loop() is loop]
        if mine:
            await asyncio.gather(*mine, return_exceptions=True)

    async def aclose(self) -> None:
        await self.flush()
        await super().aclose()


# -------------------------------------------------------------------------------------------- budget


class BudgetExhausted(BaseException):  # a control-flow signal, not an error
    """Raised when ``max_lm_calls`` / ``max_tokens`` would be exceeded, or the budget's phase is over.

    A ``BaseException`` on purpose: DSPy's evaluators and GEPA catch ``Exception`` per example and would
    score a refused call as a wrong answer; this must instead unwind to whoever owns the budget.
    """


@dataclass
class Budget:
    """Thread-safe meter. ``requests`` counts every request made (cache hits included, so a rerun from the
    cache stops at the same point); ``calls``/``billed_*`` count only real LM calls.

    ``ceiling_requests`` / ``ceiling_tokens`` are the limits of the current phase (e.g. an optimization phase
    leaving a reserve for a final scoring); ``max_requests`` / ``max_tokens`` are the hard ones.
    """

    max_requests: int | None = None
    max_tokens: int | None = None
    ceiling_requests: int | None = None
    ceiling_tokens: int | None = None
    requests: int = 0
    calls: int = 0
    cache_hits: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    billed_prompt_tokens: int = 0
    billed_completion_tokens: int = 0
    exhausted: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __post_init__(self) -> None:
        if self.ceiling_requests is None:
            self.ceiling_requests = self.max_requests
        if self.ceiling_tokens is None:
            self.ceiling_tokens = self.max_tokens

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def set_phase(self, *, requests: int | None, tokens: int | None) -> None:
        with self._lock:
            self.ceiling_requests = requests
            self.ceiling_tokens = tokens

    def lift(self) -> None:
        """Back to the hard limits (for the final scoring)."""
        self.set_phase(requests=self.max_requests, tokens=self.max_tokens)

    def reserve(self, estimated_prompt_tokens: int) -> None:
        with self._lock:
            if self.ceiling_requests is not None and self.requests >= self.ceiling_requests:
                self.exhausted = True
                raise BudgetExhausted(f"LM request budget reached ({self.requests} requests)")
            if self.ceiling_tokens is not None and self.tokens + estimated_prompt_tokens > self.ceiling_tokens:
                self.exhausted = True
                raise BudgetExhausted(f"token budget reached ({self.tokens} tokens)")
            self.requests += 1

    def settle(self, response: LMResponse) -> None:
        with self._lock:
            self.prompt_tokens += response.prompt_tokens
            self.completion_tokens += response.completion_tokens
            if response.cached:
                self.cache_hits += 1
            else:
                self.calls += 1
                self.billed_prompt_tokens += response.prompt_tokens
                self.billed_completion_tokens += response.completion_tokens

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {
                "requests": self.requests,
                "lm_calls": self.calls,
                "cache_hits": self.cache_hits,
                "prompt_tokens": self.billed_prompt_tokens,
                "completion_tokens": self.billed_completion_tokens,
                "max_lm_calls": self.max_requests,
                "max_tokens": self.max_tokens,
            }


class BudgetedBackend(_Layer):
    """Counts every request against ``budget`` (reserve before, settle after); ``on_call`` gets a snapshot
    after each. :meth:`shut` ends the phase: further requests raise :class:`BudgetExhausted`."""

    def __init__(
        self, inner: LMBackend, budget: Budget, *, on_call: Callable[[dict[str, Any]], None] | None = None
    ) -> None:
        super().__init__(inner)
        self.budget = budget
        self.on_call = on_call
        self.closed = False
        self._inflight = 0
        self._idle = threading.Condition()

    def shut(self, wait: float = 120.0) -> None:
        """Refuse every further request and wait up to ``wait`` seconds for those already sent (by worker
        threads an optimizer left running)."""
        with self._idle:
            self.closed = True
            self._idle.wait_for(lambda: self._inflight == 0, timeout=wait)

    def _enter(self, request: LMRequest) -> None:
        with self._idle:
            if self.closed:
                raise BudgetExhausted("this phase of the run is over")
            self._inflight += 1
        try:
            self.budget.reserve(estimate_message_tokens(request.messages))
        except BaseException:
            self._leave()
            raise

    def _leave(self) -> None:
        with self._idle:
            self._inflight -= 1
            self._idle.notify_all()

    def _settle(self, response: LMResponse) -> None:
        self.budget.settle(response)
        if self.on_call is not None:
            self.on_call(self.budget.snapshot())

    def complete(self, request: LMRequest) -> LMResponse:
        self._enter(request)
        try:
            response = self.inner.complete(request)
            self._settle(response)
            return response
        finally:
            self._leave()

    async def acomplete(self, request: LMRequest) -> LMResponse:
        self._enter(request)
        try:
            response = await self.inner.acomplete(request)
            self._settle(response)
            return response
        finally:
            self._leave()
