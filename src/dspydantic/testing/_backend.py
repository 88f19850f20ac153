""":class:`FakeBackend`: an in-process fake LM for users' unit tests — no sockets, no threads, no server.

It is an :class:`~dspydantic.lm.LMBackend`: pass it as ``Prompter(model=M, lm=FakeBackend())``. It answers from
the same script as :class:`~dspydantic.testing.FakeLLMServer` (a queue of answers, then a responder) and
records each request as the chat-completions body an OpenAI-compatible endpoint would receive, so responders
and assertions written for the server work unchanged. A :class:`~dspydantic.testing.Fault` raises the
:class:`~dspydantic.LMError` the HTTP backend raises for that answer (retryable for 408/409/425/429/5xx and a
dropped connection), so the retry layer sees the same thing.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson

from ..errors import LMError
from ..lm._base import LMRequest, LMResponse, chat_params, token_logprobs
from ._script import Fault, RecordedRequest, Reply, ResponseSpec, Script, _content_text, _Headers

__all__ = ["FakeBackend"]

#: the path each request is recorded under (so ``chat_requests`` lists them, as the server's do)
_CHAT_PATH = "/v1/chat/completions"


class FakeBackend(Script):
    """A scriptable LM backend that runs in the test's own process (see the module docstring).

    ``answers`` are queued as by :meth:`add_response`. ``latency`` (seconds) is slept before every answer
    unless the answer carries its own ``delay`` (``asyncio.sleep`` for async callers). ``context_window``
    (tokens) makes long documents be split into chunks, as a real model's window does.

    Example::

        fake = FakeBackend({"vendor": "Acme", "total": 12.5})
        p = Prompter(model=Invoice, lm=fake)
        assert p.run("Invoice from Acme, 12.50").vendor == "Acme"
        assert "Acme" in fake.requests[0].last_user_text
    """

    def __init__(
        self,
        *answers: ResponseSpec,
        latency: float = 0.0,
        context_window: int | None = None,
        model_name: str = "fake-model",
    ) -> None:
        super().__init__(model_name=model_name)
        self.latency = latency
        self.context_window = context_window
        self.closed = False
        for answer in answers:
            self.add_response(answer)

    def __repr__(self) -> str:
        return f"FakeBackend(model_name={self.model_name!r}, pending={self.pending_responses})"

    @property
    def cache_id(self) -> str:
        """Identifies this fake for cache keys (each instance its own: two fakes never share cached answers)."""
        return f"fake:{self.model_name}:{id(self):x}"

    # -- the LMBackend protocol --------------------------------------------------------------------
    def complete(self, request: LMRequest) -> LMResponse:
        body, spec = self._receive(request)
        try:
            delay = self._delay(spec)
            if delay > 0:
                time.sleep(delay)
            return self._answer(body, spec)
        finally:
            self._leave()

    async def acomplete(self, request: LMRequest) -> LMResponse:
        body, spec = self._receive(request)
        try:
            delay = self._delay(spec)
            if delay > 0:
                await asyncio.sleep(delay)
            return self._answer(body, spec)
        finally:
            self._leave()

    def close(self) -> None:
        self.closed = True

    # -- internals ---------------------------------------------------------------------------------
    def body(self, request: LMRequest) -> dict[str, Any]:
        """The chat-completions body an OpenAI-compatible endpoint would receive for ``request``."""
        body: dict[str, Any] = {"model": self.model_name}
        body.update(chat_params(request))
        body.update(request.settings.extra_body or {})
        # through JSON, as a server sees it: a copy the caller can't change later, and the same encoding errors
        body["messages"] = orjson.loads(request.messages_json())
        return body

    def _receive(self, request: LMRequest) -> tuple[dict[str, Any], Fault | Reply]:
        body = self.body(request)
        self._record(RecordedRequest(path=_CHAT_PATH, body=body, headers=_Headers(), received_at=time.time()))
        self._enter()
        try:
            return body, self._next_spec(body)
        except BaseException:
            self._leave()
            raise

    def _delay(self, spec: Fault | Reply) -> float:
        return float(spec.delay if spec.delay is not None else self.latency or 0.0)

    def _answer(self, body: dict[str, Any], spec: Fault | Reply) -> LMResponse:
        if isinstance(spec, Fault):
            raise _fault_error(spec, self.model_name)
        if spec.status >= 400:
            raise _status_error(spec.status, _content_text(spec.content), self.model_name, {})
        # the completion the server would send, read as the HTTP backend reads it
        completion = self._completion(body, spec)
        choice = completion["choices"][0]
        logprobs, texts = token_logprobs(choice.get("logprobs"))
        return LMResponse(
            text=choice["message"]["content"],
            prompt_tokens=completion["usage"]["prompt_tokens"],
            completion_tokens=completion["usage"]["completion_tokens"],
            finish_reason=choice["finish_reason"],
            token_logprobs=logprobs,
            token_texts=texts,
        )


def _fault_error(fault: Fault, model: str) -> LMError:
    if fault.drop_connection:
        return LMError(f"{model} (FakeBackend) closed the connection before answering", retryable=True)
    headers = {k.lower(): v for k, v in (fault.headers or {}).items()}
    if isinstance(fault.body, dict):
        error = fault.body.get("error")
        message = str(error.get("message", fault.body) if isinstance(error, dict) else error or fault.body)
    else:
        message = fault.body if fault.body is not None else f"Fake error (status {fault.status})"
    return _status_error(fault.status, message, model, headers)


def _status_error(status: int, message: str, model: str, headers: dict[str, str]) -> LMError:
    from ..lm.openai_compat import http_error  # the HTTP backend's error for the same answer

    return http_error(status, message, headers, f"{model} (FakeBackend)")
