"""The plan of one extraction, sans-IO: a generator that yields :class:`~dspydantic.lm.LMRequest` s and
receives :class:`~dspydantic.lm.LMResponse` s, and the two drivers (sync, async) that run it, so they cannot drift.

One plan: read the input (:func:`input_doc`), render the messages, ask, parse, check grounding, re-ask on a
validation error, grow ``max_tokens`` once on a cut answer, draw the opt-in confidence samples; a document
longer than the context window is extracted per chunk and merged. The functions take the :class:`Prompter`
whose settings, renderer and answer check they use; the Prompter's private ``_plan*`` methods call them.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Generator
from typing import TYPE_CHECKING, Any

from ._example import Example
from ._inputs import InputDoc, build_input, input_keywords
from ._render import OutputParseError, Renderer
from ._result import ExtractionResult, Usage
from .confidence.answer import merge_chunk_confidences
from .errors import ConfigurationError, ExtractionError
from .lm import LMBackend, LMRequest, LMResponse
from .lm.settings import ModelSettings

if TYPE_CHECKING:
    from ._prompter import Prompter

log = logging.getLogger("dspydantic")

#: the plan of one extraction: yields requests, receives responses, returns the result
Plan = Generator[LMRequest, LMResponse, ExtractionResult[Any]]


def drive(plan: Plan, backend: LMBackend) -> ExtractionResult[Any]:
    """Run ``plan`` to its result, answering each request with ``backend.complete``."""
    request = next(plan)
    while True:
        response = backend.complete(request)
        try:
            request = plan.send(response)
        except StopIteration as stop:
            return stop.value


async def adrive(plan: Plan, backend: LMBackend) -> ExtractionResult[Any]:
    """Run ``plan`` to its result, answering each request with ``await backend.acomplete``."""
    request = next(plan)
    while True:
        response = await backend.acomplete(request)
        try:
            request = plan.send(response)
        except StopIteration as stop:
            return stop.value


def plan(p: Prompter[Any], item: Any, renderer: Renderer | None = None, *, confidence: bool = True) -> Plan:
    """The plan of one extraction of ``item`` (any input a verb or a batch takes) by ``p``.

    ``confidence=False``: the caller keeps only the result's ``data`` (see :func:`plan_messages`)."""
    doc = input_doc(item)
    renderer = renderer if renderer is not None else p.renderer
    chunks = split_chunks(p, doc, renderer)
    if chunks is None:
        return (yield from plan_doc(p, doc, renderer, confidence=confidence))
    # a long document: extract per chunk, merge (scalars by agreement, lists by union)
    from ._merge import merge_extractions

    results: list[ExtractionResult[Any]] = []
    failures: list[ExtractionError] = []
    for chunk in chunks:
        part = InputDoc(parts=({"type": "text", "text": chunk},), text=chunk, kind=doc.kind,
                        variables=doc.variables)
        try:
            results.append((yield from plan_doc(p, part, renderer)))
        except ExtractionError as exc:
            log.debug("chunk %d of %d gave no valid extraction: %s", len(results) + len(failures), len(chunks), exc)
            failures.append(exc)
    usage = Usage()
    for r in results:
        usage.add(r.usage)
    for f in failures:
        if isinstance(f.usage, Usage):
            usage.add(f.usage)
    if not results:
        last = failures[-1] if failures else None
        truncated = bool(failures) and all(f.truncated for f in failures)
        raise ExtractionError(
            f"no chunk of the {len(chunks)}-chunk document gave a valid {p.model.__name__}"
            + (" (every chunk's answer was cut by the token limit)" if truncated else "")
            + (f"; last: {last}" if last is not None else ""),
            raw_output=last.raw_output if last is not None else None,
            errors=[e for f in failures for e in f.errors],
            attempts=max((f.attempts for f in failures), default=0),
            usage=usage,
            truncated=truncated,
        )
    dumps = [r.data.model_dump(mode="json", by_alias=True) for r in results]
    merged = merge_extractions(dumps, p._base_schema, [r.confidence for r in results])
    data = p.model.model_validate(merged)
    # spans against the whole document; each field's confidence from the chunks that gave its value
    grounded = p.answer_check.regrounded(data, doc.text)
    fields = merge_chunk_confidences(
        p.answer_check, data.model_dump(mode="json", by_alias=True),
        [(d, r.field_confidences) for d, r in zip(dumps, results, strict=True)],
    )
    return ExtractionResult(
        data=data,
        confidence=min(fields.values()) if fields else min(r.confidence for r in results),
        raw_output=json.dumps(merged, ensure_ascii=False),
        usage=usage,
        attempts=max(r.attempts for r in results),
        cached=all(r.cached for r in results),
        confidence_source=results[0].confidence_source,
        field_confidences=fields,
        spans=grounded.spans,
        ungrounded=grounded.ungrounded,
        calibrated=results[0].calibrated,
        extra={"chunks": len(chunks), "chunks_extracted": len(results)},
    )


def split_chunks(p: Prompter[Any], doc: InputDoc, renderer: Renderer) -> list[str] | None:
    """Split a text document that does not fit the backend's context window (else None)."""
    window = getattr(p.backend, "context_window", None)
    if not window or doc.has_images:
        return None
    from ._chunking import chunk_budget, estimate_tokens, split_text

    doc_tokens = estimate_tokens(doc.text)
    if doc_tokens + (p.max_tokens or 512) < window // 2:  # the common case: clearly fits
        return None
    overhead = estimate_tokens(json.dumps(renderer.messages("", doc.variables), ensure_ascii=False))
    budget = chunk_budget(window, overhead, p.max_tokens or 512)
    if doc_tokens <= budget:
        return None
    return [c.text for c in split_text(doc.text, max_tokens=budget, overlap_tokens=min(64, budget // 8))]


def build_request(
    p: Prompter[Any], renderer: Renderer, messages: list[dict[str, Any]], settings: ModelSettings | None = None
) -> LMRequest:
    """The extraction request for rendered ``messages`` (the optimizer's student sends exactly this too,
    so candidates are scored, and cached, as inference would send them)."""
    schema = renderer.schema
    if renderer.state.choice_bias and not getattr(p.backend, "choice_bias", False):
        from ._choices import strip_choice_bias  # only a backend that decodes with logits can apply them

        schema = strip_choice_bias(schema)
    return LMRequest(
        messages=messages,
        json_schema=schema,
        schema_name=renderer.schema_name,
        settings=settings if settings is not None else p.settings,
        logprobs=p.logprobs,
    )


def larger_limit(p: Prompter[Any], request: LMRequest, response: LMResponse) -> tuple[int | None, int | None]:
    """``(limit that was hit, a larger one the model allows or None)`` after ``finish_reason="length"``:
    double the limit, capped by the context window when it is known."""
    limit = request.settings.max_tokens or getattr(p.backend, "max_tokens", None) or response.completion_tokens
    if not isinstance(limit, int) or limit <= 0:
        return None, None
    bigger = limit * 2
    window = getattr(p.backend, "context_window", None)
    if isinstance(window, int) and window > 0:
        bigger = min(bigger, window - max(response.prompt_tokens, 1) - 1)
    return limit, (bigger if bigger > limit else None)


def plan_doc(p: Prompter[Any], doc: InputDoc, renderer: Renderer, *, confidence: bool = True) -> Plan:
    """The plan of one document that fits the context window."""
    messages = renderer.messages(doc.as_content(), doc.variables)
    return (yield from plan_messages(p, messages, renderer, source=doc.text or None, confidence=confidence))


def plan_messages(
    p: Prompter[Any], messages: list[dict[str, Any]], renderer: Renderer, *, source: str | None,
    confidence: bool = True,
) -> Plan:
    """The attempts of one extraction from its rendered messages: ask, parse, check, re-ask. ``source``
    is the document's text the values are grounded in. (Provider batch jobs send the first request
    themselves and resume here with its answer.)

    ``confidence=False`` (a verb that returns only the data, nobody observing): when nothing the check
    does can change the data or the calls (no field requires grounding, no confidence samples), the
    answer is not assessed, and the result's confidence is NaN with ``confidence_source="none"``."""
    check = p.answer_check
    # grounding changes the data only through require_grounding; samples are LM calls (kept as configured)
    assessed = confidence or bool(check.plan.require_grounding) or p.confidence_samples > 0
    usage = Usage()
    errors: list[Any] = []
    raw = ""
    cached_all = True
    settings = p.settings
    grown = False
    attempt = 1
    while True:
        request = build_request(p, renderer, messages, settings)
        response = yield request
        raw = response.text
        cached_all = count(usage, response) and cached_all
        if response.finish_reason == "length":  # cut by the token limit: never parsed, never cached
            limit, bigger = larger_limit(p, request, response)
            if bigger is not None and not grown:
                log.debug("answer cut at max_tokens=%s; asking once more with max_tokens=%d", limit, bigger)
                settings, grown = settings.replace(max_tokens=bigger), True
                continue
            raise ExtractionError(
                f"the answer was cut by the token limit (max_tokens={limit if limit else 'the default'}"
                f"{', also after one retry with a larger limit' if grown else ''}): raise max_tokens"
                + (" (the context window allows no more)" if limit and bigger is None else ""),
                raw_output=raw,
                errors=[*errors, [{"type": "truncated", "msg": "output cut by the token limit"}]],
                attempts=attempt,
                usage=usage,
                truncated=True,
            )
        try:
            data = renderer.parse(raw)
            if not assessed:
                data = renderer.retyped(data)[0]  # field typing (see _retype): no evidence to move here
                response.confirm()
                return ExtractionResult(data=data, confidence=math.nan, raw_output=raw, usage=usage,
                                        attempts=attempt, cached=cached_all, confidence_source="none")
            # grounding in the source and require_grounding (an ungrounded required value is re-asked)
            data, assessment = check.check(
                renderer, raw, data, source, token_logprobs=response.token_logprobs,
                token_texts=response.token_texts, attempt=attempt,
            )
            data, assessment = check.retype(renderer, data, assessment)
        except OutputParseError as exc:
            errors.append(exc.errors)
            if attempt <= p.max_retries:
                log.debug("answer did not validate (attempt %d): %s", attempt, exc.feedback)
                messages = renderer.reask(messages, raw, exc)
                attempt += 1
                continue
            raise ExtractionError(
                f"no valid {p.model.__name__} after {attempt} attempts; last errors: {errors[-1]}",
                raw_output=raw,
                errors=errors,
                attempts=attempt,
                usage=usage,
            ) from None
        # validated, and grounded where grounding is required: the cache layer may keep it now (an answer
        # that failed the grounding check was re-asked above and is never cached as good)
        response.confirm()
        samples: list[dict[str, Any] | None] = []  # opt-in agreement signal: extra sampled answers
        for i in range(1, p.confidence_samples + 1):
            sample_settings = settings.replace(temperature=p.sample_temperature, seed=i)
            sampled = yield build_request(p, renderer, messages, sample_settings)
            cached_all = count(usage, sampled) and cached_all
            # a sample cut by the token limit or that does not validate counts as one that disagrees
            sample = None if sampled.finish_reason == "length" else check.sample(renderer, sampled.text)
            if sample is not None:
                sampled.confirm()
            samples.append(sample)
        conf = check.confidences(
            assessment, samples=samples, calibrator=p.calibrator, logprobs=bool(response.token_logprobs)
        )
        return ExtractionResult(
            data=data,
            confidence=conf.confidence,
            raw_output=raw,
            usage=usage,
            attempts=attempt,
            cached=cached_all,
            confidence_source=conf.source,
            field_confidences=conf.field_confidences,
            spans=conf.spans,
            ungrounded=conf.ungrounded,
            field_signals=conf.field_signals,
            calibrated=conf.calibrated,
        )


def input_doc(item: Any) -> InputDoc:
    """One input as a document: an InputDoc as is, an Example's input, else :func:`input_keywords`
    (the one rule for a str or a dict, shared by every verb and batch item)."""
    if isinstance(item, InputDoc):
        return item
    kwargs = item.input_kwargs() if isinstance(item, Example) else input_keywords(item)
    doc = build_input(**kwargs)
    try:
        doc.text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ConfigurationError(
            f"the input is not valid Unicode text: {exc.object[exc.start:exc.end]!r} at position {exc.start} "
            "is a lone surrogate (typically from bytes decoded with errors='surrogateescape'); clean it first, "
            "e.g. text.encode('utf-8', 'replace').decode('utf-8')"
        ) from None
    return doc


def count(usage: Usage, response: LMResponse) -> bool:
    """Add one answer to ``usage``; returns whether the cache layer served it."""
    if response.cached:
        usage.cache_hits += 1
    else:
        usage.calls += 1
        usage.prompt_tokens += response.prompt_tokens
        usage.completion_tokens += response.completion_tokens
    return response.cached
