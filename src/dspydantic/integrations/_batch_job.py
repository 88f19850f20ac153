"""A submitted provider batch job: its status, waiting, cancelling, and its results in input order.

The job reads its record (see :mod:`._batch_records`) and asks the provider; answers are validated through the
Prompter's plan (see :mod:`._batch_bridge`). :mod:`dspydantic.integrations.batch_jobs` submits and resumes jobs.
"""

from __future__ import annotations

import copy
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._cost import cost_usd as _cost_usd
from .._fanout import fan_out
from .._result import ExtractionResult, Usage
from ..errors import BatchJobError, BatchJobItemError, ConfigurationError, ExtractionError, LMError
from ..lm import LMResponse
from . import _batch_bridge as bridge
from ._batch_provider import TERMINAL, BatchProvider
from ._batch_records import CACHED as _CACHED
from ._batch_records import NOT_SUBMITTED as _NOT_SUBMITTED
from ._batch_records import TOO_LONG as _TOO_LONG

if TYPE_CHECKING:
    from .._prompter import Prompter

_RETRYABLE = frozenset({408, 409, 429, 500, 502, 503, 504})


@dataclass(frozen=True, slots=True)
class BatchJobStatus:
    """Where a job stands. ``total`` counts the job's distinct requests; ``completed`` those answered (or
    already in the cache), ``failed`` those the provider failed; ``batches`` maps each provider batch the
    job reads from to its state. ``done``: nothing will change any more, ``results()`` can be read."""

    state: str
    done: bool
    total: int
    completed: int
    failed: int
    batches: dict[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        return f"{self.state}: {self.completed}/{self.total} answered, {self.failed} failed"


class BatchJob:
    """A submitted provider batch job (see the module docstring). Obtain one from
    :meth:`Prompter.submit_batch` or :meth:`Prompter.resume_batch`."""

    def __init__(self, prompter: Prompter, record: dict[str, Any], *, path: Path | None, store: Any) -> None:
        self.prompter = prompter
        self.record = record
        self.path = path
        self.store = store
        #: filled by ``results()``: tokens of the batch answers (``calls``) and cache hits ...
        self.usage = Usage()
        #: ... and of the real-time re-asks of answers that did not validate (``results(reask=True)``)
        self.reask_usage = Usage()
        #: set by ``submit_batch``: seconds spent rendering, encoding, uploading, creating; counts
        self.submit_timings: dict[str, float] = {}
        #: custom_id -> the document's text (grounding source): set by ``submit_batch`` in the submitting
        #: process; a resumed job reads the documents back from its input files
        self.document_texts: dict[str, str] = {}
        self._provider: BatchProvider | None = None
        self._batches: dict[str, dict[str, Any]] = {}
        self._sent: dict[str, dict[str, Any]] = {}

    def __repr__(self) -> str:
        return f"BatchJob(id={self.id!r}, requests={len(self.record['lines'])}, items={len(self.record['items'])})"

    @property
    def id(self) -> str:
        return str(self.record["id"])

    @property
    def name(self) -> str | None:
        name = self.record.get("name")
        return name if isinstance(name, str) else None

    @property
    def batch_ids(self) -> list[str]:
        """The provider batches this job reads answers from (its own first)."""
        return [s["batch_id"] for s in self.record["sources"]]

    @property
    def provider(self) -> BatchProvider:
        if self._provider is None:
            self._provider = bridge.provider(self.prompter)
        return self._provider

    @property
    def cost_usd(self) -> float | None:
        """Cost of the job's answers at the batch rate plus its re-asks at the real-time rate (after
        ``results()``); ``None`` when the model's price is unknown."""
        model_id = self.record.get("model_id")
        batch = _cost_usd(model_id, self.usage.prompt_tokens, self.usage.completion_tokens, batch=True)
        reask = (
            _cost_usd(model_id, self.reask_usage.prompt_tokens, self.reask_usage.completion_tokens)
            if self.reask_usage.total_tokens
            else 0.0
        )
        return None if batch is None or reask is None else batch + reask

    # -- progress ----------------------------------------------------------------------------------
    def status(self) -> BatchJobStatus:
        """Ask the provider where each batch of the job stands."""
        sources = self.record["sources"]
        self._batches = {bid: self.provider.retrieve(bid) for bid in dict.fromkeys(s["batch_id"] for s in sources)}
        per_source: dict[int, int] = {}
        for _, source, _ in self.record["lines"]:
            per_source[source] = per_source.get(source, 0) + 1
        completed = per_source.get(_CACHED, 0)
        failed = per_source.get(_NOT_SUBMITTED, 0) + per_source.get(_TOO_LONG, 0)
        for index, source in enumerate(sources):
            batch = self._batches[source["batch_id"]]
            if source.get("own"):
                counts = batch.get("request_counts") or {}
                completed += int(counts.get("completed") or 0)
                failed += int(counts.get("failed") or 0)
            elif batch.get("status") in TERMINAL:
                completed += per_source.get(index, 0)
        states = {bid: str(b.get("status")) for bid, b in self._batches.items()}
        own = [states[s["batch_id"]] for s in sources if s.get("own")]
        running = [s for s in [*own, *states.values()] if s not in TERMINAL]
        if running:
            state = running[0]
        else:
            worst = [s for s in ("failed", "expired", "cancelled") if s in own]
            state = worst[0] if worst else "completed"
        return BatchJobStatus(state, not running, len(self.record["lines"]), completed, failed, states)

    def wait(
        self,
        poll: float = 30.0,
        timeout: float | None = None,
        on_progress: Callable[[BatchJobStatus], Any] | None = None,
    ) -> BatchJobStatus:
        """Poll every ``poll`` seconds until the job is done (``on_progress(status)`` after each poll);
        raises :class:`BatchJobError` when ``timeout`` seconds pass first (the job keeps running)."""
        if not isinstance(poll, int | float) or poll <= 0:
            raise ConfigurationError(f"poll must be a positive number of seconds, got {poll!r}")
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            status = self.status()
            if on_progress is not None:
                on_progress(status)
            if status.done:
                return status
            if deadline is not None and time.monotonic() >= deadline:
                raise BatchJobError(
                    f"batch job {self.id} is still {status.state} after {timeout} s ({status}); it keeps "
                    "running: wait again, or resume it later with prompter.resume_batch(...)",
                    state=status.state,
                )
            left = poll if deadline is None else max(0.0, min(poll, deadline - time.monotonic()))
            time.sleep(left)

    def cancel(self) -> BatchJobStatus:
        """Cancel the job's own provider batches that are still running (answers so far are kept)."""
        for source in self.record["sources"]:
            if source.get("own"):
                batch = self.provider.retrieve(source["batch_id"])
                if batch.get("status") not in TERMINAL and batch.get("status") != "cancelling":
                    self.provider.cancel(source["batch_id"])
        return self.status()

    # -- results -----------------------------------------------------------------------------------
    def results(
        self,
        *,
        with_confidence: bool = False,
        reask: bool = False,
        on_error: str = "return",
        reask_workers: int = 4,
        ground: bool = True,
    ) -> list[Any]:
        """Every input's result, in input order: an instance of the Prompter's model (an
        :class:`ExtractionResult` with ``with_confidence=True``), or the typed error of that item:
        :class:`BatchJobItemError` (provider error, expired, cancelled, ...) or :class:`ExtractionError`
        (the answer did not validate). ``reask=True`` re-asks answers that did not validate through the
        real-time API, as ``run()`` would. ``on_error="raise"`` raises a ``BatchError`` holding every slot.
        Answers go into the Prompter's cache (if it has one). Fills ``usage``, ``reask_usage``, ``cost_usd``.
        Answers are grounded in their documents as ``run()``'s are (see :mod:`..batch_jobs`); a resumed job
        reads the documents back from its input files at the provider, unless ``ground=False``.
        """
        if on_error not in ("raise", "return"):
            raise ConfigurationError(f"on_error must be 'raise' or 'return', got {on_error!r}")
        status = self.status()
        if not status.done:
            raise BatchJobError(
                f"batch job {self.id} is not finished ({status}): call job.wait() first", state=status.state
            )
        lines, sources = self.record["lines"], self.record["sources"]
        answers = self._answers()
        texts = self._texts(answers) if ground else {}
        self.usage, self.reask_usage = Usage(), Usage()
        outcomes: list[ExtractionResult[Any] | Exception] = []
        retry: list[int] = []
        for j, answer in enumerate(answers):
            if isinstance(answer, Exception):
                outcomes.append(answer)
                continue
            from_cache = answer.cached
            if from_cache:
                self.usage.cache_hits += 1
            else:
                self.usage.calls += 1
                self.usage.prompt_tokens += answer.prompt_tokens
                self.usage.completion_tokens += answer.completion_tokens
            try:  # a provider answer that validates goes into the Prompter's cache (as run() would put it)
                outcomes.append(bridge.answer(self.prompter, answer, None, cache_key=lines[j][2],
                                              source=texts.get(lines[j][0])))
            except ExtractionError as exc:
                exc.custom_id = lines[j][0]  # type: ignore[attr-defined]
                outcomes.append(exc)
                if reask and not from_cache and self.prompter.max_retries > 0:
                    retry.append(j)
        if retry:
            self._reask(retry, answers, outcomes, max(1, int(reask_workers)), texts)
        out: list[Any] = []
        seen: set[int] = set()
        for i, j in enumerate(self.record["items"]):
            outcome = outcomes[j]
            if isinstance(outcome, Exception):
                if getattr(outcome, "batch_index", None) is None:
                    outcome.batch_index = i  # type: ignore[attr-defined]
                out.append(outcome)
                continue
            result = copy.deepcopy(outcome) if j in seen else outcome
            seen.add(j)
            source = lines[j][1]
            result.extra.update(
                custom_id=lines[j][0], batch_id=sources[source]["batch_id"] if source >= 0 else None
            )
            out.append(result if with_confidence else result.data)
        return bridge.finish(out, on_error)

    def _answers(self) -> list[LMResponse | Exception]:
        """Each line's provider answer (or cached answer), or the typed error standing for it."""
        lines, sources = self.record["lines"], self.record["sources"]
        answers: list[LMResponse | Exception | None] = [None] * len(lines)
        wanted: dict[int, dict[str, int]] = {}
        for j, (custom_id, source, key) in enumerate(lines):
            if source == _CACHED:
                hit = bridge.cached_response(self.prompter, key) if key else None
                answers[j] = hit or BatchJobItemError(
                    f"the answer to {custom_id} was taken from the Prompter's cache at submission and is no "
                    "longer there (another cache, or cleared): submit this input again",
                    reason="missing",
                    custom_id=custom_id,
                )
            elif source == _TOO_LONG:
                answers[j] = BatchJobItemError(
                    f"{custom_id} was not submitted: the document does not fit the LM's context window; run() "
                    "splits it into chunks and merges their answers, which one batch request cannot do. Extract "
                    "it with prompter.run(...) or predict_batch(...)",
                    reason="too_long",
                    custom_id=custom_id,
                )
            elif source == _NOT_SUBMITTED:
                answers[j] = BatchJobItemError(
                    f"{custom_id} was never submitted (the submission failed part-way): submit the inputs "
                    "again (finished work is reused)",
                    reason="missing",
                    custom_id=custom_id,
                )
            else:
                wanted.setdefault(source, {})[custom_id] = j
        for source, ids in wanted.items():
            batch_id = sources[source]["batch_id"]
            for j, answer in self._read_batch(self._batches[batch_id], ids).items():
                answers[j] = answer
        return [a if a is not None else LMError("internal: no answer assigned") for a in answers]

    def _sent_bodies(self, todo: list[int]) -> dict[str, dict[str, Any]]:
        """The request bodies of lines ``todo`` as the provider holds them (read from the job's input files
        once, then remembered); ``self._sent`` maps every custom_id read so far to its body."""
        lines, sources = self.record["lines"], self.record["sources"]
        wanted = {lines[j][0] for j in todo if lines[j][1] >= 0}
        for source in dict.fromkeys(lines[j][1] for j in todo if lines[j][1] >= 0):
            try:
                for obj in self.provider.lines(sources[source]["input_file_id"]):
                    custom_id, body = obj.get("custom_id"), obj.get("body")
                    if custom_id in wanted and isinstance(body, dict):
                        self._sent[str(custom_id)] = body
            except LMError as exc:
                if exc.status != 404:
                    raise
                warnings.warn(
                    f"the input file of batch {sources[source]['batch_id']} is gone at the provider: the answers "
                    "read from it are not grounded in their documents (their field confidence is not lowered "
                    "or raised by grounding)",
                    UserWarning,
                    stacklevel=4,
                )
        return {lines[j][0]: self._sent[lines[j][0]] for j in range(len(lines)) if lines[j][0] in self._sent}

    def _texts(self, answers: list[LMResponse | Exception]) -> dict[str, str]:
        """custom_id -> the document's text, for every line with an answer to ground: from memory (the
        submitting process) or read back from the job's input files (checked against the custom_id)."""
        lines = self.record["lines"]
        texts = dict(self.document_texts)
        todo = [
            j for j, a in enumerate(answers)
            if isinstance(a, LMResponse) and lines[j][0] not in texts and lines[j][0] not in self._sent
        ]
        if todo:
            self._sent_bodies(todo)
        for j, a in enumerate(answers):
            cid = lines[j][0]
            if isinstance(a, LMResponse) and cid not in texts and cid in self._sent:
                text = bridge.source_of(cid, self._sent[cid])
                if text is not None:
                    texts[cid] = text
        return texts

    def _read_batch(self, batch: dict[str, Any], wanted: dict[str, int]) -> dict[int, LMResponse | Exception]:
        batch_id, state = str(batch.get("id")), str(batch.get("status"))
        found: dict[int, LMResponse | Exception] = {}
        if state == "failed":
            errors = (batch.get("errors") or {}).get("data") or []
            why = "; ".join(str(e.get("message")) for e in errors[:3] if isinstance(e, dict)) or "no reason given"
            for custom_id, j in wanted.items():
                found[j] = BatchJobItemError(
                    f"the provider rejected batch {batch_id}: {why[:500]}", reason="failed", custom_id=custom_id
                )
            return found
        for key in ("output_file_id", "error_file_id"):
            file_id = batch.get(key)
            if not isinstance(file_id, str) or not file_id:
                continue
            try:
                for obj in self.provider.lines(file_id):
                    line_id = obj.get("custom_id")
                    slot = wanted.get(line_id) if isinstance(line_id, str) else None
                    if slot is not None and slot not in found:
                        found[slot] = self._line(obj, str(line_id), batch_id)
            except LMError as exc:
                if exc.status != 404:
                    raise
        for custom_id, j in wanted.items():
            if j not in found:
                reason = state if state in ("expired", "cancelled") else "missing"
                found[j] = BatchJobItemError(
                    f"request {custom_id} of batch {batch_id} got no answer (the batch is {state})",
                    reason=reason,
                    custom_id=custom_id,
                )
        return found

    def _line(self, obj: dict[str, Any], custom_id: str, batch_id: str) -> LMResponse | Exception:
        response, error = obj.get("response"), obj.get("error")
        response = response if isinstance(response, dict) else {}
        error = error if isinstance(error, dict) else {}
        status = response.get("status_code")
        body = response.get("body")
        if status == 200 and isinstance(body, dict):
            try:
                return bridge.response_from_body(self.prompter, body)
            except LMError as exc:
                return BatchJobItemError(str(exc), reason="provider", custom_id=custom_id, status=200)
        if error.get("code") == "batch_expired":
            return BatchJobItemError(
                f"request {custom_id} of batch {batch_id} expired: the completion window closed before it ran",
                reason="expired",
                custom_id=custom_id,
            )
        inner = body.get("error") if isinstance(body, dict) else None
        message = (inner or error).get("message") if isinstance(inner or error, dict) else None
        return BatchJobItemError(
            self.provider.redact(f"the provider failed request {custom_id} of batch {batch_id} (HTTP {status}): "
                                 f"{str(message or error.get('code') or 'no message')[:500]}"),
            reason="provider",
            custom_id=custom_id,
            status=status if isinstance(status, int) else None,
            retryable=status in _RETRYABLE,
        )

    def _reask(
        self,
        retry: list[int],
        answers: list[LMResponse | Exception],
        outcomes: list[ExtractionResult[Any] | Exception],
        workers: int,
        texts: dict[str, str],
    ) -> None:
        """Re-ask, through the real-time path, the answers that did not validate (``results(reask=True)``)."""
        lines = self.record["lines"]
        bodies = self._sent_bodies([j for j in retry if lines[j][0] not in self._sent])
        messages = {
            cid: body["messages"] for cid, body in bodies.items() if isinstance(body.get("messages"), list)
        }

        def one(j: int) -> ExtractionResult[Any] | Exception:
            sent = messages.get(lines[j][0])
            if sent is None:
                return outcomes[j]
            answer = answers[j]
            assert isinstance(answer, LMResponse)
            try:
                return bridge.answer(self.prompter, answer, sent, source=texts.get(lines[j][0]))
            except (ExtractionError, LMError) as exc:
                if getattr(exc, "custom_id", None) is None:
                    setattr(exc, "custom_id", lines[j][0])  # noqa: B010 - ExtractionError has no such field
                return exc

        for j, outcome in zip(retry, fan_out(one, retry, workers), strict=True):
            outcomes[j] = outcome
            used = outcome.usage if isinstance(outcome, ExtractionResult) else getattr(outcome, "usage", None)
            first = answers[j]
            if isinstance(used, Usage) and isinstance(first, LMResponse):
                self.reask_usage.calls += max(0, used.calls - 1)
                self.reask_usage.cache_hits += used.cache_hits
                self.reask_usage.prompt_tokens += max(0, used.prompt_tokens - first.prompt_tokens)
                self.reask_usage.completion_tokens += max(0, used.completion_tokens - first.completion_tokens)
