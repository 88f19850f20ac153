"""Batch input files: the JSONL request lines, within the provider's per-file limits.

Requests of one prompter share everything but the document: the system prompt, demos, schema and settings.
That shared part is JSON-encoded once; each line then encodes only its ``custom_id`` and its document, and
the bytes are those ``json.dumps`` writes for the whole line (a request that differs elsewhere, e.g. a
templated system prompt, is encoded whole).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

from ._batch_bridge import Rendered
from ._batch_provider import ENDPOINT

#: the provider's limits on one batch input file
MAX_REQUESTS_PER_BATCH = 50_000
MAX_BYTES_PER_FILE = 190 * 2**20
_SENTINEL = "\x00dspydantic-document\x00"


_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))  # json.dumps(obj, same options)
_dumps = _ENCODER.encode


class LineEncoder:
    """Encodes request lines, reusing the encoding of the part the previous request shared."""

    def __init__(self) -> None:
        self._shape: dict[str, Any] | None = None
        self._head = b""
        self._tail = b""

    def _shared(self, body: dict[str, Any]) -> bool:
        """Whether ``body`` differs from the remembered shape only in its last (user) message's content."""
        shape = self._shape
        if shape is None or list(body) != list(shape):  # same keys in the same order: same bytes
            return False
        messages, known = body["messages"], shape["messages"]
        if len(messages) != len(known) or messages[-1].keys() != {"role", "content"}:
            return False
        if messages[-1]["role"] != "user" or messages[:-1] != known[:-1]:
            return False
        return all(body[k] == shape[k] for k in body if k != "messages")

    def _remember(self, body: dict[str, Any]) -> None:
        self._shape = None
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages or not isinstance(messages[-1], dict):
            return
        if messages[-1].keys() != {"role", "content"} or messages[-1]["role"] != "user":
            return
        template = {**body, "messages": [*messages[:-1], {"role": "user", "content": _SENTINEL}]}
        text = _dumps({"method": "POST", "url": ENDPOINT, "body": template})
        marker = _dumps(_SENTINEL)
        if text.count(marker) != 1:
            return
        head, tail = text.split(marker)
        self._head, self._tail = (head[1:]).encode("utf-8"), tail.encode("utf-8")
        self._shape = body

    def encode(self, line: Rendered) -> bytes:
        """One JSONL line (with its newline): ``{"custom_id", "method", "url", "body"}``."""
        body = line.body
        if not self._shared(body):
            self._remember(body)
            if self._shape is None:
                return _dumps(
                    {"custom_id": line.custom_id, "method": "POST", "url": ENDPOINT, "body": body}
                ).encode("utf-8") + b"\n"
        content = body["messages"][-1]["content"]
        return b"".join(
            (
                b'{"custom_id":',
                _dumps(line.custom_id).encode("utf-8"),
                b",",
                self._head,
                _dumps(content).encode("utf-8"),
                self._tail,
                b"\n",
            )
        )


def files(
    rendered: list[Rendered], new: list[int], max_requests: int
) -> Iterator[tuple[list[int], bytes, float, float]]:
    """The input files for the lines ``new`` (indexes into ``rendered``): (line indexes, JSONL bytes, seconds
    and CPU seconds spent encoding), each within ``max_requests`` lines and :data:`MAX_BYTES_PER_FILE`."""
    encoder = LineEncoder()
    started, cpu = time.perf_counter(), time.process_time()
    chunk: list[int] = []
    parts: list[bytes] = []
    size = 0
    for j in new:
        data = encoder.encode(rendered[j])
        if chunk and (len(chunk) >= max_requests or size + len(data) > MAX_BYTES_PER_FILE):
            yield chunk, b"".join(parts), time.perf_counter() - started, time.process_time() - cpu
            started, cpu = time.perf_counter(), time.process_time()
            chunk, parts, size = [], [], 0
        chunk.append(j)
        parts.append(data)
        size += len(data)
    if chunk:
        yield chunk, b"".join(parts), time.perf_counter() - started, time.process_time() - cpu
