"""Constructor arguments are validated before any request, with a ``ConfigurationError`` naming the argument;
model settings reach the server on every backend; a lone surrogate in the input is a typed error (or a
replacement), never a ``UnicodeEncodeError``."""

from __future__ import annotations

from typing import Any

import pytest

from dspydantic import ConfigurationError, DspydanticError, Prompter
from dspydantic.testing import FakeLLMServer

from ._verbs import GOOD, KEY, SINGLE, VERBS, Bill, call, describe

BAD = [
    ("lm_retries", -1),
    ("lm_retries", 1.5),
    ("lm_retries", "2"),
    ("timeout", -1),
    ("timeout", 0),
    ("timeout", "soon"),
    ("connect_timeout", -1),
    ("connect_timeout", "fast"),
    ("retry_backoff", -0.5),
    ("retry_max_time", -1),
    ("max_connections", 0),
    ("verify", 42),
    ("verify", "/no/such/ca-bundle.pem"),
    ("proxy", "not a url"),
    ("temperature", -1),
    ("temperature", "hot"),
    ("top_p", 1.5),
    ("max_tokens", 0),
    ("max_tokens", 2.5),
    ("seed", "abc"),
    ("stop", 5),
    ("extra_body", "top_p=0.1"),
]


@pytest.mark.parametrize(("name", "value"), BAD, ids=[f"{n}={v!r}" for n, v in BAD])
def test_bad_argument_is_a_configuration_error_before_any_request(srv: FakeLLMServer, name: str, value: Any) -> None:
    srv.set_responder(lambda body: GOOD)
    with pytest.raises(ConfigurationError, match=name):
        Prompter(Bill, "openai/fake-model", api_base=srv.base_url, api_key=KEY, **{name: value})
    assert srv.request_count == 0


def test_mistyped_keyword_names_the_accepted_ones(srv: FakeLLMServer) -> None:
    with pytest.raises(ConfigurationError) as info:
        Prompter(Bill, "openai/fake-model", api_base=srv.base_url, n_thread=4)
    message = str(info.value)
    assert "n_thread" in message and "timeout" in message and "lm_retries" in message, message
    assert srv.request_count == 0


@pytest.mark.parametrize("verb", VERBS)
def test_lone_surrogate_is_typed_or_replaced(srv: FakeLLMServer, verb: str) -> None:
    srv.set_responder(lambda body: GOOD)
    p = Prompter(Bill, "openai/fake-model", api_base=srv.base_url, api_key=KEY)
    out = call(p, verb, "bill from a\udcff corp")
    assert not isinstance(out, UnicodeError), describe(out)
    if isinstance(out, Bill):  # replaced: the server got well-formed text
        assert srv.request_count == 1
        assert "\udcff" not in srv.requests[0].last_user_text
    else:
        assert isinstance(out, DspydanticError), describe(out)
        assert srv.request_count == 0


def test_lone_surrogate_in_a_batch_loses_nothing(srv: FakeLLMServer) -> None:
    srv.set_responder(lambda body: GOOD)
    p = Prompter(Bill, "openai/fake-model", api_base=srv.base_url, api_key=KEY)
    out = p.predict_batch(["doc one", "a\udcff", "doc three"], max_workers=2, on_error="return")
    assert isinstance(out[0], Bill) and isinstance(out[2], Bill)
    assert isinstance(out[1], Bill | DspydanticError), describe(out[1])


SETTINGS: dict[str, Any] = {
    "temperature": 0.3,
    "max_tokens": 77,
    "top_p": 0.5,
    "seed": 7,
    "stop": ["END"],
    "presence_penalty": 0.1,
    "frequency_penalty": 0.2,
}


@pytest.mark.parametrize("verb", SINGLE)
def test_model_settings_reach_the_openai_compatible_server(srv: FakeLLMServer, verb: str) -> None:
    srv.set_responder(lambda body: GOOD)
    p = Prompter(
        Bill, "openai/fake-model", api_base=srv.base_url, api_key=KEY,
        extra_body={"repetition_penalty": 1.05}, **SETTINGS,
    )
    assert isinstance(call(p, verb), Bill)
    body = srv.requests[-1].body
    assert {k: body.get(k) for k in SETTINGS} == SETTINGS
    assert body.get("repetition_penalty") == 1.05


def test_top_p_on_the_litellm_path(srv: FakeLLMServer) -> None:
    srv.set_responder(lambda body: GOOD)
    p = Prompter(Bill, "hosted_vllm/fake-model", api_base=srv.base_url, api_key="k", top_p=0.5, seed=7)
    assert isinstance(call(p, "run"), Bill), describe(call(p, "run"))
    body = srv.requests[-1].body
    assert body.get("top_p") == 0.5 and body.get("seed") == 7


def test_top_p_with_a_dspy_lm(srv: FakeLLMServer) -> None:
    dspy = pytest.importorskip("dspy")
    srv.set_responder(lambda body: GOOD)
    lm = dspy.LM("openai/fake-model", api_base=srv.base_url, api_key="k", cache=False, num_retries=0)
    out = call(Prompter(Bill, lm=lm, top_p=0.5), "run")
    assert isinstance(out, Bill), describe(out)
    assert srv.requests[-1].body.get("top_p") == 0.5
