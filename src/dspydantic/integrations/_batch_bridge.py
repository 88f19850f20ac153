"""The one place provider batch jobs touch the Prompter's internals.

Everything a batch job needs from the core goes through these functions: rendering an input into the exact
request ``run()`` would send (the Prompter's plan, ``Prompter._request``, the renderer, the backend's own
``body()``), the prompter's fingerprint, the Prompter's cache, the backend's endpoint and key, and turning a
provider's answer into a result through the same plan that validates (and, opt-in, re-asks) in real time.
When the core's plan, ``LMRequest`` or backends change, this module is what to re-point.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .._cache import response_from_json, response_to_json
from .._render import DEFAULT_INSTRUCTION_PROMPT, DEFAULT_SYSTEM_PROMPT, OutputParseError
from .._result import ExtractionResult, Usage
from ..errors import ConfigurationError, ExtractionError
from ..lm import LMResponse

if TYPE_CHECKING:
    from .._prompter import Prompter

#: version of the fingerprint recipe (a change makes old jobs un-resumable rather than silently wrong)
_FINGERPRINT_VERSION = 1


@dataclass(frozen=True, slots=True)
class Rendered:
    """One input rendered as a batch request line (``custom_id``, ``body``) with its Prompter-cache state."""

    custom_id: str
    body: dict[str, Any]
    cache_key: str | None
    cached: LMResponse | None


def check_supported(prompter: Prompter) -> None:
    """A :class:`ConfigurationError` unless the Prompter's backend speaks an OpenAI-compatible API."""
    from ..lm.openai_compat import OpenAICompatBackend

    backend = prompter.backend
    if not isinstance(backend, OpenAICompatBackend):
        raise ConfigurationError(
            f"provider batch jobs need an OpenAI-compatible backend (model_id='openai/...', optionally with "
            f"api_base=...); this Prompter uses {type(backend).__name__}, which has no batch endpoint. "
            "Use prompter.predict_batch(inputs) (or apredict_batch) for real-time batches instead."
        )


def client_settings(prompter: Prompter) -> dict[str, Any]:
    """What the provider client needs: ``base_url``, ``api_key`` (never stored), ``timeout``, ``max_retries``."""
    backend: Any = prompter.backend
    return {
        "base_url": backend.base_url,
        "api_key": backend._secret,
        "timeout": float(backend.timeout),
        "max_retries": int(prompter.lm_retries),
    }


def endpoint(prompter: Prompter) -> str:
    """The backend's endpoint without userinfo, query or fragment (safe to record)."""
    from .._persist import sanitize_api_base

    backend: Any = prompter.backend
    return sanitize_api_base(backend.base_url) or ""


def fingerprint(prompter: Prompter) -> str:
    """A stable hash of everything that shapes a request besides the input: model id, effective prompts,
    demos, and the request body without messages (model, schema with its field descriptions, settings)."""
    body = prompter.backend.body(prompter._request(prompter.renderer, []))  # type: ignore[attr-defined]
    body.pop("messages", None)
    state = prompter.state
    payload = {
        "v": _FINGERPRINT_VERSION,
        "model_id": prompter.model_id,
        "system": state.system_prompt or DEFAULT_SYSTEM_PROMPT,
        "instruction": state.instruction_prompt or DEFAULT_INSTRUCTION_PROMPT,
        "demos": [d.to_json() for d in state.demos],
        "body": body,
    }
    text = json.dumps(payload, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def render(prompter: Prompter, item: Any, prompter_fingerprint: str) -> Rendered:
    """The first request of ``item``'s extraction plan, exactly as ``run()`` would send it."""
    doc = prompter._input(item)
    if prompter._chunks(doc) is not None:
        raise ConfigurationError(
            "the document does not fit the LM's context window: run() would split it into chunks, which a "
            "batch job (one request per input) does not do. Extract it with prompter.run(...) or "
            "predict_batch(...)"
        )
    plan = prompter._plan(doc)
    request = next(plan)
    plan.close()
    key, hit = prompter._cached(request)
    custom_id = f"dspydantic-{prompter_fingerprint[:16]}-{doc.fingerprint[:32]}"
    return Rendered(custom_id, prompter.backend.body(request), key, hit)  # type: ignore[attr-defined]


def response_from_body(prompter: Prompter, body: dict[str, Any]) -> LMResponse:
    """A chat-completion body from the provider's output file, read by the backend's own parser."""
    backend: Any = prompter.backend
    parsed: LMResponse = backend._parse(200, json.dumps(body).encode("utf-8"))
    return parsed


def cached_response(prompter: Prompter, key: str) -> LMResponse | None:
    cache = prompter.cache
    hit = cache.get(key) if cache is not None else None
    return response_from_json(hit) if hit is not None else None


def remember(prompter: Prompter, key: str | None, response: LMResponse) -> None:
    """Put a provider answer in the Prompter's cache (a later ``run()`` or re-submission reuses it)."""
    if key is not None and prompter.cache is not None:
        prompter.cache.set(key, response_to_json(response))


def answer(
    prompter: Prompter, response: LMResponse, messages: list[dict[str, Any]] | None, *, cached: bool = False
) -> ExtractionResult[Any]:
    """Validate a provider's answer through the Prompter's plan.

    With ``messages`` (the request as it was sent), an answer that does not validate is re-asked through
    the real-time path (the Prompter's cache and transport retries), as ``run()`` would; without them it
    raises :class:`ExtractionError` at once.
    """
    plan = prompter._plan_messages(list(messages or []))
    next(plan)
    try:
        request = plan.send((response, cached))
    except StopIteration as stop:
        result: ExtractionResult[Any] = stop.value
        return result
    if messages is None:
        plan.close()
        raise _not_valid(prompter, response, cached)
    while True:
        try:
            request = plan.send(prompter._call(request))
        except StopIteration as stop:
            done: ExtractionResult[Any] = stop.value
            return done


def _not_valid(prompter: Prompter, response: LMResponse, cached: bool) -> ExtractionError:
    usage = Usage()
    if cached:
        usage.cache_hits = 1
    else:
        usage.calls = 1
        usage.prompt_tokens, usage.completion_tokens = response.prompt_tokens, response.completion_tokens
    try:
        prompter.renderer.parse(response.text)
        feedback, errors = "?", []
    except OutputParseError as exc:
        feedback, errors = exc.feedback, exc.errors
    return ExtractionError(
        f"the batch answer is not a valid {prompter.model.__name__} (re-ask not enabled: "
        f"job.results(reask=True) asks again through the real-time API): {feedback}",
        raw_output=response.text,
        errors=[errors],
        attempts=1,
        usage=usage,
    )


def finish(results: list[Any], on_error: str) -> list[Any]:
    """``on_error="raise"``: a ``BatchError`` holding every slot when any item failed (as ``predict_batch``)."""
    from .._prompter import _finish

    return _finish(results, on_error)
