"""One optimization's run: its LM doors, scoring on the validation split, and the stages in order."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from .._render import PromptState, Renderer, template_placeholders
from ._quiet import MARK as QUIET_MARK
from .bridge import CandidateLedger, CandidateRejected
from .calibrate import choice_errors, fit_choice_bias, fittable_paths
from .documents import DocRegistry
from .gateway import Budget, BudgetExhausted, Gateway, budgeted_prompter, external_target
from .options import GEPA_PRESETS, OptimizeOptions
from .progress import Progress
from .report import EvaluationReport, ExampleScorer, build_report, score_examples
from .split import Split
from .stages import Plan, Stage, compile_stage

if TYPE_CHECKING:
    from .._prompter import Prompter

__all__ = ["Run"]


class Run:
    """The optimization phase and the scoring around it, on one budget.

    Two doors on that budget: the optimizers' door (``gateway``) is closed when their phase ends, so a
    worker thread DSPy leaves running after a spent budget cannot eat the reserve of the final scoring,
    which goes through ``score_gateway``."""

    def __init__(
        self,
        prompter: Prompter,
        split: Split,
        plan: Plan,
        opts: OptimizeOptions,
        *,
        budget: Budget,
        progress: Progress,
        needs_judge: bool,
    ) -> None:
        self.prompter = prompter
        self.split = split
        self.plan = plan
        self.opts = opts
        self.budget = budget
        self.progress = progress
        self.gateway = Gateway(prompter, budget, on_call=progress.lm_call)
        self.score_gateway = Gateway(prompter, budget, on_call=progress.lm_call)
        self.scorer = self._scorer(self.gateway)  # optimization phase (its judge calls go through ``gateway``)
        self.score_scorer = self._scorer(self.score_gateway)  # baseline / candidate scoring
        #: wrong enum / boolean choices of the prompts on the training split, when a stage ran them there
        self.choice_errors: int | None = None
        #: the plain-demo baseline scored below the original prompts on validation (set by the run)
        self.demos_hurt = False
        if needs_judge:
            self.scorer.judge()
            self.score_scorer.judge()
        self.notes: list[str] = []
        self._proposers: dict[int, Gateway] = {}
        self.ledger = CandidateLedger()

    def _scorer(self, door: Gateway) -> ExampleScorer:
        o = self.opts
        return ExampleScorer(self.prompter.model, o.evaluator, judge_lm=door.lm, include_fields=o.include_fields,
                             exclude_fields=o.exclude_fields)

    # -- scoring on the validation split ---------------------------------------------------------------
    def score(self, state: PromptState, what: str) -> EvaluationReport:
        self.progress.emit({"event": "stage", "stage": f"scoring {what}"})
        clone = budgeted_prompter(self.prompter, state, self.score_gateway)
        outcomes = score_examples(clone, self.split.val, self.score_scorer, num_threads=self.opts.num_threads)
        report = build_report(outcomes)
        self.progress.emit({"event": "score", "what": what, "score": report.score, "per_field": report.per_field})
        return report

    # -- stages ----------------------------------------------------------------------------------------
    def run_stages(self, state: PromptState, done: list[str]) -> PromptState:
        """Every stage in order, each from the previous one's result; a spent budget ends the run with the
        interrupted stage's best so far. ``done`` collects the names of the stages that finished."""
        for stage in self.plan.stages:
            try:
                state = self.run_stage(stage, state)
                done.append(stage.name)
            except BudgetExhausted:
                best, what = self.best_so_far(stage, state)
                self.notes.append(f"the budget ran out during {stage.name}; kept {what}")
                return best
        if self.opts.choice_bias and getattr(self.prompter.backend, "choice_bias", False):
            try:
                state = self.fit_choice_bias(state)
            except BudgetExhausted:
                self.notes.append("the budget ran out while fitting choice biases; kept the stages' result")
        if self.opts.field_typing:
            state = self.fit_field_typing(state)
        return state

    def fit_field_typing(self, state: PromptState) -> PromptState:
        """The state with the labelled values of the model's nullable top-level string fields on the training
        split (:mod:`dspydantic._retype`); unchanged when fewer than two such fields have values, or when a
        training label gives one value to two fields. No LM call."""
        from .._retype import fit_field_values, retypable_fields

        fields = retypable_fields(self.prompter.renderer.base_schema)
        if len(fields) < 2:
            return state
        labels = [e for e in (ex.expected_dict() for ex in self.split.train) if e is not None]
        fitted = fit_field_values(labels, fields)
        if not fitted:
            self.notes.append("field typing: not fitted (fewer than two string fields with labelled values, or a "
                              "label giving one value to two fields)")
            return state
        self.notes.append(f"field typing: the labelled values of {len(fitted)} string field(s) on "
                          f"{len(labels)} training example(s)")
        return state.replace(field_values=fitted)

    def fit_choice_bias(self, state: PromptState) -> PromptState:
        """The state with biases for its choice fields fitted on the training answers (:mod:`.calibrate`):
        its prompts run once over the training examples that are not its demos, recording each choice
        field's decision. Unchanged when the schema has no choice field or no bias helps on training."""
        from .._plan import build_request
        from ..errors import LMError

        if self.choice_errors == 0:
            self.notes.append("choice biases: not fitted, the prompts chose every enum and boolean field right on "
                              "the training split")
            return state
        unbiased = state.replace(choice_bias={})
        clone = budgeted_prompter(self.prompter, unbiased, self.gateway)
        renderer = clone.renderer
        paths = fittable_paths(renderer.base_schema)
        if not paths:
            return state
        self.progress.emit({"event": "stage", "stage": "choice biases"})
        shown = {repr(d.input) for d in unbiased.demos}
        answers = []
        for ex in self.split.train:
            expected = ex.expected_dict()
            doc = self.prompter._input(ex)
            if expected is None or repr(doc.as_content()) in shown:
                continue
            request = build_request(clone, renderer, _without_self(renderer, doc.as_content()).messages(
                doc.as_content(), doc.variables))
            try:
                response = clone._lm.complete(request)
            except LMError:
                continue  # e.g. a document over the context window: it just does not count
            if response.choice_logprobs:
                answers.append((response.choice_logprobs, expected))
        fitted, lines = fit_choice_bias(answers, paths)
        if not fitted:
            self.notes.append(f"choice biases: none helped on {len(answers)} training answer(s)")
            return state
        self.notes.append("choice biases fitted: " + "; ".join(lines))
        return state.replace(choice_bias=fitted)

    def run_stage(self, stage: Stage, state: PromptState) -> PromptState:
        self.progress.emit({"event": "stage", "stage": stage.name if stage.name != "custom" else self.plan.name})
        if stage.name == "gepa":
            return self._gepa(stage, state)
        if stage.name == "hard_demos":
            return self._hard_demos(stage, state)
        if stage.name == "nearest_demos":
            return self._nearest_demos(stage, state)
        return self._dspy(stage, state)

    def _nearest_demos(self, stage: Stage, state: PromptState) -> PromptState:
        """Demos chosen per input (:mod:`dspydantic._nearest`): the labelled training examples become the
        pool and each document is shown the stage's demo budget of them nearest to it (after any fixed demos
        the state has, which count against the budget). No LM call: validation decides."""
        from .split import plain_demos

        k = max(0, stage.demo_budget - len(state.demos))
        pool = plain_demos(self.prompter, state.replace(demos=()), self.split.train, len(self.split.train)).demos
        self.notes.append(f"nearest_demos: {len(pool)} training example(s) as the pool, the {k} nearest to each "
                          "input shown")
        return state.replace(demo_pool=pool, nearest_demos=k)

    def _hard_demos(self, stage: Stage, state: PromptState) -> PromptState:
        """The current prompts run on the training split; the examples they score lowest (ties: in split
        order) become plain labelled demos, up to the stage's demo budget. Where a small model already gets an
        example right, its demo teaches little; where it errs, the labelled answer shows what it missed.
        When the baseline's plain demos scored below the original prompts on validation, demos hurt this
        model on this task: the stage adds none (the choice biases may still be fitted on the prompts as
        they are)."""
        from .split import plain_demos

        if self.demos_hurt:
            self.notes.append("hard_demos: no demos, the baseline's plain demos scored below the original prompts "
                              "on validation")
            return state
        clone = budgeted_prompter(self.prompter, state, self.gateway)
        outcomes = score_examples(clone, self.split.train, self.scorer, num_threads=self.opts.num_threads)
        hardest = sorted(outcomes, key=lambda o: (o.score.score, o.index))
        wrong = sum(1 for o in outcomes if o.score.score < 1.0)
        paths = fittable_paths(self.prompter.renderer.base_schema)
        self.choice_errors = choice_errors([(o.predicted, o.example.expected_dict()) for o in outcomes], paths)
        self.notes.append(
            f"hard_demos: the prompts got {wrong} of {len(outcomes)} training example(s) wrong; "
            f"demos from the {min(stage.demo_budget, len(outcomes))} lowest-scored"
        )
        return plain_demos(self.prompter, state, [o.example for o in hardest], stage.demo_budget)  # as the baseline

    def best_so_far(self, stage: Stage, state: PromptState) -> tuple[PromptState, str]:
        """After a spent budget: the best the interrupted stage had fully scored (or its input), and what
        that is in words."""
        from .fields import best_so_far

        seen = "the best candidate seen so far"
        if stage.name == "gepa":
            best = None
            for adapter in stage.live or []:
                candidate = best_so_far(adapter)
                if candidate is not None and adapter.best.score >= 0:
                    best = candidate
            return (best, seen) if best is not None else (state, "the prompts it started from")
        ctx = getattr(self, "_ctx", None)
        if ctx is None:
            return state, "the prompts it started from"
        evaluated = self.ledger.best()  # the best program the optimizer evaluated (MIPROv2, COPRO, SIMBA, ...)
        if evaluated is not None:
            instructions, program_demos, score, n = evaluated
            try:
                return ctx.state_for(instructions, program_demos), (
                    f"the best program it had evaluated ({score:.3f} on {n} training example(s))"
                )
            except CandidateRejected:
                pass
        traces = getattr(stage.live, "name2traces", None)  # BootstrapFewShot: the demos bootstrapped so far
        if isinstance(traces, Mapping) and traces.get("extract"):
            bootstrapped = ctx.demos_from_dspy(list(traces["extract"]))[: max(1, stage.demo_budget)]
            if bootstrapped:
                return state.replace(demos=bootstrapped), f"the {len(bootstrapped)} demo(s) bootstrapped so far"
        return state, "the prompts it started from"

    def proposer(self, key: str = "reflection_lm") -> Gateway:
        """The door for proposal prompts: the user's ``reflection_lm`` / ``prompt_model`` when given (counted
        against the same budget), else the optimization gateway (the Prompter's own LM)."""
        lm = self.opts.proposal_lm(key)
        if lm is None:
            return self.gateway
        door = self._proposers.get(id(lm))
        if door is None:
            door = Gateway(self.prompter, self.budget, on_call=self.gateway.on_call, target=external_target(lm))
            self._proposers[id(lm)] = door
        return door

    def close(self) -> None:
        """Close every door of the optimization phase (see :meth:`Gateway.close`)."""
        self.gateway.close()
        for door in self._proposers.values():
            door.close()

    def _reflect(self) -> Callable[[list[dict[str, Any]], dict[str, Any] | None, int | None], str]:
        door = self.proposer("reflection_lm")
        temperature = self.opts.reflection_temperature
        floor = self.prompter.max_tokens

        def reflect(
            messages: list[dict[str, Any]], json_schema: dict[str, Any] | None = None, max_tokens: int | None = None
        ) -> str:
            if max_tokens is not None and floor is not None:
                max_tokens = max(max_tokens, floor)
            return door.complete_text(messages, temperature=temperature, json_schema=json_schema, max_tokens=max_tokens)

        return reflect

    def reflect_window(self) -> int | None:
        """The context window (tokens) of the LM that answers reflection prompts, when it is known."""
        lm = self.opts.proposal_lm("reflection_lm")
        backend = self.prompter.backend if lm is None else lm
        window = getattr(backend, "context_window", None)
        return window if isinstance(window, int) and window > 0 else None

    def _gepa(self, stage: Stage, state: PromptState) -> PromptState:
        from .components import INSTRUCTION, SYSTEM, field_components, field_groups
        from .fields import run_texts

        train = self.split.train
        n = len(train)
        o = self.opts
        if o.max_metric_calls is not None:
            total = o.max_metric_calls
        elif o.max_full_evals is not None:
            total = o.max_full_evals * n
        else:
            total = GEPA_PRESETS[o.auto or "light"] * max(n, 8)
        paths = field_components(self.prompter._base_schema, o.include_fields, o.exclude_fields)
        if self.prompter.free_text or not o.optimize_descriptions:
            paths = []
        prompts = o.prompts
        groups: list[tuple[list[str], tuple[str, ...]]]
        if o.sequential:
            groups = [(g, ()) for g in field_groups(paths, o.parallel_fields)]
            if prompts:
                groups.append(([], prompts))
        else:
            groups = [(list(paths), prompts)]
        groups = [g for g in groups if g[0] or g[1]]
        stage.live = []
        reflect = self._reflect()
        rejected = 0
        for i, (group_paths, group_prompts) in enumerate(groups):
            share = max(2 * n, total // len(groups))
            result = run_texts(
                prompter=self.prompter,
                state=state,
                trainset=train,
                gateway=self.gateway,
                scorer=self.scorer,
                paths=group_paths,
                prompts=group_prompts,
                reflect=reflect,
                max_metric_calls=share,
                seed=o.seed + i,
                parallel_fields=o.parallel_fields,
                num_threads=o.num_threads,
                minibatch_size=o.reflection_minibatch_size,
                pareto_size=o.gepa_val_size,
                on_event=self.progress.emit,
                adapter_box=stage.live,
                reflect_window=self.reflect_window(),
            )
            rejected += result.rejected
            state = result.state
        if rejected:
            self.notes.append(f"{rejected} proposed prompt(s) were rejected for changing template placeholders")
        # placeholders of the adopted prompts are those of the originals (proposals were checked)
        before = self.prompter.state
        for name, original in ((SYSTEM, before.system_prompt), (INSTRUCTION, before.instruction_prompt)):
            new = state.system_prompt if name == SYSTEM else state.instruction_prompt
            if new is not None and template_placeholders(new) != template_placeholders(original or ""):
                state = state.replace(**{name: original})
        return state

    def _metric(self, feedback: bool) -> Callable[..., Any]:
        import dspy

        train = self.split.train
        threshold = 1.0 if self.opts.metric_threshold is None else float(self.opts.metric_threshold)
        scorer = self.scorer
        ledger = self.ledger

        def metric(example: Any, pred: Any, trace: Any = None, pred_name: Any = None, pred_trace: Any = None) -> Any:
            idx = example.get("example_index") if hasattr(example, "get") else None
            if not isinstance(idx, int) or not 0 <= idx < len(train):
                return 0.0
            predicted = pred.get("extraction") if hasattr(pred, "get") else getattr(pred, "extraction", None)
            s = scorer.score(train[idx], predicted if isinstance(predicted, Mapping) else None, index=idx)
            if trace is None:
                ledger.record(pred, idx, s.score)
            if feedback:
                return dspy.Prediction(score=s.score, feedback="\n".join(s.feedback) or "All fields correct.")
            if trace is not None:
                return s.score >= threshold
            return s.score

        return metric

    def _dspy(self, stage: Stage, state: PromptState) -> PromptState:
        import dspy

        from .bridge import StudentContext, build_program, demos_to_dspy, make_lm, program_state, to_dspy_examples

        prompter = self.prompter
        registry = DocRegistry(prompter)
        trainset = to_dspy_examples(registry, prompter, self.split.train)
        ctx = StudentContext(prompter, state.replace(demos=()), registry)
        self._ctx = ctx
        program = build_program(ctx)
        program.extract.demos = demos_to_dspy(registry, state.demos)
        lm = make_lm(self.gateway)
        is_gepa = stage.name == "custom" and type(stage.teleprompter).__name__ == "GEPA"
        metric = self._metric(feedback=is_gepa)
        prompt_model = None
        if stage.name != "custom":  # the named stages that propose prompts get the user's prompt_model
            door = self.proposer("prompt_model")
            prompt_model = lm if door is self.gateway else make_lm(door)
        with dspy.context(lm=lm, **{QUIET_MARK: True}):
            compiled = compile_stage(stage, program, trainset, metric=metric, lm=lm, prompt_model=prompt_model,
                                     num_threads=self.opts.num_threads, seed=self.opts.seed)
        try:
            return program_state(ctx, compiled)
        except CandidateRejected as exc:
            self.notes.append(f"{exc}; kept the original instruction")
            predictor = compiled.extract
            return ctx.state_for(ctx.original_instruction, list(predictor.demos or []))


def _without_self(renderer: Renderer, content: Any) -> Renderer:
    """``renderer``, or when its state chooses demos per input from a pool holding ``content`` itself, one
    whose pool leaves it out (a training answer fitted on must not be shown its own label)."""
    state = renderer.state
    if not (state.nearest_demos and state.demo_pool):
        return renderer
    rest = tuple(d for d in state.demo_pool if repr(d.input) != repr(content))
    if len(rest) == len(state.demo_pool):
        return renderer
    return Renderer(renderer.model, state.replace(demo_pool=rest), base_schema=renderer.base_schema)
