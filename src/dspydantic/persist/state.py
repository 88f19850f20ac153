"""The one JSON codec of a :class:`~dspydantic.PromptState` (prompts.json, report.json, anything else).

``state_to_json(state, images)`` writes the prompts, the field descriptions by dotted path and the demos as
plain JSON. With an :class:`ImageFiles`, every ``data:`` image of a demo becomes a file reference
(``{"type": "image_file", "path": "demos/0001.png", "mime": "image/png"}``; identical images share one
file); without one the images stay inline. ``state_from_json(data, files)`` reads it back, taking a
referenced image only from ``files`` (the bytes the caller has already read and checked): a reference to
anything else is an error, never a read.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

from .._media import data_url, parse_data_url, sniff_image_mime
from .._render import Demo, PromptState
from ..errors import PersistenceError

__all__ = ["DEMO_DIR", "ImageFiles", "StateFormatError", "state_from_json", "state_to_json"]

DEMO_DIR = "demos"
#: the most demos a saved pool may hold
MAX_POOL = 10_000
_MIME_EXT = {"image/png": "png", "image/jpeg": "jpg", "image/gif": "gif", "image/webp": "webp"}


class StateFormatError(ValueError):
    """A prompt state's JSON is not what :func:`state_to_json` writes (the message says what is wrong)."""


def jsonable(value: Any, what: str) -> Any:
    """``value`` as plain JSON data, or a :class:`PersistenceError` naming ``what``."""
    from pydantic_core import PydanticSerializationError, to_jsonable_python

    try:
        return to_jsonable_python(value)
    except (PydanticSerializationError, TypeError, ValueError) as exc:
        raise PersistenceError(
            f"could not save the prompter: {what} is not JSON-serializable ({exc}); demo outputs must be "
            "plain data (use model.model_dump(mode='json'))"
        ) from exc


class ImageFiles:
    """Demo images written as files under ``demos/`` (identical images share one file)."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self._by_hash: dict[str, str] = {}

    def add(self, data: bytes, mime: str) -> str:
        digest = hashlib.sha256(data).hexdigest()
        rel = self._by_hash.get(digest)
        if rel is None:
            ext = _MIME_EXT.get(mime.lower(), "bin")
            rel = f"{DEMO_DIR}/{len(self._by_hash) + 1:04d}.{ext}"
            self._by_hash[digest] = rel
            self.files[rel] = data
        return rel


# -- write ---------------------------------------------------------------------------------------------


def _demo_to_json(demo: Demo, images: ImageFiles | None, what: str) -> dict[str, Any]:
    if isinstance(demo.input, str):
        inp: Any = demo.input
    else:
        inp = []
        for part in demo.input:
            if images is not None and isinstance(part, Mapping) and part.get("type") == "image_url":
                spec = part.get("image_url")
                url = spec.get("url") if isinstance(spec, Mapping) else spec
                decoded = parse_data_url(url) if isinstance(url, str) else None
                if decoded is not None:
                    data, mime = decoded[0], decoded[1] or "application/octet-stream"
                    extra = {k: v for k, v in spec.items() if k != "url"} if isinstance(spec, Mapping) else {}
                    ref: dict[str, Any] = {"type": "image_file", "path": images.add(data, mime), "mime": mime}
                    if extra:
                        ref["image_url"] = jsonable(extra, f"{what} image options")
                    inp.append(ref)
                    continue
            inp.append(jsonable(part, f"{what} input"))
    return {"input": inp, "output": jsonable(demo.output, f"{what} output")}


def state_to_json(
    state: PromptState, images: ImageFiles | None = None, what: str = "the prompt state"
) -> dict[str, Any]:
    """``state`` as plain JSON; demo images go to ``images`` as files (inline ``data:`` URLs without it)."""
    return {
        "system_prompt": state.system_prompt,
        "instruction_prompt": state.instruction_prompt,
        "field_descriptions": {str(k): str(v) for k, v in dict(state.field_descriptions).items()},
        "demos": [_demo_to_json(d, images, f"{what} demo {i + 1}") for i, d in enumerate(state.demos)],
        **({"choice_bias": {str(k): {str(v): float(b) for v, b in dict(values).items()}
                            for k, values in dict(state.choice_bias).items()}} if state.choice_bias else {}),
        **({"nearest_demos": state.nearest_demos,
            "demo_pool": [_demo_to_json(d, images, f"{what} pool demo {i + 1}") for i, d in enumerate(state.demo_pool)]}
           if state.nearest_demos or state.demo_pool else {}),
        **({"field_values": {str(k): [str(v) for v in vs] for k, vs in dict(state.field_values).items()}}
           if state.field_values else {}),
    }


# -- read ----------------------------------------------------------------------------------------------


def _expect(cond: bool, detail: str) -> None:
    if not cond:
        raise StateFormatError(detail)


def _image_part(part: Mapping[str, Any], files: Mapping[str, bytes] | None) -> dict[str, Any]:
    rel = part.get("path")
    _expect(isinstance(rel, str) and bool(rel), f"bad image file reference {rel!r}")
    if files is None or not isinstance(rel, str) or rel not in files:
        raise StateFormatError(f"a demo refers to {rel!r}, which the manifest does not list")
    blob = files[rel]
    mime = part.get("mime")
    _expect(mime is None or (isinstance(mime, str) and mime.startswith("image/") and len(mime) < 64),
            f"bad image type {mime!r}")
    extra = part.get("image_url", {})
    _expect(isinstance(extra, dict) and "url" not in extra, "bad image options")
    url = data_url(blob, mime or sniff_image_mime(blob) or "image/png")
    return {"type": "image_url", "image_url": {"url": url, **extra}}


def _demo_from_json(raw: Any, files: Mapping[str, bytes] | None) -> Demo:
    _expect(isinstance(raw, dict) and isinstance(raw.get("output"), dict), "a demo has no output object")
    inp = raw.get("input")
    if isinstance(inp, list):
        parts: list[dict[str, Any]] = []
        for part in inp:
            _expect(isinstance(part, dict), "a demo input part is not an object")
            parts.append(_image_part(part, files) if part.get("type") == "image_file" else part)
        demo_input: str | list[dict[str, Any]] = parts
    else:
        _expect(isinstance(inp, str), "a demo input is neither text nor parts")
        demo_input = inp
    return Demo(input=demo_input, output=dict(raw["output"]))


def state_from_json(data: Any, files: Mapping[str, bytes] | None = None) -> PromptState:
    """The :class:`PromptState` written by :func:`state_to_json`; a referenced image is taken from ``files``
    only. Anything else is a :class:`StateFormatError` saying what is wrong."""
    _expect(isinstance(data, dict), "a prompt state is not an object")

    def text(key: str) -> str | None:
        value = data.get(key)
        _expect(value is None or isinstance(value, str), f"{key} is not a string")
        return value

    descriptions = data.get("field_descriptions") or {}
    _expect(isinstance(descriptions, dict) and all(isinstance(v, str) for v in descriptions.values()),
            "field_descriptions is not an object of strings")
    demos_raw = data.get("demos") or []
    _expect(isinstance(demos_raw, list), "demos is not a list")
    return PromptState(
        system_prompt=text("system_prompt"),
        instruction_prompt=text("instruction_prompt"),
        field_descriptions={str(k): v for k, v in descriptions.items()},
        demos=tuple(_demo_from_json(raw, files) for raw in demos_raw),
        choice_bias=_choice_bias_from_json(data.get("choice_bias")),
        field_values=_field_values_from_json(data.get("field_values")),
        **_nearest_from_json(data, files),
    )


def _field_values_from_json(raw: Any) -> dict[str, tuple[str, ...]]:
    """A saved ``field_values``: field name -> a list of at most
    :data:`~dspydantic._retype.MAX_FIELD_VALUES` strings of at most ``MAX_VALUE_CHARS`` characters."""
    from .._retype import MAX_FIELD_VALUES, MAX_VALUE_CHARS

    if raw is None:
        return {}
    _expect(isinstance(raw, dict) and len(raw) <= 1000, "field_values is not an object of at most 1000 fields")
    out: dict[str, tuple[str, ...]] = {}
    for name, values in raw.items():
        _expect(isinstance(values, list) and len(values) <= MAX_FIELD_VALUES
                and all(isinstance(v, str) and len(v) <= MAX_VALUE_CHARS for v in values),
                f"field_values[{name!r}] is not a list of at most {MAX_FIELD_VALUES} strings of at most "
                f"{MAX_VALUE_CHARS} characters")
        out[str(name)] = tuple(values)
    return out


def _nearest_from_json(data: Mapping[str, Any], files: Mapping[str, bytes] | None) -> dict[str, Any]:
    """A saved ``nearest_demos`` (0 to :data:`dspydantic._nearest.MAX_NEAREST`) and ``demo_pool`` (a list
    of demos as ``demos`` are written, at most :data:`MAX_POOL`)."""
    from .._nearest import MAX_NEAREST

    k = data.get("nearest_demos", 0)
    _expect(isinstance(k, int) and not isinstance(k, bool) and 0 <= k <= MAX_NEAREST,
            f"nearest_demos is not a whole number from 0 to {MAX_NEAREST}")
    pool = data.get("demo_pool") or []
    _expect(isinstance(pool, list) and len(pool) <= MAX_POOL, f"demo_pool is not a list of at most {MAX_POOL} demos")
    return {"nearest_demos": k, "demo_pool": tuple(_demo_from_json(raw, files) for raw in pool)}


def _choice_bias_from_json(raw: Any) -> dict[str, dict[str, float]]:
    """A saved ``choice_bias``: field path -> JSON value -> a finite bias of at most
    :data:`dspydantic._choices.MAX_BIAS` in size (a hostile file cannot make a choice certain)."""
    from .._choices import MAX_BIAS

    if raw is None:
        return {}
    _expect(isinstance(raw, dict) and len(raw) <= 1000, "choice_bias is not an object of at most 1000 fields")
    out: dict[str, dict[str, float]] = {}
    for path, values in raw.items():
        _expect(isinstance(values, dict) and len(values) <= 1000, f"choice_bias[{path!r}] is not an object")
        biases: dict[str, float] = {}
        for value, bias in values.items():
            ok = isinstance(bias, (int, float)) and not isinstance(bias, bool) and abs(float(bias)) <= MAX_BIAS
            _expect(ok, f"choice_bias[{path!r}][{value!r}] is not a number within ±{MAX_BIAS}")
            biases[str(value)] = float(bias)
        out[str(path)] = biases
    return out
