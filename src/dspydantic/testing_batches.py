"""The OpenAI Files and Batches endpoints of :class:`dspydantic.testing.FakeLLMServer`.

Every ``FakeLLMServer`` serves them (as ``srv.batches``, a :class:`FakeBatchAPI`):

* ``POST /v1/files`` (multipart upload, purpose ``batch``), ``GET /v1/files/{id}``,
  ``GET /v1/files/{id}/content``;
* ``POST /v1/batches`` (endpoint ``/v1/chat/completions``, window ``24h``), ``GET /v1/batches/{id}``,
  ``GET /v1/batches``, ``POST /v1/batches/{id}/cancel``.

A batch takes ``srv.batches.duration`` seconds (read when it is created; 0: done at the first look),
reporting progress in ``request_counts`` meanwhile. With ``srv.batches.expire_after`` seconds set below the
duration, the window closes part-way: the lines reached by then are answered and the rest get
``batch_expired`` errors. Each line is answered like a chat completion, by the same queue and responder
(``add_response``, ``set_responder``, ``respond_from_schema``...); a :class:`~dspydantic.testing.Fault` (or
a ``Reply`` with an error status) lands in the error file as that line's failure. Input files are checked
as the real service does (JSON lines, unique ``custom_id``, ``POST`` to the batch's endpoint, one model);
a bad file makes the batch ``failed`` with ``errors``. ``srv.batches.fail_next("POST", "/files", 503)``
makes the next matching call of these APIs fail with that status (a retry then finds the API working).

Example::

    with FakeLLMServer() as srv:
        srv.respond_from_schema()
        srv.batches.duration = 2.0
        job = prompter.submit_batch(texts)       # prompter on api_base=srv.base_url
        assert srv.batches.uploaded_custom_ids() == [...]
"""

from __future__ import annotations

import email.parser
import email.policy
import itertools
import json
import math
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .testing import FakeLLMServer

__all__ = ["FakeBatchAPI", "FakeFile"]

_TERMINAL = frozenset({"completed", "failed", "expired", "cancelled"})
_ENDPOINTS = frozenset({"/v1/chat/completions"})


@dataclass
class FakeFile:
    """A file the fake holds: an uploaded batch input (``purpose="batch"``) or an output/error file."""

    id: str
    filename: str
    purpose: str
    data: bytes
    created_at: int

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "file",
            "bytes": len(self.data),
            "created_at": self.created_at,
            "filename": self.filename,
            "purpose": self.purpose,
            "status": "processed",
        }

    def lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.data.splitlines() if line.strip()]


@dataclass
class _Batch:
    id: str
    input_file_id: str
    endpoint: str
    metadata: dict[str, Any] | None
    created_at: int
    started: float
    duration: float
    expire_after: float | None
    lines: list[dict[str, Any]]
    model: str | None
    errors: list[dict[str, Any]]
    status: str = "validating"
    output_file_id: str | None = None
    error_file_id: str | None = None
    completed: int = 0
    failed: int = 0
    times: dict[str, int] = field(default_factory=dict)


class FakeBatchAPI:
    """State and handlers of the fake Files and Batches APIs (see the module docstring)."""

    def __init__(self, owner: FakeLLMServer) -> None:
        self.owner = owner
        #: seconds a batch created from now on takes to complete
        self.duration = 0.0
        #: seconds after which a batch created from now on expires (None: never)
        self.expire_after: float | None = None
        #: seconds the fake spent parsing multipart uploads (benchmarks subtract it from upload times)
        self.upload_parse_s = 0.0
        self._lock = threading.Lock()
        self._files: dict[str, FakeFile] = {}
        self._batches: dict[str, _Batch] = {}
        self._ids = itertools.count(1)
        self._faults: list[tuple[str, str, int]] = []

    def fail_next(self, method: str, path: str, status: int = 503, times: int = 1) -> None:
        """Fail the next ``times`` calls of ``method`` on a path starting with ``path`` (without ``/v1``,
        e.g. ``"/files"`` or ``"/batches/"``) with an HTTP ``status`` error."""
        with self._lock:
            self._faults.extend([(method.upper(), path, status)] * times)

    # -- observation ---------------------------------------------------------------------------------
    @property
    def uploads(self) -> list[FakeFile]:
        """The uploaded batch input files, in upload order."""
        with self._lock:
            return [f for f in self._files.values() if f.purpose == "batch"]

    def uploaded_custom_ids(self) -> list[str]:
        """The ``custom_id`` of every request line ever uploaded, in upload order."""
        return [str(line.get("custom_id")) for f in self.uploads for line in f.lines()]

    @property
    def batch_ids(self) -> list[str]:
        with self._lock:
            return list(self._batches)

    def batch(self, batch_id: str) -> dict[str, Any]:
        """The batch object as ``GET /v1/batches/{id}`` would return it now."""
        with self._lock:
            batch = self._batches[batch_id]
            self._refresh(batch)
            return self._batch_json(batch)

    def file(self, file_id: str) -> FakeFile:
        with self._lock:
            return self._files[file_id]

    # -- dispatch (called by the HTTP handler) ------------------------------------------------------
    @staticmethod
    def handles(path: str) -> bool:
        rest = path[3:] if path.startswith("/v1/") else path
        return rest in ("/files", "/batches") or rest.startswith(("/files/", "/batches/"))

    def handle(
        self, method: str, path: str, content_type: str, raw: bytes
    ) -> tuple[int, bytes, str, dict[str, Any]]:
        """Answer one request: (status, payload, content type, what the request log records)."""
        rest = path[3:] if path.startswith("/v1/") else path
        parts = [p for p in rest.split("/") if p]
        with self._lock:
            fault = next((f for f in self._faults if f[0] == method and rest.startswith(f[1])), None)
            if fault is not None:
                self._faults.remove(fault)
        if fault is not None:
            return self._error(fault[2], f"Fake fault (status {fault[2]}) on {method} {path}")
        try:
            if parts == ["files"] and method == "POST":
                return self._upload(content_type, raw)
            if parts[:1] == ["files"] and len(parts) == 2 and method == "GET":
                return self._json(200, self._get_file(parts[1]).as_json())
            if parts[:1] == ["files"] and len(parts) == 3 and parts[2] == "content" and method == "GET":
                return 200, self._get_file(parts[1]).data, "application/octet-stream", {}
            if parts == ["batches"] and method == "POST":
                return self._create(raw)
            if parts == ["batches"] and method == "GET":
                with self._lock:
                    for batch in self._batches.values():
                        self._refresh(batch)
                    data = [self._batch_json(b) for b in reversed(self._batches.values())]
                return self._json(200, {"object": "list", "data": data, "has_more": False})
            if parts[:1] == ["batches"] and len(parts) == 2 and method == "GET":
                return self._json(200, self.batch(parts[1]))
            if parts[:1] == ["batches"] and len(parts) == 3 and parts[2] == "cancel" and method == "POST":
                return self._cancel(parts[1])
        except KeyError as exc:
            return self._error(404, f"No such object: {exc.args[0]}")
        return self._error(404, f"Unknown path: {method} {path}")

    # -- endpoints -------------------------------------------------------------------------------------
    def _upload(self, content_type: str, raw: bytes) -> tuple[int, bytes, str, dict[str, Any]]:
        started = time.perf_counter()
        message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
            b"Content-Type: " + content_type.encode("latin-1") + b"\r\n\r\n" + raw
        )
        fields: dict[str, tuple[str | None, bytes]] = {}
        if message.is_multipart():
            for part in message.iter_parts():
                name = part.get_param("name", header="content-disposition")
                payload = part.get_payload(decode=True)
                if isinstance(name, str) and isinstance(payload, bytes):
                    fields[name] = (part.get_filename(), payload)
        with self._lock:
            self.upload_parse_s += time.perf_counter() - started
        if "file" not in fields or "purpose" not in fields:
            return self._error(400, "a multipart/form-data body with 'file' and 'purpose' is required")
        purpose = fields["purpose"][1].decode("utf-8", "replace")
        filename, data = fields["file"]
        record = {"purpose": purpose, "filename": filename, "bytes": len(data)}
        if purpose != "batch":
            return self._error(400, f"the fake accepts purpose 'batch' only, got {purpose!r}", record)
        created = self._add_file(filename or "upload.jsonl", purpose, data)
        return self._json(200, created.as_json(), record)

    def _create(self, raw: bytes) -> tuple[int, bytes, str, dict[str, Any]]:
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        if not isinstance(body, dict):
            return self._error(400, "Request body is not a JSON object")
        endpoint, window = body.get("endpoint"), body.get("completion_window")
        if endpoint not in _ENDPOINTS:
            return self._error(400, f"endpoint must be one of {sorted(_ENDPOINTS)}, got {endpoint!r}", body)
        if window != "24h":
            return self._error(400, f"completion_window must be '24h', got {window!r}", body)
        with self._lock:
            source = self._files.get(str(body.get("input_file_id")))
        if source is None or source.purpose != "batch":
            return self._error(400, f"no batch input file {body.get('input_file_id')!r}", body)
        lines, model, errors = _check_input(source.data, str(endpoint))
        now = time.time()
        metadata = body.get("metadata")
        batch = _Batch(
            id=f"batch_fake{next(self._ids):06d}",
            input_file_id=source.id,
            endpoint=str(endpoint),
            metadata=metadata if isinstance(metadata, dict) else None,
            created_at=int(now),
            started=time.monotonic(),
            duration=float(self.duration),
            expire_after=self.expire_after,
            lines=lines,
            model=model,
            errors=errors,
        )
        with self._lock:
            self._batches[batch.id] = batch
            created = self._batch_json(batch)
        return self._json(200, created, body)

    def _cancel(self, batch_id: str) -> tuple[int, bytes, str, dict[str, Any]]:
        with self._lock:
            batch = self._batches[batch_id]
            self._refresh(batch)
            if batch.status not in _TERMINAL:
                self._finish(batch, self._progress(batch), "cancelled")
            return self._json(200, self._batch_json(batch))

    # -- the simulated job -------------------------------------------------------------------------------
    def _progress(self, batch: _Batch) -> int:
        if batch.duration <= 0:
            return len(batch.lines)
        elapsed = time.monotonic() - batch.started
        return min(len(batch.lines), math.floor(len(batch.lines) * elapsed / batch.duration))

    def _refresh(self, batch: _Batch) -> None:
        """Advance a batch to where its clock says it is (called under the lock)."""
        if batch.status in _TERMINAL:
            return
        if batch.errors:
            batch.status = "failed"
            batch.times["failed_at"] = int(time.time())
            return
        if batch.status == "validating":
            batch.status = "in_progress"
            batch.times["in_progress_at"] = int(time.time())
        elapsed = time.monotonic() - batch.started
        expires = batch.expire_after is not None and (batch.duration <= 0 or batch.expire_after < batch.duration)
        if expires and batch.expire_after is not None and elapsed >= batch.expire_after:
            reached = 0 if batch.duration <= 0 else math.floor(len(batch.lines) * batch.expire_after / batch.duration)
            self._finish(batch, reached, "expired")
        elif elapsed >= batch.duration:
            self._finish(batch, len(batch.lines), "completed")
        else:
            batch.completed = self._progress(batch)

    def _finish(self, batch: _Batch, reached: int, state: str) -> None:
        outputs: list[bytes] = []
        errors: list[bytes] = []
        for number, line in enumerate(batch.lines):
            custom_id = line["custom_id"]
            if number < reached:
                status, body = self._answer(line["body"])
                entry = {
                    "id": f"batch_req_{batch.id}_{number}",
                    "custom_id": custom_id,
                    "response": {"status_code": status, "request_id": f"req_{batch.id}_{number}", "body": body},
                    "error": None,
                }
                (outputs if status == 200 else errors).append(json.dumps(entry).encode("utf-8"))
            elif state == "expired":
                entry = {
                    "id": f"batch_req_{batch.id}_{number}",
                    "custom_id": custom_id,
                    "response": None,
                    "error": {
                        "code": "batch_expired",
                        "message": "This request could not be executed before the completion window expired.",
                    },
                }
                errors.append(json.dumps(entry).encode("utf-8"))
        if outputs:
            data = b"".join(x + b"\n" for x in outputs)
            batch.output_file_id = self._add_file_locked(f"{batch.id}_output.jsonl", "batch_output", data).id
        if errors:
            data = b"".join(x + b"\n" for x in errors)
            batch.error_file_id = self._add_file_locked(f"{batch.id}_error.jsonl", "batch_output", data).id
        batch.completed, batch.failed = len(outputs), len(errors)
        batch.status = state
        now = int(time.time())
        batch.times["finalizing_at"] = now
        batch.times[f"{state}_at"] = now

    def _answer(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        """One line's answer from the server's queue/responder, as a chat completion would get it."""
        from .testing._script import Fault, _error_body

        spec = self.owner._next_spec(body)
        if isinstance(spec, Fault):
            status = 500 if spec.drop_connection else spec.status
            if isinstance(spec.body, dict):
                return status, spec.body
            return status, _error_body(status, spec.body or f"Fake server error (status {status})")
        if spec.status >= 400:
            content = spec.content if isinstance(spec.content, str) else json.dumps(spec.content)
            return spec.status, _error_body(spec.status, content)
        return 200, self.owner._completion(body, spec)

    # -- helpers ------------------------------------------------------------------------------------------
    def _batch_json(self, batch: _Batch) -> dict[str, Any]:
        errors = (
            {"object": "list", "data": batch.errors[:20]} if batch.status == "failed" and batch.errors else None
        )
        completed = batch.completed if batch.status != "failed" else 0
        return {
            "id": batch.id,
            "object": "batch",
            "endpoint": batch.endpoint,
            "model": batch.model,
            "errors": errors,
            "input_file_id": batch.input_file_id,
            "completion_window": "24h",
            "status": batch.status,
            "output_file_id": batch.output_file_id,
            "error_file_id": batch.error_file_id,
            "created_at": batch.created_at,
            "expires_at": batch.created_at + 86400,
            "in_progress_at": batch.times.get("in_progress_at"),
            "finalizing_at": batch.times.get("finalizing_at"),
            "completed_at": batch.times.get("completed_at"),
            "failed_at": batch.times.get("failed_at"),
            "expired_at": batch.times.get("expired_at"),
            "cancelling_at": batch.times.get("cancelled_at"),
            "cancelled_at": batch.times.get("cancelled_at"),
            "request_counts": {"total": len(batch.lines), "completed": completed, "failed": batch.failed},
            "metadata": batch.metadata,
        }

    def _get_file(self, file_id: str) -> FakeFile:
        with self._lock:
            return self._files[file_id]

    def _add_file(self, filename: str, purpose: str, data: bytes) -> FakeFile:
        with self._lock:
            return self._add_file_locked(filename, purpose, data)

    def _add_file_locked(self, filename: str, purpose: str, data: bytes) -> FakeFile:
        created = FakeFile(f"file-fake{next(self._ids):06d}", filename, purpose, data, int(time.time()))
        self._files[created.id] = created
        return created

    @staticmethod
    def _json(status: int, obj: Any, record: dict[str, Any] | None = None) -> tuple[int, bytes, str, dict[str, Any]]:
        return status, json.dumps(obj).encode("utf-8"), "application/json", record or {}

    @staticmethod
    def _error(
        status: int, message: str, record: dict[str, Any] | None = None
    ) -> tuple[int, bytes, str, dict[str, Any]]:
        from .testing._script import _error_body

        return FakeBatchAPI._json(status, _error_body(status, message), record)


def _check_input(data: bytes, endpoint: str) -> tuple[list[dict[str, Any]], str | None, list[dict[str, Any]]]:
    """The request lines of a batch input file, its model, and the validation errors the service reports."""
    lines: list[dict[str, Any]] = []
    errors: list[dict[str, Any]] = []
    seen: set[str] = set()
    models: set[str] = set()
    for number, raw in enumerate(data.splitlines(), 1):
        if not raw.strip():
            continue

        def fail(message: str, line: int = number) -> None:
            errors.append({"code": "invalid_request", "message": message, "param": None, "line": line})

        try:
            obj = json.loads(raw)
        except ValueError:
            fail("line is not valid JSON")
            continue
        if not isinstance(obj, dict) or not isinstance(obj.get("custom_id"), str):
            fail("each line needs a string custom_id")
            continue
        if obj["custom_id"] in seen:
            fail(f"duplicate custom_id {obj['custom_id']!r}")
            continue
        seen.add(obj["custom_id"])
        if obj.get("method") != "POST" or obj.get("url") != endpoint:
            fail(f"method must be POST and url must be the batch's endpoint {endpoint}")
            continue
        body = obj.get("body")
        if not isinstance(body, dict) or not isinstance(body.get("model"), str):
            fail("body must be an object with a model")
            continue
        models.add(body["model"])
        lines.append(obj)
    if len(models) > 1:
        errors.append({"code": "invalid_request", "message": "a batch must use one model", "param": None, "line": None})
    if not lines and not errors:
        errors.append({"code": "empty_file", "message": "the input file has no requests", "param": None, "line": None})
    return lines, (next(iter(models)) if len(models) == 1 else None), errors
