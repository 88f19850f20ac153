"""The one renderer: prompt state + input -> chat messages; and the parser/validator of the answer.

Inference calls it directly; optimization hands it to DSPy as its adapter, so a candidate is scored with
exactly the prompt it will be served with. The static part (system prompt, instructions, field list, demos)
comes first and the document last, so a local model reuses the KV cache of the shared prefix.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ValidationError

from ._schema import apply_descriptions, default_descriptions, is_free_text, iter_field_paths, model_schema
from ._template import render_template, template_placeholders

if TYPE_CHECKING:
    from ._nearest import NearestDemos
    from ._retype import FieldTyper, Move

DEFAULT_SYSTEM_PROMPT = (
    "You are a careful information extraction system. You read a document and return the requested "
    "fields as one JSON object."
)
DEFAULT_INSTRUCTION_PROMPT = (
    "Extract the fields below from the user's document. Copy values as they appear in the document, "
    "convert them to the requested type, and use null for anything the document does not state."
)

@dataclass(frozen=True, slots=True)
class Demo:
    """One few-shot demonstration: the input as the user message, the JSON-safe output as the answer."""

    input: str | list[dict[str, Any]]
    output: dict[str, Any]

    def __post_init__(self) -> None:
        # dates, decimals, enums, models: stored JSON-safe, so rendering and saving never fail on them
        from pydantic_core import PydanticSerializationError, to_jsonable_python

        try:
            object.__setattr__(self, "output", to_jsonable_python(self.output))
        except PydanticSerializationError as exc:
            from .errors import ConfigurationError

            raise ConfigurationError(f"a demo's output must be JSON-serializable: {exc}") from None

    def to_json(self) -> dict[str, Any]:
        return {"input": self.input, "output": self.output}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Demo:
        return cls(input=data["input"], output=dict(data["output"]))


@dataclass(frozen=True, slots=True)
class PromptState:
    """Everything optimization may change. Plain data: this is what a saved prompter stores."""

    system_prompt: str | None = None
    instruction_prompt: str | None = None
    field_descriptions: Mapping[str, str] = field(default_factory=dict)
    demos: tuple[Demo, ...] = ()
    #: choice field path -> JSON value -> additive logit bias at the value's first token (fitted by
    #: ``optimize()`` on backends that decode with logits, see :mod:`dspydantic._choices`)
    choice_bias: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    #: demos chosen per input: after ``demos``, the ``nearest_demos`` demos of ``demo_pool`` whose words
    #: are most like the document's (see :mod:`dspydantic._nearest`); 0 shows ``demos`` only
    demo_pool: tuple[Demo, ...] = ()
    nearest_demos: int = 0
    #: top-level string field -> the values its labels had (fitted by ``optimize()``): a value the answer
    #: put in the wrong one of these fields is moved to the one it fits (see :mod:`dspydantic._retype`)
    field_values: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        from ._nearest import MAX_NEAREST

        k = self.nearest_demos
        if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k <= MAX_NEAREST:
            from .errors import ConfigurationError

            raise ConfigurationError(f"nearest_demos must be a whole number from 0 to {MAX_NEAREST}, got {k!r}")
        for name, typed in dict(self.field_values).items():  # as load() accepts them
            if isinstance(typed, (str, bytes)) or not all(isinstance(v, str) for v in typed):
                from .errors import ConfigurationError

                raise ConfigurationError(f"field_values[{name!r}] must be a list of strings, got {typed!r}")
        if self.choice_bias:  # what load() accepts, checked where a state is made (a save would not load)
            from ._choices import MAX_BIAS
            from .errors import ConfigurationError

            for path, values in self.choice_bias.items():
                for value, bias in dict(values).items():
                    b = bias if isinstance(bias, (int, float)) and not isinstance(bias, bool) else None
                    if b is None or not abs(float(b)) <= MAX_BIAS:
                        raise ConfigurationError(
                            f"choice_bias[{path!r}][{value!r}] must be a number within ±{MAX_BIAS}, got {bias!r}"
                        )

    def replace(self, **changes: Any) -> PromptState:
        for key in ("demos", "demo_pool"):
            if key in changes:
                changes[key] = tuple(changes[key])
        if "field_values" in changes:
            changes["field_values"] = {str(k): v if isinstance(v, (str, bytes)) else tuple(v)
                                       for k, v in dict(changes["field_values"]).items()}
        return dataclasses.replace(self, **changes)


class OutputParseError(ValueError):
    """The answer is not valid JSON for the model; ``feedback`` is what the re-ask tells the LM."""

    def __init__(self, feedback: str, errors: list[Any]) -> None:
        super().__init__(feedback)
        self.feedback = feedback
        self.errors = errors


def fill_template(template: str, variables: Mapping[str, Any] | None) -> str:
    """Fill ``{name}`` placeholders (``{{``/``}}`` and JSON such as ``{"a": 1}`` stay literal)."""
    return render_template(template, variables or {})


def _field_list(schema: dict[str, Any]) -> str:
    lines = []
    for f in iter_field_paths(schema):
        req = "required" if f.required else "optional"
        desc = f": {f.description}" if f.description else ""
        lines.append(f"- {f.path} ({f.type_hint}, {req}){desc}")
    return "\n".join(lines)


class Renderer:
    """Renders messages for one model and one :class:`PromptState`; parses and validates answers."""

    def __init__(self, model: type[BaseModel], state: PromptState, *, base_schema: dict[str, Any] | None = None):
        self.model = model
        #: free-text mode: an answer that is not JSON is the ``output`` itself
        self.free_text = is_free_text(model)
        self.state = state
        self.base_schema = base_schema if base_schema is not None else model_schema(model)
        self.descriptions = {**default_descriptions(self.base_schema), **dict(state.field_descriptions)}
        #: the schema sent as structured-output constraint (carries the current field descriptions)
        self.schema = apply_descriptions(self.base_schema, self.descriptions)
        if state.choice_bias:
            from ._choices import apply_choice_bias

            self.schema = apply_choice_bias(self.schema, state.choice_bias)
        self.schema_name = re.sub(r"[^A-Za-z0-9_-]", "_", model.__name__)[:64] or "output"
        self._system = state.system_prompt or DEFAULT_SYSTEM_PROMPT
        self._instruction = state.instruction_prompt or DEFAULT_INSTRUCTION_PROMPT
        self.placeholders = template_placeholders(self._system) | template_placeholders(self._instruction)
        self._prefix: list[dict[str, Any]] | None = None if self.placeholders else self._build_prefix(None)
        self._nearest: NearestDemos | None = None  # built on first use
        self._typer: FieldTyper | None = None  # built on first use
        self._typer_built = False

    @property
    def nearest(self) -> NearestDemos | None:
        """The index of the state's demo pool when it chooses demos per input, else None."""
        if self._nearest is None and self.state.nearest_demos and self.state.demo_pool:
            from ._nearest import NearestDemos

            self._nearest = NearestDemos(self.state.demo_pool)
        return self._nearest

    @property
    def typer(self) -> FieldTyper | None:
        """The field typing of the state's ``field_values`` (over the schema's nullable top-level string
        fields only; see :mod:`dspydantic._retype`), else None."""
        if not self._typer_built:
            self._typer_built = True
            if self.state.field_values:
                from ._retype import FieldTyper, retypable_fields

                allowed = set(retypable_fields(self.base_schema))
                fitted = {f: v for f, v in self.state.field_values.items() if f in allowed}
                self._typer = FieldTyper(fitted) if len(fitted) >= 2 else None  # one field: nowhere to move
        return self._typer

    def retyped(self, data: BaseModel) -> tuple[BaseModel, list[Move]]:
        """A validated answer corrected by the state's field typing, and the moves made (``data`` and none
        when the state has no typing)."""
        typer = self.typer
        if typer is None:
            return data, []
        from ._retype import retype_model

        return retype_model(typer, self.model, data)

    # -- rendering -----------------------------------------------------------------------------------
    def _build_prefix(self, variables: Mapping[str, Any] | None) -> list[dict[str, Any]]:
        system = fill_template(self._system, variables)
        instruction = fill_template(self._instruction, variables)
        content = (
            f"{system}\n\n{instruction}\n\nFields:\n{_field_list(self.schema)}\n\n"
            "Answer with only the JSON object, no prose."
        )
        return [{"role": "system", "content": content}, *_demo_messages(self.state.demos)]

    def messages(
        self, content: str | Sequence[dict[str, Any]], variables: Mapping[str, Any] | None = None
    ) -> list[dict[str, Any]]:
        """The chat messages for one document (``content``: text or OpenAI content parts)."""
        prefix = self._prefix if self._prefix is not None else self._build_prefix(variables)
        user = content if isinstance(content, str) else list(content)
        nearest = self.nearest
        if nearest is not None:  # after the fixed demos (a prefix the local backend's KV cache keeps)
            prefix = [*prefix, *_demo_messages(nearest.pick(user, self.state.nearest_demos))]
        return [*prefix, {"role": "user", "content": user}]

    @staticmethod
    def reask(messages: list[dict[str, Any]], raw: str, error: OutputParseError) -> list[dict[str, Any]]:
        """Messages for a re-ask: the previous answer and what was wrong with it."""
        return [
            *messages,
            {"role": "assistant", "content": raw},
            {
                "role": "user",
                "content": "Your answer was not valid:\n"
                f"{error.feedback}\nReply with only the corrected JSON object.",
            },
        ]

    # -- parsing -------------------------------------------------------------------------------------
    def parse(self, text: str) -> BaseModel:
        """Validate an answer into the user's model, or raise :class:`OutputParseError`."""
        try:
            return self.model.model_validate_json(text)
        except ValidationError as exc:
            if not all(e.get("type") == "json_invalid" for e in exc.errors()):
                return self._validate_numbers(text, exc)
        obj = extract_json(text)
        if obj is None:
            if self.free_text:
                return self.model(output=text.strip())
            raise OutputParseError("The answer is not a JSON object.", [{"type": "json_invalid"}])
        try:
            return self.model.model_validate(obj)
        except ValidationError as exc:
            return self._validate_numbers(obj, exc)

    def _validate_numbers(self, answer: str | dict[str, Any], exc: ValidationError) -> BaseModel:
        """After a validation error: the answer with numbers written as document text (``"1.200,50"``)
        read as numbers (:mod:`dspydantic._numbers`), else the error for the re-ask."""
        from ._numbers import coerce_number_strings

        obj = extract_json(answer) if isinstance(answer, str) else answer
        fixed, changed = coerce_number_strings(obj, self.base_schema) if isinstance(obj, dict) else (obj, 0)
        if changed:
            try:
                return self.model.model_validate(fixed)
            except ValidationError as again:
                exc = again
        raise OutputParseError(_describe(exc), exc.errors(include_url=False)) from None


def _demo_messages(demos: Sequence[Demo]) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []
    for demo in demos:
        messages.append({"role": "user", "content": demo.input})
        messages.append({"role": "assistant", "content": json.dumps(demo.output, ensure_ascii=False)})
    return messages


_FENCE = re.compile(r"```(?:json)?\s*(.*?)```", re.DOTALL)


def extract_json(text: str) -> Any:
    """The first JSON object in ``text`` (code fences and surrounding prose tolerated), or None."""
    candidates = [m.group(1) for m in _FENCE.finditer(text)] + [text]
    decoder = json.JSONDecoder()
    for cand in candidates:
        start = cand.find("{")
        while start != -1:
            try:
                obj, _ = decoder.raw_decode(cand, start)
                if isinstance(obj, dict):
                    return obj
            except json.JSONDecodeError:
                pass
            start = cand.find("{", start + 1)
    return None


def _describe(exc: ValidationError, limit: int = 12) -> str:
    lines = []
    for e in exc.errors(include_url=False)[:limit]:
        loc = ".".join(str(x) for x in e.get("loc", ())) or "(root)"
        got = e.get("input")
        got_s = json.dumps(got, default=str)[:80] if not isinstance(got, dict) else "{...}"
        lines.append(f"- {loc}: {e.get('msg')} (got {got_s})")
    return "\n".join(lines)
