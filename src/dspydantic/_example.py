"""``Example``: one labelled (or unlabelled) input for optimization and evaluation."""

from __future__ import annotations

import base64
from typing import Any, Unpack

from pydantic import BaseModel

from ._inputs import INPUT_KEYS, INPUT_OPTIONS, SOURCE_KEYS, InputOptions, check_input_options
from .errors import ConfigurationError, LabelError

__all__ = ["INPUT_KEYS", "Example", "check_labels"]


class Example:
    """An input and, optionally, the output expected from it.

    ``expected_output`` may be a dict, an instance of the model, a string (free-text mode, compared to
    ``{"output": s}``) or ``None`` (unlabelled: scored by an LLM judge). ``text`` may be a string or a dict
    of template variables. The other input keywords are those of ``Prompter.run`` (one spec,
    :class:`dspydantic._inputs.InputOptions`): ``image_path``, ``image_base64``, ``image_bytes``, ``image``,
    ``image_mime``, ``pdf_path``, ``pdf_bytes``, ``pdf_mode``, ``pdf_dpi``, ``max_pdf_pages``; they are
    checked when the Example is built and readable as attributes (``example.pdf_dpi``; ``None`` when not
    given). Positionally it is ``Example(text, expected_output)``; dspydantic 0.1's positional order
    ``Example(expected_output, text)`` is recognised when the first is a dict or a model and the second a
    string (keyword arguments are taken as given).
    """

    __slots__ = ("expected_output", "inputs", "text")

    text: str | dict[str, Any] | None
    expected_output: dict[str, Any] | BaseModel | str | None
    #: the input keywords given besides ``text`` (``None`` values left out)
    inputs: dict[str, Any]

    def __init__(
        self,
        *args: Any,
        text: str | dict[str, Any] | None = None,
        expected_output: dict[str, Any] | BaseModel | str | None = None,
        **inputs: Unpack[InputOptions],
    ) -> None:
        # positionally: Example(text, expected_output), or dspydantic 0.1's Example(expected_output, text)
        # when the first is a label (dict or model) and the second a string; keywords are never reordered
        if len(args) > 2:
            raise TypeError(f"Example takes at most 2 positional arguments (text, expected_output), got {len(args)}")
        if (args and text is not None) or (len(args) == 2 and expected_output is not None):
            raise TypeError("Example got text or expected_output both positionally and by keyword")
        if len(args) == 2:
            text, expected_output = args
            if isinstance(expected_output, str) and isinstance(text, (dict, BaseModel)):
                text, expected_output = expected_output, text
        elif args:
            text = args[0]
        if isinstance(text, BaseModel):
            raise ConfigurationError("Example text must be a string or a dict of template variables")
        check_input_options(inputs)
        self.text = text
        self.expected_output = expected_output
        self.inputs = {k: v for k, v in inputs.items() if v is not None}
        if text is None and not SOURCE_KEYS & set(self.inputs):
            raise ConfigurationError(
                "an Example needs an input: text, image_path, image_base64, image_bytes, image, pdf_path or pdf_bytes"
            )

    def __getattr__(self, name: str) -> Any:
        # the input keywords read as attributes (example.image_path, example.pdf_dpi, ...)
        if name in INPUT_OPTIONS:
            try:
                return object.__getattribute__(self, "inputs").get(name)
            except AttributeError:  # not initialised (e.g. while unpickling)
                return None
        raise AttributeError(f"'Example' object has no attribute {name!r}")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Example):
            return NotImplemented
        return (self.text, self.expected_output, self.inputs) == (other.text, other.expected_output, other.inputs)

    __hash__ = None  # type: ignore[assignment]  # mutable, like the dataclass it was

    def __getstate__(self) -> dict[str, Any]:
        return {"text": self.text, "expected_output": self.expected_output, "inputs": self.inputs}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.text = state["text"]
        self.expected_output = state["expected_output"]
        self.inputs = dict(state.get("inputs") or {})

    def __repr__(self) -> str:
        extra = "".join(f", {k}={v!r}" for k, v in self.inputs.items() if k not in ("image_bytes", "pdf_bytes"))
        return f"Example(text={self.text!r}, expected_output={self.expected_output!r}{extra})"

    def input_kwargs(self) -> dict[str, Any]:
        """The keyword arguments ``Prompter.predict`` takes for this example's input."""
        kw: dict[str, Any] = {"text": self.text} if self.text is not None else {}
        kw.update(self.inputs)
        return kw

    def expected_dict(self) -> dict[str, Any] | None:
        """The label as a JSON-safe dict (``None`` when unlabelled)."""
        exp = self.expected_output
        if exp is None:
            return None
        if isinstance(exp, BaseModel):
            return exp.model_dump(mode="json")
        if isinstance(exp, str):
            return {"output": exp}
        from pydantic_core import to_jsonable_python

        return dict(to_jsonable_python(exp))

    # -- dspydantic 0.1 names --------------------------------------------------------------------------
    @property
    def text_dict(self) -> dict[str, Any]:
        """The template variables when ``text`` is a dict, else ``{}`` (dspydantic 0.1's name)."""
        return dict(self.text) if isinstance(self.text, dict) else {}

    @property
    def input_data(self) -> dict[str, Any]:
        """What the LM is shown for this example, in dspydantic 0.1's shape: ``{"text": ...}`` and/or
        ``{"images": [base64, ...]}`` (files are read and PDFs rendered now; a PDF with a text layer gives
        its text, as the extraction sends it, where 0.1 always sent page images)."""
        from ._inputs import build_input

        doc = build_input(**self.input_kwargs())
        out: dict[str, Any] = {}
        if doc.text:
            out["text"] = doc.text
        images = [_base64_of(p["image_url"]["url"]) for p in doc.parts if p.get("type") == "image_url"]
        if images:
            out["images"] = images
        return out


def _base64_of(data_url: str) -> str:
    head, _, payload = data_url.partition(",")
    return payload if head.endswith(";base64") else base64.b64encode(payload.encode()).decode("ascii")


# -- labels against the model ----------------------------------------------------------------------------


def check_labels(model: type[BaseModel], examples: Any, *, what: str = "example") -> None:
    """Raise :class:`~dspydantic.errors.LabelError` for the first example whose label does not fit ``model``:
    a key the model does not have (``"vendr"``), or a value its field cannot hold (``"ten"`` for a float).
    Run before any LM call by ``optimize()`` and ``evaluate()``, so a typo is not scored as a phantom 0.

    A required field missing from a label is an error too (it would be scored against ``None``); numbers may
    be written as documents write them (``"1.200,50"``, see :mod:`dspydantic._numbers`) and unlabelled examples
    (``expected_output=None``, scored by a judge) are skipped."""
    from pydantic import ValidationError

    from ._numbers import coerce_number_strings
    from ._schema import model_schema

    schema = model_schema(model)
    free_text = set(model.model_fields) == {"output"}
    for index, ex in enumerate(examples):
        exp = getattr(ex, "expected_output", None)
        if exp is None or (isinstance(exp, str) and free_text):
            continue
        where = f"{what} {index}"
        if isinstance(exp, str):
            raise LabelError(
                f"{where}: expected_output is a string, but {model.__name__} is not a free-text model; "
                "give a dict of its fields (or an instance of it)",
                index=index, field=None, reason="a string label for a structured model",
            )
        if isinstance(exp, BaseModel) and isinstance(exp, model):
            continue
        label = ex.expected_dict()
        if not isinstance(label, dict):
            raise LabelError(f"{where}: expected_output must be a dict, a {model.__name__} or None",
                             index=index, field=None, reason="not a dict")
        unknown = _unknown_keys(label, schema, model, "")
        if unknown:
            path, known = unknown
            raise LabelError(
                f"{where}: expected_output has the field {path!r}, which {model.__name__} does not have "
                f"(its fields there: {', '.join(sorted(known)) or 'none'})",
                index=index, field=path, reason="unknown field",
            )
        fixed, _ = coerce_number_strings(label, schema)
        try:
            model.model_validate(fixed)
        except ValidationError as exc:
            bad = exc.errors(include_url=False)
            if bad:
                e = bad[0]
                path = ".".join(str(x) for x in e.get("loc", ()))
                if e.get("type") == "missing":
                    raise LabelError(
                        f"{where}: expected_output has no {path!r}, a required field of {model.__name__} (it would "
                        "be scored against None; label it, or make the field optional)",
                        index=index, field=path, reason="required field missing",
                    ) from None
                got = repr(e.get("input"))[:60]
                raise LabelError(
                    f"{where}: expected_output[{path!r}] = {got} does not fit {model.__name__}: {e.get('msg')}",
                    index=index, field=path, reason=str(e.get("msg")),
                ) from None


def _unknown_keys(value: Any, node: Any, model: type[BaseModel] | None, prefix: str) -> tuple[str, set[str]] | None:
    """The first key of ``value`` the schema ``node`` has no property for, with the known ones there."""
    if not isinstance(node, dict):
        return None
    variants = [node, *(v for k in ("anyOf", "oneOf", "allOf") for v in node.get(k) or [] if isinstance(v, dict))]
    if isinstance(value, dict):
        props: dict[str, Any] = {}
        open_dict: dict[str, Any] | None = None
        closed = False
        for v in variants:
            if isinstance(v.get("properties"), dict):
                props.update(v["properties"])
                closed = closed or v.get("additionalProperties") is not True
            elif isinstance(v.get("additionalProperties"), dict):
                open_dict = v["additionalProperties"]
        if model is not None and model.model_config.get("extra") == "allow":
            closed = False
        names = dict(props)
        if model is not None:  # the Python names of aliased fields are accepted too
            for name, f in model.model_fields.items():
                if f.alias and f.alias in props:
                    names.setdefault(name, props[f.alias])
        for key, sub in value.items():
            if key in names:
                found = _unknown_keys(sub, names[key], None, f"{prefix}{key}.")
            elif open_dict is not None:
                found = _unknown_keys(sub, open_dict, None, f"{prefix}{key}.")
            elif closed and props:
                return f"{prefix}{key}", set(props)
            else:
                found = None
            if found:
                return found
    elif isinstance(value, list):
        items = [v["items"] for v in variants if isinstance(v.get("items"), dict)]
        if items:
            for i, sub in enumerate(value):
                found = _unknown_keys(sub, items[0], None, f"{prefix.rstrip('.')}[{i}].")
                if found:
                    return found
    return None
