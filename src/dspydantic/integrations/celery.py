"""Celery workers for saved prompters (``pip install 'dspydantic[celery]'``).

    app = Celery("extraction", broker="redis://localhost:6379/0", backend="redis://localhost:6379/0")
    make_tasks(app, prompters={"invoice": "./invoice_prompter"}, store="postgresql+psycopg://.../db")

registers three tasks that any Celery client calls by name, without importing dspydantic:

* ``dspydantic.extract(prompter, text=... | pdf_path=... | pdf_base64=... | image_path=... | image_base64=...)``
* ``dspydantic.extract_file(prompter, path)``: a PDF, an image or a UTF-8 text file, told by its content
* ``dspydantic.extract_batch(prompter, items)``: a list of texts / input dicts; per-item errors

Each returns JSON (``data``, ``confidence``, ``field_confidences``, ``spans``, ``ungrounded``, ``error``, ...).

Delivery: tasks are ``acks_late`` with ``reject_on_worker_lost``: a worker process killed mid-task (kill -9,
OOM) leaves its message unacknowledged and the broker delivers it again. Each document has an idempotency
key (``document_id``: sha256 of the input's content and the prompter's fingerprint); with a ``store`` the
result is written once under that key (a redelivered task takes back its own claim; the same document sent
again is answered from the store without an LM call). Transient LM errors (``LMError.retryable``: 408/429/
5xx, connection faults) are retried by Celery (``autoretry_for`` with exponential backoff); permanent ones
fail the task with the typed error's message (``on_error="return"`` returns it in ``"error"`` instead).

Prompters are loaded once per worker process **after the fork** (``worker_process_init``): the parent of a
prefork pool never loads one (llama.cpp does not survive a fork). For the embedded model the worker sizes
llama.cpp's threads to the cores its processes share (``DSPYDANTIC_LOCAL_THREADS`` = cores // processes,
at least 1; logged) unless that variable is set already.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._media import SNIFF_BYTES, decode_base64, sniff_image_mime
from ..errors import ConfigurationError, DspydanticError, LMError, MissingExtraError

try:
    import celery
    from celery import signals
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise MissingExtraError("celery", "celery") from exc

from ._identity import PreparedInput, document_key, input_kwargs, prepare_input, prompter_fingerprint

if TYPE_CHECKING:
    from .._prompter import Prompter
    from ._store_documents import StoredDocument
    from .store import ExtractionStore

__all__ = ["TransientLMError", "WorkerPrompters", "WorkerTasks", "make_app", "make_tasks", "threads_per_process"]

log = logging.getLogger("dspydantic.celery")

PrompterSpec = str | os.PathLike[str] | Callable[[], "Prompter"]
THREADS_ENV = "DSPYDANTIC_LOCAL_THREADS"
_TASK_INPUTS = ("text", "image_path", "image_base64", "pdf_path", "pdf_base64", "pdf_mode")


class TransientLMError(LMError):
    """A retryable LM error, raised from a task so that Celery's ``autoretry_for`` retries it."""

    def __init__(self, message: str, *, status: int | None = None, retryable: bool = True) -> None:
        super().__init__(message, status=status, retryable=retryable)


def threads_per_process(processes: int) -> int:
    """llama.cpp threads for each of ``processes`` processes sharing this machine's cores (at least 1)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cores = os.cpu_count() or 1
    return max(1, cores // max(1, processes))


# ------------------------------------------------------------------------------------------ prompters


class WorkerPrompters:
    """The prompters of one worker process: each loaded once, in the process that runs the tasks."""

    def __init__(self, specs: Mapping[str, PrompterSpec], load_kwargs: Mapping[str, Any] | None = None) -> None:
        if not specs:
            raise ConfigurationError("a worker needs at least one prompter: prompters={'name': 'path/to/saved'}")
        for name, spec in specs.items():
            if not isinstance(name, str) or not name:
                raise ConfigurationError(f"a prompter name must be a non-empty str, got {name!r}")
            if not (callable(spec) or isinstance(spec, str | os.PathLike)):
                raise ConfigurationError(f"prompter {name!r}: give a saved directory or a factory, got {spec!r}")
        self.specs = dict(specs)
        self.load_kwargs = dict(load_kwargs or {})
        self._loaded: dict[str, tuple[Prompter, str]] = {}
        self._failed: dict[str, str] = {}
        self._pid = os.getpid()
        self._lock = threading.Lock()

    @property
    def names(self) -> list[str]:
        return sorted(self.specs)

    def _reset_if_forked(self) -> None:
        if self._pid != os.getpid():  # a forked child: whatever the parent held is not ours
            self._loaded, self._failed, self._pid = {}, {}, os.getpid()

    def get(self, name: str) -> tuple[Prompter, str]:
        """(prompter, fingerprint) of ``name``, loading it on first use in this process."""
        if name not in self.specs:
            raise ConfigurationError(f"no prompter named {name!r} on this worker; it serves {self.names}")
        with self._lock:
            self._reset_if_forked()
            if name in self._failed:
                raise ConfigurationError(f"prompter {name!r} could not be loaded on this worker: {self._failed[name]}")
            loaded = self._loaded.get(name)
            if loaded is None:
                loaded = self._loaded[name] = self._load(name)
            return loaded

    def _load(self, name: str) -> tuple[Prompter, str]:
        from .._prompter import Prompter

        spec = self.specs[name]
        try:
            prompter = spec() if callable(spec) else Prompter.load(spec, **self.load_kwargs)
        except DspydanticError as exc:
            self._failed[name] = str(exc)
            raise
        if not isinstance(prompter, Prompter):
            raise ConfigurationError(f"the factory of prompter {name!r} returned {type(prompter).__name__}")
        fingerprint = prompter_fingerprint(prompter)
        where = spec if not callable(spec) else getattr(spec, "__name__", "a factory")
        log.info("process %d loaded prompter %r (version %s) from %s", os.getpid(), name, fingerprint[:12], where)
        return prompter, fingerprint

    def load_all(self) -> None:
        """Load every prompter now (a failure is logged; that prompter's tasks then fail with it)."""
        for name in self.specs:
            try:
                self.get(name)
            except DspydanticError as exc:
                log.error("process %d could not load prompter %r: %s", os.getpid(), name, exc)

    def close(self) -> None:
        with self._lock:
            if self._pid == os.getpid():
                for prompter, _ in self._loaded.values():
                    prompter.close()
            self._loaded = {}


class _LazyStore:
    """An ExtractionStore opened in the process that uses it (never across a fork)."""

    def __init__(self, spec: str | ExtractionStore) -> None:
        self.spec = spec
        self._store: ExtractionStore | None = None if isinstance(spec, str) else spec
        self._lock = threading.Lock()

    def get(self) -> ExtractionStore:
        with self._lock:
            if self._store is None:
                from .store import ExtractionStore

                assert isinstance(self.spec, str)
                self._store = ExtractionStore(self.spec)
            return self._store


# ------------------------------------------------------------------------------------------ tasks


@dataclass
class WorkerTasks:
    """The registered tasks (``.delay(...)`` them, or call them by name from any Celery client)."""

    app: celery.Celery
    extract: Any
    extract_file: Any
    extract_batch: Any
    prompters: WorkerPrompters
    store: _LazyStore | None


def make_tasks(
    app: celery.Celery,
    prompters: Mapping[str, PrompterSpec],
    *,
    store: str | ExtractionStore | None = None,
    load_kwargs: Mapping[str, Any] | None = None,
    prefix: str = "dspydantic",
    max_retries: int = 5,
    retry_backoff: int = 2,
    retry_backoff_max: int = 120,
    batch_workers: int = 4,
) -> WorkerTasks:
    """Register ``<prefix>.extract``, ``<prefix>.extract_file`` and ``<prefix>.extract_batch`` on ``app``.

    ``prompters`` maps a name to a saved prompter directory (loaded with ``Prompter.load(path,
    **load_kwargs)``) or to a factory returning a Prompter; either runs in the worker process, after the
    fork. ``store`` (an ``ExtractionStore`` or its URL) keeps every result, written once per document.
    Transient LM errors are retried up to ``max_retries`` times, ``retry_backoff`` seconds doubling up to
    ``retry_backoff_max`` (with jitter).
    """
    registry = WorkerPrompters(prompters, load_kwargs)
    stores = _LazyStore(store) if store is not None else None
    options: dict[str, Any] = {
        "bind": True,
        "shared": False,  # these tasks belong to this app only (Celery would add shared tasks to every app)
        "acks_late": True,
        "reject_on_worker_lost": True,
        "autoretry_for": (TransientLMError,),
        "max_retries": max_retries,
        "retry_backoff": retry_backoff,
        "retry_backoff_max": retry_backoff_max,
        "default_retry_delay": retry_backoff,  # the delay Celery uses when retry_backoff is 0
        "retry_jitter": True,
    }

    def run(task: Any, name: str, item: Mapping[str, Any], on_error: str) -> dict[str, Any]:
        if on_error not in ("raise", "return"):
            raise ConfigurationError(f"on_error must be 'raise' or 'return', got {on_error!r}")
        try:
            return _extract_one(task, registry, stores, name, item, max_retries)
        except TransientLMError:
            raise
        except DspydanticError as exc:
            if on_error == "return":
                return _failure(exc)
            raise

    @app.task(name=f"{prefix}.extract", **options)
    def extract(
        self: Any,
        prompter: str,
        text: str | dict[str, Any] | None = None,
        *,
        image_path: str | None = None,
        image_base64: str | None = None,
        pdf_path: str | None = None,
        pdf_base64: str | None = None,
        pdf_mode: str | None = None,
        on_error: str = "raise",
    ) -> dict[str, Any]:
        """Extract one input with the named prompter."""
        item = {"text": text, "image_path": image_path, "image_base64": image_base64, "pdf_path": pdf_path,
                "pdf_base64": pdf_base64, "pdf_mode": pdf_mode}
        return run(self, prompter, {k: v for k, v in item.items() if v is not None}, on_error)

    @app.task(name=f"{prefix}.extract_file", **options)
    def extract_file(self: Any, prompter: str, path: str, *, on_error: str = "raise") -> dict[str, Any]:
        """Extract one file: a PDF, an image, or UTF-8 text (told by the file's content)."""
        try:
            item = _file_input(path)
        except DspydanticError as exc:
            if on_error == "return":
                return _failure(exc)
            raise
        return run(self, prompter, item, on_error)

    @app.task(name=f"{prefix}.extract_batch", **options)
    def extract_batch(self: Any, prompter: str, items: Sequence[Any], *, max_workers: int = batch_workers) -> list[Any]:
        """Extract many inputs; a failed item holds ``{"data": None, "error": {...}}``, the others their result."""
        return _extract_many(self, registry, stores, prompter, items, max_workers, max_retries)

    _connect_signals(registry)
    return WorkerTasks(app, extract, extract_file, extract_batch, registry, stores)


def make_app(
    prompters: Mapping[str, PrompterSpec],
    broker: str | None = None,
    backend: str | None = None,
    *,
    eager: bool = False,
    main: str = "dspydantic",
    **kwargs: Any,
) -> celery.Celery:
    """A Celery app configured for extraction workers, with the tasks of :func:`make_tasks` registered.

    ``eager=True`` runs the tasks in-process when called (``app.tasks["dspydantic.extract"].delay(...)``):
    the same code, no broker. ``kwargs`` go to :func:`make_tasks`.
    """
    app = celery.Celery(main, broker=broker, backend=backend, set_as_current=False)
    app.conf.update(
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,  # a long LM call must not hold back messages another process could take
        broker_connection_retry_on_startup=True,
        task_always_eager=eager,
    )
    make_tasks(app, prompters, **kwargs)
    return app


# ------------------------------------------------------------------------------------------ task bodies


def _extract_one(
    task: Any, registry: WorkerPrompters, stores: _LazyStore | None, name: str, item: Mapping[str, Any],
    max_retries: int,
) -> dict[str, Any]:
    prompter, fingerprint = registry.get(name)
    kwargs = _decode_item(item)
    retry_transient = int(getattr(task.request, "retries", 0) or 0) < max_retries
    if stores is not None:
        store = stores.get()
        try:
            (doc,) = store.process(prompter, [kwargs], name=name, max_workers=1, claim_token=_token(task),
                                   retry_transient=retry_transient)
        except LMError as exc:
            if exc.retryable:
                raise TransientLMError(str(exc), status=exc.status) from exc
            raise
        return _from_document(doc, name)
    prep = prepare_input(kwargs)
    outcome = prompter.predict_batch([prep.doc], with_confidence=True, on_error="return")[0]
    if isinstance(outcome, LMError) and outcome.retryable and retry_transient:
        raise TransientLMError(str(outcome), status=outcome.status) from outcome
    if isinstance(outcome, BaseException):
        raise outcome
    return _from_result(outcome, name, fingerprint, document_key(fingerprint, prep.digest))


def _extract_many(
    task: Any, registry: WorkerPrompters, stores: _LazyStore | None, name: str, items: Sequence[Any],
    max_workers: int, max_retries: int,
) -> list[Any]:
    if isinstance(items, str | bytes) or not isinstance(items, Sequence):
        raise ConfigurationError("items must be a list of texts or input dicts")
    prompter, fingerprint = registry.get(name)
    out: list[Any] = [None] * len(items)
    preps: dict[int, PreparedInput] = {}
    for i, raw in enumerate(items):  # a bad item fails alone, before any LM call
        try:
            preps[i] = prepare_input(_decode_item(_batch_item(raw)))
        except DspydanticError as exc:
            out[i] = _failure(exc)
    good = list(preps)
    if stores is not None:
        retry_transient = int(getattr(task.request, "retries", 0) or 0) < max_retries
        try:
            docs = stores.get().process(prompter, [preps[i] for i in good], name=name, max_workers=max_workers,
                                        claim_token=_token(task), retry_transient=retry_transient)
        except LMError as exc:
            if exc.retryable:  # what finished is stored: the retry extracts only the rest
                raise TransientLMError(str(exc), status=exc.status) from exc
            raise
        for i, doc in zip(good, docs, strict=True):
            out[i] = _from_document(doc, name, raise_failed=False)
        return out
    results = prompter.predict_batch([preps[i].doc for i in good], max_workers=max_workers, with_confidence=True,
                                     on_error="return")
    for i, res in zip(good, results, strict=True):
        if isinstance(res, BaseException):
            out[i] = _failure(res)
        else:
            out[i] = _from_result(res, name, fingerprint, document_key(fingerprint, preps[i].digest))
    return out


def _batch_item(raw: Any) -> dict[str, Any]:
    if isinstance(raw, Mapping) and raw and set(raw) <= {*_TASK_INPUTS, "image_bytes", "pdf_bytes"}:
        return dict(raw)
    return input_kwargs(raw)


def _token(task: Any) -> str | None:
    task_id = getattr(task.request, "id", None)
    return str(task_id) if task_id else None


def _decode_item(item: Mapping[str, Any]) -> dict[str, Any]:
    unknown = set(item) - set(_TASK_INPUTS) - {"image_bytes", "pdf_bytes"}
    if unknown:
        raise ConfigurationError(f"unknown input argument(s) {sorted(unknown)}; expected {list(_TASK_INPUTS)}")
    out = dict(item)
    if "pdf_base64" in out:
        out["pdf_bytes"] = decode_base64(str(out.pop("pdf_base64")), "pdf_base64")[0]
    if not any(out.get(k) is not None for k in ("text", "image_path", "image_base64", "pdf_path", "pdf_bytes")):
        raise ConfigurationError("nothing to extract from: pass text=, pdf_path=, pdf_base64=, image_path= or "
                                 "image_base64=")
    return out


def _file_input(path: str) -> dict[str, Any]:
    """The input keywords for a file, told by its content: PDF, image, else UTF-8 text."""
    p = Path(path)
    try:
        head = p.open("rb").read(SNIFF_BYTES)
    except OSError as exc:
        raise ConfigurationError(f"cannot read {path!r}: {exc.strerror or exc}") from None
    if head.startswith(b"%PDF-"):
        return {"pdf_path": str(p)}
    if sniff_image_mime(head) is not None:
        return {"image_path": str(p)}
    try:
        return {"text": p.read_text(encoding="utf-8")}
    except UnicodeDecodeError:
        raise ConfigurationError(f"{path!r} is neither a PDF, an image nor UTF-8 text") from None


def _usage(usage: Any) -> dict[str, int]:
    return {k: int(getattr(usage, k, 0) or 0) for k in ("calls", "prompt_tokens", "completion_tokens", "cache_hits")}


def _from_result(result: Any, name: str, fingerprint: str, key: str) -> dict[str, Any]:
    from pydantic_core import to_jsonable_python

    return {
        "data": result.data.model_dump(mode="json", by_alias=True),
        "confidence": float(result.confidence),
        "field_confidences": {k: float(v) for k, v in result.field_confidences.items()},
        "spans": to_jsonable_python(result.spans),
        "ungrounded": list(result.ungrounded),
        "usage": _usage(result.usage),
        "error": None,
        "prompter": name,
        "version": fingerprint[:12],
        "document_id": key,
    }


def _from_document(doc: StoredDocument, name: str, *, raise_failed: bool = True) -> dict[str, Any]:
    from ._store_documents import error_from_document

    if doc.status == "failed":
        err = error_from_document(doc)
        if raise_failed:
            raise err
        return {**_failure(err), "document_id": doc.id, "status": doc.status}
    return {
        "data": doc.data,
        "confidence": doc.confidence,
        "field_confidences": doc.field_confidences,
        "spans": doc.spans,
        "ungrounded": doc.ungrounded,
        "usage": doc.usage,
        "error": None,
        "prompter": name,
        "version": doc.prompter_version,
        "document_id": doc.id,
        "status": doc.status,
    }


def _failure(exc: BaseException) -> dict[str, Any]:
    usage = getattr(exc, "usage", None)
    return {
        "data": None,
        "confidence": None,
        "usage": _usage(usage) if usage is not None else None,
        "error": {"type": type(exc).__name__, "message": str(exc), "retryable": bool(getattr(exc, "retryable", False))},
    }


# ------------------------------------------------------------------------------------------ signals


def _connect_signals(registry: WorkerPrompters) -> None:
    def after_setup(sender: Any = None, instance: Any = None, **_: Any) -> None:
        prefork = _is_prefork(instance)
        processes = int(getattr(instance, "concurrency", 1) or 1) if prefork else 1
        if os.environ.get(THREADS_ENV):
            log.info("local model threads per worker process: %s (from %s)", os.environ[THREADS_ENV], THREADS_ENV)
        else:
            threads = threads_per_process(processes)
            os.environ[THREADS_ENV] = str(threads)  # inherited by the pool's processes
            log.info("local model threads per worker process: %d (%d cores / %d process%s; %s)", threads,
                     threads_per_process(1), processes, "es" if processes > 1 else "", THREADS_ENV)
        if not prefork:  # the tasks run in this process: load now, so errors show at start
            registry.load_all()

    def process_init(**_: Any) -> None:  # a prefork child, right after the fork
        registry.load_all()

    def process_shutdown(**_: Any) -> None:
        registry.close()

    signals.celeryd_after_setup.connect(after_setup, weak=False)
    signals.worker_process_init.connect(process_init, weak=False)
    signals.worker_process_shutdown.connect(process_shutdown, weak=False)


def _is_prefork(worker: Any) -> bool:
    pool = getattr(worker, "pool_cls", None)
    if isinstance(pool, str):
        return pool in ("prefork", "processes")
    return bool(pool is not None and "prefork" in getattr(pool, "__module__", ""))
