"""The one place provider batch jobs touch the Prompter's internals.

Everything a batch job needs from the core goes through these functions: rendering an input into the exact
request ``run()`` would send (the Prompter's plan, ``Prompter._request``, the renderer, the base backend's
own ``body()``), the prompter's fingerprint, the Prompter's cache (through its cache layer's ``key`` /
``lookup`` / ``adopt``), the backend's transport and the Prompter's retry policy, and turning a provider's
answer into a result through the same plan that validates (and, opt-in, re-asks) in real time.
When the core's plan, ``LMRequest``, layers or backends change, this module is what to re-point.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson

from .._render import OutputParseError
from .._result import ExtractionResult, Usage
from ..errors import ConfigurationError, ExtractionError
from ..lm import LMResponse
from ..lm.layers import CachingBackend, RetryingBackend, find_layer, unwrap
from ..lm.transport import HTTPReply, sanitize_url
from ._batch_provider import BatchProvider

if TYPE_CHECKING:
    from .._prompter import Prompter
    from ..lm.openai_compat import OpenAICompatBackend

@dataclass(frozen=True, slots=True)
class Rendered:
    """One input rendered as a batch request line (``custom_id``, ``body``) with its Prompter-cache state."""

    custom_id: str
    body: dict[str, Any]
    cache_key: str | None
    cached: LMResponse | None


def _backend(prompter: Prompter) -> OpenAICompatBackend:
    """The OpenAI-compatible backend under the Prompter's layers (retry, cache, budget), or a
    :class:`ConfigurationError` naming ``predict_batch``."""
    from ..lm.openai_compat import OpenAICompatBackend

    backend = unwrap(prompter.backend)
    if not isinstance(backend, OpenAICompatBackend):
        raise ConfigurationError(
            f"provider batch jobs need an OpenAI-compatible backend (model_id='openai/...', optionally with "
            f"api_base=...); this Prompter uses {type(backend).__name__}, which has no batch endpoint. "
            "Use prompter.predict_batch(inputs) (or apredict_batch) for real-time batches instead."
        )
    return backend


def _cache(prompter: Prompter) -> CachingBackend | None:
    return find_layer(prompter._lm, CachingBackend)


def check_supported(prompter: Prompter) -> None:
    """A :class:`ConfigurationError` unless the Prompter's backend speaks an OpenAI-compatible API."""
    _backend(prompter)


def provider(prompter: Prompter) -> BatchProvider:
    """A Files/Batches client on the backend's own transport, under the Prompter's retry policy."""
    backend = _backend(prompter)
    policy = find_layer(prompter._lm, RetryingBackend) or RetryingBackend(
        backend, retries=prompter.lm_retries, backoff=prompter.retry_backoff, max_time=prompter.retry_max_time
    )
    return BatchProvider(backend.transport, policy.retry)


def endpoint(prompter: Prompter) -> str:
    """The backend's endpoint without userinfo, query or fragment (safe to record)."""
    return sanitize_url(_backend(prompter).base_url)


def fingerprint(prompter: Prompter) -> str:
    """The prompter's one fingerprint (:attr:`Prompter.fingerprint`): the ``custom_id`` prefix and what a
    resumed job is checked against (its recipe version makes old jobs un-resumable rather than wrong)."""
    return prompter.fingerprint


def render(prompter: Prompter, item: Any, prompter_fingerprint: str) -> Rendered:
    """The first request of ``item``'s extraction plan, exactly as ``run()`` would send it, and the answer
    the Prompter's cache already holds for it (if any)."""
    doc = prompter._input(item)
    renderer = prompter.renderer
    if prompter._chunks(doc, renderer) is not None:
        raise ConfigurationError(
            "the document does not fit the LM's context window: run() would split it into chunks, which a "
            "batch job (one request per input) does not do. Extract it with prompter.run(...) or "
            "predict_batch(...)"
        )
    plan = prompter._plan(doc, renderer)
    request = next(plan)
    plan.close()
    cache = _cache(prompter)
    key = cache.key(request) if cache is not None else None
    hit = cache.lookup(key) if cache is not None and key is not None else None
    custom_id = f"dspydantic-{prompter_fingerprint[:16]}-{doc.fingerprint[:32]}"
    return Rendered(custom_id, _backend(prompter).body(request), key, hit)


def response_from_body(prompter: Prompter, body: dict[str, Any]) -> LMResponse:
    """A chat-completion body from the provider's output file, read by the backend's own parser."""
    return _backend(prompter)._parse(HTTPReply(200, {}, orjson.dumps(body)))


def cached_response(prompter: Prompter, key: str) -> LMResponse | None:
    """The answer the Prompter's cache holds under ``key`` (``cached=True``), or None."""
    cache = _cache(prompter)
    return cache.lookup(key) if cache is not None else None


def answer(
    prompter: Prompter, response: LMResponse, messages: list[dict[str, Any]] | None, *, cache_key: str | None = None
) -> ExtractionResult[Any]:
    """Validate a provider's answer (or a cached one: ``response.cached``) through the Prompter's plan.

    With ``cache_key`` (the request's key in the Prompter's cache), a provider answer that validates is put
    in the cache, as ``run()`` would (the plan confirms it; an invalid or cut answer is never stored). With
    ``messages`` (the request as it was sent), an answer that does not validate is re-asked (or, cut by the
    token limit, asked again with a larger ``max_tokens``) through the real-time path, the Prompter's own
    retry and cache layers, as ``run()`` would; without them it raises :class:`ExtractionError` at once.
    """
    cache = _cache(prompter)
    if cache is not None and cache_key is not None and not response.cached:
        cache.adopt(cache_key, response)
    # the job record keeps no document text (ids only), so answers fetched from a batch job are not grounded
    plan = prompter._plan_messages(list(messages or []), prompter.renderer, source=None)
    next(plan)
    try:
        request = plan.send(response)
    except StopIteration as stop:
        result: ExtractionResult[Any] = stop.value
        return result
    if messages is None:
        plan.close()
        raise _not_valid(prompter, response)
    lm = prompter._lm
    while True:
        try:
            request = plan.send(lm.complete(request))
        except StopIteration as stop:
            done: ExtractionResult[Any] = stop.value
            return done


def _not_valid(prompter: Prompter, response: LMResponse) -> ExtractionError:
    usage = Usage()
    if response.cached:
        usage.cache_hits = 1
    else:
        usage.calls = 1
        usage.prompt_tokens, usage.completion_tokens = response.prompt_tokens, response.completion_tokens
    hint = "re-ask not enabled: job.results(reask=True) asks again through the real-time API"
    if response.finish_reason == "length":
        return ExtractionError(
            f"the batch answer was cut by the token limit ({hint}, with a larger max_tokens); raise max_tokens",
            raw_output=response.text,
            errors=[[{"type": "truncated", "msg": "output cut by the token limit"}]],
            attempts=1,
            usage=usage,
            truncated=True,
        )
    try:
        prompter.renderer.parse(response.text)
        feedback, errors = "?", []
    except OutputParseError as exc:
        feedback, errors = exc.feedback, exc.errors
    return ExtractionError(
        f"the batch answer is not a valid {prompter.model.__name__} ({hint}): {feedback}",
        raw_output=response.text,
        errors=[errors],
        attempts=1,
        usage=usage,
    )


def finish(results: list[Any], on_error: str) -> list[Any]:
    """``on_error="raise"``: a ``BatchError`` holding every slot when any item failed (as ``predict_batch``)."""
    from .._batch import finish as _finish

    return _finish(results, on_error)
