"""The OpenAI Files and Batches APIs, through the official ``openai`` client (imported on first use).

Only what a batch job needs: upload a JSONL file (purpose ``batch``), create a batch on
``/v1/chat/completions`` with a 24 h window, retrieve and cancel it, and read a file's lines. Errors become
:class:`LMError` with the API key redacted.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any, Literal

from ..errors import LMError, MissingExtraError, redact

ENDPOINT: Literal["/v1/chat/completions"] = "/v1/chat/completions"
COMPLETION_WINDOW: Literal["24h"] = "24h"
#: states after which a batch changes no more
TERMINAL = frozenset({"completed", "failed", "expired", "cancelled"})


class BatchProvider:
    """A client of one OpenAI-compatible server's Files and Batches APIs."""

    def __init__(self, *, base_url: str, api_key: str | None, timeout: float, max_retries: int) -> None:
        try:
            import openai
        except ImportError:  # pragma: no cover - openai comes with litellm, a dependency of dspy
            raise MissingExtraError("batch", "openai") from None
        self._openai = openai
        self._secret = api_key
        self.base_url = base_url
        # a server without authentication still gets a placeholder key: the client insists on one
        self._client = openai.OpenAI(
            api_key=api_key or "no-key", base_url=base_url, timeout=timeout, max_retries=max_retries
        )
        self._upload_timeout = max(timeout, 600.0)

    def close(self) -> None:
        self._client.close()

    def _error(self, what: str, exc: Exception, *, api_missing_hint: bool = False) -> LMError:
        openai = self._openai
        status = getattr(exc, "status_code", None)
        message = str(exc)
        if isinstance(exc, openai.APIStatusError):
            body = exc.body if isinstance(exc.body, dict) else {}
            inner = body.get("error") if isinstance(body.get("error"), dict) else body
            message = str(inner.get("message") or message) if isinstance(inner, dict) else message
        hint = ""
        if api_missing_hint and status in (404, 405):
            hint = " (this server has no OpenAI Files/Batches API: use prompter.predict_batch(...) instead)"
        retryable = isinstance(exc, openai.APIConnectionError) or status in (408, 409, 429, 500, 502, 503, 504)
        return LMError(
            redact(f"{what} at {self.base_url} failed: {message}{hint}", self._secret),
            status=status,
            retryable=retryable,
        )

    def upload(self, data: bytes, filename: str) -> str:
        """Upload a JSONL batch input file; returns its file id."""
        try:
            created = self._client.files.create(
                file=(filename, data, "application/jsonl"), purpose="batch", timeout=self._upload_timeout
            )
        except self._openai.OpenAIError as exc:
            raise self._error("uploading the batch input file", exc, api_missing_hint=True) from None
        return str(created.id)

    def create(self, input_file_id: str, metadata: dict[str, str]) -> dict[str, Any]:
        try:
            batch = self._client.batches.create(
                input_file_id=input_file_id,
                endpoint=ENDPOINT,
                completion_window=COMPLETION_WINDOW,
                metadata=metadata,
            )
        except self._openai.OpenAIError as exc:
            raise self._error("creating the batch", exc, api_missing_hint=True) from None
        return batch.model_dump(mode="json")

    def retrieve(self, batch_id: str) -> dict[str, Any]:
        try:
            return self._client.batches.retrieve(batch_id).model_dump(mode="json")
        except self._openai.OpenAIError as exc:
            raise self._error(f"reading batch {batch_id}", exc) from None

    def cancel(self, batch_id: str) -> dict[str, Any]:
        try:
            return self._client.batches.cancel(batch_id).model_dump(mode="json")
        except self._openai.OpenAIError as exc:
            raise self._error(f"cancelling batch {batch_id}", exc) from None

    def lines(self, file_id: str) -> Iterator[dict[str, Any]]:
        """The JSON objects of a JSONL file (a batch's input, output or error file)."""
        try:
            raw = self._client.files.content(file_id).content
        except self._openai.OpenAIError as exc:
            raise self._error(f"downloading file {file_id}", exc) from None
        for number, line in enumerate(raw.splitlines(), 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except ValueError:
                raise LMError(f"line {number} of file {file_id} at {self.base_url} is not JSON") from None
            if isinstance(obj, dict):
                yield obj
