"""The pure parts of an optimization: the options, the stage table and the accept/reject decision (no LM)."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import pytest

from dspydantic import ConfigurationError
from dspydantic.optimize.decision import decide
from dspydantic.optimize.options import OptimizeOptions
from dspydantic.optimize.stages import STAGES, configure_stages, plan_stages

# -- the decision, on plain numbers -----------------------------------------------------------------


def test_a_candidate_above_the_baseline_is_accepted() -> None:
    v = decide(0.5, 0.75)
    assert v.accepted and not v.serve_baseline and v.served_score == 0.75
    assert v.message == "accepted: validation score 0.500 -> 0.750"


def test_a_tie_or_less_than_min_improvement_is_not_accepted() -> None:
    assert not decide(0.5, 0.5).accepted
    v = decide(0.5, 0.55, min_improvement=0.1)
    assert not v.accepted and v.served_score == 0.5
    assert v.message == (
        "not accepted: the candidate scored 0.550, not above the baseline 0.500; kept the original prompts"
    )


def test_the_candidate_must_also_beat_the_original_prompts_when_they_were_scored() -> None:
    v = decide(0.5, 0.6, original=0.7, added=2)
    assert not v.accepted and not v.serve_baseline
    assert "above the baseline 0.500 but not above the original prompts as they were (0.700)" in v.message
    assert v.served_score == 0.7  # the Prompter keeps the original prompts: their score is what it serves
    assert "to serve it as scored" not in v.message  # the baseline did not beat the original
    w = decide(0.5, 0.8, original=0.7, added=2)
    assert w.accepted and "(the original prompts as they were: 0.700)" in w.message
    assert "the baseline had 2 plain training demo(s)" in w.message


def test_fallback_baseline_serves_the_baseline_only_when_it_beat_the_original() -> None:
    v = decide(0.8, 0.6, original=0.5, fallback="baseline", added=3)
    assert not v.accepted and v.serve_baseline and v.served_score == 0.8
    assert "serving the baseline as scored: the original prompts with 3 plain training demo(s)" in v.message
    w = decide(0.5, 0.4, original=0.6, fallback="baseline", added=3)
    assert not w.serve_baseline and w.served_score == 0.6
    assert "kept the original prompts: they scored 0.600, not below the baseline" in w.message
    # without demos added the baseline *is* the original: nothing else to serve
    assert not decide(0.8, 0.6, fallback="baseline").serve_baseline


def test_nothing_new_an_unscored_candidate_and_an_unscored_baseline() -> None:
    same = decide(0.5, 0.9, fresh=False)
    assert not same.accepted and same.message.startswith("the optimizer proposed nothing new")
    none = decide(0.5, None)
    assert not none.accepted and none.served_score == 0.5
    assert none.message == "the candidate could not be scored within the budget; kept the original prompts"
    nothing = decide(None, 0.9)
    assert not nothing.accepted and math.isnan(nothing.served_score)
    assert nothing.message == "the budget ran out while scoring the baseline; nothing changed"


# -- the options -------------------------------------------------------------------------------------


def test_options_split_our_keywords_from_the_teleprompters() -> None:
    opts = OptimizeOptions.from_kwargs({"seed": 3, "evaluate_fn": "levenshtein", "max_rounds": 2, "auto": None})
    assert opts.seed == 3 and opts.evaluator == "levenshtein" and opts.auto is None
    assert opts.teleprompter_kwargs == {"max_rounds": 2}
    with pytest.raises(dataclasses.FrozenInstanceError):
        opts.seed = 4  # type: ignore[misc]
    with pytest.raises(ConfigurationError, match="not both"):
        OptimizeOptions.from_kwargs({"evaluator": "exact", "evaluate_fn": "exact"})
    assert OptimizeOptions(optimize_prompts="system_prompt").prompts == ("system_prompt",)
    assert OptimizeOptions(optimize_prompts=False).prompts == ()
    assert OptimizeOptions().prompts == ("system_prompt", "instruction_prompt")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"train_split": 1.0}, "train_split"),
        ({"seed": "1"}, "seed"),
        ({"num_threads": 0}, "num_threads"),
        ({"max_lm_calls": True}, "max_lm_calls"),
        ({"max_bootstrapped_demos": -1}, "max_bootstrapped_demos"),
        ({"max_metric_calls": 2.5}, "max_metric_calls"),
        ({"auto": "huge"}, "auto"),
        ({"fallback": "best"}, "fallback"),
        ({"optimize_prompts": ["footer"]}, "optimize_prompts"),
        ({"optimize_prompts": 3}, "optimize_prompts"),
        ({"min_improvement": "a lot"}, "min_improvement"),
        ({"on_progress": 5}, "on_progress"),
        ({"reflection_lm": 42}, "reflection_lm"),
        ({"valset": []}, "no examples"),
    ],
)
def test_options_refuse_wrong_values(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigurationError, match=match):
        OptimizeOptions.from_kwargs(kwargs)


# -- the stage table ---------------------------------------------------------------------------------


def test_stage_arguments_come_from_the_table_then_the_users_keywords() -> None:
    opts = OptimizeOptions.from_kwargs({"max_bootstrapped_demos": 2, "max_labeled_demos": 3, "max_rounds": 5,
                                        "restrict": [0], "metric_threshold": 0.5})
    plan = plan_stages("bootstrap+random_search", 10)
    configure_stages(plan, 10, opts)
    boot, rs = plan.stages
    assert boot.init_kwargs == {"max_bootstrapped_demos": 2, "max_labeled_demos": 3, "metric_threshold": 0.5,
                                "max_rounds": 5}
    assert rs.compile_kwargs == {"restrict": [0]} and boot.compile_kwargs == {}
    assert plan.demo_budget == 3
    simba = plan_stages("simba", 10)
    configure_stages(simba, 10, OptimizeOptions(max_demos=6))
    assert simba.demo_budget == 6
    assert STAGES["random_search"].holdout is not None and STAGES["random_search"].holdout(10) == 5


def test_an_unknown_keyword_names_the_accepted_ones() -> None:
    plan = plan_stages("bootstrap", 10)
    with pytest.raises(ConfigurationError, match="unknown optimizer argument") as info:
        configure_stages(plan, 10, OptimizeOptions.from_kwargs({"max_round": 2}))
    text = str(info.value)
    assert "['max_round']" in text and "'max_rounds'" in text  # the teleprompter's own names
    assert "'reflection_lm'" in text and "'compare_original'" in text  # and ours


def test_too_few_training_examples_for_a_stage() -> None:
    with pytest.raises(ConfigurationError, match="at least 4 training"):
        configure_stages(plan_stages("miprov2", 3), 3, OptimizeOptions())
    assert plan_stages("auto", 2).name == "gepa" and plan_stages("auto", 10).name == "hard_demos"


# -- the evaluation report ---------------------------------------------------------------------------


def test_an_evaluation_report_is_its_summary_and_the_examples_behind_it() -> None:
    from dspydantic import Example
    from dspydantic.optimize.report import ExampleOutcome, build_report
    from dspydantic.optimize.scoring import OutputScore, aggregate

    outcomes = [
        ExampleOutcome(
            index=i, example=Example(text=f"doc {i}", expected_output={"a": 1}), predicted={"a": 1 if i else 2},
            score=OutputScore(score=float(i > 0), fields={"a": float(i > 0)}, tp=float(i > 0), fp=float(i == 0),
                              fn=float(i == 0)),
        )
        for i in range(4)
    ]
    report = build_report(outcomes)
    assert report.stats == aggregate([o.score for o in outcomes])
    assert (report.score, report.per_field, report.n) == (0.75, {"a": 0.75}, 4)
    assert (report.precision, report.recall, report.f1) == (0.75, 0.75, 0.75)
    assert [f.index for f in report.failures] == [0] and report.accuracy == 0.75
    assert report.summary().startswith("score 0.750 over 4 examples  (P 0.750  R 0.750  F1 0.750; 1 not fully right)")


def test_optimize_takes_an_options_object_or_keywords_not_both() -> None:
    from pydantic import BaseModel

    from dspydantic import Example, Prompter
    from dspydantic.optimize.run import optimize_prompter
    from dspydantic.testing import FakeLLMServer

    class Person(BaseModel):
        name: str

    one = [Example(text="Ada is here.", expected_output={"name": "Ada"})]
    with FakeLLMServer() as srv:
        p = Prompter(Person, model_id="openai/fake", api_base=srv.base_url, api_key="k")
        with pytest.raises(ConfigurationError, match="not both"):
            optimize_prompter(p, one, OptimizeOptions(), seed=1)
        result = optimize_prompter(p, one, OptimizeOptions(seed=3, optimizer="gepa"))
        assert result.seed == 3 and result.optimizer == "gepa" and not result.validated
        assert srv.request_count == 0  # one example: nothing to validate on, so no LM call
