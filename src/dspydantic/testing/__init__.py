"""Fake LMs for tests: :class:`FakeLLMServer`, an OpenAI-compatible HTTP server, and :class:`FakeBackend`, an
in-process backend. Both answer from the same script and record the same requests.

:class:`FakeLLMServer` speaks real HTTP on ``127.0.0.1`` so that the whole client stack (retries, timeouts,
connection pools, concurrency limits, TLS and proxies when set up) is exercised without a network or an API
key. It depends only on the standard library.

:class:`FakeBackend` is for unit tests of your own code around a Prompter: no sockets, no threads, nothing to
start or stop; pass it as ``Prompter(model=M, lm=FakeBackend(...))``.

Example -- testing your own extraction code::

    from pydantic import BaseModel

    from dspydantic import Prompter
    from dspydantic.testing import Fault, FakeBackend, FakeLLMServer


    class Invoice(BaseModel):
        number: str
        total: float


    def test_extracts_invoice() -> None:
        with FakeLLMServer() as srv:
            srv.add_response({"number": "INV-1", "total": 12.5})
            srv.add_response(Fault(status=429))        # second call is rate limited
            prompter = Prompter(model=Invoice, model_id="openai/fake", api_base=srv.base_url, api_key="test")
            invoice = prompter.run("Invoice INV-1, total 12.50 EUR")
            assert invoice == Invoice(number="INV-1", total=12.5)
            assert srv.request_count == 1
            assert srv.requests[0].headers["authorization"] == "Bearer test"


    def test_extracts_invoice_in_process() -> None:
        fake = FakeBackend({"number": "INV-1", "total": 12.5})
        invoice = Prompter(model=Invoice, lm=fake).run("Invoice INV-1, total 12.50 EUR")
        assert invoice.total == 12.5 and "INV-1" in fake.requests[0].last_user_text

The server also speaks the OpenAI Files and Batches APIs (``srv.batches``; see
:mod:`dspydantic.testing_batches`): batch lines are answered by the same queue and responder.

Answers are taken from a FIFO queue filled with ``add_response``; when it is empty the responder set with
``set_responder`` (or ``respond_by_substring`` / ``respond_from_schema``) is called with the decoded
chat-completions request body. Without either the answer is ``"{}"``.
"""

from ._backend import FakeBackend
from ._script import (
    Fault,
    RecordedRequest,
    Reply,
    Responder,
    ResponseSpec,
    example_for_schema,
    last_user_text,
    message_text,
)
from ._server import FakeLLMServer

__all__ = [
    "FakeBackend",
    "FakeLLMServer",
    "Fault",
    "RecordedRequest",
    "Reply",
    "Responder",
    "ResponseSpec",
    "example_for_schema",
    "last_user_text",
    "message_text",
]
