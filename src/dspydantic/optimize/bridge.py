"""The DSPy bridge: the run's budgeted gateway as a ``dspy.LM``, and the renderer as a DSPy adapter.

Every LM request an optimization makes (the student's extractions, the optimizers' proposer prompts, the
LLM judge) goes through one :class:`~dspydantic.optimize.gateway.Gateway` (:mod:`.gateway`: the budget, no
DSPy). DSPy sees that gateway as a ``dspy.LM`` with a custom engine (the 3.4
``complete(Request) -> Response`` contract) and ``cache=False`` (DSPy's cache keys ignore the endpoint; ours
don't).

The student is a one-predictor ``dspy.Module``. Its ``forward`` scopes :class:`RendererAdapter` with
``dspy.context(adapter=...)``; the adapter runs the **Prompter's own extraction plan** (renderer, re-asks,
validation, chunking, the token-limit retry, usage accounting) for the candidate's prompt state, sending each
request through the LM DSPy handed it. So a candidate is scored exactly as inference serves it (the
signature's instructions are the instruction prompt, DSPy's demos become our :class:`Demo`\\ s) while the
optimizers' own proposer prompts keep DSPy's default adapter.

``dspy`` is imported inside functions only: this module is imported by :mod:`dspydantic.optimize.run`
when an optimization starts.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import hashlib
import json
import threading
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from .._example import Example
from .._render import (
    DEFAULT_INSTRUCTION_PROMPT,
    Demo,
    OutputParseError,
    PromptState,
    Renderer,
    template_placeholders,
)
from ..errors import ExtractionError
from ..lm._base import LMRequest, LMResponse, chat_params
from ..lm.settings import ModelSettings
from .documents import DocEntry, DocRegistry, normalized_output
from .gateway import Budget, BudgetExhausted, Gateway, budgeted_prompter, external_target

# the gateway's and documents' names are re-exported: they were imported from here before
__all__ = [
    "Budget",
    "BudgetExhausted",
    "CandidateLedger",
    "CandidateRejected",
    "DocRegistry",
    "Gateway",
    "StudentContext",
    "budgeted_prompter",
    "build_program",
    "external_target",
    "make_lm",
    "normalized_output",
]

if TYPE_CHECKING:
    from .._prompter import Prompter

INPUT_FIELD = "document"
OUTPUT_FIELD = "extraction"
BRIDGE_MODEL = "dspydantic/bridge"


class CandidateRejected(ValueError):
    """A proposed instruction added or dropped a ``{placeholder}``: the candidate scores 0."""


# --------------------------------------------------------------------------------------------------
# the student: context shared by all copies of the program
# --------------------------------------------------------------------------------------------------

#: the exact request the plan built for the current student call (read by the engine)
_EXACT_REQUEST: contextvars.ContextVar[LMRequest | None] = contextvars.ContextVar(
    "dspydantic_exact_request", default=None
)
#: where the engine puts our own answer to that request (usage, cache flag and cache hook intact)
_ANSWER: contextvars.ContextVar[list[LMResponse] | None] = contextvars.ContextVar("dspydantic_answer", default=None)


class StudentContext:
    """What the adapter needs to render a candidate: the model, the base prompt state (field descriptions
    and system prompt of the candidate) and the document registry. Shared, never deep-copied."""

    def __init__(self, prompter: Prompter, base_state: PromptState, registry: DocRegistry) -> None:
        # the student's answers count for their data only: no extra samples for the agreement signal (they
        # would cost confidence_samples more calls per prediction; validation scoring still samples)
        self.prompter = prompter._derive(confidence_samples=0) if prompter.confidence_samples else prompter
        self.base_state = base_state
        self.registry = registry
        original = base_state.instruction_prompt or DEFAULT_INSTRUCTION_PROMPT
        self.original_instruction = original
        self.instruction_placeholders = template_placeholders(original)
        self._renderers: dict[tuple[str, str], Renderer] = {}
        self._lock = threading.Lock()

    def __deepcopy__(self, memo: dict[int, Any]) -> StudentContext:
        return self

    def demos_from_dspy(self, demos: Sequence[Any]) -> tuple[Demo, ...]:
        out: list[Demo] = []
        for d in demos:
            getter = d.get if hasattr(d, "get") else (lambda k, _d=d: getattr(_d, k, None))
            doc = getter(INPUT_FIELD)
            output = getter(OUTPUT_FIELD)
            if not isinstance(doc, str) or not isinstance(output, Mapping):
                continue  # an unlabelled example cannot be a demo
            out.append(Demo(input=self.registry.get(doc).content, output=dict(output)))
        return tuple(out)

    def state_for(self, instructions: str, demos: Sequence[Any]) -> PromptState:
        if template_placeholders(instructions) != self.instruction_placeholders:
            raise CandidateRejected(
                "the proposed instruction changes the template placeholders "
                f"{sorted(self.instruction_placeholders)} -> {sorted(template_placeholders(instructions))}"
            )
        instruction: str | None = instructions
        if instructions == DEFAULT_INSTRUCTION_PROMPT and self.base_state.instruction_prompt is None:
            instruction = None
        return self.base_state.replace(instruction_prompt=instruction, demos=self.demos_from_dspy(demos))

    def renderer_for(self, instructions: str, demos: Sequence[Any]) -> Renderer:
        key = (instructions, _demos_key(demos))
        with self._lock:
            r = self._renderers.get(key)
        if r is None:
            state = self.state_for(instructions, demos)
            r = Renderer(self.prompter.model, state, base_schema=self.prompter._base_schema)
            with self._lock:
                if len(self._renderers) > 256:
                    self._renderers.clear()
                self._renderers[key] = r
        return r



#: attribute of a student prediction naming the program that made it: ``(instructions, demos)``
CANDIDATE_ATTR = "_dspydantic_candidate"


class CandidateLedger:
    """Scores of every student program the DSPy optimizers evaluated, from our metric's calls.

    DSPy's optimizers keep their best-so-far in local variables; when the budget stops one mid-run, the
    ledger still knows which (instruction, demos) pair scored best on the most examples it was evaluated on.
    Only evaluation-mode metric calls count (``trace is None``), not bootstrapping.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._scores: dict[tuple[str, str], dict[int, float]] = {}
        self._programs: dict[tuple[str, str], tuple[str, list[Any]]] = {}

    def record(self, prediction: Any, example_index: int, score: float) -> None:
        program = getattr(prediction, CANDIDATE_ATTR, None)
        if program is None:
            return
        instructions, demos = program
        key = (instructions, _demos_key(demos))
        with self._lock:
            self._programs.setdefault(key, (instructions, list(demos)))
            self._scores.setdefault(key, {})[example_index] = score

    def best(self) -> tuple[str, list[Any], float, int] | None:
        """``(instructions, demos, mean score, examples)`` of the best program among those evaluated on the
        most distinct examples (the first one recorded wins a tie), or ``None``."""
        with self._lock:
            if not self._scores:
                return None
            coverage = max(len(v) for v in self._scores.values())
            best_key, best_mean = None, -1.0
            for key, scores in self._scores.items():  # insertion order: first recorded first
                if len(scores) < coverage:
                    continue
                mean = sum(scores.values()) / len(scores)
                if mean > best_mean:
                    best_key, best_mean = key, mean
            assert best_key is not None
            instructions, demos = self._programs[best_key]
            return instructions, demos, best_mean, coverage


def _demos_key(demos: Sequence[Any]) -> str:
    items = []
    for d in demos:
        getter = d.get if hasattr(d, "get") else (lambda k, _d=d: getattr(_d, k, None))
        items.append([getter(INPUT_FIELD), getter(OUTPUT_FIELD)])
    return hashlib.sha256(json.dumps(items, sort_keys=True, default=str).encode()).hexdigest()


def _lm15_body(request: LMRequest, model: str) -> dict[str, Any]:
    return {"model": model, "messages": request.messages, **chat_params(request)}


def _from_lm15(request: Any) -> LMRequest:
    """An lm15 ``Request`` (a proposer prompt) as our provider-neutral request."""
    from dspy.clients.lm15_boundary import request_kwargs

    body = request_kwargs(request, "chat")
    fmt = body.get("response_format")
    schema = None
    name = "output"
    if isinstance(fmt, Mapping) and fmt.get("type") == "json_schema":
        js = fmt.get("json_schema") or {}
        schema = js.get("schema")
        name = str(js.get("name") or name)
    max_tokens = body.get("max_tokens", body.get("max_completion_tokens"))
    temperature = body.get("temperature")
    return LMRequest(
        messages=list(body.get("messages") or []),
        json_schema=schema,
        schema_name=name,
        settings=ModelSettings(
            temperature=float(temperature) if isinstance(temperature, int | float) else None,
            max_tokens=int(max_tokens) if max_tokens is not None else None,
        ),
        logprobs=bool(body.get("logprobs")),
    )


class _ThroughDSPy:
    """A backend sending the plan's exact requests through the ``dspy.LM`` DSPy handed the adapter.

    With our bridge LM the engine answers from the :class:`Gateway` and hands back our own
    :class:`LMResponse` (usage, cache flag, cache hook); any other ``dspy.LM`` answers DSPy's way."""

    cache_id = "dspy-student"
    context_window: int | None = None

    def __init__(self, lm: Any) -> None:
        self.lm = lm

    def complete(self, request: LMRequest) -> LMResponse:
        from dspy.lm15 import request_from_openai_chat

        box: list[LMResponse] = []
        exact, answer = _EXACT_REQUEST.set(request), _ANSWER.set(box)
        try:
            out = self.lm(request_from_openai_chat(_lm15_body(request, self.lm.model)))
        finally:
            _EXACT_REQUEST.reset(exact)
            _ANSWER.reset(answer)
        if box:
            return box[-1]
        usage = getattr(out, "usage", None)
        return LMResponse(
            text=getattr(out, "text", None) or "",
            prompt_tokens=int(getattr(usage, "input_tokens", 0) or 0),
            completion_tokens=int(getattr(usage, "output_tokens", 0) or 0),
            finish_reason=getattr(out, "finish_reason", None),
        )

    async def acomplete(self, request: LMRequest) -> LMResponse:
        return await asyncio.to_thread(self.complete, request)

    def close(self) -> None:
        return None


class BridgeEngine:
    """``dspy.LM`` custom engine: answers DSPy's canonical requests through the :class:`Gateway`."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    def complete(self, request: Any) -> Any:
        from dspy.lm15 import Message, Response, TextPart, Usage

        exact = _EXACT_REQUEST.get()
        if exact is not None:
            response = self.gateway.call(exact)
            box = _ANSWER.get()
            if box is not None:
                box.append(response)
        else:
            response = self.gateway.call(_from_lm15(request), vary=True)
        finish = "length" if response.finish_reason == "length" else "stop"
        return Response(
            id=None,
            model=request.model,
            message=Message.assistant([TextPart(response.text or "")]),
            finish_reason=finish,
            usage=Usage(
                input_tokens=response.prompt_tokens,
                output_tokens=response.completion_tokens,
                total_tokens=response.prompt_tokens + response.completion_tokens,
            ),
        )

    def stream(self, request: Any) -> Any:
        from dspy.lm15 import response_to_events

        return response_to_events(self.complete(request))

    def close(self) -> None:
        return None


class AsyncBridgeEngine:
    def __init__(self, sync: BridgeEngine) -> None:
        self.sync = sync

    async def complete(self, request: Any) -> Any:
        return await asyncio.to_thread(self.sync.complete, request)

    async def stream(self, request: Any) -> Any:
        for event in self.sync.stream(request):
            yield event

    async def aclose(self) -> None:
        return None


def make_lm(gateway: Gateway) -> Any:
    """The gateway as a ``dspy.LM`` (custom engine, DSPy cache and retries off: ours apply)."""
    import dspy

    engine = BridgeEngine(gateway)
    return dspy.LM(BRIDGE_MODEL, engine=engine, async_engine=AsyncBridgeEngine(engine), cache=False, num_retries=0)


# --------------------------------------------------------------------------------------------------
# DSPy classes (defined on first use so that importing this module does not import dspy)
# --------------------------------------------------------------------------------------------------


@functools.cache
def dspy_classes() -> tuple[type[Any], type[Any]]:
    """``(RendererAdapter, ExtractionProgram)``."""
    import dspy
    from dspy.adapters import Adapter
    from dspy.utils.exceptions import AdapterParseError

    class RendererAdapter(Adapter):
        """DSPy adapter that runs the Prompter's extraction plan with the candidate's renderer: the prompt
        is exactly :meth:`Renderer.messages`, the parser :meth:`Renderer.parse`, with inference's re-asks,
        chunking and token-limit retry."""

        def __init__(self, ctx: StudentContext) -> None:
            super().__init__()
            self.ctx = ctx

        def format(self, signature: Any, demos: list[Any], inputs: dict[str, Any]) -> list[dict[str, Any]]:
            renderer = self.ctx.renderer_for(signature.instructions, demos)
            entry = self.ctx.registry.get(str(inputs.get(INPUT_FIELD, "")))
            return renderer.messages(entry.content, entry.variables)

        def parse(self, signature: Any, completion: str) -> dict[str, Any]:
            renderer = self.ctx.renderer_for(signature.instructions, [])
            try:
                data = renderer.parse(completion)
            except OutputParseError as exc:
                raise AdapterParseError(
                    adapter_name=type(self).__name__,
                    signature=signature,
                    lm_response=completion,
                    message=exc.feedback,
                ) from exc
            return {OUTPUT_FIELD: data.model_dump(mode="json")}

        def __call__(
            self,
            lm: Any,
            lm_kwargs: dict[str, Any],
            signature: Any,
            demos: list[Any],
            inputs: dict[str, Any],
        ) -> list[dict[str, Any]]:
            renderer = self.ctx.renderer_for(signature.instructions, demos)
            entry = self.ctx.registry.get(str(inputs.get(INPUT_FIELD, "")))
            try:
                result = self.ctx.prompter._run_plan(entry.input_doc(), lm=_ThroughDSPy(lm), renderer=renderer)
            except ExtractionError as exc:
                raise AdapterParseError(
                    adapter_name=type(self).__name__,
                    signature=signature,
                    lm_response=exc.raw_output or "",
                    message=str(exc),
                ) from exc
            return [{OUTPUT_FIELD: result.data.model_dump(mode="json")}]

        async def acall(self, *args: Any, **kwargs: Any) -> list[dict[str, Any]]:
            """:meth:`__call__` (same arguments) in a worker thread."""
            return await asyncio.to_thread(self.__call__, *args, **kwargs)

    class ExtractionProgram(dspy.Module):
        """One ``dspy.Predict`` (document -> extraction) rendered by :class:`RendererAdapter`."""

        def __init__(self, ctx: StudentContext, instructions: str) -> None:
            super().__init__()
            self.ctx = ctx
            signature = dspy.Signature(
                {
                    INPUT_FIELD: (str, dspy.InputField(desc="the document to extract from")),
                    OUTPUT_FIELD: (dict, dspy.OutputField(desc="the extracted fields as a JSON object")),
                },
                instructions,
            )
            self.extract = dspy.Predict(signature)

        def forward(self, document: str) -> Any:
            program = (self.extract.signature.instructions, list(self.extract.demos or []))
            with dspy.context(adapter=RendererAdapter(self.ctx)):
                try:
                    prediction = self.extract(**{INPUT_FIELD: document})
                except (AdapterParseError, CandidateRejected) as exc:
                    # a wrong answer, not a crash: the metric scores it 0
                    prediction = dspy.Prediction(**{OUTPUT_FIELD: None}, error=str(exc)[:500])
            setattr(prediction, CANDIDATE_ATTR, program)  # for the CandidateLedger (not a prediction field)
            return prediction

    return RendererAdapter, ExtractionProgram


def build_program(ctx: StudentContext) -> Any:
    _, program_cls = dspy_classes()
    return program_cls(ctx, ctx.original_instruction)


def program_state(ctx: StudentContext, program: Any) -> PromptState:
    """The prompt state a compiled program stands for (raises :class:`CandidateRejected`)."""
    predictor = program.extract
    return ctx.state_for(predictor.signature.instructions, list(predictor.demos or []))


def to_dspy_examples(registry: DocRegistry, prompter: Prompter, examples: Sequence[Example]) -> list[Any]:
    """Our examples as ``dspy.Example``\\ s: the ``document`` input, the ``extraction`` label (normalised,
    used for demos) when labelled, and ``example_index`` (the metric scores against the original label)."""
    import dspy

    out = []
    for i, ex in enumerate(examples):
        key = registry.add(ex)
        expected = ex.expected_dict()
        data: dict[str, Any] = {INPUT_FIELD: key, "example_index": i}
        if expected is not None:
            data[OUTPUT_FIELD] = normalized_output(prompter, expected)
        out.append(dspy.Example(**data).with_inputs(INPUT_FIELD))
    return out


def demos_to_dspy(registry: DocRegistry, demos: Sequence[Demo]) -> list[Any]:
    """The Prompter's current demos as ``dspy.Example``\\ s (so instruction-only optimizers keep them)."""
    import dspy

    out = []
    for d in demos:
        if isinstance(d.input, str):
            key = d.input
            registry._docs.setdefault(key, DocEntry(content=d.input, variables=None, text=d.input))
        else:
            text = "\n".join(str(p.get("text", "")) for p in d.input if p.get("type") == "text")
            key = f"{text}\n[demo document {hashlib.sha256(repr(d.input).encode()).hexdigest()[:12]}]"
            registry._docs.setdefault(key, DocEntry(content=d.input, variables=None, text=text))
        out.append(dspy.Example(**{INPUT_FIELD: key, OUTPUT_FIELD: dict(d.output)}).with_inputs(INPUT_FIELD))
    return out
