"""What the fakes answer and what they record: :class:`Reply`, :class:`Fault`, the answer script (a FIFO queue, then
a responder) and the request log, shared by :class:`~dspydantic.testing.FakeLLMServer` (over HTTP) and
:class:`~dspydantic.testing.FakeBackend` (in-process), so the two answer and record alike."""

from __future__ import annotations

import json
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any, TypeAlias

_DEFAULT_LOGPROB = -0.05
_SECRET_HEADERS = frozenset({"authorization", "api-key", "x-api-key", "proxy-authorization"})


@dataclass
class Reply:
    """Full control over one successful (or, with a non-2xx ``status``, failed) answer.

    ``content`` may be a ``str`` or any JSON-serialisable ``dict``/``list`` (sent ``json.dumps``'d).
    A ``status`` of 400 or more turns the reply into an OpenAI-style error whose message is the content.
    ``logprobs`` gives one value per whitespace-separated token of the content (used only when the
    request asks for ``"logprobs": true``).  ``prompt_tokens``/``completion_tokens`` override the
    approximated usage numbers.
    """

    content: str | dict[str, Any] | list[Any]
    status: int = 200
    delay: float | None = None
    logprobs: list[float] | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    finish_reason: str = "stop"


@dataclass
class Fault:
    """An error answer: ``status`` with an OpenAI-style JSON error body, or a dropped connection.

    ``body`` may be ``None`` (a generic message), a ``str`` (used as the error message) or a
    ``dict`` (sent verbatim).  With ``drop_connection=True`` the socket is closed without any answer.
    ``headers`` are added to the response (e.g. ``{"Retry-After": "0"}``).
    """

    status: int = 500
    body: str | dict[str, Any] | None = None
    delay: float | None = None
    drop_connection: bool = False
    headers: dict[str, str] | None = None


ResponseSpec: TypeAlias = str | dict[str, Any] | list[Any] | Fault | Reply
"""Anything that can be queued or returned by a responder."""
Responder: TypeAlias = Callable[[dict[str, Any]], ResponseSpec]
"""``fn(request_body) -> ResponseSpec``, called for each request when the queue is empty."""


class _Headers(dict[str, str]):
    """A ``dict`` with lower-cased keys and case-insensitive lookups."""

    def __init__(self, items: Iterable[tuple[str, str]] = ()) -> None:
        super().__init__()
        for key, value in items:
            super().__setitem__(key.lower(), value)

    def __setitem__(self, key: str, value: str) -> None:
        super().__setitem__(key.lower(), value)

    def __getitem__(self, key: str) -> str:
        return super().__getitem__(key.lower())

    def __contains__(self, key: object) -> bool:
        return super().__contains__(key.lower() if isinstance(key, str) else key)

    def get(self, key: str, default: Any = None) -> Any:
        return super().get(key.lower(), default)

    def __repr__(self) -> str:
        shown = {k: ("<redacted>" if k in _SECRET_HEADERS else v) for k, v in self.items()}
        return repr(shown)


def message_text(content: Any) -> str:
    """Text of one message ``content``: a string, or the joined text of a list of content parts."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts: list[str] = []
        for part in content:
            if isinstance(part, str):
                parts.append(part)
            elif isinstance(part, Mapping) and isinstance(part.get("text"), str):
                parts.append(part["text"])
        return "\n".join(parts)
    return str(content)


def last_user_text(body: Mapping[str, Any]) -> str:
    """Text of the last ``role == "user"`` message of a chat-completions request body ("" if none)."""
    messages = body.get("messages")
    if not isinstance(messages, list):
        return ""
    for message in reversed(messages):
        if isinstance(message, Mapping) and message.get("role") == "user":
            return message_text(message.get("content"))
    return ""


def _all_messages_text(body: Mapping[str, Any]) -> str:
    messages = body.get("messages")
    if not isinstance(messages, list):
        return ""
    return "\n".join(message_text(m.get("content")) for m in messages if isinstance(m, Mapping))


def _approx_tokens(text: str) -> int:
    return math.ceil(len(text) / 4)


@dataclass
class RecordedRequest:
    """One request the server received.  ``headers`` has lower-cased, case-insensitive keys."""

    path: str
    body: dict[str, Any]
    headers: dict[str, str]
    received_at: float
    method: str = "POST"

    @property
    def last_user_text(self) -> str:
        """Text of the last user message of the request (content parts are joined)."""
        return last_user_text(self.body)

    @property
    def messages(self) -> list[dict[str, Any]]:
        messages = self.body.get("messages")
        return messages if isinstance(messages, list) else []

    def __repr__(self) -> str:
        # Never show credentials, e.g. in pytest assertion output.
        headers = {k: ("<redacted>" if k.lower() in _SECRET_HEADERS else v) for k, v in self.headers.items()}
        return (
            f"RecordedRequest(method={self.method!r}, path={self.path!r}, body={self.body!r}, "
            f"headers={headers!r}, received_at={self.received_at!r})"
        )


def _default_responder(body: dict[str, Any]) -> str:
    return "{}"


def _error_type(status: int) -> str:
    if status == 400:
        return "invalid_request_error"
    if status == 401:
        return "authentication_error"
    if status == 403:
        return "permission_error"
    if status == 404:
        return "not_found_error"
    if status == 429:
        return "rate_limit_error"
    if status >= 500:
        return "server_error"
    return "api_error"


def _error_body(status: int, message: str) -> dict[str, Any]:
    return {"error": {"message": message, "type": _error_type(status), "param": None, "code": str(status)}}


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    return json.dumps(content)


_CHAT_PATHS = frozenset({"/v1/chat/completions", "/chat/completions"})
_MODELS_PATHS = frozenset({"/v1/models", "/models"})


class Script:
    """The answer script and the request log of a fake LM (the base of both fakes).

    Answers are taken from a FIFO queue filled with :meth:`add_response`; when it is empty the responder set
    with :meth:`set_responder` (or :meth:`respond_by_substring` / :meth:`respond_from_schema`) is called with
    the request body (an OpenAI chat-completions body); without either the answer is ``"{}"``.
    """

    def __init__(self, *, model_name: str = "fake-model") -> None:
        self.model_name = model_name
        self._lock = threading.Lock()
        self._queue: deque[Fault | Reply] = deque()
        self._responder: Responder = _default_responder
        self._requests: list[RecordedRequest] = []
        self._in_flight = 0
        self._max_in_flight = 0
        self._completion_counter = 0

    # ------------------------------------------------------------------ scripting
    def add_response(
        self,
        content: ResponseSpec,
        *,
        status: int = 200,
        delay: float | None = None,
        times: int = 1,
    ) -> None:
        """Queue ``times`` copies of an answer; queued answers are consumed one per request, FIFO.

        ``status``/``delay`` apply to plain contents; for a ``Fault``/``Reply`` they fill in only
        what the object leaves unset (``delay``).
        """
        if times < 1:
            raise ValueError("times must be >= 1")
        spec: Fault | Reply
        if isinstance(content, Fault | Reply):
            spec = content if delay is None or content.delay is not None else _replace_delay(content, delay)
        else:
            spec = Reply(content=content, status=status, delay=delay)
        with self._lock:
            self._queue.extend([spec] * times)

    def set_responder(self, fn: Responder | None) -> None:
        """Answer with ``fn(request_body)`` whenever the queue is empty (``None`` restores ``"{}"``)."""
        with self._lock:
            self._responder = fn if fn is not None else _default_responder

    def respond_from_schema(self, overrides: Mapping[str, Any] | None = None) -> None:
        """Answer every structured request with a valid example of its ``response_format`` schema.

        ``overrides`` sets top-level fields (e.g. ``{"vendor": "Acme"}``); useful for testing an app's
        plumbing (FastAPI routes, workers, pipelines) without caring about the values.
        """
        fixed = dict(overrides or {})

        def responder(body: dict[str, Any]) -> ResponseSpec:
            rf = body.get("response_format") or {}
            schema = (rf.get("json_schema") or {}).get("schema") if isinstance(rf, dict) else None
            if not isinstance(schema, dict):
                return dict(fixed) or "{}"
            value = example_for_schema(schema)
            if isinstance(value, dict):
                value.update(fixed)
            return value

        self.set_responder(responder)

    def respond_by_substring(
        self,
        mapping: Mapping[str, ResponseSpec],
        default: ResponseSpec = "{}",
    ) -> None:
        """Answer with the value of the first key found in the text of the last user message."""
        items = list(mapping.items())

        def responder(body: dict[str, Any]) -> ResponseSpec:
            text = last_user_text(body)
            for key, value in items:
                if key in text:
                    return value
            return default

        self.set_responder(responder)

    @property
    def pending_responses(self) -> int:
        """Number of queued answers not consumed yet."""
        with self._lock:
            return len(self._queue)

    # ------------------------------------------------------------------ observation
    @property
    def requests(self) -> list[RecordedRequest]:
        """A snapshot of every request received (all paths and methods), in arrival order."""
        with self._lock:
            return list(self._requests)

    @property
    def chat_requests(self) -> list[RecordedRequest]:
        """Only the requests made to the chat-completions endpoint."""
        return [r for r in self.requests if r.path in _CHAT_PATHS]

    @property
    def request_count(self) -> int:
        with self._lock:
            return len(self._requests)

    @property
    def max_in_flight(self) -> int:
        """Highest number of requests observed being handled at the same time."""
        with self._lock:
            return self._max_in_flight

    @property
    def in_flight(self) -> int:
        with self._lock:
            return self._in_flight

    def reset(self) -> None:
        """Clear the queue, the request log and the counters (the responder and latency are kept)."""
        with self._lock:
            self._queue.clear()
            self._requests.clear()
            self._max_in_flight = self._in_flight


    # ------------------------------------------------------------------ internals
    def _record(self, request: RecordedRequest) -> None:
        with self._lock:
            self._requests.append(request)

    def _enter(self) -> None:
        with self._lock:
            self._in_flight += 1
            self._max_in_flight = max(self._max_in_flight, self._in_flight)

    def _leave(self) -> None:
        with self._lock:
            self._in_flight -= 1

    def _next_spec(self, body: dict[str, Any]) -> Fault | Reply:
        with self._lock:
            if self._queue:
                return self._queue.popleft()
            responder = self._responder
        try:
            answer = responder(body)
        except Exception as exc:  # a broken responder must not kill the handler thread
            return Fault(status=500, body=f"FakeLLMServer responder raised {type(exc).__name__}: {exc}")
        if isinstance(answer, Fault | Reply):
            return answer
        return Reply(content=answer)

    def _completion(self, body: dict[str, Any], spec: Reply) -> dict[str, Any]:
        content = _content_text(spec.content)
        with self._lock:
            self._completion_counter += 1
            number = self._completion_counter
        prompt_tokens = (
            spec.prompt_tokens if spec.prompt_tokens is not None else _approx_tokens(_all_messages_text(body))
        )
        completion_tokens = (
            spec.completion_tokens if spec.completion_tokens is not None else _approx_tokens(content)
        )
        choice: dict[str, Any] = {
            "index": 0,
            "message": {"role": "assistant", "content": content},
            "finish_reason": spec.finish_reason,
        }
        if body.get("logprobs"):
            choice["logprobs"] = {"content": _logprob_entries(content, spec.logprobs)}
        else:
            choice["logprobs"] = None
        model = body.get("model")
        return {
            "id": f"chatcmpl-fake-{number}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model if isinstance(model, str) else self.model_name,
            "choices": [choice],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }



def _replace_delay(spec: Any, delay: float) -> Any:
    return replace(spec, delay=delay)


def _logprob_entries(content: str, logprobs: list[float] | None) -> list[dict[str, Any]]:
    tokens = content.split()
    values = logprobs if logprobs is not None else [_DEFAULT_LOGPROB] * len(tokens)
    entries: list[dict[str, Any]] = []
    for i, lp in enumerate(values):
        token = tokens[i] if i < len(tokens) else ""
        entries.append({"token": token, "logprob": float(lp), "bytes": None, "top_logprobs": []})
    return entries


_FORMAT_EXAMPLES = {
    "date": "2024-01-31",
    "date-time": "2024-01-31T12:00:00",
    "time": "12:00:00",
    "email": "someone@example.com",
    "uri": "https://example.com",
    "uuid": "00000000-0000-4000-8000-000000000000",
}


def example_for_schema(schema: Mapping[str, Any], root: Mapping[str, Any] | None = None) -> Any:
    """A small value that validates against a (Pydantic-generated) JSON schema: the first enum value,
    ``"example"`` for strings (formats respected), the minimum for numbers, one item for lists."""
    root = root if root is not None else schema
    ref = schema.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/$defs/"):
        return example_for_schema(root.get("$defs", {})[ref.rsplit("/", 1)[-1]], root)
    if "const" in schema:
        return schema["const"]
    if schema.get("enum"):
        return schema["enum"][0]
    for key in ("anyOf", "oneOf", "allOf"):
        variants = [v for v in schema.get(key, []) if v.get("type") != "null"]
        if variants:
            return example_for_schema(variants[0], root)
        if key in schema:
            return None
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), None)
    if kind == "object":
        props = schema.get("properties", {})
        return {name: example_for_schema(sub, root) for name, sub in props.items()}
    if kind == "array":
        items = schema.get("items")
        count = max(1, int(schema.get("minItems", 1)))
        return [example_for_schema(items, root) for _ in range(count)] if isinstance(items, dict) else []
    if kind in ("integer", "number"):
        low = schema.get("minimum", schema.get("exclusiveMinimum", 1))
        value = low + 1 if "exclusiveMinimum" in schema else low
        return int(value) if kind == "integer" else float(value)
    if kind == "boolean":
        return True
    if kind == "string":
        text = _FORMAT_EXAMPLES.get(str(schema.get("format")), "example")
        return text[: schema["maxLength"]] if "maxLength" in schema else text
    return None
