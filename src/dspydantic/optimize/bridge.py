"""The DSPy bridge: the Prompter's own backend as a ``dspy.LM``, the renderer as a DSPy adapter, and budgets.

Every LM request an optimization makes (the student's extractions, the optimizers' proposer prompts, the
LLM judge) goes through one :class:`Gateway`: a :class:`~dspydantic.lm.layers.BudgetedBackend` on top of the
Prompter's own backend stack (cache and retry layers), which counts requests and tokens against the run's
hard budgets. DSPy sees that gateway as a ``dspy.LM`` with a custom engine (the 3.4
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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .._example import Example
from .._inputs import InputDoc
from .._render import (
    DEFAULT_INSTRUCTION_PROMPT,
    Demo,
    OutputParseError,
    PromptState,
    Renderer,
    template_placeholders,
)
from .._tokens import estimate_message_tokens, estimate_tokens
from ..errors import ExtractionError
from ..lm._base import LMBackend, LMRequest, LMResponse, chat_params
from ..lm.layers import Budget, BudgetedBackend, BudgetExhausted
from ..lm.settings import ModelSettings

__all__ = ["Budget", "BudgetExhausted", "Gateway", "budgeted_prompter", "external_target"]

if TYPE_CHECKING:
    from .._prompter import Prompter

INPUT_FIELD = "document"
OUTPUT_FIELD = "extraction"
BRIDGE_MODEL = "dspydantic/bridge"


class CandidateRejected(ValueError):
    """A proposed instruction added or dropped a ``{placeholder}``: the candidate scores 0."""


# --------------------------------------------------------------------------------------------------
# budget and the gateway every request goes through
# --------------------------------------------------------------------------------------------------


class Gateway:
    """The one door to the LM during a run: a :class:`~dspydantic.lm.layers.BudgetedBackend` (``lm``) over the
    Prompter's own stack (cache + retries), or over another LM (``target``: a user's ``reflection_lm`` /
    ``prompt_model``, counted against the same budget but bypassing the Prompter's cache).

    ``vary=True`` (proposer prompts) gives the k-th identical request at temperature > 0 the sampling
    ``seed`` k, so that with the Prompter's cache on, n proposals are n different cached answers while a
    rerun still replays them in the same order.
    """

    def __init__(
        self,
        prompter: Prompter,
        budget: Budget,
        on_call: Callable[[dict[str, Any]], None] | None = None,
        target: Callable[[LMRequest], LMResponse] | None = None,
    ) -> None:
        self.prompter = prompter
        self.budget = budget
        self.on_call = on_call
        self.target = target
        inner: LMBackend = _TargetBackend(target) if target is not None else prompter._lm
        #: the budgeted backend: what a budgeted prompter's plan and the LLM judge call
        self.lm = BudgetedBackend(inner, budget, on_call=on_call)
        self._seen: dict[str, int] = {}
        self._seen_lock = threading.Lock()

    @property
    def closed(self) -> bool:
        return self.lm.closed

    def close(self, wait: float = 120.0) -> None:
        """Refuse every further request (raises :class:`BudgetExhausted` in whoever still calls) and wait
        up to ``wait`` seconds for the requests already sent (by worker threads an optimizer left running)."""
        self.lm.shut(wait)

    def call(self, request: LMRequest, *, vary: bool = False) -> LMResponse:
        if vary and self.prompter.cache is not None and (request.temperature or 0) > 0:
            key = hashlib.sha256(
                json.dumps([request.messages, request.temperature], sort_keys=True, default=str).encode()
            ).hexdigest()
            with self._seen_lock:
                k = self._seen.get(key, 0)
                self._seen[key] = k + 1
            if k:
                request = request.with_settings(seed=k)
        return self.lm.complete(request)

    def complete_text(
        self,
        messages: list[dict[str, Any]],
        *,
        temperature: float | None = None,
        json_schema: dict[str, Any] | None = None,
        max_tokens: int | None = None,
    ) -> str:
        """A completion for a reflection or proposer prompt: free text, or JSON following ``json_schema``
        (constrained decoding where the backend has it); ``max_tokens`` defaults to the Prompter's."""
        request = LMRequest(
            messages=messages,
            json_schema=json_schema,
            schema_name="proposal",
            settings=ModelSettings(
                temperature=temperature,
                max_tokens=max_tokens if max_tokens is not None else self.prompter.max_tokens,
            ),
        )
        response = self.call(request, vary=True)
        response.confirm()  # a proposal is free text: any answer is a usable one (the cache may keep it)
        return response.text


class _TargetBackend:
    """A proposal LM (a callable ``LMRequest -> LMResponse``) as a backend, for the budget layer."""

    cache_id = "external"
    context_window: int | None = None

    def __init__(self, fn: Callable[[LMRequest], LMResponse]) -> None:
        self.fn = fn

    def complete(self, request: LMRequest) -> LMResponse:
        return self.fn(request)

    async def acomplete(self, request: LMRequest) -> LMResponse:
        return await asyncio.to_thread(self.fn, request)

    def close(self) -> None:
        return None


def external_target(lm: Any) -> Callable[[LMRequest], LMResponse]:
    """A user's proposal LM as a gateway target: an :class:`~dspydantic.lm.LMBackend`, a ``dspy.LM``
    (called with the messages; usage read from its history when it reports it) or a plain callable
    ``str -> str`` (given the messages' text)."""
    if hasattr(lm, "complete") and hasattr(lm, "cache_id"):  # an LMBackend
        return lambda request: lm.complete(request)
    if hasattr(lm, "forward") or hasattr(lm, "kwargs"):  # a dspy.LM

        def call_dspy(request: LMRequest) -> LMResponse:
            kwargs: dict[str, Any] = {}
            if request.temperature is not None:
                kwargs["temperature"] = request.temperature
            if request.settings.seed is not None:
                kwargs["rollout_id"] = request.settings.seed
            out = lm(messages=request.messages, **kwargs)
            first = out[0] if isinstance(out, list) and out else out
            text = str(first.get("text", "") if isinstance(first, dict) else first)
            usage: Mapping[str, Any] = {}
            history = getattr(lm, "history", None)
            if isinstance(history, list) and history and isinstance(history[-1], Mapping):
                usage = history[-1].get("usage") or {}
            return LMResponse(
                text=text,
                prompt_tokens=int(usage.get("prompt_tokens") or estimate_message_tokens(request.messages)),
                completion_tokens=int(usage.get("completion_tokens") or estimate_tokens(text)),
            )

        return call_dspy
    if callable(lm):

        def call_plain(request: LMRequest) -> LMResponse:
            text = str(lm("\n\n".join(str(m.get("content", "")) for m in request.messages)))
            return LMResponse(
                text=text,
                prompt_tokens=estimate_message_tokens(request.messages),
                completion_tokens=estimate_tokens(text),
            )

        return call_plain
    from ..errors import ConfigurationError

    raise ConfigurationError(f"reflection_lm / prompt_model must be a dspy.LM, an LMBackend or a callable, got {lm!r}")


def budgeted_prompter(prompter: Prompter, state: PromptState, gateway: Gateway) -> Prompter:
    """A copy of ``prompter`` serving ``state`` whose LM stack is the gateway's budgeted one.

    It runs the Prompter's own extraction plan (renderer, re-asks, validation): a candidate is scored
    exactly as it will be served.
    """
    return prompter._derive(state=state, lm=gateway.lm)


# --------------------------------------------------------------------------------------------------
# documents: DSPy carries a string per example; the adapter maps it back to the real content
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DocEntry:
    content: str | list[dict[str, Any]]
    variables: Mapping[str, Any] | None
    text: str
    doc: InputDoc | None = None

    def input_doc(self) -> InputDoc:
        """The document the extraction plan runs on."""
        if self.doc is not None:
            return self.doc
        if isinstance(self.content, str):
            return InputDoc(parts=({"type": "text", "text": self.content},), text=self.content, kind="text",
                            variables=self.variables)
        return InputDoc(parts=tuple(self.content), text=self.text, kind="mixed", variables=self.variables)


class DocRegistry:
    """Maps the string DSPy carries as the ``document`` input back to the document (content, variables)."""

    def __init__(self, prompter: Prompter) -> None:
        self._prompter = prompter
        self._docs: dict[str, DocEntry] = {}

    def add(self, example: Example) -> str:
        doc = self._prompter._input(example)
        content = doc.as_content()
        variables = doc.variables
        if isinstance(content, str):
            key = content
        else:
            n = sum(1 for p in content if p.get("type") != "text")
            key = f"{doc.text}\n[{n} image(s); document {doc.fingerprint[:12]}]"
        self._docs[key] = DocEntry(content=content, variables=variables, text=doc.text, doc=doc)
        return key

    def get(self, key: str) -> DocEntry:
        entry = self._docs.get(key)
        return entry if entry is not None else DocEntry(content=key, variables=None, text=key)

    def __deepcopy__(self, memo: dict[int, Any]) -> DocRegistry:
        return self


def normalized_output(prompter: Prompter, expected: Mapping[str, Any]) -> dict[str, Any]:
    """A label as the model would answer it (validated and dumped), or as given if it does not validate."""
    try:
        return dict(prompter.model.model_validate(dict(expected)).model_dump(mode="json"))
    except Exception:  # a partial label is still a usable demo
        return dict(expected)


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

        async def acall(
            self,
            lm: Any,
            lm_kwargs: dict[str, Any],
            signature: Any,
            demos: list[Any],
            inputs: dict[str, Any],
        ) -> list[dict[str, Any]]:
            return await asyncio.to_thread(self.__call__, lm, lm_kwargs, signature, demos, inputs)

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
