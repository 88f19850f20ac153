"""GEPA over named texts: every field path's description, the system prompt and the instruction prompt.

No built-in DSPy optimizer edits a field's description, so this stage runs ``gepa.optimize`` with its own
``GEPAAdapter``. A candidate is a dict of named texts (``field:<path>``, ``system_prompt``,
``instruction_prompt``); it is scored by running the Prompter's own extraction plan with those texts
(the same renderer as inference) on training examples, and the per-field feedback of
:func:`~dspydantic.optimize.scoring.score_output` ("total: expected 120.0, got 12.0") is what the
reflection LM reads to propose new texts.

Every field path is its own component: a nested class used at two paths gets two independent
descriptions. Proposed prompts must keep exactly the ``{placeholders}`` of the text they replace; a
proposal that drops or adds one is repaired once (asked again, naming the problem) and otherwise
rejected. ``gepa`` is imported inside functions only. The candidates themselves (named texts and how they
apply to a :class:`PromptState`) are :mod:`.components`.

Size: over 500 lines because it is one concept, the ``GEPAAdapter`` and its run: evaluation,
reflection prompts (fitted to the reflection LM's window) and the placeholder repair belong together.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .._example import Example
from .._render import (
    PromptState,
    extract_json,
    template_placeholders,
)
from .components import FIELD, PROMPTS, SYSTEM, apply_candidate, related, seed_candidate
from .field_evaluators import path_segments
from .gateway import Gateway, budgeted_prompter
from .report import ExampleOutcome, ExampleScorer, score_examples

log = logging.getLogger("dspydantic")

#: GEPA's reflective dataset: component -> its records (document, answer, feedback)
Reflections = Mapping[str, Sequence[Mapping[str, Any]]]
#: longest proposed field description (characters): the answer is JSON constrained by a schema with this bound
_MAX_DESCRIPTION = 400
#: reply room for a field-description reflection (tokens per field; a description is at most ~100 tokens)
_REPLY_TOKENS_PER_FIELD = 120
#: reply room for a proposed system / instruction prompt (tokens)
_PROMPT_REPLY_TOKENS = 1024

_FIELDS_TEMPLATE = """You document the fields of a JSON extraction schema so that an assistant extracts them \
correctly. With the current field descriptions some of its answers were wrong.

Current field descriptions (JSON, field path -> description):
```
{current}
```

Documents, the assistant's answers for these fields and what was wrong:
```
{records}
```

For each field, write a better description: what it holds, where it is found, the exact form of its values \
(copy the style of the expected values above) and when it must be null. One to three sentences per field, \
general rather than about one document. Write descriptions, not values.
Answer with a JSON object with one key per field, "<field path> description", whose value is the new \
description: {keys}"""

#: the key of a field's new description in the reflection answer (a bare path as key reads like an extraction
#: to a small model, which then answers with values)
_KEY = "{} description"

_PROMPT_TEMPLATE = """I gave an assistant the following {what} to extract structured data from documents:
```
<curr_param>
```

The following are documents it was given, the answers it produced and feedback on what was wrong:
```
<side_info>
```

Write a new {what} for the assistant. Identify the input format and the task, and include the specific, \
generalizable rules the feedback shows are needed (formats, normalisations, when a value is absent).{keep}

Provide the new {what} within ``` blocks."""


def _values_at(obj: Any, seg: Sequence[str]) -> Any:
    if not seg:
        return obj
    if isinstance(obj, list):
        return [_values_at(x, seg) for x in obj]
    if isinstance(obj, Mapping):
        return _values_at(obj.get(seg[0]), seg[1:])
    return None


def _short(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 20] + " … [truncated]"


def _lines_for(path: str, feedback: Sequence[str]) -> list[str]:
    out = []
    for line in feedback:
        head = line.split(":", 1)[0]
        if related(path, head):
            out.append(line)
    return out


@dataclass
class TextsResult:
    state: PromptState
    score: float | None
    rejected: int = 0
    iterations: int = 0
    metric_calls: int = 0


@dataclass
class _Best:
    score: float = -1.0
    candidate: dict[str, str] | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)


class TextsAdapter:
    """The ``GEPAAdapter``: evaluates candidates with the Prompter's plan, builds per-component
    reflective datasets from the per-field feedback, and proposes new texts (placeholders checked)."""

    propose_new_texts: Callable[..., dict[str, str]] | None

    def __init__(
        self,
        *,
        prompter: Any,
        base_state: PromptState,
        descriptions: Mapping[str, str],
        gateway: Gateway,
        scorer: ExampleScorer,
        reflect: Callable[[list[dict[str, Any]], dict[str, Any] | None, int | None], str],
        full_size: int,
        num_threads: int = 4,
        on_event: Callable[[dict[str, Any]], None] | None = None,
        max_input_chars: int = 1500,
        reflect_window: int | None = None,
        positions: Mapping[int, int] | None = None,
    ) -> None:
        self.prompter = prompter
        #: id(example) -> its position in the training split (the index evaluators see)
        self.positions = dict(positions or {})
        self.base_state = base_state
        self.descriptions = dict(descriptions)
        self.gateway = gateway
        self.scorer = scorer
        self.reflect = reflect
        self.full_size = full_size
        self.num_threads = num_threads
        self.on_event = on_event
        self.max_input_chars = max_input_chars
        self.reflect_window = reflect_window  # the reflection LM's context window (tokens), when known
        self.best = _Best()
        self.rejected = 0
        self.propose_new_texts = self._propose

    # -- evaluation -----------------------------------------------------------------------------------
    def state_for(self, candidate: Mapping[str, str]) -> PromptState:
        return apply_candidate(self.base_state, candidate, self.descriptions)

    def evaluate(self, batch: list[Example], candidate: dict[str, str], capture_traces: bool = False) -> Any:
        from gepa import EvaluationBatch

        clone = budgeted_prompter(self.prompter, self.state_for(candidate), self.gateway)
        outcomes = score_examples(clone, batch, self.scorer, num_threads=self.num_threads,
                                  positions=[self.positions.get(id(ex)) for ex in batch])
        scores = [o.score.score for o in outcomes]
        if len(batch) == self.full_size and not capture_traces:
            mean = sum(scores) / len(scores) if scores else 0.0
            with self.best.lock:
                if mean > self.best.score:
                    self.best.score = mean
                    self.best.candidate = dict(candidate)
            if self.on_event is not None:
                self.on_event({"event": "candidate", "stage": "gepa", "score": mean})
        return EvaluationBatch(
            outputs=[o.predicted for o in outcomes],
            scores=scores,
            trajectories=list(outcomes) if capture_traces else None,
        )

    # -- reflection -----------------------------------------------------------------------------------
    def _doc(self, ex: Example) -> str:
        text = ex.text if isinstance(ex.text, str) else json.dumps(ex.text, ensure_ascii=False, default=str)
        if text is None:
            text = "(an image or PDF document)"
        return _short(text, self.max_input_chars)

    def make_reflective_dataset(
        self, candidate: dict[str, str], eval_batch: Any, components_to_update: list[str]
    ) -> dict[str, list[dict[str, Any]]]:
        outcomes: list[ExampleOutcome] = list(eval_batch.trajectories or [])
        out: dict[str, list[dict[str, Any]]] = {}
        for comp in components_to_update:
            records: list[dict[str, Any]] = []
            if comp.startswith(FIELD):
                path = comp[len(FIELD):]
                seg = path_segments(path)
                ok: list[dict[str, Any]] = []
                for o in outcomes:
                    lines = _lines_for(path, o.score.feedback)
                    if o.predicted is None:
                        lines = list(o.score.feedback)
                    record = {
                        "Document": self._doc(o.example),
                        "Answer": json.dumps(_values_at(o.predicted, seg), ensure_ascii=False, default=str),
                        "Feedback": "\n".join(lines) if lines else f"{path}: correct",
                    }
                    (records if lines else ok).append(record)
                records.extend(ok[: max(1, 3 - len(records))])
            else:
                for o in outcomes:
                    records.append(
                        {
                            "Document": self._doc(o.example),
                            "Answer": json.dumps(o.predicted, ensure_ascii=False, default=str)
                            if o.predicted is not None
                            else "(no valid answer)",
                            "Feedback": "\n".join(o.score.feedback) or "All fields correct.",
                        }
                    )
            out[comp] = records
        return out

    def _char_budget(self, reply_tokens: int) -> int | None:
        """Characters a reflection prompt may have to leave room for the reply in the reflection LM's window
        (``None``: unknown window, no limit). Three characters a token: on the safe side for English."""
        if self.reflect_window is None:
            return None
        return max(0, (self.reflect_window - reply_tokens - 64) * 3)

    def _fit(self, blocks: list[str], fixed_chars: int, reply_tokens: int) -> list[str]:
        """The leading blocks that fit the reflection LM's window (at least one, shortened if need be)."""
        budget = self._char_budget(reply_tokens)
        if budget is None:
            return blocks
        room = budget - fixed_chars
        out: list[str] = []
        for block in blocks:
            if len(block) + 2 > room:
                break
            out.append(block)
            room -= len(block) + 2
        if not out and blocks:
            out.append(_short(blocks[0], max(200, room)))
        return out

    def _propose(
        self, candidate: dict[str, str], reflective_dataset: Reflections, components_to_update: list[str]
    ) -> dict[str, str]:
        new: dict[str, str] = {}
        fields = [c for c in components_to_update if c.startswith(FIELD)]
        if fields:
            new.update(self._propose_fields(candidate, reflective_dataset, fields))
        for comp in components_to_update:
            if comp in PROMPTS:
                new[comp] = self._propose_prompt(candidate[comp], comp, reflective_dataset.get(comp, []))
        if self.on_event is not None:
            self.on_event({"event": "proposal", "stage": "gepa", "components": list(new)})
        return new

    def _propose_fields(self, candidate: Mapping[str, str], dataset: Reflections, comps: list[str]) -> dict[str, str]:
        paths = [c[len(FIELD):] for c in comps]
        current = {p: candidate[FIELD + p] for p in paths}
        seen: set[str] = set()
        blocks = []
        for comp in comps:
            for rec in dataset.get(comp, []):
                key = json.dumps(rec, sort_keys=True, default=str)
                if key in seen:
                    continue
                seen.add(key)
                blocks.append(
                    f"Field {comp[len(FIELD):]}\nDocument: {rec.get('Document')}\nAnswer: {rec.get('Answer')}\n"
                    f"Feedback: {rec.get('Feedback')}"
                )
        keys = [_KEY.format(p) for p in paths]
        reply_tokens = _REPLY_TOKENS_PER_FIELD * len(paths) + 64

        def render(records: Sequence[str]) -> str:
            return _FIELDS_TEMPLATE.format(
                current=json.dumps(current, indent=2, ensure_ascii=False),
                records="\n\n".join(records),
                keys=", ".join(json.dumps(k) for k in keys),
            )

        prompt = render(self._fit(blocks[:24], len(render([])), reply_tokens))
        schema = {
            "type": "object",
            "properties": {k: {"type": "string", "maxLength": _MAX_DESCRIPTION} for k in keys},
            "required": keys,
            "additionalProperties": False,
        }
        text = self.reflect([{"role": "user", "content": prompt}], schema, reply_tokens)
        log.debug("gepa: proposed descriptions for %s: %s", paths, text)
        data = extract_json(text)
        out: dict[str, str] = {}
        if isinstance(data, Mapping):
            for p in paths:
                value = data.get(_KEY.format(p), data.get(p))
                if isinstance(value, str) and value.strip():
                    out[FIELD + p] = value.strip()
        if len(paths) == 1 and not out:
            # a single field: accept a plain-text answer too
            from gepa.strategies.instruction_proposal import InstructionProposalSignature

            plain = InstructionProposalSignature.output_extractor(text)["new_instruction"].strip()
            if plain and extract_json(plain) is None:
                out[comps[0]] = plain
        return out

    def _propose_prompt(self, current: str, comp: str, records: Sequence[Mapping[str, Any]]) -> str:
        from gepa.strategies.instruction_proposal import InstructionProposalSignature

        what = "system prompt" if comp == SYSTEM else "instruction"
        names = template_placeholders(current)
        keep = ""
        if names:
            keep = (
                " The text is a template: keep the placeholders "
                + ", ".join("{" + n + "}" for n in sorted(names))
                + " exactly as written, add no other {name} placeholder, and write any literal brace as {{ or }}."
            )
        template = _PROMPT_TEMPLATE.format(what=what, keep=keep)

        def render(recs: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
            rendered = InstructionProposalSignature.prompt_renderer(
                {"current_instruction_doc": current, "dataset_with_feedback": list(recs), "prompt_template": template}
            )
            return rendered if isinstance(rendered, list) else [{"role": "user", "content": rendered}]

        kept = list(records)
        messages = render(kept)
        limit = self._char_budget(_PROMPT_REPLY_TOKENS)
        while limit is not None and len(kept) > 1 and len(json.dumps(messages)) > limit:
            kept.pop()  # drop records from the end until the prompt fits (one always stays)
            messages = render(kept)
        for attempt in range(2):
            text = self.reflect(messages, None, _PROMPT_REPLY_TOKENS)
            proposal = InstructionProposalSignature.output_extractor(text)["new_instruction"].strip()
            problem = placeholder_problem(current, proposal)
            if proposal and problem is None:
                return proposal
            if not proposal:
                problem = "the answer was empty"
            log.info("rejected a proposed %s (%s)%s", what, problem, "; asking again" if attempt == 0 else "")
            messages = [
                *messages,
                {"role": "assistant", "content": text},
                {
                    "role": "user",
                    "content": f"That {what} cannot be used: {problem}. Write it again within ``` blocks, keeping "
                    "every placeholder of the original exactly and adding none.",
                },
            ]
        self.rejected += 1
        return current


def placeholder_problem(original: str, proposal: str) -> str | None:
    """Why ``proposal`` cannot replace ``original`` as a template (``None``: it can)."""
    before, after = template_placeholders(original), template_placeholders(proposal)
    dropped, added = sorted(before - after), sorted(after - before)
    if not dropped and not added:
        return None
    parts = []
    if dropped:
        parts.append("it dropped " + ", ".join("{" + n + "}" for n in dropped))
    if added:
        parts.append("it added " + ", ".join("{" + n + "}" for n in added))
    return " and ".join(parts)


class ErrorDrivenSelector:
    """GEPA component selector: the fields that were wrong on the minibatch (all of them with
    ``parallel_fields``, else the most frequently wrong one), and every third step a prompt."""

    def __init__(self, parallel_fields: bool) -> None:
        self.parallel_fields = parallel_fields
        self.step = 0

    def __call__(
        self,
        state: Any,
        trajectories: list[Any],
        subsample_scores: list[float],
        candidate_idx: int,
        candidate: dict[str, str],
    ) -> list[str]:
        self.step += 1
        prompts = [c for c in PROMPTS if c in candidate]
        counts: dict[str, int] = {}
        for o in trajectories or []:
            if not isinstance(o, ExampleOutcome):
                continue
            for comp in candidate:
                if not comp.startswith(FIELD):
                    continue
                path = comp[len(FIELD):]
                if o.predicted is not None and any(
                    s < 1.0 and related(path, p) for p, s in o.score.fields.items()
                ):
                    counts[comp] = counts.get(comp, 0) + 1
        if prompts and (not counts or self.step % 3 == 0):
            return [prompts[(self.step // 3) % len(prompts)]]
        if not counts:
            return [sorted(candidate)[self.step % len(candidate)]]
        ranked = sorted(counts, key=lambda c: (-counts[c], -len(path_segments(c)), c))
        if self.parallel_fields:
            # the deepest wrong field explains its parents' errors: prefer leaves, keep parents too
            return ranked
        return [ranked[(self.step // 3) % len(ranked)]]


class _GepaLog:
    def log(self, message: str) -> None:
        log.debug("gepa: %s", message)


def run_texts(
    *,
    prompter: Any,
    state: PromptState,
    trainset: list[Example],
    gateway: Gateway,
    scorer: ExampleScorer,
    paths: Sequence[str],
    prompts: Sequence[str],
    reflect: Callable[[list[dict[str, Any]], dict[str, Any] | None, int | None], str],
    max_metric_calls: int,
    seed: int,
    parallel_fields: bool,
    num_threads: int,
    minibatch_size: int = 3,
    pareto_size: int = 32,
    on_event: Callable[[dict[str, Any]], None] | None = None,
    adapter_box: list[TextsAdapter] | None = None,
    reflect_window: int | None = None,
    **gepa_kwargs: Any,
) -> TextsResult:
    """One ``gepa.optimize`` run over the given components, starting from ``state``.

    Reflection minibatches come from the whole training split; candidates are compared (GEPA's Pareto
    front) on its first ``pareto_size`` examples. The validation split is never seen here.
    """
    import gepa

    stoppers = list(gepa_kwargs.pop("stop_callbacks", None) or [])
    stoppers.append(gepa.ScoreThresholdStopper(1.0))  # nothing left to learn from the training split
    pareto = trainset[: max(1, pareto_size)]
    descriptions = {**_defaults(prompter), **dict(state.field_descriptions)}
    seed_cand = seed_candidate(descriptions, state, paths, prompts)
    adapter = TextsAdapter(
        prompter=prompter,
        base_state=state,
        descriptions=descriptions,
        gateway=gateway,
        scorer=scorer,
        reflect=reflect,
        full_size=len(pareto),
        num_threads=num_threads,
        on_event=on_event,
        reflect_window=reflect_window,
        positions={id(ex): i for i, ex in enumerate(trainset)},
    )
    if adapter_box is not None:
        adapter_box.append(adapter)
    result = gepa.optimize(
        seed_candidate=seed_cand,
        trainset=trainset,
        valset=pareto,
        adapter=adapter,
        module_selector=ErrorDrivenSelector(parallel_fields),
        max_metric_calls=max_metric_calls,
        reflection_minibatch_size=max(1, min(minibatch_size, len(trainset))),
        seed=seed,
        logger=_GepaLog(),
        display_progress_bar=False,
        track_best_outputs=False,
        raise_on_exception=True,
        stop_callbacks=stoppers,
        **gepa_kwargs,
    )
    best = dict(result.best_candidate) if isinstance(result.best_candidate, dict) else seed_cand
    score = result.val_aggregate_scores[result.best_idx] if result.val_aggregate_scores else None
    return TextsResult(
        state=adapter.state_for(best),
        score=score,
        rejected=adapter.rejected,
        iterations=len(result.candidates),
        metric_calls=int(result.total_metric_calls or 0),
    )


def best_so_far(adapter: TextsAdapter) -> PromptState | None:
    cand = adapter.best.candidate
    return adapter.state_for(cand) if cand is not None else None


def _defaults(prompter: Any) -> dict[str, str]:
    from .._schema import default_descriptions

    return default_descriptions(prompter._base_schema)
