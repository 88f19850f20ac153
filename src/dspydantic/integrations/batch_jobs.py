"""Provider batch jobs: run a Prompter over thousands of inputs through the OpenAI Batch API (about half
the token price, answers within 24 hours instead of in real time).

    job = prompter.submit_batch(documents, name="archive-2019")   # renders, uploads one JSONL, creates the batch
    job.wait(poll=60, on_progress=print)                           # or, in another process:
    job = prompter.resume_batch(job.id)                            # (or the job file's path)
    results = job.results()                                        # input order: instances or typed errors

Every request is rendered exactly as ``run()`` would send it (the Prompter's plan, renderer, demos, schema
and the backend's own request body), and its answer is validated by the same plan. Each request's
``custom_id`` is ``dspydantic-<prompter fingerprint>-<input content hash>``: stable across processes, so a
re-submission of the same inputs reuses answers already in the Prompter's cache and work an earlier job of
the same prompter has finished (or is still doing) instead of paying for it again.

A job is recorded as a small JSON file (``$DSPYDANTIC_BATCH_DIR``, by default ``batches/`` under the
dspydantic cache directory; or ``path=``) or in a ``store=`` object: ids only, no document, no answer, no
secret.
"""

from __future__ import annotations

import copy
import datetime as dt
import hashlib
import json
import os
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._cost import cost
from .._result import ExtractionResult, Usage
from ..errors import BatchJobError, BatchJobItemError, ConfigurationError, ExtractionError, LMError, redact
from ..lm import LMResponse
from . import _batch_bridge as bridge
from . import _batch_records as records
from ._batch_provider import TERMINAL, BatchProvider

if TYPE_CHECKING:
    from .._prompter import Prompter

__all__ = ["BatchJob", "BatchJobStatus", "resume_batch", "submit_batch"]

#: the provider's limits on one batch input file
MAX_REQUESTS_PER_BATCH = 50_000
MAX_BYTES_PER_FILE = 190 * 2**20
_CACHED, _NOT_SUBMITTED = -1, -2
_PENDING_REUSABLE = frozenset({"validating", "in_progress", "finalizing"})
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
        self._provider: BatchProvider | None = None
        self._batches: dict[str, dict[str, Any]] = {}

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
            self._provider = BatchProvider(**bridge.client_settings(self.prompter))
        return self._provider

    @property
    def cost_usd(self) -> float | None:
        """Cost of the job's answers at the batch rate plus its re-asks at the real-time rate (after
        ``results()``); ``None`` when the model's price is unknown."""
        model_id = self.record.get("model_id")
        batch = cost(model_id, self.usage.prompt_tokens, self.usage.completion_tokens, batch=True)
        reask = (
            cost(model_id, self.reask_usage.prompt_tokens, self.reask_usage.completion_tokens)
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
        completed, failed = per_source.get(_CACHED, 0), per_source.get(_NOT_SUBMITTED, 0)
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
    ) -> list[Any]:
        """Every input's result, in input order: an instance of the Prompter's model (an
        :class:`ExtractionResult` with ``with_confidence=True``), or the typed error of that item:
        :class:`BatchJobItemError` (provider error, expired, cancelled, ...) or :class:`ExtractionError`
        (the answer did not validate). ``reask=True`` re-asks answers that did not validate through the
        real-time API, as ``run()`` would. ``on_error="raise"`` raises a ``BatchError`` holding every slot.
        Answers go into the Prompter's cache (if it has one). Fills ``usage``, ``reask_usage``, ``cost_usd``.
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
        self.usage, self.reask_usage = Usage(), Usage()
        outcomes: list[ExtractionResult[Any] | Exception] = []
        retry: list[int] = []
        for j, answer in enumerate(answers):
            if isinstance(answer, Exception):
                outcomes.append(answer)
                continue
            from_cache = lines[j][1] == _CACHED
            if from_cache:
                self.usage.cache_hits += 1
            else:
                self.usage.calls += 1
                self.usage.prompt_tokens += answer.prompt_tokens
                self.usage.completion_tokens += answer.completion_tokens
                bridge.remember(self.prompter, lines[j][2], answer)
            try:
                outcomes.append(bridge.answer(self.prompter, answer, None, cached=from_cache))
            except ExtractionError as exc:
                exc.custom_id = lines[j][0]  # type: ignore[attr-defined]
                outcomes.append(exc)
                if reask and not from_cache and self.prompter.max_retries > 0:
                    retry.append(j)
        if retry:
            self._reask(retry, answers, outcomes, max(1, int(reask_workers)))
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
        secret = bridge.client_settings(self.prompter)["api_key"]
        return BatchJobItemError(
            redact(f"the provider failed request {custom_id} of batch {batch_id} (HTTP {status}): "
                   f"{str(message or error.get('code') or 'no message')[:500]}", secret),
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
    ) -> None:
        """Re-ask, through the real-time path, the answers that did not validate (``results(reask=True)``)."""
        lines, sources = self.record["lines"], self.record["sources"]
        messages: dict[str, list[dict[str, Any]]] = {}
        wanted = {lines[j][0] for j in retry}
        for source in dict.fromkeys(lines[j][1] for j in retry):
            for obj in self.provider.lines(sources[source]["input_file_id"]):
                custom_id, body = obj.get("custom_id"), obj.get("body")
                if custom_id in wanted and isinstance(body, dict) and isinstance(body.get("messages"), list):
                    messages[str(custom_id)] = body["messages"]

        def one(j: int) -> ExtractionResult[Any] | Exception:
            sent = messages.get(lines[j][0])
            if sent is None:
                return outcomes[j]
            answer = answers[j]
            assert isinstance(answer, LMResponse)
            try:
                return bridge.answer(self.prompter, answer, sent)
            except (ExtractionError, LMError) as exc:
                if getattr(exc, "custom_id", None) is None:
                    setattr(exc, "custom_id", lines[j][0])  # noqa: B010 - ExtractionError has no such field
                return exc

        with ThreadPoolExecutor(max_workers=min(workers, len(retry))) as pool:
            for j, outcome in zip(retry, pool.map(one, retry), strict=True):
                outcomes[j] = outcome
                used = outcome.usage if isinstance(outcome, ExtractionResult) else getattr(outcome, "usage", None)
                first = answers[j]
                if isinstance(used, Usage) and isinstance(first, LMResponse):
                    self.reask_usage.calls += max(0, used.calls - 1)
                    self.reask_usage.cache_hits += used.cache_hits
                    self.reask_usage.prompt_tokens += max(0, used.prompt_tokens - first.prompt_tokens)
                    self.reask_usage.completion_tokens += max(0, used.completion_tokens - first.completion_tokens)


# -- submission ------------------------------------------------------------------------------------------


def submit_batch(
    prompter: Prompter,
    inputs: Iterable[Any],
    *,
    name: str | None = None,
    store: Any = None,
    path: str | os.PathLike[str] | None = None,
    prompter_path: str | os.PathLike[str] | None = None,
    max_requests_per_batch: int = MAX_REQUESTS_PER_BATCH,
) -> BatchJob:
    """Render every input as ``run()`` would, upload what is not already answered as one JSONL file per
    provider batch (at most ``max_requests_per_batch`` requests each) and create the batch(es); record the
    job (``path=`` or the default directory, or ``store=``). ``prompter_path`` (a saved prompter directory)
    is recorded for ``dspydantic batch fetch``."""
    bridge.check_supported(prompter)
    items = list(inputs)
    if not items:
        raise ConfigurationError("submit_batch needs at least one input")
    if name is not None and not isinstance(name, str):
        raise ConfigurationError(f"name must be a string, got {type(name).__name__}")
    if not isinstance(max_requests_per_batch, int) or max_requests_per_batch < 1:
        raise ConfigurationError(f"max_requests_per_batch must be a positive int, got {max_requests_per_batch!r}")
    if store is not None and path is not None:
        raise ConfigurationError("pass store= or path=, not both")
    fingerprint, endpoint = bridge.fingerprint(prompter), bridge.endpoint(prompter)
    timings: dict[str, float] = {}

    started = time.perf_counter()
    rendered: list[bridge.Rendered] = []
    line_of: dict[str, int] = {}
    item_lines: list[int] = []
    for i, item in enumerate(items):
        try:
            line = bridge.render(prompter, item, fingerprint)
        except ConfigurationError as exc:
            raise ConfigurationError(f"input {i}: {exc}") from None
        j = line_of.setdefault(line.custom_id, len(rendered))
        if j == len(rendered):
            rendered.append(line)
        item_lines.append(j)
    timings["render_s"] = time.perf_counter() - started

    job_path = Path(path) if path is not None else None
    job = BatchJob(prompter, {}, path=job_path, store=store)
    sources: list[dict[str, Any]] = []
    where = [_CACHED if line.cached is not None else _NOT_SUBMITTED for line in rendered]
    started = time.perf_counter()
    job.provider  # noqa: B018 - the client (importing openai) is made here, outside the timings below
    timings["client_s"] = time.perf_counter() - started
    started = time.perf_counter()
    open_lines = {rendered[j].custom_id: j for j, w in enumerate(where) if w == _NOT_SUBMITTED}
    if open_lines:
        directory = job_path.parent if job_path is not None else records.default_dir()
        earlier = records.related(fingerprint, endpoint, directory=directory, store=store)
        for custom_id, source in _reusable(job.provider, earlier, set(open_lines)).items():
            where[open_lines[custom_id]] = _source_index(sources, source)
    timings["reuse_s"] = time.perf_counter() - started

    new = [j for j, w in enumerate(where) if w == _NOT_SUBMITTED]
    metadata = {"dspydantic_fingerprint": fingerprint[:16]}
    if name:
        metadata["dspydantic_name"] = name[:500]
    totals = {"encode_s": 0.0, "upload_s": 0.0, "create_s": 0.0, "bytes": 0.0}
    failure: Exception | None = None
    try:
        for chunk, data, encode_s in _files(rendered, new, max_requests_per_batch):
            totals["encode_s"] += encode_s
            totals["bytes"] += len(data)
            started = time.perf_counter()
            file_id = job.provider.upload(data, f"dspydantic-{fingerprint[:12]}.jsonl")
            totals["upload_s"] += time.perf_counter() - started
            started = time.perf_counter()
            batch = job.provider.create(file_id, metadata)
            totals["create_s"] += time.perf_counter() - started
            index = _source_index(sources, {"batch_id": str(batch["id"]), "input_file_id": file_id, "own": True})
            for j in chunk:
                where[j] = index
    except LMError as exc:
        if not any(s.get("own") for s in sources):
            raise
        failure = exc  # some batches exist: record them before raising, so a re-submission reuses them
    timings.update(totals)
    timings.update(requests=len(rendered), uploaded=sum(1 for w in where if w >= 0 and sources[w].get("own")),
                   cached=where.count(_CACHED), items=len(items))
    timings["reused"] = timings["requests"] - timings["uploaded"] - timings["cached"]

    own = [s["batch_id"] for s in sources if s.get("own")]
    digest = hashlib.sha256("\n".join(line.custom_id for line in rendered).encode()).hexdigest()
    job.record = {
        "format": records.FORMAT,
        "format_version": records.FORMAT_VERSION,
        "id": own[0] if own else f"local-{digest[:24]}",
        "name": name,
        "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "model_id": prompter.model_id,
        "endpoint": endpoint,
        "fingerprint": fingerprint,
        "prompter_path": os.path.abspath(prompter_path) if prompter_path is not None else None,
        "sources": sources,
        "lines": [[line.custom_id, w, line.cache_key] for line, w in zip(rendered, where, strict=True)],
        "items": item_lines,
    }
    job.path = records.save(job.record, path=job_path, store=store)
    job.submit_timings = timings
    if failure is not None:
        where_recorded = str(job.path) if job.path is not None else f"the store as {job.id!r}"
        raise LMError(
            f"{failure} -- {len(own)} batch(es) were created before the failure and are recorded in "
            f"{where_recorded}; submit the same inputs again to reuse them"
        ) from failure
    return job


def resume_batch(prompter: Prompter, id_or_path: str | os.PathLike[str], *, store: Any = None) -> BatchJob:
    """Pick up a recorded job (e.g. in a new process); ``prompter`` must be the one that submitted it."""
    bridge.check_supported(prompter)
    record, path = records.load(id_or_path, store=store)
    if record["fingerprint"] != bridge.fingerprint(prompter):
        raise ConfigurationError(
            f"batch job {record['id']} was submitted by another prompter (model_id {record.get('model_id')!r}; "
            f"this one: {prompter.model_id!r}), or with other prompts, field descriptions, demos, schema or "
            "settings: load the prompter that submitted it (Prompter.load of the same saved directory)"
        )
    endpoint = bridge.endpoint(prompter)
    if record["endpoint"] != endpoint:
        raise ConfigurationError(
            f"batch job {record['id']} lives at {record['endpoint']!r}, but this prompter talks to {endpoint!r}: "
            "pass api_base= for the job's endpoint"
        )
    return BatchJob(prompter, record, path=path, store=store)


def _source_index(sources: list[dict[str, Any]], source: dict[str, Any]) -> int:
    for index, existing in enumerate(sources):
        if existing["batch_id"] == source["batch_id"]:
            return index
    sources.append(dict(source))
    return len(sources) - 1


def _files(
    rendered: list[bridge.Rendered], new: list[int], max_requests: int
) -> Iterator[tuple[list[int], bytes, float]]:
    """The batch input files: JSONL request lines within the provider's per-file limits."""
    started = time.perf_counter()
    chunk: list[int] = []
    parts: list[bytes] = []
    size = 0
    for j in new:
        line = rendered[j]
        data = json.dumps(
            {"custom_id": line.custom_id, "method": "POST", "url": "/v1/chat/completions", "body": line.body},
            ensure_ascii=False,
            separators=(",", ":"),
        ).encode("utf-8") + b"\n"
        if chunk and (len(chunk) >= max_requests or size + len(data) > MAX_BYTES_PER_FILE):
            yield chunk, b"".join(parts), time.perf_counter() - started
            started = time.perf_counter()
            chunk, parts, size = [], [], 0
        chunk.append(j)
        parts.append(data)
        size += len(data)
    if chunk:
        yield chunk, b"".join(parts), time.perf_counter() - started


def _reusable(provider: BatchProvider, earlier: list[dict[str, Any]], wanted: set[str]) -> dict[str, dict[str, Any]]:
    """Of the ``wanted`` custom ids, those an earlier job's batch has answered (or is still working on)."""
    batches: dict[str, dict[str, Any] | None] = {}
    answered: dict[str, set[str]] = {}
    found: dict[str, dict[str, Any]] = {}
    for record in earlier:
        sources = record["sources"]
        for custom_id, index, _ in record["lines"]:
            if index < 0 or custom_id not in wanted or custom_id in found:
                continue
            source = sources[index]
            batch_id = source["batch_id"]
            if batch_id not in batches:
                try:
                    batches[batch_id] = provider.retrieve(batch_id)
                except LMError as exc:
                    if exc.status != 404:
                        raise
                    batches[batch_id] = None
            batch = batches[batch_id]
            if batch is None:
                continue
            if batch.get("status") in _PENDING_REUSABLE:
                found[custom_id] = {"batch_id": batch_id, "input_file_id": source["input_file_id"], "own": False}
                continue
            if batch_id not in answered:
                answered[batch_id] = _answered(provider, batch)
            if custom_id in answered[batch_id]:
                found[custom_id] = {"batch_id": batch_id, "input_file_id": source["input_file_id"], "own": False}
    return found


def _answered(provider: BatchProvider, batch: dict[str, Any]) -> set[str]:
    file_id = batch.get("output_file_id")
    if batch.get("status") not in TERMINAL or not isinstance(file_id, str) or not file_id:
        return set()
    try:
        return {
            str(obj.get("custom_id"))
            for obj in provider.lines(file_id)
            if isinstance(obj.get("response"), dict) and obj["response"].get("status_code") == 200
        }
    except LMError as exc:
        if exc.status != 404:
            raise
        return set()
