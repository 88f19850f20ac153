"""Free-text mode is a flag of the model a Prompter without a model uses, not a guess from field names."""

from __future__ import annotations

import pytest
from pydantic import BaseModel, ValidationError

from dspydantic import ExtractionError, Prompter
from dspydantic.testing import FakeLLMServer

PROSE = "The answer is: apples, pears and plums."


class Answer(BaseModel):
    output: list[str]


class Note(BaseModel):
    output: str


def make(srv: FakeLLMServer, model: type[BaseModel] | None) -> Prompter:
    return Prompter(model=model, model_id="openai/fake", api_base=srv.base_url, api_key="k", max_retries=1)


def test_a_users_model_with_one_output_field_is_not_free_text(srv: FakeLLMServer) -> None:
    srv.set_responder(lambda body: PROSE)
    with pytest.raises(ExtractionError) as info:
        make(srv, Answer).run("Which fruit?")
    assert not isinstance(info.value, ValidationError)
    assert info.value.raw_output == PROSE
    assert len(srv.requests) == 2  # the prose was re-asked as an invalid answer, not validated as the output
    assert "not valid" in str(srv.requests[-1].body["messages"][-1]["content"])


def test_a_users_str_output_field_wants_json_too(srv: FakeLLMServer) -> None:
    srv.add_response(PROSE)
    srv.add_response({"output": "apples"})
    assert make(srv, Note).run("Which fruit?").output == "apples"
    assert len(srv.requests) == 2


def test_without_a_model_prose_is_the_output(srv: FakeLLMServer) -> None:
    srv.add_response(PROSE)
    p = make(srv, None)
    assert p.free_text and p.run("Which fruit?").output == PROSE
    assert len(srv.requests) == 1
