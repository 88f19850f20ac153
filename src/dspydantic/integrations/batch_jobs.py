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

Answers are grounded in their documents as ``run()`` grounds them (per-field confidence, and
``require_grounding``): the job that ``submit_batch`` returns holds the documents' texts in memory; a job
resumed in another process reads each document back from the job's input file at the provider (which holds
every request for the life of the job anyway), checking that it hashes to the ``custom_id`` it was submitted
under. So no document is written to disk by us, and no answer is ungrounded while the provider keeps the
input file (``results(ground=False)`` skips that download; answers from the Prompter's cache are grounded
only in the submitting process, since they were never uploaded).

A document that ``run()`` would split into chunks (longer than the LM's context window) cannot be one batch
request: it is not submitted, and its slot in ``results()`` is a :class:`BatchJobItemError` with
``reason="too_long"`` naming ``run()`` / ``predict_batch``; the rest of the job goes ahead.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import gc
import hashlib
import os
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ConfigurationError, LMError
from . import _batch_bridge as bridge
from . import _batch_records as records
from ._batch_job import BatchJob, BatchJobStatus
from ._batch_lines import MAX_REQUESTS_PER_BATCH, files
from ._batch_provider import TERMINAL, BatchProvider
from ._batch_records import CACHED as _CACHED
from ._batch_records import NOT_SUBMITTED as _NOT_SUBMITTED
from ._batch_records import TOO_LONG as _TOO_LONG

if TYPE_CHECKING:
    from .._prompter import Prompter

__all__ = ["BatchJob", "BatchJobStatus", "resume_batch", "submit_batch"]

_PENDING_REUSABLE = frozenset({"validating", "in_progress", "finalizing"})


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

    started, cpu = time.perf_counter(), time.process_time()
    rendered: list[bridge.Rendered] = []
    line_of: dict[str, int] = {}
    item_lines: list[int] = []
    with _no_gc():  # tens of thousands of live requests: the cyclic GC would rescan them all, repeatedly
        for i, item in enumerate(items):
            try:
                line = bridge.render(prompter, item, fingerprint)
            except ConfigurationError as exc:  # a bad input (unreadable file, ...): nothing is submitted
                raise ConfigurationError(f"input {i}: {exc}") from None
            j = line_of.setdefault(line.custom_id, len(rendered))
            if j == len(rendered):
                rendered.append(line)
            item_lines.append(j)
    timings["render_s"], timings["render_cpu_s"] = time.perf_counter() - started, time.process_time() - cpu

    job_path = Path(path) if path is not None else None
    job = BatchJob(prompter, {}, path=job_path, store=store)
    sources: list[dict[str, Any]] = []
    where = [
        _TOO_LONG if line.refused is not None else _CACHED if line.cached is not None else _NOT_SUBMITTED
        for line in rendered
    ]
    started = time.perf_counter()
    job.provider  # noqa: B018 - the client (on the backend's transport) is made here, outside the timings below
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
    totals = {"encode_s": 0.0, "encode_cpu_s": 0.0, "upload_s": 0.0, "create_s": 0.0, "bytes": 0.0}
    failure: Exception | None = None
    try:
        for chunk, data, encode_s, encode_cpu_s in files(rendered, new, max_requests_per_batch):
            totals["encode_s"] += encode_s
            totals["encode_cpu_s"] += encode_cpu_s
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
                   cached=where.count(_CACHED), too_long=where.count(_TOO_LONG), items=len(items))
    timings["reused"] = timings["requests"] - timings["uploaded"] - timings["cached"] - timings["too_long"]

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
    # the documents' texts, for grounding the answers when results() is read in this process (never recorded:
    # a resumed job reads them back from the provider's input files)
    job.document_texts = {line.custom_id: line.source for line in rendered if line.source is not None}
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


@contextlib.contextmanager
def _no_gc() -> Iterator[None]:
    """Pause the cyclic garbage collector (rendering creates no cycles; it halves the time per request)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _source_index(sources: list[dict[str, Any]], source: dict[str, Any]) -> int:
    for index, existing in enumerate(sources):
        if existing["batch_id"] == source["batch_id"]:
            return index
    sources.append(dict(source))
    return len(sources) - 1


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
