"""dspydantic 0.1 names on the Prompter: ``optimized_*`` constructor arguments and attributes,
``from_optimization_result``, 0.1 field paths and demos, and the renamed ``save``/``load`` keywords.

Everything here maps an old name onto the Prompter's one prompt state (:class:`~dspydantic._render.PromptState`);
nothing here calls an LM. See docs/migrating-from-0.1.md for the table of old names.
"""

from __future__ import annotations

import base64
import os
import sys
import warnings
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic import BaseModel

from .errors import ConfigurationError

if TYPE_CHECKING:
    from ._prompter import Prompter
    from ._render import Demo, PromptState

__all__ = [
    "LEGACY_INIT_KEYS",
    "LegacyPrompterAPI",
    "apply_legacy_init",
    "demo_from_legacy",
    "legacy_demo_json",
    "our_paths",
    "pop_legacy_init",
    "renamed_path",
    "warn_deprecated",
]

#: dspydantic 0.1's ``Prompter(...)`` arguments for a loaded or optimized state
LEGACY_INIT_KEYS = (
    "optimized_descriptions",
    "optimized_system_prompt",
    "optimized_instruction_prompt",
    "optimized_demos",
)

P = TypeVar("P", bound="LegacyPrompterAPI")


_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


def _user_stacklevel() -> int:
    """The ``stacklevel`` that points a warning raised by our caller at the first frame outside dspydantic."""
    frame = sys._getframe(2)
    level = 2
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(_PACKAGE_DIR):
        frame = frame.f_back  # type: ignore[assignment]
        level += 1
    return level


def warn_deprecated(old: str, replacement: str) -> None:
    """A :class:`DeprecationWarning` that names the replacement of a dspydantic 0.1 name, pointed at the
    user's line."""
    warnings.warn(f"{old} is from dspydantic 0.1: {replacement}", DeprecationWarning, stacklevel=_user_stacklevel())


def renamed_path(verb: str, path: Any, old_name: str, old_value: Any) -> str | os.PathLike[str]:
    """``save(save_path=...)`` / ``load(load_path=...)``: the 0.1 keyword, with a warning naming ``path``."""
    if old_value is not None:
        if path is not None:
            raise ConfigurationError(f"{verb}() takes path or its old name {old_name}, not both")
        warn_deprecated(f"{verb}({old_name}=...)", f"use {verb}(path) (the same directory)")
        path = old_value
    if path is None:
        raise ConfigurationError(f"{verb}() needs the directory: {verb}(path)")
    if not isinstance(path, (str, os.PathLike)):
        raise ConfigurationError(f"{verb}() needs a directory path (str or os.PathLike), got {type(path).__name__}")
    return path


# --------------------------------------------------------------------------------------------------
# field paths and demos


def our_paths(schema: dict[str, Any], descriptions: Mapping[str, Any], what: str) -> dict[str, str]:
    """Field descriptions keyed by our paths (``items[].name``); 0.1's paths (``items.name``) are
    translated; a path the model does not have raises :class:`ConfigurationError` naming it."""
    from ._schema import iter_field_paths, legacy_path, legacy_paths

    if not isinstance(descriptions, Mapping):
        raise ConfigurationError(f"{what} must be a dict of field path -> description")
    ours = {f.path for f in iter_field_paths(schema)}
    legacy = legacy_paths(schema)
    out: dict[str, str] = {}
    unknown = []
    described = {f.path for f in iter_field_paths(schema) if f.description}
    for key, desc in descriptions.items():
        path = str(key) if str(key) in ours else legacy.get(str(key))
        if path is None:
            unknown.append(str(key))
            continue
        if not isinstance(desc, str):
            raise ConfigurationError(f"{what}[{key!r}] must be a string, got {type(desc).__name__}")
        if path not in described and desc == legacy_path(path.rsplit(".", 1)[-1]):
            continue  # 0.1 wrote the field name where a field had no description: not a description
        out[path] = desc
    if unknown:
        raise ConfigurationError(f"{what} names field(s) the model does not have: {sorted(unknown)}; "
                                 f"its fields are {sorted(ours)}")
    return out


def demo_from_legacy(raw: Any) -> Demo:
    """A demo from 0.1's ``{"input_data": {"text": ..., "images": [...]}, "expected_output": ...}`` (our
    ``{"input": ..., "output": ...}`` and :class:`Demo` objects are accepted too)."""
    from ._render import Demo
    from .persist.legacy import legacy_demo as _legacy_demo

    if isinstance(raw, Demo):
        return raw
    if isinstance(raw, Mapping) and "input" in raw and "output" in raw:
        return Demo.from_json(raw)
    if isinstance(raw, Mapping) and isinstance(raw.get("expected_output"), BaseModel):
        raw = {**raw, "expected_output": raw["expected_output"].model_dump(mode="json")}
    demo = _legacy_demo(dict(raw)) if isinstance(raw, Mapping) else None
    if demo is None:
        raise ConfigurationError(
            "a demo must be {'input_data': {'text': ...}, 'expected_output': {...}} (dspydantic 0.1), "
            f"{{'input': ..., 'output': {{...}}}} or a Demo; got {raw!r:.200}"
        )
    return demo


def legacy_demo_json(demo: Demo) -> dict[str, Any]:
    """0.1's shape of a demo: ``{"input_data": {"text": ..., "images": [base64, ...]}, "expected_output": ...}``."""
    data: dict[str, Any] = {}
    if isinstance(demo.input, str):
        data["text"] = demo.input
    else:
        texts = [p.get("text", "") for p in demo.input if p.get("type") == "text"]
        images = []
        for p in demo.input:
            if p.get("type") == "image_url":
                head, _, payload = str(p["image_url"]["url"]).partition(",")
                images.append(payload if head.endswith(";base64") else base64.b64encode(payload.encode()).decode())
        if texts:
            data["text"] = "\n\n".join(texts)
        if images:
            data["images"] = images
    return {"input_data": data, "expected_output": demo.output}


# --------------------------------------------------------------------------------------------------
# the Prompter's 0.1 constructor arguments


def pop_legacy_init(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Remove 0.1's ``optimized_*`` arguments from the Prompter's keyword arguments (in place)."""
    return {k: kwargs.pop(k) for k in LEGACY_INIT_KEYS if k in kwargs}


def apply_legacy_init(prompter: Prompter, legacy: Mapping[str, Any]) -> None:
    """0.1's ``Prompter(optimized_descriptions=..., optimized_system_prompt=..., ...)``: the prompts the
    Prompter serves; ``system_prompt`` / ``instruction_prompt`` stay its original prompts (as in 0.1)."""
    changes: dict[str, Any] = {}
    if legacy.get("optimized_descriptions"):
        given = our_paths(prompter._base_schema, legacy["optimized_descriptions"], "optimized_descriptions")
        changes["field_descriptions"] = {**dict(prompter.state.field_descriptions), **given}
    prompts = (("optimized_system_prompt", "system_prompt"), ("optimized_instruction_prompt", "instruction_prompt"))
    for old, new in prompts:
        value = legacy.get(old)
        if value is not None:
            if not isinstance(value, str):
                raise ConfigurationError(f"{old} must be a string, got {type(value).__name__}")
            changes[new] = value
    if legacy.get("optimized_demos") is not None:
        demos = legacy["optimized_demos"]
        if isinstance(demos, (str, bytes, Mapping)) or not isinstance(demos, Sequence):
            raise ConfigurationError("optimized_demos must be a list of demos")
        changes["demos"] = [demo_from_legacy(d) for d in demos]
    if changes:
        prompter.state = prompter.state.replace(**changes)


# --------------------------------------------------------------------------------------------------
# the Prompter's 0.1 attributes


class LegacyPrompterAPI:
    """dspydantic 0.1's attributes of a Prompter, as views of (and writes to) its prompt state.

    The ``optimized_*`` attributes are empty (``{}`` / ``None``) until there is an optimized state, as in
    0.1 before ``optimize()``; after an optimization (or a load of an optimized prompter, or
    ``Prompter(optimized_...=...)``) they show what the Prompter serves.
    """

    def _legacy_view(self) -> PromptState | None:
        """The served state once there is an optimized one (after ``optimize()``, a load, or 0.1's
        ``optimized_*`` arguments), else ``None`` (0.1's attributes were empty until then)."""
        p: Prompter = self  # type: ignore[assignment]
        optimized = p.optimization_result is not None or p.state != p._original_state
        return p.state if optimized else None

    @property
    def optimized_descriptions(self) -> dict[str, str]:
        """Every field path's description as served (``{}`` before any optimization)."""
        p: Prompter = self  # type: ignore[assignment]
        return dict(p.renderer.descriptions) if self._legacy_view() is not None else {}

    @optimized_descriptions.setter
    def optimized_descriptions(self, value: Mapping[str, str]) -> None:
        p: Prompter = self  # type: ignore[assignment]
        given = our_paths(p._base_schema, value or {}, "optimized_descriptions")
        p.state = p.state.replace(field_descriptions={**dict(p._original_state.field_descriptions), **given})

    @property
    def optimized_system_prompt(self) -> str | None:
        view = self._legacy_view()
        return view.system_prompt if view is not None else None

    @optimized_system_prompt.setter
    def optimized_system_prompt(self, value: str | None) -> None:
        p: Prompter = self  # type: ignore[assignment]
        p.state = p.state.replace(system_prompt=value if value is not None else p._original_state.system_prompt)

    @property
    def optimized_instruction_prompt(self) -> str | None:
        view = self._legacy_view()
        return view.instruction_prompt if view is not None else None

    @optimized_instruction_prompt.setter
    def optimized_instruction_prompt(self, value: str | None) -> None:
        p: Prompter = self  # type: ignore[assignment]
        original = p._original_state.instruction_prompt
        p.state = p.state.replace(instruction_prompt=value if value is not None else original)

    @property
    def optimized_demos(self) -> list[dict[str, Any]] | None:
        """The served demos in 0.1's shape plus ours (``input``/``output``); ``None`` before any optimization."""
        view = self._legacy_view()
        if view is None:
            return None
        return [{**d.to_json(), **legacy_demo_json(d)} for d in view.demos]

    @optimized_demos.setter
    def optimized_demos(self, value: Sequence[Any] | None) -> None:
        p: Prompter = self  # type: ignore[assignment]
        demos = [demo_from_legacy(d) for d in value] if value else list(p._original_state.demos)
        p.state = p.state.replace(demos=demos)

    @classmethod
    def from_optimization_result(
        cls: type[P], model: type[BaseModel] | None, optimization_result: Any, **kwargs: Any
    ) -> P:
        """0.1's constructor from an optimization result: a Prompter for ``model`` serving the result's
        prompts (the LM comes from ``kwargs`` — ``model_id=``, ``lm=`` — or ``dspy.configure``, as in
        0.1). Takes our :class:`~dspydantic.optimize.OptimizationResult` or any object with 0.1's
        ``optimized_*`` attributes."""
        prompter = cls(model, **kwargs)  # type: ignore[call-arg]
        p: Prompter = prompter  # type: ignore[assignment]
        state = getattr(optimization_result, "state", None)
        from ._render import PromptState

        if isinstance(state, PromptState):
            p.state = state
        else:
            apply_legacy_init(p, {k: getattr(optimization_result, k, None) for k in LEGACY_INIT_KEYS})
        return prompter
