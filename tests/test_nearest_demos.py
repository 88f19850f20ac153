"""Demos chosen per input (``PromptState.nearest_demos`` / ``demo_pool``, ``optimizer="nearest_demos"``), end to
end against the fake OpenAI-compatible server: what each request shows, what optimize() picks and decides, and
what a saved prompter keeps and refuses."""

from __future__ import annotations

import itertools
import re
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from dspydantic import Example, PersistenceError, Prompter
from dspydantic._nearest import NearestDemos
from dspydantic._render import Demo, PromptState, Renderer
from dspydantic.errors import ConfigurationError
from dspydantic.testing import FakeLLMServer, RecordedRequest, last_user_text, message_text

from .test_load_attacks import edit_json


class Person(BaseModel):
    name: str
    age: int | None = None


HOBBIES = ["sailing", "chess", "tennis", "opera", "baking", "hiking"]


def record(i: int) -> tuple[str, str, int]:
    """Record i: its text (a hobby word the documents of the same hobby share), name and age."""
    hobby = HOBBIES[i % len(HOBBIES)]
    name, age = f"Person{i:02d}", 20 + i
    return f"Record {i:02d}, {hobby} club member: {name} is {age} years old.", name, age


EXAMPLES = [Example(text=t, expected_output={"name": n, "age": a}) for t, n, a in map(record, range(24))]


def demos_of(req: RecordedRequest) -> list[str]:
    """The user side of each demo a request shows, in order."""
    msgs = req.messages
    return [message_text(m.get("content")) for m, nxt in itertools.pairwise(msgs[1:])
            if m.get("role") == "user" and nxt.get("role") == "assistant"]


def hobby_responder(body: dict[str, Any]) -> Any:
    """The age is answered only when a demo shows a record of the same hobby (a task the nearest labelled
    examples teach and the first ones do not)."""
    text = last_user_text(body)
    m = re.search(r"Record (\d+), (\w+) club", text)
    if not m:
        return "{}"
    _, name, age = record(int(m.group(1)))
    shown = [message_text(x.get("content")) for x in body.get("messages", [])[1:-1] if x.get("role") == "user"]
    taught = any(f"{m.group(2)} club" in d for d in shown)
    return {"name": name, "age": age if taught else None}


def _demo(i: int) -> Demo:
    text, name, age = record(i)
    return Demo(input=text, output={"name": name, "age": age})


# --------------------------------------------------------------------------------------------------
# the index
# --------------------------------------------------------------------------------------------------


def test_nearest_demos_are_the_pool_demos_sharing_the_rarest_words_nearest_last() -> None:
    pool = [Demo(input="the weather in Paris tomorrow", output={}), Demo(input="book a table in Paris", output={}),
            Demo(input="weather forecast for Oslo", output={}), Demo(input="play some jazz", output={})]
    index = NearestDemos(pool)
    picked = index.pick("what is the weather forecast in Oslo", 2)
    assert [d.input for d in picked] == ["the weather in Paris tomorrow", "weather forecast for Oslo"]
    # no word in common: the first k, in pool order; ties go to the earlier demo
    assert [d.input for d in index.pick("zzz", 2)] == ["book a table in Paris", "the weather in Paris tomorrow"]
    assert index.pick("anything", 0) == () and NearestDemos([]).pick("x", 3) == ()
    # a multimodal document counts by its text parts
    parts = [{"type": "text", "text": "jazz please"}, {"type": "image_url", "image_url": {"url": "data:,"}}]
    assert [d.input for d in index.pick(parts, 1)] == ["play some jazz"]


def test_a_state_refuses_a_per_input_demo_count_it_could_not_save() -> None:
    for bad in (-1, 65, True, "4", 2.0):
        with pytest.raises(ConfigurationError, match="nearest_demos"):
            PromptState(nearest_demos=bad)  # type: ignore[arg-type]
    assert PromptState().replace(demo_pool=[_demo(1)]).demo_pool == (_demo(1),)


# --------------------------------------------------------------------------------------------------
# what is sent
# --------------------------------------------------------------------------------------------------


def test_each_request_shows_the_fixed_demos_then_the_nearest_of_the_pool(srv: FakeLLMServer) -> None:
    srv.set_responder(hobby_responder)
    p = Prompter(Person, model_id="openai/fake", api_base=srv.base_url, api_key="k")
    pool = [_demo(i) for i in range(6, 18)]  # two records of each hobby
    p.state = p.state.replace(demos=[_demo(0)], demo_pool=pool, nearest_demos=2)
    for i in (19, 22):
        assert p.run(record(i)[0]).age == 20 + i  # taught by a pool record of its hobby
    first, second = srv.requests
    hobby = HOBBIES[19 % 6]
    assert demos_of(first)[0] == record(0)[0]  # the fixed demo first, then the two records of its hobby
    assert sorted(demos_of(first)[1:]) == sorted(record(i)[0] for i in range(6, 18) if HOBBIES[i % 6] == hobby)
    assert demos_of(first)[1:] != demos_of(second)[1:]
    # without a count, the pool is not shown: the fixed demo only, and the age goes untaught
    p.state = p.state.replace(nearest_demos=0)
    assert p.run(record(19)[0]).age is None and demos_of(srv.requests[-1]) == [record(0)[0]]


# --------------------------------------------------------------------------------------------------
# optimize(optimizer="nearest_demos")
# --------------------------------------------------------------------------------------------------


def test_optimize_nearest_demos_pools_the_training_split_and_wins_where_the_first_demos_do_not(
    srv: FakeLLMServer,
) -> None:
    srv.set_responder(hobby_responder)
    train, val = EXAMPLES[:12], EXAMPLES[12:18]
    p = Prompter(Person, model_id="openai/fake", api_base=srv.base_url, api_key="k")
    result = p.optimize(train, valset=val, optimizer="knn", max_labeled_demos=2)
    assert result.optimizer == "nearest_demos" and result.demo_budget == 2
    cand = result.candidate_state
    assert cand is not None and cand.nearest_demos == 2 and cand.demos == ()
    assert sorted(str(d.input) for d in cand.demo_pool) == sorted(str(e.text) for e in train)
    # the stage costs no LM call: validation scored the original prompts, the fair baseline (2 plain demos,
    # 2 of the 6 hobbies) and the candidate, 6 requests each
    assert result.requests == srv.request_count == 3 * len(val)
    assert result.original_score == 0.5 and result.candidate_score == 1.0
    assert result.baseline_score is not None and 0.5 < result.baseline_score < 1.0
    assert result.accepted is True and p.state == cand
    # no validation document was ever shown as a demo
    val_texts = {str(e.text) for e in val}
    assert all(not val_texts & set(demos_of(r)) for r in srv.requests)
    assert "nearest_demos: 12 training example(s) as the pool, the 2 nearest to each input shown" in result.message


def test_dspys_own_knnfewshot_name_stays_dspys_and_its_error_names_nearest_demos(srv: FakeLLMServer) -> None:
    # "knnfewshot" is DSPy's teleprompter, looked up by name as dspydantic 0.1 did (it needs an embedder and k):
    # it is not silently swapped for ours, and the error it gives says where the no-embedder version is
    p = Prompter(Person, model_id="openai/fake", api_base=srv.base_url, api_key="k")
    with pytest.raises(ValueError, match=r"optimizer=dspy\.KNNFewShot.*'nearest_demos'"):
        p.optimize(EXAMPLES[:12], optimizer="knnfewshot")
    assert srv.request_count == 0


def test_a_saved_pool_is_loaded_and_shown_as_it_was(srv: FakeLLMServer, tmp_path: Path) -> None:
    srv.set_responder(hobby_responder)
    p = Prompter(Person, model_id="openai/fake", api_base=srv.base_url, api_key="k")
    p.state = p.state.replace(demo_pool=[_demo(i) for i in range(6, 18)], nearest_demos=2)
    before = p.fingerprint
    p.save(tmp_path / "p")
    q = Prompter.load(tmp_path / "p", model=Person, model_id="openai/fake", api_base=srv.base_url, api_key="k")
    assert q.state == p.state and q.fingerprint == before
    p.run(record(20)[0])
    q.run(record(20)[0])
    assert srv.requests[-1].messages == srv.requests[-2].messages
    # the pool and the count are part of what the prompter answers
    assert p.state.replace(nearest_demos=1) != p.state
    p.state = p.state.replace(nearest_demos=1)
    assert p.fingerprint != before


@pytest.mark.parametrize(("key", "value", "why"), [
    ("nearest_demos", 10**9, "nearest_demos is not a whole number"),
    ("nearest_demos", "2", "nearest_demos is not a whole number"),
    ("nearest_demos", True, "nearest_demos is not a whole number"),
    ("demo_pool", {"input": "x"}, "demo_pool is not a list"),
    ("demo_pool", [{"input": "x"}], "a demo has no output object"),
])
def test_a_tampered_pool_is_refused_with_what_is_wrong(tmp_path: Path, key: str, value: Any, why: str) -> None:
    p = Prompter(Person, model_id="openai/fake", api_base="http://127.0.0.1:9/v1", api_key="k")
    p.state = p.state.replace(demo_pool=[_demo(1)], nearest_demos=1)
    p.save(tmp_path / "p")

    def tamper(data: dict[str, Any]) -> dict[str, Any]:
        data["optimized"][key] = value
        return data

    edit_json(tmp_path / "p", "prompts.json", tamper)
    with pytest.raises(PersistenceError, match=why):
        Prompter.load(tmp_path / "p", model=Person, model_id="openai/fake", api_base="http://127.0.0.1:9/v1")


def test_choice_bias_answers_are_never_shown_their_own_label() -> None:
    from dspydantic.optimize.runner import _without_self

    pool = [_demo(i) for i in range(6)]
    renderer = Renderer(Person, PromptState(demo_pool=tuple(pool), nearest_demos=6))
    msgs = _without_self(renderer, record(3)[0]).messages(record(3)[0])
    users = [m["content"] for m in msgs[1:-1] if m["role"] == "user"]
    assert record(3)[0] not in users and len(users) == 5
    assert _without_self(renderer, "another document") is renderer
