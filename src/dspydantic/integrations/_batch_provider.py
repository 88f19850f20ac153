"""The OpenAI Files and Batches APIs, through the Prompter's own HTTP transport (:mod:`dspydantic.lm.transport`).

Only what a batch job needs: upload a JSONL file (purpose ``batch``, a multipart form encoded by aiohttp),
create a batch on ``/v1/chat/completions`` with a 24 h window, retrieve and cancel it, and read a file's
lines. The calls share the backend's transport, so its endpoint, key, proxy, TLS settings, deadline and
connection pool, and the Prompter's retry policy (``lm_retries``, backoff, ``Retry-After``); every error is
an :class:`LMError` redacted with the transport's secrets.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, Literal
from urllib.parse import quote

import orjson

from ..errors import LMError, decode_body
from ..lm.openai_compat import retryable_status
from ..lm.transport import FormField, HTTPReply, Transport

ENDPOINT: Literal["/v1/chat/completions"] = "/v1/chat/completions"
COMPLETION_WINDOW: Literal["24h"] = "24h"
#: states after which a batch changes no more
TERMINAL = frozenset({"completed", "failed", "expired", "cancelled"})
#: an upload of up to 190 MB gets at least this long, whatever the Prompter's per-call ``timeout``
UPLOAD_TIMEOUT = 600.0

Retry = Callable[[Callable[[], HTTPReply]], HTTPReply]


class BatchProvider:
    """A client of one OpenAI-compatible server's Files and Batches APIs over ``transport``; ``retry`` runs
    each call under the Prompter's retry policy (:meth:`dspydantic.lm.layers.RetryingBackend.retry`)."""

    def __init__(self, transport: Transport, retry: Retry) -> None:
        self.transport = transport
        self._retry = retry
        self.base_url = transport.base_url

    def redact(self, text: str) -> str:
        """``text`` without the endpoint's secrets (for messages built from a provider's answers)."""
        return self.transport.redact(text)

    def _call(
        self, what: str, method: str, path: str, *, body: Any = None, form: tuple[FormField, ...] | None = None,
        headers: dict[str, str] | None = None, timeout: float | None = None, api_missing_hint: bool = False,
    ) -> HTTPReply:
        data = orjson.dumps(body) if body is not None else None

        def once() -> HTTPReply:
            try:
                reply = self.transport.request(method, path, data, form=form, headers=headers, timeout=timeout)
            except LMError as exc:
                raise self.transport.error(
                    f"{what} failed: {exc}", status=exc.status, retryable=exc.retryable, headers=exc.headers
                ) from None
            if reply.status >= 400:
                raise self._status_error(what, reply, api_missing_hint)
            return reply

        return self._retry(once)

    def _status_error(self, what: str, reply: HTTPReply, api_missing_hint: bool) -> LMError:
        message = decode_body(reply.body, limit=500)
        try:
            err = orjson.loads(reply.body)
            inner = err.get("error") if isinstance(err, dict) else None
            if isinstance(inner, dict) and inner.get("message"):
                message = str(inner["message"])
            elif isinstance(inner, str):
                message = inner
        except orjson.JSONDecodeError:
            pass
        hint = ""
        if api_missing_hint and reply.status in (404, 405):
            hint = " (this server has no OpenAI Files/Batches API: use prompter.predict_batch(...) instead)"
        return self.transport.error(
            f"{what} at {self.base_url} failed: HTTP {reply.status}: {message}{hint}",
            status=reply.status,
            retryable=retryable_status(reply.status),
            headers=reply.headers,
        )

    def _json(self, what: str, reply: HTTPReply) -> dict[str, Any]:
        try:
            obj = orjson.loads(reply.body)
        except orjson.JSONDecodeError:
            obj = None
        if not isinstance(obj, dict):
            snippet = decode_body(reply.body, limit=200)
            raise self.transport.error(f"{what} at {self.base_url}: the answer is not a JSON object: {snippet!r}",
                                       status=reply.status)
        return obj

    # -- the API ---------------------------------------------------------------------------------------
    def upload(self, data: bytes, filename: str) -> str:
        """Upload a JSONL batch input file; returns its file id."""
        what = "uploading the batch input file"
        form = (FormField("purpose", "batch"), FormField("file", data, filename=filename,
                                                         content_type="application/jsonl"))
        timeout = max(self.transport.timeout, UPLOAD_TIMEOUT)
        created = self._json(what, self._call(what, "POST", "/files", form=form, timeout=timeout,
                                              api_missing_hint=True))
        if not isinstance(created.get("id"), str):
            raise self.transport.error(f"{what} at {self.base_url}: the answer names no file id")
        return str(created["id"])

    def create(self, input_file_id: str, metadata: dict[str, str]) -> dict[str, Any]:
        what = "creating the batch"
        body = {"input_file_id": input_file_id, "endpoint": ENDPOINT, "completion_window": COMPLETION_WINDOW,
                "metadata": metadata}
        batch = self._json(what, self._call(what, "POST", "/batches", body=body, api_missing_hint=True))
        if not isinstance(batch.get("id"), str):
            raise self.transport.error(f"{what} at {self.base_url}: the answer names no batch id")
        return batch

    def retrieve(self, batch_id: str) -> dict[str, Any]:
        what = f"reading batch {batch_id}"
        return self._json(what, self._call(what, "GET", f"/batches/{_segment(batch_id)}"))

    def cancel(self, batch_id: str) -> dict[str, Any]:
        what = f"cancelling batch {batch_id}"
        return self._json(what, self._call(what, "POST", f"/batches/{_segment(batch_id)}/cancel"))

    def lines(self, file_id: str) -> Iterator[dict[str, Any]]:
        """The JSON objects of a JSONL file (a batch's input, output or error file)."""
        raw = self._call(f"downloading file {file_id}", "GET", f"/files/{_segment(file_id)}/content",
                         headers={"Accept": "application/binary"}).body
        for number, line in enumerate(raw.splitlines(), 1):
            if not line.strip():
                continue
            try:
                obj = orjson.loads(line)
            except orjson.JSONDecodeError:
                raise LMError(f"line {number} of file {file_id} at {self.base_url} is not JSON") from None
            if isinstance(obj, dict):
                yield obj


def _segment(identifier: str) -> str:
    """A provider id as one URL path segment (ids come from job records and answers: never a path)."""
    return quote(identifier, safe="")
